"""How cost grows (``make bench``, section ``curves``): the same measurement at growing
sizes, as table rows and as PNG plots in bench/results/ (matplotlib).

- appends against event size (100 B to 64 KiB), Sluice (durability ``normal``, as the
  peers here promise) beside JetStream: events/s, MB/s and the p99 of each append's round
  trip, 64 appends in flight;
- catch-up against concurrent readers (1, 10, 100 subscriptions from the start, in this
  process, notification form): events/s in all;
- gateway fan-out against subscribers (10 to 10,000, notification form, two worker
  processes; from 1,000 subscribers on, ten share a connection): deliveries/s as fast as
  events come, and the p99 from the store's commit to each subscriber at 200 events/s;
- group delivery against partitions (12 to 256, two members) and members (1 to 8, 64
  partitions): events/s that sidecars push to an HTTP app, in batches of up to 100, from
  a backlog spread over 240 streams.

Each curve says where it bends; the note of the change that added this reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from bench.fanout import stamped
from bench.harness import (
    ROOT,
    Row,
    announced,
    fanout_run,
    jetstream,
    log,
    paced,
    process,
    rate,
    sidecars,
    sluice_store,
)
from sluice import START, new_event
from sluice.v1 import streams_pb2 as pb

SIZES = (100, 1024, 4096, 16384, 65536)
READERS = (1, 10, 100)
SUBSCRIBERS = (10, 100, 1000, 10_000)
PARTITIONS = (12, 64, 256)  # with two members
MEMBERS = (1, 2, 4, 8)  # with 64 partitions
IN_FLIGHT = 64


async def append_curve(a: argparse.Namespace) -> dict[str, list[tuple[int, float, float]]]:
    """(size, events/s, p99 ms) per system."""

    budget = (8 << 20) if a.quick else (32 << 20)  # bytes per point
    out: dict[str, list[tuple[int, float, float]]] = {"sluice": [], "jetstream": []}
    for size in SIZES:
        n = max(400, min(20_000, budget // size))
        body = b"x" * size
        log(f"curves: appends of {size:,} bytes, {n:,} events")
        async with sluice_store(durability(a)) as c, c.session() as s:
            lat: list[float] = []
            t0 = time.perf_counter()
            pending: list[asyncio.Future[Any]] = []
            for i in range(n):
                sent = time.perf_counter()
                fut = s.send(f"size-{i % 16}", [new_event("E", body)])
                fut.add_done_callback(_timer(lat, sent))
                pending.append(fut)
                if len(pending) >= IN_FLIGHT:
                    await pending.pop(0)
            await asyncio.gather(*pending)
            out["sluice"].append((size, n / (time.perf_counter() - t0), _p99_ms(lat)))
        async with jetstream(f"size{size}") as (_, js, subj):
            lat = []
            t0 = time.perf_counter()
            acks: list[asyncio.Future[Any]] = []
            for _ in range(n):
                sent = time.perf_counter()
                ack = await js.publish_async(f"{subj}.e", body)
                ack.add_done_callback(_timer(lat, sent))
                acks.append(ack)
                if len(acks) >= IN_FLIGHT:
                    await acks.pop(0)
            await asyncio.gather(*acks)
            out["jetstream"].append((size, n / (time.perf_counter() - t0), _p99_ms(lat)))
    return out


async def catch_up_curve(a: argparse.Namespace) -> list[tuple[int, float]]:
    """(readers, events/s in all)."""

    n = 10_000 if a.quick else 50_000
    out = []
    async with sluice_store(durability(a)) as c:
        body = b"x" * 200
        for start in range(0, n, 1000):
            await c.append(f"cu-{start // 1000 % 10}", [new_event("E", body) for _ in range(1000)])

        async def read() -> int:
            got = 0
            async for item in c.subscribe(start=START, stream_prefixes=["cu-"], notifications_only=True):
                if isinstance(item, pb.RecordedEvent):
                    got += 1
                elif isinstance(item, pb.CaughtUp):
                    break
            return got

        for readers in READERS:
            log(f"curves: catch-up of {n:,} events by {readers} readers")
            t0 = time.perf_counter()
            got = sum(await asyncio.gather(*(read() for _ in range(readers))))
            assert got == n * readers, (got, n * readers)
            out.append((readers, got / (time.perf_counter() - t0)))
    return out


async def gateway_curve(a: argparse.Namespace) -> list[tuple[int, float, float]]:
    """(subscribers, deliveries/s, p99 ms from commit to subscriber at 200 events/s)."""

    out = []
    async with sluice_store(durability(a)) as client:
        gateway = [sys.executable, "-m", "sluice_gateway", "--addr", "127.0.0.1:0", "--store", client.target]
        async with process(*gateway, "--http-addr", "", ready=b"listening on") as gw:
            gaddr = announced(gw)
            for subs in SUBSCRIBERS:
                n = max(1000, min(50_000, (a.fanout_deliveries // 2) // subs))

                async def produce(n: int = n) -> None:
                    for sent in range(0, n, 500):
                        batch = [new_event("Tick", stamped(sent + j)) for j in range(min(500, n - sent))]
                        await client.append(f"fan-{sent % 8}", batch)

                log(f"curves: gateway fan-out to {subs:,} subscribers, {n:,} events")
                # From 1,000 subscribers on, ten share a connection (HTTP/2 streams), as
                # subscribers in one app would: 10,000 connections would be the test's limit.
                share = 1 if subs < 1000 else 10
                fast = await fanout_run(
                    "sluice", gaddr, subs, n, produce, form="notification", per_channel=share
                )
                secs = 2.0 if a.quick else 5.0

                async def slow(secs: float = secs) -> None:
                    async with client.session() as session:

                        async def send(i: int) -> None:
                            await session.append(f"fan-{i % 8}", [new_event("Tick", stamped(i))])

                        await paced(200, secs, send)

                paced_run = await fanout_run(
                    "sluice",
                    gaddr,
                    subs,
                    int(200 * secs),
                    slow,
                    latency=True,
                    form="notification",
                    per_channel=share,
                )
                out.append((subs, float(fast["rate"]), float(paced_run["hop_p99"])))
    return out


async def group_curve(a: argparse.Namespace) -> list[tuple[int, int, float]]:
    """(partitions, members, events/s at the app): one group per point over the same
    backlog, each member a sidecar process pushing batches to one HTTP app."""
    import aiohttp

    n, streams = (5_000 if a.quick else 20_000), 240
    points = [(p, 2) for p in PARTITIONS] + [(64, m) for m in MEMBERS if m != 2]
    out = []
    async with (
        sluice_store(durability(a)) as c,
        process(sys.executable, str(ROOT / "app.py"), "0", ready=b"listening on") as app,
        aiohttp.ClientSession() as http,
    ):
        app_url = f"http://{announced(app)}"
        body = b"x" * 200
        for s in range(streams):
            count = n // streams + (1 if s < n % streams else 0)
            await c.append(f"acct-{s}", [new_event("E", body) for _ in range(count)])
        for partitions, members in points:
            log(f"curves: group delivery, {partitions} partitions, {members} member(s), {n:,} events")
            group = f"curve-{partitions}-{members}"
            await http.post(f"{app_url}/reset")
            await c.create_group(group, stream_prefixes=["acct-"], start="start", partitions=partitions)
            async with (
                sidecars(c.target, group, f"{app_url}/events", members, batch=100),
                asyncio.timeout(300),
            ):
                while True:
                    async with http.get(f"{app_url}/count") as r:
                        state = await r.json()
                    if state["count"] >= n:
                        break
                    await asyncio.sleep(0.02)  # another process: polled
            out.append((partitions, members, rate(n - 1, state["last"] - state["first"])))
    return out


def durability(a: argparse.Namespace) -> str:
    """The curves compare like with like: ``normal`` (a crash of the process loses nothing
    acknowledged, as JetStream here promises) unless one durability was asked for."""
    return "normal" if a.durability == "both" else str(a.durability)


def _timer(into: list[float], sent: float) -> Any:
    """A done-callback that records how long since ``sent``."""

    def done(_: Any) -> None:
        into.append(time.perf_counter() - sent)

    return done


def _p99_ms(samples: list[float]) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(0.99 * len(s)))] * 1000 if s else float("nan")


def plot(
    path: Path,
    title: str,
    xlabel: str,
    series: dict[str, list[tuple[float, float]]],
    ylabel: str,
    logx: bool = True,
    second: dict[str, list[tuple[float, float]]] | None = None,
    ylabel2: str = "",
) -> None:
    """One PNG: each series a line (and ``second`` on a right-hand axis, dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, points in series.items():
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if second:
        ax2 = ax.twinx()
        for name, points in second.items():
            ax2.plot([x for x, _ in points], [y for _, y in points], linestyle="--", marker="x", label=name)
        ax2.set_ylabel(ylabel2)
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


async def bench_curves(res: Any, a: argparse.Namespace) -> None:

    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    appends = await append_curve(a)
    for (size, s_rate, s_p99), (_, j_rate, j_p99) in zip(
        appends["sluice"], appends["jetstream"], strict=True
    ):
        res.add(
            Row(
                "curves",
                f"appends of {size:,} B, {IN_FLIGHT} in flight",
                "events/s",
                s_rate,
                {"jetstream": j_rate},
            )
        )
        res.add(
            Row(
                "curves",
                f"appends of {size:,} B, p99 round trip",
                "ms",
                s_p99,
                {"jetstream": j_p99},
                higher_is_better=False,
            )
        )
    plot(
        out / "curve-appends-by-size.png",
        f"Appends by event size ({IN_FLIGHT} in flight)",
        "event size (bytes)",
        {k: [(x, r * x / 1e6) for x, r, _ in v] for k, v in appends.items()},
        "MB/s (solid)",
        second={f"{k} p99": [(x, p) for x, _, p in v] for k, v in appends.items()},
        ylabel2="p99 round trip, ms (dashed)",
    )
    catch = await catch_up_curve(a)
    for readers, got in catch:
        res.add(Row("curves", f"catch-up by {readers} concurrent readers (in all)", "events/s", got, {}))
    plot(
        out / "curve-catchup-by-readers.png",
        "Catch-up by concurrent readers",
        "readers",
        {"sluice": [(float(r), v) for r, v in catch]},
        "events/s in all",
    )
    fan = await gateway_curve(a)
    for subs, deliveries, p99 in fan:
        res.add(
            Row(
                "curves",
                f"gateway fan-out to {subs:,} subscribers (notification form)",
                "deliveries/s",
                deliveries,
                {},
            )
        )
        res.add(
            Row(
                "curves",
                f"gateway p99 commit -> subscriber, {subs:,} subscribers at 200 events/s",
                "ms",
                p99,
                {},
                higher_is_better=False,
            )
        )
    plot(
        out / "curve-gateway-by-subscribers.png",
        "Gateway fan-out by subscribers (notification form)",
        "subscribers",
        {"deliveries/s": [(float(s), r) for s, r, _ in fan]},
        "deliveries/s (solid)",
        second={"p99 at 200 events/s": [(float(s), p) for s, _, p in fan]},
        ylabel2="p99 commit -> subscriber, ms (dashed)",
    )
    groups = await group_curve(a)
    for partitions, members, got in groups:
        res.add(
            Row(
                "curves",
                f"group delivery, {partitions} partitions, {members} member(s), batches of 100",
                "events/s",
                got,
                {},
            )
        )
    plot(
        out / "curve-group-by-partitions.png",
        "Group delivery by partitions (2 sidecars, batches of 100)",
        "partitions",
        {"sluice": [(float(p), r) for p, m, r in groups if m == 2]},
        "events/s at the app",
    )
    plot(
        out / "curve-group-by-members.png",
        "Group delivery by members (64 partitions, batches of 100)",
        "members (sidecar processes)",
        {"sluice": [(float(m), r) for p, m, r in groups if p == 64]},
        "events/s at the app",
        logx=False,
    )
