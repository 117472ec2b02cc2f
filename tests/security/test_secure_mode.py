"""Secure mode is on when it says it is: the stores, gateways and sidecars the mesh suites
start under ``SLUICE_TEST_SECURE=1`` refuse plaintext and callers without a token, and the
test's own clients are let in only by their credentials. (Skipped in the plain run.)"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from sluice import Client, Credentials, PermissionDenied, Unauthenticated, new_event
from sluice.gateway import GatewayClient
from sluice.v1 import streams_pb2 as pb
from sluice.v1 import streams_pb2_grpc as pb_grpc
from tests.conftest import StoreProcess
from tests.gateway.conftest import GatewayProcess
from tests.secure_mode import SECURE, mesh_security

pytestmark = pytest.mark.skipif(not SECURE, reason="runs in secure mode (SLUICE_TEST_SECURE=1)")


async def test_the_mesh_processes_of_secure_mode_refuse_plaintext_and_anonymous_callers(
    tmp_path: Path,
) -> None:
    sec = mesh_security()
    assert sec is not None
    store = StoreProcess(f"sqlite:///{tmp_path}/s.db", log=tmp_path / "store.log")
    gateway = GatewayProcess(store.addr)
    try:
        await store.start()
        await gateway.start()
        async with grpc.aio.insecure_channel(store.addr) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as plain:
                await pb_grpc.StreamsStub(ch).Read(pb.ReadRequest(stream="x"), timeout=5).read()
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE  # no TLS, no call
        anonymous = Credentials(ca_file=str(sec.ca))
        async with Client(store.addr, credentials=anonymous, timeout=5) as c:
            with pytest.raises(Unauthenticated):
                await c.append("orders-1", [new_event("T", b"")])
        sidecar = Credentials(ca_file=str(sec.ca), token=sec.tokens["sidecar"])
        async with Client(store.addr, credentials=sidecar, timeout=5) as c:
            await c.append("orders-1", [new_event("T", b"")])  # granted
            with pytest.raises(PermissionDenied):
                await c.delete_stream("orders-1")  # not granted
        async with GatewayClient(gateway.addr, credentials=anonymous) as g:
            with pytest.raises(Unauthenticated):
                await anext(g.watch())
        async with Client(store.addr, timeout=5) as c:  # the test's own: from the variables
            await c.delete_stream("orders-1")
    finally:
        for proc in (gateway.proc, store.proc):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
