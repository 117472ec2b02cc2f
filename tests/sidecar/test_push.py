"""The sidecar's HTTP/1.1 push client against real listening sockets: an aiohttp app, and
raw servers that answer the way some apps and proxies do (chunked, to the close, not at
all, closing idle keep-alive connections)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from sluice_sidecar.push import AppDown, BadAnswer, HttpPush, plain_http

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server on a free port running ``handle`` per connection; yields its URL and a
    list that grows by one per connection accepted."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/in?x=1", accepted
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    start, *fields = head.split("\r\n")[:-2]
    headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return start, headers, body


async def answer_then_hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: bytes) -> None:
    """Write ``reply``, then keep the connection until the client closes it."""
    writer.write(reply)
    await writer.drain()
    await reader.read()


async def connections_for(handle: Handler, posts: int, status: int) -> int:
    """POST ``posts`` times through one pusher to a raw server running ``handle``, each
    answered with ``status``; how many connections the server accepted."""
    async with raw_server(handle) as (url, accepted):
        pusher = HttpPush(url)
        for _ in range(posts):
            assert (await pusher.post({}, b"e", 5)).status == status
        await pusher.close()
    return len(accepted)


@contextlib.asynccontextmanager
async def aiohttp_app(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/events", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/events"
    finally:
        await runner.cleanup()


async def test_posts_reuse_one_keep_alive_connection_and_carry_headers_and_body() -> None:
    seen: list[tuple[str, str, bytes, str]] = []

    async def handler(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append((request.headers["ce-id"], request.headers["host"], await request.read(), str(peer)))
        return web.Response(status=200, text="fine", headers={"Retry-After": "3"})

    async with aiohttp_app(handler) as url:
        pusher = HttpPush(url)
        try:
            for i in range(50):
                answer = await pusher.post({"ce-id": str(i), "content-type": "text/plain"}, b"x" * i, 5)
                assert (answer.status, answer.body, answer.headers["retry-after"]) == (200, b"fine", "3")
        finally:
            await pusher.close()
    assert [s[0] for s in seen] == [str(i) for i in range(50)]
    assert all(body == b"x" * i for i, (_, _, body, _) in enumerate(seen))
    assert seen[0][1] == url.split("/")[2]  # Host: the URL's authority
    assert pusher.opened == 1 and len({s[3] for s in seen}) == 1  # one connection for all


async def test_concurrent_posts_each_get_their_own_answer() -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0.001 * (int(request.headers["n"]) % 5))  # answers come out of order
        return web.Response(status=200 + int(request.headers["n"]) % 7)

    async with aiohttp_app(handler) as url:
        pusher = HttpPush(url)
        try:
            answers = await asyncio.gather(*(pusher.post({"n": str(i)}, b"", 5) for i in range(200)))
        finally:
            await pusher.close()
    assert [a.status for a in answers] == [200 + i % 7 for i in range(200)]
    assert pusher.opened <= 200


async def test_chunked_and_read_to_close_answers_are_read_whole() -> None:
    replies = [
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
        b"4\r\nbusy\r\n5\r\n now \r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 422 Unprocessable\r\nContent-Length: 3\r\n\r\nbad",
        b"HTTP/1.0 200 OK\r\n\r\nto the end",  # no length, no keep-alive: the body ends with it
    ]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while replies:
            await read_request(reader)
            reply = replies.pop(0)
            writer.write(reply)
            await writer.drain()
            if reply.startswith(b"HTTP/1.0"):
                return  # closes the connection

    async with raw_server(handle) as (url, accepted):
        pusher = HttpPush(url)
        first = await pusher.post({}, b"a", 5)
        second = await pusher.post({}, b"b", 5)
        third = await pusher.post({}, b"c", 5)
        await pusher.close()
    assert (first.status, first.body, first.headers["retry-after"]) == (503, b"busy now ", "7")
    assert (second.status, second.body) == (422, b"bad")
    assert (third.status, third.body) == (200, b"to the end")
    assert len(accepted) == 1


async def test_a_connection_the_app_closed_while_idle_is_replaced_without_a_failure() -> None:
    """An app (or proxy) that closes keep-alive connections after one request each, without
    saying so: the next post finds its idle connection gone and goes out on a new one."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        start, _, _ = await read_request(reader)
        assert start.startswith("POST /in?x=1 HTTP/1.1")
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    assert await connections_for(handle, posts=5, status=204) == 5


async def test_connection_close_is_honoured() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        # It keeps the connection open: the client must close it, and not reuse it.
        await answer_then_hold(
            reader, writer, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )

    assert await connections_for(handle, posts=3, status=200) == 3


async def test_nothing_listening_and_an_unanswered_new_connection_are_app_down() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # then closes without a word

    async with raw_server(hang_up) as (url, _):
        pusher = HttpPush(url)
        with pytest.raises(AppDown):
            await pusher.post({}, b"e", 5)
    with pytest.raises(AppDown):  # the server is gone now
        await HttpPush(url).post({}, b"e", 5)


async def test_a_slow_app_times_out_and_its_connection_is_dropped() -> None:
    dropped = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers, _ = await read_request(reader)
        if headers["n"] == "slow":
            assert await reader.read() == b""  # never answered: the client hangs up
            dropped.set()
            return
        await answer_then_hold(reader, writer, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")

    async with raw_server(handle) as (url, accepted):
        pusher = HttpPush(url)
        with pytest.raises(TimeoutError):
            await pusher.post({"n": "slow"}, b"e", 0.2)
        async with asyncio.timeout(10):
            await dropped.wait()
        answer = await pusher.post({"n": "next"}, b"e", 5)
        await pusher.close()
    assert (answer.status, answer.body) == (200, b"fresh")
    assert len(accepted) == 2


async def test_an_answer_that_is_not_http_is_a_bad_answer() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await answer_then_hold(reader, writer, b"SSH-2.0-OpenSSH_9.6\r\n")

    async with raw_server(handle) as (url, _):
        pusher = HttpPush(url)
        with pytest.raises(BadAnswer):
            await pusher.post({}, b"e", 5)
        await pusher.close()


@pytest.mark.parametrize("bad", ["a\r\nx-injected: 1", "a\nb", "a\rb", "a\0b"])
async def test_header_values_that_would_split_the_request_are_refused_before_sending(bad: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with raw_server(handle) as (url, accepted):
        pusher = HttpPush(url)
        with pytest.raises(ValueError, match="line break or NUL"):
            await pusher.post({"tracestate": bad}, b"e", 5)
    assert accepted == []


def test_which_urls_it_serves() -> None:
    assert plain_http("http://app:8080/events")
    assert plain_http("http://[::1]:8080/")
    assert not plain_http("https://app/events")
    assert not plain_http("http://user:secret@app/events")
