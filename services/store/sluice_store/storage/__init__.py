"""Storage backends, chosen by URL scheme."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlparse

from sluice.settings import redact
from sluice_store.config import ConfigError, Settings
from sluice_store.storage.base import Storage


def _sqlite(url: str, settings: Settings) -> Storage:
    from sluice_store.storage.sqlite import SQLiteStorage

    # As in SQLAlchemy: sqlite:///relative/path.db and sqlite:////absolute/path.db.
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
    if not path:
        raise ConfigError(f"db: no file path in {url!r} (try sqlite:///./data/sluice.db)")
    return SQLiteStorage(
        path,
        durability=settings.durability,
        archive_dir=settings.archive_dir,
        prefix_rules=settings.retention,
        cache_size=settings.stream_cache,
    )


def _postgres(url: str, settings: Settings) -> Storage:
    from sluice_store.storage.postgres import PostgresStorage

    return PostgresStorage(
        url,
        archive_dir=settings.archive_dir,
        prefix_rules=settings.retention,
        poll_interval=settings.db_poll_interval,
        pool_size=settings.db_pool_size,
        password_file=settings.db_password_file,
    )


BACKENDS: dict[str, Callable[[str, Settings], Storage]] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
    "postgres": _postgres,
}


def open_storage(settings: Settings) -> Storage:
    """The backend for ``settings.db`` (not yet opened)."""
    scheme = urlparse(settings.db).scheme
    try:
        factory = BACKENDS[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        shown = redact(settings.db)
        raise ConfigError(f"db: unknown scheme {scheme!r} in {shown!r}; known: {known}") from None
    return factory(settings.db, settings)
