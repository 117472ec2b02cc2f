"""Benchmark: the Sluice store beside NATS JetStream and Redis Streams, in one run.
(Over 500 lines: one section per measured path, each next to the peers' version of it,
so a reader compares like with like.)

Every system is driven by its Python client from this process, with ~200-byte JSON
events. The store runs as its own process (``python -m sluice_store``) on a fresh SQLite
file with the durability named in the table. Results print as a table of figures and
Sluice/peer ratios, and are written to bench/results/.

    python bench/run.py            # the full run (1M-event catch-up, 1M streams)
    python bench/run.py --quick    # a smaller run for a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import gc
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# The runner spawns its processes from a uvloop loop, which forks (the default loop uses
# vfork): gRPC's fork handlers then ran in the child and, now and then, crashed it before it
# could exec (a fan-out worker dying of SIGSEGV with no output, 4 runs of 5 here). Nothing
# here forks to use gRPC in the child, so they are off; set before gRPC is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncpg
import nats
from nats.js import api as js_api

from sluice import ANY, START, Client, new_event
from sluice.v1 import streams_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.curves import bench_curves  # bench/ is run as a script, not installed
from bench.fanout import stamped
from bench.harness import (
    NATS_URL,
    POSTGRES_URL,
    ROOT,
    Results,
    Row,
    announced,
    durabilities,
    fanout_run,
    fmt,
    from_tasks,
    in_flight,
    jetstream,
    log,
    one_durability,
    paced,
    payload,
    pct,
    process,
    rate,
    redis_client,
    redis_stream,
    sidecars,
    sluice_store,
    store_processes,
    timed,
)


def merge_rounds(rounds: list[list[Row]]) -> list[Row]:
    """One row per case from several rounds of a section: each figure the median of the
    rounds', each ratio the median of the rounds' ratios, with their spread."""
    by_case: dict[tuple[str, str, str], list[Row]] = {}
    for rows in rounds:
        for row in rows:
            by_case.setdefault((row.section, row.case, row.unit), []).append(row)
    merged = []
    for same in by_case.values():
        first = same[0]
        peers = {p: statistics.median(r.peers[p] for r in same if p in r.peers) for p in first.peers}
        ratios = {p: [r.ratio(p) for r in same if p in r.peers] for p in first.peers}
        merged.append(
            dataclasses.replace(
                first,
                sluice=statistics.median(r.sluice for r in same),
                peers=peers,
                paired={p: statistics.median(v) for p, v in ratios.items()},
                spread={p: (min(v), max(v)) for p, v in ratios.items()},
                rounds=len(same),
            )
        )
    return merged


# -- the systems ----------------------------------------------------------------------


# -- appends --------------------------------------------------------------------------


async def sluice_appends(
    a: argparse.Namespace, durability: str, events: list[bytes], window: int
) -> dict[Any, float]:
    """Sluice's figures for the append cases, with one durability."""
    n_single, n_flight = a.single, a.inflight
    async with sluice_store(durability) as c:
        own = Client(c.target, timeout=120, shared_session=False)  # a call per append, as before

        async def s_single() -> int:
            for i in range(n_single):
                await c.append("single", [new_event("E", events[i])])
            return n_single

        def s_tasks(client: Client) -> Callable[[], Awaitable[int]]:
            return lambda: from_tasks(
                window, n_flight, lambda i: client.append(f"tk-{i % 64}", [new_event("E", events[i])])
            )

        async def s_flight() -> int:
            async with c.session() as s:
                pending: list[asyncio.Future[pb.AppendResponse]] = []
                for i in range(n_flight):
                    pending.append(s.send(f"fl-{i % 64}", [new_event("E", events[i])]))
                    if len(pending) >= window:
                        await pending.pop(0)
                await asyncio.gather(*pending)
            return n_flight

        async def s_batch(size: int) -> int:
            total = 0
            for _ in range(a.batches):
                await c.append(f"batch-{size}", [new_event("E", events[i]) for i in range(size)])
                total += size
            return total

        async with own:
            single_call = await timed(s_tasks(own))
        return {
            "single": await timed(s_single),
            "tasks": await timed(s_tasks(c)),
            "tasks-call": single_call,
            "flight": await timed(s_flight),
            100: await timed(lambda: s_batch(100)),
            1000: await timed(lambda: s_batch(1000)),
            "1000x4": await timed(lambda: in_flight(4, lambda: s_batch(1000))),
        }


#: The peer that is the floor under awaited single appends (bench/echo.py).
ECHO = "gRPC echo storing nothing"
#: The floor under live latency: the echo relaying each append to its subscribers.
RELAY = "gRPC relay storing nothing"


async def bench_appends(res: Results, a: argparse.Namespace) -> None:
    n_single, n_flight, window = a.single, a.inflight, 256
    events = [payload(i) for i in range(max(n_single, n_flight, 1000))]

    sluice_by: dict[str, dict[Any, float]] = {}
    for durability in durabilities(a):
        sluice_by[durability] = await sluice_appends(a, durability, events, window)

    # The floor: the same client and calls against a gRPC server that stores nothing.
    async with (
        process(sys.executable, str(ROOT / "echo.py"), ready=b"listening on") as echo,
        Client(announced(echo), timeout=120) as e,
    ):

        async def e_single() -> int:
            for i in range(n_single):
                await e.append("single", [new_event("E", events[i])])
            return n_single

        floor = await timed(e_single)

    async with jetstream("appends") as (_, js, subj):

        async def j_single() -> int:
            for i in range(n_single):
                await js.publish(f"{subj}.single", events[i])
            return n_single

        async def j_flight(n: int, prefix: str = "fl", limit: int = window) -> int:
            # At most `limit` unacknowledged, as Sluice's session and Redis's pipelines run:
            # publish_async alone lets 4,000 (nats-py's publish_async_max_pending) be.
            pending: collections.deque[asyncio.Future[Any]] = collections.deque()
            for i in range(n):
                pending.append(await js.publish_async(f"{subj}.{prefix}", events[i % len(events)]))
                if len(pending) >= limit:
                    await pending.popleft()
            await asyncio.gather(*pending)
            return n

        async def j_batch(size: int) -> int:
            for _ in range(a.batches):
                await j_flight(size, f"b{size}", size)
            return size * a.batches

        def j_tasks() -> Awaitable[int]:
            return from_tasks(window, n_flight, lambda i: js.publish(f"{subj}.tk", events[i % len(events)]))

        jet = {
            "single": await timed(j_single),
            "tasks": await timed(j_tasks),
            "flight": await timed(lambda: j_flight(n_flight)),
            100: await timed(lambda: j_batch(100)),
            1000: await timed(lambda: j_batch(1000)),
            "1000x4": await timed(lambda: in_flight(4, lambda: j_batch(1000))),
        }

    async with redis_stream("appends") as (r, key):

        async def r_single() -> int:
            for i in range(n_single):
                await r.xadd(key, {"d": events[i]})
            return n_single

        async def r_pipe(n: int, size: int) -> int:
            for start in range(0, n, size):
                pipe = r.pipeline(transaction=False)
                for i in range(start, min(n, start + size)):
                    pipe.xadd(key, {"d": events[i % len(events)]})
                await pipe.execute()
            return n

        def r_tasks() -> Awaitable[int]:
            return from_tasks(window, n_flight, lambda i: r.xadd(key, {"d": events[i % len(events)]}))

        red = {
            "single": await timed(r_single),
            "tasks": await timed(r_tasks),
            "flight": await timed(lambda: r_pipe(n_flight, window)),
            100: await timed(lambda: r_pipe(100 * a.batches, 100)),
            1000: await timed(lambda: r_pipe(1000 * a.batches, 1000)),
            "1000x4": await timed(lambda: in_flight(4, lambda: r_pipe(1000 * a.batches, 1000))),
        }

    labels = {
        "single": ("one event per call, awaited one by one", ">= 0.5x JetStream"),
        "tasks": (f"single appends from {window} tasks, each awaiting its own (append / publish / xadd)", ""),
        "flight": (
            f"single-event appends, {window} in flight (session / publish_async / pipeline)",
            ">= 1x JetStream, >= 0.7x Redis",
        ),
        100: ("batches of 100 events per request", ""),
        1000: ("batches of 1000 events per request, one request at a time", ">= 2x JetStream, >= 1x Redis"),
        "1000x4": ("batches of 1000 events per request, 4 requests in flight", ""),
    }
    for k, (label, target) in labels.items():
        for durability, sluice in sluice_by.items():
            if k == "tasks":  # the same with a call per append (the client before sessions)
                res.add(
                    Row(
                        "appends",
                        f"{label} [Sluice {durability}, a call per append]",
                        "events/s",
                        sluice["tasks-call"],
                        {"jetstream": jet[k], "redis": red[k]},
                    )
                )
            peers = {"jetstream": jet[k], "redis": red[k]}
            if k == "single":
                peers[ECHO] = floor
            res.add(
                Row("appends", f"{label} [Sluice {durability}]", "events/s", sluice[k], peers, target=target)
            )


# -- catch-up -------------------------------------------------------------------------


async def bench_catch_up(res: Results, a: argparse.Namespace) -> None:
    n = a.catchup
    body = payload(1)
    log(f"catch-up: loading {n:,} events into each system")
    async with sluice_store(one_durability(a)) as c:
        for start in range(0, n, 1000):
            await c.append(
                f"cu-{start // 1000 % 100}", [new_event("E", body) for _ in range(min(1000, n - start))]
            )

        async def s_read() -> int:
            got = 0
            async for item in c.subscribe(start=START):
                if isinstance(item, pb.RecordedEvent):
                    got += 1
                elif isinstance(item, pb.CaughtUp):
                    return got
            return got

        sluice = await timed(s_read)

    async with jetstream("catchup") as (_, js, subj):
        for start in range(0, n, 5000):
            futs = [await js.publish_async(f"{subj}.e", body) for _ in range(min(5000, n - start))]
            await asyncio.gather(*futs)

        async def j_read() -> int:
            cfg = js_api.ConsumerConfig(
                ack_policy=js_api.AckPolicy.NONE, deliver_policy=js_api.DeliverPolicy.ALL
            )
            sub = await js.pull_subscribe(f"{subj}.>", stream=subj, config=cfg)
            got = 0
            while got < n:
                msgs = await sub.fetch(batch=1000, timeout=10)
                got += len(msgs)
            await sub.unsubscribe()
            return got

        jet = await timed(j_read)

    async with redis_stream("catchup") as (r, key):
        for start in range(0, n, 1000):
            pipe = r.pipeline(transaction=False)
            for _ in range(min(1000, n - start)):
                pipe.xadd(key, {"d": body})
            await pipe.execute()

        async def r_read() -> int:
            got, last = 0, "0"
            while got < n:
                resp = await r.xread({key: last}, count=1000)
                entries = resp[0][1]
                got += len(entries)
                last = entries[-1][0]
            return got

        red = await timed(r_read)
    res.add(
        Row(
            "consumption",
            f"catch-up from the start of {n:,} events (Subscribe / pull consumer / XREAD)",
            "events/s",
            sluice,
            {"jetstream": jet, "redis": red},
            target=">= 5x JetStream",
        )
    )


# -- live latency ---------------------------------------------------------------------


async def bench_latency(res: Results, a: argparse.Namespace) -> None:
    rate_s, secs = 1000, a.latency_seconds
    n = int(rate_s * secs)

    def stamp(i: int) -> bytes:
        # t: the send time on this process's clock; w: the same on the wall clock, which
        # the store's commit time (`created`) can be compared with (same machine).
        body = {"i": i, "t": time.perf_counter_ns(), "w": time.time_ns(), "pad": "x" * 140}
        return json.dumps(body).encode()

    done = asyncio.Event()

    def record(lat: list[float], data: bytes) -> None:
        lat.append((time.perf_counter_ns() - json.loads(data)["t"]) / 1e6)
        if len(lat) >= n:
            done.set()

    async def measure(
        subscribe: Callable[[list[float], asyncio.Event], Awaitable[None]],
        send: Callable[[int], Coroutine[Any, Any, None]],
    ) -> tuple[float, float]:
        lat: list[float] = []
        ready = asyncio.Event()
        done.clear()
        sub: asyncio.Task[None] = asyncio.ensure_future(subscribe(lat, ready))
        await asyncio.wait_for(ready.wait(), 30)
        await asyncio.wait_for(paced(rate_s, secs, send), secs + 60)  # a peer that stops answering
        waiter = asyncio.ensure_future(done.wait())
        await asyncio.wait({sub, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if sub.done():
            sub.result()  # the subscriber failed: say why
        if not waiter.done():
            waiter.cancel()
            raise TimeoutError(f"the subscriber saw {len(lat)} of {n} events")
        sub.cancel()
        await asyncio.wait({sub}, timeout=30)
        if not sub.done():
            raise TimeoutError("the subscriber did not stop within 30 s of being cancelled")
        return statistics.median(lat), pct(lat, 0.99)

    sluice_by: dict[str, tuple[float, float]] = {}
    calls_by: dict[str, tuple[float, float]] = {}
    # Where Sluice's milliseconds go, per event (ms): send -> committed (client, gRPC, the
    # group commit's queue and insert), committed -> acknowledged (fsync under `full`, the
    # answer back), committed -> subscriber (hand-off to live subscribers, gRPC, parse).
    hops: dict[str, dict[str, list[float]]] = {}
    for durability in durabilities(a):
        hop: dict[str, list[float]] = {"send -> committed": [], "committed -> acked": []}
        hop["committed -> subscriber"] = []
        hops[durability] = hop
        acked: dict[int, int] = {}
        async with sluice_store(durability) as c:

            async def s_sub(
                lat: list[float], ready: asyncio.Event, hop: dict[str, list[float]] = hop
            ) -> None:
                async for item in c.subscribe("live"):
                    if isinstance(item, pb.CaughtUp):
                        ready.set()
                    elif isinstance(item, pb.RecordedEvent):
                        now = time.time_ns()
                        record(lat, item.data)
                        created = item.created.ToNanoseconds()
                        hop["send -> committed"].append((created - json.loads(item.data)["w"]) / 1e6)
                        hop["committed -> subscriber"].append((now - created) / 1e6)

            async def s_send(i: int, acked: dict[int, int] = acked) -> None:
                r = await c.append("live", [new_event("E", stamp(i))])
                acked[r.first_position] = time.time_ns()

            sluice_by[durability] = await measure(s_sub, s_send)
            async for ev in c.read("live"):  # the commit times, once more, for the acks
                if ev.position in acked:
                    hop["committed -> acked"].append((acked[ev.position] - ev.created.ToNanoseconds()) / 1e6)
            # The same with a call per append (the client before shared sessions); the
            # breakdown above stays the shared session's.
            kept = {k: list(v) for k, v in hop.items()}
            async with Client(c.target, timeout=120, shared_session=False) as own:

                async def own_send(i: int, own: Client = own) -> None:
                    await own.append("live", [new_event("E", stamp(i))])

                calls_by[durability] = await measure(s_sub, own_send)
            hop.update(kept)

    # The floor: the same client, subscriber and appends against a gRPC server that stores
    # nothing and hands each append to its subscribers as it answers (bench/echo.py).
    async with (
        process(sys.executable, str(ROOT / "echo.py"), ready=b"listening on") as echo,
        Client(announced(echo), timeout=120) as e,
    ):

        async def e_sub(lat: list[float], ready: asyncio.Event) -> None:
            async for item in e.subscribe("live"):
                if isinstance(item, pb.CaughtUp):
                    ready.set()
                elif isinstance(item, pb.RecordedEvent):
                    record(lat, item.data)

        async def e_send(i: int) -> None:
            await e.append("live", [new_event("E", stamp(i))])

        floor = await measure(e_sub, e_send)

    async with jetstream("live") as (_, js, subj):

        async def j_sub(lat: list[float], ready: asyncio.Event) -> None:
            async def cb(msg: Any) -> None:
                record(lat, msg.data)

            sub = await js.subscribe(
                f"{subj}.>", cb=cb, ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.NEW
            )
            ready.set()
            try:
                await asyncio.Event().wait()
            finally:
                await sub.unsubscribe()

        async def j_send(i: int) -> None:
            await js.publish(f"{subj}.e", stamp(i))

        jet = await measure(j_sub, j_send)

    async with redis_stream("live", blocking=False) as (r, key):
        reader = redis_client(blocking=False)

        async def r_sub(lat: list[float], ready: asyncio.Event) -> None:
            last = "0-0"  # the key is new and empty: every entry counts
            ready.set()
            # Ends once it has every event (within the 1 s block): redis-py 8 swallows a
            # cancel that lands in a blocking XREAD and reads on, so measure()'s cancel alone
            # left it running ("did not stop within 30 s of being cancelled").
            while not done.is_set():
                resp: Any = await reader.xread({key: last}, block=1000, count=1000)
                for _, entries in resp or []:
                    for entry_id, fields in entries:
                        record(lat, fields[b"d"])
                        last = entry_id

        async def r_send(i: int) -> None:
            await r.xadd(key, {"d": stamp(i)})

        red = await measure(r_sub, r_send)
        await reader.aclose()

    for durability, by_hop in hops.items():
        for what, values in by_hop.items():
            if values:
                res.add(
                    Row(
                        "live latency",
                        f"where it goes: {what}, p50 / p99 [Sluice {durability}]",
                        "ms",
                        statistics.median(values),
                        {},
                        target=f"p99 {pct(values, 0.99):.2f} ms",
                    )
                )
    for idx, name in ((0, "p50"), (1, "p99")):
        for durability, sluice in calls_by.items():
            res.add(
                Row(
                    "live latency",
                    f"append -> subscriber at {rate_s:,} events/s, {name}"
                    f" [Sluice {durability}, a call per append]",
                    "ms",
                    sluice[idx],
                    {"jetstream": jet[idx], "redis": red[idx]},
                    higher_is_better=False,
                )
            )
        for durability, sluice in sluice_by.items():
            target = "<= 2x JetStream" if durability == "normal" else ""
            if durability == "full" and name == "p99":
                target = "<= 3 ms"
            res.add(
                Row(
                    "live latency",
                    f"append -> subscriber at {rate_s:,} events/s, {name} [Sluice {durability}]",
                    "ms",
                    sluice[idx],
                    {"jetstream": jet[idx], "redis": red[idx], RELAY: floor[idx]},
                    higher_is_better=False,
                    target=target,
                )
            )


# -- many streams ---------------------------------------------------------------------


async def bench_scale(res: Results, a: argparse.Namespace) -> None:
    body = payload(7)
    out: dict[int, tuple[float, float, float, float]] = {}
    for streams in (1000, a.streams):
        async with sluice_store(one_durability(a)) as c:
            log(f"scale: creating {streams:,} streams of one event each")
            for start in range(0, streams, 1000):
                await c.append_many(
                    [
                        (f"acct-{i:08d}", [new_event("Opened", body)], ANY)
                        for i in range(start, min(streams, start + 1000))
                    ]
                )
            rng = random.Random(7)
            app: list[float] = []
            rd: list[float] = []
            for _ in range(a.scale_ops):
                name = f"acct-{rng.randrange(streams):08d}"
                t = time.perf_counter()
                await c.append(name, [new_event("Deposited", body)])
                app.append((time.perf_counter() - t) * 1000)
                name = f"acct-{rng.randrange(streams):08d}"
                t = time.perf_counter()
                await c.read_list(name)
                rd.append((time.perf_counter() - t) * 1000)
            out[streams] = (statistics.median(app), pct(app, 0.99), statistics.median(rd), pct(rd, 0.99))
    small, big = out[1000], out[a.streams]
    for idx, what in enumerate(("append p50", "append p99", "read p50", "read p99")):
        res.add(
            Row(
                "scale",
                f"{what} with {a.streams:,} streams (peer: same with 1,000 streams)",
                "ms",
                big[idx],
                {"sluice@1k": small[idx]},
                higher_is_better=False,
                target="within 1.5x of 1,000 streams",
            )
        )


# -- the PostgreSQL backend ----------------------------------------------------------


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh database on the PostgreSQL server at BENCH_POSTGRES_URL, dropped afterwards."""
    name = f"sluice_bench_{os.getpid()}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}", query=""))
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def backend_figures(addrs: list[str], a: argparse.Namespace) -> dict[str, float]:
    """Appends (batched, pipelined), catch-up and live latency, spread over the replicas."""
    body = payload(3)
    out: dict[str, float] = {}
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(x, timeout=120)) for x in addrs]

        async def batched(c: Client, stream: str) -> int:
            for _ in range(a.pg_batches):
                await c.append(stream, [new_event("E", body) for _ in range(1000)])
            return a.pg_batches * 1000

        writers = [clients[i % len(clients)] for i in range(4)]  # 4 clients in all, spread
        t = time.perf_counter()
        n = sum(await asyncio.gather(*(batched(c, f"b-{i}") for i, c in enumerate(writers))))
        out["batched"] = rate(n, time.perf_counter() - t)

        async def pipelined(c: Client, count: int) -> int:
            async with c.session() as s:
                pending: list[asyncio.Future[pb.AppendResponse]] = []
                for i in range(count):
                    pending.append(s.send(f"p-{i % 64}", [new_event("E", body)]))
                    if len(pending) >= 256:
                        await pending.pop(0)
                await asyncio.gather(*pending)
            return count

        sessions = [clients[i % len(clients)] for i in range(2)]
        t = time.perf_counter()
        n = sum(await asyncio.gather(*(pipelined(c, a.pg_pipelined // 2) for c in sessions)))
        out["pipelined"] = rate(n, time.perf_counter() - t)

        async def catch_up(c: Client, prefixes: list[str] | None = None) -> int:
            got = 0
            async for item in c.subscribe(start=START, stream_prefixes=prefixes):
                if isinstance(item, pb.RecordedEvent):
                    got += 1
                elif isinstance(item, pb.CaughtUp):
                    break
            return got

        # Two readers, of everything and of the prefix written last.
        for key, prefixes in (("catchup", None), ("catchup_prefix", ["p-"])):
            t = time.perf_counter()
            n = sum(await asyncio.gather(*(catch_up(c, prefixes) for c in sessions)))
            out[key] = rate(n, time.perf_counter() - t)

        async def read_stream(c: Client) -> int:
            return sum([len(batch) async for batch in c.read_batches("b-0", start=START)])

        t = time.perf_counter()
        n = sum(await asyncio.gather(*(read_stream(c) for c in sessions)))
        out["read_stream"] = rate(n, time.perf_counter() - t)

        # Live: appended through the first replica, received through the last.
        lat: list[float] = []
        ready = asyncio.Event()
        total = int(1000 * a.latency_seconds / 2)

        async def subscriber() -> None:
            async for item in clients[-1].subscribe("pg-live"):
                if isinstance(item, pb.CaughtUp):
                    ready.set()
                elif isinstance(item, pb.RecordedEvent):
                    lat.append((time.perf_counter_ns() - json.loads(item.data)["t"]) / 1e6)
                    if len(lat) >= total:
                        return

        async def send(i: int) -> None:
            stamp = json.dumps({"i": i, "t": time.perf_counter_ns(), "pad": "x" * 150})
            await clients[0].append("pg-live", [new_event("E", stamp.encode())])

        sub = asyncio.create_task(subscriber())
        await asyncio.wait_for(ready.wait(), 30)
        await paced(1000, a.latency_seconds / 2, send)
        await asyncio.wait_for(sub, 30)
        out["p50"], out["p99"] = statistics.median(lat), pct(lat, 0.99)
    return out


async def bench_postgres(res: Results, a: argparse.Namespace) -> None:
    figures: dict[str, dict[str, float]] = {}
    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    try:
        log("postgres: SQLite, one store")
        async with store_processes(
            f"sqlite:///{tmp}/bench.db", 1, {"durability": one_durability(a)}
        ) as addrs:
            figures["sqlite"] = await backend_figures(addrs, a)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    async with postgres_database() as db:
        # One and two replicas in the order 1, 2, 2, 1 (each on a fresh schema), averaged:
        # whatever drifts during the run (table size, checkpoints) weighs on both alike.
        for i, n in enumerate((1, 2, 2, 1)):
            log(f"postgres: PostgreSQL, {n} replica(s), run {len(runs[n]) + 1} of 2")
            async with store_processes(f"{db}?schema=run{i}", n) as addrs:
                runs[n].append(await backend_figures(addrs, a))
    for n, got in runs.items():
        figures[f"pg{n}"] = {k: statistics.mean(r[k] for r in got) for k in got[0]}
    cases = [
        ("batched", "appends, 1,000 events per request, 4 clients", "events/s", True, ">= 50,000/s"),
        ("pipelined", "appends, one event per request, 2 sessions x 256 in flight", "events/s", True, ""),
        ("catchup", "catch-up from the start, 2 readers", "events/s", True, ""),
        ("catchup_prefix", "catch-up of the prefix written last, 2 readers", "events/s", True, ""),
        (
            "read_stream",
            "read of one stream from its start, 2 readers",
            "events/s",
            True,
            "",
        ),
        ("p50", "live latency at 1,000 events/s, p50", "ms", False, ""),
        ("p99", "live latency at 1,000 events/s, p99", "ms", False, ""),
    ]
    for key, case, unit, higher, target in cases:
        res.add(
            Row(
                "postgres",
                f"{case}: PostgreSQL, 1 replica",
                unit,
                figures["pg1"][key],
                {"SQLite": figures["sqlite"][key]},
                higher,
                target,
            )
        )
    for key, case, unit, higher, _ in cases:
        res.add(
            Row(
                "postgres",
                f"{case}: PostgreSQL, 2 replicas (latency: across replicas)",
                unit,
                figures["pg2"][key],
                {"PostgreSQL, 1 replica": figures["pg1"][key]},
                higher,
                ">= 1 replica" if key == "batched" else "",
            )
        )


# -- sidecar delivery -----------------------------------------------------------------


async def bench_sidecar(res: Results, a: argparse.Namespace) -> None:
    import aiohttp

    from sluice_sidecar.push import HttpPush

    n, streams = a.sidecar_events, 240
    body = payload(3)
    app_url = ""  # once the app announced its port

    async def app_state(http: aiohttp.ClientSession) -> dict[str, float]:
        async with http.get(f"{app_url}/count") as r:
            state: dict[str, float] = await r.json()
            return state

    async def measured(http: aiohttp.ClientSession) -> float:
        """Events/s at the app from the first arrival to the n-th (start-up left out)."""
        async with asyncio.timeout(300):
            while (state := await app_state(http))["count"] < n:  # noqa: ASYNC110 (another process)
                await asyncio.sleep(0.02)
        return rate(n - 1, state["last"] - state["first"])

    rates: dict[str, float] = {}
    async with (
        process(sys.executable, str(ROOT / "app.py"), "0", ready=b"listening on") as app,
        aiohttp.ClientSession() as http,
    ):
        app_url = f"http://{announced(app)}"

        # Direct: the same events posted straight to the app, 12 at a time (like 12 partitions).
        sem = asyncio.Semaphore(12)

        def direct_headers(i: int) -> dict[str, str]:
            """The headers a sidecar sends for the same event (CloudEvents binary mode)."""
            return {
                "ce-specversion": "1.0",
                "ce-id": str(i),
                "ce-source": f"/streams/acct-{i % streams}",
                "ce-type": "E",
                "ce-subject": f"acct-{i % streams}",
                "ce-time": "2026-01-01T00:00:00.000001Z",
                "content-type": "application/octet-stream",
                "ce-sluiceposition": str(i + 1),
                "ce-sluicerevision": str(i // streams),
                "ce-sluicepartition": str(i % 12),
                "ce-sluiceattempt": "1",
                "ce-sluicegroup": "bench",
            }

        async def post(i: int) -> None:
            async with sem, http.post(f"{app_url}/events", data=body, headers=direct_headers(i)) as r:
                r.raise_for_status()

        await http.post(f"{app_url}/reset")
        await asyncio.gather(*(post(i) for i in range(n)))
        rates["direct"] = await measured(http)

        # The same, through the sidecar's own HTTP client: what the sidecar adds beyond it.
        pusher = HttpPush(f"{app_url}/events")

        async def push(i: int) -> None:
            async with sem:
                answer = await pusher.post(direct_headers(i), body, 30)
                assert answer.status < 300, answer

        await http.post(f"{app_url}/reset")
        await asyncio.gather(*(push(i) for i in range(n)))
        rates["direct push"] = await measured(http)
        await pusher.close()

        async with sluice_store(one_durability(a)) as c:
            for s in range(streams):
                count = n // streams + (1 if s < n % streams else 0)
                await c.append(f"acct-{s}", [new_event("E", body) for _ in range(count)])
            for label, count, batch in (
                ("single x1", 1, 0),
                ("single x3", 3, 0),
                ("batch x1", 1, 100),
                ("batch x3", 3, 100),
            ):
                group = f"bench-{label.replace(' ', '-')}"
                await http.post(f"{app_url}/reset")
                await c.create_group(group, stream_prefixes=["acct-"], start="start")
                async with sidecars(c.target, group, f"{app_url}/events", count, batch):
                    rates[label] = await measured(http)
    for label, target in (
        ("single x1", ">= 70% of direct"),
        ("single x3", ">= 70% of direct"),
        ("batch x1", ">= 20,000/s"),
        ("batch x3", ">= 20,000/s"),
    ):
        kind, _, scs = label.partition(" ")
        what = "one event per request" if kind == "single" else "batches of up to 100 (cloudevents-batch)"
        res.add(
            Row(
                "sidecar push",
                f"{n:,} events to an HTTP app through {scs[1:]} sidecar(s), {what}",
                "events/s",
                rates[label],
                {
                    "direct aiohttp posting": rates["direct"],
                    "direct posting, the sidecar's own HTTP client": rates["direct push"],
                },
                target=target,
            )
        )


# -- gateway fan-out ---------------------------------------------------------------------


async def stamped_appends(client: Client, secs: float) -> None:
    """1,000 appends a second for ``secs`` through one session, each stamped with its send
    time (what the fan-out latency cases measure from)."""
    async with client.session() as session:

        async def send(i: int) -> None:
            await session.append(f"fan-{i % 8}", [new_event("Tick", stamped(i))])

        await paced(1000, secs, send)


async def bench_gateway(res: Results, a: argparse.Namespace) -> None:
    """Deliveries/s with 10, 100, 1,000 subscribers and latency with 100, beside NATS core."""
    nc = await nats.connect(NATS_URL)
    async with sluice_store(one_durability(a)) as client:
        gateway = [sys.executable, "-m", "sluice_gateway", "--addr", "127.0.0.1:0", "--store", client.target]
        async with process(*gateway, "--http-addr", "", *a.gateway_flags, ready=b"listening on") as gw:
            gaddr = announced(gw)
            for subs in (10, 100, 1000):
                n = max(1000, min(100_000, a.fanout_deliveries // subs))

                async def sluice_produce(n: int = n) -> None:
                    sent = 0
                    while sent < n:
                        k = min(500, n - sent)
                        await client.append(
                            f"fan-{sent % 8}", [new_event("Tick", stamped(sent + j)) for j in range(k)]
                        )
                        sent += k

                async def nats_produce(n: int = n) -> None:
                    for i in range(n):
                        await nc.publish("fan.events", stamped(i))
                        if i % 1000 == 999:
                            await nc.flush()
                    await nc.flush()

                log(f"fan-out to {subs} subscribers, {n:,} events each")
                s = await fanout_run("sluice", gaddr, subs, n, sluice_produce)
                t = await fanout_run("nats", NATS_URL.removeprefix("nats://"), subs, n, nats_produce)
                res.add(
                    Row(
                        "gateway fan-out",
                        f"{n:,} events to {subs:,} subscribers (delivered: sluice "
                        f"{s['received'] / s['expected']:.0%}, NATS {t['received'] / t['expected']:.0%})",
                        "deliveries/s",
                        s["rate"],
                        {"nats core": t["rate"]},
                        target=">= 100,000/s and >= NATS" if subs == 1000 else ">= NATS",
                    )
                )
    # The latency rows start from a fresh store and gateway, as the rows below do, so that
    # none of them follows millions of deliveries that another did not.
    nats_by_subs: dict[int, dict[str, float]] = {}
    async with sluice_store(one_durability(a)) as client:
        gateway = [sys.executable, "-m", "sluice_gateway", "--addr", "127.0.0.1:0", "--store", client.target]
        async with process(*gateway, "--http-addr", "", *a.gateway_flags, ready=b"listening on") as gw:
            gaddr = announced(gw)
            for subs in (10, 100, 1000):
                # 1,000 subscribers at 1,000 events/s is a million deliveries a second: keep it short.
                secs = a.latency_seconds if subs < 1000 else min(a.latency_seconds, 3.0)
                n = int(1000 * secs)

                sluice_paced = functools.partial(stamped_appends, client, secs)

                async def nats_paced(secs: float = secs) -> None:
                    async def send(i: int) -> None:
                        await nc.publish("fan.events", stamped(i))
                        await nc.flush()

                    await paced(1000, secs, send)

                log(f"fan-out latency, {subs} subscribers at 1,000 events/s for {secs:.0f}s")
                s = await fanout_run("sluice", gaddr, subs, n, sluice_paced, latency=True)
                t = await fanout_run(
                    "nats", NATS_URL.removeprefix("nats://"), subs, n, nats_paced, latency=True
                )
                for q in ("p50", "p99"):
                    res.add(
                        Row(
                            "gateway fan-out",
                            f"append/publish -> {subs:,} subscribers at 1,000 events/s, {q}",
                            "ms",
                            s[q],
                            {"nats core": t[q]},
                            higher_is_better=False,
                            target="p99 < 50 ms" if q == "p99" and subs == 100 else "",
                        )
                    )
                nats_by_subs[subs] = t
    # Where one gateway process runs out of core: the same latency through --workers 2, and
    # the store at `normal` durability (NATS core keeps nothing; `full` fsyncs every commit).
    secs = a.latency_seconds
    for durability, workers in (("normal", 1), (one_durability(a), 2), ("normal", 2)):
        async with sluice_store(durability) as client:
            gateway = [
                sys.executable,
                "-m",
                "sluice_gateway",
                "--addr",
                "127.0.0.1:0",
                "--store",
                client.target,
            ]
            flags = ["--http-addr", "", "--workers", str(workers), *a.gateway_flags]
            async with process(*gateway, *flags, ready=b"listening on") as gw:
                gaddr = announced(gw)
                for subs in (10, 100):
                    label = (
                        f"{workers} gateway processes on one port (--workers {workers})"
                        if workers > 1
                        else ""
                    )
                    log(f"fan-out latency, {subs} subscribers, store {durability}, {workers} gateway(s)")
                    appends = functools.partial(stamped_appends, client, secs)
                    s = await fanout_run("sluice", gaddr, subs, int(1000 * secs), appends, latency=True)
                    for q in ("p50", "p99"):
                        target = ""
                        if q == "p99":
                            target = "p99 <= 5 ms" if subs == 10 else "p99 < 50 ms"
                        res.add(
                            Row(
                                "gateway fan-out",
                                f"append -> {subs:,} subscribers at 1,000 events/s, {q} "
                                f"[Sluice {durability}{', ' + label if label else ''}]",
                                "ms",
                                s[q],
                                {"nats core": nats_by_subs[subs][q]},
                                higher_is_better=False,
                                target=target,
                            )
                        )
    await nc.close()


# -- report ---------------------------------------------------------------------------


def report(res: Results, a: argparse.Namespace, elapsed: float) -> str:
    head = (
        f"# Sluice store benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, loopback. "
        "What each system promises once it acknowledges: Sluice `full` (SQLite synchronous=FULL, "
        "fsync per group commit): survives a power loss; Sluice `normal` (WAL, no fsync per "
        "commit): survives a crash of the process, not of the machine; JetStream (file storage, "
        "acked publish, default sync_interval of 2 minutes): survives a crash of the process; "
        "Redis (no persistence, as configured on this machine): survives nothing. Sections "
        f"without a [Sluice …] tag run `{one_durability(a)}`. "
        f"Events ~{len(payload(1))} bytes. Run took {elapsed:.0f}s.\n\n"
        "Ratio = how many times better Sluice is (>1 is better; for latency, peer/Sluice). "
        f"Sections comparing with peers run {getattr(a, 'rounds', 1)} rounds, alternating (Sluice, peers, "
        "Sluice, peers, ...): each figure is the median of the rounds', each ratio the median of "
        "the rounds' ratios, with the lowest and highest in brackets (this machine moves 20-40% "
        "from minute to minute).\n\n"
    )
    lines = [
        "| section | case | unit | sluice | peer | peer figure | ratio | target |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for row in res.rows:
        if not row.peers:  # a figure of Sluice's own (a point on a curve)
            lines.append(
                f"| {row.section} | {row.case} | {row.unit} | {fmt(row.sluice)} | | | | {row.target} |"
            )
        for peer, value in row.peers.items():
            ratio = f"{fmt(row.ratio(peer))}x"
            if peer in row.spread and row.rounds > 1:
                lo, hi = row.spread[peer]
                ratio += f" ({fmt(lo)} to {fmt(hi)}, {row.rounds} rounds)"
            lines.append(
                f"| {row.section} | {row.case} | {row.unit} | {fmt(row.sluice)} | {peer} | "
                f"{fmt(value)} | {ratio} | {row.target} |"
            )
    for section, why in res.failed:
        lines.append(f"| {section} | **failed**: {why} | | | | | | |")
    return head + "\n".join(lines) + "\n"


# -- security ---------------------------------------------------------------------------


ROUNDS = 3
FANOUT_ROUNDS = 5


async def bench_security(res: Results, a: argparse.Namespace) -> None:
    """The store with TLS, a bearer token on every call and a policy, beside the same store
    in plaintext, in one run: what the checks cost (decisions are cached per principal,
    action and resource, not made per event)."""
    import trustme
    import yaml

    from sluice import Credentials
    from sluice.security import token_hash

    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-security-"))
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    token = "bench-token"
    (tmp / "tokens.yaml").write_text(
        yaml.safe_dump({"tokens": [{"name": "bench", "sha256": token_hash(token)}]})
    )
    rule = {"allow": ["append", "read", "watch"], "streams": ["*"], "who": ["bench"]}
    (tmp / "policy.yaml").write_text(yaml.safe_dump({"rules": [rule]}))
    secured = {
        "tls_cert": str(tmp / "cert.pem"),
        "tls_key": str(tmp / "key.pem"),
        "tokens_file": str(tmp / "tokens.yaml"),
        "policy_file": str(tmp / "policy.yaml"),
    }
    creds = Credentials(ca_file=str(tmp / "ca.pem"), token=token)
    auth_only = {k: v for k, v in secured.items() if not k.startswith("tls_")}
    token_only = Credentials(token=token)
    events = [payload(i) for i in range(1000)]
    n_catch = max(a.catchup // 4, 10_000)

    async def measure(name: str, flags: dict[str, str], credentials: Credentials | None) -> dict[str, float]:
        db = f"sqlite:///{tmp}/{name}.db"
        async with (
            store_processes(db, 1, {"durability": one_durability(a), **flags}) as (addr,),
            Client(addr, timeout=120, credentials=credentials) as c,
        ):

            async def batched() -> int:
                for _ in range(a.batches):
                    await c.append("bench-batch", [new_event("E", e) for e in events])
                return 1000 * a.batches

            async def pipelined() -> int:
                async with c.session() as s:
                    pending: list[asyncio.Future[pb.AppendResponse]] = []
                    for i in range(a.inflight):
                        pending.append(s.send(f"bench-{i % 64}", [new_event("E", events[i % 1000])]))
                        if len(pending) >= 256:
                            await pending.pop(0)
                    await asyncio.gather(*pending)
                return a.inflight

            async def catch_up() -> int:
                got = 0
                async for item in c.subscribe(start=START, stream_prefixes=["bench-"]):
                    if isinstance(item, pb.RecordedEvent):
                        got += 1
                    elif isinstance(item, pb.CaughtUp):
                        return got
                return got

            out = {"batched": await timed(batched), "pipelined": await timed(pipelined)}
            while (await c.stream_info("bench-batch")).event_count < n_catch:
                await c.append("bench-batch", [new_event("E", e) for e in events])
            out["catch-up"] = await timed(catch_up)
            return out

    async def fan_out(name: str, flags: dict[str, str], credentials: Credentials | None) -> float:
        """Deliveries/s from one gateway to 100 subscribers (secured: TLS and tokens on the
        gateway, its subscribers and its channel to the store)."""
        subs, n = 100, max(1000, a.fanout_deliveries // 100)
        gateway_flags = []
        env = dict(os.environ)
        if credentials is not None:
            (tmp / "token").write_text(token)
            for k, v in flags.items():
                gateway_flags += [f"--{k.replace('_', '-')}", v]
            gateway_flags += ["--store-token-file", str(tmp / "token")]
            env["SLUICE_TOKEN"] = token
            if "tls_cert" in flags:
                gateway_flags += ["--store-tls-ca", str(tmp / "ca.pem")]
                env["SLUICE_TLS_CA"] = str(tmp / "ca.pem")
        db = f"sqlite:///{tmp}/{name}-fan.db"
        async with (
            store_processes(db, 1, {"durability": one_durability(a), **flags}) as (addr,),
            Client(addr, timeout=120, credentials=credentials) as c,
        ):
            # Buffers that hold a whole round: this measures fan-out, not the overflow policy
            # (a subscriber moved to catch-up from the store made rounds 10x slower).
            gateway = [sys.executable, "-m", "sluice_gateway", "--addr", "127.0.0.1:0", "--store", addr]
            gateway += ["--buffer-size", str(n + 1000), "--max-buffer-size", str(n + 1000)]
            async with process(*gateway, "--http-addr", "", *gateway_flags, ready=b"listening on") as gw:
                gaddr = announced(gw)

                async def produce() -> None:
                    for sent in range(0, n, 500):
                        batch = [new_event("Tick", stamped(sent + j)) for j in range(min(500, n - sent))]
                        await c.append(f"fan-{sent % 8}", batch)  # what the workers watch

                got = await fanout_run("sluice", gaddr, subs, n, produce, env=env)
                return float(got["rate"])

    try:
        # Rounds alternate (plaintext, secured, plaintext, ...): each round's ratio is taken
        # on the machine as it is then, and the median of those ratios is reported, since
        # this machine moves 20-40% from minute to minute. Fan-out, which moves the most
        # bytes through TLS, gets more rounds.
        # A third kind of round isolates what authorization costs: tokens and the policy
        # without TLS (loopback), against the same plaintext figure.
        rounds: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        auth_rounds: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        for r in range(ROUNDS):
            plain = await measure(f"plain{r}", {}, None)
            secure = await measure(f"secure{r}", secured, creds)
            auth = await measure(f"auth{r}", auth_only, token_only)
            for key in plain:
                rounds[key].append((plain[key], secure[key]))
                auth_rounds[key].append((plain[key], auth[key]))
        for r in range(FANOUT_ROUNDS):
            plain_fan = await fan_out(f"plain{r}", {}, None)
            rounds["fan-out"].append((plain_fan, await fan_out(f"secure{r}", secured, creds)))
            auth_rounds["fan-out"].append((plain_fan, await fan_out(f"auth{r}", auth_only, token_only)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    labels = {
        "batched": "batches of 1000 events per request",
        "pipelined": "single-event appends, 256 in flight (session)",
        "catch-up": "subscription catch-up over a prefix",
        "fan-out": "gateway fan-out to 100 subscribers (deliveries/s)",
    }
    for (what, by_key), (key, label) in itertools.product(
        (("TLS + token + policy", rounds), ("token + policy, no TLS", auth_rounds)), labels.items()
    ):
        pairs = by_key[key]
        paired = [secure / plain for plain, secure in pairs]
        each = ", ".join(f"{r:.2f}" for r in paired)
        res.add(
            Row(
                "security",
                f"{what} vs plaintext: {label} (median ratio of {len(pairs)} rounds: {each})",
                "events/s",
                statistics.median(secure for _, secure in pairs),
                {"plaintext": statistics.median(plain for plain, _ in pairs)},
                target=">= 0.85x plaintext",
                paired={"plaintext": statistics.median(paired)},
                spread={"plaintext": (min(paired), max(paired))},
                rounds=len(pairs),
            )
        )


#: Sections whose ratios compare Sluice with its peers: run in alternating rounds.
ROUNDED = {"appends", "latency", "catchup", "sidecar", "gateway"}
SECTION_LIMIT = 1200.0  # seconds one round of a section may take in a full run
SECTION_LIMIT_QUICK = 300.0

Section = Callable[[Results, argparse.Namespace], Awaitable[None]]


async def run_sections(
    sections: Mapping[str, Section], chosen: list[str], res: Results, a: argparse.Namespace, limit: float
) -> None:
    """Run the chosen sections in order, each under ``limit`` seconds: one that fails or
    hangs is recorded with why (a row of the report), and the run goes on."""
    for name in chosen:
        log(f"== {name}")
        gc.collect()  # start each section without garbage from the last (fair to every system)
        rounds = getattr(a, "rounds", 1) if name in ROUNDED else 1
        deadline = asyncio.timeout(limit * rounds)
        try:
            async with deadline:
                each: list[list[Row]] = []
                for r in range(rounds):
                    if rounds > 1:
                        log(f"{name}: round {r + 1} of {rounds}")
                    one = Results()
                    await sections[name](one, a)
                    each.append(one.rows)
                res.rows.extend(merge_rounds(each) if rounds > 1 else each[0])
        except Exception as e:
            # The section's own limit, or a wait inside it that gave up (which says what).
            why = f"{type(e).__name__}: {e}"
            if deadline.expired():
                why = f"timed out after {limit * rounds:g} s"
            log(f"{name}: failed: {why}")
            res.failed.append((name, why[:300]))


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes for a quick look")
    p.add_argument(
        "--durability",
        default="both",
        choices=["both", "full", "normal"],
        help="Sluice's durability; both: append and latency cases under each, side by side",
    )
    p.add_argument(
        "--only",
        help="comma-separated sections: "
        "appends,latency,catchup,scale,sidecar,gateway,postgres,security,curves",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating rounds of each section that compares with peers (median and spread reported)",
    )
    p.add_argument(
        "--gateway-flags", default="", help="extra flags for the gateway, e.g. '--flush-interval 10ms'"
    )
    a = p.parse_args()
    a.single = 1000 if a.quick else 3000
    a.inflight = 10_000 if a.quick else 40_000
    a.batches = 20 if a.quick else 100
    a.catchup = 100_000 if a.quick else 1_000_000
    a.latency_seconds = 3.0 if a.quick else 8.0
    a.streams = 100_000 if a.quick else 1_000_000
    a.scale_ops = 1000 if a.quick else 5000
    a.sidecar_events = 5_000 if a.quick else 20_000
    a.fanout_deliveries = 500_000 if a.quick else 2_000_000
    a.pg_batches = 10 if a.quick else 50
    a.pg_pipelined = 10_000 if a.quick else 40_000
    a.gateway_flags = a.gateway_flags.split() if a.gateway_flags else []
    # Latency runs before catch-up: deleting the peers' million-event streams afterwards
    # keeps the disk busy for a while, which would land in Sluice's fsyncs and not theirs.
    sections = {
        "appends": bench_appends,
        "latency": bench_latency,
        "catchup": bench_catch_up,
        "scale": bench_scale,
        "sidecar": bench_sidecar,
        "gateway": bench_gateway,
        "postgres": bench_postgres,
        "security": bench_security,
        "curves": bench_curves,
    }
    chosen = a.only.split(",") if a.only else list(sections)
    res = Results()
    t0 = time.perf_counter()
    await run_sections(sections, chosen, res, a, SECTION_LIMIT_QUICK if a.quick else SECTION_LIMIT)
    text = report(res, a, time.perf_counter() - t0)
    print(text)
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    suffix = "-quick" if a.quick else ""
    name = "-".join(chosen) if a.only else "store"  # a partial run does not replace the full one
    (out / f"{name}-{stamp}{suffix}.md").write_text(text)
    (out / f"{name}-latest{suffix}.md").write_text(text)
    log(f"written to bench/results/{name}-{stamp}{suffix}.md")
    if res.failed:
        sys.exit(f"{len(res.failed)} section(s) failed: {', '.join(n for n, _ in res.failed)}")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
