"""Each service declares what it imports: the images install a service's declared
dependencies alone, so a module the development virtualenv happens to have (through
another package) would pass every other test and fail only in the image."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "services/store": "sluice_store",
    "services/gateway": "sluice_gateway",
    "sidecar": "sluice_sidecar",
    "clients/python": "sluice",
}


def imported_modules(package: Path) -> set[str]:
    """Top-level names of every module the package's files import, at any depth."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def requirement_names(requirements: list[str]) -> set[str]:
    out = set()
    for r in requirements:
        if ";" in r and "extra ==" in r:
            continue
        out.add(re.split(r"[ <>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-"))
    return out


def closure(names: set[str]) -> set[str]:
    """The distributions these need, with everything they need in turn (as installed)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += requirement_names(md.requires(name) or [])
        except md.PackageNotFoundError:
            pass
    return seen


@pytest.mark.parametrize("folder", list(SERVICES))
def test_every_import_of_a_service_is_a_declared_dependency(folder: str) -> None:
    project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
    declared = closure(requirement_names(project["dependencies"]))
    provided = {m: {d.lower().replace("_", "-") for d in ds} for m, ds in md.packages_distributions().items()}
    own = set(SERVICES.values()) | {"google"} | set(sys.stdlib_module_names)
    missing = {}
    for module in imported_modules(ROOT / folder / SERVICES[folder]) - own:
        dists = provided.get(module, set())
        if not dists & declared:
            missing[module] = sorted(dists)
    if folder == "clients/python":
        # The client's optional parts import what only the services that use them install:
        # the HTTP server helpers (aiohttp), tokens and policies (PyJWT, PyYAML), a client
        # certificate's expiry under mutual TLS (cryptography), telemetry, a process's
        # health service and uvloop (sluice.process).
        for optional in (
            "aiohttp",
            "cryptography",
            "jwt",
            "yaml",
            "opentelemetry",
            "prometheus_client",
            "grpc_health",
            "uvloop",
        ):
            missing.pop(optional, None)
    assert not missing, f"{folder} imports modules its pyproject does not declare: {missing}"
