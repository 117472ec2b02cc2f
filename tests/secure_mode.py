"""The suites' secure mode: with ``SLUICE_TEST_SECURE=1`` every store, gateway and sidecar a
test starts serves TLS, authenticates each caller by its own token and authorizes it by a
policy, and the test's own clients (the Python client, the CLI, HTTP to the gateway) call
with a CA to trust and a token. ``make test`` runs the mesh suites again this way, so the
end-to-end behaviour they check is shown to hold with security on, not only in the
dedicated tests under ``tests/security``.

Each part gets only what it needs: the gateway reads (its feed) and publishes (relays), the
sidecars read, append and run their groups; the test itself is the administrator.
"""

from __future__ import annotations

import functools
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import trustme
import yaml

from sluice.security import token_hash

SECURE = os.environ.get("SLUICE_TEST_SECURE", "").lower() in ("1", "true", "yes")

POLICY: dict[str, Any] = {
    "roles": {"admins": ["tests"]},
    "rules": [
        {"allow": ["*"], "streams": ["*", "$*"], "who": ["role:admins"]},
        {"allow": ["*"], "groups": ["*"], "who": ["role:admins"]},
        {"allow": ["read", "publish"], "streams": ["*"], "who": ["gateway"]},
        {"allow": ["read", "append"], "streams": ["*"], "who": ["sidecar"]},
        {"allow": ["join", "list", "admin"], "groups": ["*"], "who": ["sidecar"]},
    ],
}


class MeshSecurity:
    """A CA, a server certificate for 127.0.0.1, a token per part and the policy, in a folder
    of their own for the whole run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.cert, self.key, self.ca = folder / "server.pem", folder / "server.key", folder / "ca.pem"
        server.cert_chain_pems[0].write_to_path(str(self.cert))
        server.private_key_pem.write_to_path(str(self.key))
        ca.cert_pem.write_to_path(str(self.ca))
        self.tokens = {name: f"{name}-{os.urandom(8).hex()}" for name in ("tests", "gateway", "sidecar")}
        for name, token in self.tokens.items():
            (folder / f"{name}.token").write_text(token)
        (folder / "tokens.yaml").write_text(
            yaml.safe_dump({"tokens": [{"name": n, "sha256": token_hash(t)} for n, t in self.tokens.items()]})
        )
        (folder / "policy.yaml").write_text(yaml.safe_dump(POLICY))

    def server_flags(self) -> list[str]:
        """What a store or gateway is started with."""
        return [
            *("--tls-cert", str(self.cert), "--tls-key", str(self.key)),
            *("--tokens-file", str(self.folder / "tokens.yaml")),
            *("--policy-file", str(self.folder / "policy.yaml")),
        ]

    def store_client_flags(self, part: str) -> list[str]:
        """How a gateway or sidecar calls the store."""
        return ["--store-tls-ca", str(self.ca), "--store-token-file", str(self.folder / f"{part}.token")]

    def server_settings(self) -> dict[str, str]:
        """The same as ``server_flags``, for a store run in the test's own process."""
        return {
            "tls_cert": str(self.cert),
            "tls_key": str(self.key),
            "tokens_file": str(self.folder / "tokens.yaml"),
            "policy_file": str(self.folder / "policy.yaml"),
        }

    def client_env(self) -> dict[str, str]:
        """How the test's own clients call: as the administrator."""
        return {"SLUICE_TLS_CA": str(self.ca), "SLUICE_TOKEN": self.tokens["tests"]}

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@functools.cache
def mesh_security() -> MeshSecurity | None:
    """The run's security material in secure mode (made once, and the test process's client
    variables set from it); None otherwise."""
    if not SECURE:
        return None
    made = MeshSecurity(Path(tempfile.mkdtemp(prefix="sluice-secure-")))
    os.environ.update(made.client_env())
    return made


def server_flags() -> list[str]:
    sec = mesh_security()
    return sec.server_flags() if sec else []


def store_client_flags(part: str) -> list[str]:
    sec = mesh_security()
    return sec.store_client_flags(part) if sec else []


def server_settings() -> dict[str, str]:
    sec = mesh_security()
    return sec.server_settings() if sec else {}


def http_scheme() -> str:
    return "https" if SECURE else "http"


def http_session(**kwargs: Any) -> aiohttp.ClientSession:
    """An HTTP session for the gateway's HTTP listener: in secure mode it trusts the run's CA
    and sends the administrator's token."""
    sec = mesh_security()
    if sec is None:
        return aiohttp.ClientSession(**kwargs)
    headers = {"Authorization": f"Bearer {sec.tokens['tests']}", **kwargs.pop("headers", {})}
    connector = aiohttp.TCPConnector(ssl=sec.ssl_context())
    return aiohttp.ClientSession(headers=headers, connector=connector, **kwargs)


def grpc_channel(target: str) -> grpc.aio.Channel:
    """A bare channel to a store or gateway (for health checks and raw stubs): TLS in secure
    mode, trusting the run's CA."""
    sec = mesh_security()
    if sec is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(sec.ca.read_bytes()))
