"""The floor under any Python gRPC store: a server of the Streams service that answers every
append at once, storing nothing (no commit, no thread hop, no fsync).

The append section measures awaited single appends from the same Sluice client against it,
beside the store: what the store adds is the difference, and what is left is the cost of
a gRPC message each way in Python (grpc.aio on both ends, uvloop here as in the store).

    python bench/echo.py [PORT]     # prints "grpc echo listening on HOST:PORT"
"""

from __future__ import annotations

# First, before grpc: the gRPC core settings the store runs with (sluice/grpcenv.py), so
# the floor is measured on the same footing when this runs on its own.
# isort: off
import sluice.grpcenv  # noqa: F401

# isort: on

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc

from sluice.process import GRPC_SERVER_OPTIONS
from sluice.v1 import streams_pb2 as pb
from sluice.v1 import streams_pb2_grpc as pb_grpc


def _answer(request: pb.AppendRequest, position: int) -> pb.AppendResponse:
    n = len(request.events)
    return pb.AppendResponse(
        stream=request.stream,
        first_revision=0,
        last_revision=n - 1,
        first_position=position,
        last_position=position + n - 1,
    )


class Echo(pb_grpc.StreamsServicer):
    def __init__(self) -> None:
        self.position = 1

    def _take(self, request: pb.AppendRequest) -> pb.AppendResponse:
        response = _answer(request, self.position)
        self.position += len(request.events)
        return response

    async def Append(self, request: pb.AppendRequest, context: grpc.aio.ServicerContext) -> pb.AppendResponse:
        return self._take(request)

    async def AppendSession(
        self, requests: AsyncIterator[pb.AppendSessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AppendSessionResponse]:
        async for msg in requests:
            yield pb.AppendSessionResponse(
                results=[pb.AppendResult(success=self._take(r)) for r in msg.appends]
            )


async def main(port: int) -> None:
    server = grpc.aio.server(options=GRPC_SERVER_OPTIONS)
    pb_grpc.add_StreamsServicer_to_server(Echo(), server)  # type: ignore[abstract]  # appends only
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"grpc echo listening on 127.0.0.1:{bound}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
