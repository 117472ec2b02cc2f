"""The gRPC core settings (sluice/grpcenv.py) reach every Sluice process, before grpc starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sluice import grpcenv

SHOW = "import os; print(os.environ.get('GRPC_EXPERIMENTS', '<unset>'))"


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    return subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "module",
    ["sluice", "sluice.cli", "sluice_store.__main__", "sluice_gateway.__main__", "sluice_sidecar.__main__"],
)
def test_each_entry_point_sets_the_experiments_before_grpc_is_imported(module: str) -> None:
    # The setting only works when it is in the environment as grpc's core starts.
    code = f"import sys, {module}\nassert 'grpc' in sys.modules\n{SHOW}"
    done = run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == grpcenv.EXPERIMENTS


def test_a_value_already_set_wins_and_an_empty_one_gives_grpc_its_defaults() -> None:
    assert run(f"import sluice\n{SHOW}", GRPC_EXPERIMENTS="").stdout.strip() == ""
    assert run(f"import sluice\n{SHOW}", GRPC_EXPERIMENTS="-tcp_rcv_lowat").stdout.strip() == "-tcp_rcv_lowat"


def test_nothing_is_set_once_grpc_was_imported_first() -> None:
    # Too late for this process; setting it would only change its children.
    assert run(f"import grpc, sluice\n{SHOW}").stdout.strip() == "<unset>"
    env: dict[str, str] = {}
    assert grpcenv.apply(env) is False  # grpc is imported in this test process
    assert env == {}


def test_this_grpc_knows_the_experiments() -> None:
    # A grpcio that dropped them would log "Unknown experiment" and run with its defaults.
    code = (
        "import asyncio, sluice, grpc\n"
        "async def main():\n"
        "    channel = grpc.aio.insecure_channel('127.0.0.1:1')\n"
        "    await channel.close()\n"
        "asyncio.run(main())\n"
    )
    done = run(code, GRPC_VERBOSITY="ERROR")
    assert done.returncode == 0, done.stderr
    assert "Unknown experiment" not in done.stderr
    bogus = run(code, GRPC_VERBOSITY="ERROR", GRPC_EXPERIMENTS="-no_such_experiment")
    assert "Unknown experiment" in bogus.stderr  # the check above can see the message
