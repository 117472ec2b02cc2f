"""The Python client's helpers: event sourcing, the batcher, paging, stream info."""

from __future__ import annotations

import asyncio
import json

from sluice import NO_STREAM, Batcher, Client, WrongExpectedRevision, new_event
from sluice.v1 import streams_pb2 as pb


def apply(balance: int, ev: pb.RecordedEvent) -> int:
    amount = int(json.loads(ev.data)["amount"])
    return balance + amount if ev.type == "Deposited" else balance - amount


async def test_fold_reads_a_stream_into_state(client: Client) -> None:
    assert await client.fold("acct-1", apply, 0) == (0, NO_STREAM)
    await client.append(
        "acct-1", [new_event("Deposited", {"amount": 50}), new_event("Withdrawn", {"amount": 20})]
    )
    assert await client.fold("acct-1", apply, 0) == (30, 1)


async def test_decide_and_append_retries_on_a_concurrent_write(client: Client) -> None:
    """Twenty concurrent withdrawals of 10 from a balance of 100: exactly ten succeed."""
    await client.append("acct-2", [new_event("Deposited", {"amount": 100})])
    conflicts = 0

    def withdraw(balance: int) -> list[pb.EventData]:
        return [new_event("Withdrawn", {"amount": 10})] if balance >= 10 else []

    async def attempt() -> pb.AppendResponse | None:
        nonlocal conflicts
        try:
            return await client.decide_and_append("acct-2", apply, 0, withdraw, retries=50)
        except WrongExpectedRevision:
            conflicts += 1
            raise

    results = await asyncio.gather(*(attempt() for _ in range(20)))
    assert sum(r is not None for r in results) == 10
    assert conflicts == 0
    assert (await client.fold("acct-2", apply, 0))[0] == 0
    revisions = [r.first_revision for r in results if r is not None]
    assert sorted(revisions) == list(range(1, 11))


async def test_batcher_coalesces_concurrent_appends(client: Client) -> None:
    batcher = Batcher(client, linger=0.005)
    results = await asyncio.gather(
        *(batcher.append(f"b-{i % 10}", [new_event("E", {"i": i})]) for i in range(200))
    )
    assert len({(r.stream, r.first_revision) for r in results}) == 200
    for s in range(10):
        assert [e.revision for e in await client.read_list(f"b-{s}")] == list(range(20))
    # A conflict fails only its own append.
    ok, bad = await asyncio.gather(
        batcher.append("b-0", [new_event("E")], expected=19),
        batcher.append("b-1", [new_event("E")], expected=0),
        return_exceptions=True,
    )
    assert isinstance(ok, pb.AppendResponse) and ok.first_revision == 20
    assert isinstance(bad, WrongExpectedRevision)


async def test_list_streams_pages_through_a_prefix(client: Client) -> None:
    for i in range(7):
        await client.append(f"page-{i}", [new_event("E")])
    await client.append("other", [new_event("E")])
    await client.delete_stream("page-3")
    names = [i.stream async for i in client.list_streams("page-", page_size=2)]
    assert names == ["page-0", "page-1", "page-2", "page-4", "page-5", "page-6"]
    with_deleted = [i.stream async for i in client.list_streams("page-", page_size=3, include_deleted=True)]
    assert len(with_deleted) == 7


async def test_stream_info_reports_bounds_and_retention(client: Client) -> None:
    missing = await client.stream_info("info")
    assert missing.state == pb.STREAM_STATE_MISSING and not missing.has_events_written
    r = await client.append("info", [new_event("E") for _ in range(5)])
    await client.set_retention("info", max_count=3, max_age=3600)
    info = await client.stream_info("info")
    assert info.state == pb.STREAM_STATE_ACTIVE
    assert (info.first_revision, info.last_revision, info.event_count) == (2, 4, 3)
    assert info.last_position == r.last_position
    assert info.retention.max_count == 3 and info.retention.max_age.seconds == 3600
    assert info.retention_source == "stream"
