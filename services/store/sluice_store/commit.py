"""Group commit: appends that arrive while a storage commit runs go into the next one."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

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
        self._pending: list[_Entry] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, op: list[AppendPart]) -> asyncio.Future[Outcome]:
        """One atomic operation; the future resolves with its outcome."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        events = len(op[0].events) if len(op) == 1 else sum(len(p.events) for p in op)
        self._add(_Entry([op], events, fut, False))
        return fut

    def submit_many(self, ops: list[list[AppendPart]]) -> asyncio.Future[list[Outcome]]:
        """Independent operations (an append session's message), committed together; the
        future resolves with their outcomes in order (one future for all saves making and
        awaiting one per append)."""
        fut: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._add(_Entry(ops, sum(len(p.events) for op in ops for p in op), fut, True))
        return fut

    def _add(self, entry: _Entry) -> None:
        self._pending.append(entry)
        if self._task is None:
            self._task = asyncio.create_task(self._drain())

    def _take(self) -> list[_Entry]:
        """The next batch: pending entries in order, up to max_events (at least one)."""
        take, total = 0, 0
        for entry in self._pending:
            if take and total + entry.events > self.max_events:
                break
            take += 1
            total += entry.events
        batch, self._pending = self._pending[:take], self._pending[take:]
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch: list[_Entry] = []
                took: tuple[float, int] | None = None
                outcomes: list[Outcome]
                try:
                    async with self.storage.write_slot():
                        batch = self._take()
                        started = time.perf_counter()
                        ops = batch[0].ops if len(batch) == 1 else [op for e in batch for op in e.ops]
                        outcomes = await self.storage.append(ops)
                        self.commits += 1
                        took = time.perf_counter() - started, sum(e.events for e in batch)
                    self.on_full(False)
                except StoreError as e:
                    self.failed_commits += 1
                    batch = batch or self._take()
                    outcomes = [e] * sum(len(entry.ops) for entry in batch)
                    if isinstance(e, StorageFull):
                        self.on_full(True)
                except Exception as e:  # a bug or a driver fault: fail the batch, keep serving
                    log.exception("append batch failed")
                    batch = batch or self._take()
                    outcomes = [StoreUnavailable(f"append failed: {e}")] * sum(
                        len(entry.ops) for entry in batch
                    )
                at = 0
                for entry in batch:
                    n = len(entry.ops)
                    if not entry.fut.done():
                        entry.fut.set_result(outcomes[at : at + n] if entry.many else outcomes[at])
                    at += n
                if took is not None:
                    loop.call_soon(self.on_commit, *took)  # after the answers' wakeups
        finally:
            self._task = None


@dataclasses.dataclass(slots=True)
class _Entry:
    """Operations waiting for the next commit, with the future that answers them."""

    ops: list[list[AppendPart]]
    events: int
    fut: asyncio.Future[Any]
    many: bool  # answered with every outcome (submit_many), else with the one
