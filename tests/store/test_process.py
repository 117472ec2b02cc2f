"""The store as a real process: health, reflection, kill -9 durability, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sluice import START, Client, SluiceError, new_event
from sluice.settings import redact
from sluice.v1 import streams_pb2 as pb
from tests.conftest import StoreProcess, eventually
from tests.ports import announced


async def test_health_and_reflection(spawn: Callable[..., StoreProcess]) -> None:
    store = spawn()
    await store.start()
    async with grpc.aio.insecure_channel(store.addr) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "sluice.v1.Streams"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = set()
        async for resp in call:
            names = {s.name for s in resp.list_services_response.service}
            break
        call.cancel()
    assert {"sluice.v1.Streams", "grpc.health.v1.Health"} <= names


async def test_kill_9_loses_nothing_acknowledged(spawn: Callable[..., StoreProcess]) -> None:
    store = spawn("--durability", "full")
    await store.start()
    acked: dict[str, tuple[str, int, int]] = {}  # event id -> (stream, revision, position)
    enough = asyncio.Event()

    async def writer(w: int) -> None:
        async with Client(store.addr, timeout=5) as c:
            for i in range(100_000):
                events = [new_event("E", {"w": w, "i": i, "k": k}) for k in range(1 + i % 5)]
                try:
                    r = await c.append(f"k9-{w % 3}", events)
                except SluiceError:
                    return  # the store died under us
                for k, e in enumerate(events):
                    acked[e.id] = (r.stream, r.first_revision + k, r.first_position + k)
                if len(acked) > 3000:
                    enough.set()

    writers = [asyncio.create_task(writer(w)) for w in range(6)]
    await asyncio.wait_for(enough.wait(), 60)
    store.signal(signal.SIGKILL)
    await store.wait()
    await asyncio.wait_for(asyncio.gather(*writers), 30)

    again = spawn("--durability", "full")
    await again.start()
    async with Client(again.addr) as c:
        found = {e.id: (e.stream, e.revision, e.position) async for e in c.read()}
        missing = {k: v for k, v in acked.items() if found.get(k) != v}
        assert not missing, f"{len(missing)} acknowledged events lost or moved"
        head = max(p for _, _, p in found.values())
        assert sorted(p for _, _, p in found.values()) == list(range(1, head + 1))
        after = await c.append("k9-0", [new_event("After")])
        assert after.first_position == head + 1


async def test_sigterm_ends_live_streams_and_exits_cleanly(spawn: Callable[..., StoreProcess]) -> None:
    store = spawn()
    await store.start()
    async with Client(store.addr) as c:
        await c.append("t", [new_event("E")])
        sub = c.subscribe(start=START)
        items = [await asyncio.wait_for(anext(sub), 10) for _ in range(2)]
        assert isinstance(items[0], pb.RecordedEvent) and isinstance(items[1], pb.CaughtUp)
        store.signal(signal.SIGTERM)
        rest = [i async for i in sub]  # the stream ends instead of hanging
        assert all(not isinstance(i, pb.RecordedEvent) for i in rest)
    assert await store.wait() == 0


def test_bad_configuration_fails_fast_and_names_itself(tmp_path: Path) -> None:
    env = {**os.environ, "SLUICE_DURABILITY": "sometimes"}
    proc = subprocess.run(
        [sys.executable, "-m", "sluice_store", "--db", f"sqlite:///{tmp_path}/x.db"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "SLUICE_DURABILITY" in proc.stderr and "sometimes" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "sluice_store", "--db", "mysql://x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0 and "db: unknown scheme" in proc.stderr


async def test_a_second_store_on_a_taken_port_fails_fast(
    spawn: Callable[..., StoreProcess], tmp_path: Path
) -> None:
    first = spawn()
    await first.start()
    second = spawn(db=f"sqlite:///{tmp_path}/other.db")
    second.args[second.args.index("--addr") + 1] = first.addr  # the same port: refused, never shared
    with pytest.raises(RuntimeError, match="exited before"):
        await second.start()
    assert await second.wait() != 0
    assert f"addr: cannot listen on {first.addr}" in (tmp_path / "store.log").read_text()
    async with Client(first.addr, timeout=5) as c:  # the first still answers every call
        resp = await c.append("still-mine", [new_event("E", b"x")])
        assert resp.first_revision == 0


async def test_the_database_password_never_reaches_the_output(postgres_db: str) -> None:
    # Trust authentication ignores the password, so a real store starts with one in its URL.
    secret = "hunter2-not-for-logs"
    user, _, rest = postgres_db.partition("@")
    url = f"{user}:{secret}@{rest}?schema=redacted"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sluice_store", "--addr", "127.0.0.1:0", "--db", url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen = bytearray()
    try:
        async with asyncio.timeout(20):
            addr = (await announced(proc.stdout, r"listening on (\S+)", seen)).group(1)
        async with Client(addr, timeout=5) as c:
            await c.append("s", [new_event("E", b"")])
    finally:
        proc.terminate()
        rest_out, _ = await asyncio.wait_for(proc.communicate(), 20)
    out = (bytes(seen) + rest_out).decode()
    assert ":***@" in out and secret not in out


def test_a_database_it_cannot_open_stops_it_in_one_line(postgres_db: str) -> None:
    """A database that does not exist, or a server that does not answer: exit 1 with the
    reason on one line (an orchestrator restarts it), the password hidden, no traceback."""
    user, _, rest = postgres_db.partition("@")
    server, _, _ = rest.partition("/")
    for url, why in (
        (f"{user}:hunter2@{server}/no_such_database_here", "does not exist"),
        (f"{user}:hunter2@127.0.0.1:1/test", "refused"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "sluice_store", "--addr", "127.0.0.1:0", "--db", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("sluice-store: cannot open the database") and why in proc.stderr
        assert "Traceback" not in proc.stderr and "hunter2" not in proc.stderr, proc.stderr


def test_redact_hides_passwords_in_the_user_part_and_the_query() -> None:
    assert redact("postgresql://u:p%40ss@h:5432/db?password=x&schema=s") == (
        "postgresql://u:***@h:5432/db?password=***&schema=s"
    )
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact("sqlite:///data/s.db") == "sqlite:///data/s.db"


async def test_a_client_spreads_its_calls_over_every_address_of_its_target(
    spawn: Callable[..., StoreProcess], tmp_path: Path
) -> None:
    stores = [spawn(db=f"sqlite:///{tmp_path}/s{i}.db") for i in range(3)]
    for s in stores:
        await s.start()
    seen: set[str] = set()
    async with Client("ipv4:" + ",".join(s.addr for s in stores)) as c:

        async def answered_by_all() -> bool:  # each Read's header names the store that answered it
            call = c._stub.Read(pb.ReadRequest(max_count=1), timeout=10)
            seen.add((await anext(aiter(call))).header.store_id)
            call.cancel()
            return len(seen) == 3

        await eventually(answered_by_all, timeout=10)


async def test_connections_age_out_but_open_streams_run_on(spawn: Callable[..., StoreProcess]) -> None:
    store = spawn("--max-connection-age", "200ms")
    await store.start()
    async with Client(store.addr) as c:
        sub = c.subscribe(start=START)
        got: list[str] = []
        started = asyncio.get_running_loop().time()
        # Appends (new calls, on new connections after each GOAWAY) for several ages, each
        # seen by the one subscription opened at the start.
        while asyncio.get_running_loop().time() - started < 1.0 or len(got) < 5:
            ev = new_event("Tick", {"n": len(got)})
            await c.append("ticks", [ev])
            while True:
                item = await asyncio.wait_for(anext(sub), 10)
                if isinstance(item, pb.RecordedEvent):
                    got.append(item.id)
                    break
            assert got[-1] == ev.id
        await sub.aclose()


async def test_json_logs_are_one_object_a_line(spawn: Callable[..., StoreProcess], tmp_path: Path) -> None:
    store = spawn("--log-format", "json")
    await store.start()
    store.signal(signal.SIGTERM)
    assert await store.wait() == 0
    assert store.log is not None
    lines = [line for line in store.log.read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    shutdown = next(r for r in records if r["message"] == "shutting down")
    assert shutdown["level"] == "info" and shutdown["logger"] == "sluice_store"
    assert shutdown["time"].endswith("Z")
