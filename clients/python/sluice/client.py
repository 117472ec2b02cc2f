"""The async Python client for the Sluice store.

Over 500 lines because it is the public API in one place: ``Client`` (appends, reads,
subscriptions, streams, groups, membership), ``AppendSession`` and ``Batcher``, and the
start-point and expected-revision markers they take."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import json
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Self, TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from sluice import telemetry
from sluice.credentials import Credentials, bearer_interceptors
from sluice.errors import (
    SluiceError,
    StoreReplaced,
    StreamNotFound,
    Unavailable,
    WrongExpectedRevision,
    from_rpc_error,
    from_status,
)
from sluice.ids import uuid7_text
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import groups_pb2_grpc as gpb_grpc
from sluice.v1 import streams_pb2 as pb
from sluice.v1 import streams_pb2_grpc as pb_grpc

DEFAULT_ADDR = "127.0.0.1:50051"
S = TypeVar("S")


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Expected-revision markers; an ``int`` means an exact revision.
ANY = _Marker("ANY")
NO_STREAM = _Marker("NO_STREAM")
STREAM_EXISTS = _Marker("STREAM_EXISTS")
Expected = _Marker | int

#: Start-point markers; see Revision, Position, or pass a datetime.
START = "start"
END = "end"


@dataclasses.dataclass(frozen=True)
class Revision:
    """Start at this stream revision (inclusive)."""

    value: int


@dataclasses.dataclass(frozen=True)
class Position:
    """Start at this global position (inclusive): a cursor. Resume with last seen + 1."""

    value: int


StartAt = str | Revision | Position | datetime | timestamp_pb2.Timestamp | None


def new_event(
    type: str,
    data: bytes | str | Mapping[str, Any] | Sequence[Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    id: str | uuid.UUID | None = None,
    content_type: str | None = None,
) -> pb.EventData:
    """An event with a fresh UUID (so retries are idempotent); dicts and lists become JSON."""
    raw: bytes
    if isinstance(data, bytes):
        raw = data
    elif isinstance(data, str):
        raw = data.encode()
    elif data is None:
        raw = b""
    else:
        raw = json.dumps(data, separators=(",", ":")).encode()
        content_type = content_type or "application/json"
    md = dict(metadata) if metadata else {}
    telemetry.inject(md)
    # Fields set one by one, and only those that are there: keyword arguments to the
    # constructor cost more, and an empty map or string still a conversion each (a batch
    # of 1,000 events pays it 1,000 times).
    ev = pb.EventData()
    ev.id = str(id) if id else uuid7_text()
    ev.type = type
    if raw:
        ev.data = raw
    if md:
        ev.metadata.update(md)
    if content_type:
        ev.content_type = content_type
    return ev


def _expected(expected: Expected) -> pb.ExpectedRevision:
    if isinstance(expected, int):
        return pb.ExpectedRevision(revision=expected)
    if expected is NO_STREAM:
        return pb.ExpectedRevision(no_stream=empty_pb2.Empty())
    if expected is STREAM_EXISTS:
        return pb.ExpectedRevision(stream_exists=empty_pb2.Empty())
    return pb.ExpectedRevision(any=empty_pb2.Empty())


def _start(at: StartAt) -> pb.StartPoint | None:
    if at is None:
        return None
    if at == START:
        return pb.StartPoint(start=empty_pb2.Empty())
    if at == END:
        return pb.StartPoint(end=empty_pb2.Empty())
    if isinstance(at, Revision):
        return pb.StartPoint(revision=at.value)
    if isinstance(at, Position):
        return pb.StartPoint(position=at.value)
    if isinstance(at, datetime):
        sp = pb.StartPoint()
        sp.time.FromDatetime(at)
        return sp
    if isinstance(at, timestamp_pb2.Timestamp):  # e.g. an event's `created`
        sp = pb.StartPoint()
        sp.time.CopyFrom(at)
        return sp
    raise ValueError(f"unknown start point {at!r}")


def _where(
    req: pb.ReadRequest | pb.SubscribeRequest,
    start: StartAt,
    prefixes: Iterable[str] | None,
    types: Iterable[str] | None,
) -> None:
    """Set a read or subscription's start point and filter."""
    sp = _start(start)
    if sp is not None:
        getattr(req, "from").CopyFrom(sp)
    if prefixes or types:
        req.filter.CopyFrom(pb.Filter(stream_prefixes=list(prefixes or ()), event_types=list(types or ())))


def _request(stream: str, events: Iterable[pb.EventData], expected: Expected) -> pb.AppendRequest:
    if expected is ANY:  # unset means any: one message less to build and send
        return pb.AppendRequest(stream=stream, events=events)
    return pb.AppendRequest(stream=stream, expected=_expected(expected), events=events)


SubscriptionItem = pb.RecordedEvent | pb.CaughtUp | pb.Checkpoint | pb.Heartbeat | pb.FellBehind


#: Appends larger than this go as their own call, not over the client's shared session;
#: it is also the most one session message packs.
SHARED_SESSION_MAX_BYTES = 1 << 20
#: Seconds a client's shared session serves new appends before a fresh one replaces it
#: (a new call re-reads rotated credentials and may land on another store replica).
SHARED_SESSION_MAX_AGE = 60.0

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


class Connection:
    """A gRPC channel a client owns: ``async with``, and ``close()`` safe to call twice.
    With ``credentials`` (else from SLUICE_TLS_* and SLUICE_TOKEN* variables, when set):
    TLS and a bearer token on every call."""

    def __init__(
        self,
        target: str,
        channel: grpc.aio.Channel | None,
        options: Sequence[tuple[str, Any]],
        timeout: float | None,
        credentials: Credentials | None = None,
    ) -> None:
        self.target = target
        interceptors: list[Any] = []
        if channel is None and telemetry.tracing_enabled():
            from opentelemetry.instrumentation.grpc import aio_client_interceptors

            interceptors = aio_client_interceptors()  # type: ignore[no-untyped-call]
        creds = credentials if credentials is not None else Credentials.from_env()
        token = creds.token_source() if creds else None
        if token is not None:
            interceptors += bearer_interceptors(token)
        all_options = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            # Its own connections: a channel made after a store restart must not share a
            # connection still backing off from the outage (and fail with its old error).
            ("grpc.use_local_subchannel_pool", 1),
            # Reconnect within seconds of a store coming back, not gRPC's default 2 minutes.
            ("grpc.max_reconnect_backoff_ms", 5000),
            # Calls spread over every address the target resolves to (store replicas
            # behind a headless Service: dns:///sluice-store-headless.<ns>.svc:50051).
            ("grpc.service_config", ROUND_ROBIN),
            *(creds.channel_options() if creds else ()),
            *options,
        ]
        if channel is not None:
            self._channel = channel
        elif creds is not None and creds.secure:
            self._channel = grpc.aio.secure_channel(
                target, creds.channel_credentials(), options=all_options, interceptors=interceptors or None
            )
        else:
            self._channel = grpc.aio.insecure_channel(
                target, options=all_options, interceptors=interceptors or None
            )
        self.timeout = timeout
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; safe to call more than once."""
        if not self._closed:
            self._closed = True
            await self._channel.close()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel connects."""
        await asyncio.wait_for(self._channel.channel_ready(), timeout)


class Client(Connection):
    """A connection to a Sluice store. Use ``async with Client(addr) as c:``."""

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float | None = 30.0,
        options: Sequence[tuple[str, Any]] = (),
        credentials: Credentials | None = None,
        shared_session: bool = True,
    ) -> None:
        super().__init__(
            target or os.environ.get("SLUICE_STORE_ADDR", DEFAULT_ADDR),
            channel,
            options,
            timeout,
            credentials,
        )
        self._stub = pb_grpc.StreamsStub(self._channel)
        # append() over one long-lived AppendSession (see append); a span per call when tracing.
        self._shared = shared_session and not telemetry.tracing_enabled()
        self._session: AppendSession | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        #: The sluice.v1.Groups stub, for members (Heartbeat, CommitCursor).
        self.groups_stub = gpb_grpc.GroupsStub(self._channel)
        #: The store's identity, from the first read header, caught-up or heartbeat seen.
        self.store_id = ""

    async def close(self) -> None:
        """Finish the shared session's appends in flight (a few seconds at most), then close
        the channel; safe to call more than once."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close(grace=5.0)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        await super().close()

    def _check_store(self, store_id: str) -> None:
        """Raise StoreReplaced (once) when the store answering is not the one seen before."""
        if not store_id or store_id == self.store_id:
            return
        known, self.store_id = self.store_id, store_id
        if known:
            raise StoreReplaced(known, store_id)

    async def _call(self, awaitable: Awaitable[S]) -> S:
        try:
            return await awaitable
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None

    # -- appends ----------------------------------------------------------------------

    async def append(
        self, stream: str, events: Iterable[pb.EventData], expected: Expected = ANY
    ) -> pb.AppendResponse:
        """Append events atomically; raises WrongExpectedRevision on a conflict.

        Appends go over one AppendSession the client keeps open (a message on an open
        bidirectional call, not a call each; concurrent appends share messages), unless the
        client was made with ``shared_session=False``, tracing is on (a span per append), or
        the request is larger than SHARED_SESSION_MAX_BYTES (it goes as its own call, so a
        refusal of its size cannot end the session others use). Results and errors are the
        same either way."""
        request = _request(stream, events, expected)
        size = request.ByteSize()
        if not self._shared or size > SHARED_SESSION_MAX_BYTES:
            return await self._call(self._stub.Append(request, timeout=self.timeout))
        session = self._shared_session()
        result = session.submit(request, size)
        # A timer that fails the future, where asyncio.timeout() would make a context
        # manager and reschedule per append (awaited appends to bench/echo.py: 5,400 to 5,750/s).
        timer = (
            None
            if self.timeout is None
            else asyncio.get_running_loop().call_later(self.timeout, _expire, result)
        )
        try:
            return await result
        except TimeoutError:
            # The store did not answer in time: later appends get a fresh session.
            self._retire(session)
            raise SluiceError("Deadline Exceeded", grpc.StatusCode.DEADLINE_EXCEEDED) from None
        finally:
            if timer is not None:
                timer.cancel()

    def _shared_session(self) -> AppendSession:
        session = self._session
        loop = asyncio.get_running_loop()
        if session is not None and session.usable and loop.time() - session.opened < SHARED_SESSION_MAX_AGE:
            return session
        if session is not None:
            self._retire(session)
        self._session = session = AppendSession(self._stub, self.timeout)
        session.open()
        return session

    def _retire(self, session: AppendSession) -> None:
        """Let a session finish what it has in flight, in the background; new appends go
        to a new one."""
        if self._session is session:
            self._session = None
        task = asyncio.create_task(session.close(grace=self.timeout or SHARED_SESSION_MAX_AGE))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def append_request(self, request: pb.AppendRequest) -> pb.AppendResponse:
        """Append a prepared request as it is (a proxy passing on what its caller sent)."""
        return await self._call(self._stub.Append(request, timeout=self.timeout))

    async def append_many(
        self, parts: Iterable[tuple[str, Iterable[pb.EventData], Expected]]
    ) -> list[pb.AppendResponse]:
        """Append to several streams in one atomic step."""
        req = pb.AppendManyRequest(appends=[_request(s, e, x) for s, e, x in parts])
        resp = await self._call(self._stub.AppendMany(req, timeout=self.timeout))
        return list(resp.results)

    def session(self) -> AppendSession:
        """A pipelined append session: ``async with client.session() as s: await s.append(...)``."""
        return AppendSession(self._stub, self.timeout)

    # -- reads ------------------------------------------------------------------------

    async def read_batches(
        self,
        stream: str = "",
        *,
        start: StartAt = None,
        backwards: bool = False,
        max_count: int = 0,
        stream_prefixes: Iterable[str] | None = None,
        event_types: Iterable[str] | None = None,
        notifications_only: bool = False,
        batch_size: int = 0,
    ) -> AsyncGenerator[Sequence[pb.RecordedEvent], None]:
        """Read events in the batches the server sends them (the fastest way to read)."""
        req = pb.ReadRequest(
            stream=stream,
            backwards=backwards,
            max_count=max_count,
            notifications_only=notifications_only,
            batch_size=batch_size,
        )
        _where(req, start, stream_prefixes, event_types)
        call = self._stub.Read(req)
        try:
            async for msg in call:
                if msg.HasField("header"):
                    self._check_store(msg.header.store_id)
                if msg.events:
                    yield msg.events
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()

    async def read(self, stream: str = "", **kwargs: Any) -> AsyncGenerator[pb.RecordedEvent, None]:
        """Read events one by one; keywords as read_batches."""
        async for batch in self.read_batches(stream, **kwargs):
            for ev in batch:
                yield ev

    async def read_list(self, stream: str = "", **kwargs: Any) -> list[pb.RecordedEvent]:
        return [ev async for ev in self.read(stream, **kwargs)]

    async def subscribe(
        self,
        stream: str = "",
        *,
        start: StartAt = END,
        stream_prefixes: Iterable[str] | None = None,
        event_types: Iterable[str] | None = None,
        notifications_only: bool = False,
        max_batch: int = 0,
        heartbeat_interval: float = 0.0,
    ) -> AsyncGenerator[SubscriptionItem, None]:
        """Catch up from ``start``, then follow live events. Yields events and control messages."""
        req = self._subscription(
            stream, start, stream_prefixes, event_types, notifications_only, max_batch, heartbeat_interval
        )
        async for item in self._subscribe(req):
            if isinstance(item, list):
                for ev in item:
                    yield ev
            else:
                yield item

    async def subscribe_partitions(
        self,
        partition_count: int,
        partitions: Iterable[int],
        *,
        start: StartAt = END,
        stream_prefixes: Iterable[str] | None = None,
        event_types: Iterable[str] | None = None,
        max_batch: int = 0,
        heartbeat_interval: float = 0.0,
    ) -> AsyncGenerator[list[pb.RecordedEvent] | SubscriptionItem, None]:
        """Follow the streams of some partitions (a stream's partition is FNV-1a-32 of its
        name mod ``partition_count``), as a consumer group member reads its share. Yields
        events in the batches the store sends (lists), and control messages; the
        checkpoints say how far the filter skipped."""
        req = self._subscription(
            "", start, stream_prefixes, event_types, False, max_batch, heartbeat_interval
        )
        req.filter.partition_count = partition_count
        req.filter.partitions.extend(partitions)
        async for item in self._subscribe(req):
            yield item

    @staticmethod
    def _subscription(
        stream: str,
        start: StartAt,
        prefixes: Iterable[str] | None,
        types: Iterable[str] | None,
        notifications_only: bool,
        max_batch: int,
        heartbeat_interval: float,
    ) -> pb.SubscribeRequest:
        req = pb.SubscribeRequest(
            stream=stream,
            notifications_only=notifications_only,
            max_batch=max_batch,
            heartbeat_interval_ms=int(heartbeat_interval * 1000),
        )
        _where(req, start, prefixes, types)
        return req

    async def _subscribe(
        self, req: pb.SubscribeRequest
    ) -> AsyncGenerator[list[pb.RecordedEvent] | SubscriptionItem, None]:
        call = self._stub.Subscribe(req)
        try:
            async for msg in call:
                kind = msg.WhichOneof("content")
                if kind == "events":
                    yield list(msg.events.events)
                elif kind is not None:
                    if kind in ("caught_up", "heartbeat"):
                        self._check_store(getattr(msg, kind).store_id)
                    yield getattr(msg, kind)
        except grpc.aio.AioRpcError as e:
            # Ended by close(): done. A call the server cancelled is not done (grpc.aio
            # reports that as cancelled() too): the caller must know to watch again.
            if e.code() == grpc.StatusCode.CANCELLED and self._closed:
                return
            raise from_rpc_error(e) from None
        finally:
            call.cancel()

    async def current_store_id(self) -> str:
        """The identity of the store answering now (its ``store_id``), without remembering it."""
        call = self._stub.Read(pb.ReadRequest(max_count=1), timeout=self.timeout)
        try:
            async for msg in call:
                return str(msg.header.store_id)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()
        return ""

    # -- administration ---------------------------------------------------------------

    async def stream_info(self, stream: str) -> pb.StreamInfo:
        return await self._call(
            self._stub.GetStreamInfo(pb.GetStreamInfoRequest(stream=stream), timeout=self.timeout)
        )

    async def set_retention(
        self,
        stream: str,
        *,
        max_count: int = 0,
        max_age: float = 0.0,
        max_bytes: int = 0,
        truncate_before: int = 0,
        time_to_live: float = 0.0,
    ) -> pb.StreamInfo:
        """Replace the stream's own retention policy (ages in seconds; zero: no limit)."""
        policy = pb.RetentionPolicy(max_count=max_count, max_bytes=max_bytes, truncate_before=truncate_before)
        if max_age:
            policy.max_age.FromMicroseconds(int(max_age * 1e6))
        if time_to_live:
            policy.time_to_live.FromMicroseconds(int(time_to_live * 1e6))
        req = pb.SetRetentionRequest(stream=stream, retention=policy)
        return await self._call(self._stub.SetRetention(req, timeout=self.timeout))

    async def delete_stream(self, stream: str, expected: Expected = ANY) -> int:
        """Soft-delete: the stream is hidden, and a later append recreates it."""
        req = pb.DeleteStreamRequest(stream=stream, expected=_expected(expected))
        resp: pb.DeleteStreamResponse = await self._call(self._stub.DeleteStream(req, timeout=self.timeout))
        return resp.position

    async def tombstone_stream(self, stream: str, expected: Expected = ANY) -> int:
        """Delete for good: the name can never be appended to again."""
        req = pb.DeleteStreamRequest(stream=stream, expected=_expected(expected), tombstone=True)
        resp: pb.DeleteStreamResponse = await self._call(self._stub.DeleteStream(req, timeout=self.timeout))
        return resp.position

    async def list_streams(
        self, prefix: str = "", *, page_size: int = 100, include_deleted: bool = False
    ) -> AsyncIterator[pb.StreamInfo]:
        """Every stream whose name starts with prefix, in name order (pages fetched as needed)."""
        token = ""
        while True:
            req = pb.ListStreamsRequest(
                prefix=prefix, page_size=page_size, page_token=token, include_deleted=include_deleted
            )
            resp = await self._call(self._stub.ListStreams(req, timeout=self.timeout))
            for info in resp.streams:
                yield info
            token = resp.next_page_token
            if not token:
                return

    # -- consumer groups --------------------------------------------------------------

    async def create_group(
        self,
        group: str,
        *,
        stream_prefixes: Iterable[str] | None = None,
        event_types: Iterable[str] | None = None,
        start: StartAt = END,
        partitions: int = 12,
        lease: float = 10.0,
        max_attempts: int = 5,
        initial_backoff: float = 1.0,
        max_backoff: float = 60.0,
        dead_letter_stream: str = "",
    ) -> gpb.GroupDescription:
        """Create a consumer group reading the matching streams from ``start``."""
        config = gpb.GroupConfig(
            partitions=partitions,
            filter=pb.Filter(
                stream_prefixes=list(stream_prefixes or ()), event_types=list(event_types or ())
            ),
            dead_letter_stream=dead_letter_stream,
        )
        config.lease.FromMicroseconds(int(lease * 1e6))
        config.retry.max_attempts = max_attempts
        config.retry.initial_backoff.FromMicroseconds(int(initial_backoff * 1e6))
        config.retry.max_backoff.FromMicroseconds(int(max_backoff * 1e6))
        sp = _start(start)
        if sp is not None:
            config.start.CopyFrom(sp)
        req = gpb.CreateGroupRequest(group=group, config=config)
        return await self._call(self.groups_stub.CreateGroup(req, timeout=self.timeout))

    async def describe_group(self, group: str) -> gpb.GroupDescription:
        """Members, assignment, cursors and lag per partition."""
        req = gpb.DescribeGroupRequest(group=group)
        return await self._call(self.groups_stub.DescribeGroup(req, timeout=self.timeout))

    async def list_groups(self) -> list[gpb.GroupDescription]:
        resp = await self._call(self.groups_stub.ListGroups(gpb.ListGroupsRequest(), timeout=self.timeout))
        return list(resp.groups)

    async def update_group(
        self,
        group: str,
        *,
        stream_prefixes: Iterable[str] | None = None,
        event_types: Iterable[str] | None = None,
    ) -> gpb.GroupDescription:
        """Change a group's filter; what is not given stays. Running members take it at their
        next heartbeat; it holds in each partition from the cursor at the time of the change
        (see ``Groups.UpdateGroup``)."""
        config = (await self.describe_group(group)).config
        if stream_prefixes is not None:
            del config.filter.stream_prefixes[:]
            config.filter.stream_prefixes.extend(stream_prefixes)
        if event_types is not None:
            del config.filter.event_types[:]
            config.filter.event_types.extend(event_types)
        req = gpb.UpdateGroupRequest(group=group, config=config)
        return await self._call(self.groups_stub.UpdateGroup(req, timeout=self.timeout))

    async def redrive(
        self, group: str, *, streams: Iterable[str] = (), from_position: int = 0, to_position: int = 0
    ) -> gpb.RedriveResponse:
        """Give the group's dead letters back to it (from these streams, original positions in
        this range): appended again to their streams, for this group alone; idempotent."""
        req = gpb.RedriveRequest(
            group=group, streams=list(streams), from_position=from_position, to_position=to_position
        )
        return await self._call(self.groups_stub.Redrive(req, timeout=self.timeout))

    # -- membership (what a consumer group member, such as the sidecar, calls) --------

    async def heartbeat(
        self, request: gpb.HeartbeatRequest, timeout: float | None = None
    ) -> gpb.HeartbeatResponse:
        """Join, stay in, or leave (``leave``) a group; the answer carries the assignment."""
        return await self._call(self.groups_stub.Heartbeat(request, timeout=timeout or self.timeout))

    async def commit_cursor(self, request: gpb.CommitCursorRequest, timeout: float | None = None) -> None:
        """Record how far a member handled a partition it owns (refused once fenced)."""
        await self._call(self.groups_stub.CommitCursor(request, timeout=timeout or self.timeout))

    async def dead_letter(
        self, request: gpb.DeadLetterRequest, timeout: float | None = None
    ) -> pb.AppendResponse:
        """Put events on the group's dead-letter stream, as the owner of their partition."""
        return await self._call(self.groups_stub.DeadLetter(request, timeout=timeout or self.timeout))

    async def delete_group(self, group: str) -> None:
        await self._call(
            self.groups_stub.DeleteGroup(gpb.DeleteGroupRequest(group=group), timeout=self.timeout)
        )

    async def reset_group(
        self, group: str, to: StartAt, partitions: Iterable[int] = ()
    ) -> gpb.GroupDescription:
        """Move cursors (all, or the given partitions) to a start point."""
        req = gpb.ResetCursorsRequest(group=group, partitions=list(partitions))
        sp = _start(to)
        if sp is not None:
            req.to.CopyFrom(sp)
        return await self._call(self.groups_stub.ResetCursors(req, timeout=self.timeout))

    # -- event sourcing ---------------------------------------------------------------

    async def fold(
        self, stream: str, apply: Callable[[S, pb.RecordedEvent], S], initial: S
    ) -> tuple[S, Expected]:
        """Read a stream from the start and fold it into state.

        Returns the state and the expected revision to append with next (NO_STREAM for a
        stream that does not exist yet).
        """
        state: S = initial
        revision: Expected = NO_STREAM
        try:
            async for ev in self.read(stream):
                state = apply(state, ev)
                revision = ev.revision
        except StreamNotFound:
            pass
        return state, revision

    async def decide_and_append(
        self,
        stream: str,
        apply: Callable[[S, pb.RecordedEvent], S],
        initial: S,
        decide: Callable[[S], Iterable[pb.EventData]],
        retries: int = 5,
    ) -> pb.AppendResponse | None:
        """Fold the stream, decide new events from the state, append with the expected
        revision; on a conflict, fold again and retry. Returns None if nothing was decided."""
        for attempt in range(retries + 1):
            state, revision = await self.fold(stream, apply, initial)
            events = list(decide(state))
            if not events:
                return None
            try:
                return await self.append(stream, events, expected=revision)
            except WrongExpectedRevision:
                if attempt == retries:
                    raise
        raise AssertionError("unreachable")


def _expire(fut: asyncio.Future[Any]) -> None:
    """An append's deadline passed: its caller gets TimeoutError (a late answer is dropped)."""
    if not fut.done():
        fut.set_exception(TimeoutError())


def _settle(fut: asyncio.Future[pb.AppendResponse], call: asyncio.Future[pb.AppendResponse]) -> None:
    """Hand a call's outcome to the future its caller awaits."""
    if fut.done():
        return
    if call.cancelled():
        fut.cancel()
        return
    err = call.exception()
    if err is None:
        fut.set_result(call.result())
    else:
        fut.set_exception(from_rpc_error(err) if isinstance(err, grpc.aio.AioRpcError) else err)


class AppendSession:
    """Many appends in flight on one bidirectional call; results come back in order.

    Appends queued while the previous message is being written go out together in the
    next message (up to ``max_per_message`` appends and ``max_message_bytes``), so the
    per-message cost is shared when many are in flight. Where the store asks for fewer per
    message (AppendSessionResponse.appends_per_message), more queued go out as several
    messages, so it commits one while the next arrives.
    """

    max_per_message = 1000
    max_message_bytes = SHARED_SESSION_MAX_BYTES

    def __init__(self, stub: pb_grpc.StreamsStub, timeout: float | None = None) -> None:
        self._stub = stub
        self._timeout = timeout  # for appends sent again as calls (see _read)
        self._call: Any = None
        self._queued: collections.deque[tuple[pb.AppendRequest, int, asyncio.Future[pb.AppendResponse]]] = (
            collections.deque()
        )
        self._sent: collections.deque[list[tuple[pb.AppendRequest, asyncio.Future[pb.AppendResponse]]]] = (
            collections.deque()
        )
        self._wakeup = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._error: SluiceError | None = None
        #: The most appends per message the store asked for in its last response (0: none).
        self.store_per_message = 0
        #: When the call was opened (the event loop's clock).
        self.opened = 0.0

    def open(self) -> None:
        """Open the call (what ``async with`` does)."""
        self._call = self._stub.AppendSession()
        self.opened = asyncio.get_running_loop().time()
        self._writer = asyncio.create_task(self._write())
        self._reader = asyncio.create_task(self._read())

    @property
    def usable(self) -> bool:
        """Open, not closing, and not failed."""
        return self._call is not None and not self._closing and self._error is None

    async def __aenter__(self) -> AppendSession:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _write(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                if self._error is not None:
                    return
                queued = self._queued
                while queued:
                    batch: list[tuple[pb.AppendRequest, asyncio.Future[pb.AppendResponse]]] = []
                    size = 0
                    most = min(self.store_per_message or self.max_per_message, self.max_per_message)
                    while queued and len(batch) < most:
                        if batch and size + queued[0][1] > self.max_message_bytes:
                            break
                        request, n, fut = queued.popleft()
                        batch.append((request, fut))
                        size += n
                    self._sent.append(batch)
                    await self._call.write(pb.AppendSessionRequest(appends=[r for r, _ in batch]))
                if self._closing:
                    await self._call.done_writing()
                    return
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, asyncio.CancelledError):
            return  # the call ended while writing: the reader reports how (its status)

    async def _read(self) -> None:
        try:
            async for resp in self._call:
                self.store_per_message = resp.appends_per_message
                sent = self._sent.popleft()
                for (_, fut), result in zip(sent, resp.results, strict=True):
                    if fut.done():  # its caller gave up waiting (cancelled or timed out)
                        continue
                    if result.WhichOneof("result") == "success":
                        fut.set_result(result.success)
                    else:
                        fut.set_exception(from_status(result.error))
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INTERNAL and e.details() == "Internal error from Core":
                # grpc.aio loses the status the store ended the call with when a write
                # races that end (grpc/grpc#36066). Each unanswered append goes again as a
                # call of its own, which gets the store's real answer (UNAUTHENTICATED,
                # UNAVAILABLE, ...); one the store had read and stored is answered as a
                # replay, since appends are idempotent by event id.
                self._resend()
            self._fail(from_rpc_error(e))
        except asyncio.CancelledError:
            self._fail(SluiceError("append session cancelled", grpc.StatusCode.CANCELLED))
            return
        # The store ended the call: what is unanswered (if anything) may be retried elsewhere.
        self._fail(Unavailable("append session ended before every append was answered"))

    def _resend(self) -> None:
        unanswered = [*(pair for sent in self._sent for pair in sent), *((r, f) for r, _, f in self._queued)]
        self._sent.clear()
        self._queued.clear()
        for request, fut in unanswered:
            if not fut.done():
                call = self._stub.Append(request, timeout=self._timeout)
                asyncio.ensure_future(call).add_done_callback(functools.partial(_settle, fut))

    def _fail(self, err: SluiceError) -> None:
        if self._error is None:
            self._error = err
        for sent in [*self._sent, [(r, f) for r, _, f in self._queued]]:
            for _, fut in sent:
                if not fut.done():
                    fut.set_exception(err)
        self._sent.clear()
        self._queued.clear()
        self._wakeup.set()  # the writer ends too

    def submit(self, request: pb.AppendRequest, size: int = -1) -> asyncio.Future[pb.AppendResponse]:
        """Queue a prepared append (``size``: its ByteSize, when the caller has it); the
        returned future resolves with its result."""
        if self._call is None or self._closing:
            raise RuntimeError("the append session is not open")
        fut: asyncio.Future[pb.AppendResponse] = asyncio.get_running_loop().create_future()
        if self._error is not None:
            fut.set_exception(self._error)
            return fut
        self._queued.append((request, size if size >= 0 else request.ByteSize(), fut))
        self._wakeup.set()
        return fut

    def send(
        self, stream: str, events: Iterable[pb.EventData], expected: Expected = ANY
    ) -> asyncio.Future[pb.AppendResponse]:
        """Queue one append; the returned future resolves with its result."""
        return self.submit(_request(stream, events, expected))

    async def append(
        self, stream: str, events: Iterable[pb.EventData], expected: Expected = ANY
    ) -> pb.AppendResponse:
        return await self.send(stream, events, expected)

    async def close(self, grace: float | None = None) -> None:
        """Send what is queued, wait for every result (at most ``grace`` seconds, then the
        call is cancelled and what is unanswered fails), end the call."""
        if self._call is None or self._closing:
            return
        self._closing = True
        self._wakeup.set()
        tasks = [t for t in (self._writer, self._reader) if t is not None]
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            self._call.cancel()
            await asyncio.wait(pending)


class Batcher:
    """Coalesces concurrent single-stream appends into AppendMany requests (like a producer linger).

    Appends to the same stream are not combined into one part (each keeps its own
    expected revision), so at most one pending append per stream goes in one request;
    the rest wait for the next.
    """

    def __init__(self, client: Client, linger: float = 0.002, max_events: int = 1000) -> None:
        self.client = client
        self.linger = linger
        self.max_events = max_events
        self._pending: list[tuple[pb.AppendRequest, asyncio.Future[pb.AppendResponse]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def append(
        self, stream: str, events: Iterable[pb.EventData], expected: Expected = ANY
    ) -> pb.AppendResponse:
        fut: asyncio.Future[pb.AppendResponse] = asyncio.get_running_loop().create_future()
        self._pending.append((_request(stream, events, expected), fut))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())
        return await fut

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.linger)
        while self._pending:
            batch: list[tuple[pb.AppendRequest, asyncio.Future[pb.AppendResponse]]] = []
            rest = []
            streams: set[str] = set()
            total = 0
            for item in self._pending:
                req = item[0]
                if req.stream in streams or (batch and total + len(req.events) > self.max_events):
                    rest.append(item)
                else:
                    streams.add(req.stream)
                    total += len(req.events)
                    batch.append(item)
            self._pending = rest
            await self._send(batch)
        self._flusher = None

    async def _send(self, batch: list[tuple[pb.AppendRequest, asyncio.Future[pb.AppendResponse]]]) -> None:
        # One request per atomic part would lose independence: a conflict in one part
        # fails the whole AppendMany. So send as one request, and on failure retry the
        # parts one by one to give each its own outcome.
        try:
            resp = await self.client._call(
                self.client._stub.AppendMany(pb.AppendManyRequest(appends=[r for r, _ in batch]))
            )
            for (_, fut), result in zip(batch, resp.results, strict=True):
                fut.set_result(result)
        except SluiceError:
            for req, fut in batch:
                try:
                    fut.set_result(await self.client._call(self.client._stub.Append(req)))
                except SluiceError as e:
                    fut.set_exception(e)
