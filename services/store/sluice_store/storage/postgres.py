"""PostgreSQL backend: several store replicas on one database, through asyncpg.
(Over 500 lines: one class implements the whole Storage interface, with its SQL beside
the code that runs it; the live feed is ``pgfeed``, the append rules ``planner``.)

Positions become visible in order because appends are serialised: every write
transaction first locks the single row of ``head`` (which holds the newest position),
takes positions from it and commits while holding the lock, and PostgreSQL releases a
row lock only after the commit is visible. A reader that sees position p therefore sees
every position below p: no sequence gaps that fill in later. The cost: one write
transaction at a time across all replicas, which group commit (many requests, up to
thousands of events, per transaction) amortises.

Each commit sends a notification (``pg_notify``, delivered in commit order) carrying its
newest position and the replica it came from. Every replica runs one pump that hands
committed events, in position order and without gaps, to its live subscribers: its own
commits straight from memory, other replicas' read back from the events table (only while
it has live subscribers). A missed notification is caught by a poll of the head every
``poll_interval`` seconds.

Retention is evaluated in SQL: each stream row carries the policy in force (its own or
its prefix rule's), so every replica hides the same expired events. Reclaim runs on one
replica at a time (a session advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from sluice import eventbytes
from sluice.v1 import streams_pb2 as pb
from sluice_store.config import ConfigError
from sluice_store.errors import StorageFull, StoreUnavailable
from sluice_store.retention import Policy, age_cutoff_us, age_limit_us, now_us
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
from sluice_store.storage.pgfeed import LiveFeed
from sluice_store.storage.planner import Plan, mark_deleted, plan_append

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
# Stored revisions that no count, size, truncation or deletion rule keeps, or a tombstoned
# stream's: what the reclaim pass has to remove (a partial index holds just these streams).
DUE = (
    "retained AND ((state = 4 AND first_stored <= last_revision) OR first_stored < GREATEST(truncate_before,"
    " deleted_before, bytes_floor, CASE WHEN max_count > 0 THEN last_revision + 1 - max_count ELSE 0 END))"
)
AGE_SCAN_SECONDS = 0.5  # at most this long per reclaim pass finding newly expired events
AGE_SCAN_CHUNK = 50_000  # positions per step of that scan
# Each entry takes the schema from the previous version to this one.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE head (
    id              smallint PRIMARY KEY CHECK (id = 1),
    position        bigint NOT NULL,  -- the newest committed position
    next_stream_id  bigint NOT NULL,
    last_created_us bigint NOT NULL   -- created times never decrease with position
);
INSERT INTO head VALUES (1, 0, 1, 0);
CREATE TABLE streams (
    id               bigint PRIMARY KEY,
    name             text COLLATE "C" NOT NULL UNIQUE,  -- byte order: prefix ranges
    hash             bigint NOT NULL,  -- FNV-1a-32 of the name: partition = hash % count
    last_revision    bigint NOT NULL,
    last_position    bigint NOT NULL,
    state            smallint NOT NULL,
    deleted_before   bigint NOT NULL DEFAULT 0,
    bytes_floor      bigint NOT NULL DEFAULT 0,
    first_stored     bigint NOT NULL DEFAULT 0,
    removed_position bigint NOT NULL DEFAULT 0,
    retention        text,  -- the stream's own policy (JSON)
    created_us       bigint NOT NULL,
    updated_us       bigint NOT NULL,
    -- The policy in force (own or by prefix rule), so reads hide expired events in SQL.
    retained         boolean NOT NULL DEFAULT false,
    max_count        bigint NOT NULL DEFAULT 0,
    truncate_before  bigint NOT NULL DEFAULT 0,
    age_us           bigint NOT NULL DEFAULT 0
);
CREATE INDEX streams_retained ON streams (id) WHERE retained;
CREATE TABLE events (
    position   bigint PRIMARY KEY,
    stream_id  bigint NOT NULL,
    revision   bigint NOT NULL,
    event_id   bytea NOT NULL,
    type       text NOT NULL,
    created_us bigint NOT NULL,
    size       integer NOT NULL,
    head       bytea NOT NULL,
    data       bytea NOT NULL
);
CREATE UNIQUE INDEX events_by_stream ON events (stream_id, revision);
CREATE UNIQUE INDEX events_by_id ON events (event_id);
CREATE TABLE consumer_groups (
    name       text PRIMARY KEY,
    config     bytea NOT NULL,
    created_us bigint NOT NULL,
    members    text NOT NULL
);
CREATE TABLE group_cursors (
    grp       text NOT NULL,
    partition integer NOT NULL,
    position  bigint NOT NULL,
    PRIMARY KEY (grp, partition)
);
""",
    2: f"""
CREATE INDEX streams_due ON streams (id) WHERE {DUE};
CREATE INDEX streams_aged ON streams (age_us) WHERE retained AND age_us > 0 AND retention IS NOT NULL;
""",
}
LOCK_HEAD = "SELECT position, next_stream_id, last_created_us FROM head WHERE id = 1 FOR UPDATE"
# Stream rows and the head in one statement. first_stored and removed_position belong
# to reclaim, which may have moved them since the stream was read.
SAVE = """
WITH saved AS (
    INSERT INTO streams (id, name, hash, last_revision, last_position, state, deleted_before,
        bytes_floor, first_stored, retention, created_us, updated_us, retained, max_count,
        truncate_before, age_us)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
        $6::smallint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::bigint[],
        $12::bigint[], $13::boolean[], $14::bigint[], $15::bigint[], $16::bigint[])
    ON CONFLICT (id) DO UPDATE SET
        last_revision = excluded.last_revision, last_position = excluded.last_position,
        state = excluded.state, deleted_before = excluded.deleted_before,
        bytes_floor = excluded.bytes_floor,
        first_stored = GREATEST(streams.first_stored, excluded.first_stored),
        retention = excluded.retention, updated_us = excluded.updated_us,
        retained = excluded.retained, max_count = excluded.max_count,
        truncate_before = excluded.truncate_before, age_us = excluded.age_us
)
UPDATE head SET position = $17::bigint, next_stream_id = $18::bigint, last_created_us = $19::bigint
WHERE id = 1
RETURNING CASE WHEN $20::text <> '' THEN pg_notify($20, $17::bigint::text || ' ' || $21::text) END
"""
EVENT_COLUMNS = [
    "position",
    "stream_id",
    "revision",
    "created_us",
    "head",
    "data",
    "type",
    "event_id",
    "size",
]
INSERT_EVENTS = f"""
INSERT INTO events ({", ".join(EVENT_COLUMNS)})
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bytea[],
    $6::bytea[], $7::text[], $8::bytea[], $9::integer[])
"""
COPY_FROM = 64  # batches of at least this many events go in by COPY
# The first revision a stream still shows, from the policy columns (tombstoned: none).
FLOOR = (
    "GREATEST(s.truncate_before, s.deleted_before, s.bytes_floor,"
    " CASE WHEN s.max_count > 0 THEN s.last_revision + 1 - s.max_count ELSE 0 END)"
)
VISIBLE = (
    f"(NOT s.retained OR (s.state <> 4 AND e.revision >= {FLOOR}"
    " AND (s.age_us = 0 OR e.created_us >= $NOW - s.age_us)))"
)
POOL_SIZE = 10
RECLAIM_LOCK = "sluice.reclaim"
MIGRATE_LOCK = "sluice.migrate"


def parse_url(url: str) -> tuple[str, str]:
    """The asyncpg DSN and the schema (``?schema=name``; default ``public``) of a URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), "public")
    if not schema or len(schema) > 60 or not schema.replace("_", "").isalnum():
        raise ConfigError(f"db: schema must be 1-60 letters, digits or '_', got {schema!r}")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(("postgresql", parts.netloc, parts.path, rest, parts.fragment)), schema


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Driver and connection errors become the store's own: the storage is unavailable."""
    try:
        yield
    except asyncpg.exceptions.DiskFullError as e:
        raise StorageFull(f"the database's disk is full: {e}") from e
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
        raise StoreUnavailable(f"storage error: {e}") from e


async def _spans(
    conn: asyncpg.Connection,
    sql: str,
    params: list[Any],
    first: int,
    last: int,
    backwards: bool,
    limit: int,
) -> tuple[list[Row], int]:
    """Up to ``limit`` rows of a read along a key (positions, or a stream's revisions), from
    ``first`` toward ``last`` (both included), one query per span of the key: ``sql`` takes
    the span's low and high ends as $2 and $3, and the rows still wanted as its last
    parameter. Also the far end of the last span looked at.

    A span starts as long as the batch and doubles while it holds fewer rows, so a query
    costs no more than its span whatever plan PostgreSQL picks. Over the rest of the key in
    one query, without statistics (a new store, autovacuum off) or in a prepared statement's
    generic plan, it read all of it and sorted it for every batch (a catch-up cost the log's
    or the stream's length per batch), or took a prefix for a handful of streams and went
    through all of them for every event."""
    rows: list[Row] = []
    span = max(limit, 1)
    near = first
    while True:
        far = max(near - span + 1, last) if backwards else min(near + span - 1, last)
        params[1:3] = (far, near) if backwards else (near, far)
        params[-1] = limit - len(rows)
        rows += [tuple(r) for r in await conn.fetch(sql, *params)]
        if len(rows) >= limit or (far <= last if backwards else far >= last):
            return rows, far
        near = far - 1 if backwards else far + 1
        span *= 2


def _policy_columns(meta: StreamMeta) -> tuple[bool, int, int, int]:
    """The stored policy columns: retained, max_count, truncate_before, age_us."""
    p = meta.policy
    return meta.retained, p.max_count, p.truncate_before, age_limit_us(p)


def _read_password(path: str) -> str:
    """The database password from a file (a mounted Secret key), without a final newline."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().rstrip("\r\n")
    except OSError as e:
        raise StoreUnavailable(f"db_password_file: cannot read {path}: {e.strerror}") from e


class PostgresStorage(Storage):
    """Events in PostgreSQL; any number of replicas may share the database."""

    def __init__(
        self,
        url: str,
        *,
        archive_dir: str = "",
        prefix_rules: Mapping[str, Policy] | None = None,
        poll_interval: float = 1.0,
        pool_size: int = POOL_SIZE,
        password_file: str = "",
    ) -> None:
        self.dsn, self.schema = parse_url(url)
        # asyncpg calls this at each new connection: a rotated Secret is read when it is needed.
        self.password: Callable[[], str] | None = (
            functools.partial(_read_password, password_file) if password_file else None
        )
        self.archive_dir = archive_dir
        self.prefix_rules = dict(prefix_rules or {})
        self.poll_interval = poll_interval
        self.pool_size = pool_size
        self.channel = f"sluice_events.{self.schema}"
        self.origin = uuid.uuid4().hex[:12]  # tells this replica's notifications from others'
        self._pool: asyncpg.Pool | None = None
        self.feed = LiveFeed(self)
        self._write_lock = asyncio.Lock()
        self._age_marks: dict[int, int] = {}  # age limit (us) -> position expirations were found to
        self._slot: _Slot | None = None
        self._closed = False

    # -- life cycle -------------------------------------------------------------------

    @property
    def head_position(self) -> int:
        return self.feed.known

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None or self._closed:
            raise StoreUnavailable("the store is shutting down")
        return self._pool

    async def connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self.dsn, password=self.password, server_settings={"search_path": self.schema}
        )
        return conn

    async def open(self) -> None:
        with _translated():
            await self._migrate()
            self._pool = await asyncpg.create_pool(
                self.dsn,
                password=self.password,
                min_size=min(2, self.pool_size),
                max_size=self.pool_size,
                server_settings={"search_path": self.schema},
                command_timeout=60,
            )
            await self._apply_prefix_rules()
            await self.feed.start(await self.pool.fetchval("SELECT position FROM head"))

    async def _migrate(self) -> None:
        """Create or upgrade the schema; replicas starting together take turns."""
        conn = await asyncpg.connect(self.dsn, password=self.password)
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{MIGRATE_LOCK}.{self.schema}"
                )
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(f'SET LOCAL search_path = "{self.schema}"')
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
                version = await conn.fetchval("SELECT version FROM schema_version")
                if version is None:
                    await conn.execute("INSERT INTO schema_version VALUES (0)")
                    version = 0
                if version > SCHEMA_VERSION:
                    raise StoreUnavailable(f"database schema {version} is newer than this store's")
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    await conn.execute(MIGRATIONS[step])
                    await conn.execute("UPDATE schema_version SET version = $1", step)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS store_info (key text PRIMARY KEY, value text NOT NULL)"
                )
                await conn.execute(
                    "INSERT INTO store_info VALUES ('store_id', $1) ON CONFLICT DO NOTHING", str(uuid.uuid4())
                )
                self.store_id = await conn.fetchval("SELECT value FROM store_info WHERE key = 'store_id'")
        finally:
            await conn.close()

    async def _apply_prefix_rules(self) -> None:
        """Bring the stored policy columns in line with this store's prefix rules."""
        clauses = ["retained"]
        params: list[Any] = []
        for prefix in self.prefix_rules:
            params += [prefix, prefix_end(prefix)]
            clauses.append(f"(name >= ${len(params) - 1} AND name < ${len(params)})")
        sql = (
            f"SELECT {STREAM_COLUMNS}, retained, max_count, truncate_before, age_us FROM streams"
            f" WHERE {' OR '.join(clauses)}"
        )
        async with self._write_lock, self.pool.acquire() as conn, conn.transaction():
            head = await conn.fetchrow(LOCK_HEAD)
            changed = []
            for row in await conn.fetch(sql, *params):
                meta = self._meta(row)
                if _policy_columns(meta) != tuple(row[11:15]):
                    changed.append(meta)
            if changed:
                await self._save(conn, changed, head[0], head[1], head[2], notify=False)

    async def close(self) -> None:
        if self._closed:
            return
        await self.feed.stop()
        async with self._write_lock:
            self._closed = True
            if self._pool is not None:
                await self._pool.close()

    # -- stream state -----------------------------------------------------------------

    def _meta(self, row: Sequence[Any]) -> StreamMeta:
        return stream_meta(row, self.prefix_rules)

    async def _fetch_streams(
        self, conn: asyncpg.Connection, names: Sequence[str]
    ) -> dict[str, StreamMeta | None]:
        found: dict[str, StreamMeta | None] = dict.fromkeys(names)
        for row in await conn.fetch(f"SELECT {STREAM_COLUMNS} FROM streams WHERE name = ANY($1)", names):
            found[row[1]] = self._meta(row)
        return found

    async def stream(self, name: str) -> StreamMeta | None:
        with _translated():
            row = await self.pool.fetchrow(f"SELECT {STREAM_COLUMNS} FROM streams WHERE name = $1", name)
        return self._meta(row) if row else None

    async def _save(
        self,
        conn: asyncpg.Connection,
        metas: Sequence[StreamMeta],
        position: int,
        next_stream_id: int,
        last_created: int,
        notify: bool,
    ) -> None:
        """Upsert stream rows and set the head, in the caller's transaction."""
        cols: list[list[Any]] = [[] for _ in range(16)]
        for m in metas:
            if m.policy.max_bytes:
                m.bytes_floor = await self._bytes_floor(conn, m)
            values = (
                m.id,
                m.name,
                name_hash(m.name),
                m.last_revision,
                m.last_position,
                int(m.state),
                m.deleted_before,
                m.bytes_floor,
                m.first_stored,
                m.own.to_json() if m.own else None,
                m.created_us,
                m.updated_us,
                *_policy_columns(m),
            )
            for col, value in zip(cols, values, strict=True):
                col.append(value)
        channel = self.channel if notify else ""
        await conn.fetchval(SAVE, *cols, position, next_stream_id, last_created, channel, self.origin)

    async def _bytes_floor(self, conn: asyncpg.Connection, meta: StreamMeta) -> int:
        """The revision below which the stream holds more than max_bytes."""
        row = await conn.fetchrow(
            "SELECT revision FROM (SELECT revision, SUM(size) OVER (ORDER BY revision DESC) AS total"
            " FROM events WHERE stream_id = $1 AND revision >= $2) t WHERE total > $3"
            " ORDER BY revision DESC LIMIT 1",
            meta.id,
            max(meta.bytes_floor, meta.first_stored),
            meta.policy.max_bytes,
        )
        return max(meta.bytes_floor, row[0] + 1) if row else meta.bytes_floor

    # -- appends ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def write_slot(self) -> AsyncIterator[None]:
        """Open the next append transaction and take the head lock in it, before the
        committer picks its batch: appends that arrive while another replica holds the
        lock join this batch, so contention makes transactions larger, not more."""
        async with self._write_lock:
            with _translated():
                async with self.pool.acquire() as conn:
                    slot = _Slot(conn, conn.transaction())
                    await slot.tx.start()
                    try:
                        slot.head = tuple(await conn.fetchrow(LOCK_HEAD))
                        self._slot = slot
                        yield
                    finally:
                        self._slot = None
                        if slot.open:  # not committed: let the lock go
                            await slot.tx.rollback()

    async def append(self, ops: Sequence[list[AppendPart]]) -> list[Outcome]:
        slot, self._slot = self._slot, None
        if slot is None:  # not called inside write_slot()
            async with self.write_slot():
                return await self.append(ops)
        conn = slot.conn
        with _translated():
            try:
                plan = await self._append_tx(conn, ops, slot.head, check_ids=False)
                slot.open = False
                await slot.tx.commit()
            except asyncpg.UniqueViolationError:
                # An event id is already stored: plan again knowing where.
                slot.open = False
                await slot.tx.rollback()
                async with conn.transaction():
                    plan = await self._append_tx(conn, ops, tuple(await conn.fetchrow(LOCK_HEAD)), True)
        if plan.rows:
            self.feed.committed(plan.rows)
        return plan.outcomes

    async def _append_tx(
        self,
        conn: asyncpg.Connection,
        ops: Sequence[list[AppendPart]],
        head_row: tuple[int, ...],
        check_ids: bool,
    ) -> Plan:
        """Plan and write, under the head lock (head_row is what LOCK_HEAD returned)."""
        head, next_stream_id, last_created = head_row
        created = max(now_us(), last_created)
        names = list(dict.fromkeys(p.stream for op in ops for p in op))
        known = await self._fetch_streams(conn, names)
        args = (head + 1, next_stream_id, created, self.prefix_rules)
        stored = await self._stored_ids(conn, ops) if check_ids else None
        plan = plan_append(ops, known, *args, stored)
        if plan.check_ids and stored is None:
            plan = plan_append(ops, known, *args, await self._stored_ids(conn, ops))
        if plan.rows:
            rows = plan.rows
            records = [r[:6] + r[7:] for r in rows]  # EVENT_COLUMNS: all but the stream name
            if len(records) >= COPY_FROM:
                await conn.copy_records_to_table("events", records=records, columns=EVENT_COLUMNS)
            else:
                await conn.execute(INSERT_EVENTS, *map(list, zip(*records, strict=True)))
            metas = list(plan.streams.values())
            await self._save(conn, metas, plan.next_position - 1, plan.next_stream_id, created, True)
        return plan

    async def _stored_ids(
        self, conn: asyncpg.Connection, ops: Sequence[list[AppendPart]]
    ) -> dict[bytes, tuple[str, int, int]]:
        ids = [ev.id for op in ops for part in op for ev in part.events if ev.client_id]
        rows = await conn.fetch(
            "SELECT e.event_id, s.name, e.revision, e.position FROM events e"
            " JOIN streams s ON s.id = e.stream_id WHERE e.event_id = ANY($1)",
            ids,
        )
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    # -- reads ------------------------------------------------------------------------

    async def read_stream(
        self, meta: StreamMeta, start: Start, backwards: bool, limit: int, with_data: bool
    ) -> list[Row]:
        w = stream_window(meta, start, backwards, now_us())
        if w is None:
            return []
        params: list[Any] = [meta.id, 0, 0, w.cutoff]
        extra = ""
        if w.bound:
            column = "position" if w.bound == "position" else "created_us"
            extra = f" AND {column} {'<=' if backwards else '>='} $5"
            params.append(w.value)
        params.append(0)
        data = "data" if with_data else "''::bytea"
        sql = (
            f"SELECT position, stream_id, revision, created_us, head, {data} FROM events"
            f" WHERE stream_id = $1 AND revision >= $2 AND revision <= $3 AND created_us >= $4{extra}"
            f" ORDER BY revision {'DESC' if backwards else 'ASC'} LIMIT ${len(params)}"
        )
        first, last = (w.hi, w.lo) if backwards else (w.lo, w.hi)
        with _translated():
            async with self.pool.acquire() as conn:
                rows, _ = await _spans(conn, sql, params, first, last, backwards, limit)
        return rows

    @staticmethod
    def _filter_sql(filt: StreamFilter, params: list[Any]) -> list[str]:
        """WHERE clauses (over events e JOIN streams s) for a filter; appends to params."""
        where = []
        if filt.types:
            params.append(list(filt.types))
            where.append(f"e.type = ANY(${len(params)})")
        if filt.prefixes:
            ranges = []
            for p in filt.prefixes:
                params += [p, prefix_end(p)]
                ranges.append(f"(s.name >= ${len(params) - 1} AND s.name < ${len(params)})")
            where.append("(" + " OR ".join(ranges) + ")")
        if filt.partition_count:
            params += [filt.partition_count, sorted(filt.partitions)]
            where.append(f"s.hash % ${len(params) - 1} = ANY(${len(params)})")
            if filt.skips_system:
                params += [SYSTEM_PREFIX, SYSTEM_END]
                where.append(f"NOT (s.name >= ${len(params) - 1} AND s.name < ${len(params)})")
        return where

    @classmethod
    def _read_all_query(cls, filt: StreamFilter, backwards: bool, with_data: bool) -> tuple[str, list[Any]]:
        """The query of one span of a read of all streams and its parameters (see _spans)."""
        # Events in position order, each one's stream looked up by its key (a subquery per
        # event, which the planner cannot turn around), stopping at the limit.
        params: list[Any] = [now_us(), 0, 0]
        where = ["e.position >= $2", "e.position <= $3"]
        if filt.types:
            params.append(list(filt.types))
            where.append(f"e.type = ANY(${len(params)})")
        streams = [
            VISIBLE.replace("$NOW", "$1"),
            *cls._filter_sql(dataclasses.replace(filt, types=()), params),
        ]
        where.append(f"(SELECT {' AND '.join(streams)} FROM streams s WHERE s.id = e.stream_id)")
        params.append(0)
        data = "e.data" if with_data else "''::bytea"
        sql = (
            f"SELECT e.position, e.stream_id, e.revision, e.created_us, e.head, {data}"
            f" FROM events e WHERE {' AND '.join(where)}"
            f" ORDER BY e.position {'DESC' if backwards else 'ASC'} LIMIT ${len(params)}"
        )
        return sql, params

    async def read_all(
        self, position: int, backwards: bool, limit: int, filt: StreamFilter, with_data: bool
    ) -> tuple[list[Row], int, bool]:
        sql, params = self._read_all_query(filt, backwards, with_data)
        with _translated():
            async with self.pool.acquire() as conn:
                # Everything up to the head is committed (appends commit in position order),
                # so a scan bounded by it sees no gap that fills in later.
                head: int = await conn.fetchval("SELECT position FROM head")
                self.feed.advance(head)
                # A filter looks at SEARCH_WINDOW positions at most per call.
                if backwards:
                    first = min(position, head)
                    last = max(first - SEARCH_WINDOW + 1, 1) if filt else 1
                else:
                    first, last = position, min(head, position + SEARCH_WINDOW - 1) if filt else head
                rows, looked = await _spans(conn, sql, params, first, last, backwards, limit)
        full = len(rows) == limit
        if backwards:
            if full:
                return rows, rows[-1][0] - 1, rows[-1][0] <= 1
            return rows, looked - 1, looked <= 1
        if full:
            return rows, rows[-1][0] + 1, False
        if looked < head:  # a filter's window held fewer: go on past it
            return rows, looked + 1, False
        return rows, max(position, head + 1), True

    async def removed_upto(self, filt: StreamFilter, since: int) -> int:
        params: list[Any] = [now_us(), since]
        types = ""
        if filt.types:
            params.append(list(filt.types))
            types = f" AND e.type = ANY(${len(params)})"
        where = ["s.retained", "s.last_position >= $2"]
        streams_only = dataclasses.replace(filt, types=())  # types apply to events, above
        where += self._filter_sql(streams_only, params)
        sql = (
            "SELECT COALESCE(MAX(GREATEST(s.removed_position,"
            f" (SELECT MAX(e.position) FROM events e WHERE e.stream_id = s.id AND e.revision <"
            f" CASE WHEN s.state = 4 THEN s.last_revision + 1 ELSE {FLOOR} END{types}),"
            " (SELECT MAX(e.position) FROM events e WHERE e.stream_id = s.id AND s.age_us > 0"
            f" AND e.created_us < $1 - s.age_us{types}))), 0)"
            f" FROM streams s WHERE {' AND '.join(where)}"
        )
        with _translated():
            newest: int = await self.pool.fetchval(sql, *params)
        return newest if newest >= since else 0

    async def position_at_time(self, time_us: int, backwards: bool) -> int:
        forward_sql = "SELECT position, created_us FROM events WHERE position >= $1 ORDER BY position LIMIT 1"
        backward_sql = (
            "SELECT position, created_us FROM events WHERE position <= $1 ORDER BY position DESC LIMIT 1"
        )
        with _translated():
            async with self.pool.acquire() as conn:
                head = await conn.fetchval("SELECT position FROM head")

                async def probe(position: int, back: bool) -> tuple[int, int] | None:
                    row = await conn.fetchrow(backward_sql if back else forward_sql, position)
                    return (row[0], row[1]) if row else None

                return await search_position(probe, head, time_us, backwards)

    async def list_streams(
        self, prefix: str, after: str, limit: int, include_deleted: bool
    ) -> list[StreamMeta]:
        sql = f"SELECT {STREAM_COLUMNS} FROM streams WHERE name >= $1 AND name < $2 AND name > $3"
        if not include_deleted:
            sql += " AND state = 2"
        sql += " ORDER BY name LIMIT $4"
        with _translated():
            rows = await self.pool.fetch(sql, prefix, prefix_end(prefix), after, limit)
        return [self._meta(row) for row in rows]

    async def stream_names(self, ids: Collection[int]) -> dict[int, str]:
        with _translated():
            rows = await self.pool.fetch(
                "SELECT id, name FROM streams WHERE id = ANY($1::bigint[])", list(set(ids))
            )
        return {int(r["id"]): str(r["name"]) for r in rows}

    async def count_events(self, meta: StreamMeta) -> int:
        now = now_us()
        counted = count_by_floors(meta, now)
        if counted is not None:
            return counted
        cutoff = age_cutoff_us(meta.policy, now)
        with _translated():
            n: int = await self.pool.fetchval(
                "SELECT COUNT(*) FROM events WHERE stream_id = $1 AND revision >= $2 AND created_us >= $3",
                meta.id,
                meta.floor(),
                cutoff,
            )
        return n

    # -- administration ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _edit(self, name: str) -> AsyncIterator[tuple[StreamMeta | None, StreamMeta, int]]:
        """Under the head lock: the stream's state (None if never written), a copy to
        change (saved at a clean exit) and the head position."""
        async with self._write_lock:
            with _translated():
                async with self.pool.acquire() as conn, conn.transaction():
                    head, next_stream_id, last_created = await conn.fetchrow(LOCK_HEAD)
                    current = (await self._fetch_streams(conn, [name]))[name]
                    now = now_us()
                    if current is None:
                        meta = new_stream(name, next_stream_id, now, self.prefix_rules)
                        next_stream_id += 1
                    else:
                        meta = current.copy()
                    meta.updated_us = now
                    yield current, meta, head
                    await self._save(conn, [meta], head, next_stream_id, last_created, notify=False)

    async def set_retention(self, name: str, policy: Policy) -> StreamMeta:
        async with self._edit(name) as (_, meta, _):
            set_own_policy(meta, policy, self.prefix_rules)
        return meta

    async def delete_stream(self, name: str, expect: Expect, revision: int, tombstone: bool) -> int:
        async with self._edit(name) as (current, meta, head):
            mark_deleted(current, meta, expect, revision, tombstone)
        return int(head)

    # -- retention --------------------------------------------------------------------

    async def reclaim(self) -> ReclaimStats:
        stats = ReclaimStats()
        with _translated():
            async with self.pool.acquire() as conn:
                key = f"{RECLAIM_LOCK}.{self.schema}"
                if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key):
                    return stats  # another replica is reclaiming
                try:
                    # Not every stream under a rule each time: those with revisions below
                    # their floor (an index holds them), and those with events that expired
                    # since the last pass (per age limit, the positions that expired since).
                    rows = await conn.fetch(f"SELECT {STREAM_COLUMNS} FROM streams WHERE {DUE}")
                    todo = {meta.id: meta for meta in map(self._meta, rows)}
                    for meta in await self._expired(conn):
                        todo.setdefault(meta.id, meta)
                    for meta in todo.values():
                        await self._reclaim_stream(conn, meta, stats)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)
        return stats

    async def _expired(self, conn: asyncpg.Connection) -> list[StreamMeta]:
        """Streams with an age limit holding events older than it: per limit (the prefix
        rules' and the streams' own), the streams with events between where the last pass
        stopped and the position the limit now cuts at (created_us never decreases with
        position). The marks are this process's: another replica starts from the start."""
        limits = {age_limit_us(rule) for rule in self.prefix_rules.values()}
        own = await conn.fetch(
            "SELECT DISTINCT age_us FROM streams WHERE retained AND age_us > 0 AND retention IS NOT NULL"
        )
        limits = {limit for limit in limits | {int(r[0]) for r in own} if limit}
        started = asyncio.get_running_loop().time()
        now = now_us()
        found: list[StreamMeta] = []
        for limit in sorted(limits):
            mark = self._age_marks.get(limit, 0)
            cut = await self.position_at_time(now - limit, backwards=False)
            while mark < cut and asyncio.get_running_loop().time() - started < AGE_SCAN_SECONDS:
                hi = min(cut, mark + AGE_SCAN_CHUNK)
                rows = await conn.fetch(
                    f"SELECT {STREAM_COLUMNS} FROM streams WHERE retained AND age_us = $3 AND id IN"
                    " (SELECT DISTINCT stream_id FROM events WHERE position >= $1 AND position < $2)",
                    mark,
                    hi,
                    limit,
                )
                found += map(self._meta, rows)
                mark = hi
            self._age_marks[limit] = mark
        return found

    async def _reclaim_stream(self, conn: asyncpg.Connection, meta: StreamMeta, stats: ReclaimStats) -> None:
        async def remove(below: int) -> int:
            async with conn.transaction():
                removed = await conn.fetch(
                    "DELETE FROM events WHERE stream_id = $1 AND revision < $2 RETURNING position",
                    meta.id,
                    below,
                )
                await conn.execute(
                    "UPDATE streams SET first_stored = GREATEST(first_stored, $2),"
                    " removed_position = GREATEST(removed_position, $3) WHERE id = $1",
                    meta.id,
                    below,
                    max((r[0] for r in removed), default=0),
                )
            return len(removed)

        async def recorded(lo: int, hi: int) -> list[pb.RecordedEvent]:
            return await self._recorded(conn, meta, lo, hi)

        async def first_young(cutoff: int) -> int | None:
            young: int | None = await conn.fetchval(
                "SELECT MIN(revision) FROM events"
                " WHERE stream_id = $1 AND revision >= $2 AND created_us >= $3",
                meta.id,
                meta.first_stored,
                cutoff,
            )
            return young

        await reclaim_stream(meta, self.archive_dir, stats, first_young, recorded, remove)

    async def _recorded(
        self, conn: asyncpg.Connection, meta: StreamMeta, lo: int, hi: int
    ) -> list[pb.RecordedEvent]:
        rows = await conn.fetch(
            "SELECT head, data FROM events WHERE stream_id = $1 AND revision >= $2 AND revision < $3"
            " ORDER BY revision",
            meta.id,
            lo,
            hi,
        )
        return [pb.RecordedEvent.FromString(eventbytes.event_bytes(h, d)) for h, d in rows]

    # -- consumer groups --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def group_tx(self, name: str) -> AsyncIterator[GroupTx]:
        with _translated():
            async with self.pool.acquire() as conn, conn.transaction():
                # A lock on the name, not the row: it also serialises creating a group.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    f"sluice.group.{self.schema}.{name}",
                )
                clock, head = await conn.fetchrow(
                    "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,"
                    " (SELECT position FROM head)"
                )
                row = await conn.fetchrow(
                    "SELECT config, created_us, members FROM consumer_groups WHERE name = $1", name
                )
                record = None
                if row is not None:
                    cursors = await conn.fetch(
                        "SELECT partition, position FROM group_cursors WHERE grp = $1", name
                    )
                    record = GroupRecord(name, row[0], row[1], row[2], {p: pos for p, pos in cursors})
                yield _PostgresGroupTx(conn, name, record, clock, head)

    async def list_groups(self) -> list[str]:
        with _translated():
            return [r[0] for r in await self.pool.fetch("SELECT name FROM consumer_groups ORDER BY name")]


@dataclasses.dataclass
class _Slot:
    """An append transaction holding the head lock, opened by write_slot()."""

    conn: asyncpg.Connection
    tx: Any  # asyncpg's Transaction
    head: tuple[int, ...] = ()
    open: bool = True


class _PostgresGroupTx(GroupTx):
    """Writes go straight to the open transaction."""

    def __init__(
        self, conn: asyncpg.Connection, name: str, record: GroupRecord | None, clock: int, head: int
    ) -> None:
        self.conn = conn
        self.name = name
        self.record = record
        self.now_us = clock
        self.head_position = head

    async def save(self, record: GroupRecord, cursors: Mapping[int, int] | None = None) -> None:
        await self.conn.execute(
            "INSERT INTO consumer_groups (name, config, created_us, members) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (name) DO UPDATE SET config = excluded.config, members = excluded.members",
            record.name,
            record.config,
            record.created_us,
            record.members,
        )
        if cursors:
            await self.save_cursors(cursors)

    async def save_cursors(self, cursors: Mapping[int, int]) -> None:
        await self.conn.execute(
            "INSERT INTO group_cursors (grp, partition, position)"
            " SELECT $1, * FROM unnest($2::integer[], $3::bigint[])"
            " ON CONFLICT (grp, partition) DO UPDATE SET position = excluded.position",
            self.name,
            list(cursors),
            list(cursors.values()),
        )

    async def delete(self) -> None:
        await self.conn.execute("DELETE FROM group_cursors WHERE grp = $1", self.name)
        await self.conn.execute("DELETE FROM consumer_groups WHERE name = $1", self.name)
