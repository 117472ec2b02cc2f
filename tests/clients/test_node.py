"""The Node.js client (clients/node) against a real store process: its own node:test suite."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import StoreProcess

NODE_CLIENT = Path(__file__).resolve().parents[2] / "clients/node"


async def test_node_client_appends_reads_subscribes_and_handles_a_conflict(
    spawn: Callable[..., StoreProcess],
) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_CLIENT / "node_modules").is_dir():
        why = "Node.js 20+ and `make test` (npm ci in clients/node) are needed for the Node client test"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    store = spawn("--durability", "normal")
    await store.start()
    proc = await asyncio.create_subprocess_exec(
        node,
        "--test",
        "--test-reporter=spec",
        "test/",
        cwd=NODE_CLIENT,
        env={**os.environ, "SLUICE_STORE_ADDR": store.addr},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    report = out.decode()
    assert proc.returncode == 0, report
    assert re.search(r"\bfail 0\b", report), report
    assert "conflict is a WrongExpectedRevision" in report  # the suite ran its cases
