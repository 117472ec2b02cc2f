"""The gRPC core settings Sluice's processes run with; set before grpc is first imported.

gRPC reads ``GRPC_EXPERIMENTS`` once, when its core starts (on ``import grpc``). With the
EventEngine client and listener on (grpcio's default since 1.6x), every message crosses three
threads in each process: the EventEngine thread reads the socket, the asyncio poller thread
takes the completion, and the event loop runs it. With them off, the poller thread reads the
socket itself. Measured here (bench/echo.py, one event per call awaited one by one, grpc.aio
on both ends): 4,400 to 7,900 calls/s, the client's CPU per call 136 to 84 µs and the
server's 115 to 65 µs; the store's awaited appends 2,250 to 3,000/s and its batches of 100
events 49,000 to 64,000/s at ``full``.

A value already in the environment wins, an empty one included (``GRPC_EXPERIMENTS=``
gives gRPC's defaults back). Nothing is set when grpc was imported before this module: the
setting would no longer reach this process, only its children.
"""

from __future__ import annotations

import os
import sys

#: Both the client and the listener side: the store, gateway and sidecar are each both.
EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def apply(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Set ``GRPC_EXPERIMENTS`` unless it is set or grpc is imported; whether it did."""
    if "grpc" in sys.modules or "GRPC_EXPERIMENTS" in environ:
        return False
    environ["GRPC_EXPERIMENTS"] = EXPERIMENTS
    return True


apply()
