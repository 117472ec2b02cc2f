"""The store with TLS, authentication and a policy, as real processes: who may do what."""

from __future__ import annotations

import asyncio
import datetime
import hmac
import json
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sluice import (
    START,
    Client,
    Credentials,
    PermissionDenied,
    SluiceError,
    Unauthenticated,
    Unavailable,
    new_event,
)
from sluice.security import JWT_LEEWAY
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb
from tests.conftest import StoreProcess
from tests.security.conftest import AUDIENCE, ISSUER, POLICY, TOKENS, Setup, ended_unauthenticated, next_event

WAIT = 20.0

Call = Callable[[Client], Awaitable[object]]


async def subscribe_once(c: Client, **kw: object) -> object:
    """Open a subscription and read its first message (admission happens before it)."""
    sub = c.subscribe(start=START, **kw)  # type: ignore[arg-type]
    try:
        return await asyncio.wait_for(anext(sub), WAIT)
    finally:
        await sub.aclose()


async def read_stream(c: Client, stream: str) -> object:
    return [e async for e in c.read(stream)]


def heartbeat(group: str, member: str = "m1") -> Call:
    return lambda c: c.heartbeat(gpb.HeartbeatRequest(group=group, member_id=member))


#: (principal, what, call, allowed)
MATRIX: list[tuple[str, str, Call, bool]] = [
    ("orders-app", "append orders-1", lambda c: c.append("orders-1", [new_event("E")]), True),
    ("orders-app", "append users-1", lambda c: c.append("users-1", [new_event("E")]), False),
    ("orders-app", "read orders-1", lambda c: read_stream(c, "orders-1"), True),
    ("orders-app", "read orders-secret-1 (deny wins)", lambda c: read_stream(c, "orders-secret-1"), False),
    (
        "orders-app",
        "subscribe prefix orders-x",
        lambda c: subscribe_once(c, stream_prefixes=["orders-x"]),
        True,
    ),
    (
        "orders-app",
        "subscribe prefix orders- (overlaps a deny)",
        lambda c: subscribe_once(c, stream_prefixes=["orders-"]),
        False,
    ),
    (
        "orders-app",
        "subscribe two prefixes, one not granted",
        lambda c: subscribe_once(c, stream_prefixes=["orders-x", "users-"]),
        False,
    ),
    ("orders-app", "subscribe every stream", lambda c: subscribe_once(c), False),
    ("orders-app", "delete orders-1", lambda c: c.delete_stream("orders-1"), False),
    ("orders-app", "set retention on orders-1", lambda c: c.set_retention("orders-1", max_count=5), False),
    ("orders-app", "read $dlq.orders-app", lambda c: read_stream(c, "$dlq.orders-app"), False),
    ("orders-app", "join group orders-app", heartbeat("orders-app"), True),
    ("orders-app", "join group billing", heartbeat("billing"), False),
    ("orders-app", "create a group", lambda c: c.create_group("x", stream_prefixes=["orders-"]), False),
    ("orders-app", "delete group orders-app", lambda c: c.delete_group("orders-app"), False),
    ("auditor", "read orders-1 (glob ?)", lambda c: read_stream(c, "orders-1"), True),
    ("auditor", "read orders-12", lambda c: read_stream(c, "orders-12"), False),
    ("auditor", "append orders-1", lambda c: c.append("orders-1", [new_event("E")]), False),
    ("auditor", "list groups", lambda c: c.list_groups(), False),
    ("root", "delete orders-2", lambda c: c.delete_stream("orders-2"), True),
    ("root", "subscribe every stream", lambda c: subscribe_once(c), True),
    ("root", "read $dlq.orders-app", lambda c: c.stream_info("$dlq.orders-app"), True),
    ("root", "create a group", lambda c: c.create_group("billing", stream_prefixes=["bills-"]), True),
    ("root", "list groups", lambda c: c.list_groups(), True),
]


async def test_principals_by_actions_by_resources(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup
) -> None:
    store = await secure_store()
    async with Client(store.addr, credentials=setup.creds("root")) as root:
        for stream in ("orders-1", "orders-2", "orders-12", "orders-secret-1"):
            await root.append(stream, [new_event("E")])
        await root.create_group("orders-app", stream_prefixes=["orders-"])
    results = []
    for principal, what, call, allowed in MATRIX:
        async with Client(store.addr, credentials=setup.creds(principal)) as c:
            try:
                await call(c)
                got = True
            except PermissionDenied as e:
                got = False
                assert e.principal == principal and e.action and e.resource, what
            except SluiceError as e:  # anything else is a failure of the case itself
                raise AssertionError(f"{principal}: {what}: {e!r}") from e
        results.append((principal, what, allowed, got))
    wrong = [(p, w, "allowed" if a else "refused") for p, w, a, g in results if a != g]
    assert not wrong, f"expected otherwise: {wrong}"
    assert len(results) == len(MATRIX) == 24
    assert {p for p, *_ in results} == {"orders-app", "auditor", "root"}


async def test_no_or_bad_credentials_are_unauthenticated(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup
) -> None:
    store = await secure_store()
    keys = setup.keys
    now = 1_900_000_000  # exp/nbf set relative to it below via time claims
    cases = {
        "no credential": "",
        "an unknown static token": "not-a-token",
        "an expired JWT": keys.token("orders-app", exp=1, iat=1),
        "a JWT not valid yet": keys.token("orders-app", nbf=now),
        "a JWT for another audience": keys.token("orders-app", aud="someone-else"),
        "a JWT from another issuer": keys.token("orders-app", iss="https://elsewhere"),
        "a JWT signed by another key": keys.token("orders-app", key=keys.other),
        "alg none": jwt.encode(
            {"sub": "root", "aud": AUDIENCE, "iss": ISSUER, "exp": now},
            None,  # type: ignore[arg-type]  # unsigned: exactly what must be refused
            algorithm="none",
        ),
    }
    for what, token in cases.items():
        creds = Credentials(ca_file=str(setup.ca_file), token=token)
        async with Client(store.addr, credentials=creds) as c:
            with pytest.raises(Unauthenticated):
                await c.append("orders-1", [new_event("E")])
            with pytest.raises(Unauthenticated):
                await subscribe_once(c, stream_prefixes=["orders-x"])
        assert what  # each case ran
    # Key confusion: the RSA public key used as an HMAC secret (HS256 is not configured).
    pem = keys.private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","kid":"k1","typ":"JWT"}').decode()
    claims = f'{{"sub":"root","aud":"{AUDIENCE}","iss":"{ISSUER}","exp":{now}}}'
    body = jwt.utils.base64url_encode(claims.encode()).decode()
    signed = hmac.new(pem, f"{header}.{body}".encode(), "sha256").digest()  # PyJWT refuses to: by hand
    forged = f"{header}.{body}.{jwt.utils.base64url_encode(signed).decode()}"
    async with Client(store.addr, credentials=Credentials(ca_file=str(setup.ca_file), token=forged)) as c:
        with pytest.raises(Unauthenticated):
            await c.append("orders-1", [new_event("E")])
    # A valid JWT is the principal its subject names.
    async with Client(
        store.addr, credentials=Credentials(ca_file=str(setup.ca_file), token=keys.token("orders-app"))
    ) as c:
        await c.append("orders-1", [new_event("E")])
        with pytest.raises(PermissionDenied):
            await c.append("users-1", [new_event("E")])
    # Plaintext to a TLS port does not get through at all.
    async with Client(store.addr, credentials=Credentials(token="root-secret-token"), timeout=3) as c:
        with pytest.raises((Unavailable, SluiceError)):
            await c.append("orders-1", [new_event("E")])


async def test_mutual_tls_names_the_principal_and_refuses_strangers(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup
) -> None:
    store = await secure_store(mtls=True)
    cert, key = setup.client_cert("spiffe://test/ns/shop/sa/orders")
    ok = Credentials(ca_file=str(setup.ca_file), cert_file=str(cert), key_file=str(key))
    async with Client(store.addr, credentials=ok) as c:
        await c.append("mesh-1", [new_event("E")])  # granted to the certificate's URI SAN
        with pytest.raises(PermissionDenied) as denied:
            await c.append("orders-1", [new_event("E")])
        assert denied.value.principal == "spiffe://test/ns/shop/sa/orders"
    stranger_cert, stranger_key = setup.client_cert("spiffe://test/ns/shop/sa/orders", ca=trustme.CA())
    for creds in (
        Credentials(ca_file=str(setup.ca_file)),  # no client certificate
        Credentials(ca_file=str(setup.ca_file), cert_file=str(stranger_cert), key_file=str(stranger_key)),
    ):
        async with Client(store.addr, credentials=creds, timeout=3) as c:
            with pytest.raises(SluiceError) as refused:
                await c.append("mesh-1", [new_event("E")])
            assert not isinstance(refused.value, PermissionDenied)  # the handshake failed


async def test_a_client_certificate_that_expires_ends_its_subscriptions_and_calls(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup
) -> None:
    """A connection outlives the handshake that checked its certificate: once the
    certificate expires, the store ends the reads opened with it and refuses new calls on
    the same connection, while reads under a certificate still valid (of the same name)
    run on."""
    store = await secure_store(mtls=True)
    orders = "spiffe://test/ns/shop/sa/orders"
    async with (
        Client(store.addr, credentials=setup.cert_creds(orders, datetime.timedelta(seconds=5))) as by_cert,
        Client(store.addr, credentials=setup.cert_creds(orders)) as root,
    ):
        subs = {
            name: c.subscribe(stream_prefixes=["mesh-1"], heartbeat_interval=0.2)
            for name, c in (("cert", by_cert), ("root", root))
        }
        for sub in subs.values():
            assert isinstance(await asyncio.wait_for(anext(sub), WAIT), pb.CaughtUp)
        why = await ended_unauthenticated(subs["cert"], WAIT)
        assert "certificate expired" in why, why
        with pytest.raises(Unauthenticated) as refused:  # a new call on the same connection
            await by_cert.append("mesh-1", [new_event("E")])
        assert "certificate expired" in refused.value.message
        appended = await root.append("mesh-1", [new_event("E")])
        assert await next_event(subs["root"], WAIT) == appended.first_position
    assert store.log is not None
    lines = store.log.read_text().splitlines()
    audit = [json.loads(line.split("sluice.audit: ", 1)[1]) for line in lines if "credential_ended" in line]
    assert [a["why"] for a in audit] == ["its client certificate expired"], audit


def served_certificate(addr: str, ca_file: str) -> bytes:
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["h2"])
    host, port = addr.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der
    return der


async def test_a_rotated_server_certificate_is_served_without_a_restart(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup
) -> None:
    store = await secure_store()
    before = served_certificate(store.addr, str(setup.ca_file))
    async with Client(store.addr, credentials=setup.creds("root")) as c:
        await c.append("orders-1", [new_event("E")])
        fresh = setup.ca.issue_cert("127.0.0.1", "localhost")  # as cert-manager renews it
        fresh.private_key_pem.write_to_path(str(setup.server_key))
        fresh.cert_chain_pems[0].write_to_path(str(setup.server_cert))
        await c.append("orders-1", [new_event("E")])  # the open connection goes on
    after = served_certificate(store.addr, str(setup.ca_file))  # a new connection: the new one
    assert after != before
    assert after == ssl.PEM_cert_to_DER_cert(fresh.cert_chain_pems[0].bytes().decode())
    assert store.proc is not None and store.proc.returncode is None


async def test_a_revoked_grant_ends_an_open_subscription(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup
) -> None:
    store = await secure_store()
    async with Client(store.addr, credentials=setup.creds("orders-app")) as c:
        sub = c.subscribe(stream_prefixes=["orders-x"], heartbeat_interval=0.2)
        assert isinstance(await asyncio.wait_for(anext(sub), WAIT), pb.CaughtUp)
        narrowed = {**POLICY, "rules": [r for r in POLICY["rules"] if r.get("who") != ["orders-app"]]}
        setup.write_policy(narrowed)
        with pytest.raises(PermissionDenied) as ended:
            async with asyncio.timeout(WAIT):
                async for _ in sub:
                    pass
        assert ended.value.principal == "orders-app" and "policy changed" in ended.value.message
        with pytest.raises(PermissionDenied):  # and new ones are refused
            await c.append("orders-1", [new_event("E")])


async def test_a_token_taken_out_or_a_jwt_that_expires_ends_open_subscriptions(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup
) -> None:
    store = await secure_store()
    # A JWT that verifies only within the clock-skew leeway, for a few seconds more.
    lapsing = setup.keys.token("orders-app", exp=int(time.time() - JWT_LEEWAY + 6))
    async with (
        Client(store.addr, credentials=setup.creds("orders-app")) as by_token,
        Client(store.addr, credentials=setup.creds(token=lapsing)) as by_jwt,
        Client(store.addr, credentials=setup.creds("root")) as root,
    ):
        subs = {
            name: c.subscribe(stream_prefixes=["orders-1"], heartbeat_interval=0.2)
            for name, c in (("token", by_token), ("jwt", by_jwt), ("root", root))
        }
        for sub in subs.values():
            assert isinstance(await asyncio.wait_for(anext(sub), WAIT), pb.CaughtUp)
        setup.take_out_token("orders-app")
        for name in ("token", "jwt"):
            message = await ended_unauthenticated(subs[name], WAIT)
            why = "taken out of the tokens file" if name == "token" else "expired"
            assert why in message, (name, message)
        # Another principal's subscription runs on: it sees what is appended now.
        appended = await root.append("orders-1", [new_event("E")])
        assert await next_event(subs["root"], WAIT) == appended.first_position
        with pytest.raises(Unauthenticated):  # and the removed token opens nothing new
            await subscribe_once(by_token, stream_prefixes=["orders-1"])
    assert store.log is not None
    lines = store.log.read_text().splitlines()
    audit = [json.loads(line.split("sluice.audit: ", 1)[1]) for line in lines if "credential_ended" in line]
    assert sorted(a["why"] for a in audit if a["principal"] == "orders-app") == [
        "its token expired",
        "its token was taken out of the tokens file",
    ], audit


async def test_a_member_id_belongs_to_the_principal_that_joined(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup
) -> None:
    store = await secure_store()
    async with Client(store.addr, credentials=setup.creds("root")) as root:
        await root.create_group("orders-app", stream_prefixes=["orders-"])
        async with Client(store.addr, credentials=setup.creds("orders-app")) as app:
            joined = await app.heartbeat(gpb.HeartbeatRequest(group="orders-app", member_id="pod-1"))
            assert joined.member_epoch >= 1
            for req in (
                gpb.HeartbeatRequest(group="orders-app", member_id="pod-1"),  # a takeover by rejoining
                gpb.HeartbeatRequest(group="orders-app", member_id="pod-1", member_epoch=joined.member_epoch),
            ):
                with pytest.raises(PermissionDenied):
                    await root.heartbeat(req)
            commit = gpb.CommitCursorRequest(
                group="orders-app", member_id="pod-1", member_epoch=joined.member_epoch,
                partition=joined.assigned[0].partition, position=1,
            )  # fmt: skip
            with pytest.raises(PermissionDenied):
                await root.commit_cursor(commit)
            await app.commit_cursor(commit)  # its own member: fine


async def test_protected_mode_serves_loopback_only_without_credentials(tmp_path: object) -> None:
    base = [sys.executable, "-m", "sluice_store", "--db", f"sqlite:///{tmp_path}/p.db"]
    proc = await asyncio.create_subprocess_exec(
        *base, "--addr", "0.0.0.0:0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode != 0 and b"--insecure" in err and b"--tokens-file" in err
    proc = await asyncio.create_subprocess_exec(
        *base, "--addr", "0.0.0.0:0", "--insecure", "true", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
    proc.terminate()
    await proc.wait()
    assert b"listening on 0.0.0.0:" in line


async def test_refusals_and_changes_are_audited_as_json_without_secrets(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup
) -> None:
    store = await secure_store()
    async with Client(store.addr, credentials=setup.creds("orders-app")) as app:
        with pytest.raises(PermissionDenied):
            await app.delete_stream("orders-1")
    async with Client(store.addr, credentials=setup.creds("root")) as root:
        await root.append("orders-9", [new_event("E")])
        await root.set_retention("orders-9", max_count=3)
    async with Client(
        store.addr, credentials=Credentials(ca_file=str(setup.ca_file), token="wrong-token-4d2f")
    ) as bad:
        with pytest.raises(Unauthenticated):
            await bad.append("orders-1", [new_event("E")])
    assert store.log is not None

    def audit() -> list[dict[str, object]]:
        lines = store.log.read_text().splitlines() if store.log else []
        return [json.loads(line.split("sluice.audit: ", 1)[1]) for line in lines if "sluice.audit: " in line]

    async with asyncio.timeout(WAIT):
        while len(audit()) < 3:  # noqa: ASYNC110 (the log file is the only signal)
            await asyncio.sleep(0.05)
    records = audit()
    refused = [r for r in records if r["event"] == "refused"]
    assert {"principal": "orders-app", "action": "delete", "resource": "stream orders-1"}.items() <= refused[
        0
    ].items()
    assert any(r["action"] == "authenticate" and r.get("peer") for r in refused)
    changed = [r for r in records if r["event"] == "changed"]
    assert changed and changed[0]["principal"] == "root" and changed[0]["action"] == "retention"
    text = store.log.read_text()
    assert all(token not in text for token in (*TOKENS.values(), "wrong-token-4d2f"))


async def test_the_served_certificate_expiry_is_a_metric(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup
) -> None:
    from tests.ports import reserve_port
    from tests.store.test_metrics import scrape, value

    port = reserve_port()
    await secure_store(False, "--metrics-addr", f"127.0.0.1:{port}")
    seconds = value(await scrape(port), "sluice_store_tls_certificate_expiry_seconds")
    assert seconds > 30 * 86400  # trustme certificates last for years; without TLS it would be -1


async def test_a_refused_credential_is_reported_as_such_on_the_shared_append_session(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup
) -> None:
    """The store ends a refused session at once, which can race the client's first write;
    grpc.aio then reports INTERNAL instead of the store's status (grpc/grpc#36066). Every
    one of these appends must still say UNAUTHENTICATED."""
    store = await secure_store()
    bad = Credentials(ca_file=str(setup.ca_file), token="not-a-token-7c1e")
    seen: list[str] = []
    for _ in range(30):
        async with Client(store.addr, credentials=bad) as c:
            for i in range(8):  # each after a refusal opens a new session: 240 races in all
                try:
                    await c.append(f"orders-{i}", [new_event("E")])
                except Exception as e:  # which exception it is, is what is checked
                    seen.append(type(e).__name__)
    assert seen == ["Unauthenticated"] * 240
