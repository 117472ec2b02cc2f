"""Event ids made by the client: RFC 9562 version 7 UUIDs, unique across threads, blocks
and forked processes (their uniqueness across threads and their time prefix are checked
in tests/store/test_append.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from sluice import ids


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> int:
    """Every id made in one millisecond, so blocks end by count and not by the clock."""
    now = 1_790_000_000_000_000_000
    monkeypatch.setattr(time, "time_ns", lambda: now)
    monkeypatch.setattr(ids, "_state", (-1, "", iter(())))
    return now // 1_000_000


def test_ids_count_up_within_a_block_and_each_block_is_drawn_afresh(frozen_clock: int) -> None:
    made = [ids.uuid7_text() for _ in range(3 * 256)]
    assert len(set(made)) == len(made)
    values = [uuid.UUID(text).int for text in made]
    for block in (values[:256], values[256:512], values[512:]):
        assert block == list(range(block[0], block[0] + 256))  # counted up by one
        assert block[0] & 0xFF == 0
    assert len({v >> 8 for v in values}) == 3  # three random blocks, not one counter
    for text in made:
        u = uuid.UUID(text)
        assert (u.version, u.variant, str(u)) == (7, uuid.RFC_4122, text)
        assert int.from_bytes(u.bytes[:6], "big") == frozen_clock


def test_a_new_millisecond_starts_a_new_block(monkeypatch: pytest.MonkeyPatch, frozen_clock: int) -> None:
    first = uuid.UUID(ids.uuid7_text())
    monkeypatch.setattr(time, "time_ns", lambda: (frozen_clock + 1) * 1_000_000)
    second = uuid.UUID(ids.uuid7_text())
    assert int.from_bytes(second.bytes[:6], "big") == frozen_clock + 1
    assert second.int > first.int  # time-ordered across milliseconds
    assert second.int & 0xFF == 0  # the new millisecond did not go on counting the old block


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    # In a fresh interpreter with no gRPC threads, so forking is safe; the clock is held
    # still so that parent and child would share a block if the child kept its parent's.
    script = textwrap.dedent(
        """
        import os, sys
        from sluice import ids
        ids.time.time_ns = lambda: 1_790_000_000_000_000_000
        ids.uuid7_text()  # the parent has a block under way
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, " ".join(ids.uuid7_text() for _ in range(10)).encode())
            os._exit(0)
        os.close(write)
        child = os.read(read, 1 << 16).decode().split()
        os.waitpid(pid, 0)
        print(" ".join(child))
        print(" ".join(ids.uuid7_text() for _ in range(10)))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    child, parent = (line.split() for line in run.stdout.splitlines())
    assert len(child) == len(parent) == 10
    assert not set(child) & set(parent)
