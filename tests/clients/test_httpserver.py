"""The gateway's and sidecar's HTTP servers (sluice.httpserver): a request aiohttp cannot
parse is a client's mistake, answered 400 and logged quietly."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from sluice.httpserver import BoundedRunner


async def _status_of(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def test_an_unparsable_request_is_answered_400_and_not_logged_as_a_server_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    runner = BoundedRunner(app, idle_timeout=10, max_connections=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        long_url = b"GET /" + b"x" * 10_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
        assert (await _status_of(port, long_url)).split()[1] == b"400"
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        with caplog.at_level(logging.DEBUG, "aiohttp.server"):
            big_header = b"GET /ok HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 10_000 + b"\r\n\r\n"
            assert (await _status_of(port, big_header)).split()[1] == b"400"
        said = [r for r in caplog.records if r.name == "aiohttp.server"]
        assert said and all(r.levelno == logging.DEBUG and r.exc_info is None for r in said)
        assert "400" in said[-1].getMessage()
        assert (await _status_of(port, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")).split()[1] == b"200"
    finally:
        await runner.cleanup()
