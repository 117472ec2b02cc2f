"""Run the mesh on one machine: the store (embedded SQLite) and the gateway, until Ctrl-C.

    python scripts/mesh.py [--data DIR]

Each component runs as its own process, the way a deployment runs it; a signal to this
one (Ctrl-C, SIGTERM) is passed on to both, which shut down gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from processes import Processes, until_interrupted  # scripts/ is run as a folder of scripts


async def main(data: str) -> int:
    mesh = Processes()
    async with until_interrupted() as stop:
        # The gateway starts once the store listens, so its feed connects at the first try.
        store = await mesh.start(
            "store",
            [sys.executable, "-m", "sluice_store", "--db", f"sqlite:///{data}/sluice.db"],
            announce=r"listening on (\S+).*",
        )
        assert store is not None
        print(f"sluice store {store.group(0)}", flush=True)
        await mesh.start("gateway", [sys.executable, "-m", "sluice_gateway", "--store", store.group(1)])
        await mesh.first_exit(stop)
        failed = mesh.exited()
        await mesh.stop()  # the gateway first, then the store
    return 1 if failed and not stop.is_set() else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="./data", help="directory of the SQLite file [./data]")
    sys.exit(asyncio.run(main(parser.parse_args().data)))
