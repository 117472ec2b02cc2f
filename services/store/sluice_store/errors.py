"""The store's errors, and the one table that turns them into gRPC statuses with details."""

from __future__ import annotations

import grpc
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from sluice.errors import make_status
from sluice.v1 import streams_pb2 as pb


class StoreError(Exception):
    """A refused request: its reason (an ErrorReason name), message and structured metadata."""

    reason: pb.ErrorReason.ValueType = pb.INVALID_ARGUMENT

    def __init__(self, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items()}


class WrongExpectedRevision(StoreError):
    reason = pb.WRONG_EXPECTED_REVISION


class StreamDeleted(StoreError):
    reason = pb.STREAM_DELETED


class StreamNotFound(StoreError):
    reason = pb.STREAM_NOT_FOUND


class DuplicateEventId(StoreError):
    reason = pb.DUPLICATE_EVENT_ID


class InvalidStreamName(StoreError):
    reason = pb.INVALID_STREAM_NAME


class SystemStreamReserved(StoreError):
    reason = pb.SYSTEM_STREAM_RESERVED


class InvalidEvent(StoreError):
    reason = pb.INVALID_EVENT


class InvalidArgument(StoreError):
    reason = pb.INVALID_ARGUMENT


class LimitExceeded(StoreError):
    reason = pb.LIMIT_EXCEEDED


class StoreUnavailable(StoreError):
    reason = pb.STORE_UNAVAILABLE


class StorageFull(StoreError):
    """The disk or database is full: no appends until space is freed; reads go on."""

    reason = pb.STORAGE_FULL

    def __init__(self, message: str, **metadata: object) -> None:
        super().__init__(message, limit="storage", **metadata)


class Unauthenticated(StoreError):
    reason = pb.UNAUTHENTICATED


class PermissionDenied(StoreError):
    reason = pb.PERMISSION_DENIED


# reason -> gRPC status code. Reading a deleted stream is NOT_FOUND; writing one is
# FAILED_PRECONDITION (see status_code).
_CODES: dict[pb.ErrorReason.ValueType, grpc.StatusCode] = {
    pb.WRONG_EXPECTED_REVISION: grpc.StatusCode.FAILED_PRECONDITION,
    pb.STREAM_DELETED: grpc.StatusCode.FAILED_PRECONDITION,
    pb.STREAM_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    pb.DUPLICATE_EVENT_ID: grpc.StatusCode.ALREADY_EXISTS,
    pb.INVALID_STREAM_NAME: grpc.StatusCode.INVALID_ARGUMENT,
    pb.SYSTEM_STREAM_RESERVED: grpc.StatusCode.INVALID_ARGUMENT,
    pb.INVALID_EVENT: grpc.StatusCode.INVALID_ARGUMENT,
    pb.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    pb.LIMIT_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    pb.STORE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    pb.STORAGE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    pb.GROUP_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    pb.GROUP_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    pb.STALE_MEMBER_EPOCH: grpc.StatusCode.FAILED_PRECONDITION,
    pb.NOT_PARTITION_OWNER: grpc.StatusCode.FAILED_PRECONDITION,
    pb.UNKNOWN_MEMBER: grpc.StatusCode.FAILED_PRECONDITION,
    pb.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    pb.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}


def status_code(err: StoreError, reading: bool = False) -> grpc.StatusCode:
    if reading and err.reason == pb.STREAM_DELETED:
        return grpc.StatusCode.NOT_FOUND
    return _CODES[err.reason]


def to_status(err: StoreError, reading: bool = False) -> status_pb2.Status:
    """A google.rpc.Status with an ErrorInfo detail (and BadRequest for invalid fields)."""
    return make_status(status_code(err, reading), pb.ErrorReason.Name(err.reason), err.message, err.metadata)


def internal_status(message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.INTERNAL, message=message)


async def abort(context: grpc.aio.ServicerContext, err: StoreError, reading: bool = False) -> None:
    """End the RPC with the error's status and details."""
    await context.abort_with_status(rpc_status.to_status(to_status(err, reading)))
