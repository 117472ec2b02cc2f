"""Live fan-out inside the store: committed events go to every matching live subscription.

Each subscription has a bounded buffer. A subscriber that lets it overflow is marked
and falls back to catch-up from storage: the broker never blocks on a subscriber and
never holds more than ``limit`` events for one.

Broadcast (never stored) messages wait in a per-subscriber queue bounded in bytes, with a
bound on all queues together; the oldest go first when a queue is full, and each is
dropped at its time to live wherever it waits. The subscriber is told how many it missed
(``ephemeral_dropped``). A stalled subscriber costs at most its byte budget.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from sluice_store.storage.base import P_POSITION, P_STREAM, P_TYPE, LiveRow, StreamFilter


class LiveSubscription:
    """One subscriber's live buffer."""

    __slots__ = (
        "buffer",
        "checkpoint_every",
        "closed",
        "ephemeral",
        "ephemeral_bytes",
        "ephemeral_dropped",
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
        # (expires in ns since the epoch, serialized SubscribeResponse{ephemeral}), for
        # subscribers that asked for them.
        self.ephemeral: deque[tuple[int, bytes]] | None = deque() if ephemeral else None
        self.ephemeral_bytes = 0
        self.ephemeral_dropped = 0  # not yet reported to the subscriber
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

    def __init__(self, ephemeral_bytes: int = 4 << 20, ephemeral_total_bytes: int = 64 << 20) -> None:
        self._subs: set[LiveSubscription] = set()
        self.fell_behind = 0  # live subscribers moved back to catch-up, since start
        self.closed = False
        self.ephemeral_budget = ephemeral_bytes  # per subscriber
        self.ephemeral_total_budget = ephemeral_total_bytes
        self.ephemeral_bytes = 0  # queued now, all subscribers

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
        self.ephemeral_bytes -= sub.ephemeral_bytes
        sub.ephemeral_bytes = 0
        if sub.ephemeral:
            sub.ephemeral.clear()

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
                    self.fell_behind += 1
                sub.wakeup.set()
            elif sub.filt and last >= sub.notify_at:
                sub.wakeup.set()

    def broadcast(self, message: bytes, stream: str, type_: str, expires_ns: int) -> int:
        """Queue a never-stored message for the live subscriptions that take ephemeral
        messages and match it; how many. A queue over its byte budget drops its oldest."""
        count = 0
        size = len(message)
        for sub in self._subs:
            queue = sub.ephemeral
            if queue is None or sub.closed:
                continue
            if sub.stream:
                if sub.stream != stream:
                    continue
            elif sub.filt and not sub.filt.matches(stream, type_):
                continue
            while queue and sub.ephemeral_bytes + size > self.ephemeral_budget:
                self._drop(sub, queue.popleft()[1])
            if size > self.ephemeral_budget or self.ephemeral_bytes + size > self.ephemeral_total_budget:
                sub.ephemeral_dropped += 1  # no room for it at all
            else:
                queue.append((expires_ns, message))
                sub.ephemeral_bytes += size
                self.ephemeral_bytes += size
                count += 1
            sub.wakeup.set()
        return count

    def _drop(self, sub: LiveSubscription, body: bytes) -> None:
        sub.ephemeral_bytes -= len(body)
        self.ephemeral_bytes -= len(body)
        sub.ephemeral_dropped += 1

    def pop_ephemeral(self, sub: LiveSubscription) -> bytes | None:
        """The subscriber's next unexpired message (expired ones are dropped), or None."""
        queue = sub.ephemeral
        now = time.time_ns()
        while queue:
            expires, body = queue.popleft()
            sub.ephemeral_bytes -= len(body)
            self.ephemeral_bytes -= len(body)
            if expires > now:
                return body
            sub.ephemeral_dropped += 1
        return None

    def expire_ephemeral(self) -> int:
        """Drop every queued message past its time to live; how many."""
        now = time.time_ns()
        dropped = 0
        for sub in self._subs:
            queue = sub.ephemeral
            if not queue:
                continue
            kept = deque(item for item in queue if item[0] > now)
            if len(kept) != len(queue):
                for expires, body in queue:
                    if expires <= now:
                        self._drop(sub, body)
                        dropped += 1
                sub.ephemeral = kept
                sub.wakeup.set()  # it has a drop to report
        return dropped

    def close(self) -> None:
        """End every live subscription (shutdown)."""
        self.closed = True
        for sub in self._subs:
            sub.closed = True
            sub.wakeup.set()
