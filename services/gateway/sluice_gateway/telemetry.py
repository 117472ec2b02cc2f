"""Gateway metrics (OpenTelemetry, scraped by Prometheus at /metrics) and fan-out spans.

Metrics read the hub's counters when scraped, so the fan-out pays nothing per event for
them. With tracing on (the standard ``OTEL_*`` variables), each event that carries a
``traceparent`` gets a span, child of its producer's, recording how many subscribers it
was fanned out to.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from opentelemetry import metrics, propagate, trace

from sluice import telemetry
from sluice.v1 import streams_pb2 as pb
from sluice_gateway.hub import Hub
from sluice_gateway.wire import Record

# Hub counters exported as metrics: (attribute and metric name, unit, description).
COUNTERS = (
    ("deliveries", "{event}", "events queued for subscribers, counted once per subscriber"),
    ("drops", "{event}", "events skipped for slow subscribers (drop policy) and expired messages"),
    ("catch_ups", "{subscriber}", "times a slow subscriber was moved back to catch-up from the store"),
    ("disconnects", "{subscriber}", "slow subscribers disconnected (disconnect policy)"),
)


class Telemetry:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.tracing = telemetry.tracing_enabled()
        if self.tracing:
            telemetry.setup_tracing("sluice-gateway")
        self.tracer = trace.get_tracer("sluice.gateway")
        meter = telemetry.meter_provider("sluice-gateway").get_meter("sluice.gateway")
        self.meter = meter
        meter.create_observable_gauge(
            "sluice.gateway.subscribers", [self._gauge("subscribers")], unit="{subscriber}"
        )
        for name, unit, description in COUNTERS:
            meter.create_observable_counter(
                f"sluice.gateway.{name}", [self._gauge(name)], unit=unit, description=description
            )
        meter.create_observable_gauge("sluice.gateway.position", [self._gauge("position")], unit="{position}")
        meter.create_observable_gauge(
            "sluice.gateway.queued",
            [lambda _: [metrics.Observation(hub.queued())]],
            unit="{event}",
            description="events waiting in subscribers' queues",
        )
        self.fan_out_seconds = meter.create_histogram(
            "sluice.gateway.fan_out.latency",
            unit="s",
            description="from the store's commit of a batch's newest event to its dispatch here",
        )

    def _gauge(self, attr: str) -> metrics.CallbackT:
        def observe(_: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
            yield metrics.Observation(getattr(self.hub, attr))

        return observe

    def on_batch(self, records: list[Record]) -> None:
        """The batch's latency since the store committed it, and a span per traced event of
        it, child of the producer's span."""
        newest = records[-1].event if records else None
        if isinstance(newest, pb.RecordedEvent):
            self.fan_out_seconds.record(max(0.0, time.time() - newest.created.ToMicroseconds() / 1e6))
        if not self.tracing:
            return
        subscribers = self.hub.subscribers
        for r in records:
            ev = r.event
            if not isinstance(ev, pb.RecordedEvent) or "traceparent" not in ev.metadata:
                continue
            parent = propagate.extract(dict(ev.metadata))
            span = self.tracer.start_span(
                f"fan-out {ev.type}",
                context=parent,
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "sluice",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": ev.stream,
                    "messaging.message.id": ev.id,
                    "sluice.position": ev.position,
                    "sluice.gateway.subscribers": subscribers,
                },
            )
            span.end()
