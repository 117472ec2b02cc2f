"""The fan-out: each batch from the live feed goes to every matching subscriber.

Subscribers with the same filter, delivery form and encoding share one *group*: for each
batch the group's matching events are found and serialised once, and the same bytes are
queued for every member. Queuing never waits on a subscriber; a subscriber whose queue
passes its limit is handled by its overflow policy at once (see Subscriber.overflow).

Subscribers are woken in rounds, not per batch: the first batch queued for an idle
subscriber marks it, and one timer per flush interval wakes every marked subscriber. The
interval grows with the number of subscribers (``subscribers / message_budget`` seconds),
so under load each subscriber gets fewer, larger messages and the messages per second
stay near the budget, instead of every batch becoming one message per subscriber.
Heartbeats come from one ticker for all subscribers, not a timer each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sluice.v1 import gateway_pb2 as gwpb
from sluice_gateway.wire import Record

STREAM_INDEX_SIZE = 100_000  # stream names whose matching groups are remembered
CATCH_UP = gwpb.OVERFLOW_POLICY_CATCH_UP
DROP = gwpb.OVERFLOW_POLICY_DROP
DISCONNECT = gwpb.OVERFLOW_POLICY_DISCONNECT


@dataclasses.dataclass(frozen=True, slots=True)
class Filter:
    """Exact streams or stream prefixes (either matches; both empty: all), and event types."""

    streams: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    types: frozenset[str] = frozenset()

    @property
    def everything(self) -> bool:
        return not (self.streams or self.prefixes or self.types)

    def matches(self, stream: str, type_: str) -> bool:
        if self.types and type_ not in self.types:
            return False
        return self.matches_stream(stream)

    def matches_stream(self, stream: str) -> bool:
        if not (self.streams or self.prefixes):
            return True
        return stream in self.streams or (bool(self.prefixes) and stream.startswith(self.prefixes))

    def store_prefixes(self) -> list[str]:
        """Prefixes for a store read that returns at least the matching events."""
        if not (self.streams or self.prefixes):
            return []
        return sorted(set(self.prefixes) | self.streams)


# How a group's chunk is built for one encoding.
Encoder = Callable[[list[Record], int], bytes]


class Subscriber:
    """One subscriber's queue at the gateway, and what happened to it while it was not reading."""

    def __init__(
        self,
        filt: Filter,
        form: int,
        encoder: Encoder,
        limit: int,
        policy: int,
        ephemeral: bool = True,
    ) -> None:
        self.filt = filt
        self.form = form
        self.encoder = encoder
        self.limit = limit
        self.policy = policy or CATCH_UP
        self.ephemeral = ephemeral
        self.key = (filt, form, encoder)
        self.chunks: deque[tuple[bytes, int, int]] = deque()  # (bytes, events, last position)
        self.queued = 0  # events in chunks
        self.skip_below = 0  # just joined past the hub's position: ignore events below this
        self.messages: deque[tuple[float, bytes]] = deque()  # (expires, ephemeral chunk)
        self.message_bytes = 0  # in messages
        self.next_expiry = float("inf")  # the soonest time to live among messages
        self.messages_dropped = 0  # expired or pushed out, not yet reported
        self.cursor = 1  # every matching event below it was delivered, queued or reported
        self.gap: tuple[int, int] | None = None  # DROP: positions skipped, to report
        self.fell_behind = False  # CATCH_UP: left the fan-out, to be served from the store
        self.disconnect = False  # DISCONNECT: to be ended with RESOURCE_EXHAUSTED
        self.live = False
        self.closed = False
        self.dirty = False  # waiting for the next flush round
        self.beat = False  # a heartbeat is due
        self.heartbeat = 5.0
        self.last_sent = 0.0
        self.wakeup = asyncio.Event()
        self.on_disconnect: Callable[[], object] | None = None

    def take(self, max_events: int, max_bytes: int = 1 << 20) -> tuple[bytes, int]:
        """Queued events for one message (at least one chunk, then up to the limits), and the
        last position they hold."""
        chunks = self.chunks
        body, n, last = chunks.popleft()
        out = [body]
        size = len(body)
        while chunks and n + chunks[0][1] <= max_events and size + len(chunks[0][0]) <= max_bytes:
            body, k, last = chunks.popleft()
            out.append(body)
            n += k
            size += len(body)
        self.queued -= n
        return b"".join(out), last

    def take_messages(self) -> list[bytes]:
        """Queued published messages still within their time to live (the rest are counted
        as dropped)."""
        now = time.monotonic()
        out = [chunk for expires, chunk in self.messages if expires > now]
        self.messages_dropped += len(self.messages) - len(out)
        self.messages.clear()
        self.message_bytes = 0
        self.next_expiry = float("inf")
        return out

    def expire_messages(self, now: float) -> None:
        """Drop queued published messages past their time to live."""
        if self.next_expiry > now:
            return
        kept = deque(m for m in self.messages if m[0] > now)
        self.messages_dropped += len(self.messages) - len(kept)
        self.message_bytes = sum(len(c) for _, c in kept)
        self.next_expiry = min((e for e, _ in kept), default=float("inf"))
        self.messages = kept
        self.wakeup.set()  # it has a drop to report


#: Messages a second the flush rounds aim for under load, by default (``--message-budget``).
MESSAGE_BUDGET = 50_000


class Hub:
    """Subscribers by group; the live feed calls dispatch() with each batch in position order."""

    def __init__(
        self,
        flush_interval: float = 0.0,
        message_budget: int = MESSAGE_BUDGET,
        ephemeral_bytes: int = 4 << 20,
    ) -> None:
        self.flush_interval = flush_interval
        self.message_budget = message_budget
        self.ephemeral_bytes = ephemeral_bytes  # published messages queued per subscriber, at most
        self._dirty: list[Subscriber] = []
        self._flush_at: asyncio.TimerHandle | None = None
        self._live: set[Subscriber] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.position = 0  # the newest position dispatched
        self.ready = asyncio.Event()  # set once the feed has told the head
        self._groups: dict[tuple[Any, ...], list[Subscriber]] = {}
        self._by_stream: dict[str, list[tuple[Any, ...]]] = {}
        self.subscribers = 0
        self.deliveries = 0  # events queued, counted per subscriber
        self.drops = 0
        self.catch_ups = 0
        self.disconnects = 0

    def __len__(self) -> int:
        return self.subscribers

    def queued(self) -> int:
        """Events waiting in subscribers' queues now (read when metrics are scraped)."""
        return sum(n for subs in self._groups.values() for sub in subs for _, n, _ in sub.chunks)

    def register(self, sub: Subscriber, cursor: int = 0) -> None:
        """Join the live fan-out. The subscriber has every matching event below ``cursor``
        (default: everything dispatched so far)."""
        sub.cursor = max(cursor, self.position + 1)
        sub.skip_below = cursor if cursor > self.position + 1 else 0
        sub.live = True
        sub.last_sent = time.monotonic()
        group = self._groups.get(sub.key)
        if group is None:
            group = self._groups[sub.key] = []
            self._by_stream.clear()  # a new group: stream look-ups are computed afresh
        group.append(sub)
        self._live.add(sub)
        self.subscribers += 1
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._heartbeats())

    def unregister(self, sub: Subscriber) -> None:
        if not sub.live:
            return
        sub.live = False
        self._live.discard(sub)
        group = self._groups.get(sub.key)
        if group is not None:
            group.remove(sub)
            if not group:
                del self._groups[sub.key]
                self._by_stream.clear()
        self.subscribers -= 1

    def restart(self) -> None:
        """The store was replaced: positions start again at 1, for the hub and every live
        subscriber (each keeps its filter and gets the new store's events from its start)."""
        self.position = 0
        for sub in self._live:
            sub.cursor = 1
            sub.skip_below = 0

    def advance(self, position: int) -> None:
        """The feed reached ``position`` without events (caught up, heartbeat)."""
        if position > self.position:
            self.position = position
        self.ready.set()

    def _keys_for(self, stream: str) -> list[tuple[Any, ...]]:
        """The groups whose stream filter takes this stream (cached per stream name)."""
        keys = self._by_stream.get(stream)
        if keys is None:
            if len(self._by_stream) >= STREAM_INDEX_SIZE:
                self._by_stream.clear()
            keys = self._by_stream[stream] = [k for k in self._groups if k[0].matches_stream(stream)]
        return keys

    def dispatch(self, records: list[Record]) -> None:
        """Queue a batch (in position order, above self.position) for every matching subscriber."""
        if not records:
            return
        last = records[-1].position
        # Each event visits only the groups its stream matches (an index by stream name),
        # not every group: many subscribers with different filters stay cheap.
        matched: dict[tuple[Any, ...], list[Record]] = {}
        for r in records:
            for key in self._keys_for(r.stream):
                types = key[0].types
                if types and r.type not in types:
                    continue
                got = matched.get(key)
                if got is None:
                    matched[key] = [r]
                else:
                    got.append(r)
        for key, mine in matched.items():
            subs = self._groups.get(key)
            if subs:
                self._fan(key, mine, subs, last)
        self.position = last
        self.ready.set()

    def _fan(self, key: tuple[Any, ...], matched: list[Record], subs: list[Subscriber], last: int) -> None:
        """One group's share of a batch: serialised once, queued for every member."""
        _, form, encoder = key
        chunk = encoder(matched, form)
        n = len(matched)
        first = matched[0].position
        for sub in list(subs):
            if sub.skip_below:
                if sub.skip_below > last:
                    continue
                mine = [r for r in matched if r.position >= sub.skip_below]
                sub.skip_below = 0
                if mine:
                    self._queue(sub, encoder(mine, form), len(mine), mine[0].position, last)
                continue
            self._queue(sub, chunk, n, first, last)

    def _queue(self, sub: Subscriber, chunk: bytes, n: int, first: int, last: int) -> None:
        sub.chunks.append((chunk, n, last))
        sub.queued += n
        self.deliveries += n
        if sub.queued > sub.limit and len(sub.chunks) > 1:
            self._overflow(sub, first)
            sub.wakeup.set()
        elif not sub.dirty:
            sub.dirty = True
            self._dirty.append(sub)
            if self._flush_at is None:
                delay = max(self.flush_interval, self.subscribers / self.message_budget)
                loop = asyncio.get_running_loop()
                if delay < 0.001:  # timers this short are coarse: flush at the end of this turn
                    self._flush_at = loop.call_soon(self._flush)  # type: ignore[assignment]
                else:
                    self._flush_at = loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        """One round: wake every subscriber something was queued for."""
        self._flush_at = None
        dirty, self._dirty = self._dirty, []
        for sub in dirty:
            sub.dirty = False
            sub.wakeup.set()

    async def _heartbeats(self) -> None:
        """Mark idle live subscribers for a heartbeat (one ticker for all of them)."""
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for sub in self._live:
                if not sub.beat and now - sub.last_sent >= sub.heartbeat:
                    sub.beat = True
                    sub.wakeup.set()
                if sub.messages:
                    sub.expire_messages(now)

    def _overflow(self, sub: Subscriber, newest_first: int) -> None:
        """Apply the subscriber's policy; it never makes the fan-out wait."""
        if sub.policy == DROP:
            # Keep the newest chunk; report everything queued before it as a gap.
            newest = sub.chunks.pop()
            lo = sub.gap[0] if sub.gap else sub.cursor
            sub.gap = (lo, newest_first)
            self.drops += sub.queued - newest[1]
            sub.chunks.clear()
            sub.chunks.append(newest)
            sub.queued = newest[1]
            return
        self.unregister(sub)
        sub.chunks.clear()
        sub.queued = 0
        if sub.policy == DISCONNECT:
            sub.disconnect = True
            self.disconnects += 1
            if sub.on_disconnect is not None:
                sub.on_disconnect()
        else:
            sub.fell_behind = True
            self.catch_ups += 1

    def publish(self, record: Record, expires: float) -> int:
        """Queue a published message for the matching live subscribers until ``expires``
        (monotonic); how many. One already past it reaches none."""
        if expires <= time.monotonic():
            return 0
        count = 0
        for key in self._keys_for(record.stream):
            filt, form, encoder = key
            if filt.types and record.type not in filt.types:
                continue
            subs = self._groups[key]
            chunk = encoder([record], form)
            size = len(chunk)
            for sub in subs:
                if not sub.ephemeral:
                    continue
                while sub.messages and (
                    len(sub.messages) >= sub.limit or sub.message_bytes + size > self.ephemeral_bytes
                ):
                    _, old = sub.messages.popleft()  # the oldest would expire first anyway
                    sub.message_bytes -= len(old)
                    sub.messages_dropped += 1
                    self.drops += 1
                if size > self.ephemeral_bytes:
                    sub.messages_dropped += 1
                    self.drops += 1
                else:
                    sub.messages.append((expires, chunk))
                    sub.message_bytes += size
                    sub.next_expiry = min(sub.next_expiry, expires)
                    count += 1
                sub.wakeup.set()
        return count

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for subs in self._groups.values():
            for sub in subs:
                sub.closed = True
                sub.wakeup.set()
