"""Backup, restore and verify a store's SQLite file, for ``sluice admin``.

A backup is taken online: SQLite's backup API copies the file in one step inside a read
transaction, so it is a consistent snapshot at one commit while the store goes on
appending (WAL lets a reader and the writer run side by side). A restore copies a backup
into a fresh place and gives it a new store identity: gateways and sidecars that knew
the store before notice that it is another one (positions after the backup's may be
reused). Verify checks what the store relies on and reports what it finds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
import uuid
from pathlib import Path


def _path(db: str) -> str:
    """A SQLite file from a store URL (sqlite:///path) or a plain path."""
    return db.removeprefix("sqlite:///") if db.startswith("sqlite:///") else db


@dataclasses.dataclass
class Summary:
    path: str
    head: int
    events: int
    streams: int
    groups: int
    store_id: str
    bytes: int


def summary(path: str) -> Summary:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        head = db.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]
        events = db.execute("SELECT count(*) FROM events").fetchone()[0]
        streams = db.execute("SELECT count(*) FROM streams").fetchone()[0]
        groups = db.execute("SELECT count(*) FROM groups").fetchone()[0]
        store_id = db.execute("SELECT value FROM store_info WHERE key = 'store_id'").fetchone()[0]
    return Summary(path, head, events, streams, groups, store_id, os.path.getsize(path))


def _copy(source: str, to: Path) -> None:
    """A consistent copy of the store file ``source`` (with what its WAL holds) at ``to``,
    as one self-contained file, synced; ValueError when ``source`` is no store's file."""
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise ValueError(f"cannot read a store at {source}: {e}") from None
    with contextlib.closing(src):
        try:
            src.execute("SELECT value FROM store_info WHERE key = 'store_id'").fetchone()
        except sqlite3.Error as e:
            raise ValueError(f"cannot read a store at {source}: {e}") from None
        with contextlib.closing(sqlite3.connect(to)) as dst:
            src.backup(dst)  # all pages in one step: one read transaction, one snapshot
            dst.execute("PRAGMA journal_mode = DELETE")  # a single self-contained file
    with open(to, "rb+") as fh:
        os.fsync(fh.fileno())


def backup(db: str, to: str) -> Summary:
    """A consistent copy of a running store's file at ``to`` (which must not exist).
    Raises ValueError when ``db`` is not a store's file; nothing is left at ``to`` then."""
    target = Path(to)
    if target.exists():
        raise FileExistsError(f"{target} exists: back up to a new file")
    partial = target.with_name(target.name + ".partial")
    try:
        _copy(_path(db), partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return summary(str(target))


def restore(backup_file: str, db: str) -> Summary:
    """The backup as a store file at ``db`` (which must not exist), with a new identity.
    The backup is copied as ``backup`` copies (a store's own file given instead keeps what
    its WAL holds); one that verify finds fault with is refused (ValueError naming the
    problems), and nothing is left at ``db``."""
    target = Path(_path(db))
    if target.exists():
        raise FileExistsError(f"{target} exists: restore into a fresh data directory")
    if not Path(backup_file).is_file():
        raise FileNotFoundError(f"{backup_file}: no such backup file")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        try:
            _copy(_path(backup_file), partial)
        except ValueError as e:
            raise ValueError(f"{backup_file} is not a sound backup: {e}") from None
        problems = verify(str(partial))
        if problems:
            raise ValueError(f"{backup_file} is not a sound backup: {'; '.join(problems[:5])}")
        with contextlib.closing(sqlite3.connect(partial)) as conn:
            conn.execute("UPDATE store_info SET value = ? WHERE key = 'store_id'", (str(uuid.uuid4()),))
            conn.commit()
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return summary(str(target))


#: What verify reads; the same SQL on SQLite and PostgreSQL.
QUERIES = {
    "orphans": "SELECT count(*) FROM events WHERE stream_id NOT IN (SELECT id FROM streams)",
    "streams": (
        "SELECT s.name, s.last_revision, s.last_position, count(e.position), min(e.revision),"
        " max(e.revision), max(e.position) FROM streams s LEFT JOIN events e ON e.stream_id = s.id"
        " GROUP BY s.id, s.name, s.last_revision, s.last_position"
    ),
    "unordered": (
        "SELECT count(*) FROM (SELECT position, lag(position) OVER (PARTITION BY stream_id"
        " ORDER BY revision) AS before FROM events) AS x WHERE before IS NOT NULL AND before >= position"
    ),
    "head": "SELECT coalesce(max(position), 0) FROM events",
    "top": "SELECT coalesce(max(last_position), 0) FROM streams",
    "cursors": "SELECT grp, partition, position FROM group_cursors",
}


def _problems(rows: dict[str, list[tuple[object, ...]]]) -> list[str]:
    problems: list[str] = []
    orphans = int(rows["orphans"][0][0])  # type: ignore[call-overload]
    if orphans:
        problems.append(f"{orphans} events belong to no stream")
    # Each stream: the revisions stored are dense, end at or below its last revision, and
    # its positions grow with its revisions.
    for name, last_rev, last_pos, count, lo, hi, top in rows["streams"]:
        if not count:
            continue
        lo_, hi_, count_ = int(lo), int(hi), int(count)  # type: ignore[call-overload]
        if hi_ - lo_ + 1 != count_:
            problems.append(
                f"stream {name!r}: revisions {lo_}..{hi_} stored with {hi_ - lo_ + 1 - count_} missing"
            )
        if hi_ > int(last_rev):  # type: ignore[call-overload]
            problems.append(f"stream {name!r}: revision {hi_} stored beyond its last revision {last_rev}")
        if int(top) > int(last_pos):  # type: ignore[call-overload]
            problems.append(f"stream {name!r}: position {top} stored beyond its last position {last_pos}")
    unordered = int(rows["unordered"][0][0])  # type: ignore[call-overload]
    if unordered:
        problems.append(f"{unordered} events have a position below their stream's previous event")
    head = max(int(rows["head"][0][0]), int(rows["top"][0][0]))  # type: ignore[call-overload]
    for grp, partition, position in rows["cursors"]:
        if int(position) > head + 1:  # type: ignore[call-overload]
            problems.append(f"group {grp!r} partition {partition}: cursor {position} beyond the head {head}")
    return problems


def verify(db: str) -> list[str]:
    """What is wrong with a store (its SQLite file, or its PostgreSQL schema); empty when
    nothing is."""
    if db.startswith(("postgresql://", "postgres://")):
        return asyncio.run(_verify_postgres(db))
    path = _path(db)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        return [f"cannot open {path}: {e}"]
    with contextlib.closing(conn):  # closed, not left for the collector: a restore renames the file next
        try:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            rows = {k: list(conn.execute(q)) for k, q in QUERIES.items()}
        except sqlite3.DatabaseError as e:
            return [f"not a readable store database: {e}"]
    problems = [f"integrity: {r}" for r in result[:20]] if result != ["ok"] else []
    return problems + _problems(rows)


async def _verify_postgres(url: str) -> list[str]:
    import asyncpg

    from sluice_store.storage.postgres import parse_url

    dsn, schema = parse_url(url)
    try:
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    except (OSError, asyncpg.PostgresError) as e:
        return [f"cannot connect: {e}"]
    try:
        rows = {k: [tuple(r) for r in await conn.fetch(q)] for k, q in QUERIES.items()}
        head = await conn.fetchval("SELECT position FROM head")
    except asyncpg.PostgresError as e:
        return [f"not a readable store schema: {e}"]
    finally:
        await conn.close()
    rows["head"] = [(max(int(rows["head"][0][0]), int(head or 0)),)]
    return _problems(rows)
