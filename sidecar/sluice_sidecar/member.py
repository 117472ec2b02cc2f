"""The sidecar's membership in a consumer group: heartbeats, partition workers, commits.
(Over 500 lines: the membership state machine, joined, fenced, away, missing, stopping,
reads best as one class beside the workers it drives.)

One task (``_coordinate``) commits handled positions and heartbeats; one worker per
assigned partition subscribes to the store for that partition and delivers its events
to the app in order. A worker delivers only while the member's lease is known to be
valid (a member paused past its lease stops before delivering anything more), and a
fenced member (unknown, or with a stale epoch) drops its partitions without committing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Sequence

import grpc

from sluice import Client, Position
from sluice.errors import (
    Fenced,
    GroupExists,
    GroupNotFound,
    InvalidArgument,
    InvalidEvent,
    LimitExceeded,
    SluiceError,
    SystemStreamReserved,
)
from sluice.names import is_system
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import sidecar_pb2 as spb
from sluice.v1 import streams_pb2 as pb
from sluice_sidecar.apphealth import AppHealth
from sluice_sidecar.config import ConfigError, Settings
from sluice_sidecar.delivery import ACK, DEAD_LETTER, Deliverer, PullHub, Result
from sluice_sidecar.telemetry import Telemetry

log = logging.getLogger("sluice_sidecar")

DLQ_NAMESPACE = uuid.UUID("6f1f3c52-5a43-4c2e-9b7e-2f9d7c1e8a10")


class PartitionWorker:
    """Reads one partition from its cursor and delivers its events in order."""

    def __init__(self, member: Member, partition: int, cursor: int) -> None:
        self.member = member
        self.partition = partition
        self.committed = cursor  # as stored in the group
        self.handled = cursor  # every event of the partition below this was handled
        self.in_flight = 0
        self.busy = False  # delivering (or waiting to retry) an event
        self.stopping = False
        self.releasing = False
        self.discard = False  # its progress must not be committed (read again from a cursor)
        self.task = asyncio.create_task(self._run(), name=f"partition-{partition}")

    async def _run(self) -> None:
        m = self.member
        cfg = m.config
        pause = 0.05
        while not self.stopping:
            items = m.client.subscribe_partitions(
                cfg.partitions,
                [self.partition],
                start=Position(self.handled),
                stream_prefixes=cfg.filter.stream_prefixes,
                event_types=cfg.filter.event_types,
                max_batch=max(100, m.settings.batch),
                heartbeat_interval=1.0,
            )
            try:
                async for item in items:
                    if isinstance(item, list):
                        await self._handle(item)
                    elif isinstance(item, pb.Checkpoint | pb.CaughtUp):
                        # Nothing of this partition below it is left: the filter skipped the rest.
                        self.handled = max(self.handled, item.position)
                    elif isinstance(item, pb.Heartbeat):
                        m.head = max(m.head, item.head_position)
                    if self.stopped():
                        break
                    pause = 0.05
            except SluiceError as e:
                if self.stopped():
                    break
                log.warning("partition %d: subscription ended (%s); resuming", self.partition, e.reason or e)
                await asyncio.sleep(pause)  # the store is restarting: back off, bounded
                pause = min(pause * 2, 1.0)
            finally:
                await items.aclose()

    def stopped(self) -> bool:
        return self.stopping

    async def _handle(self, events: Sequence[pb.RecordedEvent]) -> None:
        group = self.member.settings.group
        end = events[-1].position + 1  # handled up to here once what is ours is delivered
        # Dead letters redriven for another group are not ours: pass them by.
        mine = [e for e in events if e.metadata.get("redriven-for", group) == group]
        size = max(1, self.member.settings.batch)
        for i in range(0, len(mine), size):
            chunk = mine[i : i + size]
            if not await self.member.lease_valid(self):
                return
            self.busy = True
            try:
                if not await self._deliver(chunk):
                    return
            finally:
                self.busy = False
            self.handled = chunk[-1].position + 1
            if self.stopping:
                return
        self.handled = max(self.handled, end)

    async def _deliver(self, chunk: Sequence[pb.RecordedEvent]) -> bool:
        """Deliver until the app acks or the events are dead-lettered; False if stopped first."""
        m = self.member
        retry = m.config.retry
        attempt = 1
        while True:
            if not m.app.up:  # paused: nothing in flight, so a stop need not wait for it
                self.busy = False
                await m.app.wait_up()
                self.busy = True
                if not await m.lease_valid(self):
                    return False
            async with m.slots:
                self.in_flight += len(chunk)
                try:
                    started = time.perf_counter()
                    with m.telemetry.delivery(chunk, self.partition, attempt):
                        result = await m.deliverer.deliver(chunk, self.partition, attempt)
                    m.telemetry.delivery_seconds.record(time.perf_counter() - started, m.telemetry.attributes)
                finally:
                    self.in_flight -= len(chunk)
            if result.app_down:  # nobody answered: not an attempt
                m.app.down(result.reason)
                continue
            if result.outcome == ACK:
                m.delivered += len(chunk)  # the delivered metric reads this tally
                return True
            if result.outcome == DEAD_LETTER or attempt >= retry.max_attempts:
                await m.dead_letter(self.partition, chunk, result, attempt)
                return True
            m.retried += 1
            m.telemetry.retried.add(len(chunk), {"group": m.settings.group})
            await asyncio.sleep(self._backoff(result, attempt))
            attempt += 1

    def _backoff(self, result: Result, attempt: int) -> float:
        """The app's Retry-After (at most the group's max_backoff: a partition waits in
        order, and an app asking for a year would stall it for one), else exponential
        backoff with full jitter."""
        retry = self.member.config.retry
        cap = retry.max_backoff.ToMicroseconds() / 1e6
        if result.retry_after is not None:
            return min(max(0.0, result.retry_after), cap)
        base = retry.initial_backoff.ToMicroseconds() / 1e6
        return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))

    async def stop(self, timeout: float) -> None:
        """Stop fetching; let the delivery in progress finish (up to timeout)."""
        self.stopping = True
        self.member.wake_workers()
        if not self.busy:
            self.task.cancel()  # waiting for events: nothing to finish
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except TimeoutError:
            self.task.cancel()
        except asyncio.CancelledError:
            if not self.task.cancelled():
                raise
        except Exception:
            log.exception("partition %d worker failed", self.partition)


class Member:
    """This sidecar's membership: joins, heartbeats, runs workers for its partitions, commits."""

    def __init__(self, settings: Settings, deliverer: Deliverer) -> None:
        self.settings = settings
        self.deliverer = deliverer
        self.client = Client(settings.store, timeout=10, credentials=settings.store_credentials())
        self.store_id = ""  # the store's identity, from heartbeats
        self.config = gpb.GroupConfig()
        self.epoch = 0
        self.workers: dict[int, PartitionWorker] = {}
        self.slots = asyncio.Semaphore(settings.max_in_flight)
        self.head = 0
        self.delivered = self.retried = self.dead_lettered = 0
        self.joined = False
        self.stopping = False
        self.missing = False  # the group does not exist (deleted, or not made yet)
        self.full = False  # the group has as many members as it may: standing by
        self.away = True  # not in the group because the app does not answer (yet)
        self.app = AppHealth(deliverer.probe, settings.app_probe_interval, self._wake_now)
        self._lease_until = 0.0
        self._lease_renewed = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        self._restart_at: dict[int, int] = {}  # partition -> cursor to read again from
        self.telemetry = Telemetry(settings.group, self.status)

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.create_group:
            await self._ensure_group()
        self.app.start()  # the member joins once the app answers
        self._task = asyncio.create_task(self._coordinate(), name="coordinate")

    async def _ensure_group(self) -> None:
        s = self.settings
        try:
            await self.client.create_group(
                s.group,
                stream_prefixes=s.prefixes,
                event_types=s.types,
                start=s.start,
                partitions=s.partitions,
                lease=s.lease,
                max_attempts=s.max_attempts,
                initial_backoff=s.initial_backoff,
                max_backoff=s.max_backoff,
            )
            log.info("created group %s", s.group)
        except GroupExists:
            pass
        except (InvalidArgument, LimitExceeded) as e:  # the flags that make the group: a setting
            field = e.metadata.get("field", "")
            flag = f" (--{field.rsplit('.', 1)[-1].replace('_', '-')})" if field.startswith("config.") else ""
            raise ConfigError(f"the store refused to create group {s.group!r}: {e.message}{flag}") from None

    async def stop(self) -> None:
        """Stop fetching, finish in-flight deliveries, commit, leave the group."""
        if self.stopping:
            return
        self.stopping = True
        self._wake.set()
        if self._task is None:  # the start failed before the member could join: nothing to leave
            return
        await self._task
        await asyncio.gather(*(w.stop(self.settings.drain_timeout) for w in self.workers.values()))
        await asyncio.gather(*self._releasing, return_exceptions=True)
        await self._commit_and_leave()
        self.workers.clear()
        await self.app.close()
        await self.client.close()

    async def _commit_and_leave(self) -> None:
        try:
            await self._commit_all()
            await self.client.heartbeat(
                gpb.HeartbeatRequest(
                    group=self.settings.group, member_id=self.settings.member_id, leave=True
                ),
                timeout=5,
            )
        except SluiceError as e:
            log.warning("could not commit and leave cleanly: %s", e)

    async def _step_away(self) -> None:
        """The app has not answered for the grace period: finish, commit and leave, so the
        partitions move to members whose apps answer; join again once it answers."""
        log.warning(
            "the app has not answered for %.1fs: leaving the group until it answers (%s)",
            self.app.down_for(),
            self.app.reason,
        )
        self.away = True
        workers = list(self.workers.values())
        await asyncio.gather(*(w.stop(self.settings.drain_timeout) for w in workers))
        await asyncio.gather(*self._releasing, return_exceptions=True)
        await self._commit_and_leave()
        self.workers.clear()
        self._restart_at.clear()
        self.epoch = 0
        self.joined = False
        self._lease_until = 0.0

    def _wake_now(self) -> None:
        self._wake.set()

    async def _idle(self, timeout: float) -> None:
        """Wait for a wake-up (the app answers again, a stop), at most timeout."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    # -- lease and fencing ------------------------------------------------------------

    async def lease_valid(self, worker: PartitionWorker) -> bool:
        """Wait while the lease is not known to be valid; False when the worker must stop."""
        while not worker.stopping and time.monotonic() >= self._lease_until:
            self._lease_renewed.clear()
            self._wake.set()  # heartbeat now
            await self._lease_renewed.wait()
        return not worker.stopping

    def wake_workers(self) -> None:
        self._lease_renewed.set()

    # -- the coordination loop --------------------------------------------------------

    async def _coordinate(self) -> None:
        next_beat = 0.0
        failures = 0
        while not self.stopping:
            self._wake.clear()  # a wake-up from here on (a refused commit) brings a heartbeat at once
            try:
                if not self.app.up and (self.away or self.app.down_for() >= self.settings.app_down_grace):
                    if not self.away:
                        await self._step_away()
                    next_beat = 0.0  # join at once when the app answers (it wakes this loop)
                    await self._idle(self.settings.app_down_grace)
                    continue
                self.away = False
                await self._commit_all()
                if time.monotonic() >= next_beat:
                    interval = await self._heartbeat()
                    if interval is None:  # store away or fenced: try again soon, backing off
                        failures += 1
                        interval = min(0.05 * 2**failures, 2.0)
                    else:
                        failures = 0
                    next_beat = time.monotonic() + interval
            except Exception:  # keep the membership alive whatever one round did
                log.exception("membership round failed")
                next_beat = time.monotonic() + 1.0
            wait = max(0.0, min(self.settings.commit_interval, next_beat - time.monotonic()))
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
                next_beat = 0.0  # woken: heartbeat at once
            except TimeoutError:
                pass

    def _beat_interval(self) -> float:
        """The group's heartbeat interval in seconds (1 before the first answer)."""
        return self.config.heartbeat_interval.ToMicroseconds() / 1e6 or 1.0

    async def _heartbeat(self) -> float | None:
        s = self.settings
        sent = time.monotonic()
        req = gpb.HeartbeatRequest(
            group=s.group,
            member_id=s.member_id,
            member_epoch=self.epoch,
            owned=sorted(self.workers),
        )
        try:
            resp = await self.client.heartbeat(req, timeout=5)
        except SluiceError as err:
            if isinstance(err, Fenced):
                log.warning("fenced (%s): dropping partitions, joining again", err.reason)
                await self._drop_all()
            elif isinstance(err, GroupNotFound):
                if await self._store_replaced():
                    if s.create_group:
                        await self._ensure_group()
                else:
                    await self._group_missing()
                    return self._beat_interval()
            elif isinstance(err, LimitExceeded) and err.metadata.get("limit") == "max_group_members":
                # Not a fault: a standby, asking again each heartbeat interval, said once.
                if not self.full:
                    log.warning("group %s is full: standing by until a member leaves (%s)", s.group, err)
                    self.full = True
                return self._beat_interval()
            else:
                log.warning("heartbeat failed: %s", err)
            return None
        if self.store_id and resp.store_id != self.store_id:
            await self._on_new_store(resp.store_id)
            return None
        self.store_id = resp.store_id
        if self.missing:
            log.info("group %s found: joining it", s.group)
            self.missing = False
        if self.full:
            log.info("group %s has room: joined it", s.group)
            self.full = False
        refilter = self.joined and resp.config.filter != self.config.filter
        if refilter:
            log.info("the group's filter changed: reading every partition again from its cursor")
        self.config = resp.config
        self.epoch = resp.member_epoch
        lease = resp.lease.ToMicroseconds() / 1e6
        self._lease_until = sent + lease * 0.9  # fence ourselves a little before the store does
        self._lease_renewed.set()
        self.joined = True
        assigned = {a.partition: a.position for a in resp.assigned}
        # Moved by the store (a reset): read again even from the very cursor we committed.
        moved = {a.partition for a in resp.assigned if a.moved}
        for p in [p for p in self.workers if p not in assigned]:
            self._release(p)
        for p, cursor in assigned.items():
            w = self.workers.get(p)
            if w is None:
                self.workers[p] = PartitionWorker(self, p, cursor)
            elif p in self._restart_at or (
                not w.stopping and (refilter or p in moved or cursor != w.committed)
            ):
                self._restart(p, cursor)
        interval: float = resp.heartbeat_interval.ToMicroseconds() / 1e6
        return interval

    async def _group_missing(self) -> None:
        """The group is gone (deleted) or was never made: deliver nothing, commit nothing,
        report not ready, and wait for it to be created (a deleted group is an operator's
        decision, so the sidecar does not make it again on its own)."""
        if self.missing:
            return
        was = "was deleted" if self.joined else "does not exist"
        log.error(
            "group %s %s: not ready; partitions dropped without committing;"
            " waiting for the group to be created (sluice groups create %s)",
            self.settings.group,
            was,
            self.settings.group,
        )
        self.missing = True
        self.joined = False
        await self._drop_all()

    async def _store_replaced(self) -> bool:
        """Whether the store now answering is another one than the member knew."""
        try:
            now = await self.client.current_store_id()
        except SluiceError:
            return False
        if self.store_id and now and now != self.store_id:
            await self._on_new_store(now)
            return True
        return False

    async def _on_new_store(self, store_id: str) -> None:
        """The store was replaced (a new or emptied database): cursors from before mean
        nothing there. Drop every partition without committing and join again."""
        log.error(
            "the store was replaced (store id %s, before %s): dropping partitions without committing,"
            " joining again%s",
            store_id,
            self.store_id,
            " (creating the group there)" if self.settings.create_group else "",
        )
        self.store_id = store_id
        await self._drop_all()

    def _restart(self, partition: int, cursor: int) -> None:
        """Read a partition again from cursor (reset, or a new filter). The worker finishes the
        delivery in progress first, so two never overlap, and its progress is not committed."""
        pending = partition in self._restart_at
        self._restart_at[partition] = cursor  # a later heartbeat's cursor wins
        if pending:
            return
        log.info("partition %d: reading again from %d", partition, cursor)
        old = self.workers[partition]
        old.discard = True

        async def restart() -> None:
            await old.stop(self.settings.drain_timeout)
            at = self._restart_at.pop(partition, None)
            if at is not None and self.workers.get(partition) is old and not (self.stopping or self.away):
                self.workers[partition] = PartitionWorker(self, partition, at)

        self._track(asyncio.create_task(restart()))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def _release(self, partition: int) -> None:
        """Give a revoked partition back: finish in-flight work, commit, then stop reporting it."""
        worker = self.workers[partition]
        self._restart_at.pop(partition, None)
        if worker.releasing:
            return
        worker.releasing = True

        async def release() -> None:
            await worker.stop(self.settings.drain_timeout)
            await self._commit(worker)
            if self.workers.get(partition) is worker:
                del self.workers[partition]
            self._wake.set()  # tell the store at once

        self._track(asyncio.create_task(release()))

    async def _drop_all(self) -> None:
        """Fenced: stop every worker without committing; rejoin with epoch 0."""
        workers, self.workers = list(self.workers.values()), {}
        self._restart_at.clear()
        for w in workers:
            w.stopping = w.discard = True
            w.task.cancel()
        self.wake_workers()
        self.epoch = 0
        self._lease_until = 0.0

    async def _commit_all(self) -> None:
        for w in list(self.workers.values()):
            await self._commit(w)

    async def _commit(self, w: PartitionWorker) -> None:
        if w.handled <= w.committed or not self.epoch or w.discard:
            return
        req = gpb.CommitCursorRequest(
            group=self.settings.group,
            member_id=self.settings.member_id,
            member_epoch=self.epoch,
            partition=w.partition,
            position=w.handled,
        )
        position = w.handled
        try:
            await self.client.commit_cursor(req, timeout=5)
            w.committed = position
        except SluiceError as err:
            if isinstance(err, Fenced | GroupNotFound):
                self._wake.set()  # the next heartbeat sorts out what we still own
                log.info("commit of partition %d refused: %s", w.partition, err.reason)
            else:
                log.warning("commit of partition %d failed: %s", w.partition, err)

    # -- dead letters and publishing --------------------------------------------------

    async def dead_letter(
        self, partition: int, events: Sequence[pb.RecordedEvent], result: Result, attempts: int
    ) -> None:
        """Hand the events to the group's dead-letter stream, with why, until the store takes
        them or fences this member (then the partition's next owner delivers them again)."""
        out = []
        for ev in events:
            md = dict(ev.metadata)
            md.update(
                {
                    "dlq-reason": result.reason or "dead-lettered",
                    "dlq-attempts": str(attempts),
                    "dlq-group": self.settings.group,
                    "dlq-stream": ev.stream,
                    "dlq-revision": str(ev.revision),
                    "dlq-position": str(ev.position),
                    "dlq-event-id": ev.id,
                }
            )
            # A stable id: dead-lettering the same event again (after a crash) is a no-op.
            eid = uuid.uuid5(DLQ_NAMESPACE, f"{self.settings.group}/{ev.id}")
            out.append(
                pb.EventData(
                    id=str(eid), type=ev.type, data=ev.data, metadata=md, content_type=ev.content_type
                )
            )
        req = gpb.DeadLetterRequest(
            group=self.settings.group,
            member_id=self.settings.member_id,
            member_epoch=self.epoch,
            partition=partition,
            events=out,
        )
        pause = 0.1
        while True:
            try:
                await self.client.dead_letter(req, timeout=10)
                self.dead_lettered += len(out)
                self.telemetry.dead_lettered.add(len(out), {"group": self.settings.group})
                return
            except SluiceError as err:
                if isinstance(err, Fenced | GroupNotFound):
                    self._wake.set()
                    log.warning(
                        "dead-lettering on partition %d refused (%s); its next owner retries", partition, err
                    )
                    return
                if isinstance(err, InvalidEvent | LimitExceeded) and any(d.data for d in req.events):
                    # The reason made it too big: keep the record without the payload (the
                    # original stays readable at dlq-stream / dlq-position).
                    for dead in req.events:
                        dead.data = b""
                        dead.metadata["dlq-data"] = "dropped: too large with the dead-letter metadata"
                    continue
                log.warning("dead-letter append failed (%s); retrying", err)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def publish(self, request: pb.AppendRequest, traceparent: str | None) -> pb.AppendResponse:
        """Append for the app, stamping its identity (whatever the app put there is replaced:
        the sidecar vouches for it) and trace context on each event. Store-reserved ("$")
        streams, dead letters among them, are refused here with the store's own answer,
        whatever the sidecar's grants (a store would refuse a caller without a grant on them
        with PERMISSION_DENIED first)."""
        if is_system(request.stream):
            raise SystemStreamReserved(
                f"stream: names starting with '$' are reserved for the store: {request.stream[:300]!r}",
                grpc.StatusCode.INVALID_ARGUMENT,
                "SYSTEM_STREAM_RESERVED",
                {"field": "stream"},
            )
        for ev in request.events:
            ev.metadata["source-app"] = self.settings.app_id
            ev.metadata["source-member"] = self.settings.member_id
            if traceparent and "traceparent" not in ev.metadata:
                ev.metadata["traceparent"] = traceparent
        return await self.client.append_request(request)

    # -- status -----------------------------------------------------------------------

    def ready(self) -> bool:
        return self.joined and not self.stopping and not self.missing and self.app.up

    def unready_reason(self) -> str:
        """Why the member is not ready ("" when it is)."""
        if self.stopping:
            return "shutting down"
        if self.missing:
            return f"group {self.settings.group} does not exist: waiting for it to be created"
        if not self.app.up:
            return f"the app is not answering ({self.app.reason}): waiting for it"
        if self.full:
            return f"group {self.settings.group} is full: standing by until a member leaves"
        if not self.joined:
            return f"joining group {self.settings.group}"
        return ""

    def status(self) -> spb.SidecarStatus:
        out = spb.SidecarStatus(
            group=self.settings.group,
            member_id=self.settings.member_id,
            member_epoch=self.epoch,
            ready=self.ready(),
            reason=self.unready_reason(),
            delivered=self.delivered,
            retried=self.retried,
            dead_lettered=self.dead_lettered,
            head_position=self.head,
            filter=self.config.filter,
        )
        for p, w in sorted(self.workers.items()):
            out.partitions.add(
                partition=p,
                committed=w.committed,
                handled=w.handled,
                in_flight=w.in_flight,
                lag_positions=max(0, self.head + 1 - w.handled),
            )
        out.in_flight = sum(w.in_flight for w in self.workers.values())
        if isinstance(self.deliverer, PullHub):
            out.pull_outstanding = self.deliverer.outstanding
            out.pull_outstanding_max = self.deliverer.max_outstanding
        return out
