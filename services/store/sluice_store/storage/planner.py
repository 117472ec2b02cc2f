"""The append rules, as a pure function: given the state of the streams an append touches,
check expected revisions, spot idempotent replays and duplicate ids, and assign dense
revisions and positions. Both backends call ``plan_append`` inside their write
transaction and write what it returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from sluice import eventbytes
from sluice_store.errors import (
    DuplicateEventId,
    InvalidArgument,
    InvalidEvent,
    StoreError,
    StreamDeleted,
    StreamNotFound,
    WrongExpectedRevision,
)
from sluice_store.retention import Policy
from sluice_store.storage.base import (
    AppendPart,
    Expect,
    LiveRow,
    Outcome,
    PartResult,
    State,
    StreamMeta,
    new_stream,
)


def mark_deleted(
    current: StreamMeta | None, meta: StreamMeta, expect: Expect, revision: int, tombstone: bool
) -> None:
    """Check the expected revision, then soft-delete or tombstone ``meta`` (a copy of current)."""
    check_expected(current, expect, revision, meta.name)
    if not tombstone and (current is None or current.last_revision < 0):
        raise StreamNotFound(f"stream {meta.name!r} does not exist", stream=meta.name)
    meta.deleted_before = meta.last_revision + 1
    meta.state = State.TOMBSTONED if tombstone else State.DELETED


def check_expected(meta: StreamMeta | None, expect: Expect, revision: int, stream: str) -> None:
    """Raise WrongExpectedRevision or StreamDeleted unless the stream is as expected."""
    if meta is not None and meta.state == State.TOMBSTONED:
        raise StreamDeleted(f"stream {stream!r} is tombstoned", stream=stream)
    if expect == Expect.ANY:
        return
    live = meta is not None and meta.state == State.ACTIVE and meta.last_revision >= 0
    actual = str(meta.last_revision) if live and meta is not None else "no_stream"
    if expect == Expect.NO_STREAM:
        ok = not live
        expected = "no_stream"
    elif expect == Expect.STREAM_EXISTS:
        ok = live
        expected = "stream_exists"
    else:
        ok = live and meta is not None and meta.last_revision == revision
        expected = str(revision)
    if not ok:
        raise WrongExpectedRevision(
            f"stream {stream!r}: expected revision {expected}, actual {actual}",
            stream=stream,
            expected=expected,
            actual=actual,
        )


EventRow = LiveRow


@dataclasses.dataclass
class Plan:
    """What one group commit writes: event rows, stream states and per-operation outcomes."""

    rows: list[EventRow]
    streams: dict[str, StreamMeta]
    outcomes: list[Outcome]
    next_position: int
    next_stream_id: int
    #: A part with client event ids was refused before its ids were checked against
    #: storage: it may be the retry of an append that succeeded. Plan again with ids.
    check_ids: bool = False


def plan_append(
    ops: Sequence[list[AppendPart]],
    known: Mapping[str, StreamMeta | None],
    next_position: int,
    next_stream_id: int,
    created_us: int,
    prefix_rules: Mapping[str, Policy],
    stored_ids: Mapping[bytes, tuple[str, int, int]] | None = None,
) -> Plan:
    """Validate operations in order against stream state and assign revisions and positions.

    ``known`` holds the current state of every stream the operations touch (None for a
    stream never written). ``stored_ids`` maps event ids already in storage to
    (stream, revision, position); when None, ids are assumed new and the unique index
    has the last word (the caller re-plans with stored_ids if it objects).
    Nothing in ``known`` is modified: changed streams are returned as copies.
    """
    created = eventbytes.created_field(created_us)
    head = eventbytes.head
    staged: dict[str, StreamMeta] = {}
    batch_ids: dict[bytes, tuple[str, int, int]] = {}
    rows: list[EventRow] = []
    outcomes: list[Outcome] = []
    check_ids = False
    for op in ops:
        fresh: dict[str, StreamMeta] = {}  # copies and new streams made by this operation
        undo: list[tuple[StreamMeta, int, int, State, int]] = []
        op_rows: list[EventRow] = []
        op_ids: dict[bytes, tuple[str, int, int]] = {}
        results: list[PartResult] = []
        pos, sid = next_position, next_stream_id
        part: AppendPart | None = None
        try:
            if len(op) > 1 and len({p.stream for p in op}) != len(op):
                raise InvalidArgument("a stream may appear only once in an atomic append")
            for part in op:
                if batch_ids or stored_ids:
                    dup = _duplicate(part, stored_ids, batch_ids)
                    if dup is not None:
                        results.append(dup)
                        continue
                name = part.stream
                meta = staged.get(name)
                if meta is not None:
                    check_expected(meta, part.expect, part.revision, name)
                    undo.append((meta, meta.last_revision, meta.last_position, meta.state, meta.updated_us))
                else:
                    current = known.get(name)
                    check_expected(current, part.expect, part.revision, name)
                    if current is None:
                        meta = new_stream(name, sid, created_us, prefix_rules)
                        sid += 1
                    else:
                        meta = current.copy()
                    fresh[name] = meta
                if meta.state == State.DELETED:
                    meta.state = State.ACTIVE
                mid, field = meta.id, meta.field
                rev = first_rev = meta.last_revision + 1
                first_pos = pos
                for ev in part.events:
                    h = head(ev.body, field, rev, pos, created)
                    data = ev.data
                    op_rows.append(
                        (pos, mid, rev, created_us, h, data, name, ev.type, ev.id, len(h) + len(data))
                    )
                    if ev.client_id:
                        op_ids[ev.id] = (name, rev, pos)
                    rev += 1
                    pos += 1
                meta.last_revision = rev - 1
                meta.last_position = pos - 1
                meta.updated_us = created_us
                results.append(PartResult(name, first_rev, rev - 1, first_pos, pos - 1))
        except StoreError as err:
            for meta, last_revision, last_position, state, updated in undo:
                meta.last_revision, meta.last_position = last_revision, last_position
                meta.state, meta.updated_us = state, updated
            if stored_ids is None and part is not None and any(e.client_id for e in part.events):
                check_ids = True
            outcomes.append(err)
            continue
        staged.update(fresh)
        rows.extend(op_rows)
        if op_ids:
            batch_ids.update(op_ids)
        next_position, next_stream_id = pos, sid
        outcomes.append(results)
    return Plan(rows, staged, outcomes, next_position, next_stream_id, check_ids)


def _duplicate(
    part: AppendPart,
    stored: Mapping[bytes, tuple[str, int, int]] | None,
    batch: Mapping[bytes, tuple[str, int, int]],
) -> PartResult | None:
    """The original result if every event of the part is already stored in order here.

    Raises DuplicateEventId when some id is used elsewhere (or only some are stored).
    """
    found: list[tuple[str, int, int]] = []
    for ev in part.events:
        if not ev.client_id:
            continue
        hit = batch.get(ev.id) or (stored.get(ev.id) if stored else None)
        if hit is not None:
            found.append(hit)
    if not found:
        return None
    first = found[0]
    exact = len(found) == len(part.events) and all(
        f[0] == part.stream and f[1] == first[1] + i for i, f in enumerate(found)
    )
    if not exact:
        ev = next(e for e in part.events if e.client_id and (batch.get(e.id) or (stored or {}).get(e.id)))
        where = batch.get(ev.id) or (stored or {})[ev.id]
        raise DuplicateEventId(
            f"event id {ev.id_text} is already stored in stream {where[0]!r} at revision {where[1]}",
            event_id=ev.id_text,
            stream=where[0],
            revision=where[1],
        )
    return PartResult(part.stream, first[1], found[-1][1], first[2], found[-1][2], duplicate=True)


def validate_new_event_ids(parts: Sequence[AppendPart]) -> None:
    """Refuse a request that names the same event id twice."""
    seen: set[bytes] = set()
    for part in parts:
        for ev in part.events:
            if ev.client_id:
                if ev.id in seen:
                    raise InvalidEvent(
                        f"event id {ev.id_text} appears twice in the request", field="events.id"
                    )
                seen.add(ev.id)
