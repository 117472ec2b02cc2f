"""One error vocabulary: every ErrorReason the store sends is a typed exception in the client."""

from __future__ import annotations

import pytest

from sluice import (
    Client,
    Fenced,
    GroupExists,
    GroupNotFound,
    SluiceError,
    StaleMemberEpoch,
    StreamNotFound,
    SystemStreamReserved,
    UnknownMember,
    new_event,
)
from sluice.errors import BY_REASON
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb


def test_every_reason_has_a_class_of_its_own() -> None:
    reasons = [pb.ErrorReason.Name(v) for v in pb.ErrorReason.values() if v]
    missing = sorted(set(reasons) - set(BY_REASON))
    assert not missing, f"no exception class for {missing}"
    assert sorted(BY_REASON) == sorted(reasons), "a class for a reason the contract does not have"
    classes = [BY_REASON[r] for r in reasons]
    assert len(set(classes)) == len(classes), "two reasons share a class"
    assert all(issubclass(c, SluiceError) and c is not SluiceError for c in classes)


async def test_group_errors_arrive_typed(client: Client) -> None:
    with pytest.raises(GroupNotFound) as missing:
        await client.describe_group("missing")
    assert missing.value.group == "missing" and not isinstance(missing.value, StreamNotFound)
    await client.create_group("g", stream_prefixes=["o-"])
    with pytest.raises(GroupExists):
        await client.create_group("g", stream_prefixes=["o-"])
    beat = await client.groups_stub.Heartbeat(gpb.HeartbeatRequest(group="g", member_id="m"))
    commit = gpb.CommitCursorRequest(
        group="g", member_id="m", member_epoch=beat.member_epoch + 7, partition=beat.assigned[0].partition
    )
    with pytest.raises(StaleMemberEpoch) as stale:
        await client._call(client.groups_stub.CommitCursor(commit))
    assert isinstance(stale.value, Fenced)
    commit.member_id, commit.member_epoch = "stranger", 1
    with pytest.raises(UnknownMember):
        await client._call(client.groups_stub.CommitCursor(commit))
    with pytest.raises(SystemStreamReserved):
        await client.append("$mine", [new_event("E", {})])
