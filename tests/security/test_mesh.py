"""The mesh with security on: store, gateway and sidecar over TLS, each with its own
credential, one policy; events flow end to end and each part gets only its grants."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sluice import START, Client, Credentials, PermissionDenied, Unauthenticated, new_event
from sluice.gateway import GatewayClient
from sluice.security import token_hash
from sluice.v1 import streams_pb2 as pb
from tests.conftest import StoreProcess
from tests.gateway.conftest import GatewayProcess
from tests.security.conftest import TOKENS, Setup, ended_unauthenticated, next_event
from tests.sidecar.conftest import App, Sidecar

WAIT = 30.0

MESH_POLICY = {
    "rules": [
        {"allow": ["*"], "streams": ["*", "$*"], "who": ["root"]},
        {"allow": ["*"], "groups": ["*"], "who": ["root"]},
        {"allow": ["read", "publish"], "streams": ["*"], "who": ["gateway"]},  # its feed, relays
        {"allow": ["read", "append"], "streams": ["orders-*"], "who": ["orders-app"]},
        {"allow": ["join"], "groups": ["orders-app"], "who": ["orders-app"]},
        {"allow": ["read", "watch"], "streams": ["orders-*"], "who": ["auditor"]},
    ]
}


@contextlib.asynccontextmanager
async def running(gateway: GatewayProcess) -> AsyncIterator[GatewayProcess]:
    """The gateway started, and killed on the way out whatever happened."""
    try:
        await gateway.start()
        yield gateway
    finally:
        if gateway.proc is not None and gateway.proc.returncode is None:
            gateway.proc.kill()
            await gateway.proc.wait()


async def still_served(root: Client, watch: AsyncIterator[Any]) -> None:
    """Another watch runs on: it gets what is appended now."""
    appended = await root.append("orders-1", [new_event("E")])
    assert await next_event(watch, WAIT) == appended.first_position


async def test_events_flow_through_a_secured_mesh_and_each_part_has_only_its_grants(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup, app: App, tmp_path: Path
) -> None:
    setup.write_policy(MESH_POLICY)
    store = await secure_store()
    ca = str(setup.ca_file)
    sidecar_token = tmp_path / "sidecar.token"
    sidecar_token.write_text(TOKENS["orders-app"])
    gateway = setup.gateway(store.addr, tmp_path)
    sidecar = Sidecar(
        "pod-1",
        store.addr,
        "orders-app",
        app.url("pod-1"),
        *("--create-group", "false", "--store-tls-ca", ca, "--store-token-file", str(sidecar_token)),
    )
    sidecar.log = tmp_path / "sidecar.log"
    try:
        async with Client(store.addr, credentials=setup.creds("root")) as root:
            await root.create_group("orders-app", stream_prefixes=["orders-"], start=START, lease=2.0)
            await gateway.start()
            await sidecar.start()
            first = [new_event("Placed", {"n": n}) for n in range(10)]
            for n, ev in enumerate(first):
                await root.append(f"orders-{n % 3}", [ev])
            await app.wait(lambda: app.acked_ids() >= {e.id for e in first})

            # A subscriber of the gateway with its own token, from a cursor: the catch-up read
            # goes to the store with that token.
            async with GatewayClient(gateway.addr, credentials=setup.creds("auditor")) as gw:
                seen: list[str] = []
                async with asyncio.timeout(WAIT):
                    async for item in gw.watch(stream_prefixes=["orders-"], start=1):
                        if isinstance(item, pb.RecordedEvent):
                            seen.append(item.id)
                        if len(seen) == len(first):
                            break
                assert seen == [e.id for e in first]
                with pytest.raises(PermissionDenied):
                    await anext(gw.watch(stream_prefixes=["users-"]))
            async with GatewayClient(gateway.addr, credentials=Credentials(ca_file=ca)) as anonymous:
                with pytest.raises(Unauthenticated):
                    await anext(anonymous.watch(stream_prefixes=["orders-"]))
            # Browsers: no token, 401; a token in the query string, events.
            async with aiohttp.ClientSession() as http:
                url = gateway.http.replace("http://", "https://") + "/v1/watch?prefix=orders-&position=1"
                ssl_ctx = ssl.create_default_context(cafile=ca)
                async with http.get(url, ssl=ssl_ctx) as r:
                    assert r.status == 401
                async with http.get(url + f"&access_token={TOKENS['auditor']}", ssl=ssl_ctx) as r:
                    assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
                    line = b""
                    async with asyncio.timeout(WAIT):
                        while not line.startswith(b"data: {"):
                            line = await r.content.readline()
                # What the app publishes through its sidecar: the sidecar's grants, no more.
                publish = f"http://{sidecar.http}/v1/publish"
                headers = {"ce-type": "Noted"}
                async with http.post(f"{publish}/orders-notes", data=b"x", headers=headers) as r:
                    assert r.status == 200
                async with http.post(f"{publish}/users-1", data=b"x", headers=headers) as r:
                    assert r.status == 403 and (await r.json())["reason"] == "PERMISSION_DENIED"

            # The sidecar's token rotates (as a projected service-account token does): the
            # store knows only the new one now, and delivery goes on.
            new_token = "orders-rotated-token"
            doc = yaml.safe_load(setup.tokens.read_text())
            for entry in doc["tokens"]:
                if entry["name"] == "orders-app":
                    entry["sha256"] = token_hash(new_token)
            setup.tokens.write_text(yaml.safe_dump(doc))
            sidecar_token.write_text(new_token)
            os.utime(sidecar_token)
            later = [new_event("Placed", {"n": n}) for n in range(5)]
            for n, ev in enumerate(later):
                await root.append(f"orders-{n % 3}", [ev])
            await app.wait(lambda: app.acked_ids() >= {e.id for e in later})
    finally:
        for proc in (sidecar.proc, gateway.proc):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_the_gateway_serves_a_renewed_http_certificate_without_a_restart(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup, tmp_path: Path
) -> None:
    from tests.security.test_store import served_certificate

    store = await secure_store()
    setup.write_policy(MESH_POLICY)
    async with running(setup.gateway(store.addr, tmp_path)) as gateway:
        http = gateway.http.removeprefix("http://")
        before = served_certificate(http, str(setup.ca_file))
        fresh = setup.ca.issue_cert("127.0.0.1", "localhost")  # cert-manager renews the Secret
        fresh.private_key_pem.write_to_path(str(setup.server_key))
        fresh.cert_chain_pems[0].write_to_path(str(setup.server_cert))
        want = ssl.PEM_cert_to_DER_cert(fresh.cert_chain_pems[0].bytes().decode())
        async with asyncio.timeout(WAIT):
            while served_certificate(http, str(setup.ca_file)) != want:  # noqa: ASYNC110 (polled by design)
                await asyncio.sleep(0.2)
        assert want != before and gateway.proc is not None and gateway.proc.returncode is None


async def test_a_watch_ends_when_its_client_certificate_expires_and_others_run_on(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup, tmp_path: Path
) -> None:
    """The gateway under mutual TLS: a watch opened with a certificate that then expires
    ends with UNAUTHENTICATED; one opened with a valid certificate of the same name runs on."""
    admin = "spiffe://test/ns/ops/sa/admin"
    setup.write_policy({"rules": [*MESH_POLICY["rules"], {"allow": ["*"], "streams": ["*"], "who": [admin]}]})
    store = await secure_store()
    async with running(setup.gateway(store.addr, tmp_path, mtls=setup.cert_creds(admin))) as gateway:
        # Made once the gateway is up: its few seconds must cover the handshake below.
        lapsing_creds = setup.cert_creds(admin, datetime.timedelta(seconds=5))
        async with (
            GatewayClient(gateway.addr, credentials=lapsing_creds) as lapsing,
            GatewayClient(gateway.addr, credentials=setup.cert_creds(admin)) as lasting,
            Client(store.addr, credentials=setup.creds("root")) as root,
        ):
            watches = {
                name: g.watch(stream_prefixes=["orders-"], heartbeat_interval=0.2)
                for name, g in (("lapsing", lapsing), ("lasting", lasting))
            }
            for w in watches.values():
                await asyncio.wait_for(anext(w), WAIT)  # admitted: the first heartbeat
            why = await ended_unauthenticated(watches["lapsing"], WAIT)
            assert "certificate expired" in why, why
            await still_served(root, watches["lasting"])


async def test_a_watch_ends_when_its_token_is_taken_out_and_others_run_on(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup, tmp_path: Path
) -> None:
    setup.write_policy(
        {"rules": [*MESH_POLICY["rules"], {"allow": ["watch"], "streams": ["*"], "who": ["root"]}]}
    )
    store = await secure_store()
    async with (
        running(setup.gateway(store.addr, tmp_path)) as gateway,
        GatewayClient(gateway.addr, credentials=setup.creds("auditor")) as auditor,
        GatewayClient(gateway.addr, credentials=setup.creds("root")) as admin,
        Client(store.addr, credentials=setup.creds("root")) as root,
    ):
        watches = {
            "auditor": auditor.watch(stream_prefixes=["orders-"], heartbeat_interval=0.2),
            "root": admin.watch(stream_prefixes=["orders-"], heartbeat_interval=0.2),
        }
        for w in watches.values():
            await asyncio.wait_for(anext(w), WAIT)  # admitted: the first heartbeat
        setup.take_out_token("auditor")
        why = await ended_unauthenticated(watches["auditor"], WAIT)
        assert "taken out of the tokens file" in why, why
        await still_served(root, watches["root"])
