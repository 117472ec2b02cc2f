"""What every benchmark script shares: the systems under test started fresh (the store as
its own process, JetStream and Redis on this machine), result rows, pacing and timing, and
the fan-out worker runner."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import nats
import redis.asyncio as aioredis
from nats.js import api as js_api

from sluice import Client

ROOT = Path(__file__).resolve().parent


NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")


REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def payload(i: int) -> bytes:
    """A ~200-byte JSON event body."""
    body = {
        "order_id": f"ord-{i:012d}",
        "customer": f"cust-{i % 9973:06d}",
        "sku": "SKU-0001-XL-BLUE",
        "qty": 1 + i % 7,
        "price_cents": 1999 + i % 500,
        "currency": "EUR",
        "note": "x" * 40,
        "ts": 1_700_000_000 + i,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Row:
    section: str
    case: str
    unit: str
    sluice: float
    peers: dict[str, float]
    higher_is_better: bool = True
    target: str = ""
    #: Set when the figures come from rounds: per peer, the median of each round's ratio
    #: (each round runs both sides back to back, so it shares the machine's mood) ...
    paired: dict[str, float] = dataclasses.field(default_factory=dict)
    #: ... the lowest and highest round's ratio, and how many rounds there were.
    spread: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    rounds: int = 1

    def ratio(self, peer: str) -> float:
        if peer in self.paired:
            return self.paired[peer]
        other = self.peers[peer]
        if not other or not self.sluice:
            return float("nan")
        return self.sluice / other if self.higher_is_better else other / self.sluice


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.failed: list[tuple[str, str]] = []  # (section, why)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        peers = ", ".join(f"{k} {fmt(v)}" for k, v in row.peers.items())
        log(f"{row.section} / {row.case}: sluice {fmt(row.sluice)} {row.unit}; {peers}")


def fmt(x: float) -> str:
    if x != x:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:,.1f}"
    return f"{x:,.2f}"


LISTENING = re.compile(rb"listening on (\S+)")


def listening_on(line: bytes) -> str:
    """The address a server announced on its first line ("... listening on HOST:PORT ...")."""
    m = LISTENING.search(line)
    if m is None:
        raise RuntimeError(f"no address announced in {line!r}")
    return m.group(1).decode()


@contextlib.asynccontextmanager
async def store_processes(
    db: str, replicas: int = 1, flags: dict[str, str] | None = None
) -> AsyncIterator[list[str]]:
    """Store processes (several are replicas, on PostgreSQL) on one database; their addresses."""
    procs, addrs = [], []
    try:
        for _ in range(replicas):
            args = ["--addr", "127.0.0.1:0", "--db", db]  # the store announces the port it bound
            for k, v in (flags or {}).items():
                args += [f"--{k.replace('_', '-')}", v]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sluice_store", *args, stdout=asyncio.subprocess.PIPE
            )
            procs.append(proc)
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                while b"listening on" not in (line := await proc.stdout.readline()):
                    if proc.returncode is not None or not line:
                        raise RuntimeError(f"store on {db} exited at start")
            addrs.append(listening_on(line))
        yield addrs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()


@contextlib.asynccontextmanager
async def sluice_store(durability: str, **flags: str) -> AsyncIterator[Client]:
    """A fresh store process on a temporary SQLite file, and a client to it."""
    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    try:
        async with (
            store_processes(f"sqlite:///{tmp}/bench.db", 1, {"durability": durability, **flags}) as (addr,),
            Client(addr, timeout=120) as client,
        ):
            yield client
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.asynccontextmanager
async def jetstream(name: str) -> AsyncIterator[tuple[Any, Any, str]]:
    """A fresh file-storage JetStream stream; yields (connection, context, subject prefix)."""
    nc = await nats.connect(NATS_URL, max_outstanding_pings=10)
    js = nc.jetstream(timeout=30)
    stream = f"BENCH_{name}_{uuid.uuid4().hex[:8]}"
    with contextlib.suppress(Exception):
        await js.delete_stream(stream)
    await js.add_stream(name=stream, subjects=[f"{stream}.>"], storage=js_api.StorageType.FILE, max_msgs=-1)
    try:
        yield nc, js, stream
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.close()


#: Connections a non-blocking Redis client may open: more than any case keeps in flight.
UNBLOCKED_CONNECTIONS = 10_000


def redis_client(blocking: bool = True) -> aioredis.Redis:
    """A client whose callers wait for a free connection instead of failing when all are
    busy; ``blocking=False``: one that opens another instead, for a few callers at a time
    that get cancelled (cancelling callers that wait on redis-py's asyncio blocking pool can
    leave its lock held for good, redis/redis-py#3056: a run hung on it). redis-py 8 caps
    even that pool at 100 connections and fails the call past them ("Too many
    connections"): a paced sender whose replies stalled for 100 ms lost appends that way, so
    the cap here is far above what any case keeps in flight."""
    if not blocking:
        return aioredis.Redis.from_url(REDIS_URL, max_connections=UNBLOCKED_CONNECTIONS)
    pool = aioredis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=64, timeout=60)
    return aioredis.Redis(connection_pool=pool)


@contextlib.asynccontextmanager
async def redis_stream(name: str, blocking: bool = True) -> AsyncIterator[tuple[Any, str]]:
    r = redis_client(blocking)
    key = f"bench:{name}:{uuid.uuid4().hex[:8]}"
    try:
        yield r, key
    finally:
        await r.delete(key)
        await r.aclose()


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


async def in_flight(n: int, fn: Callable[[], Awaitable[int]]) -> int:
    """Run n copies of fn at once; the events they handled in all."""
    return sum(await asyncio.gather(*(fn() for _ in range(n))))


async def from_tasks(tasks: int, total: int, call: Callable[[int], Awaitable[object]]) -> int:
    """``total`` calls of ``call(i)`` made by ``tasks`` concurrent tasks, each awaiting its
    own calls one by one (how a busy async service appends); the calls made."""

    async def worker(w: int) -> None:
        for i in range(w, total, tasks):
            await call(i)

    await asyncio.gather(*(worker(w) for w in range(tasks)))
    return total


async def timed(fn: Callable[[], Awaitable[int]]) -> float:
    """Run fn (which returns how many events it handled) and return events/s."""
    t = time.perf_counter()
    n = await fn()
    return rate(n, time.perf_counter() - t)


def durabilities(a: argparse.Namespace) -> list[str]:
    return ["full", "normal"] if a.durability == "both" else [a.durability]


def one_durability(a: argparse.Namespace) -> str:
    """The durability of sections that run Sluice once (full unless one was chosen)."""
    return "full" if a.durability == "both" else a.durability


async def paced(rate_per_s: int, seconds: float, send: Callable[[int], Coroutine[Any, Any, None]]) -> int:
    """Call send(i) at a steady rate without waiting for each to finish. A send that fails
    ends it with that send's error (not a missing event that a waiting reader times out on)."""
    n = int(rate_per_s * seconds)
    t0 = time.perf_counter()
    tasks: set[asyncio.Task[None]] = set()
    failed: list[BaseException] = []

    def finished(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            failed.append(e)

    try:
        for i in range(n):
            if failed:
                break
            delay = t0 + i / rate_per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(i))
            tasks.add(task)
            task.add_done_callback(finished)
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for task in tasks:
            task.cancel()
    if failed:
        raise RuntimeError(f"a paced send failed: {type(failed[0]).__name__}: {failed[0]}") from failed[0]
    return n


@contextlib.asynccontextmanager
async def process(*args: str, ready: bytes | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """A subprocess, once it printed ``ready`` (its line is kept in READY_LINES); if it
    exits first, the error says the end of what it logged."""
    with tempfile.TemporaryFile() as log_file:
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=log_file)
        async with _reaped(proc):
            if ready is not None:
                assert proc.stdout is not None
                async with asyncio.timeout(30):
                    while ready not in (line := await proc.stdout.readline()):
                        if not line:
                            await proc.wait()
                            log_file.seek(0)
                            said = log_file.read().decode(errors="replace").strip().splitlines()[-3:]
                            raise RuntimeError(f"{' '.join(args[:3])} exited at start: {' | '.join(said)}")
                READY_LINES[proc.pid] = line
            yield proc


@contextlib.asynccontextmanager
async def _reaped(proc: asyncio.subprocess.Process) -> AsyncIterator[None]:
    try:
        yield
    finally:
        READY_LINES.pop(proc.pid, None)
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


@contextlib.asynccontextmanager
async def sidecars(store: str, group: str, app_url: str, count: int, batch: int = 0) -> AsyncIterator[None]:
    """``count`` sidecar processes (members m0, m1, ...) of ``group``, pushing to ``app_url``
    one event per request, or in batches of up to ``batch``; running once each is ready."""
    args = [
        *("--store", store, "--group", group, "--app-url", app_url, "--batch", str(batch)),
        *("--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"),
    ]
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.gather(
            *(
                stack.enter_async_context(
                    process(
                        *(sys.executable, "-m", "sluice_sidecar", *args, "--member-id", f"m{i}"),
                        ready=b"sluice sidecar",
                    )
                )
                for i in range(count)
            )
        )
        yield


#: The line each running process() printed when it was ready, by pid.
READY_LINES: dict[int, bytes] = {}


def announced(proc: asyncio.subprocess.Process) -> str:
    """The address a process() announced when it was ready."""
    return listening_on(READY_LINES[proc.pid])


async def fanout_run(
    kind: str,
    addr: str,
    subs: int,
    expect: int,
    produce: Callable[[], Awaitable[None]],
    latency: bool = False,
    env: Mapping[str, str] | None = None,
    form: str = "full",
    per_channel: int = 1,
) -> dict[str, Any]:
    """Start two worker processes holding ``subs`` subscribers, produce, gather their results
    (``env``: their environment, say SLUICE_TLS_CA and SLUICE_TOKEN for a secured gateway;
    ``per_channel``: Sluice subscribers sharing one connection)."""
    script = str(ROOT / "fanout.py")
    workers = []
    logs: list[Any] = []  # each worker's stderr, for the error when one dies; closed below
    for share in (subs - subs // 2, subs // 2):
        if not share:
            continue
        args = [
            "-X",
            "faulthandler",  # a crash in a worker says where
            script,
            "worker",
            "--kind",
            kind,
            "--addr",
            addr,
            "--subs",
            str(share),
            "--expect",
            str(expect),
        ]
        logs.append(tempfile.TemporaryFile())  # noqa: SIM115
        workers.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                *(["--latency"] if latency else []),
                *(["--form", form, "--per-channel", str(per_channel)] if kind == "sluice" else []),
                stdout=asyncio.subprocess.PIPE,
                stderr=logs[-1],
                limit=1 << 28,
                env=dict(env) if env is not None else None,
            )
        )

    async def died(w: asyncio.subprocess.Process, log_file: Any, doing: str) -> RuntimeError:
        code = await w.wait()
        log_file.seek(0)
        said = log_file.read().decode(errors="replace").strip().splitlines()[-5:]
        return RuntimeError(f"{kind} fan-out worker exited with {code} {doing}: {' | '.join(said)}")

    try:
        for w, log_file in zip(workers, logs, strict=True):
            assert w.stdout is not None
            async with asyncio.timeout(180):
                while b"ready" not in (line := await w.stdout.readline()):
                    if not line:
                        raise await died(w, log_file, "before its subscribers were ready")
        await produce()
        results = []
        for w, log_file in zip(workers, logs, strict=True):
            assert w.stdout is not None
            line = await asyncio.wait_for(w.stdout.readline(), 300)
            if not line:
                raise await died(w, log_file, "before it reported")
            results.append(json.loads(line))
    finally:
        for w in workers:
            if w.returncode is None:
                w.kill()
            await w.wait()
        for log_file in logs:
            log_file.close()
    received = sum(r["received"] for r in results)
    first = min(r["first"] for r in results if r["first"]) if received else 0
    last = max(r["last"] for r in results)
    lat = sorted(x / 1000 for r in results for x in r["lat"])
    hop = sorted(x / 1000 for r in results for x in r.get("hop", ()))
    if hop:
        log(
            f"  {kind}: store commit -> subscriber (each message's oldest event)"
            f" p50 {pct(hop, 0.5):.1f} ms, p99 {pct(hop, 0.99):.1f} ms"
        )
    log(
        f"  {kind}: {received:,} deliveries in {sum(r['messages'] for r in results):,} messages;"
        f" subscriber CPU {sum(r['cpu'] for r in results):.1f}s over {(last - first) / 1e9:.1f}s"
    )
    return {
        "received": received,
        "expected": expect * subs,
        "rate": received / ((last - first) / 1e9) if received and last > first else 0.0,
        "p50": pct(lat, 0.50) if lat else float("nan"),
        "p99": pct(lat, 0.99) if lat else float("nan"),
        "hop_p99": pct(hop, 0.99) if hop else float("nan"),
    }
