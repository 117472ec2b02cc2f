"""End-to-end fixtures: a store process, sidecar processes, and a plain aiohttp app receiving pushes."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StoreProcess, spawn_logged
from tests.ports import announced, reserve_port
from tests.secure_mode import store_client_flags

WAIT = 30.0


@dataclasses.dataclass
class Received:
    sidecar: str
    id: str
    stream: str
    revision: int
    position: int
    partition: int
    attempt: int
    type: str


class App:
    """An existing HTTP service: it knows CloudEvents headers, nothing of Sluice's code."""

    def __init__(self) -> None:
        self.port = reserve_port()  # known before it listens: sidecars are told it first
        self.received: list[Received] = []
        self.acked: list[Received] = []
        self.script: dict[str, list[int]] = {}  # stream -> statuses for its next deliveries
        self.poison: set[str] = set()  # event types answered with 500, always
        self.batches: list[int] = []  # sizes of batched deliveries
        self.raw: list[tuple[dict[str, str], bytes]] = []  # every request's headers and body
        self.traceparents: dict[str, str] = {}  # event id -> traceparent header
        self.hold: dict[str, asyncio.Event] = {}  # stream -> answer only once this is set
        self.holding = asyncio.Event()  # set while a delivery is held
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    def url(self, sidecar: str) -> str:
        return f"http://127.0.0.1:{self.port}/events/{sidecar}"

    async def _events(self, request: web.Request) -> web.Response:
        h = request.headers
        self.raw.append((dict(h), await request.read()))
        if h.get("content-type") == "application/cloudevents-batch+json":
            return await self._batch(request)
        got = Received(
            request.match_info["sidecar"],
            h["ce-id"],
            h["ce-subject"],
            int(h["ce-sluicerevision"]),
            int(h["ce-sluiceposition"]),
            int(h["ce-sluicepartition"]),
            int(h["ce-sluiceattempt"]),
            h["ce-type"],
        )
        if "traceparent" in h:
            self.traceparents[got.id] = h["traceparent"]
        if got.stream in self.hold:
            self.holding.set()
            await self.hold[got.stream].wait()
        status = 200
        if got.type in self.poison:
            status = 500
        elif self.script.get(got.stream):
            status = self.script[got.stream].pop(0)
        async with self._changed:
            self.received.append(got)
            if status == 200:
                self.acked.append(got)
            self._changed.notify_all()
        return web.Response(status=status, text="ok" if status == 200 else "not now")

    async def _batch(self, request: web.Request) -> web.Response:
        events = await request.json()
        batch = [
            Received(
                request.match_info["sidecar"],
                e["id"],
                e["subject"],
                int(e["sluicerevision"]),
                int(e["sluiceposition"]),
                int(e["sluicepartition"]),
                int(e["sluiceattempt"]),
                e["type"],
            )
            for e in events
        ]
        async with self._changed:
            self.received += batch
            self.acked += batch
            self.batches.append(len(batch))
            self._changed.notify_all()
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.post("/events/{sidecar}", self._events)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def wait(self, check: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait until check() holds after some delivery; fail after timeout."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(check), timeout)

    def acked_ids(self) -> set[str]:
        return {r.id for r in self.acked}


class Sidecar:
    """``python -m sluice_sidecar`` as a real process."""

    def __init__(
        self, name: str, store: str, group: str, app_url: str, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.env = env
        self.log: Path | None = None
        self.http = ""  # what it bound (port 0), known once start() returns
        self.grpc = ""
        self.probes = ""  # the probe listener, when asked for
        self.args = [
            *(sys.executable, "-m", "sluice_sidecar", "--store", store, "--group", group),
            *("--member-id", name, "--app-url", app_url),
            *("--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"),
            *store_client_flags("sidecar"),
            *extra,
        ]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, ready: bool = True) -> None:
        """Start it and learn its addresses; with ready, wait until it is ready too."""
        self.proc = await spawn_logged(self.args, self.log, self.env)
        assert self.proc.stdout is not None
        async with asyncio.timeout(WAIT):
            line = r"sluice sidecar .*: http (\S+), grpc (\S+), delivering by \w+(?:, probes (\S+))?"
            m = await announced(self.proc.stdout, line)
            self.http, self.grpc, self.probes = m.group(1), m.group(2), m.group(3) or ""
        if ready:
            await self.readiness(True)

    async def readiness(self, ready: bool, reason: str = "") -> dict[str, Any]:
        """Wait until /readyz says ready (or not, with a reason holding ``reason``); its body."""

        def holds(body: dict[str, Any]) -> bool:
            return body.get("ready") == ready and reason in body.get("reason", "")

        async with asyncio.timeout(WAIT):
            while not holds(body := await self.get("/readyz", ok_only=False)):  # noqa: ASYNC110 (readiness can only be polled)
                await asyncio.sleep(0.05)
        return body

    async def get(self, path: str, ok_only: bool = True) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(f"http://{self.http}{path}") as r:
            if ok_only:
                r.raise_for_status()
            data: dict[str, Any] = await r.json()
            return data

    async def status(self) -> dict[str, Any]:
        return await self.get("/v1/status")

    async def partitions(self) -> set[int]:
        return {int(p["partition"]) for p in (await self.status()).get("partitions", [])}

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = WAIT) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)


@pytest.fixture
async def store_proc(tmp_path: Path) -> AsyncIterator[StoreProcess]:
    store = StoreProcess(
        f"sqlite:///{tmp_path}/mesh.db", "--durability", "normal", log=tmp_path / "store.log"
    )
    await store.start()
    yield store
    if store.proc and store.proc.returncode is None:
        store.proc.kill()
        await store.proc.wait()


@pytest.fixture
async def sidecars(
    store_proc: StoreProcess, app: App, tmp_path: Path
) -> AsyncIterator[Callable[..., Sidecar]]:
    made: list[Sidecar] = []

    def make(name: str, *extra: str, group: str = "app", env: dict[str, str] | None = None) -> Sidecar:
        defaults = ["--prefixes", "orders-", "--start", "start", "--lease", "2s", "--initial-backoff", "50ms"]
        sc = Sidecar(name, store_proc.addr, group, app.url(name), *defaults, *extra, env=env)
        sc.log = tmp_path / f"sidecar-{name}.log"
        made.append(sc)
        return sc

    yield make
    for sc in made:
        if sc.proc and sc.proc.returncode is None:
            sc.proc.send_signal(signal.SIGCONT)
            sc.proc.kill()
            await sc.proc.wait()
