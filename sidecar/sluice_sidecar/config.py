"""Sidecar settings: flags and ``SLUICE_*`` variables, typed once."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from sluice import settings
from sluice.names import MAX_MEMBER_ID, has_control
from sluice.security import STORE_CLIENT_OPTIONS, StoreClientSecurity
from sluice.settings import (
    PROCESS_OPTIONS,
    ConfigError,
    Option,
    ProcessSettings,
    parse_bool,
    parse_duration,
    parse_listen_addr,
)

__all__ = ["OPTIONS", "ConfigError", "Settings", "load"]


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _default_member() -> str:
    return os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or socket.gethostname()


OPTIONS: tuple[Option, ...] = (
    Option("store", str, "the store's address", env_name="SLUICE_STORE_ADDR"),
    Option("group", str, "consumer group to join (required)"),
    Option("member_id", str, "stable member id; default: POD_NAME, HOSTNAME or the host name"),
    Option("create_group", parse_bool, "create the group at start if it does not exist"),
    Option("prefixes", _csv, "create: stream prefixes the group reads, comma-separated"),
    Option("types", _csv, "create: event types the group reads, comma-separated"),
    Option("partitions", int, "create: partition count"),
    Option("start", str, "create: where the group starts: start or end"),
    Option("lease", parse_duration, "create: member lease"),
    Option("max_attempts", int, "create: deliveries before an event is dead-lettered"),
    Option("initial_backoff", parse_duration, "create: wait before the first retry (doubles)"),
    Option("max_backoff", parse_duration, "create: longest wait between retries"),
    Option("delivery", str, "how events reach the app: http, grpc or pull"),
    Option("app_url", str, "http: where events are POSTed"),
    Option("app_grpc", str, "grpc: the app's AppCallback address"),
    Option(
        "app_health_path",
        str,
        "http: a path on the app's port answering 2xx while it is up; default: a TCP connect",
    ),
    Option("app_probe_interval", parse_duration, "while the app does not answer: how often to ask"),
    Option(
        "app_down_grace",
        parse_duration,
        "an app not answering this long: give its partitions up until it answers",
    ),
    Option("batch", int, "http: deliver up to this many events per request (0: one at a time)"),
    Option("max_in_flight", int, "deliveries in progress at once, across partitions"),
    Option("delivery_timeout", parse_duration, "how long one delivery may take"),
    Option("commit_interval", parse_duration, "how often handled positions are committed"),
    Option("drain_timeout", parse_duration, "on SIGTERM, how long in-flight work may finish"),
    Option("http_addr", parse_listen_addr, "local HTTP: publish, status, health, readiness"),
    Option("grpc_addr", parse_listen_addr, "local gRPC: Pull, Publish, Status"),
    Option(
        "probe_addr",
        parse_listen_addr,
        "HTTP for the kubelet's probes, /healthz and /readyz only (e.g. 0.0.0.0:3501); empty: none",
    ),
    Option(
        "http_idle_timeout",
        parse_duration,
        "HTTP: close a connection that has not sent a whole request, or sat idle, this long",
    ),
    Option("http_max_connections", int, "HTTP: most connections open at once; more are refused"),
    Option("app_id", str, "the app's name in published events' metadata; default: the group"),
    *STORE_CLIENT_OPTIONS,
    *PROCESS_OPTIONS,
)


def _check_app_url(url: str) -> None:
    """Refuse an app URL that cannot be what was meant (say, a missing port annotation)."""
    where = "in Kubernetes the pod annotations sluice.dev/app-port and sluice.dev/app-path"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
        ok = False
    else:
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    if not ok or (parts.netloc.endswith(":") and port is None):
        raise ConfigError(f"app_url: expected http://host:port/path, got {url!r} ({where})")


@dataclasses.dataclass(frozen=True)
class Settings(StoreClientSecurity, ProcessSettings):
    store: str = "127.0.0.1:50051"
    group: str = ""
    member_id: str = ""
    create_group: bool = True
    prefixes: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    partitions: int = 12
    start: str = "end"
    lease: float = 10.0
    max_attempts: int = 5
    initial_backoff: float = 1.0
    max_backoff: float = 60.0
    delivery: str = "http"
    app_url: str = "http://127.0.0.1:8080/events"
    app_grpc: str = "127.0.0.1:50062"
    app_health_path: str = ""
    app_probe_interval: float = 0.5
    app_down_grace: float = 5.0
    batch: int = 0
    max_in_flight: int = 64
    delivery_timeout: float = 10.0
    commit_interval: float = 0.2
    drain_timeout: float = 10.0
    http_addr: str = "127.0.0.1:3500"
    grpc_addr: str = "127.0.0.1:50061"
    probe_addr: str = ""
    http_idle_timeout: float = 15.0
    http_max_connections: int = 256
    app_id: str = ""

    def __post_init__(self) -> None:
        self.check_process()
        if not self.group:
            raise ConfigError(
                "group: required (SLUICE_GROUP or --group; in Kubernetes the pod annotation sluice.dev/group)"
            )
        if self.delivery == "http":
            _check_app_url(self.app_url)
        if self.app_health_path and not self.app_health_path.startswith("/"):
            raise ConfigError(f"app_health_path: a path starting with '/', got {self.app_health_path!r}")
        if self.delivery not in ("http", "grpc", "pull"):
            raise ConfigError(f"delivery: expected http, grpc or pull, got {self.delivery!r}")
        if self.start not in ("start", "end"):
            raise ConfigError(f"start: expected start or end, got {self.start!r}")
        if self.max_in_flight < 1 or self.batch < 0 or self.partitions < 1:
            raise ConfigError("max_in_flight: must be positive (and batch, partitions not negative)")
        if not self.member_id:
            object.__setattr__(self, "member_id", _default_member())
        if len(self.member_id) > MAX_MEMBER_ID or has_control(self.member_id):
            raise ConfigError(
                f"member_id: at most {MAX_MEMBER_ID} characters without control characters,"
                f" got {len(self.member_id)} characters"
            )
        if not self.app_id:
            object.__setattr__(self, "app_id", self.group)


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """The sidecar's settings from flags, ``SLUICE_*`` variables and defaults."""
    return settings.load(Settings, OPTIONS, "sluice-sidecar", "Run a Sluice sidecar.", argv, env)
