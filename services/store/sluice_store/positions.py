"""Where a read or subscription starts: start points, global positions, filters."""

from __future__ import annotations

from sluice.v1 import streams_pb2 as pb
from sluice_store.errors import InvalidArgument
from sluice_store.storage.base import Start, Storage, StreamFilter


def stream_filter(msg: pb.Filter) -> StreamFilter:
    """A request's filter, checked."""
    if msg.partitions and not msg.partition_count:
        raise InvalidArgument("filter.partitions needs filter.partition_count", field="filter")
    if any(p >= msg.partition_count for p in msg.partitions):
        raise InvalidArgument("a partition is not below partition_count", field="filter.partitions")
    return StreamFilter(
        tuple(msg.stream_prefixes),
        tuple(msg.event_types),
        msg.partition_count,
        frozenset(msg.partitions),
    )


def start_point(msg: pb.StartPoint, default: str) -> Start:
    """A request's start point; ``default`` (start or end) when it sets none."""
    kind = msg.WhichOneof("point") or default
    if kind == "time":
        return Start("time", msg.time.ToMicroseconds())
    if kind in ("revision", "position"):
        return Start(kind, getattr(msg, kind))
    return Start(kind)


async def position(storage: Storage, start: Start, backwards: bool) -> int:
    """A global position (inclusive) for a start point over all streams."""
    head = storage.head_position
    if start.kind == "start":
        return 0 if backwards else 1
    if start.kind == "end":
        return head if backwards else head + 1
    if start.kind == "time":
        return await storage.position_at_time(start.value, backwards)
    return max(start.value, 1) if not backwards else start.value


async def cursor_at(storage: Storage, msg: pb.StartPoint | None) -> int:
    """The cursor (next position to read) for a start point; unset means the end."""
    return await position(storage, start_point(msg or pb.StartPoint(), "end"), False)
