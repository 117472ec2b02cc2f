"""kill -9 of sidecars and of the store while a consumer group delivers, cycle after cycle:
every acknowledged event reaches the app (at least once), duplicates are counted, and each
stream's events first arrive in order."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
from pathlib import Path

import pytest

from sluice import Client, SluiceError, new_event
from tests.conftest import StoreProcess
from tests.faults.conftest import CYCLES, Report
from tests.sidecar.conftest import App, Sidecar
from tests.sidecar.test_mesh import in_order_per_stream

#: Cycles of kill -9 run in make test's second lane, beside the main pass.
pytestmark = pytest.mark.beside


async def test_kill_9_cycles_of_sidecars_and_the_store_lose_nothing(tmp_path: Path, report: Report) -> None:
    store = StoreProcess(f"sqlite:///{tmp_path}/group.db", "--durability", "full", log=tmp_path / "store.log")
    await store.start()
    app = App()
    await app.start()
    flags = ["--prefixes", "orders-", "--start", "start", "--lease", "2s", "--initial-backoff", "50ms"]
    scs = [Sidecar(f"f{i}", store.addr, "faults", app.url(f"f{i}"), *flags) for i in range(2)]
    for sc in scs:
        sc.log = tmp_path / f"sidecar-{sc.name}.log"
        await sc.start()
    acked: list[str] = []
    stop = asyncio.Event()

    async def produce() -> None:
        """Appends one by one; a failed append is retried with the same id until stored."""
        async with Client(store.addr, timeout=5) as c:
            n = 0
            while not stop.is_set():
                ev = new_event("Placed", {"n": n})
                while True:
                    try:
                        await c.append(f"orders-{n % 16}", [ev])
                        break
                    except SluiceError:
                        await asyncio.sleep(0.05)  # the store is down: the same event again
                acked.append(ev.id)
                n += 1
                await asyncio.sleep(0.002)

    t0 = time.monotonic()
    producer = asyncio.create_task(produce())
    kills = collections.Counter[str]()
    try:
        for cycle in range(CYCLES * 2):
            before = len(acked)
            async with asyncio.timeout(60):
                while len(acked) < before + 100:  # noqa: ASYNC110 (deliveries under way)
                    await asyncio.sleep(0.02)
            victim: StoreProcess | Sidecar = store if cycle % 2 else scs[cycle // 2 % len(scs)]
            kills["store" if victim is store else "sidecar"] += 1
            victim.signal(signal.SIGKILL)
            await victim.wait()
            await victim.start()
        stop.set()
        await asyncio.wait_for(producer, 60)
        await app.wait(lambda: app.acked_ids() >= set(acked), timeout=90)
    finally:
        stop.set()
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError, SluiceError):
            await producer
        procs: list[StoreProcess | Sidecar] = [*scs, store]
        for p in procs:
            if p.proc and p.proc.returncode is None:
                p.proc.kill()
                await p.proc.wait()
        await app.stop()
    counts = collections.Counter(r.id for r in app.acked)
    assert not set(acked) - set(counts)
    assert in_order_per_stream(app.received)
    report["sidecar_kills"] = kills["sidecar"]
    report["store_kills"] = kills["store"]
    report["acknowledged"] = len(acked)
    report["lost"] = len(set(acked) - set(counts))
    report["duplicates"] = sum(n - 1 for n in counts.values())
    report["seconds"] = round(time.monotonic() - t0, 1)
