"""How much memory a store process holds as events and streams pile up, to size its pod.

Starts ``python -m sluice_store`` on a fresh SQLite file (durability normal), appends
``--events`` ~200-byte events spread over ``--streams`` streams through pipelined
sessions, and prints the process's resident memory (VmRSS) at each tenth, then writes the
table to bench/results/memory-latest.md.

    python bench/memory.py                     # 1,000,000 events over 100,000 streams
    python bench/memory.py --events 200000     # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from sluice import Client, new_event

ROOT = Path(__file__).resolve().parent


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(m.group(1)) / 1024 if m else 0.0


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--streams", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=100, help="events per append")
    p.add_argument("--retention", default="", help="the store's prefix rules, e.g. 'bench-=max_age:1h'")
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="sluice-memory-")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice_store", "--addr", "127.0.0.1:0", "--db", f"sqlite:///{tmp}/m.db",
        "--durability", "normal", *(["--retention", a.retention] if a.retention else []),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    rows: list[tuple[int, int, float]] = []
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        addr = re.search(r"listening on (\S+)", line)
        assert addr, line
        rows.append((0, 0, rss_mib(proc.pid)))
        print(f"{'events':>12} {'streams':>10} {'RSS MiB':>9}", flush=True)
        print(f"{0:>12,} {0:>10,} {rows[0][2]:>9.0f}", flush=True)
        step = a.events // 10
        started = time.monotonic()
        async with Client(addr.group(1), timeout=120) as c, c.session() as s:
            pending: list[Coroutine[Any, Any, object]] = []
            done = 0
            while done < a.events:
                n = min(a.batch, a.events - done)
                stream = f"bench-{(done // a.batch) % a.streams}"
                pending.append(s.append(stream, [new_event("Placed", {"n": done + i}) for i in range(n)]))
                done += n
                if len(pending) >= 200:
                    await asyncio.gather(*pending)
                    pending.clear()
                if done % step == 0:
                    await asyncio.gather(*pending)
                    pending.clear()
                    streams = min(a.streams, done // a.batch)
                    rows.append((done, streams, rss_mib(proc.pid)))
                    print(f"{done:>12,} {streams:>10,} {rows[-1][2]:>9.0f}", flush=True)
        took = time.monotonic() - started
    finally:
        proc.terminate()
        await proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    text = (
        f"# Store memory\n\n{a.events:,} events (~200 bytes) over {a.streams:,} streams, appended in"
        f" {took:.0f} s; SQLite, durability normal, default --stream-cache"
        f"{f', prefix rules {a.retention!r}' if a.retention else ''}.\n\n"
        "| events | streams | RSS MiB |\n|---:|---:|---:|\n"
        + "".join(f"| {e:,} | {s:,} | {r:.0f} |\n" for e, s, r in rows)
    )
    (ROOT / "results").mkdir(exist_ok=True)
    # memory-latest.md is the measurement the store's memory request is sized from (the
    # manifest tests read it): a run with prefix rules writes a file of its own.
    name = "memory-retention-latest.md" if a.retention else "memory-latest.md"
    (ROOT / "results" / name).write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
