"""sluice admin: an online backup while appends go on, restore, verify."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg

from sluice import Client, new_event
from sluice_store.storage.postgres import parse_url
from tests.conftest import StoreProcess

WAIT = 30.0


async def sluice_admin(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice.cli", "admin", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_a_backup_during_appends_restores_everything_acknowledged_before_it(
    spawn: Callable[..., StoreProcess], tmp_path: Path
) -> None:
    db = tmp_path / "live.db"
    store = spawn(db=f"sqlite:///{db}")
    await store.start()
    acked: list[str] = []
    flowing = asyncio.Event()
    flowing.set()

    async def produce() -> None:
        async with Client(store.addr) as c:
            n = 0
            while flowing.is_set():
                ev = new_event("Placed", {"n": n})
                await c.append(f"orders-{n % 5}", [ev])
                acked.append(ev.id)
                n += 1

    producer = asyncio.create_task(produce())
    async with asyncio.timeout(WAIT):
        while len(acked) < 200:  # noqa: ASYNC110 (appends are flowing: let some land)
            await asyncio.sleep(0.01)
    before = list(acked)  # acknowledged before the backup began
    code, out = await sluice_admin("backup", "--db", f"sqlite:///{db}", "--to", str(tmp_path / "b.db"))
    assert code == 0, out
    async with asyncio.timeout(WAIT):
        while len(acked) < len(before) + 100:  # noqa: ASYNC110 (appends went on during the backup)
            await asyncio.sleep(0.01)
    flowing.clear()
    await producer
    code, out = await sluice_admin("verify", "--db", str(tmp_path / "b.db"))
    assert code == 0 and "no problem found" in out, out

    restored = tmp_path / "restored" / "sluice.db"
    code, out = await sluice_admin(
        "restore", "--from", str(tmp_path / "b.db"), "--db", f"sqlite:///{restored}"
    )
    assert code == 0, out
    again = spawn(db=f"sqlite:///{restored}")
    await again.start()
    async with Client(again.addr) as c, Client(store.addr) as live:
        ids = [e.id async for e in c.read()]
        assert ids[: len(before)] == before  # every event acknowledged before, in order
        assert set(ids) <= set(acked)
        assert await c.current_store_id() != await live.current_store_id()  # another store now
    code, out = await sluice_admin("backup", "--db", str(db), "--to", str(tmp_path / "b.db"))
    assert code != 0 and "exists" in out  # never over a backup


async def test_verify_finds_a_damaged_store(spawn: Callable[..., StoreProcess], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = spawn(db=f"sqlite:///{db}")
    await store.start()
    async with Client(store.addr) as c:
        for n in range(10):
            await c.append("orders-1", [new_event("Placed", {"n": n})])
    assert store.proc is not None
    store.proc.terminate()
    await store.wait()
    code, out = await sluice_admin("verify", "--db", str(db))
    assert code == 0, out
    with sqlite3.connect(db) as conn:  # an event lost from the middle of its stream
        conn.execute("DELETE FROM events WHERE revision = 4")
    code, out = await sluice_admin("verify", "--db", str(db))
    assert code == 1 and "missing" in out, out
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    code, out = await sluice_admin("verify", "--db", str(tmp_path / "junk.db"))
    assert code == 1, out

    # Neither a damaged store nor a file that is no store restores or backs up: a message
    # saying why (no traceback), exit 1, and nothing left where the copy was to go.
    for backup, why in (
        (db, "revisions 0..9 stored with 1 missing"),
        (tmp_path / "junk.db", "file is not a database"),
    ):
        code, out = await sluice_admin(
            "restore", "--db", str(tmp_path / "new" / "s.db"), "--from", str(backup)
        )
        assert code == 1 and "not a sound backup" in out and why in out and "Traceback" not in out, out
        assert not (tmp_path / "new").exists() or not list((tmp_path / "new").iterdir())
    code, out = await sluice_admin(
        "restore", "--db", str(tmp_path / "new" / "s.db"), "--from", str(tmp_path / "nope")
    )
    assert code == 1 and "no such backup" in out, out
    for source in (tmp_path / "junk.db", tmp_path / "missing.db"):
        code, out = await sluice_admin("backup", "--db", str(source), "--to", str(tmp_path / "b.db"))
        assert code == 1 and "cannot read a store" in out and "Traceback" not in out, out
        assert not list(tmp_path.glob("b.db*"))  # noqa: ASYNC240 (a listing of a test's folder)


async def test_verify_works_on_postgresql_too(spawn: Callable[..., StoreProcess], postgres_db: str) -> None:
    url = f"{postgres_db}?schema=verify_{os.getpid()}"
    store = spawn(db=url)
    await store.start()
    async with Client(store.addr) as c:
        for n in range(6):
            await c.append("orders-1", [new_event("Placed", {"n": n})])
    code, out = await sluice_admin("verify", "--db", url)
    assert code == 0 and "no problem found" in out, out
    dsn, schema = parse_url(url)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        await conn.execute("DELETE FROM events WHERE revision = 2")
    finally:
        await conn.close()
    code, out = await sluice_admin("verify", "--db", url)
    assert code == 1 and "missing" in out, out
