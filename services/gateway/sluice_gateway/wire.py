"""Events as the gateway handles them: parsed once, serialised once per delivery form.

The store's live feed arrives as serialized SubscribeResponse bytes. Each event is cut out
of them as it is (no re-encoding), and its notification form is the same bytes without
the trailing ``data`` field the store puts last. What subscribers get is assembled by
joining these bytes: protobuf repeated fields concatenate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sluice import eventbytes
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

    __slots__ = ("_encoded", "_entries", "event", "full", "notification", "position", "stream", "type")

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
        self._encoded: dict[object, bytes] = {}

    def entry(self, form: int) -> bytes:
        """This event as one element of a repeated field (tag, length, bytes), cached."""
        e = self._entries.get(form)
        if e is None:
            raw = self.notification if form == NOTIFICATION else self.full
            e = self._entries[form] = _TAG_EVENTS + varint(len(raw)) + raw
        return e

    def cached(self, key: object, make: Callable[[Record], bytes]) -> bytes:
        """What ``make`` encodes this record as (per transport and form), made once."""
        s = self._encoded.get(key)
        if s is None:
            s = self._encoded[key] = make(self)
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
