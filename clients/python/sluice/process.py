"""What every Sluice server process does the same way: bind its gRPC port (port 0: any),
start from its settings with uvloop, wait for SIGTERM or SIGINT, and settle its heap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from sluice.settings import ConfigError

if TYPE_CHECKING:
    import grpc

T = TypeVar("T")

#: Options every Sluice gRPC server takes. gRPC core queues at most 1,000 calls that arrive
#: before the server asks for them (grpc.aio asks one at a time), and cancels the rest: a
#: burst of new calls (2,000 subscribers reconnecting at once) had about one in ten
#: cancelled before its handler ran. Queue them instead (up to 100,000); each gets its turn.
GRPC_SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 100_000),
]


def listen_grpc(
    server: grpc.aio.Server, addr: str, setting: str, credentials: grpc.ServerCredentials | None = None
) -> int:
    """Bind a gRPC server to ``addr`` (port 0: any free port), with TLS when given
    ``credentials``; the port it got.

    A port another process holds (without ``SO_REUSEPORT`` on both sides), or an address
    that is not this host's, fails at start with an error that names the setting.
    """
    try:
        if credentials is None:
            port: int = server.add_insecure_port(addr)
        else:
            port = server.add_secure_port(addr, credentials)
    except RuntimeError:  # grpcio raises where older releases returned 0
        port = 0
    if not port:
        raise OSError(
            f"{setting}: cannot listen on {addr}: the port is in use or the address is not this host's"
        )
    return port


async def health_listener(servicer: Any, addr: str, reuse_port: bool = False) -> tuple[grpc.aio.Server, int]:
    """A plaintext gRPC server with nothing but ``servicer`` (grpc.health.v1) on ``addr``:
    what the kubelet's gRPC probes reach when the service port speaks TLS (``reuse_port``:
    shared with the other workers of one gateway)."""
    import grpc
    from grpc_health.v1 import health_pb2_grpc

    server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port)), *GRPC_SERVER_OPTIONS])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = listen_grpc(server, addr, "health_addr")
    await server.start()
    return server, port


#: What every LogRecord has; anything else on a record is a field of the event logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the trace and span ids of the
    current span (when there is one), and the fields given with the record (``extra``)."""

    converter = time.gmtime  # type: ignore[assignment]  # UTC, as the Z says

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        try:
            from opentelemetry import trace

            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                out["trace_id"] = f"{ctx.trace_id:032x}"
                out["span_id"] = f"{ctx.span_id:016x}"
        except ImportError:
            pass
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class StartFailed(Exception):
    """A process could not start for a reason outside its code (its database cannot be
    opened): said in one line by run_main, exit status 1."""


def run_main(
    prog: str,
    load_settings: Callable[[], T],
    serve: Callable[[T], Coroutine[Any, Any, None]],
    use_uvloop: Callable[[T], bool] = lambda _: True,
) -> None:
    """A Sluice process's entry point: logging, settings that fail fast, uvloop, asyncio.run."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
    except ConfigError as e:
        sys.exit(f"{prog}: configuration error: {e}")
    if getattr(settings, "log_format", "text") == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    if use_uvloop(settings):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.install()
    try:
        asyncio.run(serve(settings))
    except ConfigError as e:
        sys.exit(f"{prog}: configuration error: {e}")
    except (OSError, StartFailed) as e:
        sys.exit(f"{prog}: {e}")


def settle_heap() -> None:
    """After start-up: what exists now lives as long as the process. Keep it out of the
    collector's young generations and collect less often, to shorten pauses on hot paths."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def shutdown_signal() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (the start of a graceful shutdown). Made first thing
    in a process's ``serve``: a signal that lands while it starts, or as soon as it says it is
    listening, still shuts it down gracefully instead of killing it."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def started(start: Awaitable[None], stop: asyncio.Event) -> bool:
    """Await a server's start unless a shutdown signal comes first (a store still connecting
    to its database, a sidecar still making its group): then the start is cancelled and the
    answer is False, and the caller stops what did start and exits."""
    starting = asyncio.ensure_future(start)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if starting.done():
        starting.result()  # a failed start raises here
        return True
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    return False
