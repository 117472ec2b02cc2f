"""HTTP/1.1 push to the app: keep-alive connections to one origin, answers parsed by llhttp.

Pushing is the sidecar's hot path: one POST per event in single-event mode. aiohttp's
client spends about 50 µs of CPU on each request (request and response objects, header
multidicts, payload wrappers, timers); this client writes the request as one buffer and
parses the answer with httptools (llhttp, Node.js's parser), about 15 µs. It serves plain
``http://`` app URLs without credentials in them; the sidecar uses aiohttp for anything
else (``https``, ``user:password@``) and for health probes.

What it does, the way HTTP clients do:

* Connections are kept open and reused, newest first; an answer with ``Connection: close``
  (or from HTTP/1.0 without keep-alive) closes its connection.
* A reused connection the app closed while it sat idle fails before any answer: the
  request is sent once more on a new connection (the app never saw it; and a push is
  delivered at least once anyway).
* Nothing to connect to, or a new connection closed without an answer: ``AppDown``.
* A deadline: ``TimeoutError``, and the connection is dropped (the answer may still come).
* An answer that is not HTTP: ``BadAnswer``, and the connection is dropped.
* Answer bodies are read to their end (so the connection can be reused) and the first
  ``MAX_BODY`` bytes kept; bodies that end with the connection are read to it.
* Header values with CR, LF or NUL are refused (``ValueError``) before anything is sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import typing
from collections.abc import Mapping
from urllib.parse import urlsplit

import httptools

MAX_BODY = 1024  # bytes of an answer's body kept (the dead-letter reason quotes the start)


class AppDown(ConnectionError):
    """Nothing answered: the app is not listening, or closed a new connection unanswered."""


class BadAnswer(Exception):
    """The app's answer is not HTTP/1.x."""


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes  # the first MAX_BODY bytes


def plain_http(url: str) -> bool:
    """Whether ``url`` is one this client serves (http, no credentials in it)."""
    parts = urlsplit(url)
    return parts.scheme == "http" and bool(parts.hostname) and "@" not in parts.netloc


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.lost = False
        self.keep_alive = True
        self.began = False  # bytes of the current answer arrived
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.began = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(BadAnswer(f"the app's answer is not HTTP/1.x: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._status:  # headers done, body ends with the connection (no length given)
            self._complete()
        elif self.began:
            self._fail(BadAnswer("the app closed the connection in the middle of its answer"))
        else:
            self._fail(ConnectionResetError("the app closed the connection without answering"))

    # -- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        self._status = 0
        self._headers = {}
        self._body = bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self._status = 0 if 100 <= status < 200 else status  # an interim answer: wait on

    def on_body(self, body: bytes) -> None:
        room = MAX_BODY - len(self._body)
        if room > 0:
            self._body += body[:room]

    def on_message_complete(self) -> None:
        if not self._status:
            return  # the end of an interim (1xx) answer
        self.keep_alive = self.parser.should_keep_alive()
        self._complete()

    # -- one exchange ----------------------------------------------------------------

    def _complete(self) -> None:
        answer = Answer(self._status, self._headers, bytes(self._body))
        self._status = 0
        waiter, self.waiter = self.waiter, None
        if waiter is None:
            self.close()  # an answer nobody asked for: the connection is out of step
        elif not waiter.done():
            waiter.set_result(answer)
        self.began = False

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    @property
    def reusable(self) -> bool:
        return not self.lost and self.keep_alive and self.waiter is None

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()


class HttpPush:
    """POSTs to one ``http://`` URL over a pool of keep-alive connections."""

    def __init__(self, url: str, user_agent: str = "sluice-sidecar") -> None:
        parts = urlsplit(url)
        if not plain_http(url):
            raise ValueError(f"not a plain http URL: {url!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # What every request starts with; the length and the caller's headers follow.
        self._start = f"POST {target} HTTP/1.1\r\nhost: {parts.netloc}\r\nuser-agent: {user_agent}\r\n"
        self._idle: list[_Connection] = []
        self.opened = 0  # connections opened in all (tests read it)

    async def post(self, headers: Mapping[str, str], body: bytes, timeout: float) -> Answer:
        """POST ``body`` with ``headers``; the app's answer within ``timeout`` seconds."""
        request = self._request(headers, body)
        async with asyncio.timeout(timeout):
            while self._idle:
                conn = self._idle.pop()
                if not conn.reusable:
                    continue
                try:
                    return await self._exchange(conn, request)
                except ConnectionResetError:
                    continue  # closed by the app while idle: the request never reached it
            try:
                _, conn = await asyncio.get_running_loop().create_connection(
                    _Connection, self.host, self.port
                )
            except OSError as e:
                raise AppDown(f"cannot connect to {self.host}:{self.port}: {e.strerror or e}") from e
            self.opened += 1
            try:
                return await self._exchange(conn, request)
            except ConnectionResetError as e:
                raise AppDown(str(e)) from e

    async def _exchange(self, conn: _Connection, request: bytes) -> Answer:
        try:
            answer = await conn.send(request)
        except BaseException:  # failed, timed out or cancelled: its answer may still come
            conn.close()
            raise
        if conn.reusable:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    def _request(self, headers: Mapping[str, str], body: bytes) -> bytes:
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        # Each field ends with the one CRLF put there: any other CR, LF or NUL came in a
        # name or a value, and would split the request.
        if fields.count("\r") != len(headers) or fields.count("\n") != len(headers) or "\0" in fields:
            raise ValueError(f"a header holds a line break or NUL: {fields[:200]!r}")
        head = f"{self._start}content-length: {len(body)}\r\n{fields}\r\n"
        return head.encode() + body

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
