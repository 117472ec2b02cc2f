"""The byte layout of a stored event, written by the store and cut by the gateway: the one
place that knows it.

A stored event is two blobs: its *head* (a serialized RecordedEvent without ``data``) and
its data. Protobuf messages concatenate, so the full event on the wire is the head
followed by the ``data`` field, and the notification form is the head alone. The store
always puts ``data`` last (the contract says so at RecordedEvent), so a reader holding
the full bytes gets the notification form by cutting that trailing field off. Replies are
assembled by joining these bytes, as repeated fields concatenate.

Field tags come from the generated descriptors, not from numbers written here.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor

from sluice.protowire import read_varint
from sluice.protowire import varint as _varint
from sluice.v1 import streams_pb2 as pb

_LENGTH_DELIMITED, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5


def tag(message: Descriptor, field: str, wire_type: int = _LENGTH_DELIMITED) -> bytes:
    """The key of a field: its number shifted left by three, and its wire type."""
    return _varint(message.fields_by_name[field].number << 3 | wire_type)


_EVENT = pb.RecordedEvent.DESCRIPTOR
TAG_DATA = tag(_EVENT, "data")
TAG_STREAM = tag(_EVENT, "stream")
TAG_REVISION = tag(_EVENT, "revision", _VARINT)
TAG_POSITION = tag(_EVENT, "position", _VARINT)
TAG_CREATED = tag(_EVENT, "created")
TAG_READ_EVENTS = tag(pb.ReadResponse.DESCRIPTOR, "events")
TAG_BATCH_EVENTS = tag(pb.EventBatch.DESCRIPTOR, "events")
TAG_SUBSCRIBE_EVENTS = tag(pb.SubscribeResponse.DESCRIPTOR, "events")
_TS = timestamp_pb2.Timestamp.DESCRIPTOR
_TAG_SECONDS = tag(_TS, "seconds", _VARINT)
_TAG_NANOS = tag(_TS, "nanos", _VARINT)

_TABLE = [_varint(i) for i in range(1 << 14)]
#: The first two bytes of the varint of any number from 2**14: its low 14 bits, each
#: byte with the continuation bit set. The rest is the varint of the number >> 14.
_LOW = [bytes((i & 0x7F | 0x80, i >> 7 | 0x80)) for i in range(1 << 14)]


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer: from tables up to 2**28 (the
    positions and revisions in every stored event's head), computed beyond."""
    if n < 16384:
        return _TABLE[n]
    if n < 1 << 28:
        return _LOW[n & 0x3FFF] + _TABLE[n >> 14]
    return _varint(n)


def stream_field(name: str) -> bytes:
    raw = name.encode()
    return TAG_STREAM + varint(len(raw)) + raw


def created_field(created_us: int) -> bytes:
    seconds, micros = divmod(created_us, 1_000_000)
    ts = _TAG_SECONDS + varint(seconds)
    if micros:
        ts += _TAG_NANOS + varint(micros * 1000)
    return TAG_CREATED + varint(len(ts)) + ts


def head(event_without_data: bytes, stream: bytes, revision: int, position: int, created: bytes) -> bytes:
    """Serialized RecordedEvent without data, from a serialized EventData without data."""
    return b"".join(
        (event_without_data, stream, TAG_REVISION, varint(revision), TAG_POSITION, varint(position), created)
    )


def data_field(data: bytes) -> bytes:
    return TAG_DATA + varint(len(data)) + data


def event_bytes(head_bytes: bytes, data: bytes | None) -> bytes:
    """The serialized RecordedEvent: the head, plus data unless this is a notification."""
    if not data:
        return head_bytes
    return head_bytes + data_field(data)


def without_data(full: bytes, data: bytes) -> bytes | None:
    """The notification form of a full event whose data is ``data`` (its trailing field), or
    None when the bytes do not end with it (then parse and re-serialize instead)."""
    if not data:
        return full
    tail = data_field(data)
    return full[: -len(tail)] if full.endswith(tail) else None


def repeated(raw: bytes, key: bytes) -> list[bytes]:
    """The values of a length-delimited field (by its key) at the top level of a serialized
    message, in order; other fields are skipped."""
    out: list[bytes] = []
    i, end = 0, len(raw)
    while i < end:
        k, after_key = read_varint(raw, i)
        wire = k & 7
        if wire == _LENGTH_DELIMITED:
            n, j = read_varint(raw, after_key)
            if raw[i:after_key] == key:
                out.append(raw[j : j + n])
            i = j + n
        elif wire == _VARINT:
            _, i = read_varint(raw, after_key)
        elif wire == _FIXED64:
            i = after_key + 8
        elif wire == _FIXED32:
            i = after_key + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def read_response(events: Sequence[bytes]) -> bytes:
    """A serialized ReadResponse carrying these serialized RecordedEvents."""
    return b"".join(TAG_READ_EVENTS + varint(len(e)) + e for e in events)


def subscribe_events(events: Sequence[bytes]) -> bytes:
    """A serialized SubscribeResponse{events: EventBatch{events}}."""
    batch = b"".join(TAG_BATCH_EVENTS + varint(len(e)) + e for e in events)
    return TAG_SUBSCRIBE_EVENTS + varint(len(batch)) + batch


def events_of_subscribe(raw: bytes) -> list[bytes]:
    """The serialized RecordedEvents inside a serialized SubscribeResponse{events}."""
    return [e for batch in repeated(raw, TAG_SUBSCRIBE_EVENTS) for e in repeated(batch, TAG_BATCH_EVENTS)]


def events_of_read(raw: bytes) -> list[bytes]:
    """The serialized RecordedEvents inside a serialized ReadResponse."""
    return repeated(raw, TAG_READ_EVENTS)
