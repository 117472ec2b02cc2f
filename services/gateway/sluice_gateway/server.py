"""The gateway process: the store channel, the hub and its feed, the gRPC server (Gateway,
health, reflection) and the HTTP server (sse), start and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import generate_latest

from sluice import security, telemetry
from sluice.credentials import bearer_interceptors
from sluice.httpserver import BoundedRunner
from sluice.process import (
    GRPC_SERVER_OPTIONS,
    health_listener,
    listen_grpc,
    settle_heap,
    shutdown_signal,
    started,
)
from sluice.settings import ConfigError
from sluice.v1 import gateway_pb2 as gwpb
from sluice.v1 import streams_pb2_grpc as pb_grpc
from sluice_gateway.config import Settings
from sluice_gateway.feed import Feed
from sluice_gateway.grpc_api import GatewayService, methods
from sluice_gateway.hub import Hub
from sluice_gateway.service import Gateway
from sluice_gateway.sse import HttpApi
from sluice_gateway.telemetry import Telemetry
from sluice_gateway.workers import Siblings, worker_count

log = logging.getLogger("sluice_gateway")

SERVICE_NAME = gwpb.DESCRIPTOR.services_by_name["Gateway"].full_name


def store_channel(settings: Settings) -> grpc.aio.Channel:
    """The gateway's one channel to the store, with its credentials when it has some."""
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
    ]
    creds = settings.store_credentials()
    token = creds.token_source() if creds else None
    interceptors = bearer_interceptors(token) if token else None
    if creds is not None and creds.secure:
        return grpc.aio.secure_channel(
            settings.store, creds.channel_credentials(), options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(settings.store, options=options, interceptors=interceptors)


def _split(host_port: str) -> tuple[str, int]:
    host, _, port = host_port.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class GatewayServer:
    """A running gateway: ``await start()``, then ``await stop()`` (idempotent)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # --message-budget is the gateway's: with --workers each worker aims for its share.
        budget = max(1, settings.message_budget // worker_count())
        self.hub = Hub(settings.flush_interval, budget, settings.ephemeral_buffer_bytes)
        self.channel = store_channel(settings)
        self.guard = settings.guard()
        self.gateway = Gateway(
            self.hub, pb_grpc.StreamsStub(self.channel), self.channel, settings, self.guard
        )
        self.telemetry = Telemetry(self.hub)
        self.feed = Feed(
            self.channel,
            self.hub,
            settings.reconnect_backoff,
            self.telemetry.on_batch,
            self.gateway.origin,
            self._feed_state,
        )
        self.service = GatewayService(self.gateway)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.health_server: grpc.aio.Server | None = None
        self.health_port = 0
        self.http: web.AppRunner | None = None
        self.port = 0
        self.http_port = 0
        self._stopped = False
        self._policy_watch: asyncio.Task[None] | None = None
        self._tls_reload: asyncio.Task[None] | None = None
        self._loop_watch: asyncio.Task[None] | None = None
        self._health_updates: set[asyncio.Future[None]] = set()
        self.siblings = Siblings.from_env()  # set when this is one of --workers

    async def start(self) -> None:
        s = self.settings
        for setting, addr in (("addr", s.addr), ("http_addr", s.http_addr)):
            refused = addr and security.protected_mode(
                addr, setting, self.guard.authenticator.configured, s.insecure
            )
            if refused:
                raise ConfigError(refused)
        self.feed.start()
        self._loop_watch = asyncio.create_task(telemetry.watch_event_loop(self.telemetry.meter))
        if self.guard.enabled:  # policy reloads; credentials that lapse end live watches
            self._policy_watch = asyncio.create_task(self.guard.watch())
        # No OpenTelemetry server interceptor: it cannot wrap Watch, which writes with
        # context.write so that a slow subscriber can be cut off mid-write. The gateway's
        # spans are its fan-out spans (see telemetry).
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if self.settings.reuse_port else 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.max_receive_message_length", 8 << 20),
                *GRPC_SERVER_OPTIONS,
            ],
        )
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE_NAME, methods(self.service))]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = listen_grpc(self.server, self.settings.addr, "addr", self.settings.grpc_credentials())
        await self.server.start()
        if self.settings.health_addr:
            health_addr = self.settings.health_addr
            self.health_server, self.health_port = await health_listener(
                self.health, health_addr, reuse_port=self.siblings is not None
            )
        # "" (liveness) is SERVING while the process runs; sluice.v1.Gateway (readiness)
        # only while the live feed from the store is up.
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._feed_state(self.feed.connected.is_set())
        if self.settings.http_addr:
            await self._start_http()

    def _feed_state(self, live: bool) -> None:
        if self._stopped:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING if live else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        task = asyncio.ensure_future(self.health.set(SERVICE_NAME, status))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _start_http(self) -> None:
        api = HttpApi(self.gateway, self.hub, self.settings, self._ready, self.channel, self.siblings)
        if self.siblings is not None:
            await self.siblings.start(generate_latest, api.own_readiness, api.own_stats)
        app = api.app()
        # Cancel an SSE handler as soon as its client goes, so it leaves the fan-out at once.
        self.http = BoundedRunner(
            app,
            idle_timeout=self.settings.http_idle_timeout,
            max_connections=self.settings.http_max_connections,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
        )
        await self.http.setup()
        host, port = _split(self.settings.http_addr)
        s = self.settings
        tls = security.ssl_context(s.tls_cert, s.tls_key, s.tls_client_ca) if s.tls_cert else None
        if tls is not None:  # renewed certificates are served without a restart
            self._tls_reload = asyncio.create_task(security.reload_ssl(tls, s.tls_cert, s.tls_key))
        site = web.TCPSite(self.http, host, port, reuse_port=s.reuse_port, ssl_context=tls)
        try:
            await site.start()
        except OSError as e:
            raise OSError(f"http_addr: cannot listen on {self.settings.http_addr}: {e.strerror}") from e
        self.http_port = self.http.addresses[0][1]

    def _ready(self) -> bool:
        return self.feed.connected.is_set() and not self._stopped

    @property
    def address(self) -> str:
        return f"{self.settings.addr.rsplit(':', 1)[0]}:{self.port}"

    # -- HTTP ----------------------------------------------------------------------------

    # -- lifecycle -----------------------------------------------------------------------

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, end every watch, let in-flight calls finish, close the feed."""
        if self._stopped:
            return
        self._stopped = True
        for task in (self._policy_watch, self._tls_reload, self._loop_watch):
            if task is not None:
                task.cancel()
        await self.health.enter_graceful_shutdown()
        self.hub.close()
        if self.http is not None:
            await self.http.shutdown()
            await self.http.cleanup()
        if self.siblings is not None:
            await self.siblings.stop()
        if self.server is not None:
            await self.server.stop(self.settings.grace if grace is None else grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.feed.close()
        await self.channel.close()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = shutdown_signal()
    server = GatewayServer(settings)
    if not await started(server.start(), stop):
        with contextlib.suppress(Exception):
            await server.stop()
        return
    settle_heap()
    with contextlib.suppress(NotImplementedError):  # SIGHUP: reload the policy now
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, server.guard.reload)
    host = settings.http_addr.rpartition(":")[0] if settings.http_addr else ""
    http = f", HTTP on {host}:{server.http_port}" if settings.http_addr else ""
    print(f"sluice gateway listening on {server.address}{http} (store {settings.store})", flush=True)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
