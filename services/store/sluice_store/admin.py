"""Backup, restore and verify a store's SQLite file, for ``sluice admin``.

A backup is taken online: SQLite's backup API copies the file in one step inside a read
transaction, so it is a consistent snapshot at one commit while the store goes on
appending (WAL lets a reader and the writer run side by side). A restore copies a backup
into a fresh place and gives it a new store identity: gateways and sidecars that knew
the store before notice that it is another one (positions after the backup's may be
reused). Verify checks what the store relies on and reports what it finds.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
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


def backup(db: str, to: str) -> Summary:
    """A consistent copy of a running store's file at ``to`` (which must not exist)."""
    source, target = _path(db), Path(to)
    if target.exists():
        raise FileExistsError(f"{target} exists: back up to a new file")
    partial = target.with_name(target.name + ".partial")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(partial)
    try:
        src.backup(dst)  # all pages in one step: one read transaction, one snapshot
        dst.execute("PRAGMA journal_mode = DELETE")  # a single self-contained file
    finally:
        dst.close()
        src.close()
    with open(partial, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(partial, target)
    return summary(str(target))


def restore(backup_file: str, db: str) -> Summary:
    """The backup as a store file at ``db`` (which must not exist), with a new identity."""
    target = Path(_path(db))
    if target.exists():
        raise FileExistsError(f"{target} exists: restore into a fresh data directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(backup_file, partial)
    with sqlite3.connect(partial) as conn:
        conn.execute("UPDATE store_info SET value = ? WHERE key = 'store_id'", (str(uuid.uuid4()),))
    os.replace(partial, target)
    return summary(str(target))


def verify(db: str) -> list[str]:
    """What is wrong with a store file; empty when nothing is."""
    path = _path(db)
    problems: list[str] = []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        return [f"cannot open {path}: {e}"]
    with conn:
        try:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as e:
            return [f"not a readable SQLite database: {e}"]
        if result != ["ok"]:
            problems += [f"integrity: {r}" for r in result[:20]]
        orphans = conn.execute(
            "SELECT count(*) FROM events WHERE stream_id NOT IN (SELECT id FROM streams)"
        ).fetchone()[0]
        if orphans:
            problems.append(f"{orphans} events belong to no stream")
        # Each stream: the revisions stored are dense, end at its last revision, and its
        # positions grow with its revisions.
        rows = conn.execute(
            "SELECT s.name, s.last_revision, s.last_position, count(e.position), min(e.revision),"
            " max(e.revision), max(e.position) FROM streams s LEFT JOIN events e ON e.stream_id = s.id"
            " GROUP BY s.id"
        )
        for name, last_rev, last_pos, count, lo, hi, top in rows:
            if not count:
                continue
            if hi - lo + 1 != count:
                problems.append(
                    f"stream {name!r}: revisions {lo}..{hi} stored with {hi - lo + 1 - count} missing"
                )
            if hi > last_rev:
                problems.append(f"stream {name!r}: revision {hi} stored beyond its last revision {last_rev}")
            if top > last_pos:
                problems.append(f"stream {name!r}: position {top} stored beyond its last position {last_pos}")
        unordered = conn.execute(
            "SELECT count(*) FROM (SELECT position, lag(position) OVER (PARTITION BY stream_id"
            " ORDER BY revision) AS before FROM events) WHERE before IS NOT NULL AND before >= position"
        ).fetchone()[0]
        if unordered:
            problems.append(f"{unordered} events have a position below their stream's previous event")
        head = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]
        top_stream = conn.execute("SELECT coalesce(max(last_position), 0) FROM streams").fetchone()[0]
        head = max(head, top_stream)
        for grp, partition, position in conn.execute("SELECT grp, partition, position FROM group_cursors"):
            if position > head + 1:
                problems.append(
                    f"group {grp!r} partition {partition}: cursor {position} beyond the head {head}"
                )
    return problems
