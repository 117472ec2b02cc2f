"""Where one SQLite store process saturates, and what a second process reading the same
file would add (the cheapest step towards using more than one core on one machine).

Against one store process (durability normal) loaded with ``--events`` events:

1. appends alone: 4 tasks appending batches of 100 for ``--seconds``;
2. catch-up alone: reads of all streams from the start, pages of 1,000, for ``--seconds``;
3. both at once through the store (appends and reads share its one core);
4. appends through the store while a *separate* process reads the same file directly
   (WAL lets readers run beside the writer): what a reader process serving catch-up and
   subscriptions could take off the store's core.

For each, events/s and the CPU each process used (100% = one core). The reader process
builds each event's wire bytes from the stored head and data as the store does, but does
not serve them over gRPC, so its figure is an upper bound for a reader service.

    python bench/cores.py                 # 300,000 events, 6 s per phase
    python bench/cores.py reader --db F   # (the reader process itself)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from bench.harness import payload  # noqa: E402
from sluice import Client, new_event  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def reader(a: argparse.Namespace) -> None:
    """Read the store's file from the start, pages of 1,000 by position, for a.seconds."""
    from sluice import eventbytes

    conn = sqlite3.connect(f"file:{a.db}?mode=ro", uri=True)
    conn.execute("PRAGMA query_only = 1")
    got, last, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < a.seconds:
        rows = conn.execute(
            "SELECT position, head, data FROM events WHERE position > ? ORDER BY position LIMIT 1000", (last,)
        ).fetchall()
        if not rows:
            last = 0  # read it again from the start: the phase is timed, not sized
            continue
        body = b"".join(eventbytes.event_bytes(h, d) for _, h, d in rows)
        assert body
        got += len(rows)
        last = rows[-1][0]
    seconds = time.perf_counter() - t0
    print(json.dumps({"events": got, "seconds": seconds, "cpu": time.process_time()}), flush=True)


async def main(a: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="sluice-cores-")
    db = f"{tmp}/c.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice_store", "--addr", "127.0.0.1:0", "--db", f"sqlite:///{db}",
        "--durability", "normal", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    rows: list[tuple[str, float, float, float, float]] = []
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        m = re.search(r"listening on (\S+)", line)
        assert m, line
        body = payload(1)
        async with Client(m.group(1), timeout=120) as c:
            print(f"loading {a.events:,} events", file=sys.stderr, flush=True)
            for start in range(0, a.events, 1000):
                await c.append(f"load-{start // 1000 % 100}", [new_event("E", body) for _ in range(1000)])

            async def appending(stop: float) -> int:
                async def one(t: int) -> int:
                    n = 0
                    while time.perf_counter() < stop:
                        await c.append(f"w-{t}", [new_event("E", body) for _ in range(100)])
                        n += 100
                    return n

                return sum(await asyncio.gather(*(one(t) for t in range(4))))

            async def reading(stop: float) -> int:
                n = 0
                while time.perf_counter() < stop:
                    async for batch in c.read_batches(max_count=0, batch_size=1000):
                        n += len(batch)
                        if time.perf_counter() >= stop:
                            break
                return n

            async def phase(name: str, appends: bool, reads: str) -> None:
                print(f"phase: {name}", file=sys.stderr, flush=True)
                store0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                stop = t0 + a.seconds
                jobs = []
                if appends:
                    jobs.append(appending(stop))
                if reads == "store":
                    jobs.append(reading(stop))
                other = None
                if reads == "process":
                    other = await asyncio.create_subprocess_exec(
                        sys.executable, __file__, "reader", "--db", db, "--seconds", str(a.seconds),
                        stdout=asyncio.subprocess.PIPE,
                    )  # fmt: skip
                results = await asyncio.gather(*jobs)
                elapsed = time.perf_counter() - t0
                store_cpu = (cpu_seconds(proc.pid) - store0) / elapsed * 100
                appended = results[0] / elapsed if appends else 0.0
                read = results[-1] / elapsed if reads == "store" else 0.0
                reader_cpu = 0.0
                if other is not None:
                    assert other.stdout is not None
                    out = json.loads(await asyncio.wait_for(other.stdout.readline(), a.seconds + 60))
                    reader_cpu = out["cpu"] / out["seconds"] * 100
                    read = out["events"] / out["seconds"]
                    await other.wait()
                rows.append((name, appended, read, store_cpu, reader_cpu))
                extra = f", reader process CPU {reader_cpu:.0f}%" if other is not None else ""
                print(
                    f"  appends {appended:,.0f}/s, reads {read:,.0f}/s, store CPU {store_cpu:.0f}%{extra}",
                    file=sys.stderr,
                    flush=True,
                )

            await phase("appends alone", True, "")
            await phase("catch-up alone (through the store)", False, "store")
            await phase("appends + catch-up, both through the store", True, "store")
            await phase("appends through the store + a reader process on the same file", True, "process")
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    table = [
        f"# One store's cores: {a.events:,} events, {a.seconds:g} s per phase, {os.cpu_count()} cores\n",
        "| phase | appends/s | reads/s | store CPU (100% = one core) | reader process CPU |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {n} | {ap:,.0f} | {rd:,.0f} | {cpu:.0f}% | {f'{rcpu:.0f}%' if rcpu else ''} |"
            for n, ap, rd, cpu, rcpu in rows
        ),
    ]
    text = "\n".join(table) + "\n"
    print(text)
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    (out / "cores-latest.md").write_text(text)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", choices=["reader"])
    p.add_argument("--db", help="(reader) the store's SQLite file")
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--seconds", type=float, default=6.0)
    args = p.parse_args()
    if args.mode == "reader":
        reader(args)
    else:
        asyncio.run(main(args))
