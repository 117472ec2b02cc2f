"""The store's metrics: OpenTelemetry instruments exported to Prometheus (``/metrics`` on
``--metrics-addr``) and over OTLP when configured. Counters are the store's own integers,
read when scraped, so appends pay nothing for them; only commit and call durations are
recorded as they happen (once per commit, once per call).

Names: ``sluice.store.*`` for what is the store's, ``rpc.server.duration`` with
``rpc.method`` and ``rpc.grpc.status_code`` as the OpenTelemetry RPC conventions have it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Observation

from sluice import telemetry
from sluice_store.broker import Broker
from sluice_store.rpc import STATS
from sluice_store.service import StreamsService
from sluice_store.storage.base import Storage


class Source(Protocol):
    """What the metrics read of a running store (StoreServer)."""

    service: StreamsService
    broker: Broker
    storage: Storage
    storage_full: bool
    reclaimed_events: int
    archived_events: int
    reserve: object | None


def _one(value: Callable[[], float]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    return lambda _: [Observation(value())]


class StoreMetrics:
    def __init__(self, server: Source, cert_file: str = "") -> None:
        self.server = server
        self.cert_file = cert_file
        #: (group, partition) -> committed cursor, kept by the groups service.
        self.cursors: dict[tuple[str, int], int] = {}
        meter = telemetry.meter_provider("sluice-store").get_meter("sluice.store")
        self.meter = meter
        service, committer, broker = server.service, server.service.committer, server.broker
        counters = (
            (
                "appended_events",
                "{event}",
                "new events stored (not replays)",
                lambda: service.appended_events,
            ),
            (
                "duplicate_appends",
                "{append}",
                "appends answered as replays",
                lambda: service.duplicate_appends,
            ),
            ("commits", "{transaction}", "group commits (storage transactions)", lambda: committer.commits),
            (
                "commit_failures",
                "{transaction}",
                "group commits that failed",
                lambda: committer.failed_commits,
            ),
            (
                "fell_behind",
                "{subscriber}",
                "live subscribers moved back to catch-up",
                lambda: broker.fell_behind,
            ),
            ("reclaimed_events", "{event}", "events retention removed", lambda: server.reclaimed_events),
            ("archived_events", "{event}", "events archived before removal", lambda: server.archived_events),
        )
        for name, unit, description, value in counters:
            meter.create_observable_counter(
                f"sluice.store.{name}", [_one(value)], unit=unit, description=description
            )
        gauges = (
            (
                "head_position",
                "{position}",
                "the newest committed position",
                lambda: server.storage.head_position,
            ),
            ("live_subscribers", "{subscriber}", "subscriptions following live events", lambda: len(broker)),
            (
                "storage_full",
                "1",
                "1 while the disk is full and appends are refused",
                lambda: int(server.storage_full),
            ),
        )
        for name, unit, description, value in gauges:
            meter.create_observable_gauge(
                f"sluice.store.{name}", [_one(value)], unit=unit, description=description
            )
        meter.create_observable_gauge(
            "sluice.store.storage_bytes",
            [self._storage_bytes],
            unit="By",
            description="the database file's size",
        )
        meter.create_observable_gauge(
            "sluice.store.disk_free_bytes", [self._disk_free], unit="By", description="free space beside it"
        )
        meter.create_observable_gauge(
            "sluice.store.group_cursor",
            [self._cursors],
            unit="{position}",
            description="each group partition's committed cursor (lag: head_position + 1 - cursor)",
        )
        meter.create_observable_gauge(
            "sluice.store.tls.certificate.expiry",
            [self._expiry],
            unit="s",
            description="seconds until the TLS certificate served expires (-1: no TLS)",
        )
        meter.create_observable_counter(
            "rpc.server.requests", [self._calls], unit="{request}", description="calls by method and status"
        )
        commit_seconds = meter.create_histogram(
            "sluice.store.commit.duration", unit="s", description="one group commit, fsync included"
        )
        batch = meter.create_histogram(
            "sluice.store.commit.batch_size", unit="{event}", description="events per group commit"
        )
        call_seconds = meter.create_histogram(
            "rpc.server.duration", unit="s", description="a call's duration"
        )

        def on_commit(seconds: float, events: int) -> None:
            commit_seconds.record(seconds)
            batch.record(events)

        def on_call(method: str, code: str, seconds: float) -> None:
            call_seconds.record(seconds, {"rpc.method": method, "rpc.grpc.status_code": code})

        committer.on_commit = on_commit
        STATS.on_call = on_call

    def _storage_bytes(self, _: CallbackOptions) -> Iterable[Observation]:
        path = getattr(self.server.storage, "path", "")
        if path and os.path.exists(path):
            size = os.path.getsize(path) + (
                os.path.getsize(f"{path}-wal") if os.path.exists(f"{path}-wal") else 0
            )
            yield Observation(size)

    def _disk_free(self, _: CallbackOptions) -> Iterable[Observation]:
        free = getattr(self.server.reserve, "free", None)
        if free is not None:
            yield Observation(free())

    def _expiry(self, _: CallbackOptions) -> Iterable[Observation]:
        if not self.cert_file:
            yield Observation(-1)
            return
        from cryptography import x509

        try:
            with open(self.cert_file, "rb") as fh:
                cert = x509.load_pem_x509_certificate(fh.read())
        except (OSError, ValueError):
            return  # mid-rotation: no sample this time
        yield Observation(cert.not_valid_after_utc.timestamp() - time.time())

    def _cursors(self, _: CallbackOptions) -> Iterable[Observation]:
        for (group, partition), position in list(self.cursors.items()):
            yield Observation(position, {"group": group, "partition": partition})

    def _calls(self, _: CallbackOptions) -> Iterable[Observation]:
        for (method, code), n in list(STATS.calls.items()):
            yield Observation(n, {"rpc.method": method, "rpc.grpc.status_code": code})
