"""Gateway settings: flags and ``SLUICE_*`` variables, typed once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from sluice import settings
from sluice.security import SERVER_OPTIONS, STORE_CLIENT_OPTIONS, ServerSecurity, StoreClientSecurity
from sluice.settings import (
    PROCESS_OPTIONS,
    ConfigError,
    Option,
    ProcessSettings,
    parse_bool,
    parse_duration,
    parse_listen_addr,
)
from sluice_gateway.hub import MESSAGE_BUDGET
from sluice_gateway.workers import parse_workers

__all__ = ["OPTIONS", "ConfigError", "Settings", "load"]

OPTIONS: tuple[Option, ...] = (
    Option("addr", parse_listen_addr, "gRPC address (host:port)", env_name="SLUICE_GATEWAY_ADDR"),
    Option("store", str, "the store's address", env_name="SLUICE_STORE_ADDR"),
    Option(
        "http_addr",
        parse_listen_addr,
        "HTTP address: Server-Sent Events, /metrics, /healthz; empty: off",
        env_name="SLUICE_GATEWAY_HTTP_ADDR",
    ),
    Option("reuse_port", parse_bool, "let several gateway processes listen on one port"),
    Option(
        "workers",
        parse_workers,
        "gateway processes on these addresses (SO_REUSEPORT), each a whole gateway; auto: one"
        " per CPU this process may use (its cgroup quota included)",
        env_name="SLUICE_GATEWAY_WORKERS",
    ),
    Option(
        "http_idle_timeout",
        parse_duration,
        "HTTP: close a connection that has not sent a whole request, or sat idle, this long",
    ),
    Option("http_max_connections", int, "HTTP: most connections open at once; more are refused"),
    Option("buffer_size", int, "events held per subscriber before its overflow policy applies"),
    Option("max_buffer_size", int, "the most a subscriber may ask to be held for it"),
    Option("max_batch", int, "most events in one message to a subscriber"),
    Option(
        "flush_interval",
        parse_duration,
        "shortest time between two messages to one subscriber (0: batches that arrive in the same"
        " loop turn share a message)",
    ),
    Option(
        "message_budget",
        int,
        "messages/s to all subscribers the gateway aims for under load: the flush interval grows"
        " to subscribers / budget, so busy subscribers get fewer, larger messages (with --workers,"
        " each worker aims for its share)",
    ),
    Option("heartbeat_interval", parse_duration, "default heartbeat interval of a subscription"),
    Option("ephemeral_ttl", parse_duration, "default time to live of published messages"),
    Option(
        "ephemeral_buffer_bytes",
        int,
        "bytes of published messages queued per subscriber; the oldest go first",
    ),
    Option("reconnect_backoff", parse_duration, "longest wait between attempts to reach the store"),
    Option("grace", parse_duration, "seconds in-flight calls get on shutdown"),
    Option("uvloop", parse_bool, "use uvloop when installed"),
    Option("console", parse_bool, "serve the web console at /console/ on the HTTP address"),
    Option(
        "console_trace_url",
        str,
        "the console's link to an event's trace: a URL with {trace_id} (and {span_id}) in it",
    ),
    *SERVER_OPTIONS,
    *STORE_CLIENT_OPTIONS,
    *PROCESS_OPTIONS,
)


@dataclasses.dataclass(frozen=True)
class Settings(ServerSecurity, StoreClientSecurity, ProcessSettings):
    """The gateway's configuration; see OPTIONS for each field's meaning."""

    addr: str = "127.0.0.1:50052"
    store: str = "127.0.0.1:50051"
    http_addr: str = "127.0.0.1:8052"
    reuse_port: bool = True
    workers: int = 1  # 0: auto
    ephemeral_buffer_bytes: int = 4 << 20
    http_idle_timeout: float = 15.0
    http_max_connections: int = 10_000
    buffer_size: int = 10_000
    max_buffer_size: int = 100_000
    max_batch: int = 1000
    flush_interval: float = 0.0
    message_budget: int = MESSAGE_BUDGET
    heartbeat_interval: float = 5.0
    ephemeral_ttl: float = 30.0
    reconnect_backoff: float = 2.0
    grace: float = 5.0
    uvloop: bool = True
    console: bool = True
    console_trace_url: str = "http://localhost:16686/trace/{trace_id}"

    def __post_init__(self) -> None:
        self.check_process()
        self.check_security()
        for name in ("buffer_size", "max_buffer_size", "max_batch", "message_budget"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.buffer_size > self.max_buffer_size:
            raise ConfigError("buffer_size: must not exceed max_buffer_size")
        for name in ("heartbeat_interval", "ephemeral_ttl", "reconnect_backoff"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.flush_interval < 0:
            raise ConfigError("flush_interval: must not be negative")
        if self.workers != 1 and not self.reuse_port:
            raise ConfigError("workers: more than one worker needs reuse_port")


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """The gateway's settings from flags, ``SLUICE_*`` variables and defaults."""
    return settings.load(Settings, OPTIONS, "sluice-gateway", "Run the Sluice gateway.", argv, env)
