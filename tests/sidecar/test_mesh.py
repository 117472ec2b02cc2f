"""The store and several sidecars as real processes, pushing to a real HTTP app."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Callable
from pathlib import Path

from sluice import Client, new_event
from sluice.partition import partition_of
from tests.conftest import StoreProcess, eventually
from tests.sidecar.conftest import WAIT, App, Received, Sidecar


async def produce(store: StoreProcess, streams: int, per_stream: int, prefix: str = "orders-") -> list[str]:
    """Append per_stream events to each stream, interleaved; the appended ids in order."""
    ids = []
    async with Client(store.addr) as c:
        for rev in range(per_stream):
            for s in range(streams):
                ev = new_event("Placed", {"s": s, "rev": rev})
                await c.append(f"{prefix}{s}", [ev])
                ids.append(ev.id)
    return ids


def in_order_per_stream(received: list[Received]) -> bool:
    """Each stream's first deliveries come in revision order."""
    seen: dict[str, list[int]] = collections.defaultdict(list)
    for r in received:
        if r.revision not in seen[r.stream]:
            seen[r.stream].append(r.revision)
    return all(revs == sorted(revs) for revs in seen.values())


async def group_lag_is_zero(store: StoreProcess, group: str = "app") -> bool:
    async with Client(store.addr) as c:
        desc = await c.describe_group(group)
    return sum(p.lag_events for p in desc.partitions) == 0


async def balanced(scs: list[Sidecar], total: int = 12) -> bool:
    parts = [await sc.partitions() for sc in scs]
    union = set().union(*parts)
    return (
        len(union) == total
        and sum(map(len, parts)) == total
        and max(map(len, parts)) - min(map(len, parts)) <= 1
    )


async def test_three_sidecars_share_partitions_in_order_exactly_once(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    scs = [sidecars(f"sc{i}") for i in range(3)]
    for sc in scs:
        await sc.start()
    await eventually(lambda: balanced(scs), timeout=WAIT)
    assert [len(await sc.partitions()) for sc in scs] == [4, 4, 4]
    ids = await produce(store_proc, streams=30, per_stream=4)
    await app.wait(lambda: app.acked_ids() >= set(ids))
    assert len(app.received) == len(ids)  # without faults: exactly once
    assert in_order_per_stream(app.received)
    owners = {sc.name: await sc.partitions() for sc in scs}
    for r in app.received:  # each event came through the sidecar owning its partition
        assert partition_of(r.stream, 12) == r.partition and r.partition in owners[r.sidecar]


async def test_kill_9_moves_partitions_within_the_lease_and_loses_nothing(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    scs = [sidecars(f"k{i}", "--commit-interval", "5s") for i in range(3)]
    for sc in scs:
        await sc.start()
    await eventually(lambda: balanced(scs), timeout=WAIT)
    first = await produce(store_proc, streams=30, per_stream=2)
    await app.wait(lambda: app.acked_ids() >= set(first))
    victim, rest = scs[1], [scs[0], scs[2]]
    killed_at = time.monotonic()
    victim.signal(signal.SIGKILL)
    await victim.wait()
    await eventually(lambda: balanced(rest), timeout=WAIT)
    moved_after = time.monotonic() - killed_at
    # Moved because the 2 s lease ran out (a lease and a heartbeat; slack for a busy machine),
    # not by anything slower.
    assert moved_after < 3 * 2.0
    second = await produce(store_proc, streams=30, per_stream=2)
    await app.wait(lambda: app.acked_ids() >= set(first) | set(second))
    counts = collections.Counter(r.id for r in app.acked)
    duplicates = {i for i, n in counts.items() if n > 1}
    # Only what the killed sidecar had handled but not committed (commits every 5s) comes again.
    by_victim = {r.id for r in app.acked if r.sidecar == victim.name}
    assert duplicates <= by_victim
    assert in_order_per_stream([r for r in app.received if r.sidecar != victim.name])


async def test_sigterm_hands_over_at_once_without_duplicates(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    scs = [sidecars(f"t{i}", "--lease", "20s", "--commit-interval", "10s") for i in range(2)]
    for sc in scs:
        await sc.start()
    await eventually(lambda: balanced(scs), timeout=WAIT)
    first = await produce(store_proc, streams=20, per_stream=2)
    await app.wait(lambda: app.acked_ids() >= set(first))
    leaving_at = time.monotonic()
    scs[1].signal(signal.SIGTERM)
    assert await scs[1].wait() == 0
    await eventually(lambda: balanced([scs[0]]), timeout=WAIT)
    assert time.monotonic() - leaving_at < 5.0  # far sooner than the 20s lease
    second = await produce(store_proc, streams=20, per_stream=2)
    await app.wait(lambda: app.acked_ids() >= set(first) | set(second))
    assert len(app.acked) == len(first) + len(second)  # no duplicates: it committed before leaving


async def test_retries_with_backoff_then_dead_letters_poison(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    sc = sidecars("r0", "--max-attempts", "3")
    await sc.start()
    app.script["orders-flaky"] = [503, 503]
    app.script["orders-moved"] = [308]  # a redirect: the app's URL is wrong, not the event
    app.poison.add("Poison")
    async with Client(store_proc.addr) as c:
        flaky = new_event("Placed", {"n": 1})
        await c.append("orders-flaky", [flaky])
        moved = new_event("Placed", {"n": 4})
        await c.append("orders-moved", [moved])
        poison = new_event("Poison", {"n": 2})
        after = new_event("Placed", {"n": 3})
        await c.append("orders-bad", [poison])
        await c.append("orders-bad", [after])
        await app.wait(lambda: {flaky.id, after.id, moved.id} <= app.acked_ids())
        attempts = [r.attempt for r in app.received if r.id == flaky.id]
        assert attempts == [1, 2, 3]
        assert [r.attempt for r in app.received if r.id == moved.id] == [1, 2]
        assert [r.attempt for r in app.received if r.id == poison.id] == [1, 2, 3]
        # The partition moved on past the poison event, in order.
        order = [r.id for r in app.received if r.stream == "orders-bad"]
        assert order.index(after.id) > max(i for i, x in enumerate(order) if x == poison.id)
        (dead,) = await c.read_list("$dlq.app")
        assert dead.type == "Poison" and dead.data == poison.data
        assert dead.metadata["dlq-attempts"] == "3" and "HTTP 500" in dead.metadata["dlq-reason"]
        assert dead.metadata["dlq-stream"] == "orders-bad" and dead.metadata["dlq-event-id"] == poison.id
    status = await sc.status()
    assert int(status["retried"]) >= 5 and int(status["dead_lettered"]) == 1


async def test_a_paused_member_past_its_lease_cannot_commit_or_deliver(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    scs = [sidecars(f"p{i}") for i in range(2)]
    for sc in scs:
        await sc.start()
    await eventually(lambda: balanced(scs), timeout=WAIT)
    first = await produce(store_proc, streams=20, per_stream=1)
    await app.wait(lambda: app.acked_ids() >= set(first))
    paused, other = scs[1], scs[0]
    lost = await paused.partitions()
    await eventually(lambda: group_lag_is_zero(store_proc), timeout=WAIT)  # everything committed
    paused.signal(signal.SIGSTOP)
    await eventually(lambda: balanced([other]), timeout=WAIT)  # its lease ran out: all to the other
    during = await produce(store_proc, streams=20, per_stream=1)
    await app.wait(lambda: app.acked_ids() >= set(first) | set(during))
    seen_before = len(app.received)
    paused.signal(signal.SIGCONT)
    await eventually(lambda: balanced(scs), timeout=WAIT)  # it rejoined and got a share again
    after = await produce(store_proc, streams=20, per_stream=1)
    await app.wait(lambda: app.acked_ids() >= set(first) | set(during) | set(after))
    late = app.received[seen_before:]
    # Nothing it fetched before the pause was delivered by it afterwards: each event once.
    assert len(app.acked) == len(first) + len(during) + len(after)
    assert not [r for r in late if r.sidecar == paused.name and r.id in set(during)]
    assert lost  # it had partitions to lose
    await eventually(lambda: group_lag_is_zero(store_proc), timeout=WAIT)


async def test_store_restart_during_delivery_loses_nothing(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    scs = [sidecars(f"s{i}") for i in range(2)]
    for sc in scs:
        await sc.start()
    await eventually(lambda: balanced(scs), timeout=WAIT)
    first = await produce(store_proc, streams=20, per_stream=2)
    assert store_proc.proc is not None
    store_proc.proc.send_signal(signal.SIGKILL)
    await store_proc.wait()
    await store_proc.start()  # same address, same database
    second = await produce(store_proc, streams=20, per_stream=2)
    await app.wait(lambda: app.acked_ids() >= set(first) | set(second))
    assert in_order_per_stream(app.received)


async def test_reset_to_a_time_replays_from_there(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    # Commits only at heartbeats (one a second), so that the reset below most likely lands
    # where the sidecar last committed, while it has handled more: a reset it must not
    # mistake for a heartbeat that merely repeats its committed cursor.
    sc = sidecars("z0", "--commit-interval", "1h")
    await sc.start()
    first = await produce(store_proc, streams=5, per_stream=2)
    await app.wait(lambda: app.acked_ids() >= set(first))
    async with Client(store_proc.addr) as c:
        head = max(e.position for e in await c.read_list())

        async def committed_first() -> bool:
            return all(p.cursor == head + 1 for p in (await c.describe_group("app")).partitions)

        await eventually(committed_first, timeout=WAIT)
        second = await produce(store_proc, streams=5, per_stream=2)
        await app.wait(lambda: app.acked_ids() >= set(first) | set(second))
        (start_of_second,) = [e for e in await c.read_list() if e.id == second[0]]
        assert start_of_second.position == head + 1
        await c.reset_group("app", start_of_second.created)
    await app.wait(lambda: len(app.acked) >= len(first) + 2 * len(second))
    replayed = collections.Counter(r.id for r in app.acked)
    assert {i for i, n in replayed.items() if n == 2} == set(second)
    assert all(replayed[i] == 1 for i in first)


async def test_sigterm_goes_unready_then_finishes_in_flight_work(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    sc = sidecars("d0", "--lease", "20s")
    await sc.start()
    release = app.hold["orders-slow"] = asyncio.Event()
    async with Client(store_proc.addr) as c:
        slow = new_event("Placed")
        await c.append("orders-slow", [slow])
        await asyncio.wait_for(app.holding.wait(), 30)  # the delivery is in flight
        sc.signal(signal.SIGTERM)

        async def unready() -> bool:
            return (await sc.get("/readyz", ok_only=False)).get("ready") is False

        await eventually(unready, timeout=WAIT)  # unready first, while the delivery is still held
        assert sc.proc is not None and sc.proc.returncode is None
        release.set()
        assert await sc.wait() == 0
        assert [r.id for r in app.acked] == [slow.id]
        desc = await c.describe_group("app")
    assert desc.members == [] or all(not m.assigned for m in desc.members)  # it left the group
    assert sum(p.lag_events for p in desc.partitions) == 0  # and committed the held event


async def test_a_group_of_every_stream_never_consumes_its_own_dead_letters(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    # No prefixes: the group reads every stream, and one partition, so that an event
    # appended after the dead letter proves the partition was read past it.
    sc = sidecars("all0", "--prefixes", "", "--partitions", "1", group="every")
    await sc.start()
    app.script["refused"] = [400]  # the app refuses it: straight to the dead-letter stream
    async with Client(store_proc.addr) as c:
        bad = new_event("Order", {"n": 1})
        await c.append("refused", [bad])

        async def dead_lettered() -> bool:
            return (await c.stream_info("$dlq.every")).event_count == 1

        await eventually(dead_lettered, timeout=WAIT)
        marker = new_event("Marker", {})
        await c.append("after", [marker])
        await app.wait(lambda: marker.id in app.acked_ids())
        assert [r.stream for r in app.received] == ["refused", "after"]  # no dead letter came back
        assert len(await c.read_list("$dlq.every")) == 1
    assert int((await sc.status())["dead_lettered"]) == 1


async def test_a_store_replaced_by_an_empty_one_is_joined_afresh(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar], tmp_path: Path
) -> None:
    sc = sidecars("n0")
    await sc.start()
    before = await produce(store_proc, streams=4, per_stream=3)
    await app.wait(lambda: app.acked_ids() >= set(before))
    assert store_proc.proc is not None
    store_proc.proc.kill()  # the store and its data are gone; an empty one takes its address
    await store_proc.proc.wait()
    empty = StoreProcess(f"sqlite:///{tmp_path}/empty.db", log=tmp_path / "empty.log")
    empty.addr = store_proc.addr
    empty.args[empty.args.index("--addr") + 1] = store_proc.addr
    await empty.start()
    try:
        after = await produce(empty, streams=4, per_stream=3)  # positions 1.. again
        await app.wait(lambda: app.acked_ids() >= set(after))  # the group was made again there
        assert "the store was replaced" in (tmp_path / "sidecar-n0.log").read_text()
    finally:
        assert empty.proc is not None
        empty.proc.kill()
        await empty.proc.wait()


async def test_an_event_that_cannot_be_an_http_request_is_dead_lettered_at_once(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    """A ``tracestate`` in the metadata travels as a header: one holding a line break
    could split the request, so the event goes to the dead letters, and the rest flow."""
    sc = sidecars("h0")
    await sc.start()
    async with Client(store_proc.addr) as c:
        bad = new_event("Placed", {"n": 1}, metadata={"tracestate": "a=1\r\nx-injected: yes"})
        after = new_event("Placed", {"n": 2})
        await c.append("orders-split", [bad, after])
        await app.wait(lambda: after.id in app.acked_ids())
        assert bad.id not in {r.id for r in app.received}
        assert not any("x-injected" in headers for headers, _ in app.raw)
        (dead,) = await c.read_list("$dlq.app")
        assert dead.metadata["dlq-event-id"] == bad.id
        assert "line break" in dead.metadata["dlq-reason"] and dead.metadata["dlq-attempts"] == "1"
