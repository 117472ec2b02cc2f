"""The sluice.v1.Streams service: checks what callers send, then appends (through group
commit, ``commit``), reads, broadcasts and administers streams; Subscribe is served by
``subscriptions``."""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from sluice import eventbytes, security, telemetry
from sluice.ids import uuid7
from sluice.names import MAX_TYPE, event_fields_problem, has_control, is_system, name_problem, parse_uuid
from sluice.v1 import streams_pb2 as pb
from sluice_store import codec, positions
from sluice_store.access import Access
from sluice_store.broker import Broker
from sluice_store.checks import Undecodable, check_request, parser, refuse_undecodable
from sluice_store.commit import Committer
from sluice_store.config import Settings
from sluice_store.errors import (
    InvalidArgument,
    InvalidEvent,
    InvalidStreamName,
    LimitExceeded,
    StorageFull,
    StoreError,
    StoreUnavailable,
    StreamDeleted,
    StreamNotFound,
    SystemStreamReserved,
    abort,
    status_code,
    to_status,
)
from sluice_store.positions import start_point, stream_filter
from sluice_store.retention import Policy, age_cutoff_us, now_us
from sluice_store.rpc import STATS, Response, streaming_handler, timestamp, unary_handler
from sluice_store.storage.base import (
    P_POSITION,
    P_REVISION,
    AppendPart,
    Expect,
    NewEvent,
    Outcome,
    PartResult,
    Start,
    State,
    Storage,
    StreamMeta,
)
from sluice_store.storage.planner import validate_new_event_ids
from sluice_store.subscriptions import Subscriptions

log = logging.getLogger(__name__)

#: What an append session makes of a message: its appends, each checked or refused, and
#: the commit of the checked ones (None when there are none; a StoreError when refused).
Submitted = tuple[list[AppendPart | StoreError], asyncio.Future[list[Outcome]] | StoreError | None]

#: A Broadcast message without ``expires`` lives this long.
DEFAULT_EPHEMERAL_TTL_NS = 30 * 10**9


class StreamsService:
    """Handlers for sluice.v1.Streams; registered with byte-passing serializers (see server)."""

    def __init__(self, storage: Storage, broker: Broker, settings: Settings) -> None:
        self.storage = storage
        self.broker = broker
        self.settings = settings
        self.committer = Committer(storage)
        self.subscriptions = Subscriptions(storage, broker, settings, self.check_name)
        self.appended_events = 0  # new events stored (not replays)
        self.duplicate_appends = 0  # appends answered as replays of stored ones
        #: Set when the server shuts down: append sessions answer what they have read and end.
        self.closing = asyncio.Event()
        #: Who may call (the server sets it; by default everyone may do everything).
        self.access = Access(security.Guard(security.Authenticator(), security.Policy()))
        self.tracing = telemetry.tracing_enabled()
        #: False while storage is full and has not been given room again (see server).
        self.has_room: Callable[[], bool] = lambda: True
        self._good_names: set[str] = set()  # names that passed check_name
        self._good_types: set[str] = set()
        self._good_content_types: set[str] = {""}

    # -- validation -------------------------------------------------------------------

    def check_name(self, name: str, field: str = "stream", writing: bool = True) -> None:
        """The rules of sluice.names; ``writing``: not a store-reserved ("$") name either."""
        if writing and name in self._good_names:
            return
        limit = self.settings.max_stream_name
        problem = name_problem(name, limit)
        if problem:
            limits = {"limit": "max_stream_name", "max": limit} if len(name) > limit else {}
            raise InvalidStreamName(problem, field=field, **limits)
        if writing and is_system(name):
            raise SystemStreamReserved(
                f"stream names starting with '$' are reserved for the store: {name[:300]!r}", field=field
            )
        if writing:
            if len(self._good_names) > 100_000:
                self._good_names.clear()
            self._good_names.add(name)

    def _events(self, req: pb.AppendRequest, index: int) -> list[NewEvent]:
        s = self.settings
        prefix = f"appends[{index}]." if index >= 0 else ""
        events = req.events
        count = len(events)
        if not count:
            raise InvalidArgument("an append needs at least one event", field=prefix + "events")
        if count > s.max_events_per_request:
            raise LimitExceeded(
                f"{count} events in one request; max_events_per_request is {s.max_events_per_request}",
                limit="max_events_per_request",
                value=count,
                max=s.max_events_per_request,
            )
        trace = telemetry.current_traceparent() if self.tracing else None
        out: list[NewEvent] = []
        max_bytes = s.max_event_bytes
        good_types, good_ctypes = self._good_types, self._good_content_types
        for i, ev in enumerate(events):
            etype = ev.type
            if etype not in good_types:
                if not etype or len(etype) > MAX_TYPE or has_control(etype):
                    raise InvalidEvent(
                        f"{prefix}events[{i}].type must be 1 to 256 characters without control characters",
                        field=f"{prefix}events[{i}].type",
                    )
                if len(good_types) > 10_000:
                    good_types.clear()
                good_types.add(etype)
            given = ev.id
            if given:
                try:
                    eid, text = parse_uuid(given)
                except ValueError:
                    raise InvalidEvent(
                        f"{prefix}events[{i}].id is not a UUID: {given[:64]!r}",
                        field=f"{prefix}events[{i}].id",
                    ) from None
                if text != given:
                    ev.id = text
            else:
                eid, text = uuid7()
                ev.id = text
            metadata = ev.metadata
            ctype = ev.content_type
            if ctype in good_ctypes:
                ctype = ""  # checked before
            if metadata or ctype:
                field, problem = event_fields_problem(ctype, metadata)
                if field:
                    raise InvalidEvent(f"{prefix}events[{i}].{problem}", field=f"{prefix}events[{i}].{field}")
                if ctype:
                    if len(good_ctypes) > 1_000:
                        good_ctypes.clear()
                    good_ctypes.add(ctype)
            if metadata:
                if trace and "traceparent" not in metadata:
                    metadata["traceparent"] = trace
            elif trace:
                metadata["traceparent"] = trace
            data = ev.data
            if data:
                ev.ClearField("data")
            body = ev.SerializeToString()
            size = len(body) + len(data)
            if size > max_bytes:
                raise LimitExceeded(
                    f"{prefix}events[{i}] is {size} bytes; max_event_bytes is {max_bytes}",
                    limit="max_event_bytes",
                    value=size,
                    max=max_bytes,
                    field=f"{prefix}events[{i}]",
                )
            out.append(NewEvent(eid, text, bool(given), etype, body, data))
        return out

    def _part(self, req: pb.AppendRequest, index: int = -1) -> AppendPart:
        stream = req.stream
        self.check_name(stream, f"appends[{index}].stream" if index >= 0 else "stream")
        # Unset (most appends) means any: not reading it saves making an empty message.
        expect, revision = self._expected(req.expected) if req.HasField("expected") else (Expect.ANY, 0)
        return AppendPart(stream, expect, revision, self._events(req, index))

    @staticmethod
    def _expected(msg: pb.ExpectedRevision) -> tuple[Expect, int]:
        kind = msg.WhichOneof("expected")
        if kind == "revision":
            return Expect.EXACT, msg.revision
        if kind == "no_stream":
            return Expect.NO_STREAM, 0
        if kind == "stream_exists":
            return Expect.STREAM_EXISTS, 0
        return Expect.ANY, 0

    def _check_request_size(self, size: int) -> None:
        if size > self.settings.max_request_bytes:
            raise LimitExceeded(
                f"request is {size} bytes; max_request_bytes is {self.settings.max_request_bytes}",
                limit="max_request_bytes",
                value=size,
                max=self.settings.max_request_bytes,
            )

    def _response(self, r: PartResult, into: pb.AppendResponse | None = None) -> pb.AppendResponse:
        """The answer to one append, written into ``into`` when given (a field of a larger
        reply: setting it in place costs a third of building it and copying it in)."""
        if r.duplicate:
            self.duplicate_appends += 1
        else:
            self.appended_events += r.last_position - r.first_position + 1
        out = pb.AppendResponse() if into is None else into
        out.stream = r.stream
        out.first_revision = r.first_revision
        out.last_revision = r.last_revision
        out.first_position = r.first_position
        out.last_position = r.last_position
        if r.duplicate:
            out.duplicate = True
        return out

    def _full(self) -> StorageFull | None:
        """Why appends are refused now (the disk is full), or None."""
        return (
            None if self.has_room() else StorageFull("the disk is full: appends resume once space is freed")
        )

    def _submit(self, parts: list[AppendPart]) -> asyncio.Future[Outcome]:
        """Hand parts to the group commit (the checks every append path makes first)."""
        if full := self._full():
            raise full
        validate_new_event_ids(parts)
        return self.committer.submit(parts)

    def _session_part(self, req: pb.AppendRequest, principal: Any, peer: str) -> AppendPart | StoreError:
        """One append of a session message, checked, or why it is refused."""
        try:
            check_request(req)
            if self.access.enabled:
                self.access.check(principal, [("append", req.stream, "streams")], peer)
            self._check_request_size(req.ByteSize())
            part = self._part(req)
            if len(part.events) > 1:
                validate_new_event_ids([part])
            return part
        except StoreError as e:
            return e

    async def _append(self, parts: list[AppendPart]) -> list[pb.AppendResponse]:
        outcome = await self._submit(parts)
        if isinstance(outcome, StoreError):
            raise outcome
        return [self._response(r) for r in outcome]

    # -- appends ----------------------------------------------------------------------

    async def Append(self, request: pb.AppendRequest) -> pb.AppendResponse:
        self._check_request_size(request.ByteSize())
        (result,) = await self._append([self._part(request)])
        return result

    async def append_system(self, request: pb.AppendRequest) -> pb.AppendResponse:
        """Append to one of the store's own streams ("$..."), which Append refuses; for
        callers that checked the right to (a group member's dead letters)."""
        self._check_request_size(request.ByteSize())
        self.check_name(request.stream, writing=False)
        expect, revision = self._expected(request.expected)
        (result,) = await self._append(
            [AppendPart(request.stream, expect, revision, self._events(request, -1))]
        )
        return result

    async def AppendMany(self, request: pb.AppendManyRequest) -> pb.AppendManyResponse:
        self._check_request_size(request.ByteSize())
        if not request.appends:
            raise InvalidArgument("AppendMany needs at least one part", field="appends")
        parts = [self._part(req, i) for i, req in enumerate(request.appends)]
        return pb.AppendManyResponse(results=await self._append(parts))

    async def AppendSession(
        self,
        requests: AsyncIterator[pb.AppendSessionRequest | Undecodable],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.AppendSessionResponse]:
        #: Per message read: its appends, each checked (AppendPart) or refused (StoreError),
        #: and the commit of the checked ones (one future for them all), or why it failed.
        inflight: asyncio.Queue[Submitted | None] = asyncio.Queue(1024)
        access = self.access
        started = time.perf_counter()
        try:
            principal = access.admit(context, "AppendSession", None)
        except StoreError as e:
            STATS.record("AppendSession", status_code(e).name, started)
            await abort(context, e)
            return
        peer = context.peer() if access.enabled else ""

        def submit(msg: pb.AppendSessionRequest) -> Submitted:
            items = [self._session_part(req, principal, peer) for req in msg.appends]
            ops = [[item] for item in items if not isinstance(item, StoreError)]
            if not ops:
                return items, None
            return items, self._full() or self.committer.submit_many(ops)

        async def pump() -> None:
            try:
                async for msg in requests:
                    if isinstance(msg, Undecodable):
                        await inflight.put(([refuse_undecodable(msg)], None))
                        continue
                    await inflight.put(submit(msg))
            finally:
                await inflight.put(None)

        reader = asyncio.create_task(pump())
        # At shutdown the session stops reading; what it read is answered, then it ends with
        # UNAVAILABLE (the client sends what was unanswered again, to this store once it is
        # back or to another replica).
        closing = asyncio.create_task(self.closing.wait())
        closing.add_done_callback(lambda _: reader.cancel())
        code = "UNKNOWN"
        per_message = self.storage.appends_per_message
        try:
            while (submitted := await inflight.get()) is not None:
                items, commit = submitted
                outcomes: Iterator[Outcome] = iter(())
                if isinstance(commit, StoreError):
                    outcomes = itertools.repeat(commit)
                elif commit is not None:
                    outcomes = iter(await commit)
                response = pb.AppendSessionResponse()
                add = response.results.add
                for item in items:
                    outcome = item if isinstance(item, StoreError) else next(outcomes)
                    if isinstance(outcome, StoreError):
                        add(error=to_status(outcome))
                    else:
                        self._response(outcome[0], add().success)
                if hint := per_message():
                    response.appends_per_message = hint
                yield response
            if self.closing.is_set():
                code = "UNAVAILABLE"
                await abort(context, StoreUnavailable("the store is shutting down: append again"))
                return
            await reader  # surfaces a transport error from the request stream
            code = "OK"
        except asyncio.CancelledError:
            code = "CANCELLED"  # the client went away
            raise
        finally:
            reader.cancel()
            closing.cancel()
            STATS.record("AppendSession", code, started)

    # -- reads ------------------------------------------------------------------------

    async def _readable(self, name: str) -> StreamMeta:
        meta = await self.storage.stream(name)
        if meta is None or meta.state == State.MISSING or (meta.last_revision < 0):
            raise StreamNotFound(f"stream {name!r} does not exist", stream=name)
        if meta.state in (State.DELETED, State.TOMBSTONED):
            raise StreamDeleted(f"stream {name!r} was deleted", stream=name)
        return meta

    async def _first_revision(self, meta: StreamMeta) -> int:
        """The first revision still readable (count, size, truncation and age rules)."""
        if not age_cutoff_us(meta.policy, now_us()):
            return max(meta.floor(), meta.first_stored)
        rows = await self.storage.read_stream(meta, Start("start"), False, 1, False)
        return rows[0][P_REVISION] if rows else meta.last_revision + 1

    async def Read(self, request: pb.ReadRequest) -> AsyncIterator[Response]:
        s = self.settings
        batch = min(request.batch_size or s.max_read_batch, s.max_read_batch)
        remaining = request.max_count or (1 << 63)
        backwards = request.backwards
        with_data = not request.notifications_only
        start = start_point(request.__getattribute__("from"), "end" if backwards else "start")
        if request.stream:
            self.check_name(request.stream, writing=False)
            if request.HasField("filter"):
                raise InvalidArgument("filter applies to reads of all streams only", field="filter")
            meta = await self._readable(request.stream)
            header = pb.ReadHeader(
                first_revision=await self._first_revision(meta),
                last_revision=meta.last_revision,
                head_position=self.storage.head_position,
                store_id=self.storage.store_id,
            )
            yield pb.ReadResponse(header=header)
            while remaining > 0:
                rows = await self.storage.read_stream(
                    meta, start, backwards, min(batch, remaining), with_data
                )
                if not rows:
                    return
                yield eventbytes.read_response([eventbytes.event_bytes(r[4], r[5]) for r in rows])
                remaining -= len(rows)
                last = rows[-1][P_REVISION]
                if last == 0 and backwards:
                    return
                start = Start("revision", last - 1 if backwards else last + 1)
            return
        if start.kind == "revision":
            raise InvalidArgument("a revision start needs a stream", field="from.revision")
        head = self.storage.head_position
        position = await positions.position(self.storage, start, backwards)
        filt = stream_filter(request.filter)
        first = 1
        if not backwards and start.kind in ("position", "time"):
            first = await self.storage.removed_upto(filt, position) + 1
        yield pb.ReadResponse(
            header=pb.ReadHeader(head_position=head, first_position=first, store_id=self.storage.store_id)
        )
        while remaining > 0 and (position >= 1 if backwards else position <= head):
            rows, position, done = await self.storage.read_all(
                position, backwards, min(batch, remaining), filt, with_data
            )
            if not backwards:
                rows = [r for r in rows if r[P_POSITION] <= head]
            if rows:
                yield eventbytes.read_response([eventbytes.event_bytes(r[4], r[5]) for r in rows])
                remaining -= len(rows)
            if done:
                return

    async def Broadcast(self, request: pb.EphemeralMessage) -> pb.BroadcastResponse:
        self.check_name(request.stream)  # the rules of a write: no "$" names
        if problem := name_problem(request.type, MAX_TYPE, "type"):
            raise InvalidEvent(problem, field="type")
        field, problem = event_fields_problem(request.content_type, request.metadata)
        if field:
            raise InvalidEvent(problem, field=field)
        message = pb.SubscribeResponse(ephemeral=request).SerializeToString()
        if len(message) > self.settings.max_event_bytes:
            raise LimitExceeded(
                f"message of {len(message)} bytes is over max_event_bytes ({self.settings.max_event_bytes})",
                limit="max_event_bytes",
                value=len(message),
                max=self.settings.max_event_bytes,
            )
        expires = (
            request.expires.ToNanoseconds()
            if request.HasField("expires")
            else time.time_ns() + DEFAULT_EPHEMERAL_TTL_NS
        )
        count = self.broker.broadcast(message, request.stream, request.type, expires)
        return pb.BroadcastResponse(subscriptions=count)

    # -- administration ---------------------------------------------------------------

    async def _info(self, name: str, meta: StreamMeta | None) -> pb.StreamInfo:
        info = pb.StreamInfo(stream=name, state=pb.STREAM_STATE_MISSING, retention_source="none")
        if meta is None:
            return info
        has = meta.last_revision >= 0
        state = meta.state
        if state == State.ACTIVE and not has:
            state = State.MISSING
        info.state = int(state)  # type: ignore[assignment]
        info.has_events_written = has
        info.last_revision = max(meta.last_revision, 0)
        info.last_position = meta.last_position
        info.first_revision = await self._first_revision(meta) if has else 0
        info.event_count = await self.storage.count_events(meta) if has else 0
        info.created.CopyFrom(timestamp(meta.created_us))
        info.updated.CopyFrom(timestamp(meta.updated_us))
        info.retention.CopyFrom(meta.own.to_proto())
        info.effective_retention.CopyFrom(meta.policy.to_proto())
        info.retention_source = meta.source
        return info

    async def GetStreamInfo(self, request: pb.GetStreamInfoRequest) -> pb.StreamInfo:
        self.check_name(request.stream, writing=False)
        return await self._info(request.stream, await self.storage.stream(request.stream))

    async def SetRetention(self, request: pb.SetRetentionRequest) -> pb.StreamInfo:
        self.check_name(request.stream)
        policy = Policy.from_proto(request.retention)
        if min(policy.max_age_us, policy.ttl_us, 0) < 0:
            raise InvalidArgument("durations must not be negative", field="retention")
        meta = await self.storage.set_retention(request.stream, policy)
        return await self._info(request.stream, meta)

    async def DeleteStream(self, request: pb.DeleteStreamRequest) -> pb.DeleteStreamResponse:
        self.check_name(request.stream)
        expect, revision = self._expected(request.expected)
        position = await self.storage.delete_stream(request.stream, expect, revision, request.tombstone)
        return pb.DeleteStreamResponse(position=position)

    async def ListStreams(self, request: pb.ListStreamsRequest) -> pb.ListStreamsResponse:
        size = min(request.page_size or 100, 1000)
        try:
            after: str | None = base64.urlsafe_b64decode(request.page_token.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            after = None
        if after is None or has_control(after):  # a stream name has no control character
            raise InvalidArgument("page_token is not one this server gave", field="page_token")
        metas = await self.storage.list_streams(request.prefix, after, size + 1, request.include_deleted)
        more = len(metas) > size
        metas = metas[:size]
        out = pb.ListStreamsResponse(streams=[await self._info(m.name, m) for m in metas])
        if more:
            out.next_page_token = base64.urlsafe_b64encode(metas[-1].name.encode()).decode()
        return out


def methods(service: StreamsService, access: Access) -> dict[str, grpc.RpcMethodHandler]:
    """Method handlers; Read and Subscribe responses may be pre-serialized bytes."""
    unary = grpc.unary_unary_rpc_method_handler
    return {
        "Append": unary(
            unary_handler(service.Append, access, "Append"),
            parser(pb.AppendRequest),
            pb.AppendResponse.SerializeToString,
        ),
        "AppendMany": unary(
            unary_handler(service.AppendMany, access, "AppendMany"),
            parser(pb.AppendManyRequest),
            pb.AppendManyResponse.SerializeToString,
        ),
        "AppendSession": grpc.stream_stream_rpc_method_handler(
            service.AppendSession,
            parser(pb.AppendSessionRequest),
            pb.AppendSessionResponse.SerializeToString,
        ),
        "Read": grpc.unary_stream_rpc_method_handler(
            streaming_handler(service.Read, access, "Read"), parser(pb.ReadRequest), codec.serialize
        ),
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            streaming_handler(service.subscriptions.Subscribe, access, "Subscribe"),
            parser(pb.SubscribeRequest),
            codec.serialize,
        ),
        "GetStreamInfo": unary(
            unary_handler(service.GetStreamInfo, access, "GetStreamInfo", reading=True),
            parser(pb.GetStreamInfoRequest),
            pb.StreamInfo.SerializeToString,
        ),
        "SetRetention": unary(
            unary_handler(service.SetRetention, access, "SetRetention"),
            parser(pb.SetRetentionRequest),
            pb.StreamInfo.SerializeToString,
        ),
        "DeleteStream": unary(
            unary_handler(service.DeleteStream, access, "DeleteStream"),
            parser(pb.DeleteStreamRequest),
            pb.DeleteStreamResponse.SerializeToString,
        ),
        "Broadcast": unary(
            unary_handler(service.Broadcast, access, "Broadcast"),
            parser(pb.EphemeralMessage),
            pb.BroadcastResponse.SerializeToString,
        ),
        "ListStreams": unary(
            unary_handler(service.ListStreams, access, "ListStreams"),
            parser(pb.ListStreamsRequest),
            pb.ListStreamsResponse.SerializeToString,
        ),
    }
