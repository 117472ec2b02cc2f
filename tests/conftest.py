"""Fixtures: a real store (in-process gRPC server on a free port, real SQLite file) and a client."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from sluice import Client
from sluice_store.config import Settings
from sluice_store.server import StoreServer

StoreFactory = Callable[..., Awaitable[StoreServer]]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until check() holds, polling; fail after timeout."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (the store signals nothing when it reclaims)
            await asyncio.sleep(0.02)


@pytest.fixture
async def make_store(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Start stores with settings overrides; every one is stopped at the end of the test."""
    servers: list[StoreServer] = []

    async def make(**overrides: Any) -> StoreServer:
        base = Settings(
            addr="127.0.0.1:0",
            db=f"sqlite:///{tmp_path}/store{len(servers)}.db",
            durability="normal",
            reclaim_interval=0.05,
            heartbeat_interval=1.0,
            grace=1.0,
        )
        server = StoreServer(dataclasses.replace(base, **overrides))
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop(0)


@pytest.fixture
async def store(make_store: StoreFactory) -> StoreServer:
    return await make_store()


@pytest.fixture
async def client(store: StoreServer) -> AsyncIterator[Client]:
    async with Client(store.address, timeout=10) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def spawn_logged(
    args: Sequence[str], log: Path | None, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """A subprocess with stdout piped and stderr (its log) appended to ``log``: pytest keeps
    the last runs' tmp_path, so a failed end-to-end test can be read afterwards."""
    if log is None:
        return await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env
        )
    with open(log, "ab") as fh:  # noqa: ASYNC230 (a local file, opened once per process start)
        return await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=fh, env=env)


class StoreProcess:
    """``python -m sluice_store`` in a subprocess, started and awaited by its output line."""

    def __init__(self, db: str, *extra: str, log: Path | None = None) -> None:
        self.addr = f"127.0.0.1:{free_port()}"
        self.args = [sys.executable, "-m", "sluice_store", "--addr", self.addr, "--db", db, *extra]
        self.proc: asyncio.subprocess.Process | None = None
        self.log = log  # where its log goes (appended across restarts); None: nowhere

    async def start(self) -> None:
        self.proc = await spawn_logged(self.args, self.log)
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            while b"listening on" not in await self.proc.stdout.readline():
                if self.proc.returncode is not None:
                    raise RuntimeError("store exited at start")

    async def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., StoreProcess]]:
    procs: list[StoreProcess] = []

    def make(*extra: str, db: str | None = None) -> StoreProcess:
        p = StoreProcess(db or f"sqlite:///{tmp_path}/proc.db", *extra, log=tmp_path / "store.log")
        procs.append(p)
        return p

    yield make
    await reap(procs)


class HasProc(Protocol):
    proc: asyncio.subprocess.Process | None


async def reap(procs: Sequence[HasProc]) -> None:
    """Kill whatever a test left running."""
    for p in procs:
        if p.proc and p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()


def console_spans(out: str) -> list[dict[str, Any]]:
    """The JSON objects the console exporter printed, one per span."""
    spans, depth, start = [], 0, -1
    for i, ch in enumerate(out):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(json.loads(out[start : i + 1]))
    return [s for s in spans if "context" in s]
