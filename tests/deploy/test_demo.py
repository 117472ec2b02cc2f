"""`make demo`: the mesh, orders-app with its sidecar, a producer and a gateway subscriber."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import ROOT


@pytest.mark.beside
async def test_demo_runs_and_every_order_arrives(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, str(ROOT / "scripts/demo.py"), "--seconds", "4", "--any-ports"),
        *("--data", str(tmp_path / "demo"), "--rate", "25"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    text = out.decode()
    assert proc.returncode == 0, text
    done = re.search(
        r"all (\d+) orders reached orders-app through its sidecar, and the gateway subscriber", text
    )
    assert done and int(done.group(1)) >= 50, text  # ~25/s for 4 s
    lines = [line.split() for line in text.splitlines() if re.fullmatch(r"\s*(\d+\s+){5}\d+\s*", line)]
    assert len(lines) >= 4  # the live summary: a line a second
    last = [int(v) for v in lines[-1]]
    assert last[1] == last[3] == last[4] == int(done.group(1))  # produced = app has = gateway saw
