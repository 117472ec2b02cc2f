"""``--workers``: several gateway processes on one set of ports, under one supervisor."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice import Client
from sluice.v1 import streams_pb2 as pb
from sluice_gateway.config import Settings
from sluice_gateway.server import GatewayServer
from sluice_gateway.workers import WORKERS_COUNT_ENV, Siblings, cgroup_cpus, parse_workers, usable_cpus
from tests.conftest import eventually
from tests.gateway.conftest import GatewayProcess, Gateways, next_item, spread_watches
from tests.secure_mode import http_session


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def worker_pids(g: GatewayProcess) -> list[int]:
    m = re.search(r"workers[^)]*, pids ([\d ]+)\)", g.output.decode())
    assert m, g.output.decode()[-2000:]
    return [int(p) for p in m.group(1).split()]


async def readiness(g: GatewayProcess) -> tuple[int, dict[str, Any]]:
    async with http_session() as http, http.get(f"{g.http}/readyz") as r:
        return r.status, await r.json()


async def all_ready(g: GatewayProcess, count: int) -> bool:
    status, body = await readiness(g)
    return status == 200 and len(body["workers"]) == count


async def test_workers_share_the_ports_serve_every_watch_and_answer_for_each_other(
    gateways: Gateways, store_client: Client
) -> None:
    g = gateways("--workers", "2")
    await g.start(wait_ready=False)
    assert len(worker_pids(g)) == 2 and all(alive(p) for p in worker_pids(g))
    await eventually(lambda: all_ready(g, 2), timeout=20)
    # Stored events reach every watch, whichever worker serves it.
    clients, its = await spread_watches(g.addr, store_client, "spread")
    try:
        # /readyz speaks for both workers, whichever answers: 20 in all, both holding some.
        async def spread() -> bool:
            _, body = await readiness(g)
            per_worker = [w["subscribers"] for w in body["workers"]]
            return body["subscribers"] == 20 and len(per_worker) == 2 and min(per_worker) > 0

        await eventually(spread)

        # The console's overview too: its counts, and its samples once each worker took one.
        async def overview() -> bool:
            async with http_session() as http, http.get(f"{g.http}/v1/stats") as r:
                body = await r.json()
            samples, whole = body["samples"], body["subscribers"] == 20 and body.get("workers") == 2
            return whole and bool(samples) and samples[-1][2] == 20  # both workers' subscribers

        await eventually(overview, timeout=20)
        # /metrics too: each worker's series, labelled.
        async with http_session() as http, http.get(f"{g.http}/metrics") as r:
            text = await r.text()
        counts = {
            m.group(1): float(m.group(2))
            for m in re.finditer(r'^sluice_gateway_subscribers\{[^}]*worker="(\d)"[^}]*\} (\S+)$', text, re.M)
        }
        assert set(counts) == {"0", "1"} and sum(counts.values()) == 20 and min(counts.values()) > 0

        # A message published to one worker reaches the other's subscribers (through the store).
        published = await clients[0].publish("spread-1", "Ping", b"p")
        assert published.subscribers + published.relayed >= 2
        for it in its:
            msg = await next_item(it)
            assert isinstance(msg, pb.EphemeralMessage) and msg.id == published.id
    finally:
        for c in clients:
            await c.close()
    assert await g.stop() == 0
    await eventually(lambda: _none_alive(worker_pids(g)))


async def _empty(directory: Path) -> bool:
    return not os.listdir(directory)


async def _none_alive(pids: list[int]) -> bool:
    return not any(alive(p) for p in pids)


async def test_a_worker_killed_is_started_again(gateways: Gateways) -> None:
    g = gateways("--workers", "2", "--health-addr", "127.0.0.1:0")  # that port shared too
    await g.start(wait_ready=False)
    await eventually(lambda: all_ready(g, 2), timeout=20)
    m = re.search(r"health on (\S+),", g.output.decode())
    assert m, g.output.decode()[-2000:]
    async with grpc.aio.insecure_channel(m.group(1)) as channel:  # plaintext, for the kubelet
        check = health_pb2.HealthCheckRequest(service="sluice.v1.Gateway")
        reply = await health_pb2_grpc.HealthStub(channel).Check(check, timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    first, second = worker_pids(g)
    os.kill(first, signal.SIGKILL)

    async def replaced() -> bool:
        try:
            status, body = await readiness(g)
        except aiohttp.ClientConnectionError:
            # A connection the kernel had queued for the killed worker's socket is reset
            # when that socket goes (SO_REUSEPORT): what a client of a dying worker sees.
            return False
        pids = {w["worker"]: w["pid"] for w in body["workers"]}
        return status == 200 and pids.get(1) == second and pids.get(0) not in (None, first)

    await eventually(replaced, timeout=20)
    _, body = await readiness(g)
    new = next(w["pid"] for w in body["workers"] if w["worker"] == 0)
    assert await g.stop() == 0
    await eventually(lambda: _none_alive([new, second]))


async def test_workers_end_with_their_supervisor_even_on_kill_9(gateways: Gateways, tmp_path: Path) -> None:
    # SLUICE_GATEWAY_WORKERS as a manifest would set it; TMPDIR: where the workers' sockets go.
    tmp = tmp_path / "gateway"
    tmp.mkdir()
    g = gateways(env={"SLUICE_GATEWAY_WORKERS": "2", "TMPDIR": str(tmp)})
    await g.start(wait_ready=False)
    pids = worker_pids(g)
    assert [name.startswith("sluice-gateway-") for name in os.listdir(tmp)] == [True]
    assert g.proc is not None
    g.proc.kill()
    await eventually(lambda: _none_alive(pids), timeout=20)
    await eventually(lambda: _empty(tmp))  # the last worker out removed what the supervisor could not


async def test_one_worker_is_the_plain_gateway(gateway: GatewayProcess) -> None:
    assert "workers, pids" not in gateway.output.decode()
    status, body = await readiness(gateway)
    assert status == 200 and "workers" not in body


@pytest.mark.parametrize(
    ("cpu_max", "quota", "period", "cpus"),
    [
        ("max 100000\n", None, None, None),
        ("200000 100000\n", None, None, 2),
        ("150000 100000\n", None, None, 2),  # a part of a CPU counts as one
        ("50000 100000\n", None, None, 1),
        (None, "-1", "100000", None),  # cgroup v1, no quota
        (None, "300000", "100000", 3),
        (None, None, None, None),  # no cgroup files at all
    ],
)
def test_the_cpu_quota_of_the_cgroup(
    cpu_max: str | None, quota: str | None, period: str | None, cpus: int | None
) -> None:
    assert cgroup_cpus(cpu_max, quota, period) == cpus


def test_workers_setting() -> None:
    assert parse_workers("auto") == 0 and parse_workers("3") == 3
    with pytest.raises(ValueError):
        parse_workers("0")
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("count", [1, 3])
async def test_each_worker_aims_for_its_share_of_the_message_budget(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --message-budget is the gateway's messages/s: N workers at the whole budget each
    # would send N times as many messages as one process (and crowd the cores they share).
    monkeypatch.setenv(WORKERS_COUNT_ENV, str(count))
    server = GatewayServer(Settings(store="127.0.0.1:1", message_budget=30_000))
    try:
        assert server.hub.message_budget == 30_000 // count
    finally:
        await server.channel.close()


async def test_the_overview_merges_the_workers_samples_by_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers sample on their own clocks: each interval sums their subscribers and takes the
    highest head, and a worker with no sample in an interval counts with its latest one."""
    answers = [
        (0, {"interval": 2.0, "samples": [[10.1, 5, 3], [12.1, 6, 4], [14.2, 8, 5]], "head_position": 8,
             "subscribers": 5}),
        (1, {"interval": 2.0, "samples": [[11.9, 5, 1], [13.95, 7, 2]], "head_position": 7,
             "subscribers": 2}),
    ]  # fmt: skip

    async def ask(path: str) -> list[tuple[int, Any]]:
        assert path == "/stats"
        return answers

    siblings = Siblings(str(tmp_path), 0, 2)
    monkeypatch.setattr(siblings, "_ask", ask)
    merged = await siblings.stats(answers[0][1])
    assert merged["samples"] == [(12.0, 5, 4), (14.0, 7, 6), (16.0, 8, 7)]
    assert (merged["head_position"], merged["subscribers"], merged["workers"]) == (8, 7, 2)
