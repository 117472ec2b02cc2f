"""Typed exceptions, mapped from the store's gRPC statuses and their ErrorInfo details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

#: The ErrorInfo domain of every Sluice error.
DOMAIN = "sluice.v1"


class SluiceError(Exception):
    """A refused or failed call. ``reason`` and ``metadata`` come from google.rpc.ErrorInfo."""

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = metadata or {}


class WrongExpectedRevision(SluiceError):
    """The stream was not at the expected revision (optimistic concurrency conflict)."""

    @property
    def stream(self) -> str:
        return self.metadata.get("stream", "")

    @property
    def expected(self) -> str:
        return self.metadata.get("expected", "")

    @property
    def actual(self) -> str:
        """The stream's last revision as text, or "no_stream"."""
        return self.metadata.get("actual", "")

    @property
    def actual_revision(self) -> int | None:
        return int(self.actual) if self.actual.isdigit() else None


class StreamDeleted(SluiceError):
    """The stream was deleted (tombstoned streams refuse appends forever)."""


class StreamNotFound(SluiceError):
    """The stream does not exist."""


class DuplicateEventId(SluiceError):
    """An event id is already stored at another place."""


class InvalidArgument(SluiceError):
    """The request broke a rule (stream name, event shape, ...)."""


class InvalidStreamName(InvalidArgument):
    """The stream name breaks the naming rules; ``metadata["field"]`` names the field."""


class InvalidEvent(InvalidArgument):
    """An event breaks a rule (no type, a bad id, too large with its metadata, ...)."""


class SystemStreamReserved(InvalidArgument):
    """Names starting with "$" belong to the store."""


class LimitExceeded(SluiceError):
    """A configured limit was exceeded; ``metadata["limit"]`` names it."""


class SubscriberTooSlow(SluiceError):
    """A gateway subscription that asked to be disconnected when it fell behind was."""

    @property
    def position(self) -> int:
        """The cursor to watch again from: nothing below it was missed."""
        return int(self.metadata.get("position", "0"))


class GroupNotFound(SluiceError):
    """The consumer group does not exist (never created, or deleted)."""

    @property
    def group(self) -> str:
        return self.metadata.get("group", "")


class GroupExists(SluiceError):
    """A group of that name exists already."""


class Fenced(SluiceError):
    """A member acted on what it no longer holds (a stale epoch, a partition moved away, a
    lease run out): it must stop, without committing, and heartbeat to learn what it has."""


class StaleMemberEpoch(Fenced):
    """The member's epoch is not its current one."""


class NotPartitionOwner(Fenced):
    """The member does not own that partition."""


class UnknownMember(Fenced):
    """The member is not in the group (its lease ran out): join again."""


class Unavailable(SluiceError):
    """The store cannot serve now (shutting down, restarting, unreachable): retry."""


class StorageFull(LimitExceeded):
    """The store's disk or database is full: no appends until space is freed; reads work."""


class Unauthenticated(SluiceError):
    """No credential, or one the server does not accept."""


class PermissionDenied(SluiceError):
    """The caller may not do this; ``metadata`` names principal, action and resource."""

    @property
    def principal(self) -> str:
        return self.metadata.get("principal", "")

    @property
    def action(self) -> str:
        return self.metadata.get("action", "")

    @property
    def resource(self) -> str:
        return self.metadata.get("resource", "")


class StoreReplaced(SluiceError):
    """The store at this address is another one than before (its ``store_id`` changed: a
    new or emptied database). Positions and cursors from the old one mean nothing there."""

    def __init__(self, known: str, now: str) -> None:
        super().__init__(
            f"the store was replaced (store id {now}, before {known}): positions and cursors from"
            " before do not apply",
            grpc.StatusCode.FAILED_PRECONDITION,
            "STORE_REPLACED",
            {"store_id": now, "previous_store_id": known},
        )


#: One class for each sluice.v1.ErrorReason (tests/store/test_client_helpers.py walks the
#: enum); the gRPC code decides only when a reply carries no reason.
BY_REASON: dict[str, type[SluiceError]] = {
    "WRONG_EXPECTED_REVISION": WrongExpectedRevision,
    "STREAM_DELETED": StreamDeleted,
    "STREAM_NOT_FOUND": StreamNotFound,
    "DUPLICATE_EVENT_ID": DuplicateEventId,
    "INVALID_STREAM_NAME": InvalidStreamName,
    "INVALID_EVENT": InvalidEvent,
    "INVALID_ARGUMENT": InvalidArgument,
    "SYSTEM_STREAM_RESERVED": SystemStreamReserved,
    "LIMIT_EXCEEDED": LimitExceeded,
    "STORE_UNAVAILABLE": Unavailable,
    "GROUP_NOT_FOUND": GroupNotFound,
    "GROUP_EXISTS": GroupExists,
    "STALE_MEMBER_EPOCH": StaleMemberEpoch,
    "NOT_PARTITION_OWNER": NotPartitionOwner,
    "UNKNOWN_MEMBER": UnknownMember,
    "SUBSCRIBER_TOO_SLOW": SubscriberTooSlow,
    "STORAGE_FULL": StorageFull,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
}
_BY_CODE: dict[grpc.StatusCode, type[SluiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: LimitExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.NOT_FOUND: StreamNotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}
_CODES = {c.value[0]: c for c in grpc.StatusCode}


def from_status(status: status_pb2.Status) -> SluiceError:
    """The typed exception for a google.rpc.Status."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    reason, metadata = "", {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
    cls = BY_REASON.get(reason) or _BY_CODE.get(code, SluiceError)
    return cls(status.message, code, reason, metadata)


def status_of(err: grpc.aio.AioRpcError | grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a call ended with: None when it carries none, or one whose
    code is not the call's (the transport ended the call otherwise: an answer whose
    metadata outgrew the receiver's limit arrives as RESOURCE_EXHAUSTED beside the
    details the server sent)."""
    try:
        return rpc_status.from_call(err)
    except ValueError:
        return None


def from_rpc_error(err: grpc.aio.AioRpcError | grpc.RpcError) -> SluiceError:
    """The one place gRPC errors become typed exceptions."""
    status = status_of(err)
    if status is not None:
        return from_status(status)
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    cls = _BY_CODE.get(code, SluiceError)
    return cls(message or str(code), code)


#: At most this many bytes (UTF-8) of an error's message and of each metadata value: with
#: the message in the status twice more (its details), the whole stays well under 8 KiB.
MAX_ERROR_TEXT = 512


def bounded(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """``text``, or as much of it as fits in ``limit`` bytes of UTF-8 followed by "…"."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "…"


def make_status(
    code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str]
) -> status_pb2.Status:
    """A google.rpc.Status with an ErrorInfo detail, plus BadRequest for an invalid ``field``
    and QuotaFailure for an exceeded ``limit`` (what servers send and from_status reads).

    The message and each metadata value are cut to MAX_ERROR_TEXT bytes: they may echo a
    caller's input, and gRPC clients refuse an answer whose metadata passes 8 KiB (by
    default), so an unbounded echo would turn a clear refusal into RESOURCE_EXHAUSTED."""
    message = bounded(message)
    metadata = {k: bounded(v) for k, v in metadata.items()}
    details: list[object] = [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)]
    if code == grpc.StatusCode.INVALID_ARGUMENT and "field" in metadata:
        violation = error_details_pb2.BadRequest.FieldViolation(field=metadata["field"], description=message)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in metadata:
        quota = error_details_pb2.QuotaFailure.Violation(subject=metadata["limit"], description=message)
        details.append(error_details_pb2.QuotaFailure(violations=[quota]))
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)  # type: ignore[arg-type]
        packed.append(a)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)
