"""The ``sluice`` CLI as a user runs it, against a store process."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

from sluice import Client, new_event
from sluice.v1 import groups_pb2 as gpb
from tests.conftest import StoreProcess


async def sluice(store: StoreProcess, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sluice.cli",
        "--addr",
        store.addr,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin or b""), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_append_read_tail_and_streams(spawn: Callable[..., StoreProcess], tmp_path: Path) -> None:
    store = spawn()
    await store.start()
    code, out, _ = await sluice(store, "append", "orders-1", "Placed", '{"sku": "A1"}')
    assert code == 0 and "orders-1" in out and "duplicate" in out
    payload = tmp_path / "e.json"
    payload.write_text('{"sku": "B2"}')
    assert (await sluice(store, "append", "orders-1", "Paid", "--file", str(payload)))[0] == 0
    code, out, _ = await sluice(store, "--json", "append", "orders-2", "Placed", stdin=b"plain text")
    assert code == 0 and int(json.loads(out)["first_position"]) == 3

    code, out, _ = await sluice(store, "read", "orders-1")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["position", "stream", "revision", "type"]
    assert "Placed" in lines[2] and "A1" in lines[2] and "Paid" in lines[3]

    code, out, _ = await sluice(store, "--json", "read", "--prefix", "orders-")
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["data"] for e in events] == [{"sku": "A1"}, {"sku": "B2"}, "plain text"]
    assert [e["position"] for e in events] == [1, 2, 3]
    # "--from -5m" as the README writes it (not "--from=-5m"): a time, not an option.
    code, out, err = await sluice(store, "--json", "read", "--prefix", "orders-", "--from", "-5m")
    assert code == 0, err
    assert [json.loads(line)["position"] for line in out.splitlines()] == [1, 2, 3]

    tail = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sluice.cli", "--addr", store.addr, "--json"),
        *("tail", "orders-3", "--count", "1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert tail.stderr is not None and tail.stdout is not None
    assert "caught up" in (await asyncio.wait_for(tail.stderr.readline(), 30)).decode()
    await sluice(store, "append", "orders-3", "Live", '{"n": 1}')
    out_b = await asyncio.wait_for(tail.stdout.read(), 30)
    assert await asyncio.wait_for(tail.wait(), 30) == 0
    assert json.loads(out_b)["type"] == "Live"

    code, out, _ = await sluice(store, "streams", "list", "orders-")
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["orders-1", "orders-2", "orders-3"]
    code, out, _ = await sluice(
        store, "streams", "retention", "orders-1", "--max-count", "1", "--max-age", "7d"
    )
    assert code == 0
    # The rules in force, named as the flags that set them, and where they come from.
    assert out.splitlines()[2].endswith("max-count 1, max-age 7d (stream)")
    code, out, _ = await sluice(store, "streams", "info", "orders-2")
    assert [ln.split() for ln in out.splitlines() if ln.startswith("retention")] == [["retention", "none"]]
    code, out, _ = await sluice(store, "--json", "streams", "info", "orders-1")
    info = json.loads(out)
    assert info["effective_retention"]["max_count"] in ("1", 1) and info["first_revision"] in ("1", 1)
    code, out, _ = await sluice(store, "streams", "delete", "orders-2", "--tombstone")
    assert code == 0
    code, _, err = await sluice(store, "append", "orders-2", "Again", "x")
    assert code != 0 and "FAILED_PRECONDITION" in err and "tombstoned" in err
    code, _, err = await sluice(store, "append", "orders-1", "X", "x", "--expected", "no_stream")
    assert code != 0 and "expected revision no_stream, actual 1" in err
    # A start point or count it cannot read: the usage error, not a traceback.
    for bad in ("pos:abc", "rev:-1", "pos:99999999999999999999", "-5x", "yesterday"):
        code, _, err = await sluice(store, "read", "--prefix", "orders-", "--from", bad)
        assert code == 2 and f"start point {bad!r}" in err and "Traceback" not in err, err
    code, _, err = await sluice(store, "read", "orders-1", "--count", "-5")
    assert code == 2 and "--count" in err and "Traceback" not in err, err
    for args in (
        ("streams", "retention", "orders-1", "--max-count", "-1"),
        ("streams", "retention", "orders-1", "--max-age", "5x"),
        ("append", "orders-1", "T", "x", "--meta", "no-value"),
        ("groups", "create", "g0", "--partitions", "0"),  # 0 on the wire would mean the default, 12
        ("groups", "create", "g0", "--partitions", "-5"),
    ):
        code, _, err = await sluice(store, *args)
        assert code == 2 and f"argument {args[-2]}" in err and "Traceback" not in err, err


def partition_rows(out: str) -> list[str]:
    """The rows of the partitions table in ``groups describe`` output."""
    lines = out.splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith("partition"))) + 2
    return lines[start : lines.index("", start)]


async def test_groups_commands(spawn: Callable[..., StoreProcess]) -> None:
    store = spawn()
    await store.start()
    code, out, err = await sluice(
        store, "groups", "create", "billing", "--prefix", "inv-", "--from", "start", "--partitions", "4"
    )
    assert code == 0, err
    rows = partition_rows(out)
    assert [r.split()[:3] for r in rows] == [[str(p), "-", "1"] for p in range(4)]  # partition, owner, cursor
    for i in range(6):
        await sluice(store, "append", f"inv-{i}", "Issued", "{}")
    code, out, _ = await sluice(store, "groups", "list")
    assert out.splitlines()[2].split()[:4] == ["billing", "4", "0", "6"]
    code, out, _ = await sluice(store, "--json", "groups", "reset", "billing", "--to", "end")
    desc = json.loads(out)
    assert all(int(p["cursor"]) == 7 for p in desc["partitions"])
    code, out, _ = await sluice(store, "groups", "describe", "billing")
    assert [r.split()[2:4] for r in partition_rows(out)] == [["7", "0"]] * 4  # cursor at the end, no lag
    assert out.splitlines()[-1] == "dead letters: 0 in $dlq.billing"
    async with Client(store.addr) as c:  # a member dead-letters one event
        joined = await c.heartbeat(gpb.HeartbeatRequest(group="billing", member_id="m1"))
        await c.dead_letter(
            gpb.DeadLetterRequest(
                group="billing",
                member_id="m1",
                member_epoch=joined.member_epoch,
                partition=joined.assigned[0].partition,
                events=[new_event("Issued", b"{}")],
            )
        )
    code, out, _ = await sluice(store, "groups", "describe", "billing")
    hint = "(sluice read '$dlq.billing'; sluice groups redrive billing)"
    assert out.splitlines()[-1] == f"dead letters: 1 in $dlq.billing {hint}"
    code, out, err = await sluice(store, "--json", "groups", "update", "billing", "--type", "Issued")
    assert code == 0, err
    assert json.loads(out)["config"]["filter"] == {"stream_prefixes": ["inv-"], "event_types": ["Issued"]}
    code, out, _ = await sluice(
        store, "--json", "groups", "update", "billing", "--type", "", "--prefix", "x-"
    )
    assert json.loads(out)["config"]["filter"] == {"stream_prefixes": ["x-"]}
    code, out, _ = await sluice(store, "groups", "delete", "billing")
    assert code == 0
    code, _, err = await sluice(store, "groups", "describe", "billing")
    assert code != 0 and "NOT_FOUND" in err


def test_durations_print_as_they_are_written() -> None:
    from sluice.settings import format_duration, parse_duration

    for text in ("7d", "36h", "90m", "45s", "250ms", "1500ms"):
        assert format_duration(parse_duration(text)) == text
    assert format_duration(0.0005) == "0.0005s"
