"""The store process: gRPC server, health, reflection, background retention, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sluice import telemetry
from sluice.settings import listen_grpc, redact, settle_heap, until_signal
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb
from sluice_store.broker import Broker
from sluice_store.config import Settings
from sluice_store.groups import Coordinator
from sluice_store.groups_service import GroupsService
from sluice_store.groups_service import methods as groups_methods
from sluice_store.service import StreamsService, methods
from sluice_store.storage import open_storage
from sluice_store.storage.base import Storage

log = logging.getLogger("sluice_store")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Streams"].full_name
GROUPS_SERVICE_NAME = gpb.DESCRIPTOR.services_by_name["Groups"].full_name


class StoreServer:
    """A running store: ``await start()``, then ``await stop()`` (idempotent)."""

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.settings = settings
        self.storage = storage or open_storage(settings)
        self.broker = Broker(settings.ephemeral_buffer_bytes, settings.ephemeral_total_bytes)
        self.storage.listener = self.broker.publish
        self.storage.listening = lambda: len(self.broker) > 0
        self.service = StreamsService(self.storage, self.broker, settings)
        self.coordinator = Coordinator(self.storage, self.service.cursor_at)
        self.groups = GroupsService(self.coordinator, self.service)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._reclaimer: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        await self.storage.open()
        try:
            await self._serve()
        except BaseException:
            await self.storage.close()  # its worker thread would keep a failed process alive
            raise

    async def _serve(self) -> None:
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
            ],
        )
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(SERVICE_NAME, methods(self.service)),
                grpc.method_handlers_generic_handler(GROUPS_SERVICE_NAME, groups_methods(self.groups)),
            ]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, GROUPS_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = listen_grpc(self.server, self.settings.addr, "addr")
        await self.server.start()
        for name in ("", SERVICE_NAME, GROUPS_SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._reclaimer = asyncio.create_task(self._reclaim_loop())

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
                if stats.events_removed:
                    log.info(
                        "retention removed %d events (%d archived) from %d streams",
                        stats.events_removed,
                        stats.events_archived,
                        stats.streams,
                    )
            except Exception:
                log.exception("retention pass failed; retrying next interval")

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, end live streams, let in-flight RPCs finish, close storage."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        self.broker.close()
        if self._reclaimer:
            self._reclaimer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reclaimer
        if self.server:
            await self.server.stop(self.settings.grace if grace is None else grace)
        await self.storage.close()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    server = StoreServer(settings)
    await server.start()
    settle_heap()
    print(f"sluice store listening on {server.address} (db {redact(settings.db)})", flush=True)
    await until_signal()
    log.info("shutting down")
    await server.stop()
