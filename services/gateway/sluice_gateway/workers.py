"""Several gateway processes on one set of addresses (``--workers``), and how each speaks for all.

Python runs one thread of Python at a time, and a gateway's fan-out is mostly gRPC writes
from its event loop: one process uses one core. ``--workers N`` (``auto``: the CPUs this
process may use, its cgroup's CPU quota included) runs N whole gateways, each with its own
feed from the store, hub and subscribers, listening on the same ports (``SO_REUSEPORT``):
the kernel spreads new connections over them. Published messages reach the subscribers of
every worker the way they reach other gateways', through the store.

The supervisor (this module's ``supervise``):

* picks each port given as 0 once, and holds it with a bound, never listening,
  ``SO_REUSEPORT`` socket, so every worker (and a restarted one) binds the same port;
* starts the workers with a parent-death signal: if the supervisor dies, even by kill -9,
  each worker gets SIGTERM and shuts down as on any SIGTERM;
* prints its one "listening on" line once every worker has printed its own;
* passes SIGTERM, SIGINT and SIGHUP on, and exits once every worker has;
* starts again, after a second, a worker that exits on its own.

Each worker also listens on a Unix socket in a directory of the supervisor's, answering
``/metrics`` and ``/readyz`` for itself alone; whichever worker a scrape or a probe reaches
asks its siblings there, so ``/metrics`` holds every worker's series (with a ``worker``
label) and ``/readyz`` is ready only when every worker is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("sluice_gateway")

# Set by the supervisor for each worker (not settings: nothing else sets them).
WORKER_ENV = "SLUICE_GATEWAY_WORKER_INDEX"  # this worker's index
WORKERS_DIR_ENV = "SLUICE_GATEWAY_WORKER_DIR"  # where the workers' sockets are
WORKERS_COUNT_ENV = "SLUICE_GATEWAY_WORKER_COUNT"  # how many there are
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
SIBLING_TIMEOUT = 2.0


# -- how many ---------------------------------------------------------------------------


def cgroup_cpus(cpu_max: str | None, quota_us: str | None = None, period_us: str | None = None) -> int | None:
    """The CPUs a cgroup's quota allows (rounded up), from cgroup v2's ``cpu.max`` text or
    v1's ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``; None when there is no quota."""
    quota = period = None
    if cpu_max:
        q, _, p = cpu_max.strip().partition(" ")
        if q != "max" and p:
            quota, period = int(q), int(p)
    elif quota_us and period_us and int(quota_us) > 0:
        quota, period = int(quota_us), int(period_us)
    if not quota or not period:
        return None
    return max(1, math.ceil(quota / period))


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def usable_cpus() -> int:
    """The CPUs this process may run on, within its cgroup's quota when it has one."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpus(
        _read("/sys/fs/cgroup/cpu.max"),
        _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
        _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    )
    return min(cpus, quota) if quota else cpus


def parse_workers(value: str) -> int:
    """``auto`` (one per usable CPU) or a count of at least 1."""
    if value.strip().lower() == "auto":
        return 0
    n = int(value)
    if n < 1:
        raise ValueError("a count of at least 1, or auto")
    return n


# -- the supervisor ---------------------------------------------------------------------


def _hold_port(addr: str) -> tuple[str, socket.socket | None]:
    """``addr`` with its port fixed: a port 0 is picked now and held by a bound socket."""
    host, _, port = addr.rpartition(":")
    if not addr or int(port or 0) != 0:
        return addr, None
    bare = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((bare, 0))
    return f"{host}:{sock.getsockname()[1]}", sock


def _die_with_parent(parent: int) -> None:  # pragma: no cover (in the child, before exec)
    """In the worker: SIGTERM when the supervisor dies (Linux's PR_SET_PDEATHSIG); and if
    it died before the signal was set (the worker has another parent already), exit now."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:
        os._exit(1)


class Supervisor:
    def __init__(self, argv: Sequence[str], count: int, addrs: dict[str, str], store: str) -> None:
        self.argv = list(argv)
        self.count = count
        self.addrs = addrs  # flag -> address, as given
        self.store = store
        self.held: list[socket.socket] = []
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.exit_codes: dict[int, int] = {}
        self._passing: set[asyncio.Task[None]] = set()  # copying workers' output to ours
        self.dir = tempfile.mkdtemp(prefix="sluice-gateway-")

    def _fixed_addrs(self) -> dict[str, str]:
        fixed = {}
        for flag, addr in self.addrs.items():
            fixed[flag], sock = _hold_port(addr)
            if sock is not None:
                self.held.append(sock)
        return fixed

    async def _start(self, index: int, fixed: dict[str, str]) -> asyncio.subprocess.Process:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)  # the last worker out removed it
        args = [sys.executable, "-m", "sluice_gateway", *self.argv, "--workers", "1"]
        for flag, addr in fixed.items():
            args += [flag, addr]
        env = {
            **os.environ,
            WORKER_ENV: str(index),
            WORKERS_DIR_ENV: self.dir,
            WORKERS_COUNT_ENV: str(self.count),
        }
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )
        self.procs[index] = proc
        return proc

    async def _announced(self, proc: asyncio.subprocess.Process) -> str | None:
        """The worker's "listening on" line, or None if it exited first; then its other
        output is passed on."""
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").rstrip("\n")
            if "listening on" in text:
                task = asyncio.get_running_loop().create_task(self._pass_on(proc))
                self._passing.add(task)
                task.add_done_callback(self._passing.discard)
                return text
            print(text, flush=True)
        return None

    @staticmethod
    async def _pass_on(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            print(line.decode(errors="replace").rstrip("\n"), flush=True)

    async def _keep(self, index: int, fixed: dict[str, str]) -> None:
        """Watch a worker; start it again if it exits while the supervisor is not stopping
        (after a second, doubling up to half a minute while it keeps dying young)."""
        delay = RESTART_DELAY
        while True:
            proc = self.procs[index]
            started = asyncio.get_running_loop().time()
            code = await proc.wait()
            if self.stopping:
                self.exit_codes[index] = code
                return
            if asyncio.get_running_loop().time() - started >= MAX_RESTART_DELAY:
                delay = RESTART_DELAY  # it had run a while: not a crash loop
            log.warning("gateway worker %d (pid %d) exited: %d; again in %gs", index, proc.pid, code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)
            if self.stopped():  # while it waited
                self.exit_codes[index] = code
                return
            new = await self._start(index, fixed)
            if await self._announced(new) is None:
                log.warning("gateway worker %d exited at start", index)

    def stopped(self) -> bool:
        return self.stopping

    def _signal(self, sig: int) -> None:
        if sig != signal.SIGHUP:
            self.stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._signal, sig)
        try:
            fixed = self._fixed_addrs()
            procs = [await self._start(i, fixed) for i in range(self.count)]
            lines = await asyncio.gather(*(self._announced(p) for p in procs))
            if self.stopped() or any(line is None for line in lines):  # stopped while starting
                self._signal(signal.SIGTERM)
                await asyncio.gather(*(p.wait() for p in procs))
                return 1
            keepers = [asyncio.create_task(self._keep(i, fixed)) for i in range(self.count)]
            grpc_addr = fixed.get("--addr", "")
            http = f", HTTP on {fixed['--http-addr']}" if fixed.get("--http-addr") else ""
            health = f", health on {fixed['--health-addr']}" if fixed.get("--health-addr") else ""
            print(
                f"sluice gateway listening on {grpc_addr}{http} (store {self.store}; {self.count} workers"
                f"{health}, pids {' '.join(str(p.pid) for p in procs)})",
                flush=True,
            )
            await asyncio.gather(*keepers)
            clean = (0, -signal.SIGTERM, -signal.SIGINT)
            return 0 if all(code in clean for code in self.exit_codes.values()) else 1
        finally:
            for sock in self.held:
                sock.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def supervise(argv: Sequence[str], count: int, addrs: dict[str, str], store: str) -> None:
    """Run ``count`` gateway workers until SIGTERM or SIGINT, then exit with their outcome."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(Supervisor(argv, count, addrs, store).run()))


# -- in each worker ---------------------------------------------------------------------


def worker_count() -> int:
    """How many gateway processes share these addresses: 1 outside ``--workers``."""
    return int(os.environ.get(WORKERS_COUNT_ENV, "1"))


class Siblings:
    """This worker's view of the others: its own Unix socket answers for itself, and the
    public ``/metrics`` and ``/readyz`` gather every worker's answers."""

    def __init__(self, directory: str, index: int, count: int) -> None:
        self.dir = Path(directory)
        self.index = index
        self.count = count
        self._runner: web.AppRunner | None = None

    @classmethod
    def from_env(cls) -> Siblings | None:
        if WORKERS_DIR_ENV not in os.environ:
            return None
        env = os.environ
        return cls(env[WORKERS_DIR_ENV], int(env[WORKER_ENV]), int(env[WORKERS_COUNT_ENV]))

    def _path(self, index: int) -> str:
        return str(self.dir / f"worker-{index}.sock")

    async def start(
        self,
        metrics: Callable[[], bytes],
        ready: Callable[[], dict[str, Any]],
        stats: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        async def own_metrics(_: web.Request) -> web.Response:
            return web.Response(body=metrics(), content_type="text/plain")

        async def own_ready(_: web.Request) -> web.Response:
            return web.json_response({**ready(), "worker": self.index, "pid": os.getpid()})

        async def own_stats(_: web.Request) -> web.Response:
            return web.json_response(stats())

        app = web.Application()
        app.router.add_get("/metrics", own_metrics)
        app.router.add_get("/readyz", own_ready)
        app.router.add_get("/stats", own_stats)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        path = self._path(self.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a restarted worker's predecessor's
        await web.UnixSite(self._runner, path).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(OSError):
            os.unlink(self._path(self.index))
        # The last worker out removes the directory (only an empty one goes): after a
        # kill -9 of the supervisor nothing is left behind. The supervisor makes it again
        # before it starts a worker.
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    async def _ask(self, path: str) -> list[tuple[int, Any]]:
        """Each worker's answer to ``path`` (text for /metrics, else JSON); one that does
        not answer in time is left out."""

        async def one(index: int) -> tuple[int, Any] | None:
            try:
                connector = aiohttp.UnixConnector(path=self._path(index))
                timeout = aiohttp.ClientTimeout(total=SIBLING_TIMEOUT)
                async with (
                    aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
                    http.get(f"http://worker{path}") as r,
                ):
                    return index, (await r.text() if path == "/metrics" else await r.json())
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                return None

        answers = await asyncio.gather(*(one(i) for i in range(self.count)))
        return [a for a in answers if a is not None]

    async def metrics(self) -> bytes:
        """Every worker's series, each with a ``worker`` label."""
        families: dict[str, Metric] = {}
        for index, text in await self._ask("/metrics"):
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for s in family.samples:
                    merged.add_sample(s.name, {**s.labels, "worker": str(index)}, s.value, s.timestamp)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(list(families.values())))
        return generate_latest(registry)

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every worker answers ready; positions and subscribers of them all."""
        answers = [a for _, a in await self._ask("/readyz")]
        ready = len(answers) == self.count and all(a.get("ready") for a in answers)
        body = {
            "ready": ready,
            "position": min((a.get("position", 0) for a in answers), default=0),
            "subscribers": sum(a.get("subscribers", 0) for a in answers),
            "workers": sorted(answers, key=lambda a: int(a["worker"])),
        }
        return ready, body

    async def stats(self, own: dict[str, Any]) -> dict[str, Any]:
        """The console's overview for the whole gateway: every worker's samples merged by
        interval (subscribers summed, the highest head), each worker's latest value carried
        into an interval it has no sample in. ``own`` stands in if no worker answers."""
        answers = [a for _, a in await self._ask("/stats")] or [own]
        interval = float(own["interval"])
        per_worker = [
            {int(t // interval): (head, subs) for t, head, subs in a.get("samples", [])} for a in answers
        ]
        samples, latest = [], [(0, 0)] * len(per_worker)
        for bucket in sorted({b for points in per_worker for b in points}):
            for i, points in enumerate(per_worker):
                latest[i] = points.get(bucket, latest[i])
            samples.append(
                (round((bucket + 1) * interval, 3), max(h for h, _ in latest), sum(n for _, n in latest))
            )
        return {
            "interval": interval,
            "samples": samples,
            "head_position": max(int(a.get("head_position", 0)) for a in answers),
            "subscribers": sum(int(a.get("subscribers", 0)) for a in answers),
            "workers": len(answers),
        }


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families
