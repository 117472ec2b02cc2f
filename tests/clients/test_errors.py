"""Errors as clients see them: a refusal's details survive the trip, an echo of a caller's
input cannot grow an answer past what gRPC clients accept, and a call the transport ended
otherwise still becomes a typed error."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

from sluice.errors import MAX_ERROR_TEXT, SluiceError, bounded, from_rpc_error, make_status
from sluice.v1 import streams_pb2 as pb

HUGE = "x" * 100_000


def test_an_error_echoing_a_huge_input_stays_small_and_keeps_its_start() -> None:
    status = make_status(
        grpc.StatusCode.NOT_FOUND, "NOT_FOUND", f"group {HUGE!r} does not exist", {"group": HUGE}
    )
    assert len(status.SerializeToString()) < 4096  # with room for grpc-message beside it
    assert status.message.startswith("group 'xxx") and status.message.endswith("…")
    assert len(status.message.encode()) <= MAX_ERROR_TEXT


def test_short_text_is_kept_whole_and_cuts_fall_between_characters() -> None:
    assert bounded("stream 'orders' was deleted") == "stream 'orders' was deleted"
    cut = bounded("é" * 1000)  # two bytes each: a cut must not split one
    assert cut.endswith("…") and set(cut[:-1]) == {"é"} and len(cut.encode()) <= MAX_ERROR_TEXT


class _Mismatched:
    """A server whose answer carries details of one code and ends with another: what a
    client makes of an answer whose metadata passed its soft limit (8 KiB), as the store's
    did when it echoed a 5,000-character group name twice. (gRPC refuses such an answer at
    random between its soft and hard limits; this one does it every time.)"""

    async def Append(self, request: pb.AppendRequest, context: grpc.aio.ServicerContext) -> pb.AppendResponse:
        details = make_status(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "no such thing", {})
        context.set_trailing_metadata((("grpc-status-details-bin", details.SerializeToString()),))
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "received metadata size exceeds soft limit")
        raise AssertionError("unreachable")


async def test_a_call_the_transport_ended_otherwise_is_still_a_typed_error() -> None:
    handler = grpc.method_handlers_generic_handler(
        "sluice.v1.Streams",
        {
            "Append": grpc.unary_unary_rpc_method_handler(
                _Mismatched().Append, pb.AppendRequest.FromString, pb.AppendResponse.SerializeToString
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary(
                "/sluice.v1.Streams/Append",
                request_serializer=pb.AppendRequest.SerializeToString,
                response_deserializer=pb.AppendResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await call(pb.AppendRequest(stream="s"), timeout=10)
    finally:
        await server.stop(0)
    # The details say NOT_FOUND, the call says RESOURCE_EXHAUSTED: the call's code wins,
    # where grpc_status would raise ValueError on the mismatch.
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(ValueError):
        rpc_status.from_call(ended.value)
    err = from_rpc_error(ended.value)
    assert isinstance(err, SluiceError) and err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
