"""The gateway process: gRPC (Gateway, health, reflection), HTTP (SSE, /metrics), shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sluice.httpserver import BoundedRunner
from sluice.settings import listen_grpc, settle_heap, until_signal
from sluice.v1 import gateway_pb2 as gwpb
from sluice.v1 import streams_pb2_grpc as pb_grpc
from sluice_gateway import wire
from sluice_gateway.config import Settings
from sluice_gateway.feed import Feed
from sluice_gateway.hub import SSE, Hub
from sluice_gateway.service import Gateway, GatewayError, GatewayService, SseFormat, methods
from sluice_gateway.telemetry import Telemetry

log = logging.getLogger("sluice_gateway")

SERVICE_NAME = gwpb.DESCRIPTOR.services_by_name["Gateway"].full_name
_FORMS = {"full": wire.FULL, "notification": wire.NOTIFICATION}
_POLICIES = {
    "catch_up": gwpb.OVERFLOW_POLICY_CATCH_UP,
    "drop": gwpb.OVERFLOW_POLICY_DROP,
    "disconnect": gwpb.OVERFLOW_POLICY_DISCONNECT,
}


SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _split(host_port: str) -> tuple[str, int]:
    host, _, port = host_port.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class GatewayServer:
    """A running gateway: ``await start()``, then ``await stop()`` (idempotent)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = Hub(settings.flush_interval, settings.message_budget, settings.ephemeral_buffer_bytes)
        self.channel = grpc.aio.insecure_channel(
            settings.store,
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
            ],
        )
        self.gateway = Gateway(self.hub, pb_grpc.StreamsStub(self.channel), self.channel, settings)
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
        self.http: web.AppRunner | None = None
        self.port = 0
        self.http_port = 0
        self._stopped = False
        self._health_updates: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self.feed.start()
        # No OpenTelemetry server interceptor: it cannot wrap Watch, which writes with
        # context.write so that a slow subscriber can be cut off mid-write. The gateway's
        # spans are its fan-out spans (see telemetry).
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if self.settings.reuse_port else 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.max_receive_message_length", 8 << 20),
            ],
        )
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE_NAME, methods(self.service))]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = listen_grpc(self.server, self.settings.addr, "addr")
        await self.server.start()
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
        app = web.Application()
        app.router.add_get("/v1/watch", self.sse)
        app.router.add_post("/v1/publish", self.http_publish)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
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
        site = web.TCPSite(self.http, host, port, reuse_port=self.settings.reuse_port)
        try:
            await site.start()
        except OSError as e:
            raise OSError(f"http_addr: cannot listen on {self.settings.http_addr}: {e.strerror}") from e
        self.http_port = self.http.addresses[0][1]

    @property
    def address(self) -> str:
        return f"{self.settings.addr.rsplit(':', 1)[0]}:{self.port}"

    # -- HTTP ----------------------------------------------------------------------------

    async def sse(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: ?stream=&prefix=&type= (repeatable), form, overflow, position."""
        q = request.query
        try:
            form = _FORMS[q.get("form", "full")]
            policy = _POLICIES[q.get("overflow", "catch_up")]
            wr = gwpb.WatchRequest(
                streams=q.getall("stream", []),
                stream_prefixes=q.getall("prefix", []),
                event_types=q.getall("type", []),
                form=form,
                overflow=policy,
                buffer_size=int(q.get("buffer_size", "0")),
                exclude_ephemeral=q.get("ephemeral", "true") == "false",
            )
            last_id = request.headers.get("Last-Event-ID", "")
            if last_id:
                wr.position = int(last_id) + 1
            elif "position" in q:
                wr.position = int(q["position"])
            heartbeat = float(q.get("heartbeat", "0")) or self.settings.heartbeat_interval
            sub, start = self.gateway.subscriber(wr, SSE)
        except (KeyError, ValueError) as e:
            return web.json_response({"error": f"bad query: {e}"}, status=400)
        except GatewayError as e:
            return web.json_response({"error": e.message, "reason": e.reason, **e.metadata}, status=400)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        await resp.write(b": sluice gateway\nretry: 1000\n\n")
        try:
            await self.gateway.watch(sub, start, SseFormat(), resp.write, heartbeat)
        except GatewayError as e:
            if e.reason != "SUBSCRIBER_TOO_SLOW":  # a stalled client would not read it: just close
                with contextlib.suppress(ConnectionError):
                    await resp.write(wire.sse_control("error", {"reason": e.reason, "message": e.message}))
        except ConnectionError:
            pass
        return resp

    async def http_publish(self, request: web.Request) -> web.Response:
        """POST a JSON body {stream, type, data (JSON), metadata, ttl_seconds}: Publish over HTTP."""
        try:
            body = await request.json()
            req = gwpb.PublishRequest(
                stream=body.get("stream", ""),
                type=body.get("type", ""),
                data=json.dumps(body.get("data")).encode() if "data" in body else b"",
                metadata=body.get("metadata") or {},
                content_type="application/json" if "data" in body else "",
            )
            if body.get("ttl_seconds"):
                req.time_to_live.FromMilliseconds(int(float(body["ttl_seconds"]) * 1000))
            resp = await self.service.publish(req)
        except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as e:
            # Not JSON, not an object, too deep to parse, or numbers out of range.
            return web.json_response({"error": f"bad body: {type(e).__name__}: {str(e)[:200]}"}, status=400)
        except GatewayError as e:
            return web.json_response({"error": e.message, "reason": e.reason, **e.metadata}, status=400)
        return web.json_response({"id": resp.id, "subscribers": resp.subscribers, "relayed": resp.relayed})

    async def metrics(self, _: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        ready = self.feed.connected.is_set() and not self._stopped
        return web.json_response(
            {"ready": ready, "position": self.hub.position, "subscribers": self.hub.subscribers},
            status=200 if ready else 503,
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, end every watch, let in-flight calls finish, close the feed."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        self.hub.close()
        if self.http is not None:
            await self.http.shutdown()
            await self.http.cleanup()
        if self.server is not None:
            await self.server.stop(self.settings.grace if grace is None else grace)
        await self.feed.close()
        await self.channel.close()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    server = GatewayServer(settings)
    await server.start()
    settle_heap()
    host = settings.http_addr.rpartition(":")[0] if settings.http_addr else ""
    http = f", HTTP on {host}:{server.http_port}" if settings.http_addr else ""
    print(f"sluice gateway listening on {server.address}{http} (store {settings.store})", flush=True)
    await until_signal()
    log.info("shutting down")
    await server.stop()
