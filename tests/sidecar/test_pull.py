"""Pull mode: credits are a window per Pull call, given back by answers and expiries;
what a call leaves unanswered comes back as soon as the call ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import TracebackType

import grpc

from sluice.v1 import sidecar_pb2 as spb
from sluice.v1 import sidecar_pb2_grpc as spb_grpc
from tests.conftest import StoreProcess, eventually
from tests.sidecar.conftest import WAIT, Sidecar
from tests.sidecar.test_mesh import produce


class PullApp:
    """An app on one Pull call: grants credits, reads deliveries, answers them."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._requests: asyncio.Queue[spb.PullRequest] = asyncio.Queue()
        self._call = spb_grpc.SidecarStub(self._channel).Pull(self._outgoing())

    async def _outgoing(self) -> AsyncIterator[spb.PullRequest]:
        while True:
            yield await self._requests.get()

    async def grant(self, credits: int) -> None:
        await self._requests.put(spb.PullRequest(credits=credits))

    async def next(self) -> spb.Delivery:
        msg = await asyncio.wait_for(self._call.read(), WAIT)
        assert msg is not grpc.aio.EOF, "the sidecar ended the Pull call"
        return msg.delivery

    async def ack(self, d: spb.Delivery) -> None:
        await self.answer(d, spb.DeliveryResult(outcome=spb.ACK))

    async def answer(self, d: spb.Delivery, result: spb.DeliveryResult) -> None:
        await self._requests.put(spb.PullRequest(ack=spb.Ack(delivery_id=d.delivery_id, result=result)))

    async def __aenter__(self) -> PullApp:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._call.cancel()
        await self._channel.close()


async def test_credits_are_a_window_that_answers_and_expiries_give_back(
    store_proc: StoreProcess, sidecars: Callable[..., Sidecar]
) -> None:
    sc = sidecars("pull0", "--delivery", "pull", "--delivery-timeout", "1s")
    await sc.start()
    ids = await produce(store_proc, streams=12, per_stream=3)
    window = 5
    async with PullApp(sc.grpc) as app:
        await app.grant(window)  # the only credits this app ever grants
        held = [await app.next() for _ in range(window)]

        async def more_wait_for_credit() -> bool:
            status = await sc.status()
            return int(status["in_flight"]) > window and int(status["pull_outstanding"]) == window

        await eventually(more_wait_for_credit, timeout=WAIT)
        # The app answers none of these: each expires after the delivery timeout, gives its
        # credit back, and is offered again. From here on the app acks whatever it gets.
        first_attempts: dict[str, int] = {}
        acked: set[str] = set()
        retried: set[str] = set()
        while acked != set(ids):
            d = await app.next()
            first_attempts.setdefault(d.event.id, d.attempt)
            if d.attempt > 1:
                retried.add(d.event.id)
            await app.ack(d)
            acked.add(d.event.id)

        async def all_delivered() -> bool:
            return int((await sc.status())["delivered"]) == len(ids)

        await eventually(all_delivered, timeout=WAIT)
    assert retried == {d.event.id for d in held}  # only what was sent and left unanswered
    # Waiting for credit (longer than the delivery timeout) cost the others no attempt.
    assert all(first_attempts[i] == 1 for i in ids if i not in retried)
    assert int((await sc.status())["pull_outstanding_max"]) == window


async def test_what_an_ended_call_left_unanswered_comes_back_at_once(
    store_proc: StoreProcess, sidecars: Callable[..., Sidecar]
) -> None:
    # A delivery timeout longer than the test may wait: only the call's end can bring them back.
    sc = sidecars("pull1", "--delivery", "pull", "--delivery-timeout", "120s")
    await sc.start()
    ids = await produce(store_proc, streams=6, per_stream=2)
    async with PullApp(sc.grpc) as gone:
        await gone.grant(3)
        left = {(await gone.next()).event.id for _ in range(3)}
    async with PullApp(sc.grpc) as app:
        await app.grant(100)
        attempts: dict[str, list[int]] = {}
        while set(attempts) != set(ids) or not left <= {i for i, a in attempts.items() if a[-1] == 2}:
            d = await app.next()  # bounded by WAIT, far below the delivery timeout
            attempts.setdefault(d.event.id, []).append(d.attempt)
            await app.ack(d)
    assert {i for i, a in attempts.items() if 2 in a} == left
    assert all(a == [1] for i, a in attempts.items() if i not in left)


async def test_an_outcome_the_sidecar_does_not_know_is_a_retry_and_retry_after_is_bounded(
    store_proc: StoreProcess, sidecars: Callable[..., Sidecar]
) -> None:
    # An unknown outcome ended the Pull call (its name could not be looked up), and a
    # retry_after of a year held the partition for a year.
    sc = sidecars("pull2", "--delivery", "pull", "--max-backoff", "300ms")
    await sc.start()
    (event_id,) = await produce(store_proc, streams=1, per_stream=1)
    async with PullApp(sc.grpc) as app:
        await app.grant(10)
        first = await app.next()
        await app.answer(
            first, spb.DeliveryResult(outcome=spb.Outcome.ValueType(99))
        )  # proto3 enums are open
        second = await app.next()  # the same call goes on, and the event comes again
        assert (second.event.id, second.attempt) == (event_id, 2)
        a_year = spb.DeliveryResult(outcome=spb.RETRY)
        a_year.retry_after.FromSeconds(365 * 86400)
        await app.answer(second, a_year)
        third = await app.next()  # after the group's max_backoff (300 ms), within WAIT
        assert (third.event.id, third.attempt) == (event_id, 3)
        await app.ack(third)

        async def delivered() -> bool:
            status = await sc.status()
            return int(status["delivered"]) == 1 and int(status["dead_lettered"]) == 0

        await eventually(delivered, timeout=WAIT)
