"""What only the PostgreSQL backend has: replicas in one process pair, notifications, schemas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from sluice import START, Client, new_event
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb
from sluice_store.config import ConfigError
from sluice_store.server import StoreServer
from sluice_store.storage.postgres import PostgresStorage, parse_url
from tests.conftest import StoreFactory

only_postgres = pytest.mark.parametrize("backend", ["postgresql"])


async def pair(make_store: StoreFactory, db: str) -> tuple[StoreServer, StoreServer, PostgresStorage]:
    """Two replicas on one schema; the second polls the head every 0.2 s."""
    writer = await make_store(db=db)
    reader = await make_store(db=db, db_poll_interval=0.2)
    assert isinstance(reader.storage, PostgresStorage) and reader.storage.feed.connection is not None
    return writer, reader, reader.storage


async def seen_across(writer: StoreServer, reader: StoreServer, n: int) -> list[int]:
    """Append n events through writer; the positions a subscriber on reader gets."""
    seen: list[int] = []
    async with Client(writer.address) as w, Client(reader.address) as r:

        async def subscribe() -> None:
            async for item in r.subscribe(start=START):
                if isinstance(item, pb.RecordedEvent):
                    seen.append(item.position)
                    if len(seen) == n:
                        return

        sub = asyncio.create_task(subscribe())
        for _ in range(n):
            await w.append("s", [new_event("E", {})])
        await asyncio.wait_for(sub, 20)  # many poll intervals (a 100 s poll fails it)
    return seen


@only_postgres
async def test_a_lost_notification_is_made_good_by_the_head_poll(
    make_store: StoreFactory, db_url: Callable[[str], str]
) -> None:
    writer, reader, storage = await pair(make_store, db_url("poll"))
    listening = storage.feed.connection
    assert listening is not None
    await listening.remove_listener(storage.channel, storage.feed._notified)  # deaf to NOTIFY
    assert await seen_across(writer, reader, 3) == [1, 2, 3]


@only_postgres
async def test_a_dropped_listener_connection_is_replaced(
    make_store: StoreFactory, db_url: Callable[[str], str]
) -> None:
    db = db_url("relisten")
    writer, reader, storage = await pair(make_store, db)
    old = storage.feed.connection
    assert old is not None
    admin = await asyncpg.connect(parse_url(db)[0])
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", old.get_server_pid())
    finally:
        await admin.close()
    async with asyncio.timeout(10):
        while storage.feed.connection in (old, None):  # noqa: ASYNC110 (a reconnect signals nothing)
            await asyncio.sleep(0.05)
    assert await seen_across(writer, reader, 2) == [1, 2]


@only_postgres
async def test_schemas_keep_stores_apart_on_one_database(
    make_store: StoreFactory, db_url: Callable[[str], str]
) -> None:
    one = await make_store(db=db_url("one"))
    two = await make_store(db=db_url("two"))
    async with Client(one.address) as a, Client(two.address) as b:
        await a.append("s", [new_event("E", {"n": 1})])
        assert [e.revision for e in await a.read_list("s")] == [0]
        assert await b.read_list() == []


def test_a_bad_schema_name_fails_fast() -> None:
    with pytest.raises(ConfigError, match="schema"):
        parse_url("postgresql://h/db?schema=x;drop")
    assert parse_url("postgresql://u@h:5/db?schema=s_1&sslmode=disable") == (
        "postgresql://u@h:5/db?sslmode=disable",
        "s_1",
    )


@only_postgres
async def test_leases_are_judged_by_the_database_clock_not_the_replicas(
    make_store: StoreFactory, db_url: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await make_store(db=db_url("clock"))
    async with Client(store.address) as c:
        await c.create_group("g", partitions=2, lease=10.0)
        await c.groups_stub.Heartbeat(gpb.HeartbeatRequest(group="g", member_id="m"))
        real = time.time_ns
        monkeypatch.setattr(time, "time_ns", lambda: real() + 3600 * 10**9)  # this replica runs 1 h ahead
        desc = await c.describe_group("g")
        assert [m.member_id for m in desc.members] == ["m"]  # not expired by a skewed replica clock
        assert {p.owner for p in desc.partitions} == {"m"}


@only_postgres
async def test_the_password_comes_from_a_file_read_at_each_connect(
    make_store: StoreFactory, db_url: Callable[[str], str], tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("first\n")  # as a mounted Secret key may end
    store = await make_store(db=db_url("pw"), db_password_file=str(secret))
    assert isinstance(store.storage, PostgresStorage) and store.storage.password is not None
    assert store.storage.password() == "first"
    secret.write_text("rotated")  # a rotated Secret: the next connection takes the new one
    assert store.storage.password() == "rotated"
    async with Client(store.address) as c:
        await c.append("s", [new_event("E", {})])
    with pytest.raises(Exception, match="db_password_file: cannot read"):
        await make_store(db=db_url("pw2"), db_password_file=str(tmp_path / "missing"))
