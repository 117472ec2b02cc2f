"""OpenTelemetry for the sidecar: a delivery span per event, and delivery metrics.

A delivery span continues the producer's trace from the event's ``traceparent``
metadata, and its own context travels to the app (the ``traceparent`` header in HTTP
push). Metrics: deliveries, retries, dead letters, delivery duration, in-flight
deliveries and lag per partition, scraped at /metrics and pushed over OTLP when
configured. Traces follow the standard ``OTEL_*`` variables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

from opentelemetry import context, metrics, propagate, trace

from sluice import telemetry
from sluice.v1 import sidecar_pb2 as spb
from sluice.v1 import streams_pb2 as pb

_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


class Telemetry:
    def __init__(self, group: str, status: Callable[[], spb.SidecarStatus]) -> None:
        self.group = group
        self.status = status  # the member's status, read for the lag gauge
        self.tracing = telemetry.tracing_enabled()
        if self.tracing:
            telemetry.setup_tracing("sluice-sidecar")
        self.tracer = trace.get_tracer("sluice.sidecar")
        meter = telemetry.meter_provider("sluice-sidecar").get_meter("sluice.sidecar")
        #: The attributes of every series of this member's metrics.
        self.attributes = {"group": group}
        # Deliveries are the hot path: read from the member's own tally when scraped, not
        # added to an SDK counter once per event (several microseconds each).
        meter.create_observable_counter(
            "sluice.sidecar.delivered", callbacks=[self._delivered], unit="{event}"
        )
        self.retried = meter.create_counter("sluice.sidecar.retried", unit="{event}")
        self.dead_lettered = meter.create_counter("sluice.sidecar.dead_lettered", unit="{event}")
        self.delivery_seconds = meter.create_histogram(
            "sluice.sidecar.delivery.duration",
            unit="s",
            description="one delivery to the app, answer included",
        )
        meter.create_observable_gauge("sluice.sidecar.lag", callbacks=[self._lag], unit="{position}")
        meter.create_observable_gauge("sluice.sidecar.in_flight", callbacks=[self._in_flight], unit="{event}")

    def _delivered(self, _: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        yield metrics.Observation(self.status().delivered, self.attributes)

    def _in_flight(self, _: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        yield metrics.Observation(self.status().in_flight, self.attributes)

    def _lag(self, _: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        for p in self.status().partitions:
            yield metrics.Observation(p.lag_positions, {**self.attributes, "partition": p.partition})

    def delivery(
        self, events: Sequence[pb.RecordedEvent], partition: int, attempt: int
    ) -> contextlib.AbstractContextManager[None]:
        """A CONSUMER span around one delivery, child of the first event's producer span
        (nothing at all when tracing is off)."""
        if not self.tracing:
            return _NO_SPAN
        return self._delivery_span(events, partition, attempt)

    @contextlib.contextmanager
    def _delivery_span(
        self, events: Sequence[pb.RecordedEvent], partition: int, attempt: int
    ) -> Iterator[None]:
        first = events[0]
        parent = propagate.extract(dict(first.metadata))
        token = context.attach(parent)
        try:
            with self.tracer.start_as_current_span(
                f"deliver {first.type}",
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "sluice",
                    "messaging.destination.name": first.stream,
                    "messaging.consumer.group.name": self.group,
                    "messaging.batch.message_count": len(events),
                    "sluice.position": first.position,
                    "sluice.partition": partition,
                    "sluice.attempt": attempt,
                },
            ):
                yield
        finally:
            context.detach(token)
