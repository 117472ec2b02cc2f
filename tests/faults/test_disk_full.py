"""A full disk: appends refused as STORAGE_FULL (RESOURCE_EXHAUSTED), reads go on, health
says so, one log line per change, recovery without a restart once space is freed, and
nothing acknowledged lost, across kill -9 too. On a small tmpfs (needs root, as CI has)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice import Client, SluiceError, new_event
from tests.conftest import StoreProcess, eventually

SIZE_MB = 24


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        why = f"cannot mount a tmpfs ({done.stderr.decode().strip()}): run as root"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def append_health(addr: str) -> int:
    async with grpc.aio.insecure_channel(addr) as ch:
        req = health_pb2.HealthCheckRequest(service="sluice.v1.Streams/Append")
        resp = await health_pb2_grpc.HealthStub(ch).Check(req, timeout=5)
        return int(resp.status)


def filler(where: Path, mb: int) -> Path:
    """Take most of the disk with a file the test can delete to free space."""
    path = where / "filler"
    with open(path, "wb") as f:
        f.write(b"\0" * (mb << 20))
    return path


async def test_a_full_disk_refuses_appends_keeps_reads_and_recovers_without_restart(
    small_disk: Path, tmp_path: Path
) -> None:
    log = tmp_path / "store.log"
    store = StoreProcess(
        f"sqlite:///{small_disk}/s.db", "--durability", "full", "--disk-reserve", str(2 << 20), log=log
    )
    await store.start()
    try:
        space = filler(small_disk, SIZE_MB - 8)
        acked: dict[str, int] = {}
        refused = None
        async with Client(store.addr, timeout=10) as c:
            for i in range(2000):  # ~100 MB offered to ~6 MB of free space
                ev = new_event("Big", os.urandom(50_000))
                try:
                    acked[ev.id] = (await c.append(f"s-{i % 7}", [ev])).first_position
                except SluiceError as e:
                    refused = e
                    break
            assert refused is not None, "the disk never filled"
            assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.reason == "STORAGE_FULL" and refused.metadata["limit"] == "storage"
            assert len(acked) > 10
            # Reads go on, and health says what is wrong.
            assert {e.id for e in await c.read_list()} == set(acked)
            assert await append_health(store.addr) == health_pb2.HealthCheckResponse.NOT_SERVING
            again = 0
            for _ in range(5):  # still full: the same answer, and no new log line
                with contextlib.suppress(SluiceError):
                    await c.append("s-x", [new_event("Big", os.urandom(50_000))])
                    again += 1
            space.unlink()  # the operator frees space: no restart

            async def appends_again() -> bool:
                try:
                    ev = new_event("After", b"x")
                    acked[ev.id] = (await c.append("after", [ev])).first_position
                    return True
                except SluiceError:
                    return False

            await eventually(appends_again, timeout=30)
            assert await append_health(store.addr) == health_pb2.HealthCheckResponse.SERVING
            assert {e.id for e in await c.read_list()} >= set(acked)
        text = log.read_text()
        assert text.count("storage is full") == 1 and text.count("storage has room again") == 1
        assert "Traceback" not in text
        # kill -9 and start again: every acknowledged event is there.
        store.signal(signal.SIGKILL)
        await store.wait()
        await store.start()
        async with Client(store.addr, timeout=10) as c:
            stored = {e.id: e.position for e in await c.read_list()}
        assert {i: stored.get(i) for i in acked} == acked
    finally:
        if store.proc and store.proc.returncode is None:
            store.proc.kill()
            await store.proc.wait()
