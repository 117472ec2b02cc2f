"""`make run`: the store on its SQLite file and the gateway, until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

from sluice import Client, new_event
from sluice.gateway import GatewayClient
from sluice.v1 import streams_pb2 as pb
from tests.deploy.manifests import ROOT

WAIT = 30.0


async def test_make_run_serves_the_mesh_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {
        **os.environ,  # any free ports instead of the usual ones
        "SLUICE_STORE_ADDR": "127.0.0.1:0",
        "SLUICE_GATEWAY_ADDR": "127.0.0.1:0",
        "SLUICE_GATEWAY_HTTP_ADDR": "127.0.0.1:0",
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, str(ROOT / "scripts/mesh.py"), "--data", str(tmp_path / "data")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: a failed test ends the store and gateway too
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(WAIT):
            while not any("sluice gateway listening on" in line for line in lines):
                line = (await proc.stdout.readline()).decode()
                assert line, "".join(lines)
                lines.append(line)
        text = "".join(lines)
        store = re.search(r"sluice store listening on (\S+)", text)
        gateway = re.search(r"sluice gateway listening on ([^,\s]+)", text)
        assert store and gateway, text
        # The gateway starts once the store listens: its feed does not begin with a failure.
        assert "live feed from the store ended" not in text, text
        async with Client(store.group(1)) as c, GatewayClient(gateway.group(1)) as gw:
            watch = gw.watch(stream_prefixes=["orders-"], heartbeat_interval=0.2)
            await asyncio.wait_for(anext(watch), WAIT)  # watching
            appended = await c.append("orders-1", [new_event("Placed", {"n": 1})])
            async with asyncio.timeout(WAIT):
                async for item in watch:
                    if isinstance(item, pb.RecordedEvent):
                        assert item.position == appended.first_position
                        break
        assert (tmp_path / "data" / "sluice.db").exists()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, _ = await asyncio.wait_for(proc.communicate(), WAIT)
        assert proc.returncode == 0, text + rest.decode()
        assert "Traceback" not in rest.decode()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
