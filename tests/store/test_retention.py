"""Retention: every rule hides events at once, reclaims them in the background, and archives."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import asyncpg
import pytest

from sluice import START, Client, new_event
from sluice.v1 import streams_pb2 as pb
from sluice_store.retention import Policy, archive_name
from sluice_store.server import StoreServer
from sluice_store.storage.postgres import parse_url
from tests.conftest import StoreFactory, eventually


async def stored(store: StoreServer, stream: str) -> list[int]:
    """Revisions physically present in the store's database (either backend)."""
    sql = "SELECT revision FROM events JOIN streams s ON s.id = stream_id WHERE s.name = {} ORDER BY 1"
    db = store.settings.db
    if db.startswith("sqlite:"):
        with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
            return [r[0] for r in conn.execute(sql.format("?"), (stream,)).fetchall()]
    dsn, schema = parse_url(db)
    pg = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        return [r[0] for r in await pg.fetch(sql.format("$1"), stream)]
    finally:
        await pg.close()


def archived(root: Path, stream: str) -> list[dict[str, object]]:
    records = []
    for f in sorted((root / archive_name(stream)).glob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            records += [json.loads(line) for line in fh]
    return records


async def revisions(client: Client, stream: str) -> list[int]:
    return [e.revision async for e in client.read(stream)]


async def fill(client: Client, stream: str, n: int, size: int = 10) -> list[pb.AppendResponse]:
    return [await client.append(stream, [new_event("E", "x" * size)]) for _ in range(n)]


async def test_max_count_hides_at_once_and_archives_exactly_the_removed(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = await make_store(archive_dir=str(tmp_path / "archive"))
    async with Client(store.address) as c:
        appended = await fill(c, "counted", 10)
        await fill(c, "other", 2)
        info = await c.set_retention("counted", max_count=3)
        assert info.first_revision == 7 and info.event_count == 3 and info.retention_source == "stream"
        assert await revisions(c, "counted") == [7, 8, 9]
        assert [e.revision for e in await c.read_list() if e.stream == "counted"] == [7, 8, 9]
        sub = c.subscribe("counted", start=START)
        got = []
        while not isinstance(item := await asyncio.wait_for(anext(sub), 10), pb.CaughtUp):
            got.append(item.revision)  # type: ignore[union-attr]
        assert got == [7, 8, 9]
        await sub.aclose()

        async def reclaimed() -> bool:
            return await stored(store, "counted") == [7, 8, 9]

        await eventually(reclaimed)
        records = archived(tmp_path / "archive", "counted")
        assert [r["revision"] for r in records] == list(range(7))
        assert [r["position"] for r in records] == [a.first_position for a in appended[:7]]
        assert records[0]["data"] == "x" * 10 and records[0]["type"] == "E"
        assert await stored(store, "other") == [0, 1]


async def test_truncate_before(client: Client, store: StoreServer) -> None:
    await fill(client, "trunc", 8)
    await client.set_retention("trunc", truncate_before=5)
    assert await revisions(client, "trunc") == [5, 6, 7]

    async def reclaimed() -> bool:
        return await stored(store, "trunc") == [5, 6, 7]

    await eventually(reclaimed)


async def test_max_bytes(client: Client, store: StoreServer) -> None:
    appended = await fill(client, "sized", 6, size=100)
    one = await client.read_list("sized", max_count=1)
    size = one[0].ByteSize()
    await client.set_retention("sized", max_bytes=size * 2 + size // 2)
    assert await revisions(client, "sized") == [4, 5]
    await client.append("sized", [new_event("E", "x" * 100)])
    assert await revisions(client, "sized") == [5, 6]
    assert len(appended) == 6

    async def reclaimed() -> bool:
        return await stored(store, "sized") == [5, 6]

    await eventually(reclaimed)


async def test_max_age_expires_old_events(make_store: StoreFactory, tmp_path: Path) -> None:
    store = await make_store(archive_dir=str(tmp_path / "archive"))
    async with Client(store.address) as c:
        await fill(c, "aged", 3)
        await c.set_retention("aged", max_age=1.0)

        async def expired() -> bool:
            return await revisions(c, "aged") == []

        await eventually(expired)
        appended_at = time.monotonic()
        await c.append("aged", [new_event("Fresh")])
        fresh = await revisions(c, "aged")
        assert fresh == [3] or time.monotonic() - appended_at >= 1.0  # younger than max_age: kept

        async def reclaimed() -> bool:
            return (
                set(await stored(store, "aged")) <= {3} and len(archived(tmp_path / "archive", "aged")) >= 3
            )

        await eventually(reclaimed)
        assert [r["revision"] for r in archived(tmp_path / "archive", "aged")][:3] == [0, 1, 2]


async def test_time_to_live_is_a_message_queue_never_archived(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = await make_store(archive_dir=str(tmp_path / "archive"))
    async with Client(store.address) as c:
        await fill(c, "jobs", 4)
        assert len(await revisions(c, "jobs")) == 4
        await c.set_retention("jobs", time_to_live=0.2)  # judged by each event's age: they go

        async def gone() -> bool:
            return await stored(store, "jobs") == [] and await revisions(c, "jobs") == []

        await eventually(gone)
        assert archived(tmp_path / "archive", "jobs") == []
        assert [e for e in await c.read_list() if e.stream == "jobs"] == []


async def test_prefix_rules_from_server_config(make_store: StoreFactory) -> None:
    # Visibility rules only: no background reclaim, which may delete hidden events for good
    # before the looser policy below could show them again.
    store = await make_store(
        retention={"tmp-": Policy(max_count=2), "tmp-keep-": Policy()}, reclaim_interval=3600.0
    )
    async with Client(store.address) as c:
        await fill(c, "tmp-a", 5)
        info = await c.stream_info("tmp-a")
        assert info.retention_source == "prefix:tmp-" and info.effective_retention.max_count == 2
        assert await revisions(c, "tmp-a") == [3, 4]
        await fill(c, "perm", 5)
        assert await revisions(c, "perm") == [0, 1, 2, 3, 4]
        # A stream's own policy wins over the prefix rule.
        await c.set_retention("tmp-a", max_count=4)
        assert await revisions(c, "tmp-a") == [1, 2, 3, 4]


async def test_retention_survives_restart(make_store: StoreFactory, db_url: Callable[[str], str]) -> None:
    db = db_url("restart")
    store = await make_store(db=db)
    async with Client(store.address) as c:
        await fill(c, "r", 5)
        await c.set_retention("r", max_count=2)
    await store.stop(0)
    again = await make_store(db=db)
    async with Client(again.address) as c:
        assert await revisions(c, "r") == [3, 4]
        info = await c.stream_info("r")
        assert info.retention.max_count == 2 and info.last_revision == 4


@pytest.mark.parametrize("policy", ["max_count:0", "max_age:-1"])
def test_bad_prefix_rule_names_itself(policy: str) -> None:
    from sluice_store import config

    if policy == "max_count:0":
        assert config.load(["--retention", f"p-={policy}"]).retention["p-"] == Policy()
        return
    with pytest.raises(config.ConfigError, match="--retention"):
        config.load(["--retention", f"p-={policy}"])


async def _first_position(c: Client, position: int, prefixes: tuple[str, ...] = ()) -> int:
    req = pb.ReadRequest(filter=pb.Filter(stream_prefixes=prefixes))
    getattr(req, "from").position = position
    async for msg in c._stub.Read(req):
        return msg.header.first_position
    raise AssertionError("no header")


async def test_all_stream_read_from_a_position_says_where_it_is_whole(make_store: StoreFactory) -> None:
    store = await make_store(reclaim_interval=0.05)
    async with Client(store.address) as c:
        kept = await fill(c, "keep", 3)
        trimmed = await fill(c, "trim", 5)
        after = await fill(c, "keep", 1)
        assert await _first_position(c, 1) == 1  # nothing removed yet
        await c.set_retention("trim", max_count=2)  # revisions 0..2 of "trim" go
        newest_removed = trimmed[2].first_position
        assert await _first_position(c, 1) == newest_removed + 1
        assert await _first_position(c, newest_removed) == newest_removed + 1
        # From just above the newest removed event, or with a filter it does not match, the read is whole.
        assert await _first_position(c, newest_removed + 1) == 1
        assert await _first_position(c, 1, ("keep",)) == 1

        # Reclaimed for good (rows deleted): the store still knows where they were.
        async def reclaimed() -> bool:
            return await stored(store, "trim") == [3, 4]

        await eventually(reclaimed)
        assert await _first_position(c, kept[0].first_position, ("tr",)) == newest_removed + 1
        assert after[0].first_position > newest_removed


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL answers in one statement
async def test_a_reclaim_pass_landing_in_the_middle_of_a_read_does_not_hide_the_gap(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite finds what a read from a position will not see over several queries; a reclaim
    pass that deletes hidden events between them must not make them vanish from the answer
    (the gateway then tells a resuming watcher of no gap)."""
    from sluice_store.storage.base import StreamFilter
    from sluice_store.storage.sqlite import SQLiteStorage

    store = await make_store(reclaim_interval=3600)  # no pass of its own
    storage = store.storage
    assert isinstance(storage, SQLiteStorage)
    async with Client(store.address) as c:
        trimmed = await fill(c, "trim", 5)
        await c.set_retention("trim", max_count=2)  # revisions 0..2 hidden, not yet removed
    reader = storage._reader
    passes: list[object] = []

    @contextlib.asynccontextmanager
    async def then_reclaim() -> AsyncIterator[Any]:
        async with reader() as conn:
            yield conn
        if not passes:  # after the read's first query, once
            passes.append(await storage.reclaim())

    monkeypatch.setattr(storage, "_reader", then_reclaim)
    assert await storage.removed_upto(StreamFilter(), 1) == trimmed[2].first_position
    assert passes and await stored(store, "trim") == [3, 4]  # the pass did remove them


@pytest.mark.parametrize("backend", ["sqlite"])  # the SQLite file format's own migration
async def test_schema_1_database_is_migrated_at_start(make_store: StoreFactory, tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = await make_store(db=f"sqlite:///{path}")
    async with Client(store.address) as c:
        await fill(c, "s", 2)
    await store.stop()
    with sqlite3.connect(path) as db:  # make it look like a version 1 file
        db.execute("DROP INDEX streams_by_removed")
        db.execute("ALTER TABLE streams DROP COLUMN removed_position")
        db.execute("UPDATE schema_version SET version = 1")
    store = await make_store(db=f"sqlite:///{path}")
    async with Client(store.address) as c:
        assert await revisions(c, "s") == [0, 1]
        await c.set_retention("s", max_count=1)
        assert await _first_position(c, 1) == 2
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'streams_by_removed'").fetchall()


def archive_files(top: Path) -> list[Path]:
    return list(top.rglob("*.jsonl.gz"))


HOSTILE = [
    "..",
    ".",
    ".hidden",
    "a/b",
    "a_b",
    "a:b",
    "a%2Fb",
    "a~b",
    "../../escape",
    "x" * 200,
    "x" * 199 + "y",
]


def test_archive_names_are_reversible_distinct_and_stay_in_their_folder() -> None:
    names = [archive_name(n) for n in HOSTILE]
    assert len(set(names)) == len(HOSTILE)
    for stream, name in zip(HOSTILE, names, strict=True):
        assert "/" not in name and name not in (".", "..") and not name.startswith(".")
        assert len(name) <= 120
        if "~" not in name:
            assert unquote(name) == stream


async def test_hostile_stream_names_are_archived_apart_and_inside_the_archive(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    store = await make_store(archive_dir=str(root))
    async with Client(store.address) as c:
        for stream in HOSTILE:
            await fill(c, stream, 2)
            await c.delete_stream(stream)

        async def all_archived() -> bool:
            return all(len(archived(root, stream)) == 2 for stream in HOSTILE)

        await eventually(all_archived)
    for stream in HOSTILE:
        assert {r["stream"] for r in archived(root, stream)} == {stream}
    files = archive_files(tmp_path)
    assert all(root in f.parents for f in files) and len(files) == len(HOSTILE)
    assert len({f.parent for f in files}) == len(HOSTILE)
