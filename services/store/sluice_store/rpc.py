"""What every store handler shares: checking a request before it runs, turning a refusal
into its gRPC status, and the types and timestamps of replies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from sluice.security import audit_event
from sluice.v1 import streams_pb2 as pb
from sluice_store.access import ADMIN, NEEDS, Access
from sluice_store.checks import Undecodable, check_request, refuse_undecodable
from sluice_store.errors import PermissionDenied, StoreError, Unauthenticated, abort, status_code

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


class CallStats:
    """Calls per (method, gRPC status code), and a hook told each call's duration; what the
    store's metrics read."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = {}
        self.on_call: Callable[[str, str, float], None] = lambda method, code, seconds: None

    def record(self, method: str, code: str, started: float) -> None:
        key = (method, code)
        self.calls[key] = self.calls.get(key, 0) + 1
        self.on_call(method, code, time.perf_counter() - started)


STATS = CallStats()


def unary_handler(
    fn: Unary, access: Access, method: str, reading: bool = False
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """A handler that admits the caller, then ends the call with the status of a refused
    request; administrative changes are audited."""
    audited = method in ADMIN

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            request = checked(request)
            principal = access.admit(context, method, request)
            result = await fn(request)
        except StoreError as e:
            STATS.record(method, status_code(e, reading).name, started)
            await abort(context, e, reading)
            raise AssertionError("unreachable") from e
        STATS.record(method, "OK", started)
        if audited and access.enabled:
            for action, resource, _ in NEEDS[method](request):
                audit_event("changed", principal.name, action, resource, method=method, peer=context.peer())
        return result

    return handler


def streaming_handler(
    fn: Streaming, access: Access, method: str
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Response]]:
    """A handler for a live read: admitted first, and ended with PERMISSION_DENIED when a
    policy reload revokes its grant."""

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:
        live = None
        started = time.perf_counter()
        try:
            request = checked(request)
            principal = access.admit(context, method, request)
            live = access.guard.register(principal, NEEDS[method](request))
            async for msg in fn(request):
                yield msg
            STATS.record(method, "OK", started)
        except StoreError as e:
            STATS.record(method, status_code(e, reading=True).name, started)
            await abort(context, e, reading=True)
        except asyncio.CancelledError:
            if live is None or (live.revoked is None and not live.lapsed):
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if live.revoked is None:
                await abort(context, Unauthenticated(f"{live.principal.name}: {live.lapsed}"), reading=True)
                return
            action, resource, kind = live.revoked
            denied = PermissionDenied(
                f"{live.principal.name} may no longer {action} {kind[:-1]} {resource}: the policy changed",
                principal=live.principal.name,
                action=action,
                resource=f"{kind[:-1]} {resource}",
            )
            await abort(context, denied, reading=True)
        finally:
            access.guard.unregister(live)

    return handler
