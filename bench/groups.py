"""What describing many lagging groups costs the store (what the console's overview asks
for every 10 seconds): ``--groups`` groups over the same streams, each lagging ``--lag``
events, described by one ListGroups; the time of each of three calls.

    python bench/groups.py                     # 100 groups, lag 1,000 and 10,000
    python bench/groups.py --groups 20 --lag 50000
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sluice import ANY, START, Client, new_event


async def measure(groups: int, lag: int) -> list[float]:
    folder = Path(tempfile.mkdtemp(prefix="sluice-bench-groups-"))
    store = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sluice_store", "--addr", "127.0.0.1:0"),
        *("--db", f"sqlite:///{folder}/s.db", "--durability", "normal"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert store.stdout is not None
        line = (await asyncio.wait_for(store.stdout.readline(), 30)).decode()
        match = re.search(r"listening on (\S+)", line)
        assert match, line
        async with Client(match.group(1), timeout=300) as c:
            for i in range(groups):
                await c.create_group(f"g{i:03d}", stream_prefixes=["orders-"], start=START)
            for b in range(0, lag, 1000):
                await c.append_many([(f"orders-{b}-{j}", [new_event("E", b"x")], ANY) for j in range(1000)])
            seconds = []
            for _ in range(3):
                t = time.perf_counter()
                described = await c.list_groups()
                seconds.append(time.perf_counter() - t)
                assert len(described) == groups
            return seconds
    finally:
        store.kill()
        await store.wait()
        shutil.rmtree(folder, ignore_errors=True)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--groups", type=int, default=100)
    p.add_argument("--lag", type=int, action="append", help="events each group lags (repeatable)")
    a = p.parse_args()
    print("| groups | lag each | ListGroups, median of 3 | spread |")
    print("|---:|---:|---:|---:|")
    for lag in a.lag or [1000, 10_000]:
        s = await measure(a.groups, lag)
        median, low, high = (x * 1000 for x in (statistics.median(s), min(s), max(s)))
        print(f"| {a.groups} | {lag:,} | {median:,.0f} ms | {low:,.0f} to {high:,.0f} ms |")


if __name__ == "__main__":
    asyncio.run(main())
