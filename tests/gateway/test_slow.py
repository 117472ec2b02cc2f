"""A subscriber that stops reading: the others are not delayed, and its overflow policy holds."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest

from sluice import Client, new_event
from sluice.errors import InvalidArgument, LimitExceeded, SubscriberTooSlow
from sluice.gateway import POLICIES, GatewayClient
from sluice.v1 import gateway_pb2 as gwpb
from sluice.v1 import streams_pb2 as pb
from tests.conftest import StoreProcess, eventually
from tests.gateway.conftest import GatewayProcess, Gateways, next_item
from tests.gateway.test_fanout import collect
from tests.secure_mode import http_session

BIG = 16 * 1024  # events large enough to fill the HTTP/2 windows between gateway and subscriber
COUNT = 1000
STALLED = [("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)]


async def metric(gateway: GatewayProcess, name: str) -> float:
    async with http_session() as http, http.get(f"{gateway.http}/metrics") as resp:
        text = await resp.text()
    m = re.search(rf"^sluice_gateway_{name}(?:_total)?\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def append_big(c: Client) -> list[int]:
    positions = []
    for i in range(0, COUNT, 50):
        resp = await c.append(f"big-{i % 3}", [new_event("Big", bytes([i % 251]) * BIG) for _ in range(50)])
        positions += list(range(resp.first_position, resp.last_position + 1))
    return positions


@pytest.mark.parametrize("policy", ["catch_up", "drop", "disconnect"])
async def test_a_stalled_subscriber_delays_no_one_and_its_policy_holds(
    policy: str, gateway: GatewayProcess, gw: GatewayClient, store_client: Client
) -> None:
    counter = {"catch_up": "catch_ups", "drop": "drops", "disconnect": "disconnects"}[policy]
    req = gwpb.WatchRequest(buffer_size=100, overflow=POLICIES[policy], heartbeat_interval_ms=100)
    req.live.SetInParent()
    # Its own connection, whose receive window stays at gRPC's initial 64 KiB (no BDP
    # probing to widen it): what it does not read soon holds up the gateway's writes to it.
    # (Sharing the fast subscriber's auto-tuned connection, one CI run saw no overflow.)
    slow = GatewayClient(gateway.addr, timeout=10, options=STALLED)
    try:
        stalled = slow.watch_messages(req)
        first = await asyncio.wait_for(anext(stalled), 10)
        assert first.WhichOneof("content") == "caught_up"
        start = first.position

        # Another live subscriber gets everything while the stalled one reads nothing.
        done: list[int] = []
        fast = asyncio.create_task(collect(gw, lambda: done[-1] if done else 0, start=start, timeout=60))
        appended = await append_big(store_client)
        done.append(appended[-1])
        events, others, _ = await fast
        assert [e.position for e in events] == appended
        assert not any(isinstance(o, pb.FellBehind) for o in others)

        async def applied() -> bool:
            return await metric(gateway, counter) > 0

        await eventually(applied, timeout=30)

        # Now the stalled subscriber reads again.
        positions: list[int] = []
        kinds: list[str] = []
        gaps: list[gwpb.Gap] = []
        cursor = start
        try:
            async with asyncio.timeout(60):
                async for msg in stalled:
                    kind = msg.WhichOneof("content")
                    kinds.append(kind or "")
                    if kind == "events":
                        positions += [e.position for e in msg.events.events]
                    elif kind == "gap":
                        gaps.append(msg.gap)
                    cursor = msg.position
                    if cursor > appended[-1]:
                        break
        except SubscriberTooSlow as e:
            assert policy == "disconnect"
            assert e.position == cursor == (positions[-1] + 1 if positions else start)
            assert e.metadata["buffer_size"] == "100"
            rest, _, _ = await collect(gw, appended[-1], start=e.position, timeout=60)
            positions += [r.position for r in rest]
            assert positions == appended  # nothing missed by watching again from the cursor
            return
        assert policy != "disconnect", "the stalled subscriber should have been disconnected"
        if policy == "catch_up":
            assert "fell_behind" in kinds and kinds.index("fell_behind") < len(kinds) - 1
            assert positions == appended  # back through the store: nothing lost, nothing twice
        else:
            assert gaps and all(g.reason == gwpb.Gap.REASON_DROPPED for g in gaps)
            assert positions == sorted(set(positions))
            skipped = {p for g in gaps for p in range(g.from_position, g.to_position)}
            assert not skipped & set(positions)
            assert sorted(skipped | set(positions)) == appended  # every position delivered or reported
            assert positions[-1] == appended[-1]  # it goes on with the newest

    finally:
        await slow.close()


async def test_published_messages_reach_connected_subscribers_only_and_expire(
    gateway: GatewayProcess, gw: GatewayClient, store_client: Client
) -> None:
    matching = gw.watch(stream_prefixes=["chat."], heartbeat_interval=0.1)
    other = gw.watch(stream_prefixes=["news."], heartbeat_interval=0.1)
    for it in (matching, other):
        assert isinstance(await next_item(it), pb.CaughtUp)
    resp = await gw.publish("chat.room-1", "Typing", b"alice", metadata={"who": "alice"})
    assert resp.subscribers == 1 and resp.id
    got = await next_item(matching)
    assert isinstance(got, pb.EphemeralMessage)
    assert (got.id, got.stream, got.type, got.data, dict(got.metadata)) == (
        resp.id,
        "chat.room-1",
        "Typing",
        b"alice",
        {"who": "alice"},
    )
    assert got.expires.ToNanoseconds() > got.published.ToNanoseconds()
    # One the store refuses (over max_event_bytes; a content type no HTTP header can carry)
    # reaches no subscriber: the next message the subscriber sees is the one sent after.
    with pytest.raises(LimitExceeded) as limit:
        await gw.publish("chat.room-1", "Huge", bytes(2 << 20))
    assert limit.value.metadata["limit"] == "max_event_bytes"
    with pytest.raises(InvalidArgument) as bad:
        await gw.publish("chat.room-1", "Typing", b"", content_type="text/plain\r\nx-admin: yes")
    assert bad.value.metadata["field"] == "content_type"
    after = await gw.publish("chat.room-1", "Typed", b"")
    assert (await next_item(matching)).id == after.id
    assert isinstance(await asyncio.wait_for(anext(other), 10), pb.Heartbeat)  # nothing for news.

    # Never stored: a subscriber that comes later, even from the start, never sees it.
    await store_client.append("chat.room-1", [new_event("Said", b"hi")])
    events, other_items, _ = await collect(gw, 1, start=1, stream_prefixes=["chat."])
    assert [e.type for e in events] == ["Said"]
    assert not any(isinstance(i, pb.EphemeralMessage) for i in other_items)

    # A message that waits longer than its time to live in a stalled subscriber's queue is dropped.
    # The stalled subscriber has a connection of its own whose receive window stays small (as
    # in the test above). On the shared, auto-tuned one the windows can grow and let the
    # gateway send the short message before it expires: the one way the loop below never
    # ends, which one run under load met (60 s without the drop).
    slow = GatewayClient(gateway.addr, timeout=10, options=STALLED)
    req = gwpb.WatchRequest(stream_prefixes=["big-", "chat."], buffer_size=100_000, heartbeat_interval_ms=100)
    req.live.SetInParent()
    stalled = slow.watch_messages(req)
    assert (await asyncio.wait_for(anext(stalled), 10)).WhichOneof("content") == "caught_up"
    appended = await append_big(store_client)  # fills the windows: the gateway now queues for it

    async def stalled_writing() -> bool:
        """Matching, other and stalled watch (the closed catch-up watch has left), and the
        gateway is stuck writing the big events to the stalled one: it has taken some and
        holds the rest. A message published before that (one loaded run saw it) went out
        at once, as a subscriber's writer sends published messages before events."""
        async with http_session() as http, http.get(f"{gateway.http}/readyz") as r:
            ready = await r.json()
        if ready["subscribers"] != 3 or ready["position"] < appended[-1]:
            return False
        return 0 < await metric(gateway, "queued") < len(appended)

    await eventually(stalled_writing, timeout=30)
    short = await gw.publish("chat.room-1", "Short", b"", ttl=2)
    await gw.publish("chat.room-1", "Long", b"", ttl=60)
    assert short.subscribers == 2
    # The live subscriber shows when the short message expires; wait for that instant.
    async with asyncio.timeout(10):
        while not (isinstance(m := await anext(matching), pb.EphemeralMessage) and m.id == short.id):
            pass
    await asyncio.sleep(max(0.0, m.expires.ToNanoseconds() - time.time_ns()) / 1e9)
    seen: list[str] = []
    dropped = 0
    try:
        async with asyncio.timeout(60):
            async for msg in stalled:
                if msg.WhichOneof("content") == "ephemeral":
                    seen += [m.type for m in msg.ephemeral.messages]
                elif msg.WhichOneof("content") == "ephemeral_dropped":
                    dropped += msg.ephemeral_dropped.count
                if "Long" in seen and msg.position > appended[-1] and dropped:
                    break
    except TimeoutError:
        pytest.fail(f"in 60 s the stalled subscriber got {seen} and {dropped} dropped")
    finally:
        await slow.close()
    assert seen == ["Long"] and dropped == 1  # the expired one is not sent, and the subscriber is told
    await matching.aclose()
    await other.aclose()


async def test_published_messages_for_a_stalled_subscriber_are_bounded_in_bytes(
    gateways: Gateways, store_client: Client
) -> None:
    g = gateways(env={"SLUICE_EPHEMERAL_BUFFER_BYTES": str(1 << 20)})
    await g.start()
    async with GatewayClient(g.addr) as gw:
        req = gwpb.WatchRequest(
            stream_prefixes=["big-", "room."], buffer_size=100_000, heartbeat_interval_ms=100
        )
        req.live.SetInParent()
        stalled = gw.watch_messages(req)
        assert (await asyncio.wait_for(anext(stalled), 10)).WhichOneof("content") == "caught_up"
        appended = await append_big(store_client)  # the windows are full: the gateway queues
        total = 40
        for n in range(total):  # 40 x 200 KB for a queue of 1 MiB
            await gw.publish("room.1", f"M{n}", bytes(200_000), ttl=60)
        got: list[str] = []
        dropped = 0
        async with asyncio.timeout(60):
            async for msg in stalled:
                kind = msg.WhichOneof("content")
                if kind == "ephemeral":
                    got += [m.type for m in msg.ephemeral.messages]
                elif kind == "ephemeral_dropped":
                    dropped += msg.ephemeral_dropped.count
                if len(got) + dropped >= total and msg.position > appended[-1]:
                    break
    assert dropped > 0 and len(got) + dropped == total  # every drop told
    assert got[-1] == f"M{total - 1}"  # the newest kept


async def test_a_message_is_never_sent_past_the_expiry_it_carries(
    gateway: GatewayProcess, gw: GatewayClient, store_proc: StoreProcess
) -> None:
    """A published message waits for subscribers until the expiry it carries, counted from
    its publishing, not from the answer of the store's relay of it. With the store stopped
    the relay waits out its 5 s timeout: a message with 1 s to live reaches no one, and the
    next one is the next a subscriber sees."""
    watching = gw.watch(stream_prefixes=["chat."], heartbeat_interval=0.1)
    assert isinstance(await next_item(watching), pb.CaughtUp)
    store_proc.signal(signal.SIGSTOP)
    try:
        late = await gw.publish("chat.room-1", "Late", b"", ttl=1)
    finally:
        store_proc.signal(signal.SIGCONT)
    assert late.subscribers == 0
    after = await gw.publish("chat.room-1", "After", b"", ttl=60)
    assert after.subscribers == 1
    got = await next_item(watching, timeout=20)
    assert isinstance(got, pb.EphemeralMessage) and got.id == after.id, got
    await watching.aclose()
