"""A subscription the server cancels is an error the caller sees, not a quiet end: grpc.aio
reports a call the server cancelled as ``cancelled()``, the same as one the client closed.
The servers here are real gRPC servers on a socket that cancel a call on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from sluice import START, Client
from sluice.errors import SluiceError
from sluice.gateway import GatewayClient
from sluice.v1 import gateway_pb2 as gwpb
from sluice.v1 import streams_pb2 as pb


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """Subscribe and Watch: caught up, then CANCELLED once ``cancel`` is set."""
    cancel = asyncio.Event()

    async def subscribe(_: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.write(pb.SubscribeResponse(caught_up=pb.CaughtUp(position=1)).SerializeToString())
        await cancel.wait()
        await context.abort(grpc.StatusCode.CANCELLED, "the server cancelled this call")

    async def watch(_: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        msg = gwpb.WatchResponse(caught_up=pb.CaughtUp(position=1), position=1)
        await context.write(msg.SerializeToString())
        await cancel.wait()
        await context.abort(grpc.StatusCode.CANCELLED, "the server cancelled this call")

    srv = grpc.aio.server()
    srv.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "sluice.v1.Streams", {"Subscribe": grpc.unary_stream_rpc_method_handler(subscribe)}
            ),
            grpc.method_handlers_generic_handler(
                "sluice.v1.Gateway", {"Watch": grpc.unary_stream_rpc_method_handler(watch)}
            ),
        ]
    )
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    yield f"127.0.0.1:{port}", cancel
    await srv.stop(None)


async def test_a_subscription_the_store_cancels_raises(server: tuple[str, asyncio.Event]) -> None:
    addr, cancel = server
    async with Client(addr, timeout=10) as c:
        it = c.subscribe(start=START)
        assert isinstance(await asyncio.wait_for(anext(it), 10), pb.CaughtUp)
        cancel.set()
        with pytest.raises(SluiceError) as raised:
            await asyncio.wait_for(anext(it), 10)
        assert raised.value.code == grpc.StatusCode.CANCELLED


async def test_a_watch_the_gateway_cancels_raises(server: tuple[str, asyncio.Event]) -> None:
    addr, cancel = server
    async with GatewayClient(addr, timeout=10) as g:
        it = g.watch()
        assert isinstance(await asyncio.wait_for(anext(it), 10), pb.CaughtUp)
        cancel.set()
        with pytest.raises(SluiceError) as raised:
            await asyncio.wait_for(anext(it), 10)
        assert raised.value.code == grpc.StatusCode.CANCELLED
