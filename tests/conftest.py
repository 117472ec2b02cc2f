"""Fixtures: a real store (in-process gRPC server on a free port) on each backend, and a client.

Store tests run twice: on a real SQLite file and on a real PostgreSQL, in a database made
for this run and dropped after it (``SLUICE_TEST_POSTGRES`` names the server; with none
reachable the PostgreSQL half is skipped, except under CI, where it fails).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from sluice import Client
from sluice_store.config import Settings
from sluice_store.server import StoreServer
from tests.ports import announced, reserve_port
from tests.secure_mode import mesh_security, server_flags, server_settings

StoreFactory = Callable[..., Awaitable[StoreServer]]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until check() holds, polling; fail after timeout."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (the store signals nothing when it reclaims)
            await asyncio.sleep(0.02)


POSTGRES = os.environ.get("SLUICE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


async def _postgres_admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session", autouse=True)
def secure_mode() -> None:
    """In secure mode (SLUICE_TEST_SECURE=1, see tests/secure_mode.py): the run's certificates,
    tokens and policy, made before any client reads its variables."""
    mesh_security()


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database for this test run, dropped at its end."""
    name = f"sluice_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        why = (
            f"PostgreSQL is not reachable at {POSTGRES} ({e}); point SLUICE_TEST_POSTGRES at a"
            " server (postgresql://user@host:port/db, allowed to create databases) to run these"
        )
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    yield urlunsplit(urlsplit(POSTGRES)._replace(path=f"/{name}", query=""))
    asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Storage URLs on this test's backend: the same name gives the same database."""
    if backend == "sqlite":
        return lambda name: f"sqlite:///{tmp_path}/{name}.db"
    base = request.getfixturevalue("postgres_db")
    tag = secrets.token_hex(4)  # a schema per store and test, in the run's database
    return lambda name: f"{base}?schema={name}_{tag}"


@pytest.fixture
async def make_store(db_url: Callable[[str], str]) -> AsyncIterator[StoreFactory]:
    """Start stores with settings overrides; every one is stopped at the end of the test."""
    servers: list[StoreServer] = []

    async def make(**overrides: Any) -> StoreServer:
        base = Settings(
            addr="127.0.0.1:0",
            db=db_url(f"store{len(servers)}"),
            durability="normal",
            reclaim_interval=0.05,
            heartbeat_interval=1.0,
            grace=1.0,
        )
        server = StoreServer(dataclasses.replace(base, **{**server_settings(), **overrides}))
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
        self.addr = f"127.0.0.1:{reserve_port()}"  # the same address across restarts
        self.args = [
            sys.executable,
            "-m",
            "sluice_store",
            "--addr",
            self.addr,
            "--db",
            db,
            *server_flags(),
            *extra,
        ]
        self.proc: asyncio.subprocess.Process | None = None
        self.log = log  # where its log goes (appended across restarts); None: nowhere

    async def start(self) -> None:
        self.proc = await spawn_logged(self.args, self.log)
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            await announced(self.proc.stdout, "listening on")

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


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closes the connection (EOF or reset)."""
    try:
        while await reader.read(1024):
            pass
    except ConnectionError:
        pass
    return True


async def slow_clients(host_port: str, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """n connections that send half a request head and then nothing."""
    host, _, port = host_port.rpartition(":")
    conns = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        conns.append((reader, writer))
    return conns


@pytest.fixture
async def app() -> AsyncIterator[Any]:
    """An existing HTTP service receiving a sidecar's pushes (tests.sidecar.conftest.App)."""
    from tests.sidecar.conftest import App

    a = App()
    await a.start()
    yield a
    await a.stop()
