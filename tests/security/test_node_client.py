"""The Node.js client against a store that asks for TLS and a token."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Awaitable, Callable

import pytest

from tests.clients.test_node import NODE_CLIENT
from tests.conftest import StoreProcess
from tests.security.conftest import TOKENS, Setup


async def test_the_node_client_speaks_tls_and_tokens(
    secure_store: Callable[..., Awaitable[StoreProcess]], setup: Setup
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    store = await secure_store()
    env = {
        **os.environ,
        "SLUICE_STORE_ADDR": store.addr,
        "SLUICE_TLS_CA": str(setup.ca_file),
        "SLUICE_TOKEN": TOKENS["root"],
        "SLUICE_LIMITED_TOKEN": TOKENS["orders-app"],
        "SLUICE_SECURE_TEST": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        node, "--test", "--test-reporter=spec", "test/secure.test.js", cwd=NODE_CLIENT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    report = out.decode()
    assert proc.returncode == 0, report
    assert re.search(r"\bpass 3\b", report) and re.search(r"\bskipped 0\b", report), report
