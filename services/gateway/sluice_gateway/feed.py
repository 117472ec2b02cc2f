"""The gateway's one live subscription to the store.

It subscribes to all streams, full events, and hands each batch to the hub. When the
store goes away it reconnects with backoff and resumes from the hub's position, so
subscribers see neither a gap nor a duplicate across a store restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from sluice import eventbytes
from sluice.v1 import streams_pb2 as pb
from sluice_gateway import wire
from sluice_gateway.hub import Hub
from sluice_gateway.wire import Record

log = logging.getLogger(__name__)

_TAG_EVENTS = eventbytes.TAG_SUBSCRIBE_EVENTS[0]  # the first byte of a SubscribeResponse{events}
_SUBSCRIBE = "/sluice.v1.Streams/Subscribe"


class Feed:
    """Runs until closed: subscribe, dispatch, reconnect."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        hub: Hub,
        max_backoff: float = 2.0,
        on_batch: Callable[[list[Record]], None] | None = None,
        origin: str = "",
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        # Raw bytes in: each event is cut out of the message as the store serialized it.
        self._subscribe = channel.unary_stream(
            _SUBSCRIBE,
            request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=None,
        )
        self.hub = hub
        self.max_backoff = max_backoff
        self.on_batch = on_batch
        self.origin = origin  # this gateway's id: its own published messages come back; skip them
        self.connected = asyncio.Event()
        self.on_state = on_state  # called with True when the feed is live, False when it ends
        self.reconnects = 0
        self.store_id = ""  # the store's identity, from its first caught-up message
        self._task: asyncio.Task[None] | None = None

    def _replaced(self, store_id: str) -> bool:
        """Whether the store at the address is another one than before (a new or emptied
        database): then its positions start again, and so does the hub."""
        known, self.store_id = self.store_id, store_id or self.store_id
        if not (known and store_id and store_id != known):
            return False
        log.error(
            "the store was replaced (store id %s, before %s): its positions start again; following it"
            " from its beginning, and live subscribers with it",
            store_id,
            known,
        )
        self.hub.restart()
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _request(self) -> pb.SubscribeRequest:
        req = pb.SubscribeRequest(max_batch=1000, heartbeat_interval_ms=1000, include_ephemeral=True)
        if self.hub.ready.is_set():
            getattr(req, "from").position = self.hub.position + 1
        else:
            getattr(req, "from").end.SetInParent()
        return req

    async def _run(self) -> None:
        backoff = 0.05
        hub = self.hub
        while True:
            call = self._subscribe(self._request())
            try:
                async for raw in call:
                    assert isinstance(raw, bytes)
                    if raw and raw[0] == _TAG_EVENTS:
                        msg = pb.SubscribeResponse.FromString(raw)
                        records = wire.records_from_feed(raw, msg)
                        hub.dispatch(records)
                        if self.on_batch is not None:
                            self.on_batch(records)
                        continue
                    msg = pb.SubscribeResponse.FromString(raw)
                    kind = msg.WhichOneof("content")
                    if kind == "caught_up" and self._replaced(msg.caught_up.store_id):
                        break  # follow the new store from its beginning
                    if kind == "caught_up":
                        hub.advance(msg.caught_up.position - 1)
                        if not self.connected.is_set():
                            log.info("live feed from the store from position %d", msg.caught_up.position)
                            self.connected.set()
                            if self.on_state is not None:
                                self.on_state(True)
                        backoff = 0.05
                    elif kind == "checkpoint":
                        hub.advance(msg.checkpoint.position - 1)
                    elif kind == "ephemeral" and msg.ephemeral.origin != self.origin:
                        # Published on another gateway and relayed by the store.
                        m = msg.ephemeral
                        left = (m.expires.ToNanoseconds() - time.time_ns()) / 1e9
                        if left > 0:
                            hub.publish(wire.ephemeral_record(m), time.monotonic() + left)
            except grpc.aio.AioRpcError as e:
                # Once per outage at warning level; the retries after it at debug level.
                level = logging.WARNING if self.connected.is_set() or not self.reconnects else logging.DEBUG
                log.log(level, "live feed from the store ended: %s %s; retrying", e.code().name, e.details())
            finally:
                call.cancel()
            if self.connected.is_set():
                self.connected.clear()
                if self.on_state is not None:
                    self.on_state(False)
            self.reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)
