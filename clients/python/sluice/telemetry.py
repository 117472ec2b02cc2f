"""OpenTelemetry wiring shared by the client and the services.

Tracing is on when the standard variables ask for it (``OTEL_TRACES_EXPORTER`` other
than ``none``, or an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``); otherwise nothing is
installed and the hot paths pay nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import context, propagate, trace


def tracing_enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "")
    if exporter:
        return exporter.lower() != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, if one is recording."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def inject(metadata: MutableMapping[str, str]) -> None:
    """Put the current trace context into an event's metadata unless it has one.

    Costs one context look-up when nothing is attached to the context (the common case
    without tracing: a new event pays it).
    """
    if not context.get_current():  # no span, no baggage: nothing to carry
        return
    if "traceparent" in metadata or not trace.get_current_span().get_span_context().is_valid:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if "traceparent" in carrier:
        metadata["traceparent"] = carrier["traceparent"]


def setup_tracing(service_name: str) -> None:
    """Install an SDK tracer provider exporting as the OTEL_* variables say (needs the SDK)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


_meters: dict[str, Any] = {}


def meter_provider(service: str) -> Any:
    """The process's metrics provider (one per process): read by Prometheus through
    prometheus_client's registry (each server's /metrics), and pushed over OTLP when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its metrics variant) is set. The exporters come with
    the servers' packages, not with the client."""
    if service not in _meters:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource

        readers: list[Any] = [PrometheusMetricReader()]
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
        ):
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        from opentelemetry.sdk.metrics import Histogram
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

        # Durations in seconds get buckets in seconds: the SDK's default boundaries (0, 5,
        # 10, 25, ... meant for milliseconds) put every sub-second sample in one bucket, and
        # histogram_quantile over them says nothing.
        seconds = View(
            instrument_type=Histogram,
            instrument_unit="s",
            aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS),
        )
        _meters[service] = MeterProvider(
            metric_readers=readers, resource=Resource.create({"service.name": service}), views=[seconds]
        )
    return _meters[service]


#: Histogram boundaries for durations, from 100 µs to a minute.
SECONDS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


async def watch_event_loop(meter: Any, interval: float = 0.1) -> None:
    """Record how late the event loop wakes (``sluice.event_loop.lag``, seconds): a sleep of
    ``interval`` that takes longer means every callback waited that much more for the loop
    (a long handler, a pause to collect garbage, a blocking call). Run as a task."""
    import asyncio

    lag = meter.create_histogram(
        "sluice.event_loop.lag", unit="s", description="how much later than asked the event loop woke"
    )
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(interval)
        lag.record(max(0.0, loop.time() - asked - interval))
