"""Changes to a group while its sidecars run: a deleted group, a changed filter."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sluice import START, Client, new_event
from tests.conftest import StoreProcess, eventually, reap
from tests.sidecar.conftest import WAIT, App, Received, Sidecar
from tests.sidecar.test_mesh import balanced, group_lag_is_zero


async def test_a_deleted_group_makes_its_sidecar_unready_until_it_exists_again(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar], tmp_path: Path
) -> None:
    sc = sidecars("d0", "--create-group", "false", group="later")
    await sc.start(ready=False)
    await sc.readiness(False, "later does not exist")  # no group yet: not ready, and it says why
    async with Client(store_proc.addr) as c:
        await c.create_group("later", stream_prefixes=["orders-"], lease=2.0)
        await sc.readiness(True)
        first = new_event("Placed", {"n": 1})
        await c.append("orders-1", [first])
        await app.wait(lambda: first.id in app.acked_ids())

        await c.delete_group("later")
        body = await sc.readiness(False, "later does not exist")
        status = await sc.status()
        assert not status["ready"] and status["reason"] == body["reason"] and not status["partitions"]
        await c.append("orders-1", [new_event("Placed", {"n": 2})])  # for nobody: the group is gone

        await c.create_group("later", stream_prefixes=["orders-"], lease=2.0)  # from the end
        await sc.readiness(True)
        again = new_event("Placed", {"n": 3})
        await c.append("orders-2", [again])
        await app.wait(lambda: again.id in app.acked_ids())
    assert [r.id for r in app.acked] == [first.id, again.id]
    log = (tmp_path / "sidecar-d0.log").read_text()
    assert log.count("group later was deleted") == 1 and log.count("group later does not exist") == 1
    assert log.count("group later found: joining it") == 2
    # No flood: a refused commit per partition, and on a loaded machine one more for a
    # partition whose commit was already in flight (14 of 12 seen once) - not one per beat.
    assert "WARNING" not in log and log.count("refused: GROUP_NOT_FOUND") <= 24


@dataclasses.dataclass(frozen=True)
class Change:
    """A group's filter before and after an UpdateGroup."""

    before: tuple[tuple[str, ...], tuple[str, ...]]  # (prefixes, types)
    after: tuple[tuple[str, ...], tuple[str, ...]]


CHANGES = {
    "types-widened": Change((("orders-",), ("Wanted",)), (("orders-",), ("Wanted", "Later"))),
    "types-narrowed": Change((("orders-",), ("Wanted", "Later")), (("orders-",), ("Wanted",))),
    "prefixes-widened": Change((("orders-",), ()), (("orders-", "refunds-"), ())),
    "prefixes-narrowed": Change((("orders-", "refunds-"), ()), (("orders-",), ())),
}
STREAMS = [f"{kind}-{n}" for kind in ("orders", "refunds", "misc") for n in range(4)]
TYPES = ["Wanted", "Later", "Other"]


def takes(f: tuple[tuple[str, ...], tuple[str, ...]], stream: str, etype: str) -> bool:
    prefixes, types = f
    return any(stream.startswith(p) for p in prefixes) and (not types or etype in types)


def in_revision_order(received: list[Received], which: Callable[[Received], bool], last: bool) -> bool:
    """The first (or the last) deliveries of the events ``which`` picks come in revision order
    in each stream."""
    chosen: dict[str, int] = {}
    for i, r in enumerate(received):
        if which(r) and (last or r.id not in chosen):
            chosen[r.id] = i
    revisions: dict[str, list[int]] = collections.defaultdict(list)
    for i in sorted(chosen.values()):
        revisions[received[i].stream].append(received[i].revision)
    return all(revs == sorted(revs) for revs in revisions.values())


@dataclasses.dataclass(frozen=True)
class Sent:
    id: str
    stream: str
    type: str
    after_change: bool  # its append began after UpdateGroup returned
    after_applied: bool  # ... after every sidecar reported the new filter


@pytest.fixture
async def any_store(db_url: Callable[[str], str], tmp_path: Path) -> AsyncIterator[StoreProcess]:
    """A store process on this test's backend."""
    store = StoreProcess(db_url("mesh"), "--durability", "normal", log=tmp_path / "store.log")
    await store.start()
    yield store
    await reap([store])


@pytest.mark.parametrize("name", list(CHANGES))
async def test_a_changed_filter_skips_nothing_it_takes_while_events_flow(
    name: str, any_store: StoreProcess, app: App, tmp_path: Path
) -> None:
    change = CHANGES[name]
    scs = [
        Sidecar(f"f{i}", any_store.addr, "filtered", app.url(f"f{i}"), "--create-group", "false")
        for i in range(3)
    ]
    for sc in scs:
        sc.log = tmp_path / f"sidecar-{sc.name}.log"
    sent: list[Sent] = []
    changed, applied = asyncio.Event(), asyncio.Event()
    try:
        async with Client(any_store.addr) as c:
            prefixes, types = change.before
            await c.create_group(
                "filtered", stream_prefixes=prefixes, event_types=types, start=START, lease=2.0
            )
            await asyncio.gather(*(sc.start() for sc in scs))
            await eventually(lambda: balanced(scs), timeout=WAIT)

            async def produce(rounds: int) -> None:
                for n in range(rounds):
                    stream, etype = STREAMS[n % len(STREAMS)], TYPES[n // len(STREAMS) % len(TYPES)]
                    ev = new_event(etype, {"n": n})
                    sent.append(Sent(ev.id, stream, etype, changed.is_set(), applied.is_set()))
                    await c.append(stream, [ev])

            async def change_filter() -> None:
                while len(sent) < 60:  # noqa: ASYNC110 (the change lands among flowing appends)
                    await asyncio.sleep(0.005)
                prefixes, types = change.after
                await c.update_group("filtered", stream_prefixes=prefixes, event_types=types)
                changed.set()

            await asyncio.gather(produce(240), change_filter())
            assert sent[-1].after_change  # events still flowed after the change

            async def every_sidecar_applies_it() -> bool:
                want = {"stream_prefixes": list(change.after[0]), "event_types": list(change.after[1])}
                for sc in scs:
                    f = (await sc.status())["filter"]
                    if {k: f.get(k, []) for k in want} != want:
                        return False
                return True

            await eventually(every_sidecar_applies_it, timeout=WAIT)
            applied.set()
            await produce(2 * len(STREAMS) * len(TYPES))
            must = {s.id for s in sent if takes(change.after, s.stream, s.type) and s.after_change}
            must |= {
                s.id
                for s in sent
                if takes(change.after, s.stream, s.type) and takes(change.before, s.stream, s.type)
            }
            await app.wait(lambda: app.acked_ids() >= must)
            await eventually(lambda: group_lag_is_zero(any_store, "filtered"), timeout=WAIT)
    finally:
        for sc in scs:
            if sc.proc and sc.proc.returncode is None:
                sc.signal(signal.SIGTERM)
                await sc.wait()
    by_id = {s.id: s for s in sent}
    counts = collections.Counter(r.id for r in app.received)
    never = {
        s.id
        for s in sent
        if not takes(change.before, s.stream, s.type) and not takes(change.after, s.stream, s.type)
    }
    assert not never & set(counts), "events neither filter takes were delivered"
    dropped = {s.id for s in sent if s.after_applied and not takes(change.after, s.stream, s.type)}
    assert not dropped & set(counts), "events the new filter leaves out were delivered after it was applied"
    for eid, n in counts.items():  # again only for what both filters take (at least once)
        if n > 1:
            s = by_id[eid]
            assert takes(change.before, s.stream, s.type) and takes(change.after, s.stream, s.type), s
    # Order per stream: what the old filter took came in order the first time; a sidecar that
    # reads a partition again from its cursor for the new filter delivers again, in order,
    # from there, so the last deliveries of what the new filter takes come in order.
    assert in_revision_order(app.received, lambda r: takes(change.before, r.stream, r.type), last=False)
    assert in_revision_order(app.received, lambda r: takes(change.after, r.stream, r.type), last=True)


async def test_dead_letters_are_redriven_to_their_group_alone_once(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar]
) -> None:
    ours = sidecars("r0", "--max-attempts", "2", group="shop")
    other = sidecars("r1", group="audit")  # another group reading the same streams
    for sc in (ours, other):
        await sc.start()
    app.poison.add("Broken")  # the app cannot handle it yet (r1's too: it does not matter)
    async with Client(store_proc.addr) as c:
        bad = new_event("Broken", {"sku": "A1"})
        await c.append("orders-7", [bad])

        async def dead_lettered() -> bool:
            return (await c.stream_info("$dlq.shop")).event_count == 1

        await eventually(dead_lettered, timeout=WAIT)
        app.poison.discard("Broken")  # the app is fixed
        done = await c.redrive("shop", streams=["orders-7"])
        assert (done.redriven, done.already) == (1, 0)
        await app.wait(
            lambda: any(r.sidecar == "r0" and r.type == "Broken" and r.id != bad.id for r in app.acked)
        )
        again = await c.redrive("shop")  # idempotent
        assert (again.redriven, again.already) == (0, 1)
        redriven = [e for e in await c.read_list("orders-7") if e.metadata.get("redriven-for") == "shop"]
        assert len(redriven) == 1 and redriven[0].metadata["redriven-from"].startswith("$dlq.shop@")
        marker = new_event("Marker", {})
        await c.append("orders-7", [marker])  # after the redriven event in the same stream
        await app.wait(lambda: any(r.sidecar == "r1" and r.id == marker.id for r in app.acked))
    assert not any(r.sidecar == "r1" and r.id == redriven[0].id for r in app.received)  # not audit's
