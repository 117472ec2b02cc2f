"""The mesh as the manifests deploy it, without a cluster or a Docker engine.

Each image's build steps run for real: its files are copied the way its Dockerfile copies
them and its pip command installs them into a fresh virtualenv. Each component then
starts from that virtualenv with its image's ENTRYPOINT (dumb-init as PID 1) and the
environment the kubelet would give it from the rendered `example` overlay (image ENV,
ConfigMaps, env, pod fields). Two things differ, and only these: Service names and
listen addresses become loopback addresses with free ports (one port per manifest port),
and mounted paths (/data) become temporary folders. Readiness is judged by the
manifests' own probes, and the native sidecar starts before its app, as in a pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice import Client, new_event
from sluice.gateway import GatewayClient
from sluice.v1 import streams_pb2 as pb
from tests.deploy.manifests import (
    DOCKERFILES,
    ROOT,
    Doc,
    by_kind,
    component,
    container_env,
    dockerfile,
    dockerfile_lines,
    render,
    workloads,
)
from tests.ports import reserve_port

WAIT = 60.0


def build_steps(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(source, destination) of each COPY and the pip command of the build stage."""
    lines = dockerfile_lines(path)
    copies: list[tuple[str, str]] = []
    pip: list[str] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "FROM" and copies and " AS " not in line:
            break  # the final stage: built already
        if word == "COPY" and "--from" not in rest:
            src, dst = rest.split()
            copies.append((src, dst))
        elif word == "RUN" and "pip install" in rest:
            command = rest.split("&&")[-1].strip()
            pip = [
                a for a in shlex.split(command) if a != "--no-cache-dir"
            ]  # the cache changes nothing installed
    return copies, pip


async def run(*args: str, cwd: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{out.decode()[-3000:]}"


async def build_image(kind: str, tmp: Path) -> Path:
    """Do what the Dockerfile's build stage does, into tmp; the virtualenv's bin folder."""
    copies, pip = build_steps(DOCKERFILES[kind])
    src = tmp / kind / "src"
    src.mkdir(parents=True)
    context = ROOT if kind != "app" else DOCKERFILES[kind].parent
    for source, dest in copies:
        target = src / dest.lstrip("/") if dest.startswith("/") else src / (dest if dest != "./" else "")
        origin = context / source
        if origin.is_dir():
            shutil.copytree(
                origin, target, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build")
            )
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(origin, target if not dest.endswith("/") else target / origin.name)
    venv = tmp / kind / "venv"
    if not pip:  # the app image: the base image's Python and the copied file
        return Path(sys.executable).parent
    await run(sys.executable, "-m", "venv", str(venv), cwd=src)
    await run(str(venv / "bin/pip"), *pip[1:], cwd=src)
    return venv / "bin"


class Ports:
    """One reserved loopback port per port number the manifests use (each process is
    given its peers' addresses before they start, as Services give them in a cluster)."""

    def __init__(self) -> None:
        self.map: dict[int, int] = {}

    def __getitem__(self, port: int) -> int:
        if port not in self.map:
            self.map[port] = reserve_port()
        return self.map[port]


class Pod:
    """One container of a workload, run as a process the way the kubelet would run it."""

    def __init__(self, name: str, container: Doc, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.container = container
        self.args = args
        self.env = env
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log, "ab") as fh:  # noqa: ASYNC230 (a local file, opened once)
            self.proc = await asyncio.create_subprocess_exec(*self.args, env=self.env, stdout=fh, stderr=fh)

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), WAIT)


def localise(value: str, ports: Ports, services: set[str], data: Path) -> str:
    """Service names (short, or dns:/// full names) and listen hosts -> 127.0.0.1 with the
    mapped port; /data -> data."""
    names = "|".join(re.escape(h) for h in services)
    full = rf"dns:///(?:{names})\.[a-z0-9-]+\.svc\.cluster\.local"  # a Service by its full name
    hosts = "|".join([full, *(re.escape(h) for h in ["0.0.0.0", "127.0.0.1", *services])])
    value = re.sub(rf"({hosts}):(\d+)\b", lambda m: f"127.0.0.1:{ports[int(m.group(2))]}", value)
    return value.replace("/data/", f"{data}/")


async def probe_ok(pod: Pod, probe: Doc, ports: Ports) -> bool:
    try:
        if "grpc" in probe:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[probe['grpc']['port']]}") as ch:
                req = health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", ""))
                got = await health_pb2_grpc.HealthStub(ch).Check(req, timeout=2)
                return bool(got.status == health_pb2.HealthCheckResponse.SERVING)
        http = probe["httpGet"]
        url = f"http://127.0.0.1:{ports[http['port']]}{http['path']}"
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return 200 <= r.status < 400
    except (grpc.aio.AioRpcError, aiohttp.ClientError, OSError, TimeoutError):
        return False


async def ready(pod: Pod, ports: Ports, which: str = "readinessProbe") -> None:
    probe = pod.container.get(which) or pod.container.get("readinessProbe")
    assert probe, f"{pod.name} has a {which}"
    async with asyncio.timeout(WAIT):
        while not await probe_ok(pod, probe, ports):
            assert pod.proc is not None and pod.proc.returncode is None, f"{pod.name} exited: see {pod.log}"
            await asyncio.sleep(0.1)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[dict[str, Pod], Ports]]:
    docs = render("example")
    services = set(by_kind(docs, "Service"))
    ports = Ports()
    kinds = ["store", "gateway", "sidecar", "app"]
    bins = dict(zip(kinds, await asyncio.gather(*(build_image(k, tmp_path) for k in kinds)), strict=True))
    pods: dict[str, Pod] = {}
    for w in workloads(docs):
        for c in w.containers():
            kind = component(c)
            image_env, entrypoint, _ = dockerfile(DOCKERFILES[kind])
            env = {**image_env, **container_env(c, w, docs)}
            data = tmp_path / f"{w.name}-data"
            data.mkdir(exist_ok=True)
            env = {k: localise(v, ports, services, data) for k, v in env.items()}
            if kind == "app":
                env["PORT"] = str(ports[int(env["PORT"])])
            # Paths inside the image are where the build step copied them.
            entrypoint = [
                str(tmp_path / kind / "src" / a[1:]) if a.startswith("/app/") else a for a in entrypoint
            ]
            env["PATH"] = f"{bins[kind]}{os.pathsep}{os.environ['PATH']}"
            env["HOME"] = str(tmp_path)
            assert entrypoint[:2] == ["dumb-init", "--"] or kind == "app", f"{kind}: PID 1 forwards signals"
            program = shutil.which(entrypoint[0], path=env["PATH"]) or entrypoint[0]
            args = [program, *entrypoint[1:], *c.get("args", [])]
            pods[f"{w.name}/{c['name']}"] = Pod(
                f"{w.name}/{c['name']}", c, args, env, tmp_path / f"{kind}.log"
            )
    yield pods, ports
    for pod in reversed(list(pods.values())):
        if pod.proc is not None and pod.proc.returncode is None:
            pod.proc.kill()
            await pod.proc.wait()


async def test_events_reach_the_app_through_its_sidecar_and_a_gateway_subscriber(
    mesh: tuple[dict[str, Pod], Ports],
) -> None:
    pods, ports = mesh
    store, gateway = pods["sluice-store/store"], pods["sluice-gateway/gateway"]
    sidecar, app = pods["orders-app/sluice-sidecar"], pods["orders-app/app"]
    await store.start()
    await ready(store, ports)
    await gateway.start()
    await ready(gateway, ports)  # sluice.v1.Gateway is SERVING only with its feed up
    await sidecar.start()  # a native sidecar: started, and its startup probe passed, before the app
    await ready(sidecar, ports, "startupProbe")
    await app.start()
    await ready(app, ports)
    await ready(sidecar, ports)  # joined its group

    store_addr = f"127.0.0.1:{ports[50051]}"
    watched: list[str] = []
    async with GatewayClient(f"127.0.0.1:{ports[50052]}") as gw:

        async def watch() -> None:
            async for item in gw.watch(stream_prefixes=["orders-"], start=1):  # none missed
                if isinstance(item, pb.RecordedEvent):
                    watched.append(item.id)

        watcher = asyncio.create_task(watch())
        ids = []
        async with Client(store_addr) as c:
            await c.append("payments-1", [new_event("Paid", {"n": 0})])  # not the app's
            for n in range(40):
                ev = new_event("OrderPlaced", {"n": n})
                await c.append(f"orders-{n % 8}", [ev])
                ids.append(ev.id)
        stats: dict[str, Any] = {}
        async with aiohttp.ClientSession() as http, asyncio.timeout(WAIT):
            while stats.get("events") != len(ids) or len(watched) < len(ids):
                async with http.get(f"http://127.0.0.1:{ports[8080]}/stats") as r:
                    stats = await r.json()
                await asyncio.sleep(0.1)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert stats["by_type"] == {"OrderPlaced": len(ids)}
    assert sorted(watched) == sorted(ids)
    # SIGTERM through dumb-init: each exits cleanly, app first, sidecar after it (as in a pod).
    for pod in (app, sidecar, gateway, store):
        assert await pod.stop() == 0, f"{pod.name}: see {pod.log}"
