"""The store's /metrics, scraped from a running store process, moves with the work."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import aiohttp

from sluice import START, Client, new_event
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb
from tests.conftest import StoreProcess
from tests.ports import reserve_port

WAIT = 20.0


def value(text: str, name: str, **labels: str) -> float:
    """The sample of a metric with these labels (0 when it is not there yet)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if labels.items() <= got.items():
            total += float(m.group(3))
    return total


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        return await r.text()


async def test_counters_move_with_appends_commits_cursors_and_slow_subscribers(
    spawn: Callable[..., StoreProcess],
) -> None:
    port = reserve_port()
    store = spawn(
        "--metrics-addr", f"127.0.0.1:{port}", "--subscriber-buffer", "10", "--durability", "normal"
    )
    await store.start()
    before = await scrape(port)
    # A call per append (not the shared session), so each is one counted Append RPC.
    async with Client(store.addr, shared_session=False) as c:
        await c.append("orders-1", [new_event("E", {"n": n}) for n in range(25)])
        ev = new_event("E", {})
        await c.append("orders-2", [ev])
        await c.append("orders-2", [ev])  # a replay: not a new event
        await c.create_group("g", stream_prefixes=["orders-"], start=START, partitions=1)
        beat = await c.heartbeat(gpb.HeartbeatRequest(group="g", member_id="m"))
        commit = gpb.CommitCursorRequest(
            group="g", member_id="m", member_epoch=beat.member_epoch, partition=0, position=20
        )
        await c.commit_cursor(commit)
        # A subscriber that reads nothing while far more than its buffer arrives.
        stalled = c._stub.Subscribe(pb.SubscribeRequest())
        await asyncio.wait_for(stalled.read(), WAIT)  # caught up: it is live now
        payload = b"x" * 2000
        for _ in range(40):
            await c.append("orders-3", [new_event("Big", payload) for _ in range(100)])
        after = await scrape(port)
        stalled.cancel()
    grew = value(after, "sluice_store_appended_events_total") - value(
        before, "sluice_store_appended_events_total"
    )
    assert grew == 25 + 1 + 4000
    assert value(after, "sluice_store_duplicate_appends_total") == 1
    assert value(after, "sluice_store_head_position") == 4026
    assert value(after, "sluice_store_group_cursor", group="g", partition="0") == 20
    assert value(after, "sluice_store_fell_behind_total") >= 1
    assert value(after, "rpc_server_requests_total", rpc_method="Append", rpc_grpc_status_code="OK") == 43
    assert value(after, "sluice_store_commits_total") >= 1
    assert value(after, "sluice_store_commit_batch_size_count") >= 1
    assert value(after, "sluice_store_storage_bytes") > 0 and value(after, "sluice_store_disk_free_bytes") > 0


async def test_durations_have_buckets_in_seconds_and_the_event_loop_lag_is_measured(
    spawn: Callable[..., StoreProcess],
) -> None:
    port = reserve_port()
    store = spawn("--metrics-addr", f"127.0.0.1:{port}", "--durability", "normal")
    await store.start()
    async with Client(store.addr, shared_session=False) as c:  # an Append RPC each
        for n in range(30):
            await c.append("orders-1", [new_event("E", {"n": n})])

        async def lag_sampled() -> str:
            while True:
                text = await scrape(port)
                if value(text, "sluice_event_loop_lag_seconds_count") >= 3:
                    return text
                await asyncio.sleep(0.1)

        text = await asyncio.wait_for(lag_sampled(), WAIT)
    for name in (
        "sluice_store_commit_duration_seconds",
        "rpc_server_duration_seconds",
        "sluice_event_loop_lag_seconds",
    ):
        total = value(text, f"{name}_count")
        assert total >= 3, name
        # Sub-second work lands in sub-second buckets: the boundaries go down to 100 µs
        # (with the SDK's defaults, 0, 5, 10, ..., every sample sat in le="5.0" and the
        # quantiles said nothing). Which bucket a sample lands in depends on the machine's
        # speed, so only the boundaries are checked, and that nothing took a second.
        assert value(text, f"{name}_bucket", le="1.0") == total, name
        for le in ("0.0001", "0.001", "0.01", "0.1"):
            assert re.search(rf'^{name}_bucket{{[^}}]*le="{re.escape(le)}"', text, re.M), (name, le)
