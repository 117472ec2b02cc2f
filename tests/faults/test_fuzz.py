"""Every RPC of the store fed random and truncated bytes: never a server fault (INTERNAL,
UNKNOWN, UNAVAILABLE), and the store goes on serving after all of it."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice import Client, new_event
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb
from sluice_store.server import StoreServer

METHODS: list[tuple[str, str]] = [
    *(("sluice.v1.Streams", m.name) for m in pb.DESCRIPTOR.services_by_name["Streams"].methods),
    *(("sluice.v1.Groups", m.name) for m in gpb.DESCRIPTOR.services_by_name["Groups"].methods),
]
FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
VALID = pb.AppendRequest(stream="fuzz", events=[new_event("E", b"payload")]).SerializeToString()


async def _call(channel: grpc.aio.Channel, service: str, method: str, body: bytes) -> grpc.StatusCode:
    desc = (pb if service.endswith("Streams") else gpb).DESCRIPTOR.services_by_name[service.split(".")[-1]]
    m = desc.methods_by_name[method]
    kind = ("stream" if m.client_streaming else "unary") + "_" + ("stream" if m.server_streaming else "unary")
    rpc = getattr(channel, kind)(f"/{service}/{method}", request_serializer=lambda b: b)
    try:
        call = rpc(iter([body]), timeout=5) if m.client_streaming else rpc(body, timeout=5)
        if m.server_streaming:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):  # a valid subscription streams on: enough
                    async for _ in call:
                        pass
            call.cancel()
            return grpc.StatusCode.OK
        await call
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as e:
        return e.code()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    which=st.integers(0, len(METHODS) - 1),
    body=st.one_of(st.binary(max_size=300), st.integers(0, len(VALID)).map(lambda n: VALID[:n])),
)
async def test_random_and_truncated_bytes_never_fault_the_store(
    store: StoreServer, which: int, body: bytes
) -> None:
    service, method = METHODS[which]
    async with grpc.aio.insecure_channel(store.address) as ch:
        code = await _call(ch, service, method, body)
    assert code not in FAULTS, f"{service}/{method} answered {code.name} to {body[:40]!r}"
    async with Client(store.address, timeout=10) as c:  # and it serves on (the same store each time)
        await c.append("after-fuzz", [new_event("E", b"x")])
