"""The gateway over HTTP: Server-Sent Events (each event a CloudEvents JSON object whose SSE
id is its position), publish, metrics, health and readiness."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sluice import cloudevent
from sluice.v1 import gateway_pb2 as gwpb
from sluice_gateway import wire
from sluice_gateway.config import Settings
from sluice_gateway.hub import Encoder, Hub
from sluice_gateway.service import Caller, Gateway, GatewayError, watch_needs
from sluice_gateway.wire import NOTIFICATION, Record

_FORMS = {"full": wire.FULL, "notification": wire.NOTIFICATION}
_POLICIES = {
    "catch_up": gwpb.OVERFLOW_POLICY_CATCH_UP,
    "drop": gwpb.OVERFLOW_POLICY_DROP,
    "disconnect": gwpb.OVERFLOW_POLICY_DISCONNECT,
}
HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(record: Record, form: int) -> bytes:
    """A CloudEvents 1.0 JSON event as one SSE message; its SSE id is the position."""
    body = cloudevent.structured(record.event, with_data=form != NOTIFICATION)
    text = json.dumps(body, separators=(",", ":"))
    head = f"id: {record.position}\n" if record.position else ""
    return f"{head}event: {'event' if record.position else 'ephemeral'}\ndata: {text}\n\n".encode()


def _full(record: Record) -> bytes:
    return event(record, wire.FULL)


def _notification(record: Record) -> bytes:
    return event(record, wire.NOTIFICATION)


def encode(records: Iterable[Record], form: int) -> bytes:
    """The records as SSE messages, each made once per form."""
    make = _notification if form == wire.NOTIFICATION else _full
    return b"".join([r.cached(make, make) for r in records])


def control(kind: str, payload: dict[str, object]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


class SseFormat:
    """Server-Sent Events: each event's id is its position (resume with Last-Event-ID)."""

    encoder: Encoder = encode

    def events(self, body: bytes, position: int) -> bytes:
        return body

    def ephemeral(self, body: bytes, position: int) -> bytes:
        return body

    def caught_up(self, position: int) -> bytes:
        return control("caught_up", {"position": position})

    def heartbeat(self, head: int, position: int) -> bytes:
        return control("heartbeat", {"head_position": head, "position": position})

    def fell_behind(self, position: int) -> bytes:
        return control("fell_behind", {"position": position})

    def ephemeral_dropped(self, count: int, position: int) -> bytes:
        return control("ephemeral_dropped", {"count": count, "position": position})

    def gap(self, reason: int, lo: int, hi: int, position: int) -> bytes:
        name = gwpb.Gap.Reason.Name(reason).removeprefix("REASON_").lower()  # type: ignore[arg-type]
        return control("gap", {"reason": name, "from_position": lo, "to_position": hi})


class HttpApi:
    """The gateway's HTTP routes."""

    def __init__(self, gateway: Gateway, hub: Hub, settings: Settings, ready: Callable[[], bool]) -> None:
        self.gateway = gateway
        self.hub = hub
        self.settings = settings
        self.ready = ready  # the feed from the store is up and the gateway is not stopping

    def _caller(self, request: web.Request) -> Caller:
        """The caller from an Authorization header, or, for browsers (EventSource cannot set
        headers), an ``access_token`` query parameter or a ``sluice_token`` cookie."""
        if not self.gateway.guard.enabled:
            return Caller()
        token = request.query.get("access_token") or request.cookies.get("sluice_token", "")
        auth = request.headers.get("Authorization", "") or (f"Bearer {token}" if token else "")
        return self.gateway.authenticate({"authorization": auth} if auth else {}, (), request.remote or "")

    @staticmethod
    def _refused(e: GatewayError) -> web.Response:
        status = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}.get(e.reason, 400)
        return web.json_response({"error": e.message, "reason": e.reason, **e.metadata}, status=status)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/watch", self.sse)
        app.router.add_post("/v1/publish", self.http_publish)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

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
            caller = self._caller(request)
            needs = watch_needs(wr)
            self.gateway.authorize(caller, needs, request.remote or "")
            sub, start = self.gateway.subscriber(wr, encode)
        except (KeyError, ValueError) as e:
            return web.json_response({"error": f"bad query: {e}"}, status=400)
        except GatewayError as e:
            return self._refused(e)
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
            await self.gateway.watch(sub, start, SseFormat(), resp.write, heartbeat, caller, needs)
        except GatewayError as e:
            if e.reason != "SUBSCRIBER_TOO_SLOW":  # a stalled client would not read it: just close
                with contextlib.suppress(ConnectionError):
                    await resp.write(control("error", {"reason": e.reason, "message": e.message}))
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
            resp = await self.gateway.publish(req, self._caller(request))
        except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as e:
            # Not JSON, not an object, too deep to parse, or numbers out of range.
            return web.json_response({"error": f"bad body: {type(e).__name__}: {str(e)[:200]}"}, status=400)
        except GatewayError as e:
            return self._refused(e)
        return web.json_response({"id": resp.id, "subscribers": resp.subscribers, "relayed": resp.relayed})

    async def metrics(self, _: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        ready = self.ready()
        return web.json_response(
            {"ready": ready, "position": self.hub.position, "subscribers": self.hub.subscribers},
            status=200 if ready else 503,
        )
