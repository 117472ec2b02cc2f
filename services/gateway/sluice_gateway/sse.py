"""The gateway over HTTP: Server-Sent Events (each event a CloudEvents JSON object whose SSE
id is its position), publish, metrics, health and readiness."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import grpc
from aiohttp import web
from multidict import MultiMapping
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sluice import cloudevent, security
from sluice.httpserver import MAX_BODY_BYTES, json_refusals
from sluice.settings import parse_bool
from sluice.v1 import gateway_pb2 as gwpb
from sluice_gateway import console, openapi, wire
from sluice_gateway.api import (
    BadRequest,
    JsonApi,
    bad_request,
    gateway_error,
    refusal,
)
from sluice_gateway.config import Settings
from sluice_gateway.hub import Encoder, Hub
from sluice_gateway.service import Caller, Gateway, GatewayError, watch_needs
from sluice_gateway.wire import NOTIFICATION, Record
from sluice_gateway.workers import Siblings

T = TypeVar("T")

_FORMS = {"full": wire.FULL, "notification": wire.NOTIFICATION}
_POLICIES = {
    "catch_up": gwpb.OVERFLOW_POLICY_CATCH_UP,
    "drop": gwpb.OVERFLOW_POLICY_DROP,
    "disconnect": gwpb.OVERFLOW_POLICY_DISCONNECT,
}
#: What GET /v1/watch takes; anything else is refused, so a misspelt parameter (or one
#: of another API's, like ``from``) is not silently a watch of something else.
WATCH_PARAMS = tuple(openapi.WATCH_QUERY)


def _whole(text: str, name: str, bits: int) -> int:
    """A query value that must be a whole number from 0 to 2**bits - 1."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n < 1 << bits:
        raise BadRequest(
            f"{name}: expected a whole number from 0 to {(1 << bits) - 1}, got {text[:40]!r}", name
        )
    return n


def _choice(q: Mapping[str, str], name: str, choices: Mapping[str, T], default: str) -> T:
    value = q.get(name, default)
    if value not in choices:
        raise BadRequest(f"{name}: one of {', '.join(choices)}, got {value[:40]!r}", name)
    return choices[value]


def watch_query(q: MultiMapping[str], last_event_id: str) -> tuple[gwpb.WatchRequest, float]:
    """The watch a GET /v1/watch asks for, and its heartbeat (0: the gateway's); refusals
    name the parameter."""
    for name in q:
        if name not in WATCH_PARAMS:
            raise BadRequest(
                f"unknown query parameter {name[:40]!r}; the watch takes {', '.join(WATCH_PARAMS)}",
                name[:100],
            )
    try:
        exclude_ephemeral = not parse_bool(q.get("ephemeral", "true"))
    except ValueError:
        raise BadRequest("ephemeral: expected true or false", "ephemeral") from None
    wr = gwpb.WatchRequest(
        streams=q.getall("stream", []),
        stream_prefixes=q.getall("prefix", []),
        event_types=q.getall("type", []),
        form=_choice(q, "form", _FORMS, "full"),
        overflow=_choice(q, "overflow", _POLICIES, "catch_up"),
        buffer_size=_whole(q.get("buffer_size", "0"), "buffer_size", 32),
        exclude_ephemeral=exclude_ephemeral,
    )
    if last_event_id:  # a browser's EventSource resuming: the next position after it
        wr.position = _whole(last_event_id, "Last-Event-ID", 63) + 1
    elif "position" in q:
        wr.position = _whole(q["position"], "position", 63)
    try:
        heartbeat = float(q.get("heartbeat", "0"))
    except ValueError:
        heartbeat = -1.0
    if not 0 <= heartbeat <= 3600:
        raise BadRequest("heartbeat: seconds from 0 to 3600", "heartbeat")
    return wr, heartbeat


STREAM_ACTIONS = ("read", "append", "delete", "retention", "list", "publish", "watch")
GROUP_ACTIONS = ("list", "admin", "join")
SAMPLE_INTERVAL = 2.0
SAMPLES = 300  # ten minutes


class Samples:
    """The hub's head position and subscriber count, sampled every SAMPLE_INTERVAL seconds
    for the last SAMPLES intervals (what the console's overview draws)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.points: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=SAMPLES)
        self._task: asyncio.Task[None] | None = None

    async def start(self, _: web.Application) -> None:
        self._task = asyncio.create_task(self._run(), name="samples")

    async def stop(self, _: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            self.points.append((round(time.time(), 3), self.hub.position, self.hub.subscribers))
            await asyncio.sleep(SAMPLE_INTERVAL)


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
    """The gateway's HTTP routes: SSE watch and publish here; the store's operations as
    JSON (sluice_gateway.api), their OpenAPI document, and the console."""

    def __init__(
        self,
        gateway: Gateway,
        hub: Hub,
        settings: Settings,
        ready: Callable[[], bool],
        channel: grpc.aio.Channel | None = None,
        siblings: Siblings | None = None,
    ) -> None:
        self.gateway = gateway
        self.siblings = siblings  # the other workers, when this is one of several
        self.hub = hub
        self.settings = settings
        self.ready = ready  # the feed from the store is up and the gateway is not stopping
        self.channel = channel
        self.samples = Samples(hub)

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
        return gateway_error(e)  # as the JSON API's errors: code, reason, metadata, details

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_refusals(refusal)])
        app.router.add_get("/v1/watch", self.sse)
        app.router.add_post("/v1/publish", self.http_publish)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        if self.channel is not None:
            JsonApi(self.gateway, self.channel).add_routes(app, self._caller)
            app.router.add_get("/v1/openapi.json", self.openapi)
            app.router.add_get("/v1/access", self.access)
            app.router.add_get("/v1/stats", self.stats)
            app.on_startup.append(self.samples.start)
            app.on_cleanup.append(self.samples.stop)
        if self.settings.console:
            console.add_routes(app, self.settings)
        return app

    async def openapi(self, _: web.Request) -> web.Response:
        return web.json_response(self._openapi)

    @functools.cached_property
    def _openapi(self) -> dict[str, object]:
        return openapi.document()

    async def access(self, request: web.Request) -> web.Response:
        """Who the caller is and what it may do to a stream and a group (``?stream=&group=``;
        "*" when not named: every stream, every group), so the console shows only the actions
        it would be allowed."""
        try:
            caller = self._caller(request)
        except GatewayError as e:
            return self._refused(e)
        stream = request.query.get("stream", "*")
        group = request.query.get("group", "*")
        guard = self.gateway.guard

        def may(action: str, resource: str, kind: str) -> bool:
            if not guard.enabled:
                return True
            try:  # the policy alone: a question, not a refused call to audit
                guard.policy.check(caller.principal, action, resource, kind)
            except security.Denied:
                return False
            return True

        streams = {a: may(a, stream, "streams") for a in STREAM_ACTIONS}
        groups = {a: may(a, group, "groups") for a in GROUP_ACTIONS}
        name = caller.principal.name if guard.enabled else ""
        return web.json_response(
            {"principal": name, "secured": guard.enabled, "streams": streams, "groups": groups}
        )

    async def stats(self, request: web.Request) -> web.Response:
        """The last minutes of the gateway's view: [unix time, head position, subscribers]
        every SAMPLE_INTERVAL seconds (the console's overview charts); any authenticated
        caller may see them."""
        try:
            self._caller(request)
        except GatewayError as e:
            return self._refused(e)
        own = self.own_stats()
        return web.json_response(await self.siblings.stats(own) if self.siblings else own)

    def own_stats(self) -> dict[str, Any]:
        """This process's samples, head and subscribers (with --workers, one worker's part)."""
        return {
            "interval": SAMPLE_INTERVAL,
            "samples": list(self.samples.points),
            "head_position": self.hub.position,
            "subscribers": self.hub.subscribers,
        }

    async def sse(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: ?stream=&prefix=&type= (repeatable), form, overflow, position."""
        try:
            wr, heartbeat = watch_query(request.query, request.headers.get("Last-Event-ID", ""))
            caller = self._caller(request)
            needs = watch_needs(wr)
            self.gateway.authorize(caller, needs, request.remote or "")
            sub, start = self.gateway.subscriber(wr, encode)
        except BadRequest as e:
            return bad_request(e)
        except GatewayError as e:
            return self._refused(e)
        heartbeat = heartbeat or self.settings.heartbeat_interval
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
            if not isinstance(body, dict):
                raise BadRequest(
                    "the body must be a JSON object: {stream, type, data, metadata, ttl_seconds}", "body"
                )
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
        except BadRequest as e:
            return bad_request(e)
        except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as e:
            # Not JSON, fields of the wrong kind, too deep to parse, or numbers out of range.
            return bad_request(
                BadRequest(f"the body is not a publish: {type(e).__name__}: {str(e)[:200]}", "body")
            )
        except GatewayError as e:
            return self._refused(e)
        return web.json_response({"id": resp.id, "subscribers": resp.subscribers, "relayed": resp.relayed})

    async def metrics(self, _: web.Request) -> web.Response:
        body = await self.siblings.metrics() if self.siblings else generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def own_readiness(self) -> dict[str, Any]:
        """This process's readiness, position and subscribers."""
        return {"ready": self.ready(), "position": self.hub.position, "subscribers": self.hub.subscribers}

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        if self.siblings:  # one of several workers: ready when they all are
            ready, body = await self.siblings.ready()
        else:
            body = self.own_readiness()
            ready = body["ready"]
        return web.json_response(body, status=200 if ready else 503)
