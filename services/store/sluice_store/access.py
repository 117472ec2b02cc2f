"""Who may call the store, and what each caller may do (see sluice.security for the
authenticator and the policy): every handler asks ``Access.admit`` first. Live reads
(Read, Subscribe) stay registered while they run, so that a policy reload that revokes
their grant ends them with PERMISSION_DENIED."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import grpc

from sluice import security
from sluice.security import ANONYMOUS, Principal
from sluice.v1 import streams_pb2 as pb
from sluice_store.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

#: The principal of the call being handled (for what a handler needs to know of it, such
#: as whom a group member belongs to).
caller: contextvars.ContextVar[Principal] = contextvars.ContextVar("caller", default=ANONYMOUS)

Need = tuple[str, str, str]  # action, resource (a name, or a prefix ending with "*"), kind
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
}
#: Changes an audit line records when they succeed.
ADMIN = {"SetRetention", "DeleteStream", "CreateGroup", "UpdateGroup", "ResetCursors", "DeleteGroup"}


@dataclasses.dataclass(eq=False)
class Live:
    principal: Principal
    needs: list[Need]
    task: asyncio.Task[Any]
    revoked: Need | None = None


class Access:
    def __init__(self, authenticator: security.Authenticator, policy: security.Policy) -> None:
        self.authenticator = authenticator
        self.policy = policy
        self.enabled = authenticator.configured or policy.configured
        self._live: set[Live] = set()

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        try:
            identity = security.peer_identity(context.auth_context()) if self.authenticator.mtls else []
            return self.authenticator.principal(metadata, identity)
        except security.Unauthenticated as e:
            security.audit_event("refused", "", "authenticate", "", peer=context.peer(), why=str(e))
            raise Unauthenticated(str(e)) from None

    def check(self, principal: Principal, needs: list[Need], peer: str = "") -> None:
        for action, resource, kind in needs:
            try:
                self.policy.check(principal, action, resource, kind)
            except security.Denied as e:
                security.audit_event("refused", principal.name, action, e.resource, peer=peer)
                raise PermissionDenied(
                    str(e), principal=principal.name, action=action, resource=e.resource
                ) from None

    def admit(self, context: grpc.aio.ServicerContext, method: str, request: Any) -> Principal:
        """The caller, allowed what ``method`` does with ``request``; else a refusal."""
        if not self.enabled:
            return ANONYMOUS
        principal = self.authenticate(context)
        self.check(principal, NEEDS[method](request), context.peer())
        caller.set(principal)
        return principal

    def register(self, principal: Principal, needs: list[Need]) -> Live | None:
        """Keep a live read's grant under watch (policy reloads); None when nothing can revoke it."""
        if not self.policy.configured:
            return None
        live = Live(principal, needs, asyncio.current_task())  # type: ignore[arg-type]
        self._live.add(live)
        return live

    def unregister(self, live: Live | None) -> None:
        if live is not None:
            self._live.discard(live)

    def reload(self) -> None:
        """Read the policy again if it changed, and end live reads it no longer allows."""
        try:
            changed = self.policy.reload()
        except (ValueError, KeyError, TypeError) as e:
            log.error("policy file not loaded, keeping the previous rules: %s", e)
            return
        if not changed:
            return
        for live in list(self._live):
            for action, resource, kind in live.needs:
                try:
                    self.policy.check(live.principal, action, resource, kind)
                except security.Denied:
                    live.revoked = (action, resource, kind)
                    security.audit_event("revoked", live.principal.name, action, resource)
                    live.task.cancel()
                    break
