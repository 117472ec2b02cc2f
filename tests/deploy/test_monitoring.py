"""Dashboards and alerts use only metrics that exist: every name in deploy/grafana and the
monitoring component's rules is found in live scrapes of a store, a gateway and a
sidecar doing some work; the monitors scrape ports the pods have."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
import yaml

from sluice import Client, new_event
from sluice.gateway import GatewayClient
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb
from tests.conftest import StoreProcess, eventually
from tests.deploy.manifests import ROOT, Doc, kubectl, workloads
from tests.gateway.conftest import GatewayProcess
from tests.ports import reserve_port
from tests.sidecar.conftest import App, Sidecar

MONITORING = ROOT / "deploy/k8s/components/monitoring"
METRIC = re.compile(r"\b((?:sluice|rpc_server)_[a-z0-9_]+)")


def used_metrics() -> set[str]:
    exprs = [
        t["expr"]
        for p in json.loads((ROOT / "deploy/grafana/sluice.json").read_text())["panels"]
        for t in p["targets"]
    ]
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    exprs += [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    return {name for e in exprs for name in METRIC.findall(e)}


def render_with_monitoring(tmp_path: Path) -> tuple[Doc, ...]:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(ROOT / "deploy/k8s/overlays/example", tmp_path)],
                "components": [os.path.relpath(MONITORING, tmp_path)],
            }
        )
    )
    out = subprocess.run(
        [kubectl(), "kustomize", str(tmp_path)], check=True, capture_output=True, text=True
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def test_every_monitor_scrapes_a_port_its_pods_declare(tmp_path: Path) -> None:
    docs = render_with_monitoring(tmp_path)
    loads = workloads(docs)
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    names = {m["metadata"]["name"] for m in monitors}
    assert names == {"sluice-store", "sluice-gateway", "sluice-sidecars"}
    for m in monitors:
        selector = m["spec"]["selector"]["matchLabels"]
        covered = [w for w in loads if selector.items() <= w.labels.items()]
        assert covered, m["metadata"]
        for endpoint in m["spec"]["podMetricsEndpoints"]:
            for w in covered:
                names = {p.get("name") for c in w.containers() for p in c.get("ports", [])}
                assert endpoint["port"] in names, (m["metadata"], w.name)


async def scrape(url: str) -> set[str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        text = await r.text()
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


async def test_every_metric_a_dashboard_or_alert_uses_exists(
    spawn: Callable[..., StoreProcess], tmp_path: Path
) -> None:
    metrics_port = reserve_port()
    store = spawn("--metrics-addr", f"127.0.0.1:{metrics_port}", "--durability", "normal")
    await store.start()
    gateway = GatewayProcess(store.addr)
    app = App()
    await app.start()
    sidecar = Sidecar(
        "mon-0", store.addr, "mon", app.url("mon-0"),
        *("--prefixes", "orders-", "--start", "start", "--max-attempts", "2", "--initial-backoff", "20ms"),
    )  # fmt: skip
    app.poison.add("Poison")  # retried, then dead-lettered
    try:
        await gateway.start()
        await sidecar.start()
        async with Client(store.addr) as c, GatewayClient(gateway.addr) as gw:
            watch = gw.watch(stream_prefixes=["orders-"], start=1)
            ev = new_event("Placed", {})
            await c.append("orders-1", [ev])
            await c.append("orders-2", [new_event("Poison", {})])
            await app.wait(lambda: ev.id in app.acked_ids())
            got = await asyncio.wait_for(anext(watch), 20)
            assert isinstance(got, pb.RecordedEvent | pb.CaughtUp)
            await watch.aclose()
            await c.heartbeat(gpb.HeartbeatRequest(group="mon", member_id="probe", leave=True))
        names: set[str] = set()

        async def scraped_all() -> bool:
            names.update(await scrape(f"http://127.0.0.1:{metrics_port}/metrics"))
            names.update(await scrape(f"{gateway.http}/metrics"))
            names.update(await scrape(f"http://{sidecar.http}/metrics"))
            return used_metrics() <= names  # the cursor and dead letter land a moment later

        with contextlib.suppress(TimeoutError):
            await eventually(scraped_all, timeout=20)
    finally:
        if sidecar.proc and sidecar.proc.returncode is None:
            sidecar.proc.kill()
            await sidecar.proc.wait()
        if gateway.proc and gateway.proc.returncode is None:
            gateway.proc.kill()
            await gateway.proc.wait()
        await app.stop()
    used = used_metrics()
    assert len(used) >= 15
    missing = sorted(used - names)
    assert not missing, f"used by a panel or an alert, in no scrape: {missing}"
