"""Subscriptions: catch up from storage, hand over to the live broker without a gap or a
duplicate, fall back to catching up when a subscriber falls behind."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from sluice import eventbytes
from sluice.v1 import streams_pb2 as pb
from sluice_store import positions
from sluice_store.broker import Broker, LiveSubscription
from sluice_store.config import Settings
from sluice_store.errors import InvalidArgument, LimitExceeded
from sluice_store.positions import start_point, stream_filter
from sluice_store.retention import now_us
from sluice_store.rpc import Response, timestamp
from sluice_store.storage.base import P_POSITION, P_REVISION, Row, Start, State, Storage, StreamFilter


class Subscriptions:
    """Serves Subscribe."""

    def __init__(
        self, storage: Storage, broker: Broker, settings: Settings, check_name: Callable[..., None]
    ) -> None:
        self.storage = storage
        self.broker = broker
        self.settings = settings
        self.check_name = check_name  # the stream-name rules, as appends apply them
        self.open = 0  # Subscribe calls being served (catching up or live)

    async def Subscribe(self, request: pb.SubscribeRequest) -> AsyncIterator[Response]:
        most = self.settings.max_subscriptions
        if most and self.open >= most:
            raise LimitExceeded(
                f"{self.open} subscriptions are open in this store process; max_subscriptions is {most}",
                limit="max_subscriptions",
                value=self.open,
                max=most,
            )
        self.open += 1
        try:
            # Closed here, not when collected: it unregisters its live subscription.
            async with contextlib.aclosing(self._subscribe(request)) as messages:
                async for msg in messages:
                    yield msg
        finally:
            self.open -= 1

    async def _subscribe(self, request: pb.SubscribeRequest) -> AsyncGenerator[Response, None]:
        s = self.settings
        stream = request.stream
        heartbeat = (request.heartbeat_interval_ms / 1000) or s.heartbeat_interval
        batch = min(request.max_batch or s.max_read_batch, s.max_read_batch)
        with_data = not request.notifications_only
        if stream:
            self.check_name(stream, writing=False)
            if request.HasField("filter"):
                raise InvalidArgument("filter applies to subscriptions to all streams only", field="filter")
        filt = StreamFilter() if stream else stream_filter(request.filter)
        cursor = _Cursor()
        await self._resolve_start(cursor, stream, start_point(request.__getattribute__("from"), "end"))
        sub = None
        try:
            while True:
                async for msg in self._catch_up(cursor, stream, filt, batch, with_data):
                    yield msg
                sub = self.broker.register(
                    stream, filt, s.subscriber_buffer, ephemeral=request.include_ephemeral
                )
                sub.notify_at = cursor.position + sub.checkpoint_every
                async for msg in self._catch_up(cursor, stream, filt, batch, with_data):
                    yield msg
                yield pb.SubscribeResponse(
                    caught_up=pb.CaughtUp(position=cursor.position, store_id=self.storage.store_id)
                )
                async for msg in self._live(sub, cursor, filt, batch, heartbeat, with_data):
                    yield msg
                self.broker.unregister(sub)
                if sub.closed:
                    return
                sub = None
                yield pb.SubscribeResponse(fell_behind=pb.FellBehind(position=cursor.position))
        finally:
            if sub is not None:
                self.broker.unregister(sub)

    async def _resolve_start(self, cursor: _Cursor, stream: str, start: Start) -> None:
        head = self.storage.head_position
        if not stream:
            cursor.position = await positions.position(self.storage, start, False)
            return
        meta = await self.storage.stream(stream)
        cursor.position = head + 1
        if start.kind == "end":
            cursor.revision = (meta.last_revision + 1) if meta else 0
        elif start.kind == "revision":
            cursor.revision = start.value
            cursor.position = 1
        elif start.kind in ("position", "time"):
            cursor.position = await positions.position(self.storage, start, False)
            cursor.revision = -1  # found on the first page
        else:
            cursor.revision = 0
            cursor.position = 1

    async def _catch_up(
        self, cursor: _Cursor, stream: str, filt: StreamFilter, batch: int, with_data: bool
    ) -> AsyncIterator[Response]:
        while True:
            if stream:
                meta = await self.storage.stream(stream)
                if meta is None or meta.state == State.TOMBSTONED:
                    return
                start = (
                    Start("position", cursor.position)
                    if cursor.revision < 0
                    else Start("revision", cursor.revision)
                )
                rows: list[Row] = await self.storage.read_stream(meta, start, False, batch, with_data)
                rows = [r for r in rows if r[P_POSITION] >= cursor.position]
                done = len(rows) < batch
                if rows:
                    cursor.revision = rows[-1][P_REVISION] + 1
                elif cursor.revision < 0:
                    cursor.revision = meta.last_revision + 1
            else:
                rows, nxt, done = await self.storage.read_all(cursor.position, False, batch, filt, with_data)
            if rows:
                yield eventbytes.subscribe_events([eventbytes.event_bytes(r[4], r[5]) for r in rows])
                cursor.position = rows[-1][P_POSITION] + 1
            if not stream and nxt > cursor.position:
                cursor.position = nxt
                yield pb.SubscribeResponse(checkpoint=pb.Checkpoint(position=nxt))
            if done:
                return

    async def _live(
        self,
        sub: LiveSubscription,
        cursor: _Cursor,
        filt: StreamFilter,
        batch: int,
        heartbeat: float,
        with_data: bool,
    ) -> AsyncIterator[Response]:
        while not sub.closed:
            if sub.ephemeral:
                while (body := self.broker.pop_ephemeral(sub)) is not None:
                    yield body
            if sub.ephemeral_dropped:
                count, sub.ephemeral_dropped = sub.ephemeral_dropped, 0
                yield pb.SubscribeResponse(ephemeral_dropped=pb.EphemeralDropped(count=count))
                continue
            if not sub.buffer and not sub.overflowed:
                sub.wakeup.clear()
                if not await woken(sub.wakeup, heartbeat):
                    if sub.buffer or sub.overflowed or sub.closed:
                        continue  # a commit landed as the wait timed out: deliver it, skip nothing
                    if filt and sub.seen >= cursor.position:
                        cursor.position = sub.seen + 1
                        yield pb.SubscribeResponse(checkpoint=pb.Checkpoint(position=cursor.position))
                    yield pb.SubscribeResponse(
                        heartbeat=pb.Heartbeat(
                            store_id=self.storage.store_id,
                            head_position=self.storage.head_position,
                            time=timestamp(now_us()),
                        )
                    )
                    continue
            if sub.overflowed or sub.closed:
                return
            rows = [r for r in sub.take(batch) if r[P_POSITION] >= cursor.position]
            if rows:
                if with_data:
                    yield eventbytes.subscribe_events([eventbytes.event_bytes(r[4], r[5]) for r in rows])
                else:
                    yield eventbytes.subscribe_events([r[4] for r in rows])
                cursor.position = rows[-1][P_POSITION] + 1
                cursor.revision = rows[-1][P_REVISION] + 1
            elif filt and not sub.buffer and sub.seen >= sub.notify_at:
                cursor.position = max(cursor.position, sub.seen + 1)
                sub.notify_at = cursor.position + sub.checkpoint_every
                yield pb.SubscribeResponse(checkpoint=pb.Checkpoint(position=cursor.position))


async def woken(wakeup: asyncio.Event, seconds: float) -> bool:
    """Whether ``wakeup`` was set within ``seconds``. A deadline on the waiting task, not
    wait_for's task per wait: a commit reaches a live subscriber in one turn of the event
    loop instead of three."""
    try:
        async with asyncio.timeout(seconds):
            await wakeup.wait()
    except TimeoutError:
        return False
    return True


class _Cursor:
    """Where a subscription stands: next global position, and next revision for one stream."""

    __slots__ = ("position", "revision")

    def __init__(self) -> None:
        self.position = 1
        self.revision = 0
