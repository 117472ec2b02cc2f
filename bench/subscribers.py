"""What a live subscriber costs the store in memory: open live subscriptions in steps and
read the store process's resident size (VmRSS) after each, with events flowing to all of
them between steps so their buffers have been used.

Subscriptions are spread over ``--channels`` client connections from this one process
(gRPC multiplexes streams on a connection, as services holding many subscriptions do).

    python bench/subscribers.py                      # up to 4,000 subscribers, steps of 1,000
    python bench/subscribers.py --max 10000 --step 2000
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from bench.memory import rss_mib  # noqa: E402
from sluice import Client, new_event  # noqa: E402
from sluice.v1 import streams_pb2 as pb  # noqa: E402


async def main(a: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="sluice-subscribers-")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice_store", "--addr", "127.0.0.1:0", "--db", f"sqlite:///{tmp}/s.db",
        "--durability", "normal", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    rows: list[tuple[int, float]] = []
    clients: list[Client] = []
    tasks: list[asyncio.Task[None]] = []
    received = 0
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        m = re.search(r"listening on (\S+)", line)
        assert m, line
        clients = [Client(m.group(1), timeout=120) for _ in range(a.channels)]
        producer = clients[0]

        async def follow(c: Client, ready: asyncio.Event) -> None:
            nonlocal received
            async for item in c.subscribe(stream_prefixes=["sub-"]):
                if isinstance(item, pb.CaughtUp):
                    ready.set()
                elif isinstance(item, pb.RecordedEvent):
                    received += 1

        async def flow(subscribers: int) -> None:
            """100 events to every subscriber, and wait until all of them have them."""
            nonlocal received
            received = 0
            for i in range(10):
                await producer.append(f"sub-{i}", [new_event("Tick", {"n": n}) for n in range(10)])
            async with asyncio.timeout(120):
                while received < 100 * subscribers:  # noqa: ASYNC110 (counted by the readers)
                    await asyncio.sleep(0.05)

        await flow(0)
        rows.append((0, rss_mib(proc.pid)))
        print(f"{'subscribers':>12} {'RSS MiB':>9}", flush=True)
        print(f"{0:>12,} {rows[0][1]:>9.0f}", flush=True)
        while len(tasks) < a.max:
            step = []
            for i in range(a.step):
                ready = asyncio.Event()
                tasks.append(asyncio.create_task(follow(clients[(len(tasks) + i) % a.channels], ready)))
                step.append(ready)
            async with asyncio.timeout(120):
                for ready in step:
                    await ready.wait()
            await flow(len(tasks))
            rows.append((len(tasks), rss_mib(proc.pid)))
            print(f"{len(tasks):>12,} {rows[-1][1]:>9.0f}", flush=True)
    finally:
        for t in tasks:
            t.cancel()
        for c in clients:
            await c.close()
        proc.terminate()
        await proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    per = (rows[-1][1] - rows[0][1]) * 1024 / rows[-1][0] if rows[-1][0] else 0.0
    text = (
        f"# Store memory per live subscriber\n\nLive subscriptions (a prefix filter) over {a.channels}"
        f" connections, 100 events through each between steps; SQLite, durability normal.\n\n"
        "| live subscribers | store RSS MiB |\n|---:|---:|\n"
        + "".join(f"| {n:,} | {r:.0f} |\n" for n, r in rows)
        + f"\nAbout {per:.0f} KiB per live subscriber.\n"
    )
    print(text)
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "subscribers-latest.md").write_text(text)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max", type=int, default=4000)
    p.add_argument("--step", type=int, default=1000)
    p.add_argument("--channels", type=int, default=8)
    asyncio.run(main(p.parse_args()))
