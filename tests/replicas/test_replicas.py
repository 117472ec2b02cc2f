"""Several store processes on one PostgreSQL database, as replicas behind a Service run."""

from __future__ import annotations

import asyncio
import collections
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import pytest

from sluice import START, Client, Position, new_event
from sluice.errors import SluiceError, Unavailable, WrongExpectedRevision
from sluice.partition import partition_of
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb
from tests.conftest import StoreProcess, eventually, reap
from tests.sidecar.conftest import WAIT, App, Sidecar

StartReplicas = Callable[[int], Awaitable[list[StoreProcess]]]


@pytest.fixture
async def replicas(postgres_db: str, tmp_path: Path) -> AsyncIterator[StartReplicas]:
    """Start n store processes on one fresh schema of the run's PostgreSQL database."""
    procs: list[StoreProcess] = []
    url = f"{postgres_db}?schema=replicas_{tmp_path.name[-12:].replace('-', '_')}"

    async def start(n: int) -> list[StoreProcess]:
        made = [
            StoreProcess(url, "--heartbeat-interval", "0.5", log=tmp_path / f"store{len(procs) + i}.log")
            for i in range(n)
        ]
        procs.extend(made)
        await asyncio.gather(*(p.start() for p in made))  # concurrent start: migrations take turns
        return made

    yield start
    await reap(procs)


class Subscriber:
    """A subscription from the start of all streams, resumed from its cursor after errors."""

    def __init__(self, addr: str, prefixes: Sequence[str] = ()) -> None:
        self.addr = addr
        self.prefixes = list(prefixes)
        self.positions: list[int] = []
        self.ids: list[str] = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with Client(self.addr) as c:
            while True:
                start = Position(self.positions[-1] + 1) if self.positions else START
                try:
                    async for item in c.subscribe(start=start, stream_prefixes=self.prefixes):
                        if isinstance(item, pb.RecordedEvent):
                            self.positions.append(item.position)
                            self.ids.append(item.id)
                            self.changed.set()
                except Unavailable:
                    await asyncio.sleep(0.1)

    async def wait_for(self, count: int, timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while len(self.ids) < count:
                self.changed.clear()
                await self.changed.wait()

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def append_retrying(c: Client, stream: str, events: list[pb.EventData]) -> pb.AppendResponse:
    """Append, retrying with the same event ids while the store is unavailable (idempotent)."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                return await c.append(stream, events)
            except Unavailable:
                await asyncio.sleep(0.05)


async def test_appends_on_every_replica_reach_every_subscriber_once_in_position_order(
    replicas: StartReplicas,
) -> None:
    stores = await replicas(3)
    subs = [Subscriber(s.addr) for s in stores] + [Subscriber(s.addr, ["a-"]) for s in stores]
    appended: list[tuple[str, str]] = []  # (stream, id) of acknowledged events
    gaps: list[tuple[int, int]] = []

    async def appender(addr: str, seed: int) -> None:
        rnd = random.Random(seed)
        async with Client(addr) as c:
            for _ in range(120):
                stream = f"{rnd.choice('ab')}-{rnd.randrange(20)}"
                events = [new_event("Tick", {"n": i}) for i in range(rnd.randint(1, 4))]
                await c.append(stream, events)
                appended.extend((stream, e.id) for e in events)

    async def pipelined(addr: str) -> None:
        async with Client(addr) as c, c.session() as s:
            futures = []
            for i in range(200):
                events = [new_event("Piped", {"i": i})]
                futures.append(s.send(f"b-piped-{i % 7}", events))
                appended.extend((f"b-piped-{i % 7}", e.id) for e in events)
            await asyncio.gather(*futures)

    async def reader(addr: str, stop: asyncio.Event) -> None:
        """Reads all streams over and over while appends run: every read must be gap-free."""
        async with Client(addr) as c:
            last = 0
            while not stop.is_set():
                async for batch in c.read_batches(start=Position(last + 1)):
                    for ev in batch:
                        if ev.position != last + 1:
                            gaps.append((last, ev.position))
                        last = ev.position

    stop = asyncio.Event()
    readers = [asyncio.create_task(reader(s.addr, stop)) for s in stores]
    await asyncio.gather(
        *(appender(s.addr, i * 10 + j) for i, s in enumerate(stores) for j in range(3)),
        *(pipelined(s.addr) for s in stores),
    )
    stop.set()
    await asyncio.gather(*readers)
    total = len(appended)
    assert not gaps  # positions are dense and no reader ever saw one commit before an earlier one
    a_ids = {i for s, i in appended if s.startswith("a-")}
    for sub in subs:
        want = len(a_ids) if sub.prefixes else total
        await sub.wait_for(want)
        assert len(sub.ids) == want and len(set(sub.ids)) == want  # each event once
        assert sub.positions == sorted(sub.positions)  # in position order
        assert set(sub.ids) == (a_ids if sub.prefixes else {i for _, i in appended})
        await sub.stop()
    async with Client(stores[0].addr) as c:
        events = await c.read_list()
    assert [e.position for e in events] == list(range(1, total + 1))


async def test_expected_revision_conflicts_are_detected_across_replicas(
    replicas: StartReplicas,
) -> None:
    stores = await replicas(2)
    wins: list[tuple[str, int]] = []
    conflicts: list[WrongExpectedRevision] = []

    async def writer(addr: str, name: str) -> None:
        async with Client(addr) as c:
            for _ in range(40):
                last = (await c.read_list("account"))[-1].revision
                deposit = [new_event("Deposit", {"by": name})]
                try:
                    wins.append((name, (await c.append("account", deposit, expected=last)).last_revision))
                except WrongExpectedRevision as e:
                    conflicts.append(e)

    async with Client(stores[0].addr) as c:
        await c.append("account", [new_event("Opened", {})])
    await asyncio.gather(*(writer(s.addr, f"w{i}") for i, s in enumerate(stores) for _ in range(2)))
    async with Client(stores[1].addr) as c:
        stored = await c.read_list("account")
    assert [e.revision for e in stored] == list(range(len(stored)))
    assert sorted(rev for _, rev in wins) == list(range(1, len(stored)))  # one winner per revision
    assert len(wins) + len(conflicts) == 160
    assert conflicts  # racing writers on two replicas did collide
    assert {e.code for e in conflicts} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert all(e.metadata["stream"] == "account" for e in conflicts)
    assert {w for w, _ in wins} >= {"w0", "w1"}  # both replicas won some


async def test_a_group_shared_across_replicas_splits_partitions_and_fences_stale_members(
    replicas: StartReplicas, tmp_path: Path
) -> None:
    stores = await replicas(3)
    app = App()
    await app.start()
    scs = [
        Sidecar(
            f"r{i}",
            s.addr,
            "app",
            app.url(f"r{i}"),
            *("--prefixes", "orders-", "--start", "start", "--lease", "2s", "--initial-backoff", "50ms"),
        )
        for i, s in enumerate(stores)
    ]
    try:
        for sc in scs:
            sc.log = tmp_path / f"sidecar-{sc.name}.log"
            await sc.start()

        async def split() -> bool:
            parts = [await sc.partitions() for sc in scs]
            return sum(map(len, parts)) == 12 and set().union(*parts) == set(range(12)) and all(parts)

        await eventually(split, timeout=WAIT)
        ids = []
        for i, s in enumerate(stores):  # producers on every replica
            async with Client(s.addr) as c:
                for n in range(30):
                    ev = new_event("Placed", {"n": n})
                    await c.append(f"orders-{i}-{n % 10}", [ev])
                    ids.append(ev.id)
        await app.wait(lambda: app.acked_ids() >= set(ids))
        assert len(app.received) == len(ids)  # without faults, each event once
        owners = {sc.name: await sc.partitions() for sc in scs}
        for r in app.received:  # through the sidecar that owns its partition, whatever its replica
            assert partition_of(r.stream, 12) in owners[r.sidecar]
    finally:
        await reap(scs)
        await app.stop()

    # Fencing across replicas: a member joins through one replica, rejoins through another
    # (a new epoch), and a commit with its old epoch through a third is refused.
    clients = [Client(s.addr) for s in stores]
    try:
        await clients[0].create_group("fenced", partitions=2)
        first = await clients[0].groups_stub.Heartbeat(gpb.HeartbeatRequest(group="fenced", member_id="m"))
        again = await clients[1].groups_stub.Heartbeat(gpb.HeartbeatRequest(group="fenced", member_id="m"))
        assert again.member_epoch > first.member_epoch
        stale = gpb.CommitCursorRequest(
            group="fenced", member_id="m", member_epoch=first.member_epoch, partition=0, position=5
        )
        with pytest.raises(SluiceError) as refused:
            await clients[2]._call(clients[2].groups_stub.CommitCursor(stale))
        assert refused.value.reason == "STALE_MEMBER_EPOCH"
        assert refused.value.metadata["current_epoch"] == str(again.member_epoch)
        fresh = gpb.CommitCursorRequest(
            group="fenced", member_id="m", member_epoch=again.member_epoch, partition=0, position=5
        )
        await clients[2].groups_stub.CommitCursor(fresh)
        desc = await clients[0].describe_group("fenced")
        assert desc.partitions[0].cursor == 5
    finally:
        for c in clients:
            await c.close()


async def test_killing_a_replica_moves_its_clients_and_loses_nothing_acknowledged(
    replicas: StartReplicas,
) -> None:
    stores = await replicas(3)
    # One target naming every replica, as a Service does: the channel moves on when one dies.
    target = "ipv4:" + ",".join(s.addr for s in stores)
    sub = Subscriber(target)
    acked: list[str] = []
    killed = asyncio.Event()

    async def producer(seed: int) -> None:
        async with Client(target, timeout=5) as c:
            for n in range(150):
                events = [new_event("Tick", {"n": n, "seed": seed})]
                await append_retrying(c, f"s-{seed}", events)
                acked.append(events[0].id)
                if n == 50 and seed == 0:
                    killed.set()

    producers = [asyncio.create_task(producer(i)) for i in range(4)]
    await asyncio.wait_for(killed.wait(), WAIT)
    stores[0].signal(signal.SIGKILL)  # the replica the channel picked first
    await stores[0].wait()
    await asyncio.gather(*producers)
    await sub.wait_for(len(acked))
    counts = collections.Counter(sub.ids)
    assert set(counts) == set(acked)  # every acknowledged event reached the subscriber
    assert max(counts.values()) == 1  # once: it resumed from its cursor on another replica
    async with Client(stores[1].addr) as c:
        stored = [e.id for e in await c.read_list()]
    assert sorted(stored) == sorted(acked)
    await sub.stop()
