"""Bad input is refused as bad input: INVALID_ARGUMENT with the field named, never a server
fault, never half-applied, and the store goes on serving. Both backends."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from sluice import Client, new_event
from sluice.errors import from_rpc_error
from sluice.names import MAX_FILTER_ENTRIES, MAX_MEMBER_ID
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb
from sluice_store.server import StoreServer

BIG = 2**63  # one above the signed 64-bit range both databases store


def read(**kw: Any) -> pb.ReadRequest:
    return pb.ReadRequest(**kw)


def start_at(**point: Any) -> pb.StartPoint:
    sp = pb.StartPoint(**point)
    return sp


def far_time() -> pb.StartPoint:
    sp = pb.StartPoint()
    sp.time.seconds = 10**15  # far past year 9999
    return sp


def subscribe_from(point: pb.StartPoint) -> pb.SubscribeRequest:
    req = pb.SubscribeRequest()
    getattr(req, "from").CopyFrom(point)
    return req


def retention(**kw: Any) -> pb.SetRetentionRequest:
    return pb.SetRetentionRequest(stream="r", retention=pb.RetentionPolicy(**kw))


def huge_ttl() -> pb.SetRetentionRequest:
    req = retention()
    req.retention.time_to_live.seconds = 10**17
    return req


CASES: list[tuple[str, str, Callable[[], Message], str]] = [
    ("Read", "unary_stream", lambda: read(**{"from": start_at(position=BIG)}), "from.position"),
    ("Read", "unary_stream", lambda: read(stream="s", **{"from": start_at(revision=BIG)}), "from.revision"),
    ("Read", "unary_stream", lambda: read(max_count=BIG), "max_count"),
    ("Read", "unary_stream", lambda: read(**{"from": far_time()}), "from.time"),
    (
        "Read",
        "unary_stream",
        lambda: read(filter=pb.Filter(stream_prefixes=["a\x00"])),
        "filter.stream_prefixes[0]",
    ),
    ("Read", "unary_stream", lambda: read(filter=pb.Filter(event_types=["T\x00"])), "filter.event_types[0]"),
    (
        "Subscribe",
        "unary_stream",
        lambda: subscribe_from(start_at(position=BIG)),
        "from.position",
    ),
    ("SetRetention", "unary_unary", lambda: retention(max_count=BIG), "retention.max_count"),
    ("SetRetention", "unary_unary", lambda: retention(max_bytes=BIG), "retention.max_bytes"),
    ("SetRetention", "unary_unary", lambda: retention(truncate_before=BIG), "retention.truncate_before"),
    ("SetRetention", "unary_unary", huge_ttl, "retention.time_to_live"),
    (
        "Append",
        "unary_unary",
        lambda: pb.AppendRequest(
            stream="s", events=[new_event("E", b"")], expected=pb.ExpectedRevision(revision=BIG)
        ),
        "expected.revision",
    ),
    # An event's content type and metadata keys travel as HTTP headers or CloudEvents
    # attributes: a line break or NUL in one could never be delivered (or would forge a header).
    (
        "Append",
        "unary_unary",
        lambda: pb.AppendRequest(stream="r1", events=[pb.EventData(type="E", content_type="a\r\nx-a: 1")]),
        "events[0].content_type",
    ),
    (
        "Append",
        "unary_unary",
        lambda: pb.AppendRequest(stream="r1", events=[pb.EventData(type="E", content_type="a/" + "b" * 300)]),
        "events[0].content_type",
    ),
    (
        "AppendMany",
        "unary_unary",
        lambda: pb.AppendManyRequest(
            appends=[
                pb.AppendRequest(stream="r1", events=[new_event("E", b"")]),
                pb.AppendRequest(stream="r2", events=[pb.EventData(type="E", metadata={"k\x00": "v"})]),
            ]
        ),
        "appends[1].events[0].metadata",
    ),
    (
        "Broadcast",
        "unary_unary",
        lambda: pb.EphemeralMessage(stream="r1", type="E", content_type="text/plain\n"),
        "content_type",
    ),
    # No name has a control character, and PostgreSQL text cannot hold a NUL: before these
    # were checked, PostgreSQL's refusal came back as UNAVAILABLE (a storage error).
    ("ListStreams", "unary_unary", lambda: pb.ListStreamsRequest(prefix="r\x00"), "prefix"),
    (
        "ListStreams",
        "unary_unary",
        lambda: pb.ListStreamsRequest(page_token=base64.urlsafe_b64encode(b"r\x00").decode()),
        "page_token",
    ),
]


async def call(store: StoreServer, service: str, method: str, kind: str, req: Message | bytes) -> Any:
    async with grpc.aio.insecure_channel(store.address) as ch:
        serialize = (lambda b: b) if isinstance(req, bytes) else type(req).SerializeToString
        rpc = getattr(ch, kind)(f"/sluice.v1.{service}/{method}", request_serializer=serialize)
        if kind == "unary_stream":
            return [m async for m in rpc(req, timeout=10)]
        return await rpc(req, timeout=10)


@pytest.mark.parametrize(("method", "kind", "make", "field"), CASES, ids=[c[3] + "-" + c[0] for c in CASES])
async def test_values_no_store_can_hold_are_refused_naming_the_field(
    store: StoreServer, method: str, kind: str, make: Callable[[], Message], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(store, "Streams", method, kind, make())
    err = from_rpc_error(refused.value)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert err.metadata["field"] == field
    async with Client(store.address) as c:  # nothing half-applied, and still serving
        assert [s.stream async for s in c.list_streams("r")] == []
        await c.append("after", [new_event("E", b"")])


async def test_a_commit_past_the_signed_range_is_refused(store: StoreServer) -> None:
    req = gpb.CommitCursorRequest(group="g", member_id="m", member_epoch=1, partition=0, position=BIG)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(store, "Groups", "CommitCursor", "unary_unary", req)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(refused.value).metadata["field"] == "position"


def group_config(**config: Any) -> gpb.CreateGroupRequest:
    return gpb.CreateGroupRequest(group="g-timing", config=gpb.GroupConfig(**config))


GROUP_CASES: list[tuple[str, Callable[[], Message], str]] = [
    ("DescribeGroup", lambda: gpb.DescribeGroupRequest(group="g\x00"), "group"),
    ("DeleteGroup", lambda: gpb.DeleteGroupRequest(group="g\x00"), "group"),
    ("UpdateGroup", lambda: gpb.UpdateGroupRequest(group="g\x00"), "group"),
    ("Heartbeat", lambda: gpb.HeartbeatRequest(group="g\x00", member_id="m"), "group"),
    ("Heartbeat", lambda: gpb.HeartbeatRequest(group="g", member_id="m\x00"), "member_id"),
    ("CommitCursor", lambda: gpb.CommitCursorRequest(group="g\x00", member_id="m", position=1), "group"),
    ("DeadLetter", lambda: gpb.DeadLetterRequest(group="g\x00", member_id="m"), "group"),
    ("Redrive", lambda: gpb.RedriveRequest(group="g", streams=["s\x00"]), "streams[0]"),
    # A range that holds nothing: refused, where it redrove nothing and said OK.
    ("Redrive", lambda: gpb.RedriveRequest(group="g", from_position=10, to_position=5), "to_position"),
    # A name no group can have: refused as such, where it was looked up and echoed (twice)
    # in a NOT_FOUND that outgrew the 8 KiB of metadata clients accept.
    ("DescribeGroup", lambda: gpb.DescribeGroupRequest(group="x" * 5000), "group"),
    ("CommitCursor", lambda: gpb.CommitCursorRequest(group="g g", member_id="m", position=1), "group"),
    # Member ids are 1 to 256 characters (a pod name is at most 253); a longer one joined.
    ("Heartbeat", lambda: gpb.HeartbeatRequest(group="g", member_id="m" * 257), "member_id"),
    (
        "CommitCursor",
        lambda: gpb.CommitCursorRequest(group="g", member_id="m" * 5000, position=1),
        "member_id",
    ),
    ("DeadLetter", lambda: gpb.DeadLetterRequest(group="g", member_id=""), "member_id"),
    # Timing a group can live with: a lease of a year kept a dead member's partitions a
    # year; a negative backoff, or one of a year, was taken as is.
    ("CreateGroup", lambda: group_config(lease=Duration(seconds=365 * 86_400)), "config.lease"),
    (
        "CreateGroup",
        lambda: group_config(heartbeat_interval=Duration(seconds=60)),
        "config.heartbeat_interval",
    ),
    (
        "CreateGroup",
        lambda: group_config(retry=gpb.RetryPolicy(initial_backoff=Duration(seconds=-1))),
        "config.retry.initial_backoff",
    ),
    (
        "CreateGroup",
        lambda: group_config(retry=gpb.RetryPolicy(max_backoff=Duration(seconds=365 * 86_400))),
        "config.retry.max_backoff",
    ),
]


async def test_a_member_id_of_the_longest_length_joins(store: StoreServer) -> None:
    async with Client(store.address) as c:
        await c.create_group("g", partitions=2)
        longest = "p" * MAX_MEMBER_ID
        joined = await c.heartbeat(gpb.HeartbeatRequest(group="g", member_id=longest))
        assert joined.member_epoch >= 1
        assert [m.member_id for m in (await c.describe_group("g")).members] == [longest]


@pytest.mark.parametrize(
    ("method", "make", "field"), GROUP_CASES, ids=[c[2] + "-" + c[0] for c in GROUP_CASES]
)
async def test_group_requests_no_group_can_hold_are_refused_naming_the_field(
    store: StoreServer, method: str, make: Callable[[], Message], field: str
) -> None:
    async with Client(store.address) as c:
        await c.create_group("g", partitions=2)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(store, "Groups", method, "unary_unary", make())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert from_rpc_error(refused.value).metadata["field"] == field
    async with Client(store.address) as c:  # the group is as it was, and the store serves on
        assert (await c.describe_group("g")).config.partitions == 2
        assert [g.group for g in await c.list_groups()] == ["g"]  # and no group was created
        await c.append("after", [new_event("E", b"")])


@pytest.mark.parametrize(
    ("service", "method", "kind"),
    [
        ("Streams", "Append", "unary_unary"),
        ("Streams", "Read", "unary_stream"),
        ("Groups", "CreateGroup", "unary_unary"),
    ],
)
async def test_bytes_that_are_not_a_request_get_invalid_argument(
    store: StoreServer, service: str, method: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05ab", bytes(range(256))):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(store, service, method, kind, garbage)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert from_rpc_error(refused.value).metadata["field"] == "request"
    assert "Traceback" not in caplog.text
    async with Client(store.address) as c:
        await c.append("after", [new_event("E", b"")])


def _prefixes(names: list[str]) -> pb.Filter:
    return pb.Filter(stream_prefixes=names)


FILTER_CASES: list[tuple[str, str, str, Callable[[list[str]], Message], str]] = [
    ("Streams", "Read", "unary_stream", lambda n: read(filter=_prefixes(n)), "filter.stream_prefixes"),
    (
        "Streams",
        "Subscribe",
        "unary_stream",
        lambda n: pb.SubscribeRequest(filter=pb.Filter(event_types=n)),
        "filter.event_types",
    ),
    (
        "Groups",
        "CreateGroup",
        "unary_unary",
        lambda n: gpb.CreateGroupRequest(group="big", config=gpb.GroupConfig(filter=_prefixes(n))),
        "config.filter.stream_prefixes",
    ),
    ("Groups", "Redrive", "unary_unary", lambda n: gpb.RedriveRequest(group="g", streams=n), "streams"),
]


@pytest.mark.parametrize(
    ("service", "method", "kind", "make", "field"), FILTER_CASES, ids=[c[1] for c in FILTER_CASES]
)
async def test_a_filter_of_more_names_than_the_limit_is_refused(
    store: StoreServer, service: str, method: str, kind: str, make: Callable[[list[str]], Message], field: str
) -> None:
    """Each name of a filter is matched against every event it sees: a list has a limit."""
    names = [f"n{i}-" for i in range(MAX_FILTER_ENTRIES + 1)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(store, service, method, kind, make(names))
    err = from_rpc_error(refused.value)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
    assert err.metadata["field"] == field and err.metadata["limit"] == "max_filter_entries"
    async with Client(store.address) as c:  # the limit itself is taken
        await c.create_group("at-limit", stream_prefixes=names[:MAX_FILTER_ENTRIES])
        assert len((await c.describe_group("at-limit")).config.filter.stream_prefixes) == MAX_FILTER_ENTRIES
