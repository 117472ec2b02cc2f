"""The append rules as the pure function they are (storage/planner.plan_append), checked
against a model with hypothesis: expected-revision modes, atomic multi-stream appends,
idempotent replays, duplicate ids, dense revisions and positions."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.v1 import streams_pb2 as pb
from sluice_store.errors import DuplicateEventId, InvalidEvent, StreamDeleted, WrongExpectedRevision
from sluice_store.storage.base import AppendPart, Expect, NewEvent, State, StreamMeta
from sluice_store.storage.planner import Plan, plan_append, validate_new_event_ids

STREAMS = ["a", "b", "c"]
NOW = 1_700_000_000_000_000


def event(client_id: bool = False) -> NewEvent:
    u = uuid.uuid4()
    body = pb.EventData(id=str(u), type="T").SerializeToString()
    return NewEvent(u.bytes, str(u), client_id, "T", body, b"data")


def plan(
    ops: list[list[AppendPart]], known: Mapping[str, StreamMeta | None], head: int, **kw: object
) -> Plan:
    return plan_append(ops, known, head + 1, len(known) + 1, NOW, {}, **kw)  # type: ignore[arg-type]


expects = st.sampled_from([Expect.ANY, Expect.NO_STREAM, Expect.STREAM_EXISTS, Expect.EXACT])
parts = st.tuples(st.sampled_from(STREAMS), expects, st.integers(-1, 4), st.integers(1, 3))
operations = st.lists(st.lists(parts, min_size=1, max_size=3), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_expected_revisions_atomicity_and_dense_numbering_follow_the_model(
    ops: list[list[tuple[str, Expect, int, int]]],
) -> None:
    model: dict[str, int] = {}  # stream -> last revision
    built = [[AppendPart(s, e, max(r, 0), [event() for _ in range(n)]) for s, e, r, n in op] for op in ops]
    result = plan(built, {s: None for s in STREAMS}, head=0)
    position = 1
    for op, outcome in zip(ops, result.outcomes, strict=True):
        staged = dict(model)
        ok = len({s for s, *_ in op}) == len(op)  # a stream once per atomic append
        for s, e, r, n in op:
            last = staged.get(s, -1)
            exists = last >= 0
            fits = {
                Expect.ANY: True,
                Expect.NO_STREAM: not exists,
                Expect.STREAM_EXISTS: exists,
                Expect.EXACT: exists and last == max(r, 0),
            }[e]
            ok = ok and fits
            staged[s] = last + n
        if not ok:
            assert not isinstance(outcome, list), (op, outcome)  # refused whole: nothing staged
            continue
        assert isinstance(outcome, list)
        for (s, _, _, n), got in zip(op, outcome, strict=True):
            first = model.get(s, -1) + 1
            assert (got.first_revision, got.last_revision) == (first, first + n - 1)
            assert (got.first_position, got.last_position) == (position, position + n - 1)
            model[s] = first + n - 1
            position += n
    # The rows: positions dense from the head, each stream's revisions dense from 0.
    assert [r[0] for r in result.rows] == list(range(1, position))
    for s in STREAMS:
        revisions = [r[2] for r in result.rows if r[6] == s]
        assert revisions == list(range(len(revisions)))
        if s in model:
            assert result.streams[s].last_revision == model[s]
    assert result.next_position == position


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(STREAMS), st.integers(1, 4)), min_size=1, max_size=6))
def test_a_replayed_append_is_answered_from_what_is_stored_and_writes_nothing(
    appends: list[tuple[str, int]],
) -> None:
    ops = [[AppendPart(s, Expect.ANY, 0, [event(client_id=True) for _ in range(n)])] for s, n in appends]
    first = plan(ops, {s: None for s in STREAMS}, head=0)
    stored = {r[8]: (r[6], r[2], r[0]) for r in first.rows}
    again = plan(ops, first.streams, head=first.next_position - 1, stored_ids=stored)
    assert again.rows == []  # nothing new to write
    for before, after in zip(first.outcomes, again.outcomes, strict=True):
        assert isinstance(before, list) and isinstance(after, list)
        assert [(p.stream, p.first_revision, p.last_position) for p in after] == [
            (p.stream, p.first_revision, p.last_position) for p in before
        ]
        assert all(p.duplicate for p in after) and not any(p.duplicate for p in before)
    # Within one batch, the second copy of an append is a replay of the first.
    twice = plan([ops[0], ops[0]], {s: None for s in STREAMS}, head=0)
    one, two = twice.outcomes
    assert isinstance(one, list) and isinstance(two, list) and two[0].duplicate
    assert len(twice.rows) == len(ops[0][0].events)


def test_an_id_stored_elsewhere_is_a_duplicate_and_the_append_is_refused() -> None:
    ev = event(client_id=True)
    first = plan([[AppendPart("a", Expect.ANY, 0, [ev])]], {s: None for s in STREAMS}, head=0)
    stored = {r[8]: (r[6], r[2], r[0]) for r in first.rows}
    other = plan([[AppendPart("b", Expect.ANY, 0, [ev])]], first.streams, head=1, stored_ids=stored)
    (outcome,) = other.outcomes
    assert isinstance(outcome, DuplicateEventId) and other.rows == []
    partly = plan(
        [[AppendPart("a", Expect.ANY, 0, [ev, event(client_id=True)])]],
        first.streams,
        head=1,
        stored_ids=stored,
    )
    assert isinstance(partly.outcomes[0], DuplicateEventId)  # only some of it stored: not a replay


def test_tombstoned_streams_refuse_and_the_same_id_twice_in_a_request_is_invalid() -> None:
    gone = StreamMeta(1, "a", last_revision=3, last_position=4, state=State.TOMBSTONED)
    result = plan([[AppendPart("a", Expect.ANY, 0, [event()])]], {"a": gone}, head=4)
    assert isinstance(result.outcomes[0], StreamDeleted)
    wrong = plan([[AppendPart("b", Expect.EXACT, 2, [event()])]], {"b": None}, head=4)
    assert isinstance(wrong.outcomes[0], WrongExpectedRevision)
    assert wrong.outcomes[0].metadata["actual"] == "no_stream"
    ev = event(client_id=True)
    with pytest.raises(InvalidEvent):
        validate_new_event_ids([AppendPart("a", Expect.ANY, 0, [ev]), AppendPart("b", Expect.ANY, 0, [ev])])


def test_a_copy_of_a_stream_state_carries_every_field_and_is_its_own() -> None:
    import dataclasses

    from sluice_store.retention import Policy

    # A value for each field unlike its default, so a field copy() forgets shows up.
    meta = StreamMeta(id=7, name="s")
    for i, f in enumerate(dataclasses.fields(StreamMeta)):
        if f.name in ("id", "name"):
            continue
        current = getattr(meta, f.name)
        if isinstance(current, State):
            value: object = State.DELETED
        elif isinstance(current, Policy):
            value = Policy(max_count=i)
        elif isinstance(current, bytes):
            value = b"field"
        elif isinstance(current, str):
            value = f"value-{i}"
        else:
            value = 1000 + i
        setattr(meta, f.name, value)
    copied = meta.copy()
    assert copied == meta and copied is not meta
    assert [getattr(copied, f.name) for f in dataclasses.fields(StreamMeta)] == [
        getattr(meta, f.name) for f in dataclasses.fields(StreamMeta)
    ]
    copied.last_revision += 1
    assert meta.last_revision != copied.last_revision  # staging on the copy leaves the original
