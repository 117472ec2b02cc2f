"""Fixtures for the gateway: a store and a gateway as real processes, and gateway clients."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sluice import Client, Credentials, new_event
from sluice.gateway import GatewayClient
from sluice.v1 import streams_pb2 as pb
from tests.conftest import StoreProcess, reap
from tests.ports import announced
from tests.secure_mode import http_scheme, server_flags, store_client_flags


class GatewayProcess:
    """``python -m sluice_gateway`` in a subprocess, as the manifests run it (flags from env).

    It binds port 0 for gRPC (unless given a port) and for HTTP; ``addr`` and ``http`` are
    what it says it bound, known once ``start()`` returns.
    """

    def __init__(
        self,
        store: str,
        *extra: str,
        port: int = 0,
        env: dict[str, str] | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.credentials = credentials  # how the readiness check below calls it
        self.port = port
        self.addr = ""
        self.http = ""
        self.env = {
            **os.environ,
            "SLUICE_STORE_ADDR": store,
            "SLUICE_GATEWAY_ADDR": f"127.0.0.1:{port}",
            "SLUICE_GATEWAY_HTTP_ADDR": "127.0.0.1:0",
            "SLUICE_HEARTBEAT_INTERVAL": "0.2s",
            **(env or {}),
        }
        secured = [*server_flags(), *store_client_flags("gateway")]
        self.args = [sys.executable, "-m", "sluice_gateway", *secured, *extra]
        self.proc: asyncio.subprocess.Process | None = None
        self.output = b""

    async def start(self, wait_ready: bool = True) -> None:
        """Start it; once it listens, and (``wait_ready``) once its feed from the store is live."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert self.proc.stdout is not None
        seen = bytearray()
        async with asyncio.timeout(20):
            m = await announced(self.proc.stdout, r"listening on (\S+), HTTP on (\S+) ", seen)
        self.output += bytes(seen)
        self.addr, self.http = m.group(1), f"{http_scheme()}://{m.group(2)}"
        self.port = int(self.addr.rpartition(":")[2])
        if wait_ready:
            async with GatewayClient(self.addr, credentials=self.credentials) as g:  # its feed is live
                await asyncio.wait_for(anext(g.watch()), 20)

    async def stop(self) -> int:
        """SIGTERM, then the exit code once it has shut down."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
        return await self.exited()

    async def exited(self) -> int:
        """Wait for the process to end by itself; its exit code."""
        assert self.proc is not None
        rest, _ = await asyncio.wait_for(self.proc.communicate(), 20)
        self.output += rest or b""
        return self.proc.returncode if self.proc.returncode is not None else -1


Gateways = Callable[..., GatewayProcess]


@pytest.fixture
async def store_proc(spawn: Callable[..., StoreProcess], tmp_path: Path) -> StoreProcess:
    store = spawn("--durability", "normal", "--reclaim-interval", "0.05", "--heartbeat-interval", "0.2")
    await store.start()
    return store


@pytest.fixture
async def gateways(store_proc: StoreProcess) -> AsyncIterator[Gateways]:
    procs: list[GatewayProcess] = []

    def make(*extra: str, store: str | None = None, **kwargs: object) -> GatewayProcess:
        p = GatewayProcess(store or store_proc.addr, *extra, **kwargs)  # type: ignore[arg-type]
        procs.append(p)
        return p

    yield make
    await reap(procs)


@pytest.fixture
async def gateway(gateways: Gateways) -> GatewayProcess:
    g = gateways()
    await g.start()
    return g


@pytest.fixture
async def store_client(store_proc: StoreProcess) -> AsyncIterator[Client]:
    async with Client(store_proc.addr, timeout=10) as c:
        yield c


@pytest.fixture
async def gw(gateway: GatewayProcess) -> AsyncIterator[GatewayClient]:
    async with GatewayClient(gateway.addr, timeout=10) as g:
        yield g


async def next_item(it: AsyncIterator[Any], timeout: float = 10) -> Any:
    """The next item of a watch that is not a heartbeat, within ``timeout`` seconds: one
    may come between any two others (every 5 s by default) on a slow machine."""
    async with asyncio.timeout(timeout):
        while isinstance(item := await anext(it), pb.Heartbeat):
            pass
    return item


#: Each client its own connection (gRPC would otherwise share one between equal channels),
#: so that the kernel spreads them over the processes sharing a port.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


async def spread_watches(
    addr: str, store_client: Client, prefix: str, count: int = 20
) -> tuple[list[GatewayClient], list[AsyncIterator[Any]]]:
    """``count`` watches of ``prefix`` on connections of their own, each caught up and then
    given one stored event; the clients (for the caller to close) and the watches."""
    clients = [GatewayClient(addr, options=OWN_CONNECTION) for _ in range(count)]
    try:
        its: list[AsyncIterator[Any]] = [c.watch(stream_prefixes=[prefix]) for c in clients]
        for it in its:
            assert isinstance(await next_item(it), pb.CaughtUp)
        resp = await store_client.append(f"{prefix}-1", [new_event("E", b"x")])
        for it in its:
            ev = await next_item(it)
            assert isinstance(ev, pb.RecordedEvent) and ev.position == resp.first_position
    except BaseException:
        for c in clients:
            await c.close()
        raise
    return clients, its
