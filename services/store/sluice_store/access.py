"""Who may call the store, and what each caller may do (see sluice.security for the
authenticator and the policy): every handler asks ``Access.admit`` first. Live reads
(Read, Subscribe) stay registered while they run, so that a policy reload that revokes
their grant ends them with PERMISSION_DENIED."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

import grpc

from sluice import security
from sluice.security import ANONYMOUS, Need, Principal
from sluice.v1 import streams_pb2 as pb
from sluice_store.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

#: The principal of the call being handled (for what a handler needs to know of it, such
#: as whom a group member belongs to).
caller: contextvars.ContextVar[Principal] = contextvars.ContextVar("caller", default=ANONYMOUS)

S, G = "streams", "groups"


def _reads(stream: str, filt: pb.Filter, action: str = "read") -> list[Need]:
    if stream:
        return [(action, stream, S)]
    return [(action, p + "*", S) for p in (list(filt.stream_prefixes) or [""])]


#: What each method needs, from its request. AppendSession is checked per append.
NEEDS: dict[str, Callable[[Any], list[Need]]] = {
    "Append": lambda r: [("append", r.stream, S)],
    "AppendMany": lambda r: [("append", a.stream, S) for a in r.appends],
    "AppendSession": lambda r: [],
    "Read": lambda r: _reads(r.stream, r.filter),
    "Subscribe": lambda r: _reads(r.stream, r.filter),
    "GetStreamInfo": lambda r: [("read", r.stream, S)],
    "SetRetention": lambda r: [("retention", r.stream, S)],
    "DeleteStream": lambda r: [("delete", r.stream, S)],
    "ListStreams": lambda r: [("list", r.prefix + "*", S)],
    "Broadcast": lambda r: [("publish", r.stream, S)],
    "CreateGroup": lambda r: [("admin", r.group, G)],
    "UpdateGroup": lambda r: [("admin", r.group, G)],
    "ResetCursors": lambda r: [("admin", r.group, G)],
    "DeleteGroup": lambda r: [("admin", r.group, G)],
    "DescribeGroup": lambda r: [("list", r.group, G)],
    "ListGroups": lambda r: [("list", "*", G)],
    "Heartbeat": lambda r: [("join", r.group, G)],
    "CommitCursor": lambda r: [("join", r.group, G)],
    "DeadLetter": lambda r: [("join", r.group, G)],
    "Redrive": lambda r: [("admin", r.group, G)],
}
#: Changes an audit line records when they succeed.
ADMIN = {
    "SetRetention",
    "DeleteStream",
    "CreateGroup",
    "UpdateGroup",
    "ResetCursors",
    "DeleteGroup",
    "Redrive",
}


class Access:
    """The guard, speaking the store's errors."""

    def __init__(self, guard: security.Guard) -> None:
        self.guard = guard
        self.enabled = guard.enabled

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        mtls = self.guard.authenticator.mtls
        identity, expires = security.peer_certificate(context.auth_context()) if mtls else ([], 0.0)
        try:
            return self.guard.principal(metadata, identity, context.peer(), expires)
        except security.Unauthenticated as e:
            raise Unauthenticated(str(e)) from None

    def check(self, principal: Principal, needs: list[Need], peer: str = "") -> None:
        try:
            self.guard.check(principal, needs, peer)
        except security.Denied as e:
            raise PermissionDenied(
                str(e), principal=e.principal, action=e.action, resource=e.resource
            ) from None

    def admit(self, context: grpc.aio.ServicerContext, method: str, request: Any) -> Principal:
        """The caller, allowed what ``method`` does with ``request``; else a refusal."""
        if not self.enabled:
            return ANONYMOUS
        principal = self.authenticate(context)
        self.check(principal, NEEDS[method](request), context.peer())
        caller.set(principal)
        return principal
