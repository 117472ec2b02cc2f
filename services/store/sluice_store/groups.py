"""Consumer-group coordination: membership, balanced sticky assignment, epochs, fenced cursors.

The model follows Kafka's consumer group protocol (KIP-848), with the stream as the
ordering unit: a heartbeat is also the assignment exchange, every change of a member's
assignment raises its epoch, and a partition moves only after its old owner released it
(stopped reporting it) or its lease expired.

Group state lives in storage: each change reads it, applies the protocol and writes it
back in one transaction, so a restarted store, or another replica on the same database,
carries on with the same members, leases, epochs and cursors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from google.protobuf import duration_pb2

from sluice.names import MAX_MEMBER_ID
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb
from sluice_store.errors import InvalidArgument, LimitExceeded, PermissionDenied, StoreError
from sluice_store.retention import US
from sluice_store.storage.base import GroupRecord, GroupTx, Storage

DEFAULT_PARTITIONS = 12
MAX_PARTITIONS = 1024
#: Members a group may have at once (Kafka's group.max.size): one a partition at most, the
#: rest standing by. A heartbeat's work grows with the members, and a crash-looping pod with
#: a new id each start would otherwise add one a lease until the store spent its time there.
MAX_MEMBERS = 1024
DEFAULT_LEASE_US = 10 * US
DEFAULT_HEARTBEAT_US = 1 * US
#: The longest lease: a member that dies holds its partitions this long (Kafka's default
#: group.max.session.timeout.ms is 30 minutes).
MAX_LEASE_US = 3600 * US
#: The longest retry backoff: a partition waits in order, so one over a day stalls it.
MAX_BACKOFF_US = 86_400 * US
DEFAULT_ATTEMPTS = 5
GROUP_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


class GroupNotFound(StoreError):
    reason = pb.GROUP_NOT_FOUND


class GroupExists(StoreError):
    reason = pb.GROUP_EXISTS


class StaleMemberEpoch(StoreError):
    reason = pb.STALE_MEMBER_EPOCH


class NotPartitionOwner(StoreError):
    reason = pb.NOT_PARTITION_OWNER


class UnknownMember(StoreError):
    reason = pb.UNKNOWN_MEMBER


@dataclasses.dataclass
class Member:
    """A member as the coordinator sees it."""

    id: str
    epoch: int = 0
    #: Partitions the member may work on now.
    assigned: set[int] = dataclasses.field(default_factory=set)
    #: Partitions taken away that the member has not yet confirmed releasing.
    revoking: set[int] = dataclasses.field(default_factory=set)
    lease_expires_us: int = 0
    #: Commits need an epoch above this (a cursor reset fences the epoch in use).
    fenced: int = -1
    #: Who joined as this member: while it is in the group, no other principal may act as it.
    principal: str = ""
    #: Partitions it holds whose cursor the store moved (a reset, a new filter) since its
    #: last heartbeat: the next answer tells it to read them again from their cursors.
    moved: set[int] = dataclasses.field(default_factory=set)

    @property
    def held(self) -> set[int]:
        return self.assigned | self.revoking

    def to_json(self) -> dict[str, object]:
        return {
            "epoch": self.epoch,
            "assigned": sorted(self.assigned),
            "revoking": sorted(self.revoking),
            "lease_expires_us": self.lease_expires_us,
            "fenced": self.fenced,
            "principal": self.principal,
            "moved": sorted(self.moved),
        }

    @classmethod
    def from_json(cls, member_id: str, d: Mapping[str, object]) -> Member:
        return cls(
            member_id,
            int(d["epoch"]),  # type: ignore[call-overload]
            set(d["assigned"]),  # type: ignore[call-overload]
            set(d["revoking"]),  # type: ignore[call-overload]
            int(d["lease_expires_us"]),  # type: ignore[call-overload]
            int(d.get("fenced", -1)),  # type: ignore[call-overload]
            str(d.get("principal", "")),
            set(d.get("moved", ())),  # type: ignore[call-overload]
        )


def bound(member: Member, principal: str, group: str) -> None:
    """Refuse a principal acting as a member another principal joined as."""
    if principal and member.principal and member.principal != principal:
        raise PermissionDenied(
            f"member {member.id!r} of group {group!r} belongs to another principal",
            principal=principal,
            action="join",
            resource=f"group {group} member {member.id}",
        )


@dataclasses.dataclass
class GroupState:
    name: str
    config: gpb.GroupConfig
    created_us: int
    members: dict[str, Member] = dataclasses.field(default_factory=dict)
    cursors: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def partitions(self) -> int:
        return self.config.partitions

    @property
    def lease_us(self) -> int:
        return self.config.lease.ToMicroseconds()

    def members_json(self) -> str:
        return json.dumps({m.id: m.to_json() for m in self.members.values()})

    def target(self) -> dict[str, set[int]]:
        """Where the partitions should be, by member id (see target_assignment)."""
        ids = sorted(self.members)
        return target_assignment(self.partitions, ids, {i: self.members[i].assigned for i in ids})

    def owner(self, partition: int) -> str:
        for m in self.members.values():
            if partition in m.held:
                return m.id
        return ""


def target_assignment(
    partitions: int, members: Sequence[str], current: Mapping[str, Iterable[int]]
) -> dict[str, set[int]]:
    """Balanced (sizes differ by at most one) and sticky (keeps what members have) assignment."""
    if not members:
        return {}
    held = {m: set(current.get(m, ())) for m in members}
    base, extra = divmod(partitions, len(members))
    # Members holding the most keep the larger quotas, so as few partitions move as can.
    order = sorted(members, key=lambda m: (-len(held[m]), m))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(order)}
    target: dict[str, set[int]] = {m: set() for m in members}
    taken: set[int] = set()
    for m in order:
        if not held[m]:
            break  # the rest hold nothing either
        mine, room = target[m], quota[m]
        for p in sorted(held[m]):
            if len(mine) < room and p not in taken and p < partitions:
                mine.add(p)
                taken.add(p)
    # Each free partition goes to the member with room that has the fewest (then by id):
    # a heap of them, where a scan of every member for each partition made a heartbeat of
    # a 1,000-member group spend milliseconds here.
    wanting = [(len(target[m]), m) for m in order if len(target[m]) < quota[m]]
    heapq.heapify(wanting)
    for p in range(partitions):
        if p in taken:
            continue
        n, m = heapq.heappop(wanting)
        target[m].add(p)
        if n + 1 < quota[m]:
            heapq.heappush(wanting, (n + 1, m))
    return target


def expire(state: GroupState, now: int) -> None:
    """Drop members past their lease: what they held is free at once."""
    for m in [m for m in state.members.values() if m.lease_expires_us <= now]:
        del state.members[m.id]


def reconcile(state: GroupState, member: Member) -> None:
    """Move one member toward its target assignment, as its heartbeat is answered.

    A member learns of changes only through its own heartbeat, so its assignment and
    epoch change only here: partitions leaving it go to ``revoking`` until it confirms
    it let go, and partitions coming to it are granted only once nobody else holds them.
    """
    want = state.target().get(member.id, set())
    held_by_others = {p for m in state.members.values() if m is not member for p in m.held}
    member.revoking |= member.assigned - want
    new = (member.assigned & want) | (want - held_by_others)
    member.revoking -= new
    if new != member.assigned or member.fenced >= member.epoch:
        member.assigned = new
        member.epoch += 1


#: Dead-letter streams live here, where Append cannot write: only DeadLetter adds to them.
DEAD_LETTER_PREFIX = "$dlq."


def dead_letter_stream(group: str, config: gpb.GroupConfig) -> str:
    """Where the group's dead letters go."""
    return config.dead_letter_stream or DEAD_LETTER_PREFIX + group


def normalized(config: gpb.GroupConfig, creating: bool) -> gpb.GroupConfig:
    """A copy with defaults filled in; raises InvalidArgument for bad values."""
    c = gpb.GroupConfig()
    c.CopyFrom(config)
    dlq = c.dead_letter_stream
    if dlq and (not dlq.startswith(DEAD_LETTER_PREFIX) or len(dlq) == len(DEAD_LETTER_PREFIX)):
        raise InvalidArgument(
            f"dead_letter_stream must start with {DEAD_LETTER_PREFIX!r} (leave it empty for"
            f" {DEAD_LETTER_PREFIX}<group>), got {dlq[:300]!r}",
            field="config.dead_letter_stream",
        )
    if creating and not c.partitions:
        c.partitions = DEFAULT_PARTITIONS
    if not 1 <= c.partitions <= MAX_PARTITIONS:
        raise InvalidArgument(
            f"partitions must be 1..{MAX_PARTITIONS}, got {c.partitions}", field="config.partitions"
        )
    if c.filter.partition_count or c.filter.partitions:
        raise InvalidArgument("a group's filter takes no partitions", field="config.filter")
    if not c.HasField("lease"):
        c.lease.FromMicroseconds(DEFAULT_LEASE_US)
    lease = c.lease.ToMicroseconds()
    if not 100_000 <= lease <= MAX_LEASE_US:
        raise InvalidArgument("lease must be 100ms to 1h", field="config.lease")
    if not c.HasField("heartbeat_interval"):
        # Members learn of moved partitions at their next heartbeat: keep it short.
        c.heartbeat_interval.FromMicroseconds(min(lease // 3, DEFAULT_HEARTBEAT_US))
    if not 0 < c.heartbeat_interval.ToMicroseconds() < lease:
        raise InvalidArgument(
            "heartbeat_interval must be positive and below lease", field="config.heartbeat_interval"
        )
    if not c.retry.max_attempts:
        c.retry.max_attempts = DEFAULT_ATTEMPTS
    if not c.retry.HasField("initial_backoff"):
        c.retry.initial_backoff.FromSeconds(1)
    if not c.retry.HasField("max_backoff"):
        c.retry.max_backoff.FromSeconds(60)
    for name in ("initial_backoff", "max_backoff"):  # max below initial is a cap: allowed
        if not 0 <= getattr(c.retry, name).ToMicroseconds() <= MAX_BACKOFF_US:
            raise InvalidArgument(f"retry.{name} must be 0 to 1 day", field=f"config.retry.{name}")
    return c


def check_group_name(name: str) -> None:
    if not GROUP_NAME.fullmatch(name):
        raise InvalidArgument("group names are 1 to 128 letters, digits, '.', '_' or '-'", field="group")


def check_member_id(member_id: str) -> None:
    """A member id is 1 to MAX_MEMBER_ID characters (control characters are refused with
    every request's names, in checks.py)."""
    if not member_id:
        raise InvalidArgument("member_id is required", field="member_id")
    if len(member_id) > MAX_MEMBER_ID:
        raise InvalidArgument(
            f"member_id is {len(member_id)} characters; at most {MAX_MEMBER_ID}",
            field="member_id",
            length=len(member_id),
            max=MAX_MEMBER_ID,
        )


class Coordinator:
    """Applies every group change as one transaction of the storage's group_tx.

    State is read from storage at the start of each change and written back before it
    ends, so members of one group may talk to different store replicas: the storage
    serialises transactions on a group across replicas.
    """

    def __init__(self, storage: Storage, resolve: Callable[[pb.StartPoint | None], Awaitable[int]]) -> None:
        self.storage = storage
        self.resolve = resolve

    @staticmethod
    def _state(tx: GroupTx) -> GroupState:
        rec = tx.record
        if rec is None:
            raise GroupNotFound(f"group {tx.name!r} does not exist", group=tx.name)
        state = GroupState(rec.name, gpb.GroupConfig.FromString(rec.config), rec.created_us)
        state.cursors = dict(rec.cursors)
        state.members = {mid: Member.from_json(mid, d) for mid, d in json.loads(rec.members).items()}
        return state

    @staticmethod
    async def _save(tx: GroupTx, state: GroupState, cursors: Mapping[int, int] | None = None) -> None:
        record = GroupRecord(
            state.name, state.config.SerializeToString(), state.created_us, state.members_json(), {}
        )
        await tx.save(record, cursors)

    async def names(self) -> list[str]:
        return await self.storage.list_groups()

    def _tx(self, name: str) -> contextlib.AbstractAsyncContextManager[GroupTx]:
        """A transaction on the group ``name``, which must be a name a group can have: one
        that cannot is refused before storage sees it (and before an error echoes it)."""
        check_group_name(name)
        return self.storage.group_tx(name)

    async def create(self, name: str, config: gpb.GroupConfig) -> GroupState:
        check_group_name(name)
        cfg = normalized(config, creating=True)
        # Resolved before the transaction: it reads storage, and the transaction holds a
        # connection (on PostgreSQL) that the read should not have to wait beside.
        start = await self.resolve(cfg.start if cfg.HasField("start") else None)
        async with self.storage.group_tx(name) as tx:  # the name was checked above
            if tx.record is not None:
                raise GroupExists(f"group {name!r} already exists", group=name)
            state = GroupState(name, cfg, tx.now_us, cursors=dict.fromkeys(range(cfg.partitions), start))
            await self._save(tx, state, state.cursors)
            return state

    async def update(self, name: str, config: gpb.GroupConfig) -> GroupState:
        async with self._tx(name) as tx:
            state = self._state(tx)
            cfg = normalized(config, creating=False) if config.partitions else None
            if cfg is None:
                merged = gpb.GroupConfig()
                merged.CopyFrom(config)
                merged.partitions = state.partitions
                cfg = normalized(merged, creating=False)
            if cfg.partitions != state.partitions:
                raise InvalidArgument("the partition count of a group is fixed", field="config.partitions")
            cfg.start.CopyFrom(state.config.start)
            moved: dict[int, int] = {}
            if cfg.filter != state.config.filter:
                # The new filter holds from each cursor, and at the latest from the head + 1
                # as of now: no cursor may stay past it (members skipped what the old filter
                # did not take), and owners are fenced so that no commit under the old
                # filter lands after this.
                since = tx.head_position + 1
                moved = {p: since for p, c in state.cursors.items() if c > since}
                state.cursors.update(moved)
                for m in state.members.values():
                    m.fenced = m.epoch
                    m.moved |= m.held
            state.config = cfg
            await self._save(tx, state, moved)
            return state

    async def delete(self, name: str) -> None:
        async with self._tx(name) as tx:
            self._state(tx)
            await tx.delete()

    async def describe(self, name: str) -> GroupState:
        async with self._tx(name) as tx:
            state = self._state(tx)
            before = len(state.members)
            expire(state, tx.now_us)
            if len(state.members) != before:
                await self._save(tx, state)
            return state

    async def heartbeat(
        self, req: gpb.HeartbeatRequest, principal: str = ""
    ) -> tuple[GroupState, Member | None, set[int]]:
        """The group and the member after this heartbeat (None: it left), with the assigned
        partitions whose cursors the store moved since its last heartbeat."""
        check_member_id(req.member_id)
        async with self._tx(req.group) as tx:
            state = self._state(tx)
            now = tx.now_us
            member = state.members.get(req.member_id)
            expire(state, now)
            if req.member_id in state.members:
                bound(state.members[req.member_id], principal, state.name)
            if req.leave:
                state.members.pop(req.member_id, None)
                await self._save(tx, state)
                return state, None, set()
            if req.member_epoch == 0:
                # A (re)join: whatever this member id held before is given up.
                if req.member_id not in state.members and len(state.members) >= MAX_MEMBERS:
                    raise LimitExceeded(
                        f"group {state.name!r} has {len(state.members)} members, the most a group may"
                        " have: another joins once one leaves or its lease expires",
                        limit="max_group_members",
                        value=len(state.members) + 1,
                        max=MAX_MEMBERS,
                        group=state.name,
                    )
                member = Member(req.member_id, epoch=(member.epoch if member else 0) + 1, principal=principal)
                state.members[req.member_id] = member
            elif member is None:
                raise UnknownMember(
                    f"member {req.member_id!r} is not in group {req.group!r} (lease expired?): join again",
                    group=req.group,
                    member_id=req.member_id,
                )
            elif req.member_epoch != member.epoch:
                raise StaleMemberEpoch(
                    f"member {req.member_id!r} sent epoch {req.member_epoch}; current is {member.epoch}",
                    group=req.group,
                    member_id=req.member_id,
                    epoch=req.member_epoch,
                    current_epoch=member.epoch,
                )
            else:
                member.revoking &= set(req.owned)  # what it no longer reports, it has let go
            member.lease_expires_us = now + state.lease_us
            reconcile(state, member)
            # Told once; moved partitions it is still giving back stay marked, so that it
            # cannot commit its old progress over the new cursor while it lets them go.
            moved = member.moved & member.assigned
            member.moved &= member.revoking
            await self._save(tx, state)
            return state, member, moved

    @staticmethod
    def _owner(
        tx: GroupTx, state: GroupState, member_id: str, epoch: int, partition: int, principal: str = ""
    ) -> None:
        """Refuse unless the member is in the group, at its current epoch, and owns the partition."""
        group = state.name
        member = state.members.get(member_id)
        if member is None or member.lease_expires_us <= tx.now_us:
            raise UnknownMember(
                f"member {member_id!r} is not in group {group!r}", group=group, member_id=member_id
            )
        bound(member, principal, group)
        if epoch != member.epoch or member.fenced >= member.epoch:
            raise StaleMemberEpoch(
                f"member {member_id!r} sent epoch {epoch}; current is {member.epoch}",
                group=group,
                member_id=member_id,
                epoch=epoch,
                current_epoch=member.epoch,
            )
        if partition not in member.held:
            raise NotPartitionOwner(
                f"member {member_id!r} does not own partition {partition}",
                group=group,
                member_id=member_id,
                partition=partition,
            )
        if partition in member.moved:
            raise NotPartitionOwner(
                f"partition {partition} is being given up by member {member_id!r} and its cursor was"
                " moved (a reset or a new filter): it is released without committing",
                group=group,
                member_id=member_id,
                partition=partition,
            )

    async def commit(self, req: gpb.CommitCursorRequest, principal: str = "") -> None:
        check_member_id(req.member_id)
        async with self._tx(req.group) as tx:
            state = self._state(tx)
            self._owner(tx, state, req.member_id, req.member_epoch, req.partition, principal)
            if not 1 <= req.position <= tx.head_position + 1:
                # A cursor past the head would make the group skip events not yet written.
                raise InvalidArgument(
                    f"position {req.position} is not a cursor of this store: 1 to the head"
                    f" position + 1 ({tx.head_position + 1})",
                    field="position",
                    position=req.position,
                    head_position=tx.head_position,
                )
            await tx.save_cursors({req.partition: req.position})

    async def dead_letter_target(self, req: gpb.DeadLetterRequest, principal: str = "") -> str:
        """The dead-letter stream a member may write these events to now."""
        check_member_id(req.member_id)
        async with self._tx(req.group) as tx:
            state = self._state(tx)
            self._owner(tx, state, req.member_id, req.member_epoch, req.partition, principal)
            return dead_letter_stream(state.name, state.config)

    async def reset(self, name: str, partitions: Sequence[int], to: pb.StartPoint | None) -> GroupState:
        position = await self.resolve(to)  # outside the transaction, as in create
        async with self._tx(name) as tx:
            state = self._state(tx)
            chosen = set(partitions) or set(range(state.partitions))
            if any(p >= state.partitions for p in chosen):
                raise InvalidArgument("a partition is not in the group", field="partitions")
            changed = dict.fromkeys(sorted(chosen), position)
            state.cursors.update(changed)
            # Owners must not commit over the reset: the epoch they hold is fenced, and
            # their next heartbeat brings a new epoch and the new cursors.
            for m in state.members.values():
                if m.held & chosen:
                    m.fenced = m.epoch
                    m.moved |= m.held & chosen
            await self._save(tx, state, changed)
            return state


def duration(us: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMicroseconds(us)
    return d
