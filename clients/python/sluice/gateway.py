"""The async Python client for the Sluice gateway: watch events, publish ephemeral messages."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import empty_pb2

from sluice.client import Connection
from sluice.credentials import Credentials
from sluice.errors import from_rpc_error
from sluice.v1 import gateway_pb2 as gwpb
from sluice.v1 import gateway_pb2_grpc as gwpb_grpc
from sluice.v1 import streams_pb2 as pb

DEFAULT_GATEWAY_ADDR = "127.0.0.1:50052"
FORMS = {"full": gwpb.DELIVERY_FORM_FULL, "notification": gwpb.DELIVERY_FORM_NOTIFICATION}
POLICIES = {
    "catch_up": gwpb.OVERFLOW_POLICY_CATCH_UP,
    "drop": gwpb.OVERFLOW_POLICY_DROP,
    "disconnect": gwpb.OVERFLOW_POLICY_DISCONNECT,
}

WatchItem = pb.RecordedEvent | pb.EphemeralMessage | pb.CaughtUp | pb.Heartbeat | pb.FellBehind | gwpb.Gap


@dataclasses.dataclass
class Cursor:
    """Where a watch stands: pass ``position`` as ``start`` to resume exactly."""

    position: int = 0


class GatewayClient(Connection):
    """A connection to a Sluice gateway. Use ``async with GatewayClient(addr) as g:``."""

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float | None = 30.0,
        options: Sequence[tuple[str, Any]] = (),
        credentials: Credentials | None = None,
    ) -> None:
        target = target or os.environ.get("SLUICE_GATEWAY_ADDR", DEFAULT_GATEWAY_ADDR)
        super().__init__(target, channel, options, timeout, credentials)
        self.stub = gwpb_grpc.GatewayStub(self._channel)

    async def watch_messages(self, request: gwpb.WatchRequest) -> AsyncGenerator[gwpb.WatchResponse, None]:
        """The raw WatchResponse messages of a watch."""
        call = self.stub.Watch(request)
        try:
            async for msg in call:
                yield msg
        except grpc.aio.AioRpcError as e:
            # Ended by close(): done. A call the server cancelled is not done (grpc.aio
            # reports that as cancelled() too): the caller must know to watch again.
            if e.code() == grpc.StatusCode.CANCELLED and self._closed:
                return
            raise from_rpc_error(e) from None
        finally:
            call.cancel()

    async def watch(
        self,
        streams: Iterable[str] = (),
        *,
        stream_prefixes: Iterable[str] = (),
        event_types: Iterable[str] = (),
        form: str = "full",
        start: int | None = None,
        overflow: str = "catch_up",
        buffer_size: int = 0,
        heartbeat_interval: float = 0.0,
        exclude_ephemeral: bool = False,
        cursor: Cursor | None = None,
    ) -> AsyncGenerator[WatchItem, None]:
        """Events (and control messages) matching a filter, from ``start`` (a cursor) or live.

        ``cursor``, when given, is kept at the position to resume from after each message.
        """
        req = gwpb.WatchRequest(
            streams=list(streams),
            stream_prefixes=list(stream_prefixes),
            event_types=list(event_types),
            form=FORMS[form],
            overflow=POLICIES[overflow],
            buffer_size=buffer_size,
            heartbeat_interval_ms=int(heartbeat_interval * 1000),
            exclude_ephemeral=exclude_ephemeral,
        )
        if start is None:
            req.live.CopyFrom(empty_pb2.Empty())
        else:
            req.position = start
        async for msg in self.watch_messages(req):
            kind = msg.WhichOneof("content")
            if kind == "events":
                for ev in msg.events.events:
                    yield ev
            elif kind == "ephemeral":
                for m in msg.ephemeral.messages:
                    yield m
            elif kind is not None:
                yield getattr(msg, kind)
            if cursor is not None:
                cursor.position = msg.position

    async def publish(
        self,
        stream: str,
        type: str,
        data: bytes = b"",
        *,
        metadata: Mapping[str, str] | None = None,
        ttl: float = 0.0,
        content_type: str = "",
    ) -> gwpb.PublishResponse:
        """Deliver a message to the matching subscribers connected now; never stored."""
        req = gwpb.PublishRequest(
            stream=stream, type=type, data=data, metadata=metadata or {}, content_type=content_type
        )
        if ttl:
            req.time_to_live.FromNanoseconds(int(ttl * 1e9))
        try:
            resp: gwpb.PublishResponse = await self.stub.Publish(req, timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        return resp
