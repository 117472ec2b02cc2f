"""Group commit: appends that arrive while a storage commit runs go into the next one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sluice_store.errors import StorageFull, StoreError, StoreUnavailable
from sluice_store.storage.base import AppendPart, Outcome, Storage

log = logging.getLogger(__name__)


class Committer:
    """Group commit: appends that arrive while a commit is running go into the next one."""

    def __init__(self, storage: Storage, max_events: int = 20_000) -> None:
        self.storage = storage
        self.max_events = max_events
        #: Told after each batch whether the storage was full (True) or took it (False).
        self.on_full: Callable[[bool], None] = lambda full: None
        #: Told after each commit: how long the storage took (seconds, fsync included) and
        #: how many events the batch carried. It is called on the loop's next turn, after the
        #: appenders have been answered: two OpenTelemetry histogram records cost ~30 us, and
        #: an awaited append need not wait for them.
        self.on_commit: Callable[[float, int], None] = lambda seconds, events: None
        self.commits = 0  # storage transactions
        self.failed_commits = 0
        self._pending: list[tuple[list[AppendPart], int, asyncio.Future[Outcome]]] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, op: list[AppendPart]) -> asyncio.Future[Outcome]:
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((op, len(op[0].events) if len(op) == 1 else sum(len(p.events) for p in op), fut))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        return fut

    def _take(self) -> list[tuple[list[AppendPart], int, asyncio.Future[Outcome]]]:
        """The next batch: pending appends in order, up to max_events (at least one)."""
        take, total = 0, 0
        for _, n, _ in self._pending:
            if take and total + n > self.max_events:
                break
            take += 1
            total += n
        batch, self._pending = self._pending[:take], self._pending[take:]
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch: list[tuple[list[AppendPart], int, asyncio.Future[Outcome]]] = []
                took: tuple[float, int] | None = None
                try:
                    async with self.storage.write_slot():
                        batch = self._take()
                        started = time.perf_counter()
                        outcomes: list[Outcome] = await self.storage.append([op for op, _, _ in batch])
                        self.commits += 1
                        took = time.perf_counter() - started, sum(n for _, n, _ in batch)
                    self.on_full(False)
                except StoreError as e:
                    self.failed_commits += 1
                    batch = batch or self._take()
                    outcomes = [e] * len(batch)
                    if isinstance(e, StorageFull):
                        self.on_full(True)
                except Exception as e:  # a bug or a driver fault: fail the batch, keep serving
                    log.exception("append batch failed")
                    batch = batch or self._take()
                    outcomes = [StoreUnavailable(f"append failed: {e}")] * len(batch)
                for (_, _, fut), outcome in zip(batch, outcomes, strict=True):
                    if not fut.done():
                        fut.set_result(outcome)
                if took is not None:
                    loop.call_soon(self.on_commit, *took)  # after the answers' wakeups
        finally:
            self._task = None
