"""Fixtures: a real store (in-process gRPC server on a free port, real SQLite file) and a client."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sluice import Client
from sluice_store.config import Settings
from sluice_store.server import StoreServer

StoreFactory = Callable[..., Awaitable[StoreServer]]


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
