"""Reply serialization for the store's handlers: messages, or bytes assembled already
(the event byte layout itself is ``sluice.eventbytes``)."""

from __future__ import annotations

from sluice.v1 import streams_pb2 as pb


def serialize(msg: pb.ReadResponse | pb.SubscribeResponse | bytes) -> bytes:
    """Response serializer for handlers that yield either messages or pre-built bytes."""
    if isinstance(msg, bytes):
        return msg
    return msg.SerializeToString()
