"""Changes to a group while its sidecars run: a deleted group, a changed filter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sluice import Client, new_event
from tests.conftest import StoreProcess
from tests.sidecar.conftest import App, Sidecar


async def test_a_deleted_group_makes_its_sidecar_unready_until_it_exists_again(
    store_proc: StoreProcess, app: App, sidecars: Callable[..., Sidecar], tmp_path: Path
) -> None:
    sc = sidecars("d0", "--create-group", "false", group="later")
    await sc.start(ready=False)
    await sc.readiness(False, "later does not exist")  # no group yet: not ready, and it says why
    async with Client(store_proc.addr) as c:
        await c.create_group("later", stream_prefixes=["orders-"], lease=2.0)
        await sc.readiness(True)
        first = new_event("Placed", {"n": 1})
        await c.append("orders-1", [first])
        await app.wait(lambda: first.id in app.acked_ids())

        await c.delete_group("later")
        body = await sc.readiness(False, "later does not exist")
        status = await sc.status()
        assert not status["ready"] and status["reason"] == body["reason"] and not status["partitions"]
        await c.append("orders-1", [new_event("Placed", {"n": 2})])  # for nobody: the group is gone

        await c.create_group("later", stream_prefixes=["orders-"], lease=2.0)  # from the end
        await sc.readiness(True)
        again = new_event("Placed", {"n": 3})
        await c.append("orders-2", [again])
        await app.wait(lambda: again.id in app.acked_ids())
    assert [r.id for r in app.acked] == [first.id, again.id]
    log = (tmp_path / "sidecar-d0.log").read_text()
    assert log.count("group later was deleted") == 1 and log.count("group later does not exist") == 1
    assert log.count("group later found: joining it") == 2
    assert "WARNING" not in log and log.count("refused: GROUP_NOT_FOUND") <= 12  # once a partition at most
