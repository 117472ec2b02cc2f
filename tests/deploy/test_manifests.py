"""Every overlay renders, every object validates against the Kubernetes schemas (offline),
and probes, ports, addresses, settings and service names agree across manifests and code."""

from __future__ import annotations

import kubernetes_validate
import pytest

from sluice.settings import Option, parse_duration
from sluice_gateway import config as gateway_config
from sluice_gateway.server import SERVICE_NAME as GATEWAY_SERVICE
from sluice_sidecar import config as sidecar_config
from sluice_store import config as store_config
from sluice_store.server import SERVICE_NAME as STORE_SERVICE
from tests.deploy.manifests import (
    DOCKERFILES,
    OVERLAYS,
    Doc,
    Workload,
    by_kind,
    component,
    container_env,
    dockerfile,
    render,
    workloads,
)

#: The oldest Kubernetes with native sidecars on by default (GA), and the newest schemas.
VERSIONS = ["1.33.0", kubernetes_validate.latest_version()]
OPTIONS: dict[str, tuple[Option, ...]] = {
    "store": store_config.OPTIONS,
    "gateway": gateway_config.OPTIONS,
    "sidecar": sidecar_config.OPTIONS,
}
#: The gRPC service each component's readiness probe asks about: SERVING only when ready.
READY_SERVICE = {"store": STORE_SERVICE, "gateway": GATEWAY_SERVICE}
#: Seconds each component may spend draining after SIGTERM, by its setting.
DRAIN = {"store": "grace", "gateway": "grace", "sidecar": "drain_timeout"}


def test_the_overlays_are_the_ones_documented() -> None:
    assert OVERLAYS == ["example", "postgres", "sqlite"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(overlay: str, version: str) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {e.message}") from e


def container_ports(container: Doc) -> dict[str | int, int]:
    """Port names and numbers of a container, both mapping to the number."""
    out: dict[str | int, int] = {}
    for p in container.get("ports", []):
        out[p["containerPort"]] = p["containerPort"]
        if "name" in p:
            out[p["name"]] = p["containerPort"]
    return out


def probes(container: Doc) -> list[tuple[str, Doc]]:
    return [(k, container[k]) for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_settings_agree_with_the_code(overlay: str) -> None:
    docs = render(overlay)
    for w in workloads(docs):
        for c in w.containers():
            where = f"{overlay}: {w.name}/{c['name']}"
            kind = component(c)
            ports = container_ports(c)
            env = container_env(c, w, docs)
            image_env, entrypoint, exposed = dockerfile(DOCKERFILES[kind])
            assert entrypoint, f"{where}: the image has an ENTRYPOINT"
            assert sorted(exposed) == sorted({p["containerPort"] for p in c.get("ports", [])}), where
            for name, probe in probes(c):
                target = probe.get("grpc") or probe.get("httpGet")
                assert target, f"{where}: {name} is a gRPC or HTTP probe"
                assert target["port"] in ports, f"{where}: {name} probes a port the container has"
                if "grpc" in probe and name == "readinessProbe":
                    assert probe["grpc"].get("service") == READY_SERVICE[kind], where
                if "grpc" in probe and name == "livenessProbe":
                    assert probe["grpc"].get("service", "") == "", f"{where}: liveness asks about the process"
            if kind == "app":
                continue
            known = {o.env for o in OPTIONS[kind]}
            settings = {**image_env, **env}
            unknown = {k for k in settings if k.startswith("SLUICE_")} - known
            assert not unknown, f"{where}: {sorted(unknown)} are not settings of the {kind}"
            # Every listen address binds a port the container declares.
            for option in OPTIONS[kind]:
                value = settings.get(option.env, "")
                if option.name.endswith("addr") and value.startswith(("0.0.0.0:", "127.0.0.1:")):
                    port = int(value.rsplit(":", 1)[1])
                    if value.startswith("0.0.0.0:"):
                        assert port in ports, f"{where}: {option.env}={value} is not a container port"
            # The pod waits longer than the component's drain.
            drain = next(o for o in OPTIONS[kind] if o.name == DRAIN[kind])
            seconds = parse_duration(settings.get(drain.env, "")) if drain.env in settings else drain.default
            assert w.spec.get("terminationGracePeriodSeconds", 30) > seconds, where
            sc = {**w.spec.get("securityContext", {}), **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem"), where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert c.get("resources", {}).get("requests"), f"{where}: resources"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_addresses_and_policies_point_at_real_ports(overlay: str) -> None:
    docs = render(overlay)
    services = by_kind(docs, "Service")
    loads = workloads(docs)

    def selected(selector: dict[str, str]) -> list[Workload]:
        return [w for w in loads if selector.items() <= w.labels.items()]

    for name, svc in services.items():
        backends = selected(svc["spec"]["selector"])
        assert backends, f"{overlay}: Service {name} selects no workload"
        for port in svc["spec"]["ports"]:
            for w in backends:
                assert any(port["targetPort"] in container_ports(c) for c in w.containers()), (
                    f"{overlay}: Service {name} port {port['name']} -> {port['targetPort']} not on {w.name}"
                )
    # Every address a component is given (host:port) names a Service and one of its ports.
    for w in loads:
        for c in w.containers():
            for key, value in container_env(c, w, docs).items():
                if key.endswith(("STORE_ADDR", "_STORE")) and not value.startswith("0.0.0.0"):
                    host, _, port = value.rpartition(":")
                    assert host in services, f"{overlay}: {w.name} {key}={value}: no Service {host}"
                    assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]], value
    # Policies: each allowed port is a port of the pods the policy covers; the store's
    # clients carry the label its policy admits.
    for name, policy in by_kind(docs, "NetworkPolicy").items():
        covered = selected(policy["spec"]["podSelector"].get("matchLabels", {}))
        assert covered, f"{overlay}: NetworkPolicy {name} covers no workload"
        for rule in policy["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                assert any(p["port"] in container_ports(c) for w in covered for c in w.containers()), (
                    f"{overlay}: NetworkPolicy {name} opens {p['port']}, which no covered pod serves"
                )
    store_policy = by_kind(docs, "NetworkPolicy")["sluice-store"]
    admitted = store_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    for w in loads:
        talks_to_store = any(
            container_env(c, w, docs).get("SLUICE_STORE_ADDR", "").startswith("sluice-store:")
            for c in w.containers()
        )
        if talks_to_store:
            assert admitted.items() <= w.labels.items(), f"{overlay}: {w.name} may not reach the store"


def test_the_code_defaults_are_the_manifests_ports() -> None:
    """Someone running a component without flags gets the ports the manifests use."""
    docs = render("example")
    defaults = {
        "store": store_config.Settings().addr,
        "gateway": gateway_config.Settings().addr,
        "sidecar": sidecar_config.Settings(group="g").http_addr,
    }
    ports = {component(c): container_ports(c) for w in workloads(docs) for c in w.containers()}
    for kind, addr in defaults.items():
        assert int(addr.rsplit(":", 1)[1]) in ports[kind].values(), kind


def test_the_sidecar_component_reaches_the_app_it_is_added_to() -> None:
    docs = render("example")
    (app,) = [w for w in workloads(docs) if w.name == "orders-app"]
    sidecar = next(c for c in app.containers() if component(c) == "sidecar")
    assert sidecar.get("restartPolicy") == "Always"  # a native sidecar
    env = container_env(sidecar, app, docs)
    main = next(c for c in app.containers() if component(c) == "app")
    assert env["SLUICE_APP_URL"] == f"http://127.0.0.1:{main['ports'][0]['containerPort']}/events"
    assert env["SLUICE_GROUP"] == "orders-app" and env["SLUICE_PREFIXES"] == "orders-"
    assert app.labels.get("sluice.dev/store-client") == "true"
