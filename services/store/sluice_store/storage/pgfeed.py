"""PostgreSQL's live feed across replicas: every replica hands every committed event, its
own and other replicas', to its listener in position order with no gap.

Each commit sends ``pg_notify`` (its newest position and the replica it came from). Own
commits are handed on from memory as they commit; others' are read back from the events
table, only while someone listens. A head poll every ``poll_interval`` makes good a lost
notification, and a dropped listening connection is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

import asyncpg

from sluice_store.errors import StoreUnavailable
from sluice_store.storage.base import CommitListener, LiveRow

log = logging.getLogger(__name__)

# A page of positions, each event's stream name looked up by its key: the cost is the
# page's whatever PostgreSQL knows of the tables (see PostgresStorage.read_all).
LIVE_ROWS = """
SELECT e.position, e.stream_id, e.revision, e.created_us, e.head, e.data,
    (SELECT s.name FROM streams s WHERE s.id = e.stream_id), e.type, e.event_id, e.size
FROM events e WHERE e.position >= $1 AND e.position <= $2 ORDER BY e.position
"""
PUMP_PAGE = 5000  # positions per read


class Source(Protocol):
    """What the feed needs of its storage (PostgresStorage)."""

    listener: CommitListener | None
    listening: Callable[[], bool]
    channel: str
    origin: str
    poll_interval: float

    @property
    def pool(self) -> asyncpg.Pool: ...

    async def connect(self) -> asyncpg.Connection: ...


class LiveFeed:
    """One replica's feed of committed events to its listener."""

    def __init__(self, storage: Source) -> None:
        self.storage = storage
        self.connection: asyncpg.Connection | None = None  # the one LISTENing
        self.known = 0  # newest committed position this replica knows of
        self.stopped = False
        self._published = 0  # newest position handed to the listener
        self._own: dict[int, list[LiveRow]] = {}  # own commits not yet published, by first position
        self._pump_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None

    async def start(self, head: int) -> None:
        self.known = self._published = head
        await self._start_listening()
        self._poll_task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        self.stopped = True
        for task in (self._poll_task, self._pump_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()

    def _hand_on(self, rows: list[LiveRow]) -> None:
        if self.storage.listener is not None:
            self.storage.listener(rows)

    async def _start_listening(self) -> None:
        conn = await self.storage.connect()
        await conn.add_listener(self.storage.channel, self._notified)
        self.connection = conn

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        position, _, origin = str(payload).partition(" ")
        if origin != self.storage.origin:  # own commits are published as they commit
            self.advance(int(position))

    async def _poll(self) -> None:
        """The fallback for missed notifications: read the head now and then; re-listen."""
        while True:
            await asyncio.sleep(self.storage.poll_interval)
            try:
                if self.connection is None or self.connection.is_closed():
                    self.connection = None
                    await self._start_listening()
                self.advance(await self.storage.pool.fetchval("SELECT position FROM head"))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, StoreUnavailable) as e:
                log.warning("head poll failed, will retry: %s", e)

    def advance(self, position: int) -> None:
        """Publish every committed event up to position, in order (in the background)."""
        if position > self.known:
            self.known = position
        if self.known > self._published and (self._pump_task is None or self._pump_task.done()):
            self._pump_task = asyncio.create_task(self._pump())

    def committed(self, rows: list[LiveRow]) -> None:
        """An own commit: publish it now if everything before it is out, else queue it."""
        first, last = rows[0][0], rows[-1][0]
        self.known = max(self.known, last)
        idle = self._pump_task is None or self._pump_task.done()
        if idle and self._published == first - 1:
            self._published = last
            self._hand_on(rows)
            return
        self._own[first] = rows
        self.advance(last)

    async def _pump(self) -> None:
        while self._published < self.known and not self.stopped:
            nxt = self._published + 1
            own = self._own.pop(nxt, None)
            if own is not None:
                rows = own
                self._published = own[-1][0]
            else:
                stop = min([self.known, nxt + PUMP_PAGE - 1, *(f - 1 for f in self._own if f > nxt)])
                if not self.storage.listening():
                    # Nobody to give them to: a subscriber that registers from now on
                    # reads these from the table in its catch-up.
                    self._published = stop
                    continue
                try:
                    fetched = await self.storage.pool.fetch(LIVE_ROWS, nxt, stop)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, StoreUnavailable) as e:
                    log.warning("live feed read failed, will retry: %s", e)
                    await asyncio.sleep(self.storage.poll_interval)
                    continue
                rows = [tuple(r) for r in fetched]
                self._published = stop  # positions are gap-free: retention removed the rest
            if rows:
                self._hand_on(rows)
        self._own = {f: r for f, r in self._own.items() if f > self._published}
