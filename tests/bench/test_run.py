"""The benchmark runner: every section ends, a failing or hanging one is reported, the run goes on."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from bench.harness import Results, Row, paced
from bench.run import report, run_sections


async def test_a_failing_or_hanging_section_is_reported_and_the_run_goes_on() -> None:
    async def hangs(res: Results, a: argparse.Namespace) -> None:
        await asyncio.Event().wait()  # a peer that never answers

    async def fails(res: Results, a: argparse.Namespace) -> None:
        raise RuntimeError("the Redis subscriber did not finish")

    async def gives_up(res: Results, a: argparse.Namespace) -> None:
        raise TimeoutError("the subscriber saw 10 of 1000 events")  # a wait inside it, not the limit

    async def works(res: Results, a: argparse.Namespace) -> None:
        res.add(Row("works", "case", "events/s", 2.0, {"peer": 1.0}))

    res = Results()
    a = argparse.Namespace(durability="full")
    sections = {"hangs": hangs, "fails": fails, "gives_up": gives_up, "works": works}
    await asyncio.wait_for(run_sections(sections, list(sections), res, a, limit=0.2), 10)
    assert [name for name, _ in res.failed] == ["hangs", "fails", "gives_up"]
    assert "timed out after" in res.failed[0][1] and "did not finish" in res.failed[1][1]
    assert res.failed[2][1] == "TimeoutError: the subscriber saw 10 of 1000 events"
    assert [row.section for row in res.rows] == ["works"]  # the sections after them still ran
    text = report(res, a, 1.0)
    assert "| hangs | **failed**: timed out" in text and "| works | case |" in text


async def test_sections_against_peers_run_in_rounds_and_report_medians_with_their_spread() -> None:
    calls = 0

    async def appends(res: Results, a: argparse.Namespace) -> None:
        nonlocal calls
        calls += 1
        # Round 2 finds the machine busy: both sides slower, the ratio about the same.
        sluice, peer = {1: (300.0, 100.0), 2: (90.0, 60.0), 3: (200.0, 100.0)}[calls]
        res.add(Row("appends", "single", "events/s", sluice, {"jetstream": peer, "redis": peer * 2}))

    res = Results()
    a = argparse.Namespace(durability="full", rounds=3)
    await asyncio.wait_for(run_sections({"appends": appends}, ["appends"], res, a, limit=5), 10)
    assert calls == 3
    (row,) = res.rows
    assert row.rounds == 3 and row.sluice == 200.0 and row.peers == {"jetstream": 100.0, "redis": 200.0}
    assert row.ratio("jetstream") == 2.0  # the median of 3.0, 1.5 and 2.0, not 200 / 100 by chance
    assert row.spread["jetstream"] == (1.5, 3.0) and row.ratio("redis") == 1.0
    assert "| 2.00x (1.50 to 3.00, 3 rounds) |" in report(res, a, 1.0)


async def test_a_paced_send_that_fails_ends_the_pacing_with_its_error() -> None:
    sent: list[int] = []

    async def send(i: int) -> None:
        sent.append(i)
        if i == 3:
            raise ConnectionError("Too many connections")

    with pytest.raises(RuntimeError, match="a paced send failed: ConnectionError: Too many connections"):
        await asyncio.wait_for(paced(1000, 10.0, send), 10)  # 10,000 sends, stopped at the failure
    assert 3 in sent and len(sent) < 1000
    assert await asyncio.wait_for(paced(1000, 0.02, lambda i: asyncio.sleep(0)), 10) == 20
