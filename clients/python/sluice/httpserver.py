"""The HTTP servers of the gateway and the sidecar: bounded against slow or idle clients.

aiohttp closes a connection that has not sent a whole request head, or has sat idle
between requests, once its keep-alive timeout passes (armed when the connection opens;
data alone does not reset it), so ``idle_timeout`` is both the header-read and the idle
limit. On top, at most ``max_connections`` are open at once: a connection over the limit
is closed as it arrives (the client sees a reset, and a well-behaved one retries), so a
flood of half-open connections cannot take every file descriptor. Long-lived responses
(Server-Sent Events) are not cut: the timeout applies only while no request is running.

This module needs aiohttp, which the gateway and the sidecar install; the client alone
does not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware

from sluice.errors import bounded

log = logging.getLogger(__name__)

#: The largest request body the gateway and the sidecar read (``client_max_size``): a
#: request of the store's default max_request_bytes (16 MiB) as JSON, bytes in base64 (4/3
#: the size), with room. aiohttp's own default, 1 MiB, refused one event near max_event_bytes.
MAX_BODY_BYTES = 24 << 20

#: A service's JSON refusal: (HTTP status, gRPC code name, reason, message, metadata).
Refuse = Callable[[int, str, str, str, dict[str, str]], web.Response]


def json_refusals(refuse: Refuse) -> Middleware:
    """aiohttp's own refusals, which it answers as plain text, in the service's JSON error
    shape: a body over MAX_BODY_BYTES (413), and under /v1/ a path with no endpoint (404)
    or a method the path does not take (405, with Allow), as grpc-gateway answers. Outside
    /v1/ (the console's pages) aiohttp's 404 and 405 stand."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = {"limit": "max_body_bytes", "max": str(MAX_BODY_BYTES), "field": "body"}
            return refuse(
                413, "RESOURCE_EXHAUSTED", "LIMIT_EXCEEDED", f"the body is over {MAX_BODY_BYTES} bytes", limit
            )
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as e:
            if not request.path.startswith("/v1/"):
                raise
            path = bounded(request.path, 200)
            if not isinstance(e, web.HTTPMethodNotAllowed):
                return refuse(404, "NOT_FOUND", "NOT_FOUND", f"no endpoint at {path}", {"path": path})
            allowed = ", ".join(sorted(e.allowed_methods))
            message = f"{request.method} is not served at {path}; allowed: {allowed}"
            response = refuse(405, "UNIMPLEMENTED", "UNIMPLEMENTED", message, {"allow": allowed})
            response.headers["Allow"] = allowed
            return response

    return middleware


class _Unparsable(logging.Filter):
    """aiohttp answers a request it cannot parse (a URL or header past its limits, broken
    HTTP) with 400, and logs it at ERROR with a traceback: a client's mistake at the
    server's loudest level, and a way for any client to flood the log. Those records go
    out at DEBUG, one line each, instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg = f"{record.msg}: {exc}"  # "400, message: ..." (aiohttp cuts what it quotes)
        record.exc_info = record.exc_text = None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


logging.getLogger("aiohttp.server").addFilter(_Unparsable())


class BoundedRunner(web.AppRunner):
    """An AppRunner whose connections time out when idle and are capped in number."""

    def __init__(
        self, app: web.Application, *, idle_timeout: float, max_connections: int, **kwargs: Any
    ) -> None:
        super().__init__(app, keepalive_timeout=idle_timeout, **kwargs)
        self.max_connections = max_connections
        self._refused_logged = 0.0

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        admit = server.connection_made

        def connection_made(handler: web_protocol.RequestHandler, transport: asyncio.Transport) -> None:
            if len(server.connections) >= self.max_connections:
                now = time.monotonic()
                if now - self._refused_logged > 60:
                    self._refused_logged = now
                    log.warning("HTTP: %d connections open, the limit; refusing more", self.max_connections)
                transport.abort()
                return
            admit(handler, transport)

        server.connection_made = connection_made  # type: ignore[method-assign]
        return server
