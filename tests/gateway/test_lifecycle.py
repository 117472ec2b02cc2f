"""Gateway lifecycle and edges: retention gaps, store restarts, SSE, shared ports, traces, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cloudevents.core.formats.json import JSONFormat
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice import Client, new_event
from sluice.gateway import Cursor, GatewayClient
from sluice.v1 import gateway_pb2 as gwpb
from sluice.v1 import streams_pb2 as pb
from tests.conftest import StoreProcess, closed_by_server, console_spans, eventually, slow_clients
from tests.gateway.conftest import GatewayProcess, Gateways, next_item, spread_watches
from tests.gateway.test_fanout import collect, produce
from tests.secure_mode import SECURE, grpc_channel, http_session


async def test_resume_from_a_position_removed_by_retention_is_told_so(
    gw: GatewayClient, store_client: Client
) -> None:
    kept = await store_client.append("keep", [new_event("K", b"k")])
    trimmed = [await store_client.append("trim", [new_event("T", bytes([i]))]) for i in range(5)]
    await store_client.set_retention("trim", max_count=2)
    newest_removed = trimmed[2].first_position

    for prefixes in (["trim"], []):
        events, other, _ = await collect(gw, trimmed[-1].last_position, start=1, stream_prefixes=prefixes)
        # One gap; heartbeats (every 0.1 s here) may come before it on a slow machine.
        (gap,) = [o for o in other if isinstance(o, gwpb.Gap)]
        assert gap.reason == gwpb.Gap.REASON_REMOVED_BY_RETENTION
        assert (gap.from_position, gap.to_position) == (1, newest_removed + 1)
        still = [t.first_position for t in trimmed[3:]]
        assert [e.position for e in events] == ([] if prefixes else [kept.first_position]) + still
    # Resuming above the removed events is whole: no gap.
    _, other, _ = await collect(gw, trimmed[-1].last_position, start=newest_removed + 1)
    assert not any(isinstance(o, gwpb.Gap) for o in other)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_is(gateway: GatewayProcess, service: str, status: int) -> bool:
    async with grpc_channel(gateway.addr) as ch:
        got = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service))
    return bool(got.status == status)


async def test_store_restart_the_gateway_reconnects_and_subscribers_continue_without_a_gap(
    gateway: GatewayProcess, gw: GatewayClient, store_proc: StoreProcess, store_client: Client
) -> None:
    before = await produce(store_client, 100, seed=11)
    start = before[0].position
    done: list[int] = []
    watchers = [
        asyncio.create_task(collect(gw, lambda: done[-1] if done else 0, start=start, timeout=60, **f))
        for f in ({}, {"stream_prefixes": ["order"]}, {"event_types": ["Created"]})
    ]
    assert store_proc.proc is not None
    store_proc.proc.kill()  # kill -9: no goodbye to the gateway
    await store_proc.proc.wait()
    # Without its feed the gateway is alive ("") but not ready (the readiness probe's service).
    await eventually(lambda: health_is(gateway, "sluice.v1.Gateway", NOT_SERVING))
    assert await health_is(gateway, "", SERVING)
    again = StoreProcess("")
    again.addr, again.args = store_proc.addr, store_proc.args
    await again.start()
    try:
        await eventually(lambda: health_is(gateway, "sluice.v1.Gateway", SERVING))
        # The producer's channel reconnects on its own backoff (up to 5 s), not the gateway's:
        # until it is connected again an append fails fast with UNAVAILABLE, as it should.
        await store_client.wait_ready(timeout=30)
        after = await produce(store_client, 100, seed=12)
        done.append(after[-1].position)
        results = await asyncio.gather(*watchers)
    finally:
        assert again.proc is not None
        again.proc.kill()
        await again.proc.wait()
    everything = before + after
    for (events, _, _), want in zip(
        results,
        [
            everything,
            [e for e in everything if e.stream.startswith("order")],
            [e for e in everything if e.type == "Created"],
        ],
        strict=True,
    ):
        assert [e.position for e in events] == [e.position for e in want]


async def sse_events(
    resp: aiohttp.ClientResponse, count: int, timeout: float = 20
) -> list[tuple[str, str, dict[str, Any]]]:
    """Read SSE messages (id, event, data) until ``count`` of kind 'event' arrived."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(timeout):
        while sum(1 for _, kind, _ in out if kind == "event") < count:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "data" in fields:
                out.append((fields.get("id", ""), fields.get("event", "message"), json.loads(fields["data"])))
            fields = {}
    return out


async def test_server_sent_events_with_last_event_id_resume(
    gateway: GatewayProcess, store_client: Client
) -> None:
    appended = await produce(store_client, 40, seed=5)
    orders = [e for e in appended if e.stream.startswith("order")]
    url = f"{gateway.http}/v1/watch?prefix=order&position=1"
    async with http_session() as http:
        async with http.get(url) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
            first = await sse_events(resp, 5)
        got = [m for m in first if m[1] == "event"][:5]
        assert [int(i) for i, _, _ in got] == [e.position for e in orders[:5]]
        assert [d["id"] for _, _, d in got] == [e.id for e in orders[:5]]
        assert [d["subject"] for _, _, d in got] == [e.stream for e in orders[:5]]
        assert [d["data_base64"] for _, _, d in got]  # binary data travels as base64
        for (_, _, d), e in zip(got, orders, strict=False):  # CloudEvents, as the SDK reads them
            ce = JSONFormat().read(None, json.dumps(d).encode())
            assert (ce.get_id(), ce.get_source(), ce.get_subject()) == (
                e.id,
                f"/streams/{e.stream}",
                e.stream,
            )
            assert ce.get_extension("sluiceposition") == e.position
        more = await produce(store_client, 20, seed=6)
        orders += [e for e in more if e.stream.startswith("order")]
        # Reconnect as a browser does: the last id it saw, in Last-Event-ID.
        async with http.get(
            f"{gateway.http}/v1/watch?prefix=order&form=notification", headers={"Last-Event-ID": got[-1][0]}
        ) as resp:
            rest = [m for m in await sse_events(resp, len(orders) - 5) if m[1] == "event"]
        assert [int(i) for i, _, _ in rest] == [e.position for e in orders[5:]]
        assert not any("data" in d or "data_base64" in d for _, _, d in rest)  # notifications
        # Refusals name what was wrong, in the JSON API's error shape; a parameter the watch
        # does not take (another API's "from") is refused, not a watch of everything live.
        for query, headers, field in (
            ("form=bogus", {}, "form"),
            ("overflow=later", {}, "overflow"),
            ("position=abc", {}, "position"),
            ("position=-1", {}, "position"),
            ("buffer_size=5000000000", {}, "buffer_size"),
            ("heartbeat=nan", {}, "heartbeat"),
            ("ephemeral=maybe", {}, "ephemeral"),
            ("from=start", {}, "from"),
            ("", {"Last-Event-ID": "x"}, "Last-Event-ID"),
        ):
            async with http.get(f"{gateway.http}/v1/watch?{query}", headers=headers) as resp:
                refusal = await resp.json()
                assert resp.status == 400 and refusal["code"] == "INVALID_ARGUMENT", refusal
                assert refusal["metadata"] == {"field": field}, refusal
                assert refusal["details"][0]["field_violations"][0]["field"] == field
        for body in (b"[1]", b"{not json", b'{"ttl_seconds": "soon"}'):
            async with http.post(f"{gateway.http}/v1/publish", data=body) as resp:
                refusal = await resp.json()
                assert resp.status == 400 and refusal["metadata"] == {"field": "body"}, refusal


async def test_two_gateways_share_one_port(gateways: Gateways, store_client: Client) -> None:
    a = gateways()
    await a.start()
    port = a.port
    b = gateways(port=port)  # SO_REUSEPORT (the default): both listen, the kernel spreads connections
    await b.start()
    clients, _ = await spread_watches(f"127.0.0.1:{port}", store_client, "shared")
    try:
        async with http_session() as http:

            async def spread() -> bool:
                counts = []
                for proc in (a, b):
                    async with http.get(f"{proc.http}/readyz") as r:
                        counts.append((await r.json())["subscribers"])
                return sum(counts) == 20 and min(counts) > 0  # the kernel spread the connections

            # Counted at once, one CI run under TLS saw 21 (13 + 8) with every watch served:
            # one subscriber counted until its process noticed it gone. The count must settle.
            await eventually(spread)
    finally:
        for client in clients:
            await client.close()


async def test_fan_out_span_continues_the_producers_trace(gateways: Gateways, store_client: Client) -> None:
    g = gateways(env={"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50"})
    await g.start()
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with GatewayClient(g.addr) as gc:
        it = gc.watch()
        assert isinstance(await next_item(it), pb.CaughtUp)
        await store_client.append(
            "traced", [new_event("T", b"x", metadata={"traceparent": f"00-{trace_id}-{span_id}-01"})]
        )
        assert isinstance(await next_item(it), pb.RecordedEvent)
        await it.aclose()
    assert await g.stop() == 0
    spans = [s for s in console_spans(g.output.decode()) if s["name"] == "fan-out T"]
    assert spans, g.output.decode()[-2000:]
    assert spans[0]["context"]["trace_id"] == "0x" + trace_id
    assert spans[0]["parent_id"] == "0x" + span_id
    assert spans[0]["attributes"]["sluice.gateway.subscribers"] == 1


async def test_sigterm_ends_watches_and_exits_cleanly(gateway: GatewayProcess, gw: GatewayClient) -> None:
    cursor = Cursor()
    it = gw.watch(cursor=cursor)
    assert isinstance(await asyncio.wait_for(anext(it), 10), pb.CaughtUp)
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)  # one SIGTERM, as Kubernetes sends
    ended = asyncio.create_task(_drain(it))
    assert await gateway.exited() == 0
    await asyncio.wait_for(ended, 10)
    assert b"shutting down" in gateway.output


async def _drain(it: Any) -> None:
    try:
        async for _ in it:
            pass
    except Exception:  # the gateway went away: the watch ends, with a status
        pass


async def test_cli_tails_and_publishes_through_the_gateway(
    gateway: GatewayProcess, store_proc: StoreProcess, store_client: Client
) -> None:
    await store_client.append("cli-1", [new_event("Seen", b'{"n": 1}', content_type="application/json")])
    args = [
        "--json",
        "tail",
        "--gateway",
        gateway.addr,
        "--prefix",
        "cli-",
        "--from",
        "start",  # through the gateway: from position 1, caught up from the store
        "--count",
        "2",
    ]
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sluice.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert tail.stderr is not None
    async with asyncio.timeout(20):
        assert b"caught up" in await tail.stderr.readline()
    await store_client.append("cli-2", [new_event("Later", b"x")])
    out, _ = await asyncio.wait_for(tail.communicate(), 20)
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [(e["stream"], e["type"]) for e in lines] == [("cli-1", "Seen"), ("cli-2", "Later")]
    assert tail.returncode == 0

    publish = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sluice.cli",
        "publish",
        "--gateway",
        gateway.addr,
        "news.x",
        "Flash",
        "hello",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(publish.communicate(), 20)
    assert publish.returncode == 0 and "subscribers" in out.decode()


async def test_publish_on_one_gateway_reaches_subscribers_of_every_gateway_once(
    gateways: Gateways, store_client: Client
) -> None:
    a, b = gateways(), gateways()
    await a.start()
    await b.start()
    async with GatewayClient(a.addr) as ga, GatewayClient(b.addr) as gb:
        on_a, on_b = ga.watch(stream_prefixes=["room."]), gb.watch(stream_prefixes=["room."])
        for it in (on_a, on_b):
            assert isinstance(await next_item(it), pb.CaughtUp)
        resp = await ga.publish("room.1", "Typing", b"bob", ttl=30)
        assert (resp.subscribers, resp.relayed) == (1, 1)
        for it in (on_a, on_b):
            got = await next_item(it)
            assert isinstance(got, pb.EphemeralMessage) and got.id == resp.id and got.data == b"bob"
        # Exactly once on the publishing gateway: the relayed copy is skipped there.
        after = await store_client.append("room.1", [new_event("Said", b"hi")])
        for it in (on_a, on_b):
            nxt = await next_item(it)
            assert isinstance(nxt, pb.RecordedEvent) and nxt.position == after.first_position
        await on_a.aclose()
        await on_b.aclose()


async def test_a_port_held_without_reuse_port_fails_fast_and_names_the_setting(gateways: Gateways) -> None:
    with socket.socket() as held:  # another program's listener: no SO_REUSEPORT
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        grpc_clash = gateways(port=port)
        with pytest.raises(RuntimeError, match=f"addr: cannot listen on 127.0.0.1:{port}"):
            await grpc_clash.start()
        assert await grpc_clash.exited() != 0
        http_clash = gateways(env={"SLUICE_GATEWAY_HTTP_ADDR": f"127.0.0.1:{port}"})
        with pytest.raises(RuntimeError, match=f"http_addr: cannot listen on 127.0.0.1:{port}"):
            await http_clash.start()
        assert await http_clash.exited() != 0


async def test_without_reuse_port_a_second_gateway_on_the_same_port_fails_fast(gateways: Gateways) -> None:
    first = gateways("--reuse-port", "false")
    await first.start()
    second = gateways(port=first.port)  # it asks for SO_REUSEPORT; the first did not
    with pytest.raises(RuntimeError, match=f"addr: cannot listen on 127.0.0.1:{first.port}"):
        await second.start()
    async with GatewayClient(first.addr) as g:  # the first is untouched
        assert isinstance(await asyncio.wait_for(anext(g.watch()), 10), pb.CaughtUp)


@pytest.mark.skipif(SECURE, reason="speaks plaintext HTTP/1.1 bytes to the listener")
async def test_half_sent_requests_are_closed_and_connections_are_capped(gateways: Gateways) -> None:
    g = gateways(env={"SLUICE_HTTP_IDLE_TIMEOUT": "1s", "SLUICE_HTTP_MAX_CONNECTIONS": "4"})
    await g.start()
    host_port = g.http.removeprefix("http://")
    conns = await slow_clients(host_port, 6)
    # Over the cap: closed at once; the rest after the idle timeout, not held forever.
    closed = await asyncio.wait_for(asyncio.gather(*(closed_by_server(r) for r, _ in conns)), 20)
    assert all(closed)
    for _, w in conns:
        w.close()
    async with http_session() as http, http.get(f"{g.http}/healthz") as r:
        assert r.status == 200  # and the gateway serves as before


@pytest.mark.skipif(SECURE, reason="speaks plaintext HTTP/1.1 bytes to the listener")
async def test_subscribers_gone_before_their_first_message_leave_the_hub(
    spawn: Callable[..., StoreProcess],
) -> None:
    store = spawn()  # its address is known; it starts later
    g = GatewayProcess(store.addr)
    await g.start(wait_ready=False)
    try:
        host, port = g.http.removeprefix("http://").rsplit(":", 1)
        # Ten watches wait for the gateway's first contact with the store, and go.
        for _ in range(10):
            r, w = await asyncio.open_connection(host, int(port))
            w.write(f"GET /v1/watch HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await asyncio.wait_for(r.readuntil(b"retry: 1000\n\n"), 20)  # the session waits
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.close()  # a reset, as a client that crashed leaves: the gateway's next write fails
            await w.wait_closed()
        # One that stays, opened last: the store comes, the waiting sessions go on in order,
        # and once this one has its first message the ten have been registered.
        async with http_session() as http, http.get(f"{g.http}/v1/watch?heartbeat=0.2") as live:
            await store.start()
            async with asyncio.timeout(20):
                while b"caught_up" not in await live.content.readline():
                    pass

            async def only_the_live_one() -> bool:
                async with http.get(f"{g.http}/readyz") as r:
                    return bool((await r.json())["subscribers"] == 1)

            await eventually(only_the_live_one)
    finally:
        await g.stop()


async def test_a_store_replaced_by_an_empty_one_is_followed_from_its_beginning(
    gateway: GatewayProcess, gw: GatewayClient, store_proc: StoreProcess, tmp_path: Path
) -> None:
    watch = gw.watch(stream_prefixes=["x-"])
    assert isinstance(await asyncio.wait_for(anext(watch), 10), pb.CaughtUp)
    async with Client(store_proc.addr) as c:
        old = [await c.append(f"x-{i % 3}", [new_event("Old", b"")]) for i in range(30)]
    for r in old:
        got = await asyncio.wait_for(anext(watch), 10)
        assert isinstance(got, pb.RecordedEvent) and got.position == r.first_position
    assert store_proc.proc is not None
    store_proc.proc.kill()  # the store and its data are gone; an empty one takes its address
    await store_proc.proc.wait()
    empty = StoreProcess(f"sqlite:///{tmp_path}/empty.db")
    empty.addr = store_proc.addr
    empty.args[empty.args.index("--addr") + 1] = store_proc.addr
    await empty.start()
    try:
        await eventually(lambda: health_is(gateway, "sluice.v1.Gateway", SERVING))
        async with Client(empty.addr) as c:
            new = [await c.append("x-new", [new_event("New", bytes([i]))]) for i in range(3)]
        assert [r.first_position for r in new] == [1, 2, 3]  # positions start again
        for r in new:  # ... and the gateway follows them instead of waiting to pass 30
            got = await asyncio.wait_for(anext(watch), 20)
            while not isinstance(got, pb.RecordedEvent):
                got = await asyncio.wait_for(anext(watch), 20)
            assert got.type == "New" and got.position == r.first_position
    finally:
        await watch.aclose()
        assert empty.proc is not None
        empty.proc.kill()
        await empty.proc.wait()
