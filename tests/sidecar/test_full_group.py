"""A sidecar whose group already has as many members as a group may (1,024) stands by,
unready and saying why, and joins once a member leaves."""

from __future__ import annotations

from collections.abc import Callable

from sluice import START, Client
from sluice.v1 import groups_pb2 as gpb
from sluice_store.groups import MAX_MEMBERS
from tests.conftest import StoreProcess
from tests.sidecar.conftest import Sidecar


async def test_a_sidecar_stands_by_while_its_group_is_full_and_joins_when_one_leaves(
    sidecars: Callable[..., Sidecar], store_proc: StoreProcess
) -> None:
    async with Client(store_proc.addr, timeout=30) as c:
        await c.create_group("full", stream_prefixes=["orders-"], start=START, partitions=2, lease=120)
        for i in range(MAX_MEMBERS):
            await c.heartbeat(gpb.HeartbeatRequest(group="full", member_id=f"standby-{i}"))
        sc = sidecars("pod-1", group="full")
        await sc.start(ready=False)
        body = await sc.readiness(False, "is full")
        assert "standing by" in body["reason"]
        await c.heartbeat(gpb.HeartbeatRequest(group="full", member_id="standby-7", leave=True))
        await sc.readiness(True)
        members = {m.member_id for m in (await c.describe_group("full")).members}
        assert "pod-1" in members and "standby-7" not in members and len(members) == MAX_MEMBERS
    assert sc.log is not None
    said = sc.log.read_text().count("is full: standing by")
    assert said == 1, f"said {said} times"
