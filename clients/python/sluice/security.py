"""Who is calling and what they may do: TLS that reloads, authentication, the policy engine
and the audit log, shared by the store and the gateway.

Authentication maps each call to a principal, from (in this order) a bearer token in the
``authorization`` metadata (a static API token, compared by its SHA-256 hash, or a JWT
verified offline against a JWKS file) or the client certificate of a mutual-TLS
connection (its URI SAN, such as a SPIFFE ID, else its CN). With no authentication
configured every call is the anonymous principal, allowed everything (what protected
mode keeps to loopback).

The policy (a YAML or JSON file, reloaded when it changes) is a list of rules:

    roles:                       # optional: principals per role
      writers: [orders-app, spiffe://cluster/ns/shop/sa/billing]
    rules:
      - allow: [append, read]    # actions
        streams: ["orders-*"]    # glob patterns (fnmatch); or groups: [...]
        who: [role:writers]      # principal names, role:<name>, or "*"
      - deny: [delete]
        streams: ["*"]
        who: ["*"]

Deny wins over allow; nothing is allowed unless a rule allows it. A pattern that does
not start with "$" never matches the store's own names ("$dlq.…"): those need a pattern
that names them. A read over a prefix is allowed only when one allow rule covers every
name with that prefix and no deny rule could match any of them; a read of every stream
needs an allow of "*" and no deny at all. Decisions are cached per principal, action and
resource until the policy changes.

Nothing cryptographic is written here: PyJWT verifies tokens, grpc and ssl do TLS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluice.credentials import Credentials
from sluice.settings import ConfigError, Option, parse_bool, parse_listen_addr

if TYPE_CHECKING:
    import grpc

ACTIONS = ("append", "read", "delete", "retention", "list", "join", "admin", "publish", "watch")
STREAM_ACTIONS = {"append", "read", "delete", "retention", "list", "publish", "watch"}
GROUP_ACTIONS = {"join", "admin"}
ANONYMOUS_NAME = "anonymous"

audit = logging.getLogger("sluice.audit")


class Unauthenticated(Exception):
    """No credential, or one that does not verify."""


class Denied(Exception):
    """The principal may not do this."""

    def __init__(self, principal: str, action: str, resource: str) -> None:
        super().__init__(f"{principal} may not {action} {resource}")
        self.principal, self.action, self.resource = principal, action, resource


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    name: str
    roles: frozenset[str] = frozenset()
    how: str = "anonymous"  # token, jwt, mtls, anonymous
    # What tells later whether the credential still holds (not part of the identity, so
    # decisions stay cached per principal): a static token's hash, a JWT's or a client
    # certificate's expiry.
    credential: str = dataclasses.field(default="", compare=False)
    expires: float = dataclasses.field(default=0.0, compare=False)

    @property
    def lapses(self) -> float:
        """When the credential stops holding (Unix seconds; 0: never by time): a JWT at its
        expiry plus the clock-skew leeway, a client certificate at its notAfter by this
        server's clock (as the TLS handshake judges it)."""
        if not self.expires:
            return 0.0
        return self.expires + (JWT_LEEWAY if self.how == "jwt" else 0.0)


ANONYMOUS = Principal(ANONYMOUS_NAME)


class Watched:
    """A file read again when its modification time changes (rotated Secrets, policies)."""

    def __init__(self, path: str, parse: Callable[[bytes], Any]) -> None:
        self.path = path
        self.parse = parse
        self._stamp: tuple[float, int] | None = None
        self.value: Any = None

    def get(self) -> Any:
        st = os.stat(self.path)
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._stamp:
            self.value = self.parse(Path(self.path).read_bytes())
            self._stamp = stamp
        return self.value

    def changed(self) -> bool:
        """Whether the file changed since it was last read (it is read again then)."""
        before = self._stamp
        try:
            self.get()
        except (OSError, ValueError):
            return False  # keep what was loaded: a half-written file is not a policy
        return before is not None and self._stamp != before


def _yaml_or_json(raw: bytes) -> Any:
    import yaml

    return yaml.safe_load(raw) or {}


#: How far past its expiry a JWT is still accepted (clock skew between issuer and server).
JWT_LEEWAY = 30.0


def token_hash(token: str) -> str:
    """What a static API token is stored as in the tokens file."""
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Maps a call's metadata and TLS peer to a principal."""

    def __init__(
        self,
        *,
        tokens_file: str = "",
        jwks_file: str = "",
        jwt_secret_file: str = "",
        jwt_issuer: str = "",
        jwt_audience: str = "sluice",
        mtls: bool = False,
    ) -> None:
        self._tokens = Watched(tokens_file, _yaml_or_json) if tokens_file else None
        self._jwks = Watched(jwks_file, lambda raw: raw.decode()) if jwks_file else None
        self._secret = Watched(jwt_secret_file, lambda raw: raw.strip()) if jwt_secret_file else None
        self.issuer = jwt_issuer
        self.audience = jwt_audience
        self.mtls = mtls

    @property
    def configured(self) -> bool:
        return bool(self._tokens or self._jwks or self._secret or self.mtls)

    def principal(
        self, metadata: Mapping[str, str], peer_identity: Sequence[str] = (), cert_expires: float = 0.0
    ) -> Principal:
        """The caller, or Unauthenticated. ``peer_identity``: the verified client
        certificate's URI SANs then CN (empty without mutual TLS); ``cert_expires``: when
        that certificate expires (Unix seconds; 0: unknown). A connection outlives the
        handshake that checked the certificate, so a call on it is refused once the
        certificate has expired, by this server's clock as the handshake judged it."""
        if not self.configured:
            return ANONYMOUS
        auth = metadata.get("authorization", "")
        if auth:
            scheme, _, credential = auth.partition(" ")
            if scheme.lower() != "bearer" or not credential:
                raise Unauthenticated("authorization: expected 'Bearer <token>'")
            return self._bearer(credential.strip())
        if self.mtls and peer_identity:
            if cert_expires and time.time() > cert_expires:
                raise Unauthenticated("the client certificate expired")
            return Principal(peer_identity[0], how="mtls", expires=cert_expires)
        raise Unauthenticated("no credential: send 'authorization: Bearer <token>' or a client certificate")

    def _bearer(self, token: str) -> Principal:
        if token.count(".") == 2 and (self._jwks or self._secret):
            return self._jwt(token)
        if self._tokens is not None:
            digest = token_hash(token)
            for entry in self._tokens.get().get("tokens", []):
                if hmac.compare_digest(str(entry.get("sha256", "")), digest):
                    roles = frozenset(entry.get("roles", ()))
                    return Principal(str(entry["name"]), roles, "token", credential=digest)
        raise Unauthenticated("the token is not one this server knows")

    def _jwt(self, token: str) -> Principal:
        import jwt  # PyJWT: all verification is its

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"bad token: {e}") from None
        alg = header.get("alg", "")
        key: Any
        if alg == "HS256" and self._secret is not None:
            key, algorithms = self._secret.get(), ["HS256"]
        elif alg in ("RS256", "ES256", "EdDSA") and self._jwks is not None:
            keys = jwt.PyJWKSet.from_json(self._jwks.get())
            kid = header.get("kid")
            found = [k for k in keys.keys if kid is None or k.key_id == kid]
            if not found:
                raise Unauthenticated("the token's key is not in the configured JWKS")
            jwk = found[0]
            # The algorithm follows from the key, never from the token alone (no key confusion).
            expected = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}.get(str(jwk.key_type), "")
            if alg != expected:
                raise Unauthenticated(f"the token's alg {alg!r} does not fit its key")
            key, algorithms = jwk.key, [expected]
        else:
            raise Unauthenticated(f"tokens signed with {alg or 'no algorithm'!r} are not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer or None,
                options={"require": ["exp", "sub"]},
                leeway=JWT_LEEWAY,
            )
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"the token does not verify: {e}") from None
        roles = claims.get("roles") or claims.get("groups") or ()
        roles = frozenset(str(r) for r in roles)
        return Principal(str(claims["sub"]), roles, "jwt", expires=float(claims["exp"]))

    def tokens_stamp(self) -> tuple[float, int] | None:
        """When the tokens file last changed (and its size); None without one."""
        if self._tokens is None:
            return None
        try:
            return _stamp(self._tokens.path)[0]
        except OSError:
            return None

    def lapsed(self) -> Callable[[Principal], str]:
        """A check, as of now, of whether a principal's credential still holds: "" if it
        does, else why not (a static token taken out of the tokens file, a JWT past its
        expiry). A tokens file that cannot be read now revokes nothing."""
        now = time.time()
        known: set[str] | None = None
        if self._tokens is not None:
            try:
                known = {str(e.get("sha256", "")) for e in self._tokens.get().get("tokens", [])}
            except Exception:  # a half-written or unreadable file is not a revocation
                known = None

        def check(p: Principal) -> str:
            if p.how == "token" and known is not None and p.credential not in known:
                return "its token was taken out of the tokens file"
            if p.expires and now > p.lapses:  # a JWT's or a client certificate's
                return "its client certificate expired" if p.how == "mtls" else "its token expired"
            return ""

        return check


def peer_certificate(auth_context: Mapping[str, Iterable[bytes]]) -> tuple[list[str], float]:
    """A verified client certificate in gRPC's auth context: its names (``peer_identity``)
    and when it expires (Unix seconds; 0 without one)."""
    pems = list(auth_context.get("x509_pem_cert", ()))
    return peer_identity(auth_context), (_cert_expires(pems[0]) if pems else 0.0)


@functools.lru_cache(maxsize=4096)
def _cert_expires(pem: bytes) -> float:
    """A PEM certificate's notAfter, parsed once per certificate (calls reuse connections)."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def peer_identity(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """A verified client certificate's names as gRPC's auth context gives them: URI SANs
    (say, a SPIFFE ID) first, then the CN."""
    sans = [v.decode() for v in auth_context.get("x509_subject_alternative_name", ())]
    cns = [v.decode() for v in auth_context.get("x509_common_name", ())]
    return [s for s in sans if "://" in s] + cns


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    effect: str  # allow or deny
    actions: frozenset[str]
    kind: str  # streams or groups
    patterns: tuple[str, ...]
    who: tuple[str, ...]

    def applies(self, principal: Principal) -> bool:
        for w in self.who:
            if w == "*" or w == principal.name:
                return True
            if w.startswith("role:") and w[5:] in principal.roles:
                return True
        return False


def matches(pattern: str, name: str) -> bool:
    """A glob that does not start with "$" never matches the store's own names."""
    if name.startswith("$") and not pattern.startswith("$"):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def _literal(pattern: str) -> str:
    """The part of a glob before its first wildcard."""
    for i, ch in enumerate(pattern):
        if ch in "*?[":
            return pattern[:i]
    return pattern


def covers_prefix(pattern: str, prefix: str) -> bool:
    """Whether every name starting with ``prefix`` matches ``pattern``."""
    if prefix.startswith("$") and not pattern.startswith("$"):
        return False
    lit = _literal(pattern)
    return pattern == lit + "*" and prefix.startswith(lit)


def overlaps_prefix(pattern: str, prefix: str) -> bool:
    """Whether some name starting with ``prefix`` may match ``pattern`` (conservative)."""
    lit = _literal(pattern)
    return lit.startswith(prefix) or prefix.startswith(lit)


class Policy:
    """Rules from a file, reloaded when it changes. Without a file: everything allowed."""

    def __init__(self, path: str = "") -> None:
        self._file = Watched(path, _yaml_or_json) if path else None
        self.generation = 0  # bumped at each reload: decisions made before are void
        self.rules: list[Rule] = []
        self.roles: dict[str, set[str]] = {}
        if self._file is not None:
            self._load(self._file.get())

    @property
    def configured(self) -> bool:
        return self._file is not None

    def reload(self) -> bool:
        """Read the file again if it changed; True when the rules changed."""
        if self._file is None or not self._file.changed():
            return False
        self._load(self._file.value)
        audit_event("policy_reload", ANONYMOUS_NAME, "admin", self._file.path, rules=len(self.rules))
        return True

    def _load(self, doc: Mapping[str, Any]) -> None:
        rules = []
        for i, raw in enumerate(doc.get("rules", [])):
            effect = "deny" if "deny" in raw else "allow"
            actions = frozenset(raw[effect])
            unknown = actions - set(ACTIONS) - {"*"}
            if unknown:
                raise ValueError(
                    f"rules[{i}]: unknown actions {sorted(unknown)}; known: {', '.join(ACTIONS)}"
                )
            if "*" in actions:
                actions = frozenset(ACTIONS)
            kind = "groups" if "groups" in raw else "streams"
            rules.append(
                Rule(effect, actions, kind, tuple(raw.get(kind, ["*"])), tuple(raw.get("who", ["*"])))
            )
        self.rules = rules
        self.roles = {role: set(names) for role, names in (doc.get("roles") or {}).items()}
        self.generation += 1
        self._decide.cache_clear()

    def _principal(self, principal: Principal) -> Principal:
        extra = {role for role, names in self.roles.items() if principal.name in names}
        return dataclasses.replace(principal, roles=principal.roles | extra) if extra else principal

    def check(self, principal: Principal, action: str, resource: str, kind: str = "streams") -> None:
        """Raise Denied unless ``principal`` may do ``action`` on ``resource`` (a name; a
        prefix ending with "*", or "*" alone for everything)."""
        if self._file is None:
            return
        if not self._decide(self._principal(principal), action, resource, kind):
            raise Denied(principal.name, action, f"{kind[:-1]} {resource}")

    @functools.lru_cache(maxsize=65536)  # noqa: B019 (the policy lives as long as the process)
    def _decide(self, principal: Principal, action: str, resource: str, kind: str) -> bool:
        rules = [r for r in self.rules if r.kind == kind and action in r.actions and r.applies(principal)]
        if resource.endswith("*"):  # every name with this prefix ("*": every name)
            prefix = resource[:-1]
            if any(r.effect == "deny" and any(overlaps_prefix(p, prefix) for p in r.patterns) for r in rules):
                return False
            return any(
                r.effect == "allow" and any(covers_prefix(p, prefix) for p in r.patterns) for r in rules
            )
        if any(r.effect == "deny" and any(matches(p, resource) for p in r.patterns) for r in rules):
            return False
        return any(r.effect == "allow" and any(matches(p, resource) for p in r.patterns) for r in rules)


Need = tuple[str, str, str]  # action, resource (a name, or a prefix ending with "*"), kind


@dataclasses.dataclass(eq=False)
class Live:
    """A running read (subscription, watch) and the grants it needs."""

    principal: Principal
    needs: list[Need]
    task: asyncio.Task[Any]
    revoked: Need | None = None  # the grant a policy reload took away
    lapsed: str = ""  # why the credential no longer holds


class Guard:
    """Authentication, the policy and the live reads it may have to end, whatever the
    transport: a server asks ``principal`` and ``check``, and registers its live reads."""

    def __init__(self, authenticator: Authenticator, policy: Policy) -> None:
        self.authenticator = authenticator
        self.policy = policy
        self.enabled = authenticator.configured or policy.configured
        self._live: set[Live] = set()
        # A sweep for lapsed credentials looks at every live read only when one may have
        # lapsed: the tokens file changed, or the earliest JWT expiry among them passed.
        self._swept_tokens: tuple[float, int] | None = None
        self._next_expiry = math.inf

    def principal(
        self, metadata: Mapping[str, str], identity: Sequence[str], peer: str, cert_expires: float = 0.0
    ) -> Principal:
        try:
            return self.authenticator.principal(metadata, identity, cert_expires)
        except Unauthenticated as e:
            audit_event("refused", "", "authenticate", "", peer=peer, why=str(e))
            raise

    def check(self, principal: Principal, needs: Iterable[Need], peer: str = "") -> None:
        for action, resource, kind in needs:
            try:
                self.policy.check(principal, action, resource, kind)
            except Denied as e:
                audit_event("refused", principal.name, action, e.resource, peer=peer)
                raise

    def register(self, principal: Principal, needs: list[Need]) -> Live | None:
        """Keep a live read under watch; None when nothing can revoke it."""
        if not self.enabled:
            return None
        task = asyncio.current_task()
        assert task is not None
        live = Live(principal, needs, task)
        self._live.add(live)
        if principal.expires:
            self._next_expiry = min(self._next_expiry, principal.lapses)
        return live

    def unregister(self, live: Live | None) -> None:
        if live is not None:
            self._live.discard(live)

    def reload(self) -> None:
        """Read the policy again if it changed, and end live reads it no longer allows
        (their tasks are cancelled with ``revoked`` set: the handler ends the call with
        PERMISSION_DENIED); end those whose credential no longer holds (``lapsed`` set:
        UNAUTHENTICATED), as NATS ends a connection whose JWT expires."""
        self._reload_policy()
        self._end_lapsed()

    def _end_lapsed(self) -> None:
        tokens = self.authenticator.tokens_stamp()
        if not self._live or (tokens == self._swept_tokens and time.time() <= self._next_expiry):
            return
        self._swept_tokens = tokens
        self._next_expiry = math.inf
        check = self.authenticator.lapsed()
        for live in list(self._live):
            if live.revoked is not None or live.lapsed:
                continue
            why = check(live.principal)
            if why:
                live.lapsed = why
                audit_event("credential_ended", live.principal.name, "authenticate", "", why=why)
                live.task.cancel()
            elif live.principal.expires:
                self._next_expiry = min(self._next_expiry, live.principal.lapses)

    def _reload_policy(self) -> None:
        try:
            changed = self.policy.reload()
        except (ValueError, KeyError, TypeError, OSError) as e:
            logging.getLogger(__name__).error("policy file not loaded, keeping the previous rules: %s", e)
            return
        if not changed:
            return
        for live in list(self._live):
            if live.lapsed:
                continue
            for action, resource, kind in live.needs:
                try:
                    self.policy.check(live.principal, action, resource, kind)
                except Denied:
                    live.revoked = (action, resource, kind)
                    audit_event("revoked", live.principal.name, action, resource)
                    live.task.cancel()
                    break

    async def watch(self, interval: float = 1.0) -> None:
        """Reload the policy whenever its file changes, and end live reads whose credential
        lapsed, once per ``interval`` (run as a task)."""
        while True:
            await asyncio.sleep(interval)
            self.reload()


def audit_event(event: str, principal: str, action: str, resource: str, **extra: object) -> None:
    """One JSON line on the sluice.audit logger: a refusal or an administrative change."""
    record = {"time": round(time.time(), 3), "event": event, "principal": principal, "action": action}
    record["resource"] = resource
    record.update({k: v for k, v in extra.items() if v not in (None, "")})
    audit.info(json.dumps(record, separators=(",", ":"), default=str), extra={"audit": record})


def _stamp(*paths: str) -> tuple[tuple[float, int], ...]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_mtime, st.st_size))
    return tuple(out)


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS for a gRPC server; with ``client_ca``, mutual TLS (a client certificate that CA
    signed is required). The files are read again when they change, at the next handshake:
    rotated certificates are served without a restart, and open connections stay."""
    import grpc

    paths = [p for p in (cert, key, client_ca) if p]

    def configuration() -> grpc.ServerCertificateConfiguration:
        ca = Path(client_ca).read_bytes() if client_ca else None
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    seen = [_stamp(*paths)]
    initial = configuration()

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            now = _stamp(*paths)
            if now == seen[0]:
                return None
            fresh = configuration()
        except (OSError, ValueError) as e:  # mid-rotation: keep serving what was loaded
            logging.getLogger(__name__).warning("TLS files unreadable, keeping the loaded ones: %s", e)
            return None
        seen[0] = now
        logging.getLogger(__name__).info("TLS certificate reloaded from %s", cert)
        return fresh

    return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=bool(client_ca))


def ssl_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """TLS for an HTTP server (the gateway's); ``reload_ssl`` loads rotated files into it."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def reload_ssl(ctx: ssl.SSLContext, cert: str, key: str, interval: float = 5.0) -> None:
    """Load ``cert`` and ``key`` into ``ctx`` again whenever they change (run as a task):
    new connections get the renewed certificate, open ones stay."""
    seen = _stamp(cert, key)
    while True:
        await asyncio.sleep(interval)
        try:
            now = _stamp(cert, key)
            if now != seen:
                ctx.load_cert_chain(cert, key)
                seen = now
                logging.getLogger(__name__).info("TLS certificate reloaded from %s", cert)
        except (OSError, ssl.SSLError) as e:  # mid-rotation: keep what was loaded
            logging.getLogger(__name__).warning("TLS files unreadable, keeping the loaded ones: %s", e)


def is_loopback(addr: str) -> bool:
    host = addr.rpartition(":")[0].strip("[]") or "0.0.0.0"
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def protected_mode(addr: str, setting: str, secured: bool, insecure: bool) -> str:
    """Refuse to serve beyond loopback without TLS or authentication, unless told to
    (``--insecure``); "" when fine, else what to set."""
    if secured or insecure or is_loopback(addr):
        return ""
    return (
        f"{setting}: {addr} is reachable beyond this machine but no authentication is configured;"
        " set --tokens-file, --jwks-file or --jwt-secret-file (and --tls-cert/--tls-key,"
        " --tls-client-ca for mutual TLS), or bind 127.0.0.1, or pass --insecure to serve"
        " everyone anyway"
    )


#: A server's security settings (the store's and the gateway's), as flags and variables.
SERVER_OPTIONS: tuple[Option, ...] = (
    Option("tls_cert", str, "TLS: the server certificate (PEM); re-read when it changes"),
    Option("tls_key", str, "TLS: its private key (PEM)"),
    Option("tls_client_ca", str, "mutual TLS: require client certificates this CA signed"),
    Option("tokens_file", str, "static API tokens: a YAML file of {name, sha256, roles}"),
    Option("jwks_file", str, "JWT bearer tokens: the keys that sign them (a JWKS file)"),
    Option("jwt_secret_file", str, "JWT bearer tokens signed with HS256: the shared secret"),
    Option("jwt_issuer", str, "JWT: the issuer tokens must name (empty: any)"),
    Option("jwt_audience", str, "JWT: the audience tokens must name"),
    Option("policy_file", str, "who may do what (YAML); reloaded when it changes or on SIGHUP"),
    Option(
        "insecure",
        parse_bool,
        "serve beyond loopback without authentication (otherwise refused: protected mode)",
    ),
    Option(
        "health_addr",
        parse_listen_addr,
        "plaintext gRPC health alone, for the kubelet's probes (they cannot speak TLS); empty: off",
    ),
)


@dataclasses.dataclass(frozen=True)
class ServerSecurity:
    """The security fields of a server's settings (see SERVER_OPTIONS)."""

    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tokens_file: str = ""
    jwks_file: str = ""
    jwt_secret_file: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = "sluice"
    policy_file: str = ""
    insecure: bool = False
    health_addr: str = ""

    def check_security(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert: needs tls_key too (and the other way round)")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("tls_client_ca: mutual TLS needs tls_cert and tls_key")

    def guard(self) -> Guard:
        authenticator = Authenticator(
            tokens_file=self.tokens_file,
            jwks_file=self.jwks_file,
            jwt_secret_file=self.jwt_secret_file,
            jwt_issuer=self.jwt_issuer,
            jwt_audience=self.jwt_audience,
            mtls=bool(self.tls_client_ca),
        )
        return Guard(authenticator, Policy(self.policy_file))

    def grpc_credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls_cert:
            return None
        return server_credentials(self.tls_cert, self.tls_key, self.tls_client_ca)


#: How a process (the gateway, the sidecar) reaches the store when the store asks for
#: credentials.
STORE_CLIENT_OPTIONS: tuple[Option, ...] = (
    Option("store_tls_ca", str, "TLS to the store: the CA that signed its certificate"),
    Option("store_tls_cert", str, "mutual TLS to the store: this process's certificate"),
    Option("store_tls_key", str, "mutual TLS to the store: its key"),
    Option("store_token_file", str, "a bearer token for the store, in a file read again when it changes"),
)


@dataclasses.dataclass(frozen=True)
class StoreClientSecurity:
    store_tls_ca: str = ""
    store_tls_cert: str = ""
    store_tls_key: str = ""
    store_token_file: str = ""

    def store_credentials(self) -> Credentials | None:
        if not (self.store_tls_ca or self.store_tls_cert or self.store_token_file):
            return None
        return Credentials(
            ca_file=self.store_tls_ca,
            cert_file=self.store_tls_cert,
            key_file=self.store_tls_key,
            token_file=self.store_token_file,
        )
