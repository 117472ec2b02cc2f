"""Wire encoding on the hot paths.

A stored event is kept as two blobs: its *head* (a serialized RecordedEvent without
`data`) and its data. Protobuf messages concatenate, so the full event on the wire is
``head + data field`` and the notification form is ``head`` alone. Read and Subscribe
responses are assembled from these bytes without parsing or re-serializing any event:
each event is serialized once, when it is appended.
"""

from __future__ import annotations

from collections.abc import Sequence

from sluice.protowire import varint as _varint
from sluice.v1 import streams_pb2 as pb

# Field tags (field_number << 3 | wire type 2 = length-delimited).
_TAG_DATA = b"\x1a"  # RecordedEvent.data = 3
_TAG_STREAM = b"\x32"  # RecordedEvent.stream = 6
_TAG_REVISION = b"\x38"  # RecordedEvent.revision = 7, varint
_TAG_POSITION = b"\x40"  # RecordedEvent.position = 8, varint
_TAG_CREATED = b"\x4a"  # RecordedEvent.created = 9
_TAG_READ_EVENTS = b"\x12"  # ReadResponse.events = 2
_TAG_BATCH_EVENTS = b"\x0a"  # EventBatch.events = 1
_TAG_SUB_EVENTS = b"\x0a"  # SubscribeResponse.events = 1


_TABLE = [_varint(i) for i in range(1 << 14)]


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    return _TABLE[n] if n < 16384 else _varint(n)


def stream_field(name: str) -> bytes:
    raw = name.encode()
    return _TAG_STREAM + varint(len(raw)) + raw


def created_field(created_us: int) -> bytes:
    seconds, micros = divmod(created_us, 1_000_000)
    ts = b"\x08" + varint(seconds)
    if micros:
        ts += b"\x10" + varint(micros * 1000)
    return _TAG_CREATED + varint(len(ts)) + ts


def head(event_without_data: bytes, stream: bytes, revision: int, position: int, created: bytes) -> bytes:
    """Serialized RecordedEvent without data, from a serialized EventData without data."""
    table = _TABLE
    rev = table[revision] if revision < 16384 else _varint(revision)
    pos = table[position] if position < 16384 else _varint(position)
    return b"".join((event_without_data, stream, _TAG_REVISION, rev, _TAG_POSITION, pos, created))


def event_bytes(head_bytes: bytes, data: bytes | None) -> bytes:
    """The serialized RecordedEvent: the head, plus data unless this is a notification."""
    if not data:
        return head_bytes
    return head_bytes + _TAG_DATA + varint(len(data)) + data


def read_response(events: Sequence[bytes]) -> bytes:
    """A serialized ReadResponse carrying these serialized RecordedEvents."""
    return b"".join(_TAG_READ_EVENTS + varint(len(e)) + e for e in events)


def subscribe_events(events: Sequence[bytes]) -> bytes:
    """A serialized SubscribeResponse{events: EventBatch{events}}."""
    batch = b"".join(_TAG_BATCH_EVENTS + varint(len(e)) + e for e in events)
    return _TAG_SUB_EVENTS + varint(len(batch)) + batch


def serialize(msg: pb.ReadResponse | pb.SubscribeResponse | bytes) -> bytes:
    """Response serializer for handlers that yield either messages or pre-built bytes."""
    if isinstance(msg, bytes):
        return msg
    return msg.SerializeToString()
