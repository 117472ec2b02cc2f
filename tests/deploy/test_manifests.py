"""Every overlay renders, every object validates against the Kubernetes schemas (offline),
and probes, ports, addresses, settings and service names agree across manifests and code."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from sluice import security
from sluice.settings import Option, default, parse_duration
from sluice_gateway import config as gateway_config
from sluice_gateway.server import SERVICE_NAME as GATEWAY_SERVICE
from sluice_sidecar import config as sidecar_config
from sluice_store import config as store_config
from sluice_store.server import SERVICE_NAME as STORE_SERVICE
from tests.deploy.manifests import (
    DOCKERFILES,
    OVERLAYS,
    ROOT,
    Doc,
    Workload,
    by_kind,
    component,
    container_env,
    dockerfile,
    dockerfile_lines,
    kubectl,
    namespace,
    render,
    service_address,
    workloads,
)

#: The oldest Kubernetes with native sidecars on by default (GA), and the newest schemas.
VERSIONS = ["1.33.0", kubernetes_validate.latest_version()]
OPTIONS: dict[str, tuple[Option, ...]] = {
    "store": store_config.OPTIONS,
    "gateway": gateway_config.OPTIONS,
    "sidecar": sidecar_config.OPTIONS,
}
SETTINGS: dict[str, type] = {
    "store": store_config.Settings,
    "gateway": gateway_config.Settings,
    "sidecar": sidecar_config.Settings,
}
#: The gRPC service each component's readiness probe asks about: SERVING only when ready.
READY_SERVICE = {"store": STORE_SERVICE, "gateway": GATEWAY_SERVICE}
#: Seconds each component may spend draining after SIGTERM, by its setting.
DRAIN = {"store": "grace", "gateway": "grace", "sidecar": "drain_timeout"}


def test_the_overlays_are_the_ones_documented() -> None:
    assert OVERLAYS == ["example", "postgres", "secure", "sqlite"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(overlay: str, version: str) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("cert-manager.io/"):  # a CRD: no schema here
            assert doc["kind"] in ("Issuer", "Certificate") and doc["spec"], doc
            continue
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
            # The pod waits longer than the pause before SIGTERM plus the component's drain.
            drain = next(o for o in OPTIONS[kind] if o.name == DRAIN[kind])
            fallback = default(SETTINGS[kind], drain.name)
            seconds = parse_duration(settings.get(drain.env, "")) if drain.env in settings else fallback
            pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            assert w.spec.get("terminationGracePeriodSeconds", 30) > pause + seconds, where
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
    # Every store address a component is given names a Service by its full name (so it
    # works from any namespace) and one of its ports; clients get every store replica.
    for w in loads:
        for c in w.containers():
            for key, value in container_env(c, w, docs).items():
                if key.endswith(("STORE_ADDR", "_STORE")) and not value.startswith("0.0.0.0"):
                    host, port = service_address(value, namespace(docs))
                    assert host in services, f"{overlay}: {w.name} {key}={value}: no Service {host}"
                    assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]], value
                    assert services[host]["spec"].get("clusterIP") == "None", f"{value}: every replica"
    # Policies: each allowed port is a port of the pods the policy covers; the store's
    # clients carry the label its policy admits.
    for name, policy in by_kind(docs, "NetworkPolicy").items():
        covered = selected(policy["spec"]["podSelector"].get("matchLabels", {}))
        if "sluice.dev/database" in policy["spec"]["podSelector"].get("matchLabels", {}):
            continue  # the user's PostgreSQL pods, when they run in this namespace
        assert covered, f"{overlay}: NetworkPolicy {name} covers no workload"
        for rule in policy["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                assert any(p["port"] in container_ports(c) for w in covered for c in w.containers()), (
                    f"{overlay}: NetworkPolicy {name} opens {p['port']}, which no covered pod serves"
                )
    store_policy = by_kind(docs, "NetworkPolicy")["sluice-store"]
    sources = store_policy["spec"]["ingress"][0]["from"]
    admitted = sources[0]["podSelector"]["matchLabels"]
    for w in loads:
        talks_to_store = any(
            "sluice-store" in container_env(c, w, docs).get("SLUICE_STORE_ADDR", "") for c in w.containers()
        )
        if talks_to_store:
            assert admitted.items() <= w.labels.items(), f"{overlay}: {w.name} may not reach the store"
    # ... and the same labelled pods in other namespaces labelled as the store's clients.
    assert {
        "namespaceSelector": {"matchLabels": {"sluice.dev/store-clients": "true"}},
        "podSelector": {"matchLabels": admitted},
    } in sources


def test_the_code_defaults_are_the_manifests_ports() -> None:
    """Someone running a component without flags gets the ports the manifests use."""
    docs = render("example")
    defaults = {
        "store": store_config.Settings().addr,
        "gateway": gateway_config.Settings().addr,
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


def test_the_sidecar_api_stays_on_localhost_and_only_probes_listen_outside() -> None:
    docs = render("example")
    (app,) = [w for w in workloads(docs) if w.name == "orders-app"]
    sidecar = next(c for c in app.containers() if component(c) == "sidecar")
    env = {**dockerfile(DOCKERFILES["sidecar"])[0], **container_env(sidecar, app, docs)}
    assert env["SLUICE_HTTP_ADDR"].startswith("127.0.0.1:") and env["SLUICE_GRPC_ADDR"].startswith(
        "127.0.0.1:"
    )
    probe_port = int(env["SLUICE_PROBE_ADDR"].rsplit(":", 1)[1])
    assert env["SLUICE_PROBE_ADDR"].startswith("0.0.0.0:")
    assert [p["containerPort"] for p in sidecar["ports"]] == [probe_port]
    assert {probe["httpGet"]["port"] for _, probe in probes(sidecar)} == {probe_port}


RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "runAsNonRoot": True}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_meets_the_restricted_pod_security_standard(overlay: str) -> None:
    for w in workloads(render(overlay)):
        assert w.spec.get("automountServiceAccountToken") is False, f"{w.name}: no token it does not use"
        for c in w.containers():
            own = c.get("securityContext", {})
            sc = {**w.spec.get("securityContext", {}), **own}
            where = f"{overlay}: {w.name}/{c['name']}"
            assert RESTRICTED_CONTAINER.items() <= sc.items() and sc.get("runAsUser", 0) != 0, where
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            if component(c) == "sidecar":  # injected into pods that may set no context at all
                assert RESTRICTED_CONTAINER.items() <= own.items(), where
                assert own.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
                assert own.get("runAsGroup") == own.get("runAsUser") == 10001, where
        for v in w.spec.get("volumes", []):
            if "emptyDir" in v:
                assert v["emptyDir"].get("sizeLimit"), f"{overlay}: {w.name} volume {v['name']}: a size limit"


def test_the_sidecar_component_takes_every_workload_kind_labelled(tmp_path: Path) -> None:
    """A labelled StatefulSet or DaemonSet gets the sidecar as a Deployment does."""
    meta: Doc = {"labels": {"app": "x"}, "annotations": {"sluice.dev/group": "g"}}
    containers = [{"name": "app", "image": "example/app:1"}]
    objects = []
    for kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        spec: Doc = {
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": meta, "spec": {"containers": containers}},
        }
        if kind == "Job":
            spec = {
                "template": {"metadata": meta, "spec": {"containers": containers, "restartPolicy": "Never"}}
            }
        objects.append(
            {
                "apiVersion": "batch/v1" if kind == "Job" else "apps/v1",
                "kind": kind,
                "metadata": {"name": kind.lower(), "labels": {"sluice.dev/sidecar": "enabled"}},
                "spec": spec,
            }
        )
    (tmp_path / "workloads.yaml").write_text(yaml.safe_dump_all(objects))
    component_dir = os.path.relpath(ROOT / "deploy/k8s/components/sidecar", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["workloads.yaml"], "components": [component_dir]})
    )
    out = subprocess.run(
        [kubectl(), "kustomize", str(tmp_path)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d and d["kind"] != "ConfigMap"]
    with_sidecar = {
        d["kind"]
        for d in docs
        if any(c["name"] == "sluice-sidecar" for c in d["spec"]["template"]["spec"].get("initContainers", []))
    }
    assert with_sidecar == {"Deployment", "StatefulSet", "DaemonSet"}  # Jobs end; a sidecar never would


def test_the_gateway_scales_by_its_autoscaler_and_drains_gently() -> None:
    docs = render("sqlite")
    gateway = by_kind(docs, "Deployment")["sluice-gateway"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["sluice-gateway"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "sluice-gateway"
    assert "replicas" not in gateway["spec"], "an apply would reset what the autoscaler chose"
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0  # lame duck before SIGTERM
    for overlay in OVERLAYS:
        for name, pdb in by_kind(render(overlay), "PodDisruptionBudget").items():
            # Unready pods (say, gateways while the store restarts) never block a node drain.
            assert pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", f"{overlay}: {name}"


def measured_store_rss_mib() -> float:
    """The largest resident size bench/memory.py measured (its committed result)."""
    text = (ROOT / "bench/results/memory-latest.md").read_text()
    return max(
        float(row.split("|")[3]) for row in text.splitlines() if row.startswith("| ") and "MiB" not in row
    )


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    return float(quantity[:-2]) * units[quantity[-2:]]


@pytest.mark.parametrize("overlay", ["sqlite", "postgres"])
def test_the_store_is_sized_from_a_measurement_and_starts_before_it_is_probed(overlay: str) -> None:
    docs = render(overlay)
    (store,) = [w for w in workloads(docs) if w.name == "sluice-store"]
    (c,) = store.containers()
    request = mebibytes(c["resources"]["requests"]["memory"])
    assert request >= 1.5 * measured_store_rss_mib(), "the request leaves room above the measured size"
    assert mebibytes(c["resources"]["limits"]["memory"]) >= 2 * request
    assert c["startupProbe"]["grpc"]["port"] == 8071  # liveness waits for the database to open
    if overlay == "postgres":
        env = container_env(c, store, docs)
        assert "<secret:" in env["SLUICE_DB"]  # the URL, without the password ...
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        path = env["SLUICE_DB_PASSWORD_FILE"]  # ... which is a file from the Secret
        volume = next(v for v in store.spec["volumes"] if v["name"] == mounts[str(Path(path).parent)])
        assert volume["secret"]["secretName"] == "sluice-postgres"
        assert {"key": "password", "path": Path(path).name} in volume["secret"]["items"]
        database = by_kind(docs, "NetworkPolicy")["sluice-database"]["spec"]
        assert database["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items() <= store.labels.items()


LABELS = ("name", "instance", "version", "component", "part-of", "managed-by")


@pytest.mark.parametrize("overlay", ["sqlite", "postgres"])
def test_images_come_from_one_setting_and_objects_carry_the_standard_labels(overlay: str) -> None:
    docs = render(overlay)
    for w in workloads(docs):
        for c in w.containers():
            registry = c["image"].split("/", 1)[0]
            # Not a bare Docker Hub name (sluice/store would be docker.io/sluice/store).
            assert "." in registry or ":" in registry or registry == "localhost", c["image"]
        missing = [k for k in LABELS if f"app.kubernetes.io/{k}" not in w.labels]
        assert not missing, f"{overlay}: {w.name} pods lack {missing}"
    images = yaml.safe_load((ROOT / "deploy/k8s/components/images/kustomization.yaml").read_text())
    assert {i["name"] for i in images["images"]} == {
        "sluice/store",
        "sluice/gateway",
        "sluice/sidecar",
        "sluice/orders-app",
    }


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_images_run_as_the_manifests_user_and_group_without_pip(kind: str) -> None:
    lines = dockerfile_lines(DOCKERFILES[kind])
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    assert "USER 10001:10001" in final
    assert any("groupadd" in line and "--gid 10001" in line for line in final)
    if kind != "app":
        assert any("pip uninstall" in line and "pip setuptools" in line for line in final)
        assert any("/venv/bin/python -m pip uninstall" in line for line in lines)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "**/node_modules"} <= set(ignored)


@pytest.mark.parametrize("kind", sorted(OPTIONS))
def test_every_option_is_a_settings_field_with_its_default_written_once(kind: str) -> None:
    fields = {f.name for f in dataclasses.fields(SETTINGS[kind])}
    assert {o.name for o in OPTIONS[kind]} == fields  # each default lives on the field alone


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_protected_mode_lets_every_server_start(overlay: str) -> None:
    """A store or gateway beyond loopback has authentication, or says it may go without."""
    docs = render(overlay)
    for w in workloads(docs):
        for c in w.containers():
            kind = component(c)
            if kind not in ("store", "gateway"):
                continue
            env = {**dockerfile(DOCKERFILES[kind])[0], **container_env(c, w, docs)}
            secured = any(
                env.get(k) for k in ("SLUICE_TOKENS_FILE", "SLUICE_JWKS_FILE", "SLUICE_TLS_CLIENT_CA")
            )
            insecure = env.get("SLUICE_INSECURE") == "true"
            addr = env.get("SLUICE_STORE_ADDR" if kind == "store" else "SLUICE_GATEWAY_ADDR", "")
            assert not security.protected_mode(addr, "addr", secured, insecure), f"{overlay}: {w.name}"


def mounted(container: Doc, path: str) -> bool:
    return any(path.startswith(m["mountPath"].rstrip("/") + "/") for m in container.get("volumeMounts", []))


def test_the_secure_overlay_turns_everything_on_and_its_policy_grants_what_runs() -> None:
    docs = render("secure")
    maps = by_kind(docs, "ConfigMap")
    policy_file = Path(tempfile.mkdtemp()) / "policy.yaml"
    policy_file.write_text(maps["sluice-policy"]["data"]["policy.yaml"])
    policy = security.Policy(str(policy_file))  # the engine itself reads it
    for w in workloads(docs):
        for c in w.containers():
            kind = component(c)
            env = {**dockerfile(DOCKERFILES[kind])[0], **container_env(c, w, docs)}
            files = [
                v
                for k, v in env.items()
                if k.endswith("_FILE") or k.startswith(("SLUICE_TLS_", "SLUICE_STORE_TLS_"))
            ]
            for path in files:
                assert mounted(c, path), f"{w.name}/{c['name']}: {path} is not mounted"
            if kind in ("store", "gateway"):
                assert (
                    env["SLUICE_INSECURE"] == "false" and env["SLUICE_TLS_CERT"] and env["SLUICE_JWKS_FILE"]
                )
            if kind in ("gateway", "sidecar"):
                token = next(
                    v
                    for v in w.spec["volumes"]
                    if mounted(c, env["SLUICE_STORE_TOKEN_FILE"]) and "projected" in v
                )
                source = token["projected"]["sources"][0]["serviceAccountToken"]
                assert source["audience"] == maps["sluice-store"]["data"]["SLUICE_JWT_AUDIENCE"]
                account = w.spec.get("serviceAccountName", "default")
                principal = security.Principal(f"system:serviceaccount:sluice:{account}")
                if kind == "gateway":
                    policy.check(principal, "read", "*")  # its feed
                else:
                    group = env["SLUICE_GROUP"]
                    policy.check(principal, "join", group, "groups")
                    for prefix in env["SLUICE_PREFIXES"].split(","):
                        policy.check(principal, "read", prefix + "*")
