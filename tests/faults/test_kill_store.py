"""kill -9 of the store during mixed appends (unary, pipelined session, atomic AppendMany),
cycle after cycle on one database: every acknowledged event is found at the position it
was acknowledged at, no request is half-stored, positions stay dense. Both backends."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sluice import ANY, Client, SluiceError, new_event
from sluice.v1 import streams_pb2 as pb
from tests.conftest import StoreProcess
from tests.faults.conftest import CYCLES, Report

#: Cycles of kill -9 run in make test's second lane, beside the main pass.
pytestmark = pytest.mark.beside

Acked = dict[str, int]  # event id -> position acknowledged


def _record(acked: Acked, resp: pb.AppendResponse, ids: list[str]) -> None:
    for k, eid in enumerate(ids):
        acked[eid] = resp.first_position + k


async def _unary(c: Client, w: int, acked: Acked, requests: list[list[str]], stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        events = [new_event("U", {"w": w, "i": i, "k": k}) for k in range(1 + i % 4)]
        ids = [e.id for e in events]
        requests.append(ids)
        _record(acked, await c.append(f"u-{w}-{i % 5}", events), ids)
        i += 1


async def _many(c: Client, w: int, acked: Acked, requests: list[list[str]], stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        a, b = [new_event("M", {"i": i})], [new_event("M", {"i": i}), new_event("M", {"i": i})]
        requests.append([e.id for e in a + b])
        ra, rb = await c.append_many([(f"m-{w}-a", a, ANY), (f"m-{w}-b", b, ANY)])
        _record(acked, ra, [e.id for e in a])
        _record(acked, rb, [e.id for e in b])
        i += 1


async def _session(c: Client, w: int, acked: Acked, requests: list[list[str]], stop: asyncio.Event) -> None:
    async with c.session() as s:
        i = 0
        while not stop.is_set():
            batch = []
            for _ in range(32):  # pipelined: 32 in flight
                events = [new_event("S", {"i": i})]
                requests.append([events[0].id])
                batch.append((s.send(f"s-{w}-{i % 3}", events), [events[0].id]))
                i += 1
            results = await asyncio.gather(*(f for f, _ in batch), return_exceptions=True)
            for result, (_, ids) in zip(results, batch, strict=True):
                if isinstance(result, BaseException):
                    raise result
                _record(acked, result, ids)


# `normal` promises what it acknowledged through a crash of the process (not of the machine),
# and commits on a path of its own (on the event loop thread, see INLINE_EVENTS in
# storage/sqlite.py): kill -9 holds it to that promise too.
@pytest.mark.parametrize("durability", ["full", "normal"])
async def test_kill_9_cycles_under_mixed_appends(
    db_url: Callable[[str], str], report: Report, tmp_path: Path, durability: str
) -> None:
    store = StoreProcess(db_url("faults"), "--durability", durability, log=tmp_path / "store.log")
    acked: Acked = {}
    requests: list[list[str]] = []
    t0 = time.monotonic()
    try:
        for _ in range(CYCLES):
            await store.start()
            stop = asyncio.Event()
            async with Client(store.addr, timeout=10) as c:
                kinds = [_unary, _unary, _many, _session]
                tasks = [asyncio.create_task(k(c, w, acked, requests, stop)) for w, k in enumerate(kinds)]
                start = len(acked)
                async with asyncio.timeout(60):
                    while len(acked) - start < 500 and not any(t.done() for t in tasks):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                await asyncio.sleep(random.uniform(0, 0.05))  # the kill lands at a random moment
                store.signal(signal.SIGKILL)
                await store.wait()
                stop.set()
                for t in tasks:
                    with contextlib.suppress(SluiceError, asyncio.InvalidStateError):
                        await asyncio.wait_for(t, 30)
        await store.start()
        async with Client(store.addr, timeout=30) as c:
            found = {e.id: e.position async for e in c.read()}
        store.signal(signal.SIGTERM)
        await store.wait()
    finally:
        if store.proc and store.proc.returncode is None:
            store.proc.kill()
            await store.proc.wait()
    moved = {i: (p, found.get(i)) for i, p in acked.items() if found.get(i) != p}
    assert not moved, f"{len(moved)} acknowledged events lost or moved"
    partial = [ids for ids in requests if 0 < sum(i in found for i in ids) < len(ids)]
    assert not partial, f"{len(partial)} requests half-stored"
    positions = sorted(found.values())
    assert positions == list(range(1, len(positions) + 1))
    report["cycles"] = CYCLES
    report["acknowledged"] = len(acked)
    report["stored"] = len(found)
    report["lost"] = len(moved)
    report["half_stored"] = len(partial)
    report["seconds"] = round(time.monotonic() - t0, 1)
