"""Read and Subscribe over real gRPC: start points, filters, forms, catch-up to live."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice import (
    END,
    START,
    Client,
    InvalidArgument,
    LimitExceeded,
    Position,
    Revision,
    StoreReplaced,
    StreamNotFound,
    new_event,
)
from sluice.client import SubscriptionItem
from sluice.v1 import streams_pb2 as pb
from sluice_store import config
from sluice_store.server import StoreServer
from tests.conftest import StoreFactory, eventually

WAIT = 10.0


async def fill(client: Client) -> list[pb.AppendResponse]:
    """orders-1: 3 events, users-1: 2 events, orders-2: 1 event, interleaved."""
    out = []
    out.append(await client.append("orders-1", [new_event("Placed", {"i": 0})]))
    out.append(await client.append("users-1", [new_event("Joined", {"i": 1})]))
    out.append(await client.append("orders-1", [new_event("Paid", {"i": 2})]))
    out.append(await client.append("orders-2", [new_event("Placed", {"i": 3})]))
    out.append(await client.append("users-1", [new_event("Left", {"i": 4})]))
    out.append(await client.append("orders-1", [new_event("Shipped", {"i": 5})]))
    return out


async def revs(it: AsyncIterator[pb.RecordedEvent]) -> list[int]:
    return [e.revision async for e in it]


async def test_read_stream_start_points(client: Client) -> None:
    await fill(client)
    assert await revs(client.read("orders-1")) == [0, 1, 2]
    assert await revs(client.read("orders-1", start=START)) == [0, 1, 2]
    assert await revs(client.read("orders-1", start=END)) == []
    assert await revs(client.read("orders-1", start=Revision(1))) == [1, 2]
    assert await revs(client.read("orders-1", start=Position(3))) == [1, 2]
    assert await revs(client.read("orders-1", backwards=True)) == [2, 1, 0]
    assert await revs(client.read("orders-1", backwards=True, start=Revision(1))) == [1, 0]
    assert await revs(client.read("orders-1", backwards=True, start=Position(5))) == [1, 0]
    assert await revs(client.read("orders-1", max_count=2)) == [0, 1]
    assert await revs(client.read("orders-1", batch_size=1)) == [0, 1, 2]


async def test_read_from_time(client: Client) -> None:
    await client.append("timed", [new_event("Old")])
    await client.append("timed", [new_event("New")])
    old, new = await client.read_list("timed")
    # Cut between the two commit times (an append takes far longer than a microsecond).
    assert new.created.ToMicroseconds() > old.created.ToMicroseconds()
    cut = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=old.created.ToMicroseconds() + 1)
    assert [e.type async for e in client.read("timed", start=cut)] == ["New"]
    assert [e.type async for e in client.read("timed", start=cut, backwards=True)] == ["Old"]
    assert [e.type async for e in client.read(start=cut)] == ["New"]
    for stream in ("", "timed"):
        sub = client.subscribe(stream, start=cut)
        first = await asyncio.wait_for(anext(sub), WAIT)
        assert isinstance(first, pb.RecordedEvent) and first.type == "New"
        assert isinstance(await asyncio.wait_for(anext(sub), WAIT), pb.CaughtUp)
        await sub.aclose()


async def test_read_all_positions_filters_and_forms(client: Client) -> None:
    await fill(client)
    everything = await client.read_list()
    assert [e.position for e in everything] == [1, 2, 3, 4, 5, 6]
    assert [e.position for e in await client.read_list(start=Position(4))] == [4, 5, 6]
    assert [e.position for e in await client.read_list(backwards=True, max_count=2)] == [6, 5]
    assert [e.position for e in await client.read_list(start=END)] == []
    orders = await client.read_list(stream_prefixes=["orders-"])
    assert [e.stream for e in orders] == ["orders-1", "orders-1", "orders-2", "orders-1"]
    placed = await client.read_list(event_types=["Placed", "Left"])
    assert [e.type for e in placed] == ["Placed", "Placed", "Left"]
    both = await client.read_list(stream_prefixes=["users-"], event_types=["Left"])
    assert [(e.stream, e.type) for e in both] == [("users-1", "Left")]
    full = everything[0]
    assert full.data == b'{"i":0}' and full.content_type == "application/json"
    assert full.HasField("created") and full.id
    notes = await client.read_list(notifications_only=True)
    assert all(n.data == b"" for n in notes)
    for note, ev in zip(notes, everything, strict=True):
        ev.ClearField("data")
        assert note == ev  # a notification is the full event without data


async def test_read_missing_stream_is_not_found(client: Client) -> None:
    with pytest.raises(StreamNotFound) as info:
        await client.read_list("nope")
    assert info.value.reason == "STREAM_NOT_FOUND"
    with pytest.raises(InvalidArgument):
        await client.read_list(start=Revision(1))


async def take_until_caught_up(sub: AsyncIterator[SubscriptionItem]) -> tuple[list[pb.RecordedEvent], int]:
    events = []
    while True:
        item = await asyncio.wait_for(anext(sub), WAIT)
        if isinstance(item, pb.RecordedEvent):
            events.append(item)
        elif isinstance(item, pb.CaughtUp):
            return events, item.position


@pytest.mark.parametrize(
    ("stream", "start", "want"),
    [
        ("", START, [1, 2, 3, 4, 5, 6]),
        ("", END, []),
        ("", Position(5), [5, 6]),
        ("orders-1", START, [1, 3, 6]),
        ("orders-1", END, []),
        ("orders-1", Revision(1), [3, 6]),
        ("orders-1", Position(4), [6]),
    ],
)
async def test_subscribe_start_points(client: Client, stream: str, start: object, want: list[int]) -> None:
    await fill(client)
    sub = client.subscribe(stream, start=start)  # type: ignore[arg-type]
    events, cursor = await take_until_caught_up(sub)
    assert [e.position for e in events] == want
    assert cursor == 7
    live = await client.append(stream or "orders-1", [new_event("Live")])
    item = await asyncio.wait_for(anext(sub), WAIT)
    assert isinstance(item, pb.RecordedEvent) and item.position == live.first_position
    await sub.aclose()


@pytest.mark.parametrize("stream", ["empty-and-missing", ""])
async def test_caught_up_on_empty_and_missing(client: Client, stream: str) -> None:
    sub = client.subscribe(stream, start=START)
    events, cursor = await take_until_caught_up(sub)
    assert events == [] and cursor >= 1
    await client.append("empty-and-missing", [new_event("First")])
    item = await asyncio.wait_for(anext(sub), WAIT)
    assert isinstance(item, pb.RecordedEvent) and item.type == "First"
    await sub.aclose()


async def test_heartbeat_carries_head_position(client: Client) -> None:
    await fill(client)
    sub = client.subscribe("quiet", heartbeat_interval=0.05)
    await take_until_caught_up(sub)
    item = await asyncio.wait_for(anext(sub), WAIT)
    assert isinstance(item, pb.Heartbeat) and item.head_position == 6
    await sub.aclose()


async def test_filtered_subscription_sends_checkpoints(client: Client) -> None:
    await fill(client)
    sub = client.subscribe(start=START, stream_prefixes=["users-"], heartbeat_interval=0.05)
    seen: list[SubscriptionItem] = []
    while not any(isinstance(i, pb.CaughtUp) for i in seen):
        seen.append(await asyncio.wait_for(anext(sub), WAIT))
    assert [e.stream for e in seen if isinstance(e, pb.RecordedEvent)] == ["users-1", "users-1"]
    assert any(isinstance(i, pb.Checkpoint) and i.position == 7 for i in seen)
    await client.append("orders-9", [new_event("Skipped")])
    while True:  # live: the skipped event moves the cursor past it
        item = await asyncio.wait_for(anext(sub), WAIT)
        if isinstance(item, pb.Checkpoint):
            assert item.position == 8
            break
        assert not isinstance(item, pb.RecordedEvent)
    await sub.aclose()


async def test_notification_subscription_has_no_data(client: Client) -> None:
    sub = client.subscribe("n", start=START, notifications_only=True)
    await take_until_caught_up(sub)
    await client.append("n", [new_event("T", {"big": "x" * 100}, metadata={"k": "v"})])
    item = await asyncio.wait_for(anext(sub), WAIT)
    assert isinstance(item, pb.RecordedEvent)
    assert item.data == b"" and item.type == "T" and dict(item.metadata) == {"k": "v"}
    assert item.stream == "n" and item.revision == 0
    await sub.aclose()


async def _consume(sub: AsyncIterator[SubscriptionItem], total: int, out: list[pb.RecordedEvent]) -> None:
    async for item in sub:
        if isinstance(item, pb.RecordedEvent):
            out.append(item)
            if len(out) == total:
                return


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    before=st.integers(0, 300),
    writers=st.integers(1, 4),
    per_writer=st.integers(1, 60),
    batch=st.integers(1, 20),
)
async def test_no_gap_no_duplicate_across_catch_up_to_live(
    make_store: StoreFactory, before: int, writers: int, per_writer: int, batch: int
) -> None:
    store = await make_store()
    async with Client(store.address) as client:
        if before:
            await client.append("pre", [new_event("E") for _ in range(before)])
        total = before + writers * per_writer
        got_all: list[pb.RecordedEvent] = []
        got_stream: list[pb.RecordedEvent] = []
        t1 = asyncio.create_task(_consume(client.subscribe(start=START, max_batch=batch), total, got_all))
        t2 = asyncio.create_task(
            _consume(client.subscribe("w-0", start=START, max_batch=batch), per_writer, got_stream)
        )

        async def writer(w: int) -> None:
            for _ in range(per_writer):
                await client.append(f"w-{w}", [new_event("E")])

        await asyncio.gather(*(writer(w) for w in range(writers)))
        await asyncio.wait_for(asyncio.gather(t1, t2), WAIT)
    assert [e.position for e in got_all] == list(range(1, total + 1))
    assert [e.revision for e in got_stream] == list(range(per_writer))


async def test_slow_subscriber_misses_nothing_and_does_not_delay_fast(make_store: StoreFactory) -> None:
    store: StoreServer = await make_store(subscriber_buffer=50, max_read_batch=20)
    total = 3000
    async with Client(store.address) as client:
        fast: list[pb.RecordedEvent] = []
        slow: list[pb.RecordedEvent] = []
        fell_behind = 0
        fast_done = asyncio.Event()
        live = [asyncio.Event(), asyncio.Event()]

        async def run_fast() -> None:
            async for item in client.subscribe(start=START):
                if isinstance(item, pb.CaughtUp):
                    live[0].set()
                if isinstance(item, pb.RecordedEvent):
                    fast.append(item)
                    if len(fast) == total:
                        break
            fast_done.set()

        async def run_slow() -> None:
            nonlocal fell_behind
            async for item in client.subscribe(start=START, max_batch=5):
                if isinstance(item, pb.CaughtUp):
                    live[1].set()
                if isinstance(item, pb.FellBehind):
                    fell_behind += 1
                if isinstance(item, pb.RecordedEvent):
                    slow.append(item)
                    if len(slow) == total:
                        return
                    if not fast_done.is_set():
                        await asyncio.sleep(0.002)  # a consumer that cannot keep up

        tasks = [asyncio.create_task(run_fast()), asyncio.create_task(run_slow())]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in live)), WAIT)
        for i in range(0, total, 100):
            await client.append(f"s-{i}", [new_event("E") for _ in range(100)])
        await asyncio.wait_for(fast_done.wait(), WAIT)
        assert len(slow) < total  # the fast one finished while the slow one was still behind
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert [e.position for e in fast] == list(range(1, total + 1))
    assert [e.position for e in slow] == list(range(1, total + 1))
    assert fell_behind >= 1

    async def unsubscribed() -> bool:
        return len(store.broker) == 0

    await eventually(unsubscribed)


async def test_partition_filter_splits_streams_like_a_group(client: Client) -> None:
    from sluice.partition import partition_of

    streams = [f"p-{i}" for i in range(40)]
    for s in streams:
        await client.append(s, [new_event("E")])
    seen: list[str] = []
    for part in range(4):
        req = pb.ReadRequest(filter=pb.Filter(stream_prefixes=["p-"], partition_count=4, partitions=[part]))
        events = [e async for batch in client.read_batches(stream_prefixes=["p-"]) for e in batch]
        assert len(events) == 40
        got = [e.stream async for e in _read_partitioned(client, req)]
        assert all(partition_of(s, 4) == part for s in got)
        seen += got
    assert sorted(seen) == sorted(streams)  # every stream in exactly one partition
    assert len({partition_of(s, 4) for s in streams}) == 4
    # Live: a subscription to partition p gets only the new events of its streams.
    target = next(s for s in streams if partition_of(s, 4) == 1)
    other = next(s for s in streams if partition_of(s, 4) != 1)
    req_sub = pb.SubscribeRequest(filter=pb.Filter(partition_count=4, partitions=[1]))
    call = client._stub.Subscribe(req_sub)
    async for msg in call:
        if msg.WhichOneof("content") == "caught_up":
            break
    await client.append(other, [new_event("Skip")])
    await client.append(target, [new_event("Take")])
    async for msg in call:
        if msg.WhichOneof("content") == "events":
            assert [e.stream for e in msg.events.events] == [target]
            break
    call.cancel()


async def _read_partitioned(client: Client, req: pb.ReadRequest) -> AsyncIterator[pb.RecordedEvent]:
    async for msg in client._stub.Read(req):
        for e in msg.events:
            yield e


async def test_broadcast_reaches_live_subscriptions_that_asked_for_ephemeral_messages(client: Client) -> None:
    stub = client._stub

    def subscribe(prefix: str, ephemeral: bool) -> Any:
        req = pb.SubscribeRequest(filter=pb.Filter(stream_prefixes=[prefix]), include_ephemeral=ephemeral)
        return stub.Subscribe(req)

    async def next_of(call: Any) -> pb.SubscribeResponse:
        msg: pb.SubscribeResponse = await asyncio.wait_for(call.read(), 10)
        return msg

    wants, other_prefix, plain = subscribe("chat.", True), subscribe("news.", True), subscribe("chat.", False)
    for call in (wants, other_prefix, plain):
        assert (await next_of(call)).WhichOneof("content") == "caught_up"
    msg = pb.EphemeralMessage(id="e-1", stream="chat.1", type="Typing", data=b"x")
    assert (await stub.Broadcast(msg)).subscriptions == 1
    got = await next_of(wants)
    assert got.WhichOneof("content") == "ephemeral" and got.ephemeral == msg
    # Never stored: a read finds nothing; the others got an event only when one is appended.
    assert await client.read_list() == []
    resp = await client.append("chat.1", [new_event("Said", b"hi")])
    for call in (wants, plain):
        assert (await next_of(call)).events.events[0].position == resp.first_position
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Broadcast(pb.EphemeralMessage(stream="chat.1"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for call in (wants, other_prefix, plain):
        call.cancel()


async def test_a_commit_landing_as_the_heartbeat_times_out_is_delivered_not_skipped(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live wait and a commit race: the wait times out although the commit has just
    filled the buffer. A filtered subscriber must get the events, not a checkpoint past them."""
    from sluice_store import subscriptions

    armed = asyncio.Event()
    appended: list[pb.AppendResponse] = []
    woken = subscriptions.woken

    async def racing(wakeup: asyncio.Event, seconds: float) -> bool:
        if not armed.is_set():
            return await woken(wakeup, seconds)
        armed.clear()
        appended.append(await client.append("race-1", [new_event("E", b"x")]))  # lands now...
        return False  # ...as the heartbeat times out

    monkeypatch.setattr(subscriptions, "woken", racing)
    sub = client.subscribe(stream_prefixes=["race-"], heartbeat_interval=0.05)
    assert isinstance(await asyncio.wait_for(anext(sub), WAIT), pb.CaughtUp)
    armed.set()
    async with asyncio.timeout(WAIT):
        while True:
            item = await anext(sub)
            if isinstance(item, pb.RecordedEvent | pb.Checkpoint):
                break
    assert isinstance(item, pb.RecordedEvent), f"skipped past the event: {item}"
    assert item.position == appended[0].first_position
    await sub.aclose()


async def test_a_prefix_matches_names_with_any_character_after_it(client: Client) -> None:
    top = "\U0010ffff"  # the highest code point, once a prefix range's upper bound
    names = [f"p{top}", f"p{top}x", "pa", f"{top}only", "q"]
    for name in names:
        await client.append(name, [new_event("E", b"")])
    got = [e.stream for e in await client.read_list(stream_prefixes=["p"])]
    assert got == [f"p{top}", f"p{top}x", "pa"]
    assert [e.stream for e in await client.read_list(stream_prefixes=[top])] == [f"{top}only"]
    assert [s.stream async for s in client.list_streams("p")] == sorted(got)
    assert len([s async for s in client.list_streams("")]) == len(names)


def _ephemeral(n: int, size: int, ttl_s: float) -> pb.EphemeralMessage:
    msg = pb.EphemeralMessage(id=str(n), stream="chat", type="T", data=b"x" * size)
    msg.expires.FromNanoseconds(time.time_ns() + int(ttl_s * 1e9))
    return msg


async def _ephemeral_items(call: Any, total: int) -> tuple[list[str], int]:
    """Read a subscription until `total` broadcasts are accounted for: (ids got, dropped)."""
    got: list[str] = []
    dropped = 0
    async with asyncio.timeout(20):
        async for msg in call:
            kind = msg.WhichOneof("content")
            if kind == "ephemeral":
                got.append(msg.ephemeral.id)
            elif kind == "ephemeral_dropped":
                dropped += msg.ephemeral_dropped.count
            if len(got) + dropped >= total:
                return got, dropped
    raise AssertionError("the subscription ended")


async def test_broadcasts_for_a_stalled_subscriber_are_bounded_in_bytes_and_dropped_at_their_ttl(
    make_store: StoreFactory,
) -> None:
    store = await make_store(ephemeral_buffer_bytes=1 << 20, ephemeral_total_bytes=4 << 20)
    async with Client(store.address) as c:
        stalled = c._stub.Subscribe(pb.SubscribeRequest(include_ephemeral=True))
        assert (await anext(aiter(stalled))).WhichOneof("content") == "caught_up"
        most = 0
        for n in range(300):  # 30 MB for a subscriber that reads nothing: more than any socket holds
            await c._stub.Broadcast(_ephemeral(n, 100_000, 60))
            most = max(most, store.broker.ephemeral_bytes)
        assert 0 < most <= 1 << 20
        got, dropped = await _ephemeral_items(stalled, 300)
        assert dropped > 0 and len(got) + dropped == 300  # every drop told
        assert got[-1] == "299" and got == sorted(got, key=int)  # the newest kept, in order
        stalled.cancel()

        late = c._stub.Subscribe(pb.SubscribeRequest(include_ephemeral=True))
        assert (await anext(aiter(late))).WhichOneof("content") == "caught_up"
        for n in range(300):  # stalled again: its queue is full of long-lived messages
            await c._stub.Broadcast(_ephemeral(n, 100_000, 60))
        for n in range(3):  # then three that live 0.3 s
            await c._stub.Broadcast(_ephemeral(1000 + n, 100_000, 0.3))
        full = store.broker.ephemeral_bytes

        async def swept() -> bool:  # dropped where they wait, at their time to live, unread
            return store.broker.ephemeral_bytes <= full - 300_000

        await eventually(swept)
        got, dropped = await _ephemeral_items(late, 303)
        assert not {"1000", "1001", "1002"} & set(got) and len(got) + dropped == 303
        late.cancel()


async def test_the_client_says_when_the_store_at_its_address_was_replaced(
    make_store: StoreFactory, db_url: Callable[[str], str]
) -> None:
    first = await make_store(db=db_url("a"))
    second = await make_store(db=db_url("b"))  # another database: another store
    async with Client(first.address) as c:
        await c.read_list()
        known = c.store_id
    assert known
    async with Client(second.address) as c2:
        c2.store_id = known  # as if it had talked to the first store at this address before
        with pytest.raises(StoreReplaced) as replaced:
            await c2.read_list()
        assert replaced.value.metadata["previous_store_id"] == known != c2.store_id
        assert await c2.read_list() == []  # told once; it follows the new store from then on


async def test_subscriptions_past_max_subscriptions_are_refused_until_one_ends(
    make_store: StoreFactory,
) -> None:
    store: StoreServer = await make_store(max_subscriptions=2)
    async with Client(store.address, timeout=WAIT) as c:
        await c.append("s", [new_event("E")])
        open_ = [c.subscribe("s", start=START), c.subscribe("", start=START)]
        async with asyncio.timeout(WAIT):
            for sub in open_:  # both served: each catches up
                async for item in sub:
                    if isinstance(item, pb.CaughtUp):
                        break
            with pytest.raises(LimitExceeded) as refused:
                async for _ in c.subscribe("s", start=START):
                    pass
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.metadata["limit"] == "max_subscriptions"
            assert refused.value.metadata["max"] == "2"
            await open_[0].aclose()

            async def room() -> bool:
                return store.service.subscriptions.open < 2

            await eventually(room, WAIT)
            async for item in c.subscribe("s", start=START):  # a place is free again
                if isinstance(item, pb.RecordedEvent):
                    assert item.stream == "s"
                    break
            await open_[1].aclose()


def test_max_subscriptions_is_zero_for_no_limit_or_a_positive_count() -> None:
    assert config.load([]).max_subscriptions == 0
    assert config.load(["--max-subscriptions", "5"]).max_subscriptions == 5
    with pytest.raises(config.ConfigError, match="SLUICE_MAX_SUBSCRIPTIONS"):
        config.load([], {"SLUICE_MAX_SUBSCRIPTIONS": "-1"})
