"""OpenTelemetry: server spans per RPC, client context propagation, traceparent in events."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from sluice import Client, new_event
from sluice.telemetry import tracing_enabled
from tests.conftest import console_spans
from tests.ports import announced


def test_tracing_follows_the_standard_variables() -> None:
    assert not tracing_enabled({})
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert tracing_enabled({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_enabled({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
    assert not tracing_enabled({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})


async def test_trace_travels_from_producer_through_store_into_event_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "store-under-test"}
    proc = await asyncio.create_subprocess_exec(
        *(
            sys.executable,
            "-m",
            "sluice_store",
            "--addr",
            "127.0.0.1:0",
            "--db",
            f"sqlite:///{tmp_path}/t.db",
        ),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        addr = (await announced(proc.stdout, r"listening on (\S+)")).group(1)

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    provider = TracerProvider()  # spans of this producer stay in memory; only ids matter
    tracer = provider.get_tracer("producer")
    with tracer.start_as_current_span("place-order") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        async with Client(addr) as c:
            await c.append("traced", [new_event("Placed", {"n": 1})])
            await c.append("traced", [new_event("Placed", {"n": 2}, metadata={"traceparent": "kept"})])
    async with Client(addr) as c:
        first, second = await c.read_list("traced")
    assert first.metadata["traceparent"].split("-")[1] == trace_id
    assert second.metadata["traceparent"] == "kept"  # the producer's own context wins

    proc.terminate()
    out = (await asyncio.wait_for(proc.stdout.read(), 20)).decode()
    await proc.wait()
    spans = console_spans(out)
    appends = [s for s in spans if s["name"] == "/sluice.v1.Streams/Append"]
    assert appends, f"no Append server span in {[s['name'] for s in spans]}"
    assert any(s["context"]["trace_id"] == "0x" + trace_id for s in appends)
    assert all(s["resource"]["attributes"]["service.name"] == "store-under-test" for s in spans)
    assert trace.get_current_span().get_span_context().is_valid is False
