"""The sluice.v1.Groups service: gRPC handlers over the coordinator."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.message import Message

from sluice import eventbytes
from sluice.names import SYSTEM_PREFIX
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb
from sluice_store.access import Access, caller
from sluice_store.checks import parser
from sluice_store.errors import InvalidArgument
from sluice_store.groups import (
    Coordinator,
    GroupState,
    dead_letter_stream,
    duration,
)
from sluice_store.retention import US, now_us
from sluice_store.rpc import timestamp, unary_handler
from sluice_store.storage.base import (
    P_CREATED,
    P_DATA,
    P_HEAD,
    P_POSITION,
    P_REVISION,
    P_STREAM_ID,
    Start,
    Storage,
    StreamFilter,
    partition_of_cached,
)

#: Redriven events get ids from their dead letters' ids: redriving again is a replay.
REDRIVE_NAMESPACE = uuid.UUID("2b9c0c4e-6a8f-4f0e-9a51-7d3e8f1c2a64")
#: Describe counts lag by scanning at most this many events per group.
LAG_SCAN_LIMIT = 100_000
NAMES_CACHED = 200_000


class GroupsService:
    """Handlers for sluice.v1.Groups."""

    def __init__(
        self,
        coordinator: Coordinator,
        storage: Storage,
        append_system: Callable[[pb.AppendRequest], Awaitable[pb.AppendResponse]],
    ) -> None:
        self.coordinator = coordinator
        self.storage = storage
        self.append_system = append_system  # appends to "$" streams (dead letters)
        #: Stream names by id, for counting lag by partition (an id's name never changes).
        self._names: dict[int, str] = {}
        #: Told each committed cursor (group, partition, position): what metrics show.
        self.on_commit: Callable[[str, int, int], None] = lambda group, partition, position: None

    async def _lags(self, state: GroupState) -> list[tuple[int, float]]:
        """Each partition's lag (matching events at or after its cursor, and the age of the
        oldest), from one pass over the log from the lowest cursor: a group costs one scan of
        at most LAG_SCAN_LIMIT events (matching or not), not one per partition; beyond the
        limit the counts are lower bounds. 100 groups lagging 10,000 events each are
        described in about 1.4 s on a 2-core machine (4.5 s before, one scan per partition)."""
        cfg = state.config
        count_p = state.partitions
        prefixes = tuple(cfg.filter.stream_prefixes)
        # Prefixes are matched here by name too: in the query, a prefix that many streams
        # share costs a subquery over all of them on every page.
        filt = StreamFilter((), tuple(cfg.filter.event_types))
        # What a member reads: every partition, the store's own "$" streams apart unless a
        # prefix names them (judged here by name, which spares the query a join).
        skip_system = StreamFilter(prefixes, (), count_p, frozenset(range(count_p))).skips_system
        cursors = [state.cursors.get(p, 1) for p in range(count_p)]
        counts, oldest = [0] * count_p, [0] * count_p
        position, scanned = min(cursors, default=1), 0
        storage = self.storage
        while scanned < LAG_SCAN_LIMIT and position <= storage.head_position:
            rows, position, done = await storage.read_all(position, False, 1000, filt, False)
            names = self._names
            unknown = {row[P_STREAM_ID] for row in rows} - names.keys()
            if unknown:
                if len(names) + len(unknown) > NAMES_CACHED:
                    names.clear()
                names.update(await storage.stream_names(unknown))
            for row in rows:
                name = names.get(row[P_STREAM_ID])
                if name is None or (skip_system and name.startswith(SYSTEM_PREFIX)):
                    continue
                if prefixes and not name.startswith(prefixes):
                    continue
                p = partition_of_cached(name, count_p)
                if row[P_POSITION] >= cursors[p]:
                    counts[p] += 1
                    if not oldest[p]:
                        oldest[p] = row[P_CREATED]
            scanned += len(rows)
            if done:
                break
        now = now_us()
        return [(n, max(0.0, (now - o) / US) if o else 0.0) for n, o in zip(counts, oldest, strict=True)]

    async def _describe(self, state: GroupState) -> gpb.GroupDescription:
        out = gpb.GroupDescription(
            group=state.name,
            config=state.config,
            created=timestamp(state.created_us),
            head_position=self.storage.head_position,
        )
        # Partitions the target gives a member that it does not have yet: the target is
        # worked out once (a member each made describing 1,000 members take 1.7 s).
        target = state.target()
        for member_id in sorted(state.members):
            m = state.members[member_id]
            out.members.add(
                member_id=m.id,
                member_epoch=m.epoch,
                assigned=sorted(m.assigned),
                pending=sorted(target.get(m.id, set()) - m.assigned),
                lease_expires=timestamp(m.lease_expires_us),
            )
        for p, (lag_events, lag_seconds) in enumerate(await self._lags(state)):
            out.partitions.add(
                partition=p,
                owner=state.owner(p),
                cursor=state.cursors.get(p, 1),
                lag_events=lag_events,
                lag_seconds=lag_seconds,
            )
        return out

    async def CreateGroup(self, request: gpb.CreateGroupRequest) -> gpb.GroupDescription:
        return await self._describe(await self.coordinator.create(request.group, request.config))

    async def UpdateGroup(self, request: gpb.UpdateGroupRequest) -> gpb.GroupDescription:
        return await self._describe(await self.coordinator.update(request.group, request.config))

    async def DescribeGroup(self, request: gpb.DescribeGroupRequest) -> gpb.GroupDescription:
        return await self._describe(await self.coordinator.describe(request.group))

    async def ListGroups(self, request: gpb.ListGroupsRequest) -> gpb.ListGroupsResponse:
        names = await self.coordinator.names()
        return gpb.ListGroupsResponse(
            groups=[await self._describe(await self.coordinator.describe(n)) for n in names]
        )

    async def DeleteGroup(self, request: gpb.DeleteGroupRequest) -> gpb.DeleteGroupResponse:
        await self.coordinator.delete(request.group)
        return gpb.DeleteGroupResponse()

    async def Heartbeat(self, request: gpb.HeartbeatRequest) -> gpb.HeartbeatResponse:
        state, member, moved = await self.coordinator.heartbeat(request, caller.get().name)
        out = gpb.HeartbeatResponse(
            heartbeat_interval=state.config.heartbeat_interval,
            lease=duration(state.lease_us),
            config=state.config,
            store_id=self.storage.store_id,
        )
        if member is not None:
            out.member_epoch = member.epoch
            for p in sorted(member.assigned):
                out.assigned.add(partition=p, position=state.cursors.get(p, 1), moved=p in moved)
        return out

    async def CommitCursor(self, request: gpb.CommitCursorRequest) -> gpb.CommitCursorResponse:
        await self.coordinator.commit(request, caller.get().name)
        self.on_commit(request.group, request.partition, request.position)
        return gpb.CommitCursorResponse()

    async def DeadLetter(self, request: gpb.DeadLetterRequest) -> pb.AppendResponse:
        stream = await self.coordinator.dead_letter_target(request, caller.get().name)
        return await self.append_system(pb.AppendRequest(stream=stream, events=request.events))

    async def Redrive(self, request: gpb.RedriveRequest) -> gpb.RedriveResponse:
        if request.to_position and request.from_position > request.to_position:
            raise InvalidArgument(
                f"from_position {request.from_position} is past to_position {request.to_position}",
                field="to_position",
            )
        state = await self.coordinator.describe(request.group)
        dlq = dead_letter_stream(state.name, state.config)
        out = gpb.RedriveResponse()
        meta = await self.storage.stream(dlq)
        if meta is None:
            return out
        wanted = set(request.streams)
        lo, hi = request.from_position, request.to_position or (1 << 63)
        start = Start("start")
        while True:
            rows = await self.storage.read_stream(meta, start, False, 1000, True)
            for row in rows:
                dead = pb.RecordedEvent.FromString(eventbytes.event_bytes(row[P_HEAD], row[P_DATA]))
                md = dict(dead.metadata)
                source = md.get("dlq-stream", "")
                position = int(md.get("dlq-position", "0") or 0)
                if not source or (wanted and source not in wanted) or not lo <= position <= hi:
                    continue
                again = {k: v for k, v in md.items() if not k.startswith("dlq-")}
                again.update({"redriven-for": state.name, "redriven-from": f"{dlq}@{dead.position}"})
                event = pb.EventData(
                    id=str(uuid.uuid5(REDRIVE_NAMESPACE, f"{state.name}/{dead.id}")),
                    type=dead.type,
                    data=dead.data,
                    metadata=again,
                    content_type=dead.content_type,
                )
                result = await self.append_system(pb.AppendRequest(stream=source, events=[event]))
                if result.duplicate:
                    out.already += 1
                else:
                    out.redriven += 1
            if len(rows) < 1000:
                return out
            start = Start("revision", rows[-1][P_REVISION] + 1)

    async def ResetCursors(self, request: gpb.ResetCursorsRequest) -> gpb.GroupDescription:
        to = request.to if request.HasField("to") else None
        return await self._describe(await self.coordinator.reset(request.group, request.partitions, to))


def methods(service: GroupsService, access: Access) -> dict[str, grpc.RpcMethodHandler]:
    def unary(name: str, req: type[Message], resp: type[Message]) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            unary_handler(getattr(service, name), access, name), parser(req), resp.SerializeToString
        )

    return {
        "CreateGroup": unary("CreateGroup", gpb.CreateGroupRequest, gpb.GroupDescription),
        "UpdateGroup": unary("UpdateGroup", gpb.UpdateGroupRequest, gpb.GroupDescription),
        "DescribeGroup": unary("DescribeGroup", gpb.DescribeGroupRequest, gpb.GroupDescription),
        "ListGroups": unary("ListGroups", gpb.ListGroupsRequest, gpb.ListGroupsResponse),
        "DeleteGroup": unary("DeleteGroup", gpb.DeleteGroupRequest, gpb.DeleteGroupResponse),
        "Heartbeat": unary("Heartbeat", gpb.HeartbeatRequest, gpb.HeartbeatResponse),
        "CommitCursor": unary("CommitCursor", gpb.CommitCursorRequest, gpb.CommitCursorResponse),
        "ResetCursors": unary("ResetCursors", gpb.ResetCursorsRequest, gpb.GroupDescription),
        "DeadLetter": unary("DeadLetter", gpb.DeadLetterRequest, pb.AppendResponse),
        "Redrive": unary("Redrive", gpb.RedriveRequest, gpb.RedriveResponse),
    }
