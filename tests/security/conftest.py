"""Credentials made in the tests: a CA and certificates (trustme), signing keys and a JWKS
(cryptography, PyJWT), static API tokens stored as hashes, and a policy file."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sluice import Credentials, Unauthenticated
from sluice.security import token_hash
from sluice.v1 import streams_pb2 as pb
from tests.conftest import StoreProcess, reap
from tests.gateway.conftest import GatewayProcess

AUDIENCE = "sluice"
ISSUER = "https://issuer.test"

POLICY: dict[str, Any] = {
    "roles": {"admins": ["root"]},
    "rules": [
        {"allow": ["*"], "streams": ["*", "$*"], "who": ["role:admins"]},
        {"allow": ["*"], "groups": ["*"], "who": ["role:admins"]},
        {"allow": ["append", "read", "publish", "watch"], "streams": ["orders-*"], "who": ["orders-app"]},
        {"deny": ["read", "watch"], "streams": ["orders-secret-*"], "who": ["orders-app"]},
        {"allow": ["join", "list"], "groups": ["orders-app"], "who": ["orders-app"]},
        {"allow": ["read"], "streams": ["orders-?"], "who": ["auditor"]},
        {"allow": ["append", "read"], "streams": ["mesh-*"], "who": ["spiffe://test/ns/shop/sa/orders"]},
    ],
}
TOKENS = {
    "root": "root-secret-token",
    "orders-app": "orders-secret-token",
    "auditor": "auditor-token",
    "gateway": "gateway-token",
}


class Keys:
    """An RSA signing key published in a JWKS file, and tokens signed with it."""

    def __init__(self, folder: Path) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
        self.jwks = folder / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [jwk]}))

    def token(self, sub: str, *, key: Any = None, alg: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        body = {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 300, **claims}
        return jwt.encode(body, key or self.private, algorithm=alg, headers={"kid": "k1"})


HOUR = datetime.timedelta(hours=1)


class Setup:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert, self.server_key = folder / "server.pem", folder / "server.key"
        self.server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        self.server.private_key_pem.write_to_path(str(self.server_key))
        self.ca_file = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.keys = Keys(folder)
        self.tokens = folder / "tokens.yaml"
        self.tokens.write_text(
            yaml.safe_dump({"tokens": [{"name": n, "sha256": token_hash(t)} for n, t in TOKENS.items()]})
        )
        self.policy = folder / "policy.yaml"
        self.write_policy(POLICY)

    def write_policy(self, policy: dict[str, Any]) -> None:
        tmp = self.policy.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(policy))
        tmp.replace(self.policy)  # whole or not at all, as a ConfigMap update lands

    def take_out_token(self, name: str) -> None:
        """Remove ``name``'s token from the tokens file (as an operator revoking it does)."""
        doc = yaml.safe_load(self.tokens.read_text())
        doc["tokens"] = [t for t in doc["tokens"] if t["name"] != name]
        self.tokens.write_text(yaml.safe_dump(doc))

    def gateway(self, store: str, folder: Path, mtls: Credentials | None = None) -> GatewayProcess:
        """A gateway with TLS, tokens and the policy, reaching ``store`` as "gateway";
        ``mtls``: it asks for client certificates, and its readiness check uses these."""
        token = folder / "gateway.token"
        token.write_text(TOKENS["gateway"])
        return GatewayProcess(
            store,
            *self.store_flags(mtls is not None),
            *("--store-tls-ca", str(self.ca_file), "--store-token-file", str(token)),
            credentials=mtls or self.creds("root"),
        )

    def cert_creds(self, uri: str, valid_for: datetime.timedelta = HOUR) -> Credentials:
        """Credentials with a client certificate naming ``uri`` (see client_cert)."""
        cert, key = self.client_cert(uri, valid_for=valid_for)
        return Credentials(ca_file=str(self.ca_file), cert_file=str(cert), key_file=str(key))

    def client_cert(
        self, uri: str, ca: trustme.CA | None = None, valid_for: datetime.timedelta = HOUR
    ) -> tuple[Path, Path]:
        """A client certificate naming ``uri`` (a URI SAN, as a SPIFFE ID is) and its last
        path segment as CN, signed by our CA or ``ca``, expiring ``valid_for`` from now."""
        signer = ca or self.ca
        ca_key = serialization.load_pem_private_key(signer.private_key_pem.bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(signer.cert_pem.bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri.rsplit("/", 1)[-1])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + valid_for)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        n = len(list(self.folder.glob("client-*.pem")))
        c, k = self.folder / f"client-{n}.pem", self.folder / f"client-{n}.key"
        c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        k.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return c, k

    def store_flags(self, mtls: bool = False) -> list[str]:
        flags = [
            *("--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key)),
            *("--tokens-file", str(self.tokens), "--jwks-file", str(self.keys.jwks)),
            *("--jwt-issuer", ISSUER, "--policy-file", str(self.policy)),
        ]
        return [*flags, "--tls-client-ca", str(self.ca_file)] if mtls else flags

    def creds(self, name: str = "", **kw: Any) -> Credentials:
        token = TOKENS.get(name, "")
        return Credentials(ca_file=str(self.ca_file), token=kw.pop("token", token), **kw)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


@pytest.fixture
async def secure_store(setup: Setup, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[StoreProcess]]]:
    """Store processes with TLS, tokens, JWTs and the policy (``mtls=True``: client
    certificates required)."""
    made: list[StoreProcess] = []

    async def start(mtls: bool = False, *extra: str) -> StoreProcess:
        p = StoreProcess(
            f"sqlite:///{tmp_path}/secure{len(made)}.db",
            *setup.store_flags(mtls),
            *extra,
            log=tmp_path / "store.log",
        )
        made.append(p)
        await p.start()
        return p

    yield start
    await reap(made)


async def ended_unauthenticated(items: AsyncIterator[Any], timeout: float) -> str:
    """The message a subscription or watch ends with, which must be UNAUTHENTICATED (within
    ``timeout``): its credential lapsed."""
    with pytest.raises(Unauthenticated) as ended:
        async with asyncio.timeout(timeout):
            async for _ in items:
                pass
    return ended.value.message


async def next_event(items: AsyncIterator[Any], timeout: float) -> int:
    """The position of the next event a subscription or watch yields (within ``timeout``)."""
    async with asyncio.timeout(timeout):
        async for item in items:
            if isinstance(item, pb.RecordedEvent):
                return int(item.position)
    raise AssertionError("ended before an event")
