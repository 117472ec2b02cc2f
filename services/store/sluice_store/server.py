"""The store process: gRPC server, health, reflection, background retention, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sluice import security, telemetry
from sluice.httpserver import BoundedRunner
from sluice.process import (
    GRPC_SERVER_OPTIONS,
    StartFailed,
    health_listener,
    listen_grpc,
    settle_heap,
    shutdown_signal,
    started,
)
from sluice.settings import redact
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb
from sluice_store import positions
from sluice_store.access import Access
from sluice_store.broker import Broker
from sluice_store.config import ConfigError, Settings
from sluice_store.errors import StoreError
from sluice_store.groups import Coordinator
from sluice_store.groups_service import GroupsService
from sluice_store.groups_service import methods as groups_methods
from sluice_store.metrics import StoreMetrics
from sluice_store.service import StreamsService, methods
from sluice_store.storage import open_storage
from sluice_store.storage.base import Storage

log = logging.getLogger("sluice_store")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Streams"].full_name
GROUPS_SERVICE_NAME = gpb.DESCRIPTOR.services_by_name["Groups"].full_name
#: Health of appends alone: NOT_SERVING while storage is full (reads, and so readiness, go on).
APPEND_HEALTH = f"{SERVICE_NAME}/Append"


class DiskReserve:
    """A file of ``size`` bytes kept beside the database and given back when the disk fills,
    so that SQLite can still checkpoint its WAL and retention can still delete (both need to
    write) and the store recovers once space is freed. Made again when appends fit."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size

    def fill(self) -> None:
        if not self.size:
            return
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
            finally:
                os.close(fd)
        except OSError as e:  # a full disk now: try again after the next recovery
            log.warning("could not keep a disk reserve of %d bytes at %s: %s", self.size, self.path, e)

    def free(self) -> int:
        """Bytes free on the reserve's file system."""
        st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        return st.f_bavail * st.f_frsize

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class StoreServer:
    """A running store: ``await start()``, then ``await stop()`` (idempotent)."""

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.settings = settings
        self.storage = storage or open_storage(settings)
        self.broker = Broker(settings.ephemeral_buffer_bytes, settings.ephemeral_total_bytes)
        self.storage.listener = self.broker.publish
        self.storage.listening = lambda: len(self.broker) > 0
        self.service = StreamsService(self.storage, self.broker, settings)
        self.coordinator = Coordinator(self.storage, functools.partial(positions.cursor_at, self.storage))
        self.groups = GroupsService(self.coordinator, self.storage, self.service.append_system)
        self.access = Access(settings.guard())
        self.service.access = self.access
        self.reclaimed_events = self.archived_events = 0
        self.metrics = StoreMetrics(self, settings.tls_cert)
        self.groups.on_commit = lambda g, p, position: self.metrics.cursors.__setitem__((g, p), position)
        self.metrics_http: BoundedRunner | None = None
        self.metrics_port = 0
        self._policy_watch: asyncio.Task[None] | None = None
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.health_server: grpc.aio.Server | None = None
        self.health_port = 0
        self.port = 0
        self._reclaimer: asyncio.Task[None] | None = None
        self._loop_watch: asyncio.Task[None] | None = None
        self._stopped = False
        self.storage_full = False
        self.service.committer.on_full = self._on_storage_full
        self.service.has_room = self._has_room
        self._reclaim_failing = False
        self._background: set[asyncio.Future[Any]] = set()
        path = getattr(self.storage, "path", "")
        self.reserve = DiskReserve(f"{path}.reserve", settings.disk_reserve) if path else None

    async def start(self) -> None:
        if self.reserve is not None:
            await asyncio.to_thread(self.reserve.fill)
        await self.storage.open()
        try:
            await self._serve()
        except BaseException:
            await self.storage.close()  # its worker thread would keep a failed process alive
            raise

    async def _serve(self) -> None:
        s = self.settings
        refused = security.protected_mode(
            s.addr, "addr", self.access.guard.authenticator.configured, s.insecure
        )
        if refused:
            raise ConfigError(refused)
        interceptors: list[Any] = []
        if telemetry.tracing_enabled():
            from opentelemetry.instrumentation.grpc import aio_server_interceptor

            telemetry.setup_tracing("sluice-store")
            interceptors.append(aio_server_interceptor())  # type: ignore[no-untyped-call]
        limit = self.settings.max_request_bytes + (1 << 20)
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                *GRPC_SERVER_OPTIONS,
                *(
                    # GOAWAY after this age: clients reconnect (re-resolving the replicas) for
                    # new calls; calls open then run on to their end (no grace limit).
                    [("grpc.max_connection_age_ms", int(self.settings.max_connection_age * 1000))]
                    if self.settings.max_connection_age > 0
                    else []
                ),
            ],
        )
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(SERVICE_NAME, methods(self.service, self.access)),
                grpc.method_handlers_generic_handler(
                    GROUPS_SERVICE_NAME, groups_methods(self.groups, self.access)
                ),
            ]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, GROUPS_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = listen_grpc(self.server, s.addr, "addr", s.grpc_credentials())
        await self.server.start()
        if s.health_addr:
            self.health_server, self.health_port = await health_listener(self.health, s.health_addr)
        for name in ("", SERVICE_NAME, GROUPS_SERVICE_NAME, APPEND_HEALTH):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._reclaimer = asyncio.create_task(self._reclaim_loop())
        self._loop_watch = asyncio.create_task(telemetry.watch_event_loop(self.metrics.meter))
        if self.access.guard.enabled:  # policy reloads; credentials that lapse end live reads
            self._policy_watch = asyncio.create_task(self.access.guard.watch())
        if s.metrics_addr:
            await self._serve_metrics(s.metrics_addr)

    async def _serve_metrics(self, addr: str) -> None:
        async def scrape(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", scrape)
        self.metrics_http = BoundedRunner(app, idle_timeout=15.0, max_connections=64, access_log=None)
        await self.metrics_http.setup()
        host, _, port = addr.rpartition(":")
        try:
            await web.TCPSite(self.metrics_http, host or "0.0.0.0", int(port)).start()
        except OSError as e:
            raise OSError(f"metrics_addr: cannot listen on {addr}: {e.strerror}") from e
        self.metrics_port = self.metrics_http.addresses[0][1]

    @property
    def address(self) -> str:
        host = self.settings.addr.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def _reclaim_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reclaim_interval)
            self.broker.expire_ephemeral()  # Broadcast messages past their time to live
            try:
                stats = await self.storage.reclaim()
                self.reclaimed_events += stats.events_removed
                self.archived_events += stats.events_archived
                if stats.events_removed:
                    log.info(
                        "retention removed %d events (%d archived) from %d streams",
                        stats.events_removed,
                        stats.events_archived,
                        stats.streams,
                    )
                if self._reclaim_failing:
                    self._reclaim_failing = False
                    log.info("retention passes work again")
            except StoreError as e:  # one line when it starts failing, one when it recovers
                if not self._reclaim_failing:
                    self._reclaim_failing = True
                    log.warning(
                        "retention pass failed (%s); retrying every %ss", e, self.settings.reclaim_interval
                    )
            except Exception:
                log.exception("retention pass failed; retrying next interval")

    def _has_room(self) -> bool:
        """While full, appends are tried again only once the disk has twice the reserve
        free: the reserve, released when it filled, is for checkpoints and retention."""
        if not self.storage_full or self.reserve is None:
            return True
        return self.reserve.free() >= 2 * max(self.reserve.size, 1 << 20)

    def _on_storage_full(self, full: bool) -> None:
        """Appends stopped or started fitting: one log line and the append health per change."""
        if full == self.storage_full or self._stopped:
            return
        self.storage_full = full
        if full:
            log.error(
                "storage is full: appends are refused (STORAGE_FULL), reads go on; free space and"
                " appends resume by themselves"
            )
            if self.reserve is not None:
                self.reserve.release()  # room for the WAL checkpoint and retention to run
        else:
            log.warning("storage has room again: appends resume")
            if self.reserve is not None:
                self._run(asyncio.to_thread(self.reserve.fill))
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING if full else health_pb2.HealthCheckResponse.SERVING
        )
        self._run(self.health.set(APPEND_HEALTH, status))

    def _run(self, aw: Any) -> None:
        task = asyncio.ensure_future(aw)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, end live streams, let in-flight RPCs finish, close storage."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        self.broker.close()
        self.service.closing.set()
        for task in (self._reclaimer, self._policy_watch, self._loop_watch):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.server:
            await self.server.stop(self.settings.grace if grace is None else grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.metrics_http is not None:
            await self.metrics_http.cleanup()
        await self.storage.close()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = shutdown_signal()
    server = StoreServer(settings)
    try:
        up = await started(server.start(), stop)
    except StoreError as e:  # the database cannot be opened or made ready (orchestrators restart)
        with contextlib.suppress(Exception):
            await server.stop()
        raise StartFailed(f"cannot open the database {redact(settings.db)}: {e.message}") from None
    if not up:
        with contextlib.suppress(Exception):
            await server.stop()
        return
    settle_heap()
    with contextlib.suppress(NotImplementedError):  # SIGHUP: reload the policy now
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, server.access.guard.reload)
    print(f"sluice store listening on {server.address} (db {redact(settings.db)})", flush=True)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
