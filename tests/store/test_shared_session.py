"""The Python client's append() over one shared AppendSession: what a call per append gave
(results, typed errors, limits, failures) holds, with the calls saved."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import aiohttp
import pytest

from sluice import (
    Client,
    LimitExceeded,
    SluiceError,
    SystemStreamReserved,
    Unavailable,
    WrongExpectedRevision,
    new_event,
)
from sluice.client import SHARED_SESSION_MAX_BYTES
from sluice.v1 import streams_pb2 as pb
from sluice_store.server import StoreServer
from sluice_store.storage.sqlite import SESSION_APPENDS
from tests.conftest import StoreFactory, StoreProcess, eventually
from tests.ports import reserve_port

WAIT = 20.0


def requests(text: str, method: str) -> float:
    """rpc.server.requests for one method, from a Prometheus scrape."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("rpc_server_requests_total{") and f'rpc_method="{method}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


async def test_concurrent_appends_share_one_call_and_keep_their_own_results(
    spawn: Callable[..., StoreProcess],
) -> None:
    port = reserve_port()
    store = spawn("--metrics-addr", f"127.0.0.1:{port}", "--durability", "normal")
    await store.start()
    async with Client(store.addr, timeout=WAIT) as c:
        results = await asyncio.gather(
            *(c.append(f"s-{i % 10}", [new_event("E", {"i": i})]) for i in range(300))
        )
        assert len({(r.stream, r.first_revision) for r in results}) == 300
        for s in range(10):
            events = await c.read_list(f"s-{s}")
            assert [e.revision for e in events] == list(range(30))
            # Each stream holds its own appends, in the order their calls were made.
            assert [int(e.data.split(b":")[1].strip(b" }")) for e in events] == list(range(s, 300, 10))
        await c.append("s-0", [new_event("E")])  # awaited one by one: the same call

    async def session_counted() -> bool:  # when the call has ended (the client closed it)
        return requests(await scrape(port), "AppendSession") == 1

    await eventually(session_counted, WAIT)
    assert requests(await scrape(port), "Append") == 0


async def test_a_refused_append_fails_alone_with_its_details(client: Client) -> None:
    await client.append("acct", [new_event("Opened")])
    conflict, reserved, ok = await asyncio.gather(
        client.append("acct", [new_event("E")], expected=5),
        client.append("$system", [new_event("E")]),
        client.append("acct", [new_event("E")], expected=0),
        return_exceptions=True,
    )
    assert isinstance(conflict, WrongExpectedRevision)
    assert conflict.stream == "acct" and conflict.expected == "5" and conflict.actual in {"0", "1"}
    assert isinstance(reserved, SystemStreamReserved) and reserved.reason == "SYSTEM_STREAM_RESERVED"
    assert not isinstance(ok, BaseException) and ok.first_revision == 1
    session = client._session
    assert session is not None and session.usable
    after = await client.append("acct", [new_event("E")], expected=1)
    assert after.first_revision == 2 and client._session is session


async def test_a_caller_that_stops_waiting_leaves_the_session_working(client: Client) -> None:
    tasks = [asyncio.create_task(client.append("c", [new_event("E", {"i": i})])) for i in range(60)]
    await asyncio.sleep(0)  # every append is queued
    for t in tasks[::2]:
        t.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, asyncio.CancelledError) for r in done) == 30
    session = client._session
    assert session is not None and session.usable
    # The cancelled ones may or may not have been stored (as with a call cancelled in
    # flight); the session answers the next append at the next revision.
    stored = len(await client.read_list("c"))
    assert 30 <= stored <= 60
    nxt = await client.append("c", [new_event("E")])
    assert nxt.first_revision == stored and client._session is session


async def test_an_append_over_the_message_limit_goes_as_its_own_call(make_store: StoreFactory) -> None:
    store: StoreServer = await make_store(max_request_bytes=SHARED_SESSION_MAX_BYTES + (256 << 10))
    async with Client(store.address, timeout=WAIT) as c:
        big = b"x" * (SHARED_SESSION_MAX_BYTES + (512 << 10))  # over the store's limit too
        small = [c.append("small", [new_event("E", {"i": i})]) for i in range(20)]
        refused, *fine = await asyncio.gather(
            c.append("big", [new_event("E", big)]), *small, return_exceptions=True
        )
        assert isinstance(refused, LimitExceeded) and refused.metadata["limit"] == "max_request_bytes"
        assert all(not isinstance(r, BaseException) for r in fine)
        # Just under the session's limit: packed with others, and stored whole.
        near = b"y" * (SHARED_SESSION_MAX_BYTES - 1024)
        got = await asyncio.gather(*(c.append(f"near-{i}", [new_event("E", near)]) for i in range(3)))
        assert [r.first_revision for r in got] == [0, 0, 0]
        assert (await c.read_list("near-2"))[0].data == near


async def test_appends_fail_fast_when_the_store_dies_and_work_once_it_is_back(
    spawn: Callable[..., StoreProcess],
) -> None:
    store = spawn("--durability", "full")
    await store.start()
    async with Client(store.addr, timeout=WAIT) as c:
        first = await c.append("k", [new_event("E")])
        assert first.first_revision == 0
        store.signal(signal.SIGKILL)
        await store.wait()
        with pytest.raises(Unavailable):
            async with asyncio.timeout(WAIT):
                await c.append("k", [new_event("E")])
        await store.start()

        async def appended() -> bool:
            try:
                await c.append("k", [new_event("E", {"after": True})], expected=0)
            except Unavailable:
                return False
            return True

        await eventually(appended, WAIT)
        assert [e.revision for e in await c.read_list("k")] == [0, 1]


async def test_a_store_that_does_not_answer_times_out_the_append(make_store: StoreFactory) -> None:
    """A stalled session (the store holds the reply) times out like a call would, and the
    next append goes over a fresh session."""
    store: StoreServer = await make_store()
    async with Client(store.address, timeout=1.0) as c:
        await c.append("t", [new_event("E")])
        stalled = c._session
        assert stalled is not None
        gate = asyncio.Event()
        submit = store.service.committer.submit_many  # what a session's message goes to

        def held(ops: object) -> asyncio.Future[object]:
            fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()

            async def later() -> None:
                await gate.wait()
                fut.set_result(await submit(ops))  # type: ignore[arg-type]

            asyncio.get_running_loop().create_task(later())
            return fut

        store.service.committer.submit_many = held  # type: ignore[method-assign,assignment]
        with pytest.raises(SluiceError) as err:
            await c.append("t", [new_event("E")])
        assert err.value.code.name == "DEADLINE_EXCEEDED"
        store.service.committer.submit_many = submit  # type: ignore[method-assign]
        gate.set()

        async def held_stored() -> bool:  # the timed-out append still lands, first
            return len(await c.read_list("t")) == 2

        await eventually(held_stored, WAIT)
        nxt = await c.append("t", [new_event("E")])
        assert c._session is not stalled and nxt.first_revision == 2  # the held one was stored


async def test_a_store_shutting_down_ends_the_session_instead_of_waiting_out_its_grace(
    spawn: Callable[..., StoreProcess],
) -> None:
    """SIGTERM with a client's session open: the store answers what it read, ends the call
    with UNAVAILABLE and exits, rather than holding the open call until --grace runs out."""
    store = spawn("--durability", "normal", "--grace", "60")
    await store.start()
    async with Client(store.addr, timeout=WAIT) as c:
        await c.append("g", [new_event("E")])
        flowing = [asyncio.create_task(c.append("g", [new_event("E", {"i": i})])) for i in range(200)]
        await asyncio.sleep(0)
        store.signal(signal.SIGTERM)
        assert await store.wait(timeout=WAIT) == 0  # well within the 60 s grace
        outcomes = await asyncio.gather(*flowing, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(isinstance(o, Unavailable) for o in failed), failed
        answered = len(outcomes) - len(failed)
    store2 = spawn("--durability", "normal", db=store.args[store.args.index("--db") + 1])
    await store2.start()
    async with Client(store2.addr, timeout=WAIT) as c:
        assert len(await c.read_list("g")) >= 1 + answered  # everything answered is stored


@pytest.mark.parametrize("durability", ["normal", "full"])
async def test_a_session_splits_its_messages_at_what_the_store_asks_for(
    make_store: StoreFactory, backend: str, durability: str
) -> None:
    """A SQLite store committing on its event loop (``normal``, no live subscriber) asks for
    SESSION_APPENDS appends per message, and the client splits what it has queued at that;
    under ``full``, on PostgreSQL, or while a subscriber waits, it asks for nothing and the
    queue goes as one message."""
    store = await make_store(durability=durability)
    asks = SESSION_APPENDS if backend == "sqlite" and durability == "normal" else 0
    async with Client(store.address, timeout=WAIT) as c, c.session() as s:
        await s.append("first", [new_event("E")])
        assert s.store_per_message == asks
        sizes: list[int] = []
        write = s._call.write

        async def counted(message: pb.AppendSessionRequest) -> None:
            sizes.append(len(message.appends))
            await write(message)

        s._call.write = counted
        n = 2 * SESSION_APPENDS + 44
        results = await asyncio.gather(
            *(s.send(f"split-{i % 8}", [new_event("E", {"i": i})]) for i in range(n))
        )
        assert sizes == ([SESSION_APPENDS, SESSION_APPENDS, 44] if asks else [n])
        assert sorted(r.first_position for r in results) == [r.first_position for r in results]
        for k in range(8):
            events = await c.read_list(f"split-{k}")
            assert [int(e.data.split(b":")[1].strip(b" }")) for e in events] == list(range(k, n, 8))

        # A live subscriber: commits hop to the writer thread, and the store asks for nothing.
        subscription = c.subscribe("split-0")
        async with asyncio.timeout(WAIT):
            async for item in subscription:
                if isinstance(item, pb.CaughtUp):
                    break
            await s.append("split-0", [new_event("Live")])
            assert s.store_per_message == 0
            async for item in subscription:  # the subscriber was live: it gets the event
                if isinstance(item, pb.RecordedEvent):
                    assert item.type == "Live"
                    break
            await subscription.aclose()

        async def unsubscribed() -> bool:
            return len(store.broker) == 0

        await eventually(unsubscribed, WAIT)
        await s.append("third", [new_event("E")])
        assert s.store_per_message == asks
