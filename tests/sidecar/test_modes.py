"""Delivery modes besides single HTTP push, and publishing through the sidecar."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp
import grpc
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cloudevents.core.formats.json import JSONFormat
from opentelemetry.sdk.trace import TracerProvider

from sluice import Client, cloudevent, new_event
from sluice.errors import WrongExpectedRevision, from_rpc_error
from sluice.httpserver import MAX_BODY_BYTES
from sluice.v1 import sidecar_pb2 as spb
from sluice.v1 import sidecar_pb2_grpc as spb_grpc
from sluice.v1 import streams_pb2 as pb
from tests.conftest import StoreProcess, closed_by_server, console_spans, eventually, slow_clients
from tests.sidecar.conftest import WAIT, App, Sidecar
from tests.sidecar.test_mesh import in_order_per_stream, produce


async def test_pushes_are_cloudevents_the_sdk_reads_in_both_modes(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    async with Client(store_proc.addr) as c:
        placed = new_event("Placed", {"n": 1}, metadata={"tenant": "t1"})
        await c.append("orders-a b", [placed])  # one event: binary mode
        batch = [new_event("Placed", {"n": n}) for n in range(5)]
        await c.append("orders-many", batch)  # waiting: a batch
    sc = sidecars("ce0", "--batch", "10")
    await sc.start()
    await app.wait(lambda: app.acked_ids() >= {placed.id, *(e.id for e in batch)})
    seen: dict[str, object] = {}
    for headers, body in app.raw:
        if headers["Content-Type"] == cloudevent.BATCH_CONTENT_TYPE:
            for member in json.loads(body):
                seen[member["id"]] = JSONFormat().read(None, json.dumps(member).encode())
        else:
            seen[headers["ce-id"]] = from_http_event(HTTPMessage(headers=headers, body=body))
    for ev, stream in [(placed, "orders-a b"), *((e, "orders-many") for e in batch)]:
        ce = seen[ev.id]
        assert ce.get_source() == "/streams/" + quote(stream, safe="")  # type: ignore[attr-defined]
        assert ce.get_subject() == stream and ce.get_type() == "Placed"  # type: ignore[attr-defined]
        ext = ce.get_attributes()  # type: ignore[attr-defined]
        assert str(ext["sluicegroup"]) == "app" and int(ext["sluiceattempt"]) == 1
    assert json.loads(seen[placed.id].get_attributes()["sluicemetadata"]) == {"tenant": "t1"}  # type: ignore[attr-defined]


async def test_batched_push_keeps_order(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    ids = await produce(store_proc, streams=3, per_stream=40)  # waiting before the sidecar starts
    sc = sidecars("b0", "--batch", "25")
    await sc.start()
    await app.wait(lambda: app.acked_ids() >= set(ids))
    assert len(app.received) == len(ids)
    assert max(app.batches) > 1  # events really travelled together
    assert in_order_per_stream(app.received)


class Callback(spb_grpc.AppCallbackServicer):
    """An app in gRPC callback mode: asks for one retry of every event, then acks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.done: asyncio.Queue[str] = asyncio.Queue()

    async def Deliver(self, request: spb.Delivery, context: grpc.aio.ServicerContext) -> spb.DeliveryResult:
        self.calls.append((request.event.id, request.attempt))
        if request.attempt == 1:
            result = spb.DeliveryResult(outcome=spb.RETRY)
            result.retry_after.FromMilliseconds(10)
            return result
        await self.done.put(request.event.id)
        return spb.DeliveryResult(outcome=spb.ACK)


async def test_grpc_callback_mode(store_proc: StoreProcess, sidecars: Callable[..., Sidecar]) -> None:
    server = grpc.aio.server()
    callback = Callback()
    spb_grpc.add_AppCallbackServicer_to_server(callback, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        sc = sidecars("cb0", "--delivery", "grpc", "--app-grpc", f"127.0.0.1:{port}")
        await sc.start()
        ids = await produce(store_proc, streams=4, per_stream=2)
        done = {await asyncio.wait_for(callback.done.get(), WAIT) for _ in ids}
        assert done == set(ids)
        assert sorted(callback.calls) == sorted([(i, 1) for i in ids] + [(i, 2) for i in ids])
    finally:
        await server.stop(0)


class Refusing(spb_grpc.AppCallbackServicer):
    """An app in gRPC callback mode that gives up on events in every way it can."""

    async def Deliver(self, request: spb.Delivery, context: grpc.aio.ServicerContext) -> spb.DeliveryResult:
        kind = request.event.type
        if kind == "Refused":
            return spb.DeliveryResult(outcome=spb.DEAD_LETTER, reason="unknown sku 42")
        if kind == "Silent":
            return spb.DeliveryResult(outcome=spb.DEAD_LETTER)
        if kind == "Flaky":
            result = spb.DeliveryResult(outcome=spb.RETRY, reason="warehouse down")
            result.retry_after.FromMilliseconds(10)
            return result
        await context.abort(grpc.StatusCode.INTERNAL, "db exploded")
        raise AssertionError("abort raises")


async def test_grpc_callback_reasons_and_attempts_reach_the_dead_letters(
    store_proc: StoreProcess, sidecars: Callable[..., Sidecar]
) -> None:
    server = grpc.aio.server()
    spb_grpc.add_AppCallbackServicer_to_server(Refusing(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        sc = sidecars("cb1", "--delivery", "grpc", "--app-grpc", f"127.0.0.1:{port}", "--max-attempts", "3")
        await sc.start()
        kinds = ["Refused", "Silent", "Flaky", "Broken"]
        async with Client(store_proc.addr) as c:
            for n, kind in enumerate(kinds):
                await c.append(f"orders-{n}", [new_event(kind, {"n": n})])

            async def all_dead() -> bool:
                return (await c.stream_info("$dlq.app")).event_count == len(kinds)

            await eventually(all_dead, timeout=WAIT)
            dead = {e.type: e.metadata for e in await c.read_list("$dlq.app")}
    finally:
        await server.stop(0)
    assert dead["Refused"]["dlq-reason"] == "unknown sku 42" and dead["Refused"]["dlq-attempts"] == "1"
    assert dead["Silent"]["dlq-attempts"] == "1"
    assert "DEAD_LETTER" in dead["Silent"]["dlq-reason"] and "no reason" in dead["Silent"]["dlq-reason"]
    assert dead["Flaky"]["dlq-attempts"] == "3" and "warehouse down" in dead["Flaky"]["dlq-reason"]
    assert dead["Broken"]["dlq-attempts"] == "3"
    assert "INTERNAL" in dead["Broken"]["dlq-reason"] and "db exploded" in dead["Broken"]["dlq-reason"]
    assert all(md["dlq-group"] == "app" for md in dead.values())


async def test_publish_through_the_sidecar(
    store_proc: StoreProcess, sidecars: Callable[..., Sidecar]
) -> None:
    sc = sidecars("pub0")
    await sc.start()
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"http://{sc.http}/v1/publish/orders-pub",
            data=b'{"total": 12}',
            headers={
                "ce-type": "OrderPlaced",
                "content-type": "application/json",
                "traceparent": trace,
                "sluice-meta-tenant": "t1",
                "sluice-meta-source-member": "someone-else",  # identity is the sidecar's to stamp
            },
        )
        assert resp.status == 200
        assert int((await resp.json())["first_position"]) >= 1
        bad = await http.post(f"http://{sc.http}/v1/publish/$nope", data=b"x", headers={"ce-type": "T"})
        assert bad.status == 400 and (await bad.json())["reason"] == "SYSTEM_STREAM_RESERVED"
        # Structured mode: the body is the CloudEvent; a batch is appended in one request.
        shipped = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/shop", "type": "OrderShipped",
                   "data": {"carrier": "x"}, "partitionkey": "k1"}  # fmt: skip
        one = await http.post(
            f"http://{sc.http}/v1/publish/orders-pub",
            data=json.dumps(shipped),
            headers={"content-type": "application/cloudevents+json", "sluice-meta-tenant": "t2"},
        )
        assert one.status == 200, await one.text()
        batch = [
            {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/s", "type": f"Tick{i}"}
            for i in range(3)
        ]
        many = await http.post(
            f"http://{sc.http}/v1/publish/ticks-pub",
            data=json.dumps(batch),
            headers={"content-type": "application/cloudevents-batch+json"},
        )
        answer = await many.json()
        assert many.status == 200 and (int(answer["first_revision"]), int(answer["last_revision"])) == (0, 2)
        # A batch over aiohttp's default body limit (1 MiB) is taken; one over the sidecar's is a 413.
        bulky = [
            {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/s", "type": "Bulk",
             "data": "x" * 500_000}
            for _ in range(3)
        ]  # fmt: skip
        taken = await http.post(
            f"http://{sc.http}/v1/publish/bulk-pub",
            data=io.BytesIO(json.dumps(bulky).encode()),
            headers={"content-type": "application/cloudevents-batch+json"},
        )
        assert taken.status == 200, await taken.text()
        assert int((await taken.json())["last_revision"]) == 2
        over = await http.post(
            f"http://{sc.http}/v1/publish/bulk-pub",
            data=io.BytesIO(b" " * (MAX_BODY_BYTES + 1)),
            headers={"ce-type": "T"},
        )
        assert over.status == 413 and (await over.json())["details"]["limit"] == "max_body_bytes"
        for method, path, status in (("GET", "/v1/publish/orders-pub", 405), ("POST", "/v1/nowhere", 404)):
            async with http.request(method, f"http://{sc.http}{path}") as r:  # JSON, as every refusal
                assert r.status == status and r.content_type == "application/json", (path, await r.text())
                assert (await r.json())["reason"] in ("UNIMPLEMENTED", "NOT_FOUND")
        garbled = await http.post(
            f"http://{sc.http}/v1/publish/orders-pub",
            data=b"{not json",
            headers={"content-type": "application/cloudevents+json", "ce-type": "T"},
        )
        assert garbled.status == 400 and (await garbled.json())["details"] == {"field": "body"}
    async with grpc.aio.insecure_channel(sc.grpc) as ch:
        await spb_grpc.SidecarStub(ch).Publish(
            pb.AppendRequest(
                stream="orders-pub", events=[new_event("OrderPaid", metadata={"source-app": "forged"})]
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as dlq:
            await spb_grpc.SidecarStub(ch).Publish(
                pb.AppendRequest(stream="$dlq.app", events=[new_event("Forged")])
            )
        assert dlq.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Refusals keep their details (ErrorInfo, BadRequest) on the way through, the
        # sidecar's own and the store's alike: clients branch on them, not on the text.
        refused = from_rpc_error(dlq.value)
        assert refused.reason == "SYSTEM_STREAM_RESERVED" and refused.metadata["field"] == "stream"
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await spb_grpc.SidecarStub(ch).Publish(
                pb.AppendRequest(
                    stream="orders-pub", events=[new_event("Late")], expected=pb.ExpectedRevision(revision=7)
                )
            )
        conflict = from_rpc_error(late.value)
        assert isinstance(conflict, WrongExpectedRevision), conflict
        assert (conflict.stream, conflict.expected, conflict.actual) == ("orders-pub", "7", "2")
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await spb_grpc.SidecarStub(ch).Publish(pb.AppendRequest(stream="", events=[new_event("E")]))
        assert from_rpc_error(empty.value).metadata["field"] == "stream"
    async with Client(store_proc.addr) as c:
        placed, shipped_ev, paid = await c.read_list("orders-pub")
        ticks = await c.read_list("ticks-pub")
    assert [t.type for t in ticks] == ["Tick0", "Tick1", "Tick2"] and ticks[0].id == batch[0]["id"]
    assert shipped_ev.type == "OrderShipped" and shipped_ev.id == shipped["id"]
    assert json.loads(shipped_ev.data) == {"carrier": "x"} and shipped_ev.content_type == "application/json"
    assert shipped_ev.metadata["partitionkey"] == "k1" and shipped_ev.metadata["tenant"] == "t2"
    assert shipped_ev.metadata["source-member"] == "pub0"
    assert placed.type == "OrderPlaced" and json.loads(placed.data) == {"total": 12}
    assert placed.metadata["traceparent"] == trace and placed.metadata["tenant"] == "t1"
    assert placed.metadata["source-app"] == "app" and placed.metadata["source-member"] == "pub0"
    assert paid.metadata["source-member"] == "pub0" and paid.metadata["source-app"] == "app"


async def test_delivery_span_continues_the_producers_trace(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "sidecar-under-test"}
    sc = sidecars("o0", env=env)
    await sc.start()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # the producer's client propagates
    tracer = TracerProvider().get_tracer("producer")
    with tracer.start_as_current_span("checkout") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        producer_span = format(span.get_span_context().span_id, "016x")
        async with Client(store_proc.addr) as c:
            ev = new_event("Placed", {"n": 1})
            await c.append("orders-traced", [ev])
    await app.wait(lambda: ev.id in app.acked_ids())
    _, tid, parent, _ = app.traceparents[ev.id].split("-")
    assert tid == trace_id and parent != producer_span  # the app's parent is the delivery span
    sc.signal(signal.SIGTERM)
    assert sc.proc is not None and sc.proc.stdout is not None
    out = (await asyncio.wait_for(sc.proc.stdout.read(), WAIT)).decode()
    await sc.wait()
    spans = [s for s in console_spans(out) if s["name"] == "deliver Placed"]
    assert spans and spans[0]["context"]["trace_id"] == "0x" + trace_id
    assert spans[0]["context"]["span_id"] == "0x" + parent
    assert spans[0]["parent_id"] == "0x" + producer_span
    assert spans[0]["kind"] == "SpanKind.CONSUMER"


@pytest.mark.parametrize("setting", ["--http-addr", "--grpc-addr"])
async def test_a_taken_port_fails_fast_and_names_the_setting(
    store_proc: StoreProcess, sidecars: Callable[..., Sidecar], setting: str, tmp_path: Path
) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        sc = sidecars("clash", setting, f"127.0.0.1:{port}")
        with pytest.raises(RuntimeError, match="exited before"):
            await sc.start()
        assert await sc.wait() == 1
    log = (tmp_path / "sidecar-clash.log").read_text()
    assert f"{setting[2:].replace('-', '_')}: cannot listen on 127.0.0.1:{port}" in log
    assert "Traceback" not in log


async def test_half_sent_requests_are_closed_and_connections_are_capped(
    store_proc: StoreProcess, sidecars: Callable[..., Sidecar]
) -> None:
    sc = sidecars("slow0", "--http-idle-timeout", "1s", "--http-max-connections", "4")
    await sc.start()
    conns = await slow_clients(sc.http, 6)
    assert all(await asyncio.wait_for(asyncio.gather(*(closed_by_server(r) for r, _ in conns)), 20))
    for _, w in conns:
        w.close()
    assert (await sc.get("/readyz"))["ready"]


async def test_probes_have_a_listener_of_their_own_that_answers_health_alone(
    sidecars: Callable[..., Sidecar],
) -> None:
    sc = sidecars("probed", "--probe-addr", "127.0.0.1:0")
    await sc.start()
    assert sc.probes and sc.probes != sc.http
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(f"http://{sc.probes}{path}") as r:
                assert r.status == 200, path
        for method, path in (("POST", "/v1/publish/orders-1"), ("GET", "/v1/status")):
            headers = {"ce-type": "Placed"}
            async with http.request(method, f"http://{sc.probes}{path}", data=b"x", headers=headers) as r:
                assert r.status == 404, path  # the API is not on the probe listener
            async with http.request(method, f"http://{sc.http}{path}", data=b"x", headers=headers) as r:
                assert r.status == 200, path  # it is on the local one


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SLUICE_GROUP": "g", "SLUICE_APP_URL": "http://127.0.0.1:/events"}, "sluice.dev/app-port"),
        ({"SLUICE_GROUP": "g", "SLUICE_APP_URL": "http://127.0.0.1:80x/events"}, "sluice.dev/app-port"),
        ({"SLUICE_GROUP": ""}, "sluice.dev/group"),
    ],
)
async def test_a_missing_or_malformed_annotation_stops_the_sidecar_at_start(
    env: dict[str, str], named: str
) -> None:
    """As the downward API fills them when a pod annotation is missing: an empty value."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice_sidecar", env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode != 0 and named in err.decode() and "configuration error" in err.decode()


@pytest.mark.parametrize(
    ("flags", "named"), [(("--lease", "2h"), "--lease"), (("--max-backoff", "400d"), "--max-backoff")]
)
async def test_group_settings_the_store_refuses_stop_the_sidecar_in_one_line(
    store_proc: StoreProcess, flags: tuple[str, str], named: str
) -> None:
    """Its own group, made from its flags: a setting the store refuses is the sidecar's
    configuration error, said once (no traceback), and nothing is left behind."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice_sidecar", "--store", store_proc.addr, "--group", "refused",
        "--app-url", "http://127.0.0.1:9/events", "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0",
        *flags, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    text = err.decode()
    assert proc.returncode == 1 and "configuration error" in text and named in text, text
    assert "Traceback" not in text and "Exception ignored" not in text and "WARNING" not in text, text
    async with Client(store_proc.addr) as c:
        assert "refused" not in [g.group for g in await c.list_groups()]


async def test_metrics_count_deliveries_and_dead_letters(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    from tests.store.test_metrics import value

    sc = sidecars("m0", "--max-attempts", "2", "--probe-addr", "127.0.0.1:0")
    await sc.start()
    app.poison.add("Poison")
    ids = await produce(store_proc, streams=3, per_stream=4)
    async with Client(store_proc.addr) as c:
        await c.append("orders-9", [new_event("Poison", {})])

        async def dead_lettered() -> bool:
            return (await c.stream_info("$dlq.app")).event_count == 1

        await eventually(dead_lettered, timeout=WAIT)
    await app.wait(lambda: app.acked_ids() >= set(ids))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{sc.http}/metrics") as r:
            text = await r.text()
        async with http.get(f"http://{sc.probes}/metrics") as r:
            assert r.status == 200  # where Prometheus reaches the pod
    assert value(text, "sluice_sidecar_delivered_total", group="app") == len(ids)
    assert value(text, "sluice_sidecar_dead_lettered_total", group="app") == 1
    assert value(text, "sluice_sidecar_retried_total", group="app") >= 1
    assert value(text, "sluice_sidecar_delivery_duration_seconds_count", group="app") >= len(ids)
