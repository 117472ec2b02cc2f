"""The floor under any Python gRPC store: a server of the Streams service that answers every
append at once, storing nothing (no commit, no thread hop, no fsync), and hands each appended
event to its live subscribers as it answers.

The append section measures awaited single appends from the same Sluice client against it,
and the latency section an append reaching a subscriber, beside the store: what the store
adds is the difference, and what is left is the cost of gRPC messages in Python (grpc.aio on
both ends, uvloop here as in the store).

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
from google.protobuf.timestamp_pb2 import Timestamp

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
        self.subscribers: set[asyncio.Queue[pb.SubscribeResponse]] = set()

    def _take(self, request: pb.AppendRequest) -> pb.AppendResponse:
        response = _answer(request, self.position)
        if self.subscribers:
            created = Timestamp()
            created.GetCurrentTime()
            batch = pb.SubscribeResponse()
            for i, ev in enumerate(request.events):
                batch.events.events.add(
                    id=ev.id,
                    type=ev.type,
                    data=ev.data,
                    stream=request.stream,
                    revision=i,
                    position=self.position + i,
                    created=created,
                )
            for queue in self.subscribers:
                queue.put_nowait(batch)
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

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubscribeResponse]:
        """Live only, whatever the request asks: caught up at once, then every append."""
        queue: asyncio.Queue[pb.SubscribeResponse] = asyncio.Queue()
        self.subscribers.add(queue)
        try:
            yield pb.SubscribeResponse(caught_up=pb.CaughtUp(position=self.position))
            while True:
                yield await queue.get()
        finally:
            self.subscribers.discard(queue)


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
