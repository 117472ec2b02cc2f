"""What every store handler shares: checking a request before it runs, turning a refusal
into its gRPC status, and the types and timestamps of replies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from sluice.v1 import streams_pb2 as pb
from sluice_store.checks import Undecodable, check_request, refuse_undecodable
from sluice_store.errors import StoreError, abort

#: A Read or Subscribe reply: a message, or one serialized already (see codec).
Response = pb.ReadResponse | pb.SubscribeResponse | bytes


def timestamp(us: int) -> timestamp_pb2.Timestamp:
    """A Timestamp from microseconds since the epoch."""
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(us)
    return ts


Unary = Callable[[Any], Awaitable[Any]]
Streaming = Callable[[Any], AsyncIterator[Response]]


def checked(request: Any) -> Any:
    """The request, once it parsed and its numbers fit (see checks)."""
    if isinstance(request, Undecodable):
        raise refuse_undecodable(request)
    check_request(request)
    return request


def unary_handler(
    fn: Unary, reading: bool = False
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """A handler that ends the call with the status of a refused request."""

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(checked(request))
        except StoreError as e:
            await abort(context, e, reading)
            raise AssertionError("unreachable") from e

    return handler


def streaming_handler(fn: Streaming) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Response]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:
        try:
            async for msg in fn(checked(request)):
                yield msg
        except StoreError as e:
            await abort(context, e, reading=True)

    return handler
