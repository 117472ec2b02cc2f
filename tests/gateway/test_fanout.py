"""The gateway as a real process between a real store and many subscribers."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest

from sluice import Client, Position, new_event
from sluice.errors import InvalidArgument, LimitExceeded, from_rpc_error
from sluice.gateway import Cursor, GatewayClient, WatchItem
from sluice.names import MAX_FILTER_ENTRIES
from sluice.v1 import gateway_pb2 as gwpb
from sluice.v1 import streams_pb2 as pb
from tests.gateway.conftest import GatewayProcess, next_item
from tests.secure_mode import http_session

STREAMS = [f"{kind}-{i}" for kind in ("order", "user", "stock") for i in range(4)]
TYPES = ["Created", "Updated", "Deleted"]


async def produce(c: Client, n: int, seed: int = 7, size: int = 16) -> list[pb.RecordedEvent]:
    """Append n events spread over STREAMS and TYPES, in batches; return them as stored."""
    rng = random.Random(seed)
    first = None
    left = n
    while left:
        stream = rng.choice(STREAMS)
        k = min(left, rng.randint(1, 8))
        events = [
            new_event(rng.choice(TYPES), rng.randbytes(size), metadata={"k": str(left)}) for _ in range(k)
        ]
        resp = await c.append(stream, events)
        first = first or resp.first_position
        left -= k
    assert first is not None
    return await c.read_list(start=_pos(first))


def _pos(p: int) -> Position:
    return Position(p)


async def collect(
    g: GatewayClient, until: int | Callable[[], int], timeout: float = 30, **kwargs: Any
) -> tuple[list[pb.RecordedEvent], list[WatchItem], Cursor]:
    """Watch until the cursor passes position ``until`` (or what it returns once it returns
    more than 0); events and everything else."""
    cursor = Cursor()
    events: list[pb.RecordedEvent] = []
    other: list[WatchItem] = []
    async with asyncio.timeout(timeout):
        async for item in g.watch(cursor=cursor, heartbeat_interval=0.1, **kwargs):
            if isinstance(item, pb.RecordedEvent):
                events.append(item)
            else:
                other.append(item)
            last = until() if callable(until) else until
            if last and cursor.position > last:
                break
    return events, other, cursor


def matching(events: Sequence[pb.RecordedEvent], f: dict[str, Any]) -> list[pb.RecordedEvent]:
    streams, prefixes, types = (
        f.get("streams", ()),
        tuple(f.get("stream_prefixes", ())),
        f.get("event_types", ()),
    )
    out = []
    for e in events:
        if types and e.type not in types:
            continue
        if (streams or prefixes) and not (
            e.stream in streams or (prefixes and e.stream.startswith(prefixes))
        ):
            continue
        out.append(e)
    return out


def filters() -> list[dict[str, Any]]:
    """Many different filters: exact streams, prefixes, types and their mixes."""
    out: list[dict[str, Any]] = [{}]
    for s in STREAMS:
        out.append({"streams": [s]})
    for p in ("order", "user-", "stock-1", "u", "nothing"):
        out.append({"stream_prefixes": [p]})
    for t in TYPES:
        out.append({"event_types": [t]})
    for s, t in itertools.product(STREAMS[::3], TYPES):
        out.append({"streams": [s], "event_types": [t]})
    for p, t in itertools.product(("order", "stock"), TYPES[:2]):
        out.append({"stream_prefixes": [p], "streams": ["user-2"], "event_types": [t]})
    return out


async def test_500_subscribers_with_different_filters_get_exactly_their_events_in_order(
    gateway: GatewayProcess, store_client: Client
) -> None:
    fs = filters()
    specs = [(fs[i % len(fs)], "notification" if i % 2 else "full") for i in range(500)]
    async with GatewayClient(gateway.addr) as g:
        ready = [asyncio.Event() for _ in specs]
        stop_at: list[int] = []
        stop_set = asyncio.Event()

        async def subscriber(i: int) -> tuple[list[pb.RecordedEvent], Cursor]:
            f, form = specs[i]
            cursor = Cursor()
            got: list[pb.RecordedEvent] = []
            async for item in g.watch(cursor=cursor, heartbeat_interval=0.1, form=form, **f):
                if isinstance(item, pb.CaughtUp):
                    ready[i].set()
                elif isinstance(item, pb.RecordedEvent):
                    got.append(item)
                if stop_set.is_set() and cursor.position > stop_at[0]:
                    return got, cursor
            raise AssertionError("watch ended")

        tasks = [asyncio.create_task(subscriber(i)) for i in range(len(specs))]
        async with asyncio.timeout(60):
            await asyncio.gather(*(r.wait() for r in ready))
            appended = await produce(store_client, 600)
            stop_at.append(appended[-1].position)
            stop_set.set()
            results = await asyncio.gather(*tasks)
    for (f, form), (got, cursor) in zip(specs, results, strict=True):
        want = matching(appended, f)
        assert [e.position for e in got] == [e.position for e in want], (f, form)
        assert [e.id for e in got] == [e.id for e in want]
        if form == "full":
            assert [e.data for e in got] == [e.data for e in want]
            assert all(e.data for e in got)
        else:
            assert not any(e.data for e in got)
            assert [(e.type, e.stream, e.revision, dict(e.metadata)) for e in got] == [
                (e.type, e.stream, e.revision, dict(e.metadata)) for e in want
            ]
        assert cursor.position > appended[-1].position


async def test_disconnect_and_resume_from_the_last_position_misses_nothing_and_repeats_nothing(
    gw: GatewayClient, store_client: Client
) -> None:
    first = await produce(store_client, 50, seed=1)
    events, _, cursor = await collect(
        gw, first[24].position, start=first[0].position, stream_prefixes=["order"]
    )
    want = matching(first, {"stream_prefixes": ["order"]})
    assert [e.position for e in events] == [e.position for e in want if e.position < cursor.position]
    assert cursor.position > first[24].position
    # Gone while more is appended; back from the cursor it was given.
    more = await produce(store_client, 80, seed=2)
    rest, _, _ = await collect(gw, more[-1].position, start=cursor.position, stream_prefixes=["order"])
    everything = matching(first + more, {"stream_prefixes": ["order"]})
    assert [e.position for e in events + rest] == [e.position for e in everything]


async def test_resume_across_catch_up_and_live_join_has_no_gap_and_no_duplicate(
    gw: GatewayClient, store_client: Client
) -> None:
    """Appends keep running while a subscriber catches up from the store and joins live."""
    await produce(store_client, 300, seed=3)
    stop = asyncio.Event()
    appended: list[int] = []

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            resp = await store_client.append(f"order-{i % 4}", [new_event("Updated", b"x")])
            appended.append(resp.last_position)
            i += 1

    task = asyncio.create_task(writer())
    cursor = Cursor()
    positions: list[int] = []
    caught_up = 0
    async with asyncio.timeout(30):
        async for item in gw.watch(start=1, cursor=cursor, heartbeat_interval=0.1):
            if isinstance(item, pb.RecordedEvent):
                positions.append(item.position)
            elif isinstance(item, pb.CaughtUp):
                caught_up = item.position
            if caught_up and not stop.is_set() and len(positions) > caught_up + 50:
                stop.set()  # well into live delivery
                await task
            if task.done() and cursor.position > appended[-1]:
                break
    assert caught_up > 300
    assert positions == list(range(1, appended[-1] + 1))


async def test_live_subscriber_gets_only_new_events(gw: GatewayClient, store_client: Client) -> None:
    await produce(store_client, 10)
    it = gw.watch(stream_prefixes=["o", "u", "s"])
    caught_up = await next_item(it)
    assert isinstance(caught_up, pb.CaughtUp)
    resp = await store_client.append("user-9", [new_event("Created", b"1")])
    ev = await next_item(it)
    assert isinstance(ev, pb.RecordedEvent) and ev.position == resp.first_position == caught_up.position
    await it.aclose()


async def test_bad_requests_get_invalid_argument_with_details_and_the_gateway_keeps_serving(
    gw: GatewayClient, store_client: Client
) -> None:
    with pytest.raises(InvalidArgument) as e:
        await anext(gw.watch(streams=["bad\x00name"]))
    assert e.value.metadata["field"] == "streams[0]"
    with pytest.raises(InvalidArgument):
        await anext(gw.watch(start=0))
    with pytest.raises(LimitExceeded) as limit:
        await anext(gw.watch(buffer_size=10_000_000))
    assert limit.value.metadata["limit"] == "max_buffer_size"
    too_many = [f"p{i}-" for i in range(MAX_FILTER_ENTRIES + 1)]  # each is matched against every event
    with pytest.raises(LimitExceeded) as limit:
        await anext(gw.watch(stream_prefixes=too_many))
    assert limit.value.metadata["limit"] == "max_filter_entries"
    assert limit.value.metadata["field"] == "stream_prefixes"
    with pytest.raises(InvalidArgument) as e:
        await gw.publish("", "T")
    assert e.value.metadata["field"] == "stream"
    with pytest.raises(InvalidArgument) as e:
        await gw.publish("$dlq.app", "T")  # store-reserved: as Append and Broadcast refuse it
    assert e.value.reason == "SYSTEM_STREAM_RESERVED" and e.value.metadata["field"] == "stream"
    with pytest.raises(InvalidArgument) as e:
        await gw.publish("chat\x85room", "T")  # a C1 control character
    assert e.value.metadata["field"] == "stream"
    with pytest.raises(grpc.aio.AioRpcError) as call:
        await gw.stub.Publish(gwpb.PublishRequest(stream="chat", type="T", id="not-a-uuid"))
    assert from_rpc_error(call.value).metadata["field"] == "id"
    raw = gw.stub.Watch(gwpb.WatchRequest(form=99))  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as rpc:
        await anext(aiter(raw))
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(await asyncio.wait_for(anext(gw.watch()), 10), pb.CaughtUp)


async def test_bad_http_bodies_get_400_and_the_gateway_keeps_serving(gateway: GatewayProcess) -> None:
    bodies = [
        b"[" * 100_000 + b"]" * 100_000,  # too deep for a parser that recurses
        b'{"stream": "chat", "type": "T", "ttl_seconds": 1e308}',
        b'{"stream": "chat", "type": "T", "ttl_seconds": "inf"}',
        b'["not", "an", "object"]',
        b'{"stream": "$dlq.x", "type": "T"}',
        b"\xff\xfe not json",
    ]
    async with http_session() as http:
        for body in bodies:
            async with http.post(f"{gateway.http}/v1/publish", data=body) as r:
                assert r.status == 400, (body[:40], r.status, await r.text())
        async with http.post(f"{gateway.http}/v1/publish", data=b'{"stream": "chat", "type": "T"}') as r:
            assert r.status == 200
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async with GatewayClient(gateway.addr) as g:
            req = gwpb.PublishRequest(stream="chat", type="T")
            req.time_to_live.seconds = 10**17
            await g.stub.Publish(req)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(refused.value).metadata["field"] == "time_to_live"


async def test_a_burst_of_2000_new_watches_all_start(gateway: GatewayProcess) -> None:
    """2,000 subscribers arriving at once (a reconnect storm): each is served. gRPC core
    queues 1,000 calls a server has not asked for yet and cancelled the rest (about one in
    ten here) until the servers raised that limit."""
    n, per_channel = 2000, 10
    clients = [GatewayClient(gateway.addr, timeout=60) for _ in range(n // per_channel)]
    watches = [clients[i // per_channel].watch(stream_prefixes=["burst-"]) for i in range(n)]
    try:
        firsts = await asyncio.wait_for(
            asyncio.gather(*(anext(w) for w in watches), return_exceptions=True), 90
        )
        failed = [f for f in firsts if not isinstance(f, pb.CaughtUp)]
        assert not failed, f"{len(failed)} of {n} watches did not start: {failed[:3]}"
    finally:
        await asyncio.gather(*(w.aclose() for w in watches), return_exceptions=True)
        await asyncio.gather(*(c.close() for c in clients))
