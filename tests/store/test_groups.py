"""Consumer groups in the store: assignment, epochs, fencing, leases, cursors, over real gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf import empty_pb2
from hypothesis import given
from hypothesis import strategies as st

from sluice import START, Client, new_event
from sluice.errors import SluiceError, from_rpc_error
from sluice.partition import partition_of
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import groups_pb2_grpc as gpb_grpc
from sluice.v1 import streams_pb2 as pb
from sluice_store.groups import GroupState, Member, expire, reconcile, target_assignment
from sluice_store.server import StoreServer
from tests.conftest import StoreFactory, eventually

# -- the assignment, as a pure function ---------------------------------------------


@given(
    partitions=st.integers(1, 64),
    members=st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=1, max_size=10, unique=True),
    data=st.data(),
)
def test_target_assignment_is_complete_balanced_and_sticky(
    partitions: int, members: list[str], data: st.DataObject
) -> None:
    # A current assignment without overlaps, possibly naming partitions that no longer exist.
    owners = data.draw(st.lists(st.sampled_from([None, *members]), min_size=partitions, max_size=partitions))
    current: dict[str, set[int]] = {m: set() for m in members}
    for p, owner in enumerate(owners):
        if owner is not None:
            current[owner].add(p)
    target = target_assignment(partitions, members, current)
    every = [p for m in members for p in target[m]]
    assert sorted(every) == list(range(partitions))  # each partition exactly once
    sizes = [len(target[m]) for m in members]
    assert max(sizes) - min(sizes) <= 1  # balanced
    floor = partitions // len(members)
    for m in members:  # sticky: a member keeps what it has, up to its share
        assert len(target[m] & current[m]) >= min(len(current[m]), floor)


def _state(partitions: int = 12) -> GroupState:
    config = gpb.GroupConfig(partitions=partitions)
    config.lease.FromSeconds(10)
    return GroupState("g", config, 0)


def test_a_partition_moves_only_after_its_owner_releases_it() -> None:
    state = _state()
    a = state.members["a"] = Member("a", lease_expires_us=10**18)
    reconcile(state, a)
    assert a.assigned == set(range(12)) and a.epoch == 1
    b = state.members["b"] = Member("b", lease_expires_us=10**18)
    reconcile(state, b)
    assert b.assigned == set() and b.epoch == 0  # a still holds everything
    reconcile(state, a)  # a's heartbeat: half of its partitions are taken away
    assert len(a.assigned) == 6 and len(a.revoking) == 6 and a.epoch == 2
    reconcile(state, b)
    assert b.assigned == set()  # not until a confirms it let go
    released = set(a.revoking)
    a.revoking.clear()  # a's next heartbeat no longer reports them
    reconcile(state, b)
    assert b.assigned == released and b.epoch == 1
    # b's lease runs out: everything goes back to a.
    b.lease_expires_us = 5
    expire(state, 6)
    reconcile(state, a)
    assert "b" not in state.members and a.assigned == set(range(12))


# -- over gRPC ------------------------------------------------------------------------


@pytest.fixture
async def groups(store: StoreServer) -> AsyncIterator[gpb_grpc.GroupsStub]:
    async with grpc.aio.insecure_channel(store.address) as ch:
        yield gpb_grpc.GroupsStub(ch)


async def call(awaitable: object) -> object:
    try:
        return await awaitable  # type: ignore[misc]
    except grpc.aio.AioRpcError as e:
        raise from_rpc_error(e) from None


def config(partitions: int = 12, lease_ms: int = 10_000, **kw: object) -> gpb.GroupConfig:
    c = gpb.GroupConfig(partitions=partitions, **kw)  # type: ignore[arg-type]
    c.lease.FromMilliseconds(lease_ms)
    c.start.start.CopyFrom(empty_pb2.Empty())
    return c


async def join(stub: gpb_grpc.GroupsStub, group: str, member: str) -> gpb.HeartbeatResponse:
    return await stub.Heartbeat(gpb.HeartbeatRequest(group=group, member_id=member))


async def beat(
    stub: gpb_grpc.GroupsStub, group: str, member: str, resp: gpb.HeartbeatResponse
) -> gpb.HeartbeatResponse:
    owned = [a.partition for a in resp.assigned]
    return await stub.Heartbeat(
        gpb.HeartbeatRequest(group=group, member_id=member, member_epoch=resp.member_epoch, owned=owned)
    )


async def settle(
    stub: gpb_grpc.GroupsStub, group: str, members: list[str]
) -> dict[str, gpb.HeartbeatResponse]:
    """Join the members, then heartbeat them all until the assignment stops changing."""
    state = {m: await join(stub, group, m) for m in members}
    for _ in range(10):
        before = {m: r.member_epoch for m, r in state.items()}
        state = {m: await beat(stub, group, m, r) for m, r in state.items()}
        if before == {m: r.member_epoch for m, r in state.items()}:
            return state
    raise AssertionError("the assignment did not settle")


async def test_three_members_share_twelve_partitions(groups: gpb_grpc.GroupsStub) -> None:
    await groups.CreateGroup(gpb.CreateGroupRequest(group="orders", config=config()))
    state = await settle(groups, "orders", ["m1", "m2", "m3"])
    assigned = {m: {a.partition for a in r.assigned} for m, r in state.items()}
    assert all(len(s) == 4 for s in assigned.values())
    assert set().union(*assigned.values()) == set(range(12))
    desc = await groups.DescribeGroup(gpb.DescribeGroupRequest(group="orders"))
    assert {p.owner for p in desc.partitions} == {"m1", "m2", "m3"}
    assert [m.member_id for m in desc.members] == ["m1", "m2", "m3"]


async def fill(address: str, n: int) -> None:
    """Give the store n events, so that cursors up to n + 1 are positions it has."""
    async with Client(address) as c:
        await c.append("filler", [new_event("F", b"") for _ in range(n)])


async def test_commits_are_fenced_by_epoch_and_ownership(
    groups: gpb_grpc.GroupsStub, store: StoreServer
) -> None:
    await fill(store.address, 10)
    await groups.CreateGroup(gpb.CreateGroupRequest(group="g", config=config()))
    state = await settle(groups, "g", ["a"])
    a = state["a"]
    await groups.CommitCursor(
        gpb.CommitCursorRequest(
            group="g", member_id="a", member_epoch=a.member_epoch, partition=3, position=7
        )
    )
    state = await settle(groups, "g", ["a", "b"])  # b joins (a rejoins): epochs move on
    with pytest.raises(SluiceError) as stale:
        await call(
            groups.CommitCursor(
                gpb.CommitCursorRequest(
                    group="g", member_id="a", member_epoch=a.member_epoch, partition=3, position=9
                )
            )
        )
    assert stale.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert stale.value.reason == "STALE_MEMBER_EPOCH"
    assert stale.value.metadata["current_epoch"] == str(state["a"].member_epoch)
    not_mine = next(a.partition for a in state["b"].assigned)
    with pytest.raises(SluiceError) as owner:
        await call(
            groups.CommitCursor(
                gpb.CommitCursorRequest(
                    group="g",
                    member_id="a",
                    member_epoch=state["a"].member_epoch,
                    partition=not_mine,
                    position=9,
                )
            )
        )
    assert owner.value.reason == "NOT_PARTITION_OWNER"
    with pytest.raises(SluiceError) as unknown:
        await call(
            groups.CommitCursor(
                gpb.CommitCursorRequest(group="g", member_id="zz", member_epoch=1, partition=0, position=1)
            )
        )
    assert unknown.value.reason == "UNKNOWN_MEMBER"
    desc = await groups.DescribeGroup(gpb.DescribeGroupRequest(group="g"))
    assert desc.partitions[3].cursor == 7  # nothing refused moved a cursor


async def test_lease_expiry_and_leave_move_partitions(groups: gpb_grpc.GroupsStub) -> None:
    await groups.CreateGroup(gpb.CreateGroupRequest(group="g", config=config(lease_ms=300)))
    state = await settle(groups, "g", ["a", "b"])
    # b leaves: its partitions go to a at a's next heartbeat.
    await groups.Heartbeat(gpb.HeartbeatRequest(group="g", member_id="b", leave=True))
    a = await beat(groups, "g", "a", state["a"])
    assert {p.partition for p in a.assigned} == set(range(12))
    # a stops heartbeating: after its lease, c (joining) gets everything, and a is unknown.
    c = await join(groups, "g", "c")

    async def c_has_all() -> bool:
        nonlocal c
        c = await beat(groups, "g", "c", c)
        return len(c.assigned) == 12

    await eventually(c_has_all, timeout=5)
    with pytest.raises(SluiceError) as gone:
        await call(beat(groups, "g", "a", a))
    assert gone.value.reason == "UNKNOWN_MEMBER"


async def test_describe_shows_what_each_member_waits_for(groups: gpb_grpc.GroupsStub) -> None:
    await groups.CreateGroup(gpb.CreateGroupRequest(group="g", config=config()))
    await join(groups, "g", "a")  # a holds all twelve
    await join(groups, "g", "b")  # b's half is still a's until a lets go
    desc = await groups.DescribeGroup(gpb.DescribeGroupRequest(group="g"))
    members = {m.member_id: m for m in desc.members}
    assert len(members["a"].assigned) == 12 and not members["a"].pending
    assert not members["b"].assigned and len(members["b"].pending) == 6
    assert set(members["b"].pending) <= set(members["a"].assigned)


async def test_a_full_group_takes_another_member_once_one_leaves(
    groups: gpb_grpc.GroupsStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sluice_store.groups.MAX_MEMBERS", 3)
    await groups.CreateGroup(gpb.CreateGroupRequest(group="g", config=config()))
    await settle(groups, "g", ["a", "b", "c"])
    with pytest.raises(SluiceError) as full:
        await call(join(groups, "g", "d"))
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert full.value.metadata["limit"] == "max_group_members" and full.value.metadata["max"] == "3"
    rejoined = await join(groups, "g", "a")  # a member of the group may join again
    assert rejoined.member_epoch > 1
    await groups.Heartbeat(gpb.HeartbeatRequest(group="g", member_id="b", leave=True))
    assert (await join(groups, "g", "d")).member_epoch >= 1
    desc = await groups.DescribeGroup(gpb.DescribeGroupRequest(group="g"))
    assert [m.member_id for m in desc.members] == ["a", "c", "d"]


async def test_reset_to_time_and_describe_lag(store: StoreServer, groups: gpb_grpc.GroupsStub) -> None:
    async with Client(store.address) as c:
        await groups.CreateGroup(gpb.CreateGroupRequest(group="g", config=config(partitions=4)))
        for i in range(20):
            await c.append(f"s-{i}", [new_event("E")])
        desc = await groups.DescribeGroup(gpb.DescribeGroupRequest(group="g"))
        assert sum(p.lag_events for p in desc.partitions) == 20
        per = {p: sum(partition_of(f"s-{i}", 4) == p for i in range(20)) for p in range(4)}
        assert {p.partition: p.lag_events for p in desc.partitions} == per
        end = gpb.ResetCursorsRequest(group="g", to=pb.StartPoint(end=empty_pb2.Empty()))
        desc = await groups.ResetCursors(end)
        assert all(p.cursor == 21 and p.lag_events == 0 for p in desc.partitions)
        (tenth,) = await c.read_list("s-10")
        at_time = gpb.ResetCursorsRequest(
            group="g", partitions=[0, 1, 2, 3], to=pb.StartPoint(time=tenth.created)
        )
        desc = await groups.ResetCursors(at_time)
        assert all(p.cursor == tenth.position for p in desc.partitions)
        assert sum(p.lag_events for p in desc.partitions) == 10
        # Partitions at different cursors: each counts from its own (one pass counts them all).
        start = gpb.ResetCursorsRequest(
            group="g", partitions=[1, 3], to=pb.StartPoint(start=empty_pb2.Empty())
        )
        desc = await groups.ResetCursors(start)
        want = {
            p: sum(partition_of(f"s-{i}", 4) == p and (p in (1, 3) or i >= 10) for i in range(20))
            for p in range(4)
        }
        assert {p.partition: p.lag_events for p in desc.partitions} == want


async def test_a_reset_is_told_once_even_to_the_cursor_already_committed(
    store: StoreServer, groups: gpb_grpc.GroupsStub
) -> None:
    """A member that committed 11 and handled up to 21 must read from 11 again after a reset
    to 11: the cursor it is given is the one it committed, so only the store can say so."""
    await fill(store.address, 20)
    await groups.CreateGroup(gpb.CreateGroupRequest(group="g", config=config(partitions=2)))
    a = await join(groups, "g", "a")
    assert not any(p.moved for p in a.assigned)  # joining: its cursors, nothing moved
    commit = gpb.CommitCursorRequest(group="g", member_id="a", member_epoch=a.member_epoch, position=11)
    for p in (0, 1):
        commit.partition = p
        await groups.CommitCursor(commit)
    at_11 = pb.StartPoint(position=11)
    await groups.ResetCursors(gpb.ResetCursorsRequest(group="g", partitions=[1], to=at_11))
    told = await beat(groups, "g", "a", a)
    assert told.member_epoch > a.member_epoch
    assert {p.partition: (p.position, p.moved) for p in told.assigned} == {0: (11, False), 1: (11, True)}
    again = await beat(groups, "g", "a", told)  # said once
    assert not any(p.moved for p in again.assigned)

    # A partition the member is giving back when its cursor moves: its old progress must
    # not land over the reset while it lets the partition go.
    b = await join(groups, "g", "b")  # a must give one partition up to b
    a = await beat(groups, "g", "a", again)
    (leaving,) = {0, 1} - {p.partition for p in a.assigned}
    await groups.ResetCursors(gpb.ResetCursorsRequest(group="g", to=at_11))
    a = await beat(groups, "g", "a", a)
    (staying,) = a.assigned
    assert staying.moved and staying.position == 11
    with pytest.raises(SluiceError) as refused:
        await call(
            groups.CommitCursor(
                gpb.CommitCursorRequest(
                    group="g", member_id="a", member_epoch=a.member_epoch, partition=leaving, position=21
                )
            )
        )
    assert refused.value.reason == "NOT_PARTITION_OWNER"
    await groups.CommitCursor(
        gpb.CommitCursorRequest(
            group="g", member_id="a", member_epoch=a.member_epoch, partition=staying.partition, position=15
        )
    )
    # Once a lets go, b gets the partition at the reset cursor and is told nothing moved
    # under it (it never held the partition before).
    await groups.Heartbeat(
        gpb.HeartbeatRequest(group="g", member_id="a", member_epoch=a.member_epoch, owned=[staying.partition])
    )
    b = await beat(groups, "g", "b", b)
    assert [(p.partition, p.position, p.moved) for p in b.assigned] == [(leaving, 11, False)]
    desc = await groups.DescribeGroup(gpb.DescribeGroupRequest(group="g"))
    assert {p.partition: p.cursor for p in desc.partitions} == {leaving: 11, staying.partition: 15}


async def test_groups_survive_a_store_restart(make_store: StoreFactory, db_url: Callable[[str], str]) -> None:
    db = db_url("g")
    first = await make_store(db=db)
    await fill(first.address, 50)
    async with grpc.aio.insecure_channel(first.address) as ch:
        stub = gpb_grpc.GroupsStub(ch)
        await stub.CreateGroup(gpb.CreateGroupRequest(group="g", config=config()))
        state = await settle(stub, "g", ["a"])
        await stub.CommitCursor(
            gpb.CommitCursorRequest(
                group="g", member_id="a", member_epoch=state["a"].member_epoch, partition=5, position=42
            )
        )
    await first.stop(0)
    second = await make_store(db=db)
    async with grpc.aio.insecure_channel(second.address) as ch:
        stub = gpb_grpc.GroupsStub(ch)
        again = await beat(stub, "g", "a", state["a"])  # same epoch: no rejoin needed
        assert again.member_epoch == state["a"].member_epoch
        assert {p.partition: p.position for p in again.assigned}[5] == 42


async def test_bad_group_requests_are_refused(groups: gpb_grpc.GroupsStub) -> None:
    with pytest.raises(SluiceError) as bad_name:
        await call(groups.CreateGroup(gpb.CreateGroupRequest(group="no spaces", config=config())))
    assert bad_name.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(SluiceError) as bad_count:
        await call(groups.CreateGroup(gpb.CreateGroupRequest(group="g", config=config(partitions=5000))))
    assert "partitions" in bad_count.value.message
    await groups.CreateGroup(gpb.CreateGroupRequest(group="g", config=config()))
    with pytest.raises(SluiceError) as exists:
        await call(groups.CreateGroup(gpb.CreateGroupRequest(group="g", config=config())))
    assert exists.value.reason == "GROUP_EXISTS"
    with pytest.raises(SluiceError) as fixed:
        await call(groups.UpdateGroup(gpb.UpdateGroupRequest(group="g", config=config(partitions=6))))
    assert "fixed" in fixed.value.message
    await groups.DeleteGroup(gpb.DeleteGroupRequest(group="g"))
    with pytest.raises(SluiceError) as missing:
        await call(groups.DescribeGroup(gpb.DescribeGroupRequest(group="g")))
    assert missing.value.reason == "GROUP_NOT_FOUND" and missing.value.code == grpc.StatusCode.NOT_FOUND


async def test_a_cursor_beyond_the_head_is_refused(groups: gpb_grpc.GroupsStub, store: StoreServer) -> None:
    await fill(store.address, 5)
    await groups.CreateGroup(gpb.CreateGroupRequest(group="g", config=config(partitions=1)))
    a = (await settle(groups, "g", ["a"]))["a"]

    def commit(position: int) -> gpb.CommitCursorRequest:
        return gpb.CommitCursorRequest(
            group="g", member_id="a", member_epoch=a.member_epoch, partition=0, position=position
        )

    await groups.CommitCursor(commit(6))  # head 5: everything handled
    for position in (7, 10**12, 0):
        with pytest.raises(SluiceError) as refused:
            await call(groups.CommitCursor(commit(position)))
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            refused.value.metadata["field"] == "position" and refused.value.metadata["head_position"] == "5"
        )
    desc = await groups.DescribeGroup(gpb.DescribeGroupRequest(group="g"))
    assert desc.partitions[0].cursor == 6


async def test_dead_letters_only_from_members_into_the_reserved_namespace(
    groups: gpb_grpc.GroupsStub, store: StoreServer
) -> None:
    await groups.CreateGroup(gpb.CreateGroupRequest(group="g", config=config(partitions=1)))
    desc = await groups.DescribeGroup(gpb.DescribeGroupRequest(group="g"))
    assert desc.config.dead_letter_stream in ("", "$dlq.g")
    for bad in ("dlq.g", "orders", "$dlq."):
        with pytest.raises(SluiceError) as refused:
            await call(
                groups.CreateGroup(gpb.CreateGroupRequest(group="h", config=config(dead_letter_stream=bad)))
            )
        assert refused.value.metadata["field"] == "config.dead_letter_stream"
    a = (await settle(groups, "g", ["a"]))["a"]
    dead = [gpb.DeadLetterRequest(group="g", member_id="a", member_epoch=a.member_epoch, partition=0)]
    dead[0].events.add(id="0193a0c2-7d5e-7000-8000-000000000001", type="Poison", data=b"x")
    first = await groups.DeadLetter(dead[0])
    again = await groups.DeadLetter(dead[0])  # a retry after a crash: stored once
    assert first.stream == "$dlq.g" and again.duplicate and again.first_position == first.first_position
    async with Client(store.address) as c:
        with pytest.raises(SluiceError) as reserved:
            await c.append("$dlq.g", [new_event("Forged", b"")])
        assert reserved.value.reason == "SYSTEM_STREAM_RESERVED"
        assert [e.type for e in await c.read_list("$dlq.g")] == ["Poison"]
    stranger = gpb.DeadLetterRequest(group="g", member_id="zz", member_epoch=1, partition=0)
    stranger.events.add(type="Forged")
    with pytest.raises(SluiceError) as unknown:
        await call(groups.DeadLetter(stranger))
    assert unknown.value.reason == "UNKNOWN_MEMBER"


async def test_a_group_reads_system_streams_only_when_it_names_them(store: StoreServer) -> None:
    async with Client(store.address) as c:
        await c.create_group("g", partitions=1, start=START)
        a = await c.groups_stub.Heartbeat(gpb.HeartbeatRequest(group="g", member_id="a"))
        dead = gpb.DeadLetterRequest(group="g", member_id="a", member_epoch=a.member_epoch, partition=0)
        dead.events.add(type="Poison")
        await c.groups_stub.DeadLetter(dead)
        await c.append("orders-1", [new_event("Placed", b"")])

        async def streams(*prefixes: str) -> list[str]:
            filt = pb.Filter(stream_prefixes=prefixes, partition_count=1, partitions=[0])
            return [e.stream async for msg in c._stub.Read(pb.ReadRequest(filter=filt)) for e in msg.events]

        assert await streams() == ["orders-1"]  # a group's read: no dead letters
        assert await streams("$dlq.") == ["$dlq.g"]  # named: read
        assert [e.stream for e in await c.read_list()] == ["$dlq.g", "orders-1"]  # a plain read: all
