"""Store settings: every option is a flag and a ``SLUICE_*`` environment variable, typed here once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from sluice import settings
from sluice.security import SERVER_OPTIONS, ServerSecurity
from sluice.settings import (
    PROCESS_OPTIONS,
    ConfigError,
    Option,
    ProcessSettings,
    parse_bool,
    parse_listen_addr,
)
from sluice_store.retention import Policy, parse_duration

__all__ = ["OPTIONS", "ConfigError", "Settings", "load"]


def _parse_prefix_rules(text: str) -> dict[str, Policy]:
    """``"orders-=max_count:1000,max_age:7d;tmp.=ttl:30s"`` -> {prefix: Policy}."""
    rules: dict[str, Policy] = {}
    for chunk in filter(None, (c.strip() for c in text.split(";"))):
        prefix, sep, spec = chunk.partition("=")
        if not sep or not prefix:
            raise ValueError(f"expected PREFIX=RULES, got {chunk!r}")
        rules[prefix] = Policy.parse(spec)
    return rules


#: The longest stream name any store accepts (max_stream_name is capped at it).
NAME_LIMIT = 4096

OPTIONS: tuple[Option, ...] = (
    Option(
        "addr",
        parse_listen_addr,
        "address the gRPC server listens on (host:port)",
        env_name="SLUICE_STORE_ADDR",  # the variable clients use to find the store
    ),
    Option(
        "db",
        str,
        "storage URL: sqlite:///path/to/file.db (the embedded default) or"
        " postgresql://user@host:5432/db[?schema=name] (several replicas may share it)",
    ),
    Option(
        "durability",
        str,
        "SQLite sync mode: full (fsync each group commit; survives power loss), "
        "normal (survives a crash of the process), off (tests only)",
    ),
    Option("archive_dir", str, "directory for archived events (gzip JSON Lines); empty: none"),
    Option(
        "retention",
        _parse_prefix_rules,
        "retention by stream prefix: 'PREFIX=max_count:N,max_age:7d,max_bytes:N,ttl:30s;...'",
    ),
    Option("reclaim_interval", parse_duration, "how often expired events are reclaimed"),
    Option("max_event_bytes", int, "largest serialized event accepted"),
    Option("max_request_bytes", int, "largest request message accepted"),
    Option("max_events_per_request", int, "most events in one append request"),
    Option("max_stream_name", int, "longest stream name, in characters"),
    Option("max_read_batch", int, "most events in one Read/Subscribe message"),
    Option("subscriber_buffer", int, "live events buffered per subscriber before catch-up"),
    Option(
        "max_subscriptions",
        int,
        "most Subscribe calls open at once in this process; more are refused with"
        " LIMIT_EXCEEDED (0: no limit)",
    ),
    Option(
        "disk_reserve",
        int,
        "SQLite: bytes kept in a file beside the database and freed when the disk fills, so the"
        " store can checkpoint, reclaim and recover (0: none)",
    ),
    Option(
        "ephemeral_buffer_bytes",
        int,
        "bytes of Broadcast messages queued per live subscriber; the oldest go first",
    ),
    Option("ephemeral_total_bytes", int, "bytes of Broadcast messages queued for all subscribers"),
    Option("heartbeat_interval", parse_duration, "default subscription heartbeat interval"),
    Option("stream_cache", int, "stream states kept in memory"),
    Option(
        "db_poll_interval",
        parse_duration,
        "PostgreSQL: how often each replica checks the head for commits that a lost"
        " notification did not announce",
    ),
    Option("db_pool_size", int, "PostgreSQL: connections per store process"),
    Option(
        "db_password_file",
        str,
        "PostgreSQL: read the password from this file at each connect (a mounted Secret key;"
        " it may rotate); overrides one in the URL",
    ),
    Option(
        "max_connection_age",
        parse_duration,
        "ask clients to reconnect after this long (0: never), so that clients spread over"
        " replicas that were added since; streams open then keep going to their end",
    ),
    Option("grace", parse_duration, "seconds in-flight RPCs get on shutdown"),
    Option("uvloop", parse_bool, "use uvloop when installed"),
    Option(
        "metrics_addr", parse_listen_addr, "Prometheus scrape of the store's metrics at /metrics; empty: off"
    ),
    *SERVER_OPTIONS,
    *PROCESS_OPTIONS,
)


@dataclasses.dataclass(frozen=True)
class Settings(ServerSecurity, ProcessSettings):
    """The store's configuration; see OPTIONS for each field's meaning."""

    addr: str = "127.0.0.1:50051"
    db: str = "sqlite:///./data/sluice.db"
    durability: str = "full"
    archive_dir: str = ""
    retention: Mapping[str, Policy] = dataclasses.field(default_factory=dict)
    reclaim_interval: float = 1.0
    max_event_bytes: int = 1 << 20
    max_request_bytes: int = 16 << 20
    max_events_per_request: int = 10_000
    max_stream_name: int = 256
    max_read_batch: int = 1000
    subscriber_buffer: int = 10_000
    max_subscriptions: int = 0
    disk_reserve: int = 16 << 20
    ephemeral_buffer_bytes: int = 4 << 20
    ephemeral_total_bytes: int = 64 << 20
    heartbeat_interval: float = 5.0
    stream_cache: int = 200_000
    db_poll_interval: float = 1.0
    db_pool_size: int = 10
    db_password_file: str = ""
    metrics_addr: str = ""
    max_connection_age: float = 0.0
    grace: float = 10.0
    uvloop: bool = True

    def __post_init__(self) -> None:
        self.check_process()
        self.check_security()
        if self.durability not in ("full", "normal", "off"):
            raise ConfigError(f"durability: expected full, normal or off, got {self.durability!r}")
        for name in (
            "max_event_bytes",
            "max_request_bytes",
            "max_events_per_request",
            "max_stream_name",
            "max_read_batch",
            "subscriber_buffer",
            "ephemeral_buffer_bytes",
            "ephemeral_total_bytes",
            "stream_cache",
            "db_pool_size",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.max_subscriptions < 0:
            raise ConfigError(
                f"max_subscriptions: must be 0 (no limit) or more, got {self.max_subscriptions}"
            )
        if self.max_stream_name > NAME_LIMIT:
            raise ConfigError(f"max_stream_name: at most {NAME_LIMIT}, got {self.max_stream_name}")
        if self.max_event_bytes > self.max_request_bytes:
            raise ConfigError("max_event_bytes: must not exceed max_request_bytes")


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """The store's settings from flags, ``SLUICE_*`` variables and defaults."""
    return settings.load(Settings, OPTIONS, "sluice-store", "Run the Sluice store.", argv, env)
