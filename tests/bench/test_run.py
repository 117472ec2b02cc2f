"""The benchmark runner: every section ends, a failing or hanging one is reported, the run goes on."""

from __future__ import annotations

import argparse
import asyncio

from bench.harness import Results, Row
from bench.run import report, run_sections


async def test_a_failing_or_hanging_section_is_reported_and_the_run_goes_on() -> None:
    async def hangs(res: Results, a: argparse.Namespace) -> None:
        await asyncio.Event().wait()  # a peer that never answers

    async def fails(res: Results, a: argparse.Namespace) -> None:
        raise RuntimeError("the Redis subscriber did not finish")

    async def works(res: Results, a: argparse.Namespace) -> None:
        res.add(Row("works", "case", "events/s", 2.0, {"peer": 1.0}))

    res = Results()
    a = argparse.Namespace(durability="full")
    sections = {"hangs": hangs, "fails": fails, "works": works}
    await asyncio.wait_for(run_sections(sections, list(sections), res, a, limit=0.2), 10)
    assert [name for name, _ in res.failed] == ["hangs", "fails"]
    assert "timed out after" in res.failed[0][1] and "did not finish" in res.failed[1][1]
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
