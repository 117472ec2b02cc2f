"""The gateway's sessions, whatever the transport: a watch catches up from the store when
it starts from a cursor, joins the hub, and then writes what the hub queues for it; a
publish reaches this gateway's subscribers at once and the others' through the store.
A transport (grpc_api, sse) gives a Format that turns a session's output into bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc
from google.protobuf import timestamp_pb2
from grpc_status import rpc_status

from sluice import security
from sluice.errors import from_rpc_error, make_status
from sluice.ids import uuid7_text
from sluice.names import (
    MAX_FILTER_ENTRIES,
    MAX_TYPE,
    event_fields_problem,
    is_system,
    name_problem,
    parse_uuid,
)
from sluice.security import ANONYMOUS, Need, Principal
from sluice.v1 import gateway_pb2 as gwpb
from sluice.v1 import streams_pb2 as pb
from sluice.v1 import streams_pb2_grpc as pb_grpc
from sluice_gateway import wire
from sluice_gateway.config import Settings
from sluice_gateway.hub import DISCONNECT, Encoder, Filter, Hub, Subscriber

log = logging.getLogger(__name__)

MAX_TTL = 86_400.0  # an ephemeral message lives a day at most
READY_TIMEOUT = 10.0  # how long a new watch waits for the gateway's first contact with the store


class GatewayError(Exception):
    """A refused or failed watch or publish: status code, ErrorReason name, metadata."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items()}

    async def abort(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        status = make_status(self.code, self.reason, self.message, self.metadata)
        await context.abort_with_status(rpc_status.to_status(status))


def invalid(message: str, field: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", message, field=field)


def denied(message: str, principal: str, action: str, resource: str) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        message,
        principal=principal,
        action=action,
        resource=resource,
    )


def unavailable(message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", message)


def check_name(name: str, field: str, max_len: int = MAX_TYPE, writing: bool = False) -> None:
    """The rules of sluice.names; ``writing``: not a store-reserved ("$") name either."""
    if problem := name_problem(name, max_len, field):
        raise invalid(problem, field)
    if writing and is_system(name):
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "SYSTEM_STREAM_RESERVED",
            f"{field}: names starting with '$' are reserved for the store: {name[:300]!r}",
            field=field,
        )


class Format(Protocol):
    """How a session's output becomes bytes on one transport."""

    encoder: Encoder

    def events(self, body: bytes, position: int) -> bytes: ...
    def ephemeral(self, body: bytes, position: int) -> bytes: ...
    def caught_up(self, position: int) -> bytes: ...
    def heartbeat(self, head: int, position: int) -> bytes: ...
    def fell_behind(self, position: int) -> bytes: ...
    def gap(self, reason: int, lo: int, hi: int, position: int) -> bytes: ...
    def ephemeral_dropped(self, count: int, position: int) -> bytes: ...


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


Write = Callable[[bytes], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who a session serves: its principal, and its own bearer credential (passed on to the
    store for what the gateway reads or publishes on its behalf, so that the store decides)."""

    principal: Principal = ANONYMOUS
    authorization: str = ""

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("authorization", self.authorization),) if self.authorization else None


def watch_needs(request: gwpb.WatchRequest) -> list[Need]:
    """What a watch reads: its streams, its prefixes, else every stream."""
    if request.streams:
        return [("watch", name, "streams") for name in request.streams]
    return [("watch", p + "*", "streams") for p in (list(request.stream_prefixes) or [""])]


class Gateway:
    """The sessions' shared parts: the hub, the store, the settings."""

    def __init__(
        self,
        hub: Hub,
        store: pb_grpc.StreamsStub,
        channel: grpc.aio.Channel,
        settings: Settings,
        guard: security.Guard | None = None,
    ) -> None:
        self.guard = guard or security.Guard(security.Authenticator(), security.Policy())
        self.hub = hub
        self.store = store
        # Catch-up reads come in as bytes: each event is cut out as the store serialized it.
        self._read = channel.unary_stream(
            "/sluice.v1.Streams/Read",
            request_serializer=pb.ReadRequest.SerializeToString,
            response_deserializer=None,
        )
        self.settings = settings
        self.origin = str(uuid.uuid4())  # this process, as the origin of what it publishes

    def authenticate(
        self, metadata: Mapping[str, str], identity: Sequence[str], peer: str, cert_expires: float = 0.0
    ) -> Caller:
        """The caller of a watch or publish; GatewayError UNAUTHENTICATED if none verifies."""
        if not self.guard.enabled:
            return Caller()
        try:
            principal = self.guard.principal(metadata, identity, peer, cert_expires)
        except security.Unauthenticated as e:
            raise GatewayError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", str(e)) from None
        auth = metadata.get("authorization", "")
        return Caller(principal, auth if principal.how in ("token", "jwt") else "")

    def authorize(self, caller: Caller, needs: list[Need], peer: str = "") -> None:
        if not self.guard.enabled:
            return
        try:
            self.guard.check(caller.principal, needs, peer)
        except security.Denied as e:
            raise denied(str(e), e.principal, e.action, e.resource) from None

    def subscriber(self, request: gwpb.WatchRequest, encoder: Encoder) -> tuple[Subscriber, int | None]:
        """A subscriber for a request, and its start cursor (None: live); raises GatewayError."""
        for field in ("streams", "stream_prefixes", "event_types"):
            names = getattr(request, field)
            if len(names) > MAX_FILTER_ENTRIES:
                raise GatewayError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "LIMIT_EXCEEDED",
                    f"{field}: at most {MAX_FILTER_ENTRIES} names, asked {len(names)}",
                    limit="max_filter_entries",
                    value=len(names),
                    max=MAX_FILTER_ENTRIES,
                    field=field,
                )
        for i, name in enumerate(request.streams):
            check_name(name, f"streams[{i}]")
        for i, prefix in enumerate(request.stream_prefixes):
            check_name(prefix, f"stream_prefixes[{i}]")
        for i, type_ in enumerate(request.event_types):
            check_name(type_, f"event_types[{i}]")
        if request.form not in gwpb.DeliveryForm.values():
            raise invalid(f"form: unknown delivery form {request.form}", "form")
        if request.overflow not in gwpb.OverflowPolicy.values():
            raise invalid(f"overflow: unknown policy {request.overflow}", "overflow")
        s = self.settings
        if request.buffer_size > s.max_buffer_size:
            raise GatewayError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "LIMIT_EXCEEDED",
                f"buffer_size: at most {s.max_buffer_size}, asked {request.buffer_size}",
                limit="max_buffer_size",
                value=request.buffer_size,
                max=s.max_buffer_size,
            )
        filt = Filter(
            frozenset(request.streams), tuple(request.stream_prefixes), frozenset(request.event_types)
        )
        form = request.form or wire.FULL
        sub = Subscriber(
            filt,
            form,
            encoder,
            request.buffer_size or s.buffer_size,
            request.overflow,
            ephemeral=not request.exclude_ephemeral,
        )
        start = request.position if request.WhichOneof("start") == "position" else None
        if start is not None and start < 1:
            raise invalid("position: cursors start at 1", "position")
        return sub, start

    async def _ready(self) -> None:
        try:
            await asyncio.wait_for(self.hub.ready.wait(), READY_TIMEOUT)
        except TimeoutError:
            raise unavailable(f"the gateway has not reached the store at {self.settings.store} yet") from None

    async def watch(
        self,
        sub: Subscriber,
        start: int | None,
        fmt: Format,
        write: Write,
        heartbeat: float,
        caller: Caller = Caller(),
        needs: list[Need] | None = None,
    ) -> None:
        """Run a session in the calling task (a transport's handler). A DISCONNECT subscriber
        that falls behind has this task cancelled by the hub; it ends in a GatewayError
        (SUBSCRIBER_TOO_SLOW) carrying the cursor to watch again from. A policy reload that
        revokes ``needs`` ends it with PERMISSION_DENIED."""
        task = asyncio.current_task()
        assert task is not None
        if sub.policy == DISCONNECT:
            sub.on_disconnect = task.cancel
        live = self.guard.register(caller.principal, needs) if needs and self.guard.enabled else None
        try:
            await self.session(sub, start, fmt, write, heartbeat, caller)
        except asyncio.CancelledError:
            if live is not None and live.lapsed and live.revoked is None:
                task.uncancel()
                message = f"{caller.principal.name}: {live.lapsed}"
                raise GatewayError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", message) from None
            if live is not None and live.revoked is not None:
                task.uncancel()
                action, resource, kind = live.revoked
                what = f"{kind[:-1]} {resource}"
                name = caller.principal.name
                raise denied(
                    f"{name} may no longer {action} {what}: the policy changed", name, action, what
                ) from None
            if not (sub.disconnect and task.uncancel() == 0):
                raise  # the client went away, or the server is stopping
            raise GatewayError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "SUBSCRIBER_TOO_SLOW",
                f"more than {sub.limit} events waited for this subscriber; watch again from position"
                f" {sub.cursor}",
                position=sub.cursor,
                buffer_size=sub.limit,
            ) from None

    async def session(
        self,
        sub: Subscriber,
        start: int | None,
        fmt: Format,
        write: Write,
        heartbeat: float,
        caller: Caller = Caller(),
    ) -> None:
        """Serve one subscriber until it goes, the gateway closes, or its policy ends it."""
        hub = self.hub
        await self._ready()
        max_batch = self.settings.max_batch
        sub.heartbeat = heartbeat
        try:
            # Registered inside the try: a subscriber that goes while its first message is
            # written (its write fails, its call is cancelled) leaves the hub at once.
            if start is None:
                hub.register(sub)
                await write(fmt.caught_up(sub.cursor))
            else:
                await self._catch_up(sub, start, fmt, write, caller, resume=True)
            while not sub.closed:
                if sub.fell_behind:
                    sub.fell_behind = False
                    await write(fmt.fell_behind(sub.cursor))
                    await self._catch_up(sub, sub.cursor, fmt, write, caller, resume=False)
                    continue
                if not (sub.chunks or sub.messages or sub.gap or sub.beat or sub.messages_dropped):
                    sub.wakeup.clear()
                    await sub.wakeup.wait()  # the hub wakes it: flush round, heartbeat, overflow, close
                    continue
                if sub.dirty and not (sub.messages or sub.gap or sub.beat or sub.messages_dropped):
                    sub.wakeup.clear()
                    await sub.wakeup.wait()  # events queued: they go in the next flush round
                    continue
                if sub.beat:
                    sub.beat = False
                    if not (sub.chunks or sub.messages or sub.gap):  # otherwise what follows is the beat
                        if sub.live:
                            sub.cursor = max(sub.cursor, hub.position + 1)
                        await write(fmt.heartbeat(hub.position, sub.cursor))
                if sub.messages:
                    body = b"".join(sub.take_messages())
                    if body:
                        await write(fmt.ephemeral(body, sub.cursor))
                if sub.messages_dropped:
                    count, sub.messages_dropped = sub.messages_dropped, 0
                    await write(fmt.ephemeral_dropped(count, sub.cursor))
                if sub.gap:
                    lo, hi = sub.gap
                    sub.gap = None
                    sub.cursor = max(sub.cursor, hi)
                    await write(fmt.gap(gwpb.Gap.REASON_DROPPED, lo, hi, sub.cursor))
                if sub.chunks:
                    body, last = sub.take(max_batch)
                    sub.cursor = hub.position + 1 if not sub.chunks and sub.live else last + 1
                    await write(fmt.events(body, sub.cursor))
                sub.last_sent = time.monotonic()
        finally:
            hub.unregister(sub)

    async def _catch_up(
        self, sub: Subscriber, cursor: int, fmt: Format, write: Write, caller: Caller, resume: bool
    ) -> None:
        """Serve the subscriber from the store up to the hub's position, then join the hub."""
        filt, form = sub.filt, sub.form
        req = pb.ReadRequest(
            filter=pb.Filter(stream_prefixes=filt.store_prefixes(), event_types=sorted(filt.types)),
            notifications_only=form == wire.NOTIFICATION,
            batch_size=self.settings.max_batch,
        )
        exact = bool(filt.streams)
        backoff = 0.05
        while True:
            getattr(req, "from").position = cursor
            head = -1
            try:
                async for raw in self._read(req, metadata=caller.metadata()):
                    msg = pb.ReadResponse.FromString(raw)
                    if msg.HasField("header"):
                        head = msg.header.head_position
                        first = msg.header.first_position
                        if resume and first > cursor:
                            await write(fmt.gap(gwpb.Gap.REASON_REMOVED_BY_RETENTION, cursor, first, cursor))
                        resume = False
                        continue
                    events = msg.events
                    records = wire.records_from_read(raw, events)
                    if exact:
                        records = [r for r in records if filt.matches(r.stream, r.type)]
                    if events:
                        cursor = events[-1].position + 1
                    if records:
                        await write(fmt.events(sub.encoder(records, form), cursor))
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise GatewayError(
                        e.code(), "STORE_UNAVAILABLE", f"catch-up read failed: {e.details()}"
                    ) from e
                log.info("catch-up read interrupted (%s); retrying", e.code().name)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.reconnect_backoff)
                continue
            cursor = max(cursor, head + 1)
            if head >= self.hub.position and not sub.closed:
                self.hub.register(sub, cursor)  # no await since the read ended: nothing slips between
                await write(fmt.caught_up(sub.cursor))
                return
            if sub.closed:
                return

    async def publish(
        self,
        request: gwpb.PublishRequest,
        caller: Caller = Caller(),
    ) -> gwpb.PublishResponse:
        """Relay through the store to every gateway's subscribers, and deliver to this one's.

        The store checks the message first (its size against max_event_bytes, the rules of
        names and fields): one it refuses reaches no subscriber. One the store cannot take
        now (unreachable, timed out) still reaches this gateway's subscribers."""
        self.authorize(caller, [("publish", request.stream, "streams")])
        check_name(request.stream, "stream", writing=True)
        check_name(request.type, "type")
        field, problem = event_fields_problem(request.content_type, request.metadata)
        if field:
            raise invalid(problem, field)
        try:
            eid = parse_uuid(request.id)[1] if request.id else uuid7_text()
        except ValueError:
            raise invalid(f"id is not a UUID: {request.id[:64]!r}", "id") from None
        ttl = request.time_to_live.ToNanoseconds() / 1e9 if request.HasField("time_to_live") else 0.0
        if not 0 <= ttl <= MAX_TTL:
            raise invalid(f"time_to_live: 0 to {MAX_TTL:.0f} seconds", "time_to_live")
        ttl = ttl or self.settings.ephemeral_ttl
        published = _now()
        # Its deadline in the subscribers' queues is its stated expiry, not ttl after the
        # store's relay below answered: under load that came seconds later, and a stalled
        # subscriber was sent a message past the expiry it carried.
        deadline = time.monotonic() + ttl
        expires = timestamp_pb2.Timestamp()
        expires.FromNanoseconds(published.ToNanoseconds() + int(ttl * 1e9))
        msg = pb.EphemeralMessage(
            id=eid,
            stream=request.stream,
            type=request.type,
            data=request.data,
            metadata=request.metadata,
            content_type=request.content_type,
            published=published,
            expires=expires,
            origin=self.origin,
        )
        relayed = 0
        try:
            resp = await self.store.Broadcast(msg, timeout=5, metadata=caller.metadata())
            relayed = max(0, resp.subscriptions - 1)  # less this gateway's own feed
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise GatewayError(e.code(), e.code().name, e.details() or "refused by the store") from e
            if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                refused = from_rpc_error(e)  # the store's reason and metadata, passed on
                reason = refused.reason or "INVALID_ARGUMENT"
                raise GatewayError(e.code(), reason, refused.message, **refused.metadata) from e
            log.warning("published %s here only: the store did not relay it (%s)", msg.id, e.code().name)
        # The store's copy comes back through this gateway's feed and is skipped (same origin).
        count = self.hub.publish(wire.ephemeral_record(msg), deadline)
        return gwpb.PublishResponse(id=msg.id, subscribers=count, relayed=relayed)
