"""Sluice: the Python client for the Sluice event store."""

from sluice.client import (
    ANY,
    END,
    NO_STREAM,
    START,
    STREAM_EXISTS,
    AppendSession,
    Batcher,
    Client,
    Position,
    Revision,
    new_event,
)
from sluice.errors import (
    DuplicateEventId,
    InvalidArgument,
    LimitExceeded,
    SluiceError,
    StreamDeleted,
    StreamNotFound,
    Unavailable,
    WrongExpectedRevision,
)

__all__ = [
    "ANY",
    "END",
    "NO_STREAM",
    "START",
    "STREAM_EXISTS",
    "AppendSession",
    "Batcher",
    "Client",
    "DuplicateEventId",
    "InvalidArgument",
    "LimitExceeded",
    "Position",
    "Revision",
    "SluiceError",
    "StreamDeleted",
    "StreamNotFound",
    "Unavailable",
    "WrongExpectedRevision",
    "new_event",
]
