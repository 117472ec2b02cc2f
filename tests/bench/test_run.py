"""The benchmark runner: every section ends, a failing or hanging one is reported, the run goes on."""

from __future__ import annotations

import argparse
import asyncio

from bench.run import Results, Row, report, run_sections


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
