"""The sidecar process: local HTTP and gRPC endpoints for the app, and its life cycle.

Local HTTP (``--http-addr``):
  GET  /healthz                 the process is alive
  GET  /readyz                  200 once joined; 503 with a reason before, while the
                                group does not exist, and from SIGTERM on
  GET  /v1/status               assignment, cursors, in-flight and lag (JSON)
  GET  /metrics                 Prometheus (also on the probe listener)
  POST /v1/publish/{stream}     append the body as one event; type from ``ce-type`` (or
                                ``?type=``), id from ``ce-id``, metadata from
                                ``sluice-meta-<key>`` headers, trace from ``traceparent``;
                                a CloudEvent in structured mode (one, or a batch appended
                                together) when the body says so by its Content-Type
Local gRPC (``--grpc-addr``): sluice.v1.Sidecar (Pull, Publish, Status) and health.
Probes (``--probe-addr``, optional): /healthz and /readyz alone, for the kubelet; the API
above stays on localhost.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from aiohttp import web
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sluice import cloudevent
from sluice.errors import SluiceError, make_status
from sluice.httpserver import MAX_BODY_BYTES, BoundedRunner, json_refusals
from sluice.process import GRPC_SERVER_OPTIONS, listen_grpc, shutdown_signal, started
from sluice.v1 import sidecar_pb2 as spb
from sluice.v1 import sidecar_pb2_grpc as spb_grpc
from sluice.v1 import streams_pb2 as pb
from sluice_sidecar.config import Settings
from sluice_sidecar.delivery import Deliverer, GrpcDeliverer, HttpDeliverer, PullHub
from sluice_sidecar.member import Member

log = logging.getLogger("sluice_sidecar")

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
}


def make_deliverer(s: Settings) -> Deliverer:
    if s.delivery == "grpc":
        return GrpcDeliverer(s.app_grpc, s.group, s.delivery_timeout)
    if s.delivery == "pull":
        return PullHub(s.group, s.delivery_timeout)
    return HttpDeliverer(s.app_url, s.group, s.delivery_timeout, s.app_health_path)


class SidecarService(spb_grpc.SidecarServicer):
    def __init__(self, member: Member) -> None:
        self.member = member

    async def Pull(
        self, request_iterator: AsyncIterator[spb.PullRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[spb.PullResponse]:
        hub = self.member.deliverer
        if not isinstance(hub, PullHub):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "this sidecar delivers by push, not pull"
            )
            return
        async for resp in hub.serve(request_iterator):
            yield resp

    async def Publish(
        self, request: pb.AppendRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendResponse:
        trace = dict(context.invocation_metadata() or ()).get("traceparent")
        try:
            return await self.member.publish(request, str(trace) if trace else None)
        except SluiceError as e:
            # The store's answer as it gave it: code, message and details (ErrorInfo, and
            # BadRequest or QuotaFailure), not the code and message alone.
            status = make_status(e.code, e.reason or e.code.name, e.message, e.metadata)
            await context.abort_with_status(rpc_status.to_status(status))
            raise

    async def Status(
        self, request: spb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> spb.SidecarStatus:
        return self.member.status()


async def scrape(_: web.Request) -> web.Response:
    """Prometheus: the sidecar's metrics (read-only, so also on the probe listener)."""
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def refusal(status: int, code: str, reason: str, message: str, details: dict[str, str]) -> web.Response:
    """An HTTP-level refusal (sluice.httpserver.json_refusals) in the publish API's shape."""
    return web.json_response({"error": message, "reason": reason, "details": details}, status=status)


def health_routes(member: Member) -> list[web.RouteDef]:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        ready = member.ready()
        body = {"ready": ready} if ready else {"ready": False, "reason": member.unready_reason()}
        return web.json_response(body, status=200 if ready else 503)

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", scrape)]


def probe_app(member: Member) -> web.Application:
    """What the kubelet may reach from outside the pod: health and readiness, nothing else."""
    app = web.Application()
    app.add_routes(health_routes(member))
    return app


def http_app(member: Member) -> web.Application:

    async def status(_: web.Request) -> web.Response:
        body = json_format.MessageToDict(
            member.status(), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return web.json_response(body)

    async def publish(request: web.Request) -> web.Response:
        content_type = request.headers.get("content-type", "")
        metadata = {
            k[len("sluice-meta-") :]: v
            for k, v in request.headers.items()
            if k.lower().startswith("sluice-meta-")
        }
        if cloudevent.is_structured(content_type):
            # Structured mode: the body is a CloudEvent (or a batch of them, appended together).
            try:
                events = cloudevent.parse(await request.read(), content_type)
            except cloudevent.NotACloudEvent as e:
                return web.json_response(
                    {"error": str(e), "reason": "INVALID_ARGUMENT", "details": {"field": e.field}}, status=400
                )
            for event in events:
                event.type = event.type or request.query.get("type", "")
                event.metadata.update(metadata)
        else:  # binary mode: ce- headers, the body is the data
            event = pb.EventData(
                id=request.headers.get("ce-id", ""),
                type=request.headers.get("ce-type") or request.query.get("type", ""),
                data=await request.read(),
                content_type=content_type,
                metadata=metadata,
            )
            events = [event]
        req = pb.AppendRequest(stream=request.match_info["stream"], events=events)
        try:
            resp = await member.publish(req, request.headers.get("traceparent"))
        except SluiceError as e:
            return web.json_response(
                {"error": e.message, "reason": e.reason, "details": e.metadata},
                status=_HTTP_STATUS.get(e.code, 500),
            )
        return web.json_response(
            json_format.MessageToDict(
                resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )

    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_refusals(refusal)])
    app.add_routes(
        [
            *health_routes(member),
            web.get("/v1/status", status),
            web.post("/v1/publish/{stream}", publish),
        ]
    )
    return app


class SidecarServer:
    """A running sidecar: ``await start()`` binds its listeners and joins the group once
    the app answers; ``await stop()`` drains, commits, leaves and closes (idempotent)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.member = Member(settings, make_deliverer(settings))
        # No SO_REUSEPORT: a second sidecar on the same port fails at start instead of sharing it.
        self.grpc_server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *GRPC_SERVER_OPTIONS])
        spb_grpc.add_SidecarServicer_to_server(SidecarService(self.member), self.grpc_server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        self.runners: list[BoundedRunner] = []
        #: What it bound (port 0 in a setting: any free port), known once start() returns.
        self.http_addr = self.grpc_addr = self.probe_addr = ""
        self._stopped = False

    async def start(self) -> None:
        s = self.settings
        grpc_port = listen_grpc(self.grpc_server, s.grpc_addr, "grpc_addr")
        await self.grpc_server.start()
        self.grpc_addr = f"{s.grpc_addr.rpartition(':')[0]}:{grpc_port}"
        try:
            self.http_addr = await self._listen(http_app(self.member), s.http_addr, "http_addr", "127.0.0.1")
            if s.probe_addr:
                self.probe_addr = await self._listen(
                    probe_app(self.member), s.probe_addr, "probe_addr", "0.0.0.0"
                )
        except OSError:
            await self.grpc_server.stop(0)
            for r in self.runners:
                await r.cleanup()
            raise
        await self.member.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def _listen(self, app: web.Application, addr: str, setting: str, default_host: str) -> str:
        s = self.settings
        cap = s.http_max_connections if setting == "http_addr" else 16
        runner = BoundedRunner(app, idle_timeout=s.http_idle_timeout, max_connections=cap, access_log=None)
        await runner.setup()
        self.runners.append(runner)
        host, _, port = addr.rpartition(":")
        try:
            await web.TCPSite(runner, host or default_host, int(port)).start()
        except OSError as e:
            raise OSError(f"{setting}: cannot listen on {addr}: {e.strerror}") from e
        return f"{host or default_host}:{runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self.member.stop()  # readiness turns 503 first: member.stopping is set at once
        await self.grpc_server.stop(1.0)
        for r in self.runners:
            await r.cleanup()
        with contextlib.suppress(Exception):
            await self.member.deliverer.close()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then drain, commit, leave and exit."""
    stop = shutdown_signal()
    server = SidecarServer(settings)
    try:
        up = await started(server.start(), stop)
    except BaseException:
        with contextlib.suppress(Exception):  # close what did start before the error ends the loop
            await server.stop()
        raise
    if not up:
        with contextlib.suppress(Exception):
            await server.stop()
        return
    probes = f", probes {server.probe_addr}" if server.probe_addr else ""
    print(
        f"sluice sidecar {settings.member_id} in group {settings.group}: "
        f"http {server.http_addr}, grpc {server.grpc_addr}, delivering by {settings.delivery}{probes}",
        flush=True,
    )
    await stop.wait()
    log.info("shutting down: draining, committing, leaving the group")
    await server.stop()
