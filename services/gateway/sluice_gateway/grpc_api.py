"""The gateway over gRPC: sluice.v1.Gateway's Watch and Publish, and how a watch's output
becomes serialized WatchResponse messages (assembled from the events' bytes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from sluice import eventbytes, security
from sluice.eventbytes import varint
from sluice.v1 import gateway_pb2 as gwpb
from sluice.v1 import streams_pb2 as pb
from sluice_gateway.hub import Encoder
from sluice_gateway.service import Caller, Gateway, GatewayError, watch_needs
from sluice_gateway.wire import Record

# WatchResponse content fields, and its cursor.
TAG_EVENTS = eventbytes.tag(gwpb.WatchResponse.DESCRIPTOR, "events")
TAG_EPHEMERAL = eventbytes.tag(gwpb.WatchResponse.DESCRIPTOR, "ephemeral")
_TAG_POSITION = eventbytes.tag(gwpb.WatchResponse.DESCRIPTOR, "position", 0)


def encode(records: Iterable[Record], form: int) -> bytes:
    """The EventBatch (or EphemeralBatch) body for these records: their entries, joined."""
    return b"".join([r.entry(form) for r in records])


def watch_message(field_tag: bytes, body: bytes, position: int) -> bytes:
    """A serialized WatchResponse with one length-delimited content field and the cursor."""
    return b"".join((field_tag, varint(len(body)), body, _TAG_POSITION, varint(position)))


# WatchResponse content fields.
TAG_EVENTS = eventbytes.tag(gwpb.WatchResponse.DESCRIPTOR, "events")
TAG_EPHEMERAL = eventbytes.tag(gwpb.WatchResponse.DESCRIPTOR, "ephemeral")


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


class GrpcFormat:
    """Serialized WatchResponse messages."""

    encoder: Encoder = encode

    def events(self, body: bytes, position: int) -> bytes:
        return watch_message(TAG_EVENTS, body, position)

    def ephemeral(self, body: bytes, position: int) -> bytes:
        return watch_message(TAG_EPHEMERAL, body, position)

    def caught_up(self, position: int) -> bytes:
        return gwpb.WatchResponse(
            caught_up=pb.CaughtUp(position=position), position=position
        ).SerializeToString()

    def heartbeat(self, head: int, position: int) -> bytes:
        hb = pb.Heartbeat(head_position=head, time=_now())
        return gwpb.WatchResponse(heartbeat=hb, position=position).SerializeToString()

    def fell_behind(self, position: int) -> bytes:
        msg = gwpb.WatchResponse(fell_behind=pb.FellBehind(position=position), position=position)
        return msg.SerializeToString()

    def gap(self, reason: int, lo: int, hi: int, position: int) -> bytes:
        g = gwpb.Gap(reason=reason, from_position=lo, to_position=hi)  # type: ignore[arg-type]
        return gwpb.WatchResponse(gap=g, position=position).SerializeToString()

    def ephemeral_dropped(self, count: int, position: int) -> bytes:
        dropped = pb.EphemeralDropped(count=count)
        return gwpb.WatchResponse(ephemeral_dropped=dropped, position=position).SerializeToString()


class GatewayService:
    """gRPC handlers for sluice.v1.Gateway (registered with byte-passing serializers)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings

    def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        guard = self.gateway.guard
        if not guard.enabled:
            return Caller()
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        mtls = guard.authenticator.mtls
        identity, expires = security.peer_certificate(context.auth_context()) if mtls else ([], 0.0)
        return self.gateway.authenticate(metadata, identity, context.peer(), expires)

    async def Watch(self, request: gwpb.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            caller = self._caller(context)
            needs = watch_needs(request)
            self.gateway.authorize(caller, needs, context.peer())
            sub, start = self.gateway.subscriber(request, encode)
        except GatewayError as e:
            await e.abort(context)
            return
        heartbeat = request.heartbeat_interval_ms / 1000 or self.settings.heartbeat_interval
        # The session runs in the handler's own task: writes from another task cost gRPC an
        # extra hop each (measured: twice the write time).
        try:
            await self.gateway.watch(sub, start, GrpcFormat(), context.write, heartbeat, caller, needs)
        except GatewayError as e:
            await e.abort(context)

    async def Publish(
        self, request: gwpb.PublishRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gwpb.PublishResponse:
        try:
            return await self.gateway.publish(request, self._caller(context))
        except GatewayError as e:
            await e.abort(context)
            raise AssertionError("unreachable") from None


def _identity(b: bytes) -> bytes:
    return b


def methods(service: GatewayService) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    return {
        "Watch": grpc.unary_stream_rpc_method_handler(
            service.Watch,
            request_deserializer=gwpb.WatchRequest.FromString,
            response_serializer=_identity,
        ),
        "Publish": grpc.unary_unary_rpc_method_handler(
            service.Publish,
            request_deserializer=gwpb.PublishRequest.FromString,
            response_serializer=gwpb.PublishResponse.SerializeToString,
        ),
    }
