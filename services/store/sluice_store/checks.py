"""Checks every request passes before a handler sees it: it parsed, and its numbers fit.

Protobuf lets a client send what no storage can hold: a uint64 above the signed 64-bit
range that SQLite and PostgreSQL store, a Timestamp or Duration outside the range the
well-known types define (years 1 to 9999, +-10,000 years), or a name with a NUL, which
PostgreSQL text cannot hold (no name has a control character). Such a value is refused here
with INVALID_ARGUMENT and a BadRequest detail naming the field (``filter.partitions[2]``,
``from.time``), never passed on to become an overflow deep in a driver. A list of names
(a filter's prefixes or types) longer than MAX_FILTER_ENTRIES is refused as LIMIT_EXCEEDED.

The walk visits only the fields that can hold such a value: the plan for each message
type is made once, and message types that cannot (an event's data and metadata) are not
entered, so a 1,000-event append costs one look at its expected revision.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from sluice.names import MAX_FILTER_ENTRIES, has_control
from sluice_store.errors import InvalidArgument, LimitExceeded

log = logging.getLogger(__name__)

I64_MAX = 2**63 - 1
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)  # 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z
DURATION_SECONDS = 315_576_000_000  # 10,000 years
_U64 = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)
#: String fields that name or match streams, types, groups and members, which storage
#: looks up (a stream name itself goes through the stricter check_name of the service).
NAME_FIELDS = frozenset(
    ("stream_prefixes", "event_types", "prefix", "group", "member_id", "streams", "dead_letter_stream")
)


class Undecodable:
    """What a request that did not parse becomes: the handler refuses it."""

    def __init__(self, kind: str, error: str) -> None:
        self.kind = kind
        self.error = error


def parser(cls: type[Message]) -> Any:
    """A request deserializer that turns bad bytes into Undecodable instead of a server
    fault (gRPC would answer INTERNAL and log a traceback for each)."""

    def parse(data: bytes) -> Message | Undecodable:
        try:
            return cls.FromString(data)
        except (DecodeError, RuntimeWarning, ValueError) as e:
            return Undecodable(cls.DESCRIPTOR.full_name, str(e))

    return parse


_last_logged = 0.0


def refuse_undecodable(request: Undecodable) -> InvalidArgument:
    """The refusal for bytes that are not the request; logged at most once a minute."""
    global _last_logged
    now = time.monotonic()
    if now - _last_logged > 60:
        _last_logged = now
        log.warning(
            "refused a request that is not a valid %s (%s); more are not logged for a minute",
            request.kind,
            request.error,
        )
    return InvalidArgument(f"the request is not a valid {request.kind}: {request.error}", field="request")


@functools.cache
def _plan(desc: Descriptor) -> tuple[tuple[FieldDescriptor, str], ...]:
    """The fields of a message type worth visiting, with what to check in each."""
    out = []
    for f in desc.fields:
        if f.type in _U64:
            out.append((f, "u64"))
        elif f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type is not None:
            sub = f.message_type
            if sub.GetOptions().map_entry:
                continue
            if sub.full_name == "google.protobuf.Timestamp":
                out.append((f, "timestamp"))
            elif sub.full_name == "google.protobuf.Duration":
                out.append((f, "duration"))
            elif _plan(sub):
                out.append((f, "message"))
        elif f.type == FieldDescriptor.TYPE_STRING and f.name in NAME_FIELDS:
            out.append((f, "name"))
    return tuple(out)


def check_request(msg: Message, path: str = "") -> None:
    """Raise InvalidArgument (naming the field) for a value no store can hold."""
    for f, kind in _plan(msg.DESCRIPTOR):
        repeated = f.is_repeated
        if not repeated and kind in ("timestamp", "duration", "message") and not msg.HasField(f.name):
            continue
        values = getattr(msg, f.name)
        if repeated and kind == "name" and len(values) > MAX_FILTER_ENTRIES:
            where = f"{path}{f.name}"
            raise LimitExceeded(
                f"{where} holds {len(values)} names; at most {MAX_FILTER_ENTRIES}",
                limit="max_filter_entries",
                value=len(values),
                max=MAX_FILTER_ENTRIES,
                field=where,
            )
        items = enumerate(values) if repeated else [(None, values)]
        for i, value in items:
            where = f"{path}{f.name}" + (f"[{i}]" if i is not None else "")
            _check(kind, value, where)


def _check(kind: str, value: Any, where: str) -> None:
    if kind == "u64":
        if value > I64_MAX:
            raise InvalidArgument(f"{where} is {value}; at most {I64_MAX}", field=where)
    elif kind == "timestamp":
        lo, hi = TIMESTAMP_SECONDS
        if not lo <= value.seconds <= hi or not 0 <= value.nanos < 1_000_000_000:
            raise InvalidArgument(f"{where} is not a time between years 1 and 9999", field=where)
    elif kind == "duration":
        s, n = value.seconds, value.nanos
        if abs(s) > DURATION_SECONDS or abs(n) >= 1_000_000_000 or (s and n and (s < 0) != (n < 0)):
            raise InvalidArgument(f"{where} is not a duration within 10,000 years", field=where)
    elif kind == "name":
        if has_control(value):  # no name has one, and PostgreSQL cannot take a NUL
            raise InvalidArgument(f"{where} contains a control character", field=where)
    else:
        check_request(value, where + ".")
