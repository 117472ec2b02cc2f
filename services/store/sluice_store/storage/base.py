"""The storage interface every backend implements, and the stream bookkeeping they share
(the append rules are in ``planner``). Just over 500 lines: the interface with the row,
stream and window types its methods take, and the retention bookkeeping both backends
share.

Rows on the read paths are plain tuples, for speed:
``(position, stream_id, revision, created_us, head, data)``; rows from the write path
(LiveRow) add ``stream_name, type, event_id, size``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import enum
import functools
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Final

from sluice import eventbytes
from sluice.partition import fnv1a_32, partition_of
from sluice.v1 import streams_pb2 as pb
from sluice_store.config import NAME_LIMIT
from sluice_store.errors import (
    StoreError,
    StreamDeleted,
)
from sluice_store.retention import (
    NO_POLICY,
    Policy,
    age_cutoff_us,
    floor_revision,
    now_us,
    resolve,
    write_archive,
)

Row = tuple[int, int, int, int, bytes, bytes]
#: A committed event as the write path makes it: a Row, then stream name, type, event
#: id and stored size. The store inserts it whole and hands it to the commit listener.
LiveRow = tuple[int, int, int, int, bytes, bytes, str, str, bytes, int]
# Indexes into Row and LiveRow.
P_POSITION: Final = 0
P_STREAM_ID: Final = 1
P_REVISION: Final = 2
P_CREATED: Final = 3
P_HEAD: Final = 4
P_DATA: Final = 5
P_STREAM: Final = 6
P_TYPE: Final = 7


class State(enum.IntEnum):
    """Stored stream states; the values are sluice.v1.StreamState's."""

    MISSING = 1
    ACTIVE = 2
    DELETED = 3
    TOMBSTONED = 4


class Expect(enum.IntEnum):
    ANY = 0
    NO_STREAM = 1
    STREAM_EXISTS = 2
    EXACT = 3


@dataclasses.dataclass(slots=True)
class NewEvent:
    """A validated event ready to store; ``body`` is its EventData serialized without data."""

    id: bytes
    id_text: str
    client_id: bool
    type: str
    body: bytes
    data: bytes


@dataclasses.dataclass(slots=True)
class AppendPart:
    """One stream's share of an atomic append."""

    stream: str
    expect: Expect
    revision: int
    events: list[NewEvent]


@dataclasses.dataclass(slots=True)
class PartResult:
    stream: str
    first_revision: int
    last_revision: int
    first_position: int
    last_position: int
    duplicate: bool = False


Outcome = list[PartResult] | StoreError


@dataclasses.dataclass(slots=True)
class StreamMeta:
    """What the store knows of a stream, kept in memory for the write path."""

    id: int
    name: str
    last_revision: int = -1
    last_position: int = 0
    state: State = State.ACTIVE
    deleted_before: int = 0
    bytes_floor: int = 0
    first_stored: int = 0
    own: Policy = NO_POLICY
    policy: Policy = NO_POLICY
    source: str = "none"
    created_us: int = 0
    updated_us: int = 0
    field: bytes = b""

    def copy(self) -> StreamMeta:
        """A copy to stage changes on: a third of the cost of ``dataclasses.replace`` (a
        group commit makes one of each stream it appends to). Every field is passed."""
        return StreamMeta(
            self.id,
            self.name,
            self.last_revision,
            self.last_position,
            self.state,
            self.deleted_before,
            self.bytes_floor,
            self.first_stored,
            self.own,
            self.policy,
            self.source,
            self.created_us,
            self.updated_us,
            self.field,
        )

    def floor(self) -> int:
        """The first revision still visible, by revision-based rules."""
        return floor_revision(self.policy, self.last_revision, self.deleted_before, self.bytes_floor)

    def visible(self, revision: int, created_us: int, now_us: int) -> bool:
        if self.state == State.TOMBSTONED or revision < self.floor():
            return False
        cutoff = age_cutoff_us(self.policy, now_us)
        return created_us >= cutoff

    @property
    def retained(self) -> bool:
        """Whether some rule may hide events of this stream."""
        return bool(self.policy) or self.deleted_before > 0 or self.state == State.TOMBSTONED


@dataclasses.dataclass(frozen=True, slots=True)
class StreamFilter:
    """Stream-prefix, event-type and partition filter for reads of all streams; empty matches all."""

    prefixes: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    partition_count: int = 0
    partitions: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.prefixes or self.types or self.partition_count)

    def matches(self, stream: str, type_: str) -> bool:
        if self.types and type_ not in self.types:
            return False
        if self.prefixes and not stream.startswith(self.prefixes):
            return False
        return not self.partition_count or self.in_partitions(stream)

    def in_partitions(self, stream: str) -> bool:
        if stream.startswith("$") and self.skips_system:
            return False
        return partition_of_cached(stream, self.partition_count) in self.partitions

    @property
    def skips_system(self) -> bool:
        """A partitioned read (a consumer group's) skips the store's own streams ("$...",
        such as dead letters) unless one of its prefixes names them."""
        return bool(self.partition_count) and not any(p.startswith("$") for p in self.prefixes)


def prefix_end(prefix: str) -> str:
    """The least string above every name that starts with ``prefix``, in code-point order
    (SQLite's and PostgreSQL's "C" order): ``prefix <= name < prefix_end(prefix)`` is the
    prefix match as a range an index can serve."""
    chars = list(prefix)
    while chars:
        c = ord(chars[-1])
        if c < 0x10FFFF:
            chars[-1] = chr(0xE000 if c == 0xD7FF else c + 1)  # no surrogates in names
            return "".join(chars)
        chars.pop()
    return "\U0010ffff" * (NAME_LIMIT + 1)  # above every name


#: The store's own streams (dead letters) are the names from SYSTEM_PREFIX up to
#: SYSTEM_END; Append refuses to write them.
SYSTEM_PREFIX = "$"
SYSTEM_END = prefix_end(SYSTEM_PREFIX)
#: A filtered read of all streams looks at most this many positions per query (KurrentDB's
#: filtered reads have a search window too): a filter that matches few events is answered
#: with fewer rows and the position to go on from, in tens of ms, instead of one query
#: scanning the whole log while it holds a reader connection.
SEARCH_WINDOW = 100_000


@functools.lru_cache(maxsize=65536)
def partition_of_cached(stream: str, count: int) -> int:
    return partition_of(stream, count)


@functools.lru_cache(maxsize=65536)
def name_hash(name: str) -> int:
    """FNV-1a-32 of a stream name, stored with the stream: its partition is hash % count."""
    return fnv1a_32(name.encode())


@dataclasses.dataclass(frozen=True, slots=True)
class Start:
    """A resolved start point: kind is start, end, revision, position or time (value in us)."""

    kind: str
    value: int = 0


@dataclasses.dataclass(slots=True)
class ReclaimStats:
    streams: int = 0
    events_removed: int = 0
    events_archived: int = 0
    archive_files: list[str] = dataclasses.field(default_factory=list)


CommitListener = Callable[[list[LiveRow]], None]


class Storage(abc.ABC):
    """Durable events, streams and their metadata. One instance per store process."""

    #: Called with the committed rows of each group commit, in position order.
    listener: CommitListener | None = None
    #: The store's identity: made when its database was created, kept in it, loaded by
    #: open(). Replicas on one database share it; an empty database gets a new one.
    store_id: str = ""
    #: Whether the listener has anyone to give events to now; a backend that must read
    #: other processes' commits back to feed it may skip the read when not.
    listening: Callable[[], bool] = staticmethod(lambda: True)

    def appends_per_message(self) -> int:
        """The most appends an append session's client should pack in one message now (0:
        no preference); see AppendSessionResponse.appends_per_message."""
        return 0

    @property
    @abc.abstractmethod
    def head_position(self) -> int:
        """The newest committed position (0 when the store is empty)."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema and load what the write path keeps in memory."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending work and release connections; safe to call twice."""

    def write_slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Entered by the group committer before it takes its next batch and left after
        append() returns. A backend whose writers queue for a lock shared with other
        processes takes it here, so that appends arriving while it waits join the batch."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    async def append(self, ops: Sequence[list[AppendPart]]) -> list[Outcome]:
        """Apply many atomic operations in one transaction; one outcome per operation."""

    @abc.abstractmethod
    async def stream(self, name: str) -> StreamMeta | None:
        """The stream's metadata, or None if it was never written."""

    @abc.abstractmethod
    async def read_stream(
        self, meta: StreamMeta, start: Start, backwards: bool, limit: int, with_data: bool
    ) -> list[Row]:
        """Visible events of one stream from a start point (inclusive), in revision order."""

    @abc.abstractmethod
    async def read_all(
        self, position: int, backwards: bool, limit: int, filt: StreamFilter, with_data: bool
    ) -> tuple[list[Row], int, bool]:
        """Visible events of all streams from a position (inclusive).

        Also returns the next position to scan from, and whether the scan reached the head
        (forwards) or the beginning (backwards).
        """

    @abc.abstractmethod
    async def removed_upto(self, filt: StreamFilter, since: int) -> int:
        """The newest position at or after ``since`` of a filtered event that retention or
        deletion removed or hides (0 if none): a read from ``since`` misses nothing above it."""

    @abc.abstractmethod
    async def position_at_time(self, time_us: int, backwards: bool) -> int:
        """The first position created at or after a time (or the last at or before it)."""

    @abc.abstractmethod
    async def list_streams(
        self, prefix: str, after: str, limit: int, include_deleted: bool
    ) -> list[StreamMeta]:
        """Streams with names starting with prefix and greater than after, in name order."""

    @abc.abstractmethod
    async def stream_names(self, ids: Collection[int]) -> dict[int, str]:
        """The names of streams by id (as rows carry them); unknown ids are left out."""

    @abc.abstractmethod
    async def count_events(self, meta: StreamMeta) -> int:
        """Visible events of a stream."""

    @abc.abstractmethod
    async def set_retention(self, name: str, policy: Policy) -> StreamMeta:
        """Set a stream's own retention policy, creating the stream record if needed."""

    @abc.abstractmethod
    async def delete_stream(self, name: str, expect: Expect, revision: int, tombstone: bool) -> int:
        """Soft-delete or tombstone a stream; return the head position at that moment."""

    @abc.abstractmethod
    async def reclaim(self) -> ReclaimStats:
        """Remove events no rule keeps any more, archiving them first where configured."""

    @abc.abstractmethod
    def group_tx(self, name: str) -> contextlib.AbstractAsyncContextManager[GroupTx]:
        """Hold one consumer group (existing or not) for a read-modify-write.

        No other transaction on the same group, in this process or another replica,
        runs until this one ends; what it saved commits at a clean exit and is
        discarded when the block raises.
        """

    @abc.abstractmethod
    async def list_groups(self) -> list[str]:
        """Names of every consumer group, sorted."""


@dataclasses.dataclass(slots=True)
class GroupRecord:
    """A consumer group as stored: config (GroupConfig bytes), members (JSON), cursors."""

    name: str
    config: bytes
    created_us: int
    members: str
    cursors: dict[int, int]


class GroupTx(abc.ABC):
    """One group's transaction: ``record`` is its stored state (None if it does not exist).

    ``now_us`` is the clock that judges leases: the database's where store replicas share
    one (so a replica whose own clock is off can neither fence a live member nor keep a
    dead one), read when the transaction began. ``head_position`` is the newest committed
    position then, across every replica.
    """

    name: str
    record: GroupRecord | None
    now_us: int
    head_position: int

    @abc.abstractmethod
    async def save(self, record: GroupRecord, cursors: Mapping[int, int] | None = None) -> None:
        """Create or update the group (``record.cursors`` is ignored), and the given cursors."""

    @abc.abstractmethod
    async def save_cursors(self, cursors: Mapping[int, int]) -> None:
        """Set some cursors of the group."""

    @abc.abstractmethod
    async def delete(self) -> None:
        """Remove the group and its cursors."""


@dataclasses.dataclass(frozen=True, slots=True)
class StreamWindow:
    """Which events of one stream a read from a start point covers: revisions lo..hi
    created at or after ``cutoff``, and, when ``bound`` is "position" or "time", on the
    near side of ``value`` in the read's direction."""

    lo: int
    hi: int
    cutoff: int
    bound: str = ""
    value: int = 0


def stream_window(meta: StreamMeta, start: Start, backwards: bool, now: int) -> StreamWindow | None:
    """The part of a stream a read_stream covers, or None when it is empty."""
    lo, hi = meta.floor(), meta.last_revision
    cutoff = age_cutoff_us(meta.policy, now)
    bound = ""
    if start.kind == "revision":
        if backwards:
            hi = min(hi, start.value)
        else:
            lo = max(lo, start.value)
    elif start.kind == "position":
        bound = "position"
    elif start.kind == "time":
        if backwards:
            bound = "time"
        else:
            cutoff = max(cutoff, start.value)
    elif start.kind == "end" and not backwards:
        return None
    elif start.kind == "start" and backwards:
        hi = min(hi, lo)
    if lo > hi:
        return None
    return StreamWindow(lo, hi, cutoff, bound, start.value)


async def search_position(
    probe: Callable[[int, bool], Awaitable[tuple[int, int] | None]], head: int, time_us: int, backwards: bool
) -> int:
    """The first position created at or after a time (backwards: the last at or before it).

    ``probe(p, backwards)`` gives (position, created_us) of the first event at or after p
    (backwards: at or before p), or None. created_us never decreases with position, so a
    binary search over positions finds the boundary without an index on time.
    """
    lo, hi = 1, head
    found = 0 if backwards else head + 1
    while lo <= hi:
        mid = (lo + hi) // 2
        hit = await probe(mid, backwards)
        if hit is None:
            if backwards:
                lo = mid + 1
            else:
                hi = mid - 1
            continue
        pos, created = hit
        if backwards:
            if created <= time_us:
                found, lo = pos, mid + 1
            else:
                hi = pos - 1
        elif created >= time_us:
            found, hi = pos, mid - 1
        else:
            lo = pos + 1
    return found


#: The stream columns stream_meta() reads, in order (both backends name them alike).
STREAM_COLUMNS = (
    "id, name, last_revision, last_position, state, deleted_before, bytes_floor, "
    "first_stored, retention, created_us, updated_us"
)


def stream_meta(row: Sequence[Any], prefix_rules: Mapping[str, Policy]) -> StreamMeta:
    """A stream's state from a row of STREAM_COLUMNS."""
    own = Policy.from_json(row[8])
    policy, source = resolve(row[1], own, prefix_rules)
    return StreamMeta(
        id=row[0],
        name=row[1],
        last_revision=row[2],
        last_position=row[3],
        state=State(row[4]),
        deleted_before=row[5],
        bytes_floor=row[6],
        first_stored=row[7],
        own=own,
        policy=policy,
        source=source,
        created_us=row[9],
        updated_us=row[10],
        field=eventbytes.stream_field(row[1]),
    )


def new_stream(name: str, stream_id: int, created_us: int, prefix_rules: Mapping[str, Policy]) -> StreamMeta:
    """The state of a stream about to be written for the first time."""
    policy, source = resolve(name, NO_POLICY, prefix_rules)
    return StreamMeta(
        id=stream_id,
        name=name,
        created_us=created_us,
        policy=policy,
        source=source,
        field=eventbytes.stream_field(name),
    )


def set_own_policy(meta: StreamMeta, policy: Policy, prefix_rules: Mapping[str, Policy]) -> None:
    """Give the stream its own policy (inside the edit's transaction); a tombstoned stream
    takes no more writes, its metadata included (as a hard-deleted stream in KurrentDB)."""
    if meta.state == State.TOMBSTONED:
        raise StreamDeleted(f"stream {meta.name!r} is tombstoned", stream=meta.name)
    meta.own = policy
    meta.policy, meta.source = resolve(meta.name, policy, prefix_rules)


def count_by_floors(meta: StreamMeta, now: int) -> int | None:
    """Visible events of a stream when no age rule applies (None: they must be counted)."""
    if meta.last_revision < 0 or meta.state == State.TOMBSTONED:
        return 0
    if age_cutoff_us(meta.policy, now):
        return None
    return max(0, meta.last_revision + 1 - max(meta.floor(), meta.first_stored))


RECLAIM_CHUNK = 10_000  # revisions archived and deleted per step


async def reclaim_stream(
    meta: StreamMeta,
    archive_dir: str,
    stats: ReclaimStats,
    first_young: Callable[[int], Awaitable[int | None]],
    recorded: Callable[[int, int], Awaitable[list[pb.RecordedEvent]]],
    remove: Callable[[int], Awaitable[int]],
) -> None:
    """Remove the stored revisions of a stream that no rule keeps, in chunks, archiving
    each first (unless there is no archive or the events expired by time to live).

    ``first_young(cutoff)`` is the first stored revision created at or after cutoff (None
    if none); ``recorded(lo, hi)`` reads revisions lo..hi-1; ``remove(hi)`` deletes those
    below hi and returns how many went.
    """
    if meta.state == State.TOMBSTONED:
        upto = meta.last_revision + 1
    else:
        upto = meta.floor()
        cutoff = age_cutoff_us(meta.policy, now_us())
        if cutoff:
            young = await first_young(cutoff)
            upto = max(upto, meta.last_revision + 1 if young is None else young)
    if upto <= meta.first_stored:
        return
    archive = bool(archive_dir) and not meta.policy.ttl_us
    lo = meta.first_stored
    while lo < upto:
        hi = min(upto, lo + RECLAIM_CHUNK)
        if archive:
            events = await recorded(lo, hi)
            path = await asyncio.to_thread(write_archive, archive_dir, meta.name, events)
            if path:
                stats.archive_files.append(path)
                stats.events_archived += len(events)
        stats.events_removed += await remove(hi)
        lo = hi
    stats.streams += 1
