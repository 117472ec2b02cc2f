"""Run the mesh on one machine: the store (embedded SQLite) and the gateway, until Ctrl-C.

    python scripts/mesh.py [--data DIR]

Each component runs as its own process, the way a deployment runs it; a signal to this
one (Ctrl-C, SIGTERM) is passed on to both, which shut down gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


async def main(data: str) -> int:
    commands = [
        [sys.executable, "-m", "sluice_store", "--db", f"sqlite:///{data}/sluice.db"],
        [sys.executable, "-m", "sluice_gateway"],
    ]
    procs = [await asyncio.create_subprocess_exec(*cmd) for cmd in commands]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exited = [asyncio.create_task(p.wait()) for p in procs]
    halt = asyncio.create_task(stop.wait())
    await asyncio.wait([halt, *exited], return_when=asyncio.FIRST_COMPLETED)
    for p in reversed(procs):  # the gateway first, then the store
        if p.returncode is None:
            p.terminate()
            await p.wait()
    halt.cancel()
    failed = [p.returncode for p in procs if p.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed and not stop.is_set() else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="./data", help="directory of the SQLite file [./data]")
    sys.exit(asyncio.run(main(parser.parse_args().data)))
