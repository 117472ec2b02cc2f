"""The storage conformance suite: the Storage interface called directly, the same cases on
SQLite and PostgreSQL (as pyeventsourcing runs its recorder test cases on every backend)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import secrets
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from sluice.v1 import streams_pb2 as pb
from sluice_store.config import Settings
from sluice_store.errors import DuplicateEventId, StreamDeleted, StreamNotFound, WrongExpectedRevision
from sluice_store.retention import Policy
from sluice_store.storage import open_storage
from sluice_store.storage import postgres as postgres_storage
from sluice_store.storage import sqlite as sqlite_storage
from sluice_store.storage.base import (
    P_POSITION,
    P_REVISION,
    P_STREAM_ID,
    AppendPart,
    Expect,
    GroupRecord,
    LiveRow,
    NewEvent,
    PartResult,
    Start,
    State,
    Storage,
    StreamFilter,
)
from sluice_store.storage.sqlite import INLINE_BYTES, INLINE_EVENTS, SQLiteStorage


def event(type_: str = "T", client_id: bool = False, data: bytes = b"payload") -> NewEvent:
    u = uuid.uuid4()
    return NewEvent(
        u.bytes, str(u), client_id, type_, pb.EventData(id=str(u), type=type_).SerializeToString(), data
    )


def part(stream: str, *events: NewEvent, expect: Expect = Expect.ANY, revision: int = 0) -> AppendPart:
    return AppendPart(stream, expect, revision, list(events) or [event()])


@pytest.fixture
async def storage(db_url: Callable[[str], str]) -> AsyncIterator[Storage]:
    s = open_storage(Settings(db=db_url("conformance"), durability="normal"))
    committed: list[LiveRow] = []
    s.listener = committed.extend
    await s.open()
    s.committed = committed  # type: ignore[attr-defined]
    yield s
    await s.close()


async def ok(storage: Storage, *ops: list[AppendPart]) -> list[list[PartResult]]:
    outcomes = await storage.append(list(ops))
    assert all(isinstance(o, list) for o in outcomes), outcomes
    return outcomes  # type: ignore[return-value]


async def test_appends_number_densely_and_read_back_both_ways(storage: Storage) -> None:
    assert storage.head_position == 0 and storage.store_id
    (a,), (b,) = await ok(storage, [part("a", event(), event())], [part("b", event())])
    ((a2,),) = await ok(storage, [part("a", event())])
    assert (a.first_revision, a.last_revision, a.first_position, a.last_position) == (0, 1, 1, 2)
    assert (b.first_revision, b.first_position) == (0, 3) and (a2.first_revision, a2.first_position) == (2, 4)
    assert storage.head_position == 4
    meta = await storage.stream("a")
    assert meta is not None and (meta.last_revision, meta.last_position, meta.state) == (2, 4, State.ACTIVE)
    assert await storage.stream("never") is None
    forwards = await storage.read_stream(meta, Start("start"), False, 10, True)
    assert [r[P_REVISION] for r in forwards] == [0, 1, 2] and all(r[5] == b"payload" for r in forwards)
    backwards = await storage.read_stream(meta, Start("end"), True, 2, False)
    assert [r[P_REVISION] for r in backwards] == [2, 1] and all(r[5] == b"" for r in backwards)
    rows, nxt, done = await storage.read_all(1, False, 10, StreamFilter(), True)
    assert [r[P_POSITION] for r in rows] == [1, 2, 3, 4] and done and nxt == 5
    assert [r[0] for r in storage.committed] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    assert await storage.count_events(meta) == 3


async def test_expected_revisions_and_atomic_operations(storage: Storage) -> None:
    await ok(storage, [part("a")])
    conflict, fine = await storage.append(
        [
            [part("b"), part("a", expect=Expect.EXACT, revision=5)],  # refused whole
            [part("a", expect=Expect.EXACT, revision=0)],
        ]
    )
    assert isinstance(conflict, WrongExpectedRevision) and isinstance(fine, list)
    assert await storage.stream("b") is None  # nothing of the refused operation stayed
    (none,) = await storage.append([[part("a", expect=Expect.NO_STREAM)]])
    assert isinstance(none, WrongExpectedRevision) and none.metadata["actual"] == "1"
    await ok(storage, [part("c", expect=Expect.NO_STREAM)], [part("c", expect=Expect.STREAM_EXISTS)])
    rows, _, _ = await storage.read_all(1, False, 100, StreamFilter(), False)
    assert [r[P_POSITION] for r in rows] == list(range(1, len(rows) + 1))  # no gap from the refusal


async def test_replays_are_idempotent_across_commits_and_ids_are_unique(storage: Storage) -> None:
    evs = [event(client_id=True) for _ in range(3)]
    ((first,),) = await ok(storage, [part("a", *evs)])
    ((again,),) = await ok(storage, [part("a", *evs)])
    assert again.duplicate and (again.first_position, again.last_position) == (
        first.first_position,
        first.last_position,
    )
    assert storage.head_position == 3
    (elsewhere,) = await storage.append([[part("b", evs[0])]])
    assert isinstance(elsewhere, DuplicateEventId) and elsewhere.metadata["stream"] == "a"


async def test_delete_then_append_again_and_tombstones_for_good(storage: Storage) -> None:
    await ok(storage, [part("a", event(), event())])
    await storage.delete_stream("a", Expect.EXACT, 1, tombstone=False)
    meta = await storage.stream("a")
    assert meta is not None and meta.state == State.DELETED
    assert await storage.read_stream(meta, Start("start"), False, 10, False) == []
    ((back,),) = await ok(storage, [part("a")])
    assert back.first_revision == 2  # revisions go on where they were
    with pytest.raises(StreamNotFound):
        await storage.delete_stream("never", Expect.ANY, 0, tombstone=False)
    await storage.delete_stream("a", Expect.ANY, 0, tombstone=True)
    (refused,) = await storage.append([[part("a")]])
    assert isinstance(refused, StreamDeleted)
    with pytest.raises(StreamDeleted):  # nor its metadata
        await storage.set_retention("a", Policy(max_count=1))
    meta = await storage.stream("a")
    assert meta is not None and meta.state == State.TOMBSTONED and not meta.own


async def test_a_reopened_storage_reads_back_what_appends_wrote_of_each_stream(
    storage: Storage, db_url: Callable[[str], str]
) -> None:
    await ok(storage, [part("a", event(), event())], [part("b")])  # two new streams
    await ok(storage, [part("a")], [part("c")])  # one written before and one new, in one commit
    await storage.delete_stream("b", Expect.ANY, 0, tombstone=False)
    await ok(storage, [part("b")])  # deleted, then active again
    await storage.set_retention("c", Policy(max_count=5))
    await ok(storage, [part("c")], [part("a")])
    before = {name: await storage.stream(name) for name in "abc"}
    head = storage.head_position
    await storage.close()
    again = open_storage(Settings(db=db_url("conformance"), durability="normal"))
    await again.open()
    try:
        for name, meta in before.items():
            read = await again.stream(name)
            assert meta is not None and read is not None
            fields = ("id", "last_revision", "last_position", "state", "own", "created_us", "updated_us")
            assert [getattr(read, f) for f in fields] == [getattr(meta, f) for f in fields], name
        assert [before[n].last_revision for n in "abc"] == [3, 1, 1]  # type: ignore[union-attr]
        assert before["b"].state == State.ACTIVE  # type: ignore[union-attr]
        ((a,),) = await ok(again, [part("a", expect=Expect.EXACT, revision=3)])
        assert (a.first_revision, a.first_position) == (4, head + 1)
    finally:
        await again.close()


async def test_retention_hides_then_reclaim_removes(storage: Storage) -> None:
    await ok(storage, *[[part("r")] for _ in range(10)])
    meta = await storage.set_retention("r", Policy(max_count=3))
    visible = await storage.read_stream(meta, Start("start"), False, 100, False)
    assert [r[P_REVISION] for r in visible] == [7, 8, 9] and await storage.count_events(meta) == 3
    stats = await storage.reclaim()
    assert stats.events_removed == 7
    assert (await storage.reclaim()).events_removed == 0  # nothing left to remove
    filt = StreamFilter(prefixes=("r",))
    assert await storage.removed_upto(filt, 1) >= 7  # a reader from 1 learns what is gone


async def test_filters_partitions_listing_and_time(storage: Storage) -> None:
    for name, kind in [
        ("orders-1", "Placed"),
        ("orders-2", "Paid"),
        ("users-1", "Placed"),
        ("$dlq.g", "Placed"),
    ]:
        await ok(storage, [part(name, event(kind))])
    by_prefix, _, _ = await storage.read_all(1, False, 10, StreamFilter(prefixes=("orders-",)), False)
    assert len(by_prefix) == 2
    by_type, _, _ = await storage.read_all(1, False, 10, StreamFilter(types=("Placed",)), False)
    assert len(by_type) == 3
    seen: set[int] = set()
    for p in range(4):  # the partitions of a group: each user stream in one, "$" streams in none
        rows, _, _ = await storage.read_all(1, False, 10, StreamFilter((), (), 4, frozenset({p})), False)
        seen.update(r[P_POSITION] for r in rows)
    assert seen == {1, 2, 3}
    rows, _, _ = await storage.read_all(1, False, 10, StreamFilter(), False)
    names = await storage.stream_names([r[P_STREAM_ID] for r in rows] + [10**9])  # and one unknown
    assert sorted(names.values()) == ["$dlq.g", "orders-1", "orders-2", "users-1"]
    assert await storage.stream_names([]) == {}
    page = await storage.list_streams("orders-", "", 1, False)
    assert [m.name for m in page] == ["orders-1"]
    assert [m.name for m in await storage.list_streams("orders-", "orders-1", 10, False)] == ["orders-2"]
    meta = await storage.stream("users-1")
    assert meta is not None
    assert await storage.position_at_time(meta.created_us, False) <= 3
    assert await storage.position_at_time(meta.created_us + 3_600_000_000, False) == 5  # after the head


async def test_group_transactions_commit_discard_and_take_turns(storage: Storage) -> None:
    async with storage.group_tx("g") as tx:
        assert tx.record is None and tx.head_position == storage.head_position and tx.now_us > 0
        await tx.save(GroupRecord("g", b"config", tx.now_us, "{}", {}), {0: 1, 1: 1})
    with contextlib.suppress(RuntimeError):
        async with storage.group_tx("g") as tx:
            await tx.save_cursors({0: 99})
            raise RuntimeError("the block fails: nothing it saved stays")
    async with storage.group_tx("g") as tx:
        assert tx.record is not None and tx.record.cursors == {0: 1, 1: 1}
    order: list[str] = []

    async def hold(tag: str) -> None:
        async with storage.group_tx("g") as tx:
            order.append(f"{tag}-in")
            await asyncio.sleep(0.05)
            await tx.save_cursors({0: len(order)})
            order.append(f"{tag}-out")

    await asyncio.gather(hold("x"), hold("y"))
    assert order in (["x-in", "x-out", "y-in", "y-out"], ["y-in", "y-out", "x-in", "x-out"])
    assert await storage.list_groups() == ["g"]
    async with storage.group_tx("g") as tx:
        await tx.delete()
    assert await storage.list_groups() == []


def test_the_suite_covers_the_whole_interface() -> None:
    abstract = {n for n, v in vars(Storage).items() if getattr(v, "__isabstractmethod__", False)}
    source = Path(__file__).read_text()
    missing = sorted(n for n in abstract if not re.search(rf"\.{n}\b", source))
    assert not missing, f"no conformance case calls {missing}"


def count_queries(storage: Storage) -> Callable[[], int]:
    """How many queries the SQLite backend's readers ran since (0 for other backends)."""
    calls = 0
    for conn in getattr(storage, "_all_readers", []):
        run = conn.execute_fetchall

        async def counted(*args: object, run: Callable[..., object] = run) -> object:
            nonlocal calls
            calls += 1
            return await run(*args)  # type: ignore[misc]

        conn.execute_fetchall = counted
    return lambda: calls


async def test_an_age_rule_on_a_prefix_hides_then_removes_by_time_with_work_that_follows_expiry(
    db_url: Callable[[str], str],
) -> None:
    """Streams under an age-only prefix rule: old events hidden from reads of all streams,
    a reader resuming from before them told they are gone, and a reclaim pass removing
    them. On SQLite the streams are not held in memory and a pass looks only at streams
    with newly expired events."""
    from tests.conftest import eventually

    ttl = 1.0
    s = open_storage(
        Settings(db=db_url("aged"), durability="normal", retention={"tmp-": Policy(ttl_us=int(ttl * 1e6))})
    )
    await s.open()
    try:
        await ok(s, [part(f"tmp-{i}") for i in range(300)], [part("keep")])
        old_head = s.head_position
        queries = count_queries(s)
        assert (await s.reclaim()).events_removed == 0  # nothing old enough yet
        assert queries() < 40  # not a query per stream (SQLite: counted; 300 before)
        loop = asyncio.get_running_loop()
        expired_at = loop.time() + ttl

        async def expired() -> bool:  # the rule's time passes (nothing else signals it)
            return loop.time() > expired_at

        await eventually(expired, 10)
        # tmp-young expires no sooner than young_until: what follows holds exactly while it is
        # young, and still holds (with it expired) after a stall of a second on a busy machine.
        young_until = loop.time() + ttl
        await ok(s, [part("tmp-young")], [part("keep")])
        rows, _, _ = await s.read_all(1, False, 1000, StreamFilter(), False)
        young = loop.time() < young_until
        names = await s.stream_names({r[P_STREAM_ID] for r in rows})
        seen = sorted(names[r[P_STREAM_ID]] for r in rows)
        assert seen == ["keep", "keep", "tmp-young"] or (not young and seen == ["keep", "keep"])
        assert await s.removed_upto(StreamFilter(prefixes=("tmp-",)), 1) >= old_head - 1  # hidden: gone
        if hasattr(s, "_pinned"):
            assert not s._pinned  # 301 streams under the rule, none held in memory
        stats = await s.reclaim()
        young = loop.time() < young_until
        assert (stats.events_removed, stats.streams) == (300, 300) or (not young and stats.streams == 301)
        again = await s.reclaim()  # a pass after that finds no work (but tmp-young, once it is old)
        young = loop.time() < young_until
        assert again.streams == 0 or (not young and stats.streams == 300 and again.events_removed == 1)
        assert await s.removed_upto(StreamFilter(prefixes=("tmp-",)), 1) >= old_head - 1  # removed: gone
        assert await s.removed_upto(StreamFilter(prefixes=("keep",)), 1) == 0
        rows, _, _ = await s.read_all(1, False, 1000, StreamFilter(), False)
        young = loop.time() < young_until
        assert len(rows) == 3 or (not young and len(rows) == 2)
    finally:
        await s.close()


@pytest.mark.parametrize("durability", ["normal", "full"])
async def test_sqlite_commits_on_the_loop_thread_only_without_an_fsync_or_subscribers_waiting(
    tmp_path: Path, durability: str
) -> None:
    s = SQLiteStorage(str(tmp_path / "inline.db"), durability=durability)
    await s.open()
    hops: list[str] = []
    hop = s._in_writer

    async def counted(fn: Callable[..., Any], *args: Any) -> Any:
        hops.append(fn.__name__)
        return await hop(fn, *args)

    s._in_writer = counted  # type: ignore[method-assign]
    listening = False
    s.listening = lambda: listening
    try:
        await ok(s, [part("a", *[event() for _ in range(100)])])  # nobody waits for deliveries
        after_quiet = hops.count("_append_sync")
        listening = True
        await ok(s, [part("a", *[event() for _ in range(100)])])  # a subscriber waits: hop
        await ok(s, [part("a", event())])  # a single event: here either way
        after_listened = hops.count("_append_sync")
        listening = False
        await ok(s, [part("b", *[event() for _ in range(INLINE_EVENTS + 1)])])  # too many for here
        big = b"x" * (INLINE_BYTES // 2 + 1)
        await ok(s, [part("c", event(data=big), event(data=big))])  # too many bytes for here
        if durability == "full":  # an fsync never runs on the event loop
            assert hops.count("_append_sync") == 5
        else:
            assert (after_quiet, after_listened, hops.count("_append_sync")) == (0, 1, 3)
        # Whichever thread committed, the events are there, in order.
        rows, _, done = await s.read_all(1, False, 2000, StreamFilter(), False)
        assert [r[P_POSITION] for r in rows] == list(range(1, 204 + INLINE_EVENTS + 1)) and done
    finally:
        await s.close()


async def test_sqlite_writes_a_known_streams_row_whole_when_it_is_gone(tmp_path: Path) -> None:
    """Appends to a stream the store holds update only what an append changes; a row that
    went missing behind its back (edited by hand, say) is written again whole, not lost."""
    path = str(tmp_path / "rows.db")
    s = SQLiteStorage(path, durability="normal")
    await s.open()
    try:
        await ok(s, [part("a", event(), event())], [part("b")])
        with contextlib.closing(sqlite3.connect(path)) as side, side:
            side.execute("DELETE FROM streams WHERE name = 'a'")
        await ok(s, [part("a")], [part("b")])
    finally:
        await s.close()
    again = SQLiteStorage(path, durability="normal")
    await again.open()
    try:
        a, b = await again.stream("a"), await again.stream("b")
        assert a is not None and (a.last_revision, a.last_position) == (2, 4)
        assert b is not None and (b.last_revision, b.last_position) == (1, 5)
    finally:
        await again.close()


async def test_sqlite_starts_its_wal_over_while_commits_never_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint beside commits that never pause never finds the WAL wholly copied, so
    SQLite would never write it from its start again: it would grow without end. Past a
    size the store holds appends for the last bit, and the WAL starts over; nothing is lost."""
    monkeypatch.setattr(sqlite_storage, "CHECKPOINT_INTERVAL", 0.005)
    monkeypatch.setattr(sqlite_storage, "WAL_RESTART_FRAMES", 64)
    path = str(tmp_path / "wal.db")
    s = SQLiteStorage(path, durability="normal")
    await s.open()
    passes: list[int] = []  # frames in the WAL at each checkpoint
    started_over = asyncio.Event()
    checkpoint = s._checkpoint

    async def watched() -> tuple[int, int]:
        frames, copied = await checkpoint()
        passes.append(frames)
        if sum(b < a for a, b in itertools.pairwise(passes)) >= 3:  # it started over thrice
            started_over.set()
        return frames, copied

    s._checkpoint = watched  # type: ignore[method-assign]
    appended = 0

    async def keep_appending() -> None:
        nonlocal appended
        while True:
            await ok(s, [part(f"s{appended % 8}", event(data=b"x" * 3000))])
            appended += 1
            await asyncio.sleep(0)

    writer = asyncio.create_task(keep_appending())
    try:
        async with asyncio.timeout(30):
            await started_over.wait()
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    try:
        rows, _, done = await s.read_all(1, False, appended + 10, StreamFilter(), False)
        assert [r[P_POSITION] for r in rows] == list(range(1, appended + 1)) and done
    finally:
        await s.close()


async def test_sqlite_reads_a_prefix_in_position_order_without_sorting_its_streams(tmp_path: Path) -> None:
    """A batch of a prefix-filtered read costs about its own size, not the size of every
    stream under the prefix: SQLite's work is counted in virtual-machine steps (the
    progress handler), which do not depend on the machine's speed."""
    s = SQLiteStorage(str(tmp_path / "prefix.db"), durability="normal")
    await s.open()
    try:
        for _round in range(20):  # 20,000 events in four streams under "fan-", one under "other"
            await ok(s, *[[part(f"fan-{j}", *[event() for _ in range(250)])] for j in range(4)])
            await ok(s, [part("other", event())])
        steps = 0

        def step() -> int:
            nonlocal steps
            steps += 1
            return 0  # go on

        for conn in s._all_readers:
            await conn.set_progress_handler(step, 100)  # one step per 100 instructions
        filt = StreamFilter(prefixes=("fan-",))
        head = s.head_position
        rows, _, _ = await s.read_all(head - 30, False, 10, filt, False)
        assert [r[P_POSITION] for r in rows] == list(range(head - 30, head - 20))
        assert steps < 100, steps  # 10 rows: 1 step; sorting the prefix's 20,000 events: 1,000
        steps = 0
        rows, _, _ = await s.read_all(1, False, 10, filt, False)
        assert [r[P_POSITION] for r in rows] == list(range(1, 11)) and steps < 100, steps
    finally:
        await s.close()


async def test_filtered_reads_look_at_a_window_of_positions_at_a_time(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter that matches few events is answered window by window: fewer rows and the
    position to go on from, never one query over the whole log; reading on finds them all,
    forwards and backwards."""
    monkeypatch.setattr(sqlite_storage, "SEARCH_WINDOW", 100)
    monkeypatch.setattr(postgres_storage, "SEARCH_WINDOW", 100)
    s = storage
    await ok(s, [part("noise", *[event() for _ in range(250)])])
    await ok(s, [part("rare-1")])  # position 251
    await ok(s, [part("noise", *[event() for _ in range(100)])])
    await ok(s, [part("rare-2")])  # position 352
    filt = StreamFilter(prefixes=("rare-",))
    calls: list[tuple[int, int, bool]] = []
    found: list[int] = []
    position, done = 1, False
    while not done:
        rows, nxt, done = await s.read_all(position, False, 10, filt, False)
        calls.append((position, len(rows), done))
        found += [r[P_POSITION] for r in rows]
        position = nxt
    assert found == [251, 352]
    assert calls[:3] == [(1, 0, False), (101, 0, False), (201, 1, False)], calls
    assert position == 353 and len(calls) == 4  # the last window reaches the head
    found, position, done = [], 352, False
    while not done:
        rows, position, done = await s.read_all(position, True, 10, filt, False)
        found += [r[P_POSITION] for r in rows]
    assert found == [352, 251] and position == 0
    # A window that fills the batch answers as before: where the last row left off.
    rows, nxt, done = await s.read_all(1, False, 10, StreamFilter(prefixes=("noise",)), False)
    assert [r[P_POSITION] for r in rows] == list(range(1, 11)) and (nxt, done) == (11, False)


def _plan_rows(node: dict[str, Any]) -> int:
    """The rows a plan node and those under it handled: returned and filtered out, per loop."""
    handled = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
    handled += node.get("Rows Removed by Join Filter", 0)
    own = round(handled * node.get("Actual Loops", 1))
    return own + sum(_plan_rows(child) for child in node.get("Plans", []))


def _sql_literal(value: Any) -> str:
    if isinstance(value, list):
        return f"ARRAY[{', '.join(_sql_literal(v) for v in value)}]"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(int(value))


async def test_postgres_reads_cost_about_their_batch_whatever_the_planner_knows(
    postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of a read of all streams costs about the positions it passes, and of a
    stream about its revisions, whatever PostgreSQL knows: on a store it has no statistics
    for, in custom plans and in generic ones (plan_cache_mode; a prefix then looks like a
    handful of streams). The work is counted as the rows each node of the plans of the
    store's own queries handled (EXPLAIN ANALYZE of each again, both ways), which do not
    depend on the machine's speed."""
    schema = f"plans_{secrets.token_hex(4)}"
    s = open_storage(Settings(db=f"{postgres_db}?schema={schema}&plan_cache_mode=force_generic_plan"))
    assert isinstance(s, postgres_storage.PostgresStorage)
    await s.open()
    queries: list[tuple[str, tuple[Any, ...]]] = []
    fetch = asyncpg.Connection.fetch

    async def recorded(conn: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        if "FROM events" in query:
            queries.append((query, args))
        return await fetch(conn, query, *args, **kwargs)

    try:
        for r in range(10):  # 20,000 events: 200 streams under "fan-" and 200 one-event streams
            await ok(s, *[[part(f"fan-{r}-{j}", *[event() for _ in range(99)])] for j in range(20)])
            await ok(s, *[[part(f"few-{r}-{j}")] for j in range(20)])
        everything, _, _ = await s.read_all(1, False, 30_000, StreamFilter(), False)
        names = await s.stream_names({row[P_STREAM_ID] for row in everything})
        assert len(everything) == 20_000
        for _ in range(20):  # 100,000 more in one stream: enough for a plan that sorts it all
            await ok(s, [part("long", *[event() for _ in range(5_000)])])
        monkeypatch.setattr(asyncpg.Connection, "fetch", recorded)
        conn = await s.connect()

        async def work() -> int:
            """The rows handled by the plans of the queries recorded (EXPLAIN ANALYZE)."""
            handled = 0
            for sql, args in queries:
                await conn.execute(f"PREPARE read AS {sql}")
                values = ", ".join(map(_sql_literal, args))
                plans = []
                for mode in ("force_custom_plan", "force_generic_plan"):
                    await conn.execute(f"SET plan_cache_mode = {mode}")
                    explained = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE read({values})")
                    plans.append(_plan_rows(json.loads(explained)[0]["Plan"]))
                await conn.execute("DEALLOCATE read")
                handled += max(plans)
            return handled

        try:
            filters = [StreamFilter(), StreamFilter(prefixes=("fan-",)), StreamFilter(prefixes=("few-",))]
            for filt in filters:
                matching = [
                    row[P_POSITION] for row in everything if filt.matches(names[row[P_STREAM_ID]], "T")
                ]
                queries.clear()
                rows, _, _ = await s.read_all(1, False, 100, filt, False)
                assert [row[P_POSITION] for row in rows] == matching[:100], filt
                handled = await work()
                # Passing positions 1 to the batch's last, each event and its stream once
                # (and twice at most for the spans); over the whole log: 20,000 or more.
                passed = rows[-1][P_POSITION]
                assert handled <= 6 * passed + 1_000, (filt, passed, handled)
            # A stream's batch passes its own revisions, not the rest of the stream.
            long = await s.stream("long")
            assert long is not None
            for revision, backwards in ((100, False), (99_899, True)):
                queries.clear()
                rows = await s.read_stream(long, Start("revision", revision), backwards, 100, False)
                step = -1 if backwards else 1
                assert [r[P_REVISION] for r in rows] == list(range(revision, revision + 100 * step, step))
                handled = await work()
                assert handled <= 1_000, (revision, backwards, handled)
        finally:
            await conn.close()
    finally:
        await s.close()
