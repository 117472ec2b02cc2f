"""Events as the gateway handles them: parsed once, serialised once per delivery form.

The store's live feed arrives as serialized SubscribeResponse bytes. Each event is cut out
of them as it is (no re-encoding), and its notification form is the same bytes without
the trailing ``data`` field the store puts last. What subscribers get is assembled by
joining these bytes: protobuf repeated fields concatenate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sluice import cloudevent
from sluice.protowire import read_varint, varint
from sluice.v1 import gateway_pb2 as gwpb
from sluice.v1 import streams_pb2 as pb

FULL = gwpb.DELIVERY_FORM_FULL
NOTIFICATION = gwpb.DELIVERY_FORM_NOTIFICATION

_TAG_EVENTS = 0x0A  # SubscribeResponse.events = 1, EventBatch.events = 1 (length-delimited)
_TAG_DATA = 0x1A  # RecordedEvent.data = 3 / EphemeralMessage.type = 3 (not used for those)
_TAG_POSITION = b"\x78"  # WatchResponse.position = 15, varint


def split_events(raw: bytes) -> list[bytes]:
    """The serialized RecordedEvents inside a serialized SubscribeResponse{events}."""
    if not raw or raw[0] != _TAG_EVENTS:
        return []
    length, i = read_varint(raw, 1)
    end = i + length
    out = []
    while i < end:
        if raw[i] != _TAG_EVENTS:  # an unknown EventBatch field: skip it
            raise ValueError("unexpected field in EventBatch")
        n, i = read_varint(raw, i + 1)
        out.append(raw[i : i + n])
        i += n
    return out


def _without_data(raw: bytes, data: bytes, msg: pb.RecordedEvent) -> bytes:
    if not data:
        return raw
    tail = bytes([_TAG_DATA]) + varint(len(data)) + data
    if raw.endswith(tail):
        return raw[: -len(tail)]
    copy = pb.RecordedEvent()
    copy.CopyFrom(msg)
    copy.ClearField("data")
    return copy.SerializeToString()


class Record:
    """One event (position > 0) or one published message (position 0), ready to fan out."""

    __slots__ = ("_entries", "_sse", "event", "full", "notification", "position", "stream", "type")

    def __init__(
        self,
        position: int,
        stream: str,
        type_: str,
        full: bytes,
        notification: bytes,
        event: pb.RecordedEvent | pb.EphemeralMessage,
    ) -> None:
        self.position = position
        self.stream = stream
        self.type = type_
        self.full = full
        self.notification = notification
        self.event = event
        self._entries: dict[int, bytes] = {}
        self._sse: dict[int, bytes] = {}

    def entry(self, form: int) -> bytes:
        """This event as one element of a repeated field (tag, length, bytes), cached."""
        e = self._entries.get(form)
        if e is None:
            raw = self.notification if form == NOTIFICATION else self.full
            e = self._entries[form] = bytes([_TAG_EVENTS]) + varint(len(raw)) + raw
        return e

    def sse(self, form: int) -> bytes:
        """This event as one Server-Sent Event, cached."""
        s = self._sse.get(form)
        if s is None:
            s = self._sse[form] = sse_event(self, form)
        return s


def records_from_feed(raw: bytes, msg: pb.SubscribeResponse) -> list[Record]:
    """Records for the events of one live-feed message (``msg`` is ``raw`` parsed)."""
    events = msg.events.events
    pieces = split_events(raw)
    if len(pieces) != len(events):
        pieces = [e.SerializeToString() for e in events]
    return [
        Record(e.position, e.stream, e.type, piece, _without_data(piece, e.data, e), e)
        for e, piece in zip(events, pieces, strict=True)
    ]


def record_of(event: pb.RecordedEvent) -> Record:
    """A record for an event read from the store (catch-up)."""
    full = event.SerializeToString()
    return Record(
        event.position, event.stream, event.type, full, _without_data(full, event.data, event), event
    )


def ephemeral_record(msg: pb.EphemeralMessage) -> Record:
    full = msg.SerializeToString()
    if msg.data:
        copy = pb.EphemeralMessage()
        copy.CopyFrom(msg)
        copy.ClearField("data")
        notification = copy.SerializeToString()
    else:
        notification = full
    return Record(0, msg.stream, msg.type, full, notification, msg)


def events_chunk(records: Iterable[Record], form: int) -> bytes:
    """The EventBatch (or EphemeralBatch) body for these records: their entries, joined."""
    return b"".join([r.entry(form) for r in records])


def sse_chunk(records: Iterable[Record], form: int) -> bytes:
    return b"".join([r.sse(form) for r in records])


def watch_message(field_tag: int, body: bytes, position: int) -> bytes:
    """A serialized WatchResponse with one length-delimited content field and the cursor."""
    return b"".join((bytes([field_tag]), varint(len(body)), body, _TAG_POSITION, varint(position)))


# WatchResponse content field tags (field_number << 3 | 2).
TAG_EVENTS = 0x0A
TAG_EPHEMERAL = 0x32


# -- Server-Sent Events -----------------------------------------------------------------


def sse_event(record: Record, form: int) -> bytes:
    """A CloudEvents 1.0 JSON event as one SSE message; its SSE id is the position."""
    body = cloudevent.structured(record.event, with_data=form != NOTIFICATION)
    text = json.dumps(body, separators=(",", ":"))
    head = f"id: {record.position}\n" if record.position else ""
    return f"{head}event: {'event' if record.position else 'ephemeral'}\ndata: {text}\n\n".encode()


def sse_control(kind: str, payload: dict[str, object]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
