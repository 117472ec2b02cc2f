"""Appends over real gRPC: expected revisions, idempotency, atomicity, sessions, limits."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sluice import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    Client,
    DuplicateEventId,
    InvalidArgument,
    LimitExceeded,
    StreamDeleted,
    WrongExpectedRevision,
    new_event,
)
from sluice.client import Expected
from sluice.v1 import streams_pb2 as pb
from sluice.v1 import streams_pb2_grpc as pb_grpc
from sluice_store.server import StoreServer
from tests.conftest import StoreFactory


def ev(n: int = 0, type_: str = "E") -> pb.EventData:
    return new_event(type_, {"n": n})


@pytest.mark.parametrize(
    ("prepare", "expected", "ok"),
    [
        (0, ANY, True),
        (2, ANY, True),
        (0, NO_STREAM, True),
        (2, NO_STREAM, False),
        (0, STREAM_EXISTS, False),
        (2, STREAM_EXISTS, True),
        (2, 1, True),
        (2, 0, False),
        (2, 5, False),
        (0, 0, False),
    ],
)
async def test_expected_revision(client: Client, prepare: int, expected: Expected, ok: bool) -> None:
    if prepare:
        await client.append("s", [ev(i) for i in range(prepare)])
    if ok:
        r = await client.append("s", [ev(9)], expected=expected)
        assert r.first_revision == prepare
        return
    with pytest.raises(WrongExpectedRevision) as info:
        await client.append("s", [ev(9)], expected=expected)
    err = info.value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.stream == "s"
    assert err.actual == (str(prepare - 1) if prepare else "no_stream")
    want = (
        "no_stream"
        if expected is NO_STREAM
        else "stream_exists"
        if expected is STREAM_EXISTS
        else str(expected)
    )
    assert err.expected == want
    # Nothing was written by the refused append.
    assert len(await client.read_list("s")) if prepare else True
    if prepare:
        assert (await client.stream_info("s")).last_revision == prepare - 1


async def test_conflict_details_are_structured_for_any_language(store: StoreServer) -> None:
    """The raw status carries google.rpc.ErrorInfo: no string matching needed."""
    async with grpc.aio.insecure_channel(store.address) as ch:
        stub = pb_grpc.StreamsStub(ch)
        req = pb.AppendRequest(stream="raw", events=[ev()], expected=pb.ExpectedRevision(revision=3))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Append(req)
    status = rpc_status.from_call(info.value)
    assert status is not None and status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    detail = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(detail)
    assert detail.reason == "WRONG_EXPECTED_REVISION" and detail.domain == "sluice.v1"
    assert dict(detail.metadata) == {"stream": "raw", "expected": "3", "actual": "no_stream"}


async def test_idempotent_reappend_reports_original_positions(client: Client) -> None:
    await client.append("other", [ev()])
    events = [ev(1), ev(2), ev(3)]
    first = await client.append("idem", events)
    await client.append("idem", [ev(4)])
    again = await client.append("idem", events)
    assert again.duplicate
    assert (again.first_revision, again.last_revision) == (0, 2)
    assert (again.first_position, again.last_position) == (first.first_position, first.last_position)
    assert len(await client.read_list("idem")) == 4
    # The same retry even with an expected revision that no longer holds.
    assert (await client.append("idem", events, expected=NO_STREAM)).duplicate


async def test_same_event_id_elsewhere_is_already_exists(client: Client) -> None:
    e = ev()
    await client.append("a", [e])
    with pytest.raises(DuplicateEventId) as info:
        await client.append("b", [e])
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert info.value.metadata == {"event_id": e.id, "stream": "a", "revision": "0"}
    with pytest.raises(DuplicateEventId):  # partly stored ids: not a retry
        await client.append("a", [e, ev()])
    assert (await client.stream_info("b")).state == pb.STREAM_STATE_MISSING


async def test_duplicate_ids_within_one_batch_of_concurrent_appends(client: Client) -> None:
    import asyncio

    e = ev()
    results = await asyncio.gather(client.append("x", [e]), client.append("y", [e]), return_exceptions=True)
    assert sum(isinstance(r, DuplicateEventId) for r in results) == 1
    assert sum(isinstance(r, pb.AppendResponse) for r in results) == 1


async def test_server_assigns_ids_when_missing(client: Client) -> None:
    await client.append("noid", [pb.EventData(type="T", data=b"x")])
    (stored,) = await client.read_list("noid")
    assert uuid.UUID(stored.id).version == 7


async def test_invalid_event_refuses_whole_request(client: Client) -> None:
    good = [ev(i) for i in range(5)]
    bad = pb.EventData(id="not-a-uuid", type="T")
    with pytest.raises(InvalidArgument) as info:
        await client.append("atomic", [*good[:2], bad, *good[2:]])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[2].id" in info.value.message
    with pytest.raises(InvalidArgument):
        await client.append("atomic", [*good, pb.EventData(type="")])
    assert (await client.stream_info("atomic")).state == pb.STREAM_STATE_MISSING
    assert [e async for e in client.read()] == []


async def test_append_many_is_atomic(client: Client) -> None:
    await client.append("m2", [ev()])
    with pytest.raises(WrongExpectedRevision):
        await client.append_many([("m1", [ev()], NO_STREAM), ("m2", [ev()], NO_STREAM)])
    assert (await client.stream_info("m1")).state == pb.STREAM_STATE_MISSING
    results = await client.append_many([("m1", [ev(), ev()], NO_STREAM), ("m2", [ev()], 0)])
    assert [(r.stream, r.first_revision, r.last_revision) for r in results] == [
        ("m1", 0, 1),
        ("m2", 1, 1),
    ]
    assert results[1].first_position == results[0].last_position + 1


async def test_append_session_pipelines_and_keeps_order(client: Client) -> None:
    async with client.session() as session:
        futures = [session.send("sess", [ev(i)], expected=i - 1 if i else NO_STREAM) for i in range(200)]
        bad = session.send("sess", [ev()], expected=3)
        after = session.send("sess", [ev()])
        results = [await f for f in futures]
        with pytest.raises(WrongExpectedRevision):
            await bad
        assert (await after).first_revision == 200
    assert [r.first_revision for r in results] == list(range(200))
    positions = [r.first_position for r in results]
    assert positions == sorted(positions)


async def test_tombstoned_stream_refuses_appends(client: Client) -> None:
    await client.append("gone", [ev()])
    await client.tombstone_stream("gone")
    with pytest.raises(StreamDeleted) as info:
        await client.append("gone", [ev()])
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(StreamDeleted) as read_info:
        await client.read_list("gone")
    assert read_info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(StreamDeleted) as retention_info:  # its metadata takes no writes either
        await client.set_retention("gone", max_count=1)
    assert retention_info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert (await client.stream_info("gone")).state == pb.STREAM_STATE_TOMBSTONED


async def test_soft_delete_hides_and_recreation_continues_revisions(client: Client) -> None:
    await client.append("soft", [ev(0), ev(1)])
    await client.delete_stream("soft", expected=1)
    assert (await client.stream_info("soft")).state == pb.STREAM_STATE_DELETED
    r = await client.append("soft", [ev(2)], expected=NO_STREAM)
    assert r.first_revision == 2
    assert [e.revision for e in await client.read_list("soft")] == [2]
    everything = await client.read_list()
    assert [e.revision for e in everything if e.stream == "soft"] == [2]


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        ("", "INVALID_STREAM_NAME"),
        ("x" * 257, "INVALID_STREAM_NAME"),
        ("bad\nname", "INVALID_STREAM_NAME"),
        ("c1\x85control", "INVALID_STREAM_NAME"),
        ("c1\x9f", "INVALID_STREAM_NAME"),
        ("$system", "SYSTEM_STREAM_RESERVED"),
        ("$dlq.app", "SYSTEM_STREAM_RESERVED"),
    ],
)
async def test_stream_name_rules(client: Client, stream: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await client.append(stream, [ev()])
    assert info.value.reason == reason
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_limits_are_refused_with_their_names(make_store: StoreFactory) -> None:
    store = await make_store(max_event_bytes=1000, max_events_per_request=10, max_request_bytes=5000)
    async with Client(store.address) as c:
        with pytest.raises(LimitExceeded) as big:
            await c.append("lim", [new_event("T", b"x" * 2000)])
        assert big.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert big.value.metadata["limit"] == "max_event_bytes"
        with pytest.raises(LimitExceeded) as many:
            await c.append("lim", [ev(i) for i in range(11)])
        assert many.value.metadata["limit"] == "max_events_per_request"
        with pytest.raises(LimitExceeded) as req:
            await c.append("lim", [new_event("T", b"x" * 900) for _ in range(8)])
        assert req.value.metadata["limit"] == "max_request_bytes"
        with pytest.raises(LimitExceeded) as grpc_limit:  # past the transport's own cap
            await c.append("lim", [new_event("T", b"x" * (2 << 20))])
        assert grpc_limit.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await c.stream_info("lim")).state == pb.STREAM_STATE_MISSING
        assert (await c.append("lim", [ev()])).first_revision == 0  # the server is fine


async def test_event_needs_a_type_and_non_empty_request(client: Client) -> None:
    with pytest.raises(InvalidArgument):
        await client.append("t", [])
    with pytest.raises(InvalidArgument) as info:
        await client.append("t", [pb.EventData(type="x" * 300)])
    assert "events[0].type" in info.value.message


@pytest.mark.parametrize("kind", ["bytes and text", "text alone"])
def test_event_ids_are_unique_and_time_ordered(kind: str) -> None:
    import threading
    import time

    from sluice.ids import uuid7, uuid7_text

    make_id = (lambda: uuid7()[1]) if kind == "bytes and text" else uuid7_text
    ids: list[str] = []

    def make() -> None:
        ids.extend(make_id() for _ in range(5000))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == len(ids) == 20_000
    for text in ids:
        u = uuid.UUID(text)
        assert (u.version, u.variant, str(u)) == (7, uuid.RFC_4122, text)
    assert {i[19] for i in ids} == set("89ab")  # the variant's two bits, and two random ones
    # The first 48 bits are the creation time in milliseconds, so ids sort by time.
    before = time.time_ns() // 1_000_000
    raw = uuid.UUID(make_id()).bytes
    after = time.time_ns() // 1_000_000
    assert before <= int.from_bytes(raw[:6], "big") <= after


@pytest.mark.parametrize(
    "given",
    [
        "0190A9B2-1234-7ABC-8DEF-0123456789AB",
        "{0190a9b2-1234-7abc-8def-0123456789ab}",
        "0190a9b212347abc8def0123456789ab",
        "urn:uuid:0190a9b2-1234-7abc-8def-0123456789ab",
    ],
)
async def test_event_ids_are_stored_in_canonical_form(client: Client, given: str) -> None:
    await client.append("ids", [pb.EventData(id=given, type="T")])
    (stored,) = await client.read_list("ids")
    assert stored.id == "0190a9b2-1234-7abc-8def-0123456789ab"
    again = await client.append("ids", [pb.EventData(id="0190a9b2-1234-7abc-8def-0123456789ab", type="T")])
    assert again.duplicate  # the same id, whatever its spelling


@pytest.mark.parametrize("bad", ["0190a9b2-1234-7abc-8def-0123456789ax", "0190a9b2-1234-7abc-8def", "x" * 36])
async def test_malformed_event_ids_are_refused(client: Client, bad: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await client.append("ids", [pb.EventData(id=bad, type="T")])
    assert "events[0].id" in info.value.message


async def test_broadcast_follows_the_same_name_rules(client: Client) -> None:
    for stream, reason in (("$dlq.app", "SYSTEM_STREAM_RESERVED"), ("c1\x85", "INVALID_STREAM_NAME")):
        with pytest.raises(InvalidArgument) as info:
            await client._call(client._stub.Broadcast(pb.EphemeralMessage(stream=stream, type="T")))
        assert info.value.reason == reason
    with pytest.raises(InvalidArgument) as bad_type:
        await client._call(client._stub.Broadcast(pb.EphemeralMessage(stream="ok", type="t\x9b")))
    assert bad_type.value.metadata["field"] == "type"
