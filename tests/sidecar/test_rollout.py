"""Pods as the kubelet runs them: the native sidecar starts before its app and stops after it.

An app that is starting, stopping or crash-looping does not answer at all. That says nothing
about the events: none may be dead-lettered for it, and none lost, while a Deployment's pods
are replaced one by one with events flowing.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sluice import Client, new_event
from sluice.errors import StreamNotFound
from tests.conftest import StoreProcess, eventually
from tests.sidecar.conftest import WAIT, App, Sidecar
from tests.sidecar.test_mesh import group_lag_is_zero


class Pod:
    """An app container and its native sidecar, started and stopped in the kubelet's order."""

    def __init__(self, name: str, store: StoreProcess, tmp_path: Path, *extra: str) -> None:
        self.name = name
        self.app = App()
        self.sidecar = Sidecar(
            name,
            store.addr,
            "shop",
            self.app.url(name),
            *("--prefixes", "orders-", "--start", "start", "--lease", "2s"),
            *("--initial-backoff", "20ms", "--max-backoff", "100ms", "--max-attempts", "3"),
            *("--app-probe-interval", "100ms", "--app-down-grace", "1s", "--drain-timeout", "5s"),
            *extra,
        )
        self.sidecar.log = tmp_path / f"sidecar-{name}.log"

    async def start(self) -> None:
        """Sidecar first; the app once the sidecar's startup probe (/healthz) passes."""
        await self.sidecar.start(ready=False)
        await self.sidecar.get("/healthz")
        await self.app.start()
        await self.sidecar.readiness(True)

    async def stop(self, meanwhile: Callable[[], Awaitable[None]]) -> None:
        """SIGTERM to the app, and to the sidecar once the app has exited (the kubelet takes
        a while to see it: ``meanwhile`` runs in that gap)."""
        await self.app.stop()
        await meanwhile()
        self.sidecar.signal(signal.SIGTERM)
        assert await self.sidecar.wait() == 0


@pytest.fixture
async def pods(store_proc: StoreProcess, tmp_path: Path) -> AsyncIterator[Callable[[str], Pod]]:
    made: list[Pod] = []

    def make(name: str) -> Pod:
        pod = Pod(name, store_proc, tmp_path)
        made.append(pod)
        return pod

    yield make
    for pod in made:
        await pod.app.stop()
        proc = pod.sidecar.proc
        if proc and proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_rollout_and_a_crash_loop_dead_letter_nothing_and_lose_nothing(
    store_proc: StoreProcess, pods: Callable[[str], Pod]
) -> None:
    running = [pods("web-a"), pods("web-b")]
    for pod in running:
        await pod.start()
    everyone = list(running)
    produced: list[str] = []
    flowing = asyncio.Event()
    flowing.set()

    async def produce() -> None:
        async with Client(store_proc.addr) as c:
            n = 0
            while flowing.is_set():
                ev = new_event("Placed", {"n": n})
                await c.append(f"orders-{n % 8}", [ev])
                produced.append(ev.id)
                n += 1
                await asyncio.sleep(0.005)  # a steady flow, not a burst

    async def flowing_on() -> None:
        """Let at least 20 more events be appended: each step happens with events flowing."""
        mark = len(produced) + 20

        async def enough() -> bool:
            return len(produced) >= mark

        await eventually(enough, timeout=WAIT)

    producer = asyncio.create_task(produce())
    try:
        # A rollout (maxSurge 1, maxUnavailable 0): a new pod ready, then an old one stopped.
        for old, new in ((running[0], pods("web-c")), (running[1], pods("web-d"))):
            everyone.append(new)
            await flowing_on()
            await new.start()
            await flowing_on()
            await old.stop(flowing_on)
            running.remove(old)
            running.append(new)
        # A crash loop: one app dies and comes back, twice, while its sidecar runs on.
        crashing = running[0]
        for _ in range(2):
            await flowing_on()
            await crashing.app.stop()
            await flowing_on()
            await crashing.sidecar.readiness(False, "not answering")
            await crashing.app.start()
            await crashing.sidecar.readiness(True)
        # A scale-down to one pod.
        await flowing_on()
        await running.pop().stop(flowing_on)
        await flowing_on()
    finally:
        flowing.clear()
        await producer

    def delivered() -> set[str]:
        return set().union(*(pod.app.acked_ids() for pod in everyone))

    async def all_delivered() -> bool:
        return delivered() >= set(produced) and await group_lag_is_zero(store_proc, "shop")

    await eventually(all_delivered, timeout=WAIT)
    async with Client(store_proc.addr) as c:
        try:
            dead = await c.read_list("$dlq.shop")
        except StreamNotFound:  # no dead letter at all: the stream was never written
            dead = []
    assert not dead, [dict(d.metadata) for d in dead[:3]]
    assert all(r.attempt == 1 for pod in everyone for r in pod.app.received)  # no attempt spent
