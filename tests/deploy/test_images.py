"""The example deployment from the real images, under podman: each workload a pod (one
network namespace, as in Kubernetes), each container started with what the rendered
`example` overlay gives it (environment, user, read-only root filesystem, volumes,
ports), Services as network aliases, readiness by the manifests' own probes."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
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
from tests.deploy.manifests import ROOT, Doc, Workload, by_kind, component, container_env, render, workloads

WAIT = 90.0
NAMESPACE = "sluice"


async def podman(*args: str, check: bool = True, timeout: float = 300) -> str:
    proc = await asyncio.create_subprocess_exec(
        "podman", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    text = out.decode()
    assert not check or proc.returncode == 0, f"podman {' '.join(args)}:\n{text[-3000:]}"
    return text


def aliases(docs: tuple[Doc, ...], w: Workload) -> list[str]:
    """The Service names (short and full) that select this workload."""
    out = []
    for name, svc in by_kind(docs, "Service").items():
        if svc["spec"]["selector"].items() <= w.labels.items():
            out += [name, f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"]
    return out


class Pod:
    """A workload as a podman pod and its containers."""

    def __init__(self, docs: tuple[Doc, ...], w: Workload, network: str, run_id: str, data: Path) -> None:
        self.docs, self.w, self.network = docs, w, network
        self.name = f"{w.name}-{run_id}"
        self.data = data
        self.ports: dict[int, int] = {}  # container port -> host port on 127.0.0.1
        self.containers = {c["name"]: c for c in w.containers()}

    async def create(self) -> None:
        published = [p["containerPort"] for c in self.containers.values() for p in c.get("ports", [])]
        args = ["pod", "create", "--name", self.name, "--network", self.network]
        for alias in aliases(self.docs, self.w):
            args += ["--network-alias", alias]
        for port in published:
            args += ["-p", f"127.0.0.1::{port}"]
        await podman(*args)
        for port in published:
            out = await podman("pod", "inspect", self.name, "--format", "json")
            info = json.loads(out)
            info = info[0] if isinstance(info, list) else info
            bindings = info["InfraConfig"]["PortBindings"][f"{port}/tcp"]
            self.ports[port] = int(bindings[0]["HostPort"])

    def cname(self, container: str) -> str:
        return f"{self.name}-{container}"

    async def start(self, container: str) -> None:
        c = self.containers[container]
        kind = component(c)
        env = container_env(c, self.w, self.docs)
        sc = {**self.w.spec.get("securityContext", {}), **c.get("securityContext", {})}
        args = ["run", "-d", "--name", self.cname(container), "--pod", self.name]
        args += ["--user", f"{sc.get('runAsUser', 10001)}:{sc.get('runAsGroup', 10001)}"]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if sc.get("capabilities", {}).get("drop") == ["ALL"]:
            args += ["--cap-drop", "ALL"]
        volumes = {v["name"]: v for v in self.w.spec.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            v = volumes.get(m["name"])
            if v is not None and "emptyDir" in v:
                size = v["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m")
                args += ["--tmpfs", f"{m['mountPath']}:rw,size={size},mode=1777"]
            else:  # the StatefulSet's volume claim: a folder the container's user owns
                self.data.mkdir(exist_ok=True)
                os.chown(self.data, 10001, 10001)
                args += ["-v", f"{self.data}:{m['mountPath']}:Z"]
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        image = c["image"]
        assert image.startswith("localhost/sluice/"), image
        await podman(*args, image, *c.get("args", []))
        assert kind

    async def stop(self, container: str) -> int:
        """SIGTERM within the pod's grace period; the exit code."""
        grace = self.w.spec.get("terminationGracePeriodSeconds", 30)
        await podman("stop", "-t", str(grace), self.cname(container), timeout=grace + 30)
        code = await podman("inspect", self.cname(container), "--format", "{{.State.ExitCode}}")
        return int(code.strip())

    async def kill_and_restart(self, container: str) -> None:
        await podman("kill", self.cname(container))
        await podman("start", self.cname(container))

    async def remove(self) -> None:
        await podman("pod", "rm", "-f", "-t", "0", self.name, check=False)


async def probe_ok(pod: Pod, probe: Doc) -> bool:
    try:
        if "grpc" in probe:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{pod.ports[probe['grpc']['port']]}") as ch:
                req = health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", ""))
                got = await health_pb2_grpc.HealthStub(ch).Check(req, timeout=2)
                return bool(got.status == health_pb2.HealthCheckResponse.SERVING)
        http = probe["httpGet"]
        url = f"http://127.0.0.1:{pod.ports[http['port']]}{http['path']}"
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return 200 <= r.status < 400
    except (grpc.aio.AioRpcError, aiohttp.ClientError, OSError, TimeoutError, KeyError):
        return False


async def ready(pod: Pod, container: str, which: str = "readinessProbe") -> None:
    c = pod.containers[container]
    probe = c.get(which) or c["readinessProbe"]
    async with asyncio.timeout(WAIT):
        while not await probe_ok(pod, probe):  # noqa: ASYNC110 (probes are polled, as the kubelet does)
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def images() -> None:
    """scripts/images.sh (make images): podman, a base image, the four images."""
    if shutil.which("podman") is None and os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("podman is not installed (scripts/images.sh installs it as root)")
    subprocess.run(["bash", str(ROOT / "scripts/images.sh")], check=True, timeout=900)


@pytest.fixture
async def mesh(images: None, tmp_path: Path) -> AsyncIterator[dict[str, Pod]]:
    docs = render("example")
    run_id = secrets.token_hex(3)
    network = f"sluice-{run_id}"
    await podman("network", "create", network)
    pods = {w.name: Pod(docs, w, network, run_id, tmp_path / f"{w.name}-data") for w in workloads(docs)}
    try:
        yield pods
    finally:
        for pod in pods.values():
            await pod.remove()
        await podman("network", "rm", "-f", network, check=False)


# The suite's 120 s limit counts fixtures too: on a fresh machine this one installs podman,
# makes the base image and builds four images first (scripts/images.sh has its own limit).
@pytest.mark.beside
@pytest.mark.timeout(1200)
async def test_the_example_runs_from_the_real_images(mesh: dict[str, Pod]) -> None:
    store, gateway, app = mesh["sluice-store"], mesh["sluice-gateway"], mesh["orders-app"]
    for pod in mesh.values():
        await pod.create()
    await store.start("store")
    await ready(store, "store", "startupProbe")
    await ready(store, "store")
    await gateway.start("gateway")
    await ready(gateway, "gateway")
    await app.start("sluice-sidecar")  # a native sidecar: started, startup probe passed, then the app
    await ready(app, "sluice-sidecar", "startupProbe")
    await app.start("app")
    await ready(app, "app")
    await ready(app, "sluice-sidecar")

    store_addr, gateway_addr = f"127.0.0.1:{store.ports[50051]}", f"127.0.0.1:{gateway.ports[50052]}"
    acked: list[str] = []

    async def produce(n: int) -> None:
        async with Client(store_addr) as c:
            for i in range(n):
                ev = new_event("OrderPlaced", {"n": len(acked)})
                await c.append(f"orders-{i % 8}", [ev])
                acked.append(ev.id)

    async def app_events() -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{app.ports[8080]}/stats") as r,
        ):
            stats: dict[str, Any] = await r.json()
            return int(stats["events"])

    async def app_has(n: int) -> None:
        async with asyncio.timeout(WAIT):
            while await app_events() < n:  # noqa: ASYNC110 (the app's counter is polled)
                await asyncio.sleep(0.2)

    await produce(20)
    await app_has(20)
    async with GatewayClient(gateway_addr) as gw:
        watched = []
        async with asyncio.timeout(WAIT):
            async for item in gw.watch(stream_prefixes=["orders-"], start=1):
                if isinstance(item, pb.RecordedEvent):
                    watched.append(item.id)
                if len(watched) == len(acked):
                    break
        assert watched == acked

    # kill -9 of the store and of the sidecar mid-flow, each started again: nothing lost.
    await store.kill_and_restart("store")
    await ready(store, "store")
    await produce(10)
    await app.kill_and_restart("sluice-sidecar")
    await ready(app, "sluice-sidecar")
    await produce(10)
    await app_has(len(acked))
    assert await app_events() == len(set(acked)) == 40

    # SIGTERM to each, app before its sidecar: each drains within its grace period, exits 0.
    for pod, container in ((app, "app"), (app, "sluice-sidecar"), (gateway, "gateway"), (store, "store")):
        assert await pod.stop(container) == 0, f"{pod.name}/{container}"
