"""kill -9 of one PostgreSQL store replica after another while clients append through a
target naming both (as a Service does) and retry on the other with the same event ids:
every acknowledged event stored exactly once, positions dense."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from pathlib import Path

import pytest

from sluice import Client, new_event
from tests.conftest import StoreProcess, reap
from tests.faults.conftest import CYCLES, Report
from tests.replicas.test_replicas import append_retrying

#: Cycles of kill -9 run in make test's second lane, beside the main pass.
pytestmark = pytest.mark.beside


async def test_kill_9_cycles_of_one_replica_while_clients_retry_on_the_other(
    postgres_db: str, tmp_path: Path, report: Report
) -> None:
    url = f"{postgres_db}?schema=fault_replicas"
    stores = [StoreProcess(url, log=tmp_path / f"store{i}.log") for i in range(2)]
    await asyncio.gather(*(s.start() for s in stores))
    target = "ipv4:" + ",".join(s.addr for s in stores)
    acked: list[str] = []
    stop = asyncio.Event()

    async def producer(seed: int) -> None:
        async with Client(target, timeout=5) as c:
            n = 0
            while not stop.is_set():
                events = [new_event("Tick", {"n": n, "seed": seed})]
                await append_retrying(c, f"r-{seed}", events)
                acked.append(events[0].id)
                n += 1

    t0 = time.monotonic()
    producers = [asyncio.create_task(producer(i)) for i in range(4)]
    try:
        for cycle in range(CYCLES):
            before = len(acked)
            async with asyncio.timeout(60):
                while len(acked) < before + 200:  # noqa: ASYNC110 (appends under way)
                    await asyncio.sleep(0.01)
            victim = stores[cycle % 2]
            victim.signal(signal.SIGKILL)
            await victim.wait()
            await victim.start()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*producers), 60)
        async with Client(stores[0].addr, timeout=30) as c:
            stored = [(e.id, e.position) for e in await c.read_list()]
    finally:
        stop.set()
        for p in producers:
            p.cancel()
        await asyncio.gather(*producers, return_exceptions=True)
        await reap(stores)
    counts = collections.Counter(i for i, _ in stored)
    lost = set(acked) - set(counts)
    twice = [i for i, n in counts.items() if n > 1]
    assert not lost and not twice
    assert sorted(p for _, p in stored) == list(range(1, len(stored) + 1))
    report["replica_kills"] = CYCLES
    report["acknowledged"] = len(acked)
    report["lost"] = len(lost)
    report["stored_twice"] = len(twice)
    report["seconds"] = round(time.monotonic() - t0, 1)
