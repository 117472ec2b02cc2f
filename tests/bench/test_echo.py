"""The floor the benchmarks measure against: the echo server answers appends and relays them live."""

from __future__ import annotations

import asyncio
import sys

from bench.harness import ROOT, announced, process
from sluice import Client, new_event
from sluice.v1 import streams_pb2 as pb


async def test_the_echo_answers_appends_and_hands_each_to_live_subscribers() -> None:
    async with (
        process(sys.executable, str(ROOT / "echo.py"), ready=b"listening on") as echo,
        Client(announced(echo), timeout=10) as client,
    ):
        caught_up = asyncio.Event()

        async def first_event() -> pb.RecordedEvent:
            async for item in client.subscribe("live"):
                if isinstance(item, pb.CaughtUp):
                    caught_up.set()
                elif isinstance(item, pb.RecordedEvent):
                    return item
            raise AssertionError("the subscription ended")

        sub = asyncio.create_task(first_event())
        await asyncio.wait_for(caught_up.wait(), 10)
        first = await client.append("live", [new_event("E", b"one")])
        second = await client.append("live", [new_event("E", b"two"), new_event("E", b"three")])
        assert (first.first_position, second.first_position, second.last_position) == (1, 2, 3)
        event = await asyncio.wait_for(sub, 10)
        assert (event.data, event.stream, event.position) == (b"one", "live", 1)
        assert event.created.seconds > 0
