"""The embedded backend: one SQLite file in WAL mode, through aiosqlite.
(Over 500 lines: one class implements the whole Storage interface, with its SQL beside
the code that runs it; the append rules are ``planner``.)

One writer connection applies group commits (one transaction each); a small pool of
read-only connections serves reads, which WAL lets run beside the writer. Stream state
for the write path lives in an LRU cache. Streams whose events some per-stream fact may
hide (a policy of their own, a deletion, a count, size or truncation rule) stay pinned in
memory so reads of all streams can hide those events without a join; streams whose only
rule is a prefix rule's age are not pinned (there may be millions): their hidden events
are found from the rule and the event's time, and the reclaim pass finds the ones with
expired events by scanning the positions that expired since its last pass, per age limit,
so its work follows the events that expire, not the number of streams.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import logging
import os
import sqlite3
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import aiosqlite

from sluice import eventbytes
from sluice.v1 import streams_pb2 as pb
from sluice_store.errors import StorageFull, StoreUnavailable
from sluice_store.retention import NO_POLICY, Policy, age_cutoff_us, age_limit_us, now_us, resolve
from sluice_store.storage.base import (
    SEARCH_WINDOW,
    STREAM_COLUMNS,
    SYSTEM_END,
    SYSTEM_PREFIX,
    AppendPart,
    Expect,
    GroupRecord,
    GroupTx,
    Outcome,
    ReclaimStats,
    Row,
    Start,
    State,
    Storage,
    StreamFilter,
    StreamMeta,
    count_by_floors,
    name_hash,
    new_stream,
    prefix_end,
    reclaim_stream,
    search_position,
    set_own_policy,
    stream_meta,
    stream_window,
)
from sluice_store.storage.planner import Plan, mark_deleted, plan_append

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 3
NAMES_CACHED = 100_000  # stream names by id, for hiding expired events of unpinned streams
AGE_SCAN_SECONDS = 0.5  # at most this long per reclaim pass finding newly expired events
AGE_SCAN_CHUNK = 50_000  # positions per step of that scan
SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    hash           INTEGER NOT NULL,  -- FNV-1a-32 of the name: partition = hash % count
    last_revision  INTEGER NOT NULL,
    last_position  INTEGER NOT NULL,
    state          INTEGER NOT NULL,
    deleted_before INTEGER NOT NULL DEFAULT 0,
    bytes_floor    INTEGER NOT NULL DEFAULT 0,
    first_stored   INTEGER NOT NULL DEFAULT 0,
    removed_position INTEGER NOT NULL DEFAULT 0,  -- newest position reclaimed
    retention      TEXT,
    created_us     INTEGER NOT NULL,
    updated_us     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    position   INTEGER PRIMARY KEY,
    stream_id  INTEGER NOT NULL,
    revision   INTEGER NOT NULL,
    event_id   BLOB NOT NULL,
    type       TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    head       BLOB NOT NULL,
    data       BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_stream ON events (stream_id, revision);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_id ON events (event_id);
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS groups (
    name       TEXT PRIMARY KEY,
    config     BLOB NOT NULL,
    created_us INTEGER NOT NULL,
    members    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS group_cursors (
    grp        TEXT NOT NULL,
    partition  INTEGER NOT NULL,
    position   INTEGER NOT NULL,
    PRIMARY KEY (grp, partition)
) WITHOUT ROWID;
"""
# Steps from the previous schema version to each version (in one transaction with the
# version bump).
MIGRATIONS = {
    2: "ALTER TABLE streams ADD COLUMN removed_position INTEGER NOT NULL DEFAULT 0;",
    3: "SELECT 1;",  # the index below, made after every migration
}
# Streams that lost events, for a resume below retention (after the migrations: version 1
# files have no removed_position column when the schema script runs).
INDEX_REMOVED = (
    "CREATE INDEX IF NOT EXISTS streams_by_removed ON streams (removed_position) WHERE removed_position > 0"
)
SAVE_STREAM = f"""
INSERT INTO streams ({STREAM_COLUMNS}, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    last_revision = excluded.last_revision, last_position = excluded.last_position,
    state = excluded.state, deleted_before = excluded.deleted_before,
    bytes_floor = excluded.bytes_floor, first_stored = excluded.first_stored,
    retention = excluded.retention, updated_us = excluded.updated_us
"""
# What an append changes in a stream that exists (SAVE_STREAM writes every column, and
# makes the row of a new one).
APPEND_STREAM = (
    "UPDATE streams SET last_revision = ?, last_position = ?, state = ?, bytes_floor = ?, updated_us = ?"
    " WHERE id = ?"
)
# Binds an EventRow by number; ?7, the stream name, is not stored per event.
INSERT_EVENT = (
    "INSERT INTO events (position, stream_id, revision, created_us, head, data, type, event_id, size)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8, ?9, ?10)"
)
ROW_COLUMNS = "events.position, events.stream_id, events.revision, events.created_us, events.head, {data}"
CHECKPOINT_INTERVAL = 0.5  # seconds between WAL checkpoints while there are commits
# Under a steady stream of commits a PASSIVE checkpoint never finds the WAL wholly copied
# (each commit adds frames while it copies), so SQLite never starts the WAL over: it grows
# without end, and every page lookup searches its index, one hash table per 4,096 frames,
# so each commit costs more than the one before. Once the WAL holds WAL_RESTART_FRAMES,
# and a checkpoint left at most WAL_CATCH_UP_FRAMES uncopied, the next one holds appends
# while it copies that rest; the commit after it then writes the WAL from its start, and
# SQLite truncates the file to WAL_RESTART_FRAMES pages (journal_size_limit).
WAL_RESTART_FRAMES = 16_384
WAL_CATCH_UP_FRAMES = 2_048
# Under `normal` (no fsync), a group commit of up to INLINE_EVENTS events runs on the event
# loop thread when no live subscriber waits there for deliveries, and one of up to
# INLINE_EVENTS_LISTENED events when some do, either with at most INLINE_BYTES of data. The
# rest, commits that must read more than INLINE_LOOKUPS streams from the database, and every
# commit under `full` hop to the writer thread. The hop costs thread switches and a GIL
# handed back and forth at every statement, but lets the loop send deliveries between
# statements (README, "One writer connection").
INLINE_EVENTS = 1000
INLINE_EVENTS_LISTENED = 8
INLINE_BYTES = 1 << 20
INLINE_LOOKUPS = 64
# While commits run on the event loop, an append session's client is asked to pack at most
# this many appends per message: the store commits one message while the next arrives,
# where a window of 256 appends in one message left the store and the client waiting on
# each other (README, "Append sessions pack"). Not asked when commits hop to the writer
# thread or fsync: there a commit per smaller message costs more than the overlap gains.
SESSION_APPENDS = 128
#: One statement of a group transaction and the cursor rows (group, partition, position) it sets.
GroupWrite = tuple[str, Sequence[Any], list[tuple[Any, ...]]]
SYNC_MODES = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


def _params(meta: StreamMeta) -> tuple[Any, ...]:
    return (
        meta.id,
        meta.name,
        meta.last_revision,
        meta.last_position,
        int(meta.state),
        meta.deleted_before,
        meta.bytes_floor,
        meta.first_stored,
        meta.own.to_json() if meta.own else None,
        meta.created_us,
        meta.updated_us,
        name_hash(meta.name),
    )


def _append_params(meta: StreamMeta) -> tuple[int, ...]:
    """APPEND_STREAM's parameters."""
    return (
        meta.last_revision,
        meta.last_position,
        int(meta.state),
        meta.bytes_floor,
        meta.updated_us,
        meta.id,
    )


def _age_only(policy: Policy) -> bool:
    """A policy that limits only age (max_age, time to live)."""
    return bool(age_limit_us(policy)) and not (policy.max_count or policy.max_bytes or policy.truncate_before)


def _unpinned(meta: StreamMeta) -> bool:
    """A stream whose only rule is a prefix rule's age: not kept in memory (see the module)."""
    return (
        meta.source.startswith("prefix:")
        and _age_only(meta.policy)
        and meta.state == State.ACTIVE
        and not meta.deleted_before
        and not meta.bytes_floor
    )


def _below_floor(meta: StreamMeta) -> bool:
    """Stored revisions that count, size, truncation, deletion or a tombstone no longer keep."""
    if meta.state == State.TOMBSTONED:
        return meta.first_stored <= meta.last_revision
    return meta.floor() > meta.first_stored


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Driver errors become the store's own: storage full, or else unavailable."""
    try:
        yield
    except sqlite3.Error as e:
        if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "is full" in str(e):
            raise StorageFull(f"the disk is full: {e}") from e
        raise StoreUnavailable(f"storage error: {e}") from e
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StorageFull(f"the disk is full: {e}") from e
        raise


class SQLiteStorage(Storage):
    """Events in one SQLite file. ``path`` may be ``:memory:``-free paths only (WAL needs a file)."""

    def __init__(
        self,
        path: str,
        *,
        durability: str = "full",
        archive_dir: str = "",
        prefix_rules: Mapping[str, Policy] | None = None,
        cache_size: int = 200_000,
        readers: int = 2,
    ) -> None:
        self.path = path
        self.durability = durability
        self.archive_dir = archive_dir
        self.prefix_rules = dict(prefix_rules or {})
        self.cache_size = cache_size
        self.n_readers = readers
        self._writer: sqlite3.Connection | None = None
        self._wthread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sluice-sqlite-writer")
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        self._lock = asyncio.Lock()
        self._cache: OrderedDict[str, StreamMeta] = OrderedDict()
        #: Streams some per-stream fact may hide events of (see the module's docstring).
        self._pinned: dict[int, StreamMeta] = {}
        #: Streams with stored revisions no rule keeps: the next reclaim pass's work.
        self._due: dict[int, StreamMeta] = {}
        #: Prefix rules that only limit age (their streams are not pinned), and per age
        #: limit the position up to which expired events were looked for.
        self._age_rules = {p: age_limit_us(r) for p, r in self.prefix_rules.items() if _age_only(r)}
        self._age_marks: dict[int, int] = {}
        self._min_age = min(self._age_rules.values(), default=0)
        self._names: OrderedDict[int, str] = OrderedDict()
        self._head = 0
        self._next_stream_id = 1
        self._last_created = 0
        self._closed = False
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._commits = 0  # commits since the last checkpoint
        self._group_lock = asyncio.Lock()
        self._groups: dict[str, GroupRecord] | None = None

    # -- life cycle -------------------------------------------------------------------

    @property
    def head_position(self) -> int:
        return self._head

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path)
        await conn.execute("PRAGMA busy_timeout = 10000")
        await conn.execute("PRAGMA cache_size = -65536")
        await conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    async def open(self) -> None:
        with _translated():
            self._head, self._next_stream_id, self._last_created, retained = await self._in_writer(
                self._open_writer
            )
            for row in retained:
                self._remember(self._meta(row))
            self._checkpointer = await self._connect()
            self._checkpoint_task = asyncio.create_task(self._checkpoints())
            for _ in range(self.n_readers):
                r = await self._connect()
                await r.execute("PRAGMA query_only = 1")
                self._all_readers.append(r)
                self._readers.put_nowait(r)

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the writer thread: one thread hop for a whole group commit."""
        return await asyncio.get_running_loop().run_in_executor(self._wthread, fn, *args)

    def _open_writer(self) -> tuple[int, int, int, list[Any]]:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        w = self._writer = sqlite3.connect(self.path, check_same_thread=False)
        w.execute("PRAGMA busy_timeout = 10000")
        w.execute("PRAGMA cache_size = -65536")
        w.execute("PRAGMA journal_mode = WAL")
        w.execute(f"PRAGMA synchronous = {SYNC_MODES[self.durability]}")
        # Checkpoints run on their own connection and thread (see _checkpoints), not inside
        # a commit on the write path, where they would stall appends for tens of ms.
        w.execute("PRAGMA wal_autocheckpoint = 0")
        page_size = w.execute("PRAGMA page_size").fetchone()[0]
        w.execute(f"PRAGMA journal_size_limit = {WAL_RESTART_FRAMES * (page_size + 24)}")
        w.executescript(SCHEMA)
        rows = w.execute("SELECT version FROM schema_version").fetchall()
        if not rows:
            w.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        elif rows[0][0] > SCHEMA_VERSION:
            raise StoreUnavailable(f"database schema {rows[0][0]} is newer than this store's")
        else:
            for version in range(rows[0][0] + 1, SCHEMA_VERSION + 1):
                w.executescript(MIGRATIONS[version])
                w.execute("UPDATE schema_version SET version = ?", (version,))
        w.execute(INDEX_REMOVED)
        w.execute("CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        w.execute("INSERT OR IGNORE INTO store_info VALUES ('store_id', ?)", (str(uuid.uuid4()),))
        self.store_id = w.execute("SELECT value FROM store_info WHERE key = 'store_id'").fetchone()[0]
        w.commit()
        head_e, head_s, max_id, last_created = w.execute(
            "SELECT (SELECT MAX(position) FROM events), (SELECT MAX(last_position) FROM streams),"
            " (SELECT MAX(id) FROM streams), (SELECT MAX(created_us) FROM events)"
        ).fetchone()
        clauses = ["retention IS NOT NULL", "state != 2", "deleted_before > 0"]
        params: list[Any] = []
        for prefix, rule in self.prefix_rules.items():
            if not _age_only(rule):  # streams under age-only rules are not pinned
                clauses.append("(name >= ? AND name < ?)")
                params += [prefix, prefix_end(prefix)]
        sql = f"SELECT {STREAM_COLUMNS} FROM streams WHERE " + " OR ".join(clauses)
        retained = w.execute(sql, params).fetchall()
        return max(head_e or 0, head_s or 0), (max_id or 0) + 1, last_created or 0, retained

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoint_task
        async with self._lock:
            if self._checkpointer is not None:
                await self._checkpointer.close()
            for conn in self._all_readers:
                await conn.close()
            if self._writer is not None:
                await self._in_writer(self._writer.close)
        self._wthread.shutdown(wait=True)

    async def _checkpoints(self) -> None:
        """Copy the WAL into the database now and then, beside the writer (PASSIVE mode)."""
        assert self._checkpointer is not None
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            if not self._commits:
                continue
            self._commits = 0
            try:
                frames, copied = await self._checkpoint()
                if frames >= WAL_RESTART_FRAMES and frames - copied <= WAL_CATCH_UP_FRAMES:
                    await self._checkpoint()  # what came meanwhile, so little is left below
                    async with self._lock:  # appends wait while the rest is copied
                        await self._checkpoint()
            except sqlite3.Error as e:
                log.warning("WAL checkpoint failed, will retry: %s", e)

    async def _checkpoint(self) -> tuple[int, int]:
        """One PASSIVE checkpoint: (frames in the WAL, frames copied)."""
        assert self._checkpointer is not None
        ((_busy, frames, copied),) = await self._checkpointer.execute_fetchall(
            "PRAGMA wal_checkpoint(PASSIVE)"
        )
        return frames, copied

    @contextlib.asynccontextmanager
    async def _reader(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        conn = await self._readers.get()
        try:
            with _translated():
                yield conn
        finally:
            self._readers.put_nowait(conn)

    # -- stream state -----------------------------------------------------------------

    def _meta(self, row: Sequence[Any]) -> StreamMeta:
        return stream_meta(row, self.prefix_rules)

    def _remember(self, meta: StreamMeta) -> None:
        self._cache[meta.name] = meta
        self._cache.move_to_end(meta.name)
        if meta.retained and not _unpinned(meta):
            self._pinned[meta.id] = meta
        else:
            self._pinned.pop(meta.id, None)
        if meta.retained and _below_floor(meta):
            self._due[meta.id] = meta
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _cached(self, names: Sequence[str]) -> tuple[dict[str, StreamMeta | None], list[str]]:
        """Stream states known in memory, and the names to look up in the database."""
        found: dict[str, StreamMeta | None] = {}
        missing: list[str] = []
        for name in names:
            meta = self._cache.get(name)
            if meta is None:
                missing.append(name)
            else:
                found[name] = meta
        return found, missing

    def _fetch_streams(self, names: Sequence[str]) -> dict[str, StreamMeta | None]:
        """(writer thread) Stream rows by name; None for names never written."""
        assert self._writer is not None
        found: dict[str, StreamMeta | None] = dict.fromkeys(names)
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {STREAM_COLUMNS} FROM streams WHERE name IN ({marks})"
            for row in self._writer.execute(sql, chunk):
                found[row[1]] = self._meta(row)
        return found

    async def _lookup(self, names: Sequence[str]) -> dict[str, StreamMeta | None]:
        found, missing = self._cached(names)
        if missing:
            fetched = await self._in_writer(self._fetch_streams, missing)
            for meta in fetched.values():
                if meta is not None:
                    self._remember(meta)
            found.update(fetched)
        return found

    async def stream(self, name: str) -> StreamMeta | None:
        meta = self._cache.get(name)
        if meta is not None:
            return meta
        async with self._reader() as r:
            rows = list(
                await r.execute_fetchall(f"SELECT {STREAM_COLUMNS} FROM streams WHERE name = ?", (name,))
            )
        return self._meta(rows[0]) if rows else None

    # -- appends ----------------------------------------------------------------------

    async def append(self, ops: Sequence[list[AppendPart]]) -> list[Outcome]:
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        async with self._lock:
            created = max(now_us(), self._last_created)
            names = list(dict.fromkeys(p.stream for op in ops for p in op))
            known, missing = self._cached(names)
            args = (self._head + 1, self._next_stream_id, created)
            with _translated():
                if (
                    self.durability != "full"  # an fsync must not stall the event loop
                    and len(missing) <= INLINE_LOOKUPS
                    and self._may_inline(ops)
                ):
                    # No fsync, a bounded batch: committing here costs less than a hop to
                    # the writer (see INLINE_EVENTS).
                    plan, fetched = self._append_sync(ops, known, missing, args)
                else:
                    plan, fetched = await self._in_writer(self._append_sync, ops, known, missing, args)
            for meta in fetched.values():
                if meta is not None:
                    self._remember(meta)
            self._head = plan.next_position - 1
            self._commits += 1
            self._next_stream_id = plan.next_stream_id
            self._last_created = created
            for meta in plan.streams.values():
                self._remember(meta)
            if plan.rows and self.listener is not None:
                self.listener(plan.rows)
        return plan.outcomes

    def appends_per_message(self) -> int:
        return SESSION_APPENDS if self.durability != "full" and not self.listening() else 0

    def _may_inline(self, ops: Sequence[list[AppendPart]]) -> bool:
        """Whether a commit may run on the event loop (see INLINE_EVENTS): small enough to
        hold it a few milliseconds at most, and larger than a few events only while nobody
        waits there for deliveries."""
        events = sum(len(p.events) for op in ops for p in op)
        if events > INLINE_EVENTS or (events > INLINE_EVENTS_LISTENED and self.listening()):
            return False
        return sum(len(e.data) for op in ops for p in op for e in p.events) <= INLINE_BYTES

    def _append_sync(
        self,
        ops: Sequence[list[AppendPart]],
        known: dict[str, StreamMeta | None],
        missing: list[str],
        args: tuple[int, int, int],
    ) -> tuple[Plan, dict[str, StreamMeta | None]]:
        """(the writer connection, on its thread or inline: see INLINE_EVENTS) Look up, plan,
        write and commit one group of appends; the helpers it calls, marked (writer thread),
        run wherever it does."""
        assert self._writer is not None
        w = self._writer
        fetched = self._fetch_streams(missing) if missing else {}
        known = {**known, **fetched}
        plan = plan_append(ops, known, *args, self.prefix_rules)
        if plan.check_ids:
            plan = plan_append(ops, known, *args, self.prefix_rules, self._stored_ids(ops))
        try:
            self._write(plan, args[1])
        except sqlite3.IntegrityError:
            # An event id is already stored: look them up and plan again knowing them.
            w.rollback()
            plan = plan_append(ops, known, *args, self.prefix_rules, self._stored_ids(ops))
            self._write(plan, args[1])
        except BaseException:
            w.rollback()
            raise
        return plan, fetched

    def _write(self, plan: Plan, first_new_id: int) -> None:
        """(writer thread) The plan's events and streams, committed; streams with ids from
        ``first_new_id`` on are new."""
        assert self._writer is not None
        w = self._writer
        if not plan.rows:
            return
        w.executemany(INSERT_EVENT, plan.rows)
        known: list[StreamMeta] = []
        created: list[StreamMeta] = []
        for meta in plan.streams.values():
            if meta.policy.max_bytes:
                meta.bytes_floor = self._bytes_floor(meta)
            (known if meta.id < first_new_id else created).append(meta)
        w.executemany(SAVE_STREAM, [_params(m) for m in created])
        if w.executemany(APPEND_STREAM, [_append_params(m) for m in known]).rowcount != len(known):
            w.executemany(SAVE_STREAM, [_params(m) for m in known])  # a row gone: write them whole
        w.commit()

    def _bytes_floor(self, meta: StreamMeta) -> int:
        """(writer thread) The revision below which the stream holds more than max_bytes."""
        assert self._writer is not None
        row = self._writer.execute(
            "SELECT revision FROM (SELECT revision, SUM(size) OVER (ORDER BY revision DESC) AS total"
            " FROM events WHERE stream_id = ? AND revision >= ?) WHERE total > ? LIMIT 1",
            (meta.id, max(meta.bytes_floor, meta.first_stored), meta.policy.max_bytes),
        ).fetchone()
        return max(meta.bytes_floor, row[0] + 1) if row else meta.bytes_floor

    def _stored_ids(self, ops: Sequence[list[AppendPart]]) -> dict[bytes, tuple[str, int, int]]:
        """(writer thread) Where the client-given event ids of ops are already stored."""
        assert self._writer is not None
        ids = [ev.id for op in ops for part in op for ev in part.events if ev.client_id]
        stored: dict[bytes, tuple[str, int, int]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._writer.execute(
                "SELECT e.event_id, s.name, e.revision, e.position FROM events e"
                f" JOIN streams s ON s.id = e.stream_id WHERE e.event_id IN ({marks})",
                chunk,
            )
            for event_id, name, revision, position in rows:
                stored[event_id] = (name, revision, position)
        return stored

    # -- reads ------------------------------------------------------------------------

    async def read_stream(
        self, meta: StreamMeta, start: Start, backwards: bool, limit: int, with_data: bool
    ) -> list[Row]:
        w = stream_window(meta, start, backwards, now_us())
        if w is None:
            return []
        extra = ""
        params: list[Any] = [meta.id, w.lo, w.hi, w.cutoff]
        if w.bound:
            column = "position" if w.bound == "position" else "created_us"
            extra = f" AND {column} {'<=' if backwards else '>='} ?"
            params.append(w.value)
        params.append(limit)
        order = "DESC" if backwards else "ASC"
        cols = ROW_COLUMNS.format(data="events.data" if with_data else "x''")
        sql = (
            f"SELECT {cols} FROM events WHERE stream_id = ? AND revision >= ? AND revision <= ?"
            f" AND created_us >= ?{extra} ORDER BY revision {order} LIMIT ?"
        )
        async with self._reader() as r:
            return list(await r.execute_fetchall(sql, params))  # type: ignore[arg-type]

    async def read_all(
        self, position: int, backwards: bool, limit: int, filt: StreamFilter, with_data: bool
    ) -> tuple[list[Row], int, bool]:
        head = self._head
        cols = ROW_COLUMNS.format(data="events.data" if with_data else "x''")
        where = ["position <= ?" if backwards else "position >= ?"]
        params: list[Any] = [position]
        # A filter is applied to events in position order: one query looks at no more than
        # SEARCH_WINDOW positions, so a filter matching few events costs bounded work per
        # batch, and the caller goes on from the window's end (see SEARCH_WINDOW).
        edge = 0  # the last position this query may look at; 0: no window
        if filt:
            edge = max(position - SEARCH_WINDOW + 1, 1) if backwards else position + SEARCH_WINDOW - 1
            where.append("position >= ?" if backwards else "position <= ?")
            params.append(edge)
        if filt.types:
            where.append(f"type IN ({','.join('?' * len(filt.types))})")
            params += filt.types
        if filt.prefixes:
            ranges = " OR ".join("(name >= ? AND name < ?)" for _ in filt.prefixes)
            # "+": not through events_by_stream. SQLite took that index for the IN list,
            # then sorted every event of the matching streams by position for each batch:
            # a catch-up of a prefix cost its events squared over the batch size. Read in
            # position order instead, the streams looked up per event; the whole catch-up
            # then passes each position once (and a sparse filter scans past the others).
            where.append(f"+stream_id IN (SELECT id FROM streams WHERE {ranges})")
            for p in filt.prefixes:
                params += [p, prefix_end(p)]
        order = "DESC" if backwards else "ASC"
        source = "events"
        if filt.partition_count:  # a stream's partition is its name's hash modulo the count
            source = "events JOIN streams ON streams.id = stream_id"
            where.append(f"streams.hash % ? IN ({','.join('?' * len(filt.partitions))})")
            params += [filt.partition_count, *sorted(filt.partitions)]
            if filt.skips_system:
                where.append("NOT (streams.name >= ? AND streams.name < ?)")
                params += [SYSTEM_PREFIX, SYSTEM_END]
        sql = f"SELECT {cols} FROM {source} WHERE {' AND '.join(where)} ORDER BY position {order} LIMIT ?"
        params.append(limit)
        async with self._reader() as r:
            raw: list[Row] = list(await r.execute_fetchall(sql, params))  # type: ignore[arg-type]
        rows = await self._visible(raw)
        full = len(raw) == limit
        if backwards:
            if edge and not full:  # the window held fewer: go on below it
                return rows, edge - 1, edge <= 1
            return rows, (raw[-1][0] - 1 if raw else 0), not full or (bool(raw) and raw[-1][0] <= 1)
        if edge and not full and edge < head:  # the window held fewer: go on past it
            return rows, edge + 1, False
        done = not full
        nxt = raw[-1][0] + 1 if raw else position
        if done:
            nxt = max(nxt, head + 1)
        return rows, nxt, done

    async def _visible(self, raw: list[Row]) -> list[Row]:
        """The rows a rule does not hide: pinned streams by their state; the rest by the
        age of a prefix rule (names looked up only for rows older than the shortest)."""
        pinned = self._pinned
        if not raw or (not pinned and not self._age_rules):
            return raw
        now = now_us()
        names: dict[int, str] = {}
        if self._age_rules:
            oldest = now - self._min_age
            old = {row[1] for row in raw if row[3] < oldest and row[1] not in pinned}
            if old:
                names = await self._names_of(old)
        out = []
        for row in raw:
            meta = pinned.get(row[1])
            if meta is not None:
                if meta.visible(row[2], row[3], now):
                    out.append(row)
                continue
            name = names.get(row[1])
            if name is not None:
                limit = age_limit_us(resolve(name, NO_POLICY, self.prefix_rules)[0])
                if limit and row[3] < now - limit:
                    continue
            out.append(row)
        return out

    def _age_rule_streams(self, prefix: str) -> tuple[list[str], list[Any]]:
        """SQL conditions (on streams ``s``) for the streams an age-only prefix rule governs:
        under its prefix, not under a longer rule, with no policy or deletion of their own."""
        where = ["s.name >= ?", "s.name < ?", "s.retention IS NULL", "s.state = 2", "s.deleted_before = 0"]
        params: list[Any] = [prefix, prefix_end(prefix)]
        for longer in self.prefix_rules:
            if longer != prefix and longer.startswith(prefix):
                where.append("NOT (s.name >= ? AND s.name < ?)")
                params += [longer, prefix_end(longer)]
        return where, params

    async def _removed_position(self, filt: StreamFilter, since: int) -> int:
        """The newest position removed (reclaimed) at or after ``since`` from a stream the
        filter takes; 0 if none (indexed: only streams that lost events are looked at)."""
        where: list[str] = ["s.removed_position >= ?"]
        params: list[Any] = [since]
        if filt.prefixes:
            where.append("(" + " OR ".join("(s.name >= ? AND s.name < ?)" for _ in filt.prefixes) + ")")
            for p in filt.prefixes:
                params += [p, prefix_end(p)]
        if filt.partition_count:
            where.append(f"s.hash % ? IN ({','.join('?' * len(filt.partitions))})")
            params += [filt.partition_count, *sorted(filt.partitions)]
        # (Removed events are gone, so their types are not known: any removal counts.)
        sql = f"SELECT MAX(s.removed_position) FROM streams s WHERE {' AND '.join(where)}"
        async with self._reader() as r:
            ((value,),) = await r.execute_fetchall(sql, params)
        return int(value or 0)

    async def _names_of(self, ids: Collection[int]) -> dict[int, str]:
        """Stream names by id, from a bounded cache (names never change for an id)."""
        cache = self._names
        out = {i: cache[i] for i in ids if i in cache}
        missing = [i for i in ids if i not in out]
        if missing:
            found = await self.stream_names(missing)
            out.update(found)
            cache.update(found)
            while len(cache) > NAMES_CACHED:
                cache.popitem(last=False)
        return out

    async def removed_upto(self, filt: StreamFilter, since: int) -> int:
        # Events below `since` that the reader will not see: removed ones (each stream keeps
        # the newest position it lost: one indexed query), and ones hidden but not removed
        # yet: of pinned streams with an age limit of their own or revisions below their
        # floor (in memory, each queried), and of streams under an age-only prefix rule
        # (one query per rule over the positions from `since`). The removed ones are read
        # last: a reclaim pass that lands between these awaits commits the removal before
        # it marks the events removed in memory, so what the hidden ones no longer show,
        # the database then does.
        prefixes = filt.prefixes
        now = now_us()
        types = f" AND type IN ({','.join('?' * len(filt.types))})" if filt.types else ""
        newest = 0
        streams = [
            m
            for m in self._pinned.values()
            if m.last_position >= since
            and (_below_floor(m) or age_limit_us(m.policy))
            and (not prefixes or m.name.startswith(prefixes))
            and (not filt.partition_count or filt.in_partitions(m.name))
        ]
        async with self._reader() as r:
            for prefix, limit in self._age_rules.items():
                if prefixes and not any(prefix.startswith(p) or p.startswith(prefix) for p in prefixes):
                    continue
                where, params = self._age_rule_streams(prefix)
                if prefixes:
                    where.append("(" + " OR ".join("(s.name >= ? AND s.name < ?)" for _ in prefixes) + ")")
                    for p in prefixes:
                        params += [p, prefix_end(p)]
                if filt.partition_count:
                    where.append(f"s.hash % ? IN ({','.join('?' * len(filt.partitions))})")
                    params += [filt.partition_count, *sorted(filt.partitions)]
                rows = await r.execute_fetchall(
                    "SELECT MAX(e.position) FROM events e JOIN streams s ON s.id = e.stream_id"
                    f" WHERE e.position >= ? AND e.created_us < ?{types.replace('type', 'e.type')}"
                    f" AND {' AND '.join(where)}",
                    (since, now - limit, *filt.types, *params),
                )
                for (value,) in rows:
                    newest = max(newest, value or 0)
            for meta in streams:
                cutoff = age_cutoff_us(meta.policy, now)
                floor = meta.last_revision + 1 if meta.state == State.TOMBSTONED else meta.floor()
                rows = await r.execute_fetchall(  # (removals: _removed_position, above)
                    "SELECT (SELECT MAX(position) FROM events"
                    f" WHERE stream_id = ?1 AND revision < ?2{types}),"
                    f" (SELECT MAX(position) FROM events WHERE stream_id = ?1 AND created_us < ?3{types})",
                    (meta.id, floor, cutoff, *filt.types),
                )
                for value in next(iter(rows)):
                    newest = max(newest, value or 0)
        newest = max(newest, await self._removed_position(filt, since))
        return newest if newest >= since else 0

    async def position_at_time(self, time_us: int, backwards: bool) -> int:
        forward_sql = "SELECT position, created_us FROM events WHERE position >= ? ORDER BY position LIMIT 1"
        backward_sql = (
            "SELECT position, created_us FROM events WHERE position <= ? ORDER BY position DESC LIMIT 1"
        )
        async with self._reader() as r:

            async def probe(position: int, back: bool) -> tuple[int, int] | None:
                rows = list(await r.execute_fetchall(backward_sql if back else forward_sql, (position,)))
                return (rows[0][0], rows[0][1]) if rows else None

            return await search_position(probe, self._head, time_us, backwards)

    async def list_streams(
        self, prefix: str, after: str, limit: int, include_deleted: bool
    ) -> list[StreamMeta]:
        sql = f"SELECT {STREAM_COLUMNS} FROM streams WHERE name >= ? AND name < ? AND name > ?"
        if not include_deleted:
            sql += " AND state = 2"
        sql += " ORDER BY name LIMIT ?"
        async with self._reader() as r:
            rows = await r.execute_fetchall(sql, (prefix, prefix_end(prefix), after, limit))
        return [self._cache.get(row[1]) or self._meta(row) for row in rows]

    async def stream_names(self, ids: Collection[int]) -> dict[int, str]:
        known = list(dict.fromkeys(ids))
        out: dict[int, str] = {}
        async with self._reader() as r:
            for lo in range(0, len(known), 500):
                chunk = known[lo : lo + 500]
                sql = f"SELECT id, name FROM streams WHERE id IN ({','.join('?' * len(chunk))})"
                out.update((int(i), str(n)) for i, n in await r.execute_fetchall(sql, chunk))
        return out

    async def count_events(self, meta: StreamMeta) -> int:
        now = now_us()
        counted = count_by_floors(meta, now)
        if counted is not None:
            return counted
        cutoff = age_cutoff_us(meta.policy, now)
        async with self._reader() as r:
            ((n,),) = await r.execute_fetchall(
                "SELECT COUNT(*) FROM events WHERE stream_id = ? AND revision >= ? AND created_us >= ?",
                (meta.id, meta.floor(), cutoff),
            )
        return int(n)

    # -- administration ---------------------------------------------------------------

    def _save_sync(self, meta: StreamMeta) -> None:
        assert self._writer is not None
        if meta.policy.max_bytes:
            meta.bytes_floor = self._bytes_floor(meta)
        self._writer.execute(SAVE_STREAM, _params(meta))
        self._writer.commit()

    async def _save(self, meta: StreamMeta) -> None:
        with _translated():
            await self._in_writer(self._save_sync, meta)
        self._remember(meta)

    async def _editable(self, name: str) -> tuple[StreamMeta | None, StreamMeta]:
        """The stream's current state (None if never written) and a copy to change and save."""
        with _translated():
            current = (await self._lookup([name]))[name]
        now = now_us()
        if current is None:
            meta = new_stream(name, self._next_stream_id, now, self.prefix_rules)
            self._next_stream_id += 1
        else:
            meta = current.copy()
        meta.updated_us = now
        return current, meta

    async def set_retention(self, name: str, policy: Policy) -> StreamMeta:
        async with self._lock:
            _, meta = await self._editable(name)
            set_own_policy(meta, policy, self.prefix_rules)
            await self._save(meta)
            return meta

    async def delete_stream(self, name: str, expect: Expect, revision: int, tombstone: bool) -> int:
        async with self._lock:
            current, meta = await self._editable(name)
            mark_deleted(current, meta, expect, revision, tombstone)
            await self._save(meta)
            return self._head

    # -- retention --------------------------------------------------------------------

    async def reclaim(self) -> ReclaimStats:
        """Remove what no rule keeps from the streams that have some: those due (revisions
        below their floor, noted as they change), pinned ones with an age limit of their
        own, and those under age-only prefix rules with newly expired events (found by
        scanning the positions that expired since the last pass)."""
        stats = ReclaimStats()
        await self._find_expired()
        due, self._due = self._due, {}
        todo = dict(due)
        for meta in self._pinned.values():
            if age_limit_us(meta.policy) and meta.id not in todo:
                todo[meta.id] = meta
        for meta in todo.values():

            async def remove(below: int, meta: StreamMeta = meta) -> int:
                async with self._lock:
                    current = self._pinned.get(meta.id) or self._cache.get(meta.name) or meta
                    with _translated():
                        removed = await self._in_writer(self._remove_sync, meta.id, below)
                    current.first_stored = max(current.first_stored, below)
                    if meta is not current:
                        meta.first_stored = max(meta.first_stored, below)
                    return removed

            async def recorded(lo: int, hi: int, meta: StreamMeta = meta) -> list[pb.RecordedEvent]:
                return await self._recorded(meta, lo, hi)

            async def first_young(cutoff: int, meta: StreamMeta = meta) -> int | None:
                async with self._reader() as r:
                    ((young,),) = await r.execute_fetchall(
                        "SELECT MIN(revision) FROM events WHERE stream_id = ? AND revision >= ?"
                        " AND created_us >= ?",
                        (meta.id, meta.first_stored, cutoff),
                    )
                return None if young is None else int(young)

            await reclaim_stream(meta, self.archive_dir, stats, first_young, recorded, remove)
        return stats

    async def _find_expired(self) -> None:
        """Note as due the streams under age-only prefix rules that hold events older than
        their limit: per limit, the streams with events between where the last pass stopped
        and the position the limit now cuts at (created_us never decreases with position)."""
        if not self._age_rules:
            return
        started = asyncio.get_running_loop().time()
        now = now_us()
        for limit in sorted(set(self._age_rules.values())):
            mark = self._age_marks.get(limit, 0)
            cut = await self.position_at_time(now - limit, backwards=False)
            while mark < cut and asyncio.get_running_loop().time() - started < AGE_SCAN_SECONDS:
                hi = min(cut, mark + AGE_SCAN_CHUNK)
                async with self._reader() as r:
                    sql = "SELECT DISTINCT stream_id FROM events WHERE position >= ? AND position < ?"
                    rows = await r.execute_fetchall(sql, (mark, hi))
                ids = [int(i) for (i,) in rows if int(i) not in self._pinned]
                for name in (await self._names_of(ids)).values():
                    if age_limit_us(resolve(name, NO_POLICY, self.prefix_rules)[0]) != limit:
                        continue  # another rule's (or none): found by its own limit's scan
                    meta = await self.stream(name)
                    if meta is not None and _unpinned(meta):
                        self._due[meta.id] = meta
                mark = hi
            self._age_marks[limit] = mark

    def _remove_sync(self, stream_id: int, below: int) -> int:
        """(writer thread) Delete a stream's events below a revision; how many went."""
        assert self._writer is not None
        w = self._writer
        ((newest,),) = w.execute(
            "SELECT MAX(position) FROM events WHERE stream_id = ? AND revision < ?", (stream_id, below)
        ).fetchall()
        cur = w.execute("DELETE FROM events WHERE stream_id = ? AND revision < ?", (stream_id, below))
        w.execute(
            "UPDATE streams SET first_stored = ?, removed_position = MAX(removed_position, ?) WHERE id = ?",
            (below, newest or 0, stream_id),
        )
        self._writer.commit()
        return max(cur.rowcount, 0)

    async def _recorded(self, meta: StreamMeta, lo: int, hi: int) -> list[pb.RecordedEvent]:
        async with self._reader() as r:
            rows = await r.execute_fetchall(
                "SELECT head, data FROM events WHERE stream_id = ? AND revision >= ? AND revision < ?"
                " ORDER BY revision",
                (meta.id, lo, hi),
            )
        return [pb.RecordedEvent.FromString(eventbytes.event_bytes(h, d)) for h, d in rows]

    # -- consumer groups --------------------------------------------------------------
    # One process owns the file: groups are cached in memory, one transaction at a time,
    # and written through (small writes on the loop thread under the write lock).

    @contextlib.asynccontextmanager
    async def group_tx(self, name: str) -> AsyncIterator[GroupTx]:
        async with self._group_lock:
            if self._groups is None:
                self._groups = await self._load_groups()
            current = self._groups.get(name)
            tx = _SQLiteGroupTx(
                self, name, dataclasses.replace(current, cursors=dict(current.cursors)) if current else None
            )
            yield tx
            if tx.writes:
                await self._group_write(tx.writes)
            if tx.deleted:
                self._groups.pop(name, None)
            elif tx.record is not None and tx.writes:
                self._groups[name] = tx.record

    async def list_groups(self) -> list[str]:
        async with self._group_lock:
            if self._groups is None:
                self._groups = await self._load_groups()
            return sorted(self._groups)

    async def _load_groups(self) -> dict[str, GroupRecord]:
        async with self._reader() as r:
            groups = await r.execute_fetchall("SELECT name, config, created_us, members FROM groups")
            cursors: dict[str, dict[int, int]] = {}
            for grp, partition, position in await r.execute_fetchall(
                "SELECT grp, partition, position FROM group_cursors"
            ):
                cursors.setdefault(grp, {})[partition] = position
        return {n: GroupRecord(n, c, t, m, cursors.get(n, {})) for n, c, t, m in groups}

    def _group_sync(self, writes: Sequence[GroupWrite]) -> None:
        """Statements, then cursor upserts, of one group transaction: one commit."""
        assert self._writer is not None
        w = self._writer
        try:
            for sql, params, cursors in writes:
                if sql:
                    w.execute(sql, params)
                if cursors:
                    w.executemany(
                        "INSERT INTO group_cursors (grp, partition, position) VALUES (?, ?, ?)"
                        " ON CONFLICT (grp, partition) DO UPDATE SET position = excluded.position",
                        cursors,
                    )
            w.commit()
        except BaseException:
            w.rollback()
            raise

    async def _group_write(self, writes: Sequence[GroupWrite]) -> None:
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        async with self._lock:
            with _translated():
                self._group_sync(writes)


class _SQLiteGroupTx(GroupTx):
    """Collects a group transaction's writes; the storage applies them at a clean exit."""

    def __init__(self, storage: SQLiteStorage, name: str, record: GroupRecord | None) -> None:
        self.storage = storage
        self.name = name
        self.record = record
        self.now_us = now_us()  # one process owns the file: its clock is the only one
        self.head_position = storage.head_position
        self.writes: list[GroupWrite] = []
        self.deleted = False

    async def save(self, record: GroupRecord, cursors: Mapping[int, int] | None = None) -> None:
        self.writes.append(
            (
                "INSERT INTO groups (name, config, created_us, members) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET config = excluded.config, members = excluded.members",
                (record.name, record.config, record.created_us, record.members),
                [(record.name, p, pos) for p, pos in (cursors or {}).items()],
            )
        )
        # The record carries the cursors as stored, updated by these.
        record.cursors = {**(self.record.cursors if self.record else {}), **(cursors or {})}
        self.record = record

    async def save_cursors(self, cursors: Mapping[int, int]) -> None:
        assert self.record is not None
        self.writes.append(("", (), [(self.name, p, pos) for p, pos in cursors.items()]))
        self.record.cursors.update(cursors)

    async def delete(self) -> None:
        self.writes.append(("DELETE FROM group_cursors WHERE grp = ?", (self.name,), []))
        self.writes.append(("DELETE FROM groups WHERE name = ?", (self.name,), []))
        self.deleted = True
