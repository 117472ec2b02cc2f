"""Live fan-out inside the store: committed events go to every matching live subscription.

Each subscription has a bounded buffer. A subscriber that lets it overflow is marked
and falls back to catch-up from storage: the broker never blocks on a subscriber and
never holds more than ``limit`` events for one.
"""

from __future__ import annotations

import asyncio
from collections import deque

from sluice_store.storage.base import P_POSITION, P_STREAM, P_TYPE, LiveRow, StreamFilter


class LiveSubscription:
    """One subscriber's live buffer."""

    __slots__ = (
        "buffer",
        "checkpoint_every",
        "closed",
        "ephemeral",
        "filt",
        "limit",
        "notify_at",
        "overflowed",
        "seen",
        "stream",
        "wakeup",
    )

    def __init__(
        self, stream: str, filt: StreamFilter, limit: int, checkpoint_every: int, ephemeral: bool = False
    ) -> None:
        self.stream = stream
        # Serialized SubscribeResponse{ephemeral} messages, for subscribers that asked for them.
        self.ephemeral: deque[bytes] | None = deque() if ephemeral else None
        self.filt = filt
        self.limit = limit
        self.buffer: deque[LiveRow] = deque()
        self.overflowed = False
        self.closed = False
        self.seen = 0  # the last position published while registered, matching or not
        self.checkpoint_every = checkpoint_every
        self.notify_at = 0  # wake a filtered subscriber at this position for a checkpoint
        self.wakeup = asyncio.Event()

    def take(self, n: int) -> list[LiveRow]:
        buf = self.buffer
        if len(buf) <= n:
            rows = list(buf)
            buf.clear()
            return rows
        return [buf.popleft() for _ in range(n)]


class Broker:
    """Holds the live subscriptions and hands each commit to those it matches."""

    def __init__(self) -> None:
        self._subs: set[LiveSubscription] = set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._subs)

    def register(
        self,
        stream: str,
        filt: StreamFilter,
        limit: int,
        checkpoint_every: int = 1000,
        ephemeral: bool = False,
    ) -> LiveSubscription:
        sub = LiveSubscription(stream, filt, limit, checkpoint_every, ephemeral)
        sub.closed = self.closed
        self._subs.add(sub)
        return sub

    def unregister(self, sub: LiveSubscription) -> None:
        self._subs.discard(sub)

    def publish(self, rows: list[LiveRow]) -> None:
        """Called by storage after each commit, in position order."""
        last = rows[-1][P_POSITION]
        for sub in self._subs:
            if sub.overflowed:
                continue
            if sub.stream:
                matched = [r for r in rows if r[P_STREAM] == sub.stream]
            elif sub.filt:
                match = sub.filt.matches
                matched = [r for r in rows if match(r[P_STREAM], r[P_TYPE])]
            else:
                matched = rows
            sub.seen = last
            if matched:
                sub.buffer.extend(matched)
                if len(sub.buffer) > sub.limit:
                    sub.overflowed = True
                    sub.buffer.clear()
                sub.wakeup.set()
            elif sub.filt and last >= sub.notify_at:
                sub.wakeup.set()

    def broadcast(self, message: bytes, stream: str, type_: str) -> int:
        """Queue a never-stored message for the live subscriptions that take ephemeral
        messages and match it; how many. A full queue drops its oldest message."""
        count = 0
        for sub in self._subs:
            queue = sub.ephemeral
            if queue is None or sub.closed:
                continue
            if sub.stream:
                if sub.stream != stream:
                    continue
            elif sub.filt and not sub.filt.matches(stream, type_):
                continue
            if len(queue) >= sub.limit:
                queue.popleft()
            queue.append(message)
            sub.wakeup.set()
            count += 1
        return count

    def close(self) -> None:
        """End every live subscription (shutdown)."""
        self.closed = True
        for sub in self._subs:
            sub.closed = True
            sub.wakeup.set()
