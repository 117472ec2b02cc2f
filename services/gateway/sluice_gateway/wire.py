"""Events as the gateway handles them: parsed once, serialised once per delivery form.

The store's live feed arrives as serialized SubscribeResponse bytes. Each event is cut out
of them as it is (no re-encoding), and its notification form is the same bytes without
the trailing ``data`` field the store puts last. What subscribers get is assembled by
joining these bytes: protobuf repeated fields concatenate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from sluice import cloudevent, eventbytes
from sluice.eventbytes import varint
from sluice.v1 import gateway_pb2 as gwpb
from sluice.v1 import streams_pb2 as pb

FULL = gwpb.DELIVERY_FORM_FULL
NOTIFICATION = gwpb.DELIVERY_FORM_NOTIFICATION

_TAG_EVENTS = eventbytes.TAG_BATCH_EVENTS  # EventBatch.events
assert eventbytes.tag(gwpb.EphemeralBatch.DESCRIPTOR, "messages") == _TAG_EVENTS  # one entry serves both
_TAG_POSITION = eventbytes.tag(gwpb.WatchResponse.DESCRIPTOR, "position", 0)


def _without_data(raw: bytes, data: bytes, msg: pb.RecordedEvent) -> bytes:
    cut = eventbytes.without_data(raw, data)
    if cut is not None:
        return cut
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
            e = self._entries[form] = _TAG_EVENTS + varint(len(raw)) + raw
        return e

    def sse(self, form: int) -> bytes:
        """This event as one Server-Sent Event, cached."""
        s = self._sse.get(form)
        if s is None:
            s = self._sse[form] = sse_event(self, form)
        return s


def _records(pieces: list[bytes], events: Sequence[pb.RecordedEvent]) -> list[Record]:
    if len(pieces) != len(events):  # not as the store lays events out: serialize them
        pieces = [e.SerializeToString() for e in events]
    return [
        Record(e.position, e.stream, e.type, piece, _without_data(piece, e.data, e), e)
        for e, piece in zip(events, pieces, strict=True)
    ]


def records_from_feed(raw: bytes, msg: pb.SubscribeResponse) -> list[Record]:
    """Records for the events of one live-feed message (``msg`` is ``raw`` parsed)."""
    return _records(eventbytes.events_of_subscribe(raw), msg.events.events)


def records_from_read(raw: bytes, events: Sequence[pb.RecordedEvent]) -> list[Record]:
    """Records for the events of one catch-up ReadResponse (``events`` parsed from ``raw``)."""
    return _records(eventbytes.events_of_read(raw), events)


def record_of(event: pb.RecordedEvent) -> Record:
    """A record for an event that exists only parsed (tests, tools)."""
    return _records([], [event])[0]


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


def watch_message(field_tag: bytes, body: bytes, position: int) -> bytes:
    """A serialized WatchResponse with one length-delimited content field and the cursor."""
    return b"".join((field_tag, varint(len(body)), body, _TAG_POSITION, varint(position)))


# WatchResponse content fields.
TAG_EVENTS = eventbytes.tag(gwpb.WatchResponse.DESCRIPTOR, "events")
TAG_EPHEMERAL = eventbytes.tag(gwpb.WatchResponse.DESCRIPTOR, "ephemeral")


# -- Server-Sent Events -----------------------------------------------------------------


def sse_event(record: Record, form: int) -> bytes:
    """A CloudEvents 1.0 JSON event as one SSE message; its SSE id is the position."""
    body = cloudevent.structured(record.event, with_data=form != NOTIFICATION)
    text = json.dumps(body, separators=(",", ":"))
    head = f"id: {record.position}\n" if record.position else ""
    return f"{head}event: {'event' if record.position else 'ephemeral'}\ndata: {text}\n\n".encode()


def sse_control(kind: str, payload: dict[str, object]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
