"""The consumer-group coordinator: membership and rebalances (in memory on the coordinating
broker), committed offsets (in ``kafka.offsets``) and each group's last generation (in
``kafka.groups``). The state machine is Kafka's; its transitions are written once, in
:data:`TRANSITIONS`, and every change of state goes through :meth:`Group.move`.

Everything runs on the event loop: a request's handling between two awaits is atomic, and each
wait (a JoinGroup waiting for the rebalance, a SyncGroup waiting for the leader's assignment)
is a future resolved by the event that ends it. Timers (session expiry, the rebalance timeout,
the initial delay) are ``loop.call_later`` handles, re-armed or cancelled by the events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from enum import Enum

from .protocol import ErrorCode
from .storage import GROUPS, OFFSETS, Storage

log = logging.getLogger(__name__)

MIN_SESSION_MS = 1_000
MAX_SESSION_MS = 30 * 60 * 1000


class GroupState(Enum):
    EMPTY = "Empty"
    """No members (committed offsets may exist)."""
    PREPARING_REBALANCE = "PreparingRebalance"
    """Members (re)join; JoinGroup requests wait for the rest."""
    COMPLETING_REBALANCE = "CompletingRebalance"
    """The new generation is out; SyncGroup requests wait for the leader's assignment."""
    STABLE = "Stable"
    """Every member has its assignment; heartbeats keep them."""


TRANSITIONS: dict[GroupState, frozenset[GroupState]] = {
    GroupState.EMPTY: frozenset({GroupState.PREPARING_REBALANCE}),
    GroupState.PREPARING_REBALANCE: frozenset({GroupState.COMPLETING_REBALANCE,
                                               GroupState.EMPTY}),
    GroupState.COMPLETING_REBALANCE: frozenset({GroupState.STABLE,
                                                GroupState.PREPARING_REBALANCE,
                                                GroupState.EMPTY}),
    GroupState.STABLE: frozenset({GroupState.PREPARING_REBALANCE, GroupState.EMPTY}),
}
"""Every allowed move: join (EMPTY/STABLE/COMPLETING -> PREPARING), every member joined or
the rebalance timeout (PREPARING -> COMPLETING), the leader's SyncGroup (COMPLETING ->
STABLE), a leave or an expiry (-> PREPARING, or -> EMPTY when none is left)."""


@dataclass(slots=True)
class JoinResult:
    error: ErrorCode
    generation: int = -1
    protocol: str | None = None
    leader: str = ""
    member_id: str = ""
    members: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class Member:
    member_id: str
    session_ms: int
    rebalance_ms: int
    protocols: list[tuple[str, bytes]]
    joining: asyncio.Future[JoinResult] | None = None
    syncing: asyncio.Future[tuple[ErrorCode, bytes]] | None = None
    assignment: bytes = b""
    expiry: asyncio.TimerHandle | None = None


class Group:
    """One group's membership and its state."""

    def __init__(self, group_id: str, coordinator: Coordinator, generation: int) -> None:
        self.group_id = group_id
        self.state = GroupState.EMPTY
        self.generation = generation
        self.protocol_type: str | None = None
        self.protocol: str | None = None
        self.leader: str | None = None
        self.members: dict[str, Member] = {}
        self._coordinator = coordinator
        self._rebalance_timer: asyncio.TimerHandle | None = None
        self._delaying = False  # the initial delay of a rebalance that began EMPTY

    def move(self, state: GroupState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise AssertionError(f"group {self.group_id}: {self.state.value} -> {state.value}")
        log.debug("group %s: %s -> %s", self.group_id, self.state.value, state.value)
        self.state = state

    # ---- the events ----

    def join(self, member: Member) -> asyncio.Future[JoinResult]:
        """A member (new or known) joins; its answer comes when the rebalance completes."""
        loop = asyncio.get_running_loop()
        if member.expiry is not None:  # a joining member waits without heartbeats
            member.expiry.cancel()
            member.expiry = None
        if member.joining is not None and not member.joining.done():
            member.joining.set_result(JoinResult(ErrorCode.REBALANCE_IN_PROGRESS))
        member.joining = answer = loop.create_future()
        self.members[member.member_id] = member
        if self.state is not GroupState.PREPARING_REBALANCE:
            self._prepare(initial=self.state is GroupState.EMPTY)
        self._maybe_complete()  # answers the join (and forgets it) if it completes the rebalance
        return answer

    def sync(self, member: Member, assignments: dict[str, bytes] | None
             ) -> asyncio.Future[tuple[ErrorCode, bytes]]:
        """A member's SyncGroup in COMPLETING_REBALANCE or STABLE; the leader's carries the
        assignments (``assignments``), which complete the rebalance."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[ErrorCode, bytes]] = loop.create_future()
        self._arm(member)
        if self.state is GroupState.STABLE:
            answer.set_result((ErrorCode.NONE, member.assignment))
            return answer
        member.syncing = answer
        if member.member_id == self.leader and assignments is not None:
            for each in self.members.values():
                each.assignment = assignments.get(each.member_id, b"")
            self.move(GroupState.STABLE)
            for each in self.members.values():
                if each.syncing is not None and not each.syncing.done():
                    each.syncing.set_result((ErrorCode.NONE, each.assignment))
                each.syncing = None
            self._coordinator.stable(self)
        return answer

    def heartbeat(self, member: Member) -> ErrorCode:
        self._arm(member)
        if self.state is GroupState.PREPARING_REBALANCE:
            return ErrorCode.REBALANCE_IN_PROGRESS
        return ErrorCode.NONE

    def leave(self, member_id: str) -> None:
        """A member leaves, or its session expired."""
        member = self.members.pop(member_id, None)
        if member is None:
            return
        if member.expiry is not None:
            member.expiry.cancel()
        if member.joining is not None and not member.joining.done():
            member.joining.set_result(JoinResult(ErrorCode.UNKNOWN_MEMBER_ID))
        if member.syncing is not None and not member.syncing.done():
            member.syncing.set_result((ErrorCode.UNKNOWN_MEMBER_ID, b""))
        if not self.members:
            self._cancel_rebalance_timer()
            if self.state is not GroupState.EMPTY:
                self.move(GroupState.EMPTY)
            self.leader = None
            return
        if self.state is GroupState.PREPARING_REBALANCE:
            self._maybe_complete()
        else:
            self._prepare(initial=False)

    # ---- the rebalance ----

    def _prepare(self, *, initial: bool) -> None:
        """Enter PREPARING_REBALANCE: pending syncs are told to rejoin; the rebalance ends
        when every member has joined (after the initial delay for a group that was EMPTY),
        or at the largest rebalance timeout."""
        self.move(GroupState.PREPARING_REBALANCE)
        for member in self.members.values():
            if member.syncing is not None and not member.syncing.done():
                member.syncing.set_result((ErrorCode.REBALANCE_IN_PROGRESS, b""))
            member.syncing = None
        loop = asyncio.get_running_loop()
        self._cancel_rebalance_timer()
        timeout = max(member.rebalance_ms for member in self.members.values()) / 1000
        self._delaying = initial and self._coordinator.initial_delay > 0
        if self._delaying:
            self._rebalance_timer = loop.call_later(self._coordinator.initial_delay,
                                                    self._delay_over, timeout)
        else:
            self._rebalance_timer = loop.call_later(timeout, self._complete)

    def _delay_over(self, timeout: float) -> None:
        self._delaying = False
        self._rebalance_timer = asyncio.get_running_loop().call_later(timeout, self._complete)
        self._maybe_complete()

    def _maybe_complete(self) -> None:
        if self.state is not GroupState.PREPARING_REBALANCE or self._delaying:
            return
        if all(m.joining is not None and not m.joining.done() for m in self.members.values()):
            self._complete()

    def _complete(self) -> None:
        """End the rebalance: members that did not rejoin are dropped, the generation moves
        on, the leader gets every member's subscription, every join is answered."""
        if self.state is not GroupState.PREPARING_REBALANCE:
            return
        self._cancel_rebalance_timer()
        for member_id in [m.member_id for m in self.members.values()
                          if m.joining is None or m.joining.done()]:
            log.info("group %s: member %s did not rejoin", self.group_id, member_id)
            self.members.pop(member_id)
        if not self.members:
            self.move(GroupState.EMPTY)
            self.leader = None
            return
        self.generation += 1
        self.protocol = self._choose_protocol()
        if self.leader not in self.members:
            self.leader = next(iter(self.members))
        self.move(GroupState.COMPLETING_REBALANCE)
        subscriptions = [(m.member_id, dict(m.protocols)[self.protocol])
                         for m in self.members.values()]
        for member in self.members.values():
            assert member.joining is not None
            member.joining.set_result(JoinResult(
                ErrorCode.NONE, self.generation, self.protocol, self.leader, member.member_id,
                subscriptions if member.member_id == self.leader else []))
            member.joining = None
            self._arm(member)

    def _choose_protocol(self) -> str:
        """The first protocol of the leader's (or first member's) list that every member
        supports (the join checked that one exists)."""
        members = list(self.members.values())
        first = self.members.get(self.leader or "", members[0])
        for name, _ in first.protocols:
            if all(name in dict(m.protocols) for m in members):
                return name
        return first.protocols[0][0]

    def _arm(self, member: Member) -> None:
        if member.expiry is not None:
            member.expiry.cancel()
        member.expiry = asyncio.get_running_loop().call_later(
            member.session_ms / 1000, self._expire, member.member_id)

    def _expire(self, member_id: str) -> None:
        log.info("group %s: member %s's session expired", self.group_id, member_id)
        self.leave(member_id)

    def _cancel_rebalance_timer(self) -> None:
        if self._rebalance_timer is not None:
            self._rebalance_timer.cancel()
            self._rebalance_timer = None


class Coordinator:
    """The groups this broker coordinates, and the committed offsets."""

    def __init__(self, storage: Storage, *, initial_delay_ms: int = 300) -> None:
        self._storage = storage
        self.initial_delay = initial_delay_ms / 1000
        self._groups: dict[str, Group] = {}
        self._saving: set[asyncio.Task[None]] = set()

    async def group(self, group_id: str) -> Group:
        """The group, made (with the generation last stored for it) if this broker has not
        coordinated it since it started."""
        found = self._groups.get(group_id)
        if found is not None:
            return found
        stored = await self._storage.kv_get(GROUPS, group_id)
        generation = int(json.loads(stored)["generation"]) if stored else 0
        return self._groups.setdefault(group_id, Group(group_id, self, generation))

    def known(self, group_id: str) -> Group | None:
        return self._groups.get(group_id)

    def stable(self, group: Group) -> None:
        """A group reached STABLE: keep its generation (in the background; a coordinator
        that takes the group over later starts above it)."""
        value = json.dumps({"generation": group.generation, "protocol_type": group.protocol_type,
                            "protocol": group.protocol}).encode()
        task = asyncio.create_task(self._storage.kv_put(GROUPS, group.group_id, value))
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    async def join(self, group_id: str, member_id: str, client_id: str, session_ms: int,
                   rebalance_ms: int, protocol_type: str,
                   protocols: list[tuple[str, bytes]]) -> JoinResult:
        if not group_id:
            return JoinResult(ErrorCode.INVALID_GROUP_ID, member_id=member_id)
        if not MIN_SESSION_MS <= session_ms <= MAX_SESSION_MS:
            return JoinResult(ErrorCode.INVALID_SESSION_TIMEOUT, member_id=member_id)
        group = await self.group(group_id)
        if not protocols or (group.members and (
                group.protocol_type != protocol_type or not any(
                    all(name in dict(m.protocols) for m in group.members.values())
                    for name, _ in protocols))):
            return JoinResult(ErrorCode.INCONSISTENT_GROUP_PROTOCOL, member_id=member_id)
        if member_id and member_id not in group.members:
            return JoinResult(ErrorCode.UNKNOWN_MEMBER_ID, member_id=member_id)
        if not member_id:
            member_id = f"{client_id or 'member'}-{uuid.uuid4()}"
        member = group.members.get(member_id) or Member(member_id, session_ms,
                                                         max(rebalance_ms, session_ms),
                                                         protocols)
        member.protocols = protocols
        member.session_ms = session_ms
        member.rebalance_ms = max(rebalance_ms, session_ms)
        group.protocol_type = protocol_type
        return await group.join(member)

    async def sync(self, group_id: str, generation: int, member_id: str,
                   assignments: dict[str, bytes]) -> tuple[ErrorCode, bytes]:
        group = self._groups.get(group_id)
        member = None if group is None else group.members.get(member_id)
        if group is None or member is None:
            return ErrorCode.UNKNOWN_MEMBER_ID, b""
        if generation != group.generation:
            return ErrorCode.ILLEGAL_GENERATION, b""
        if group.state is GroupState.PREPARING_REBALANCE:
            return ErrorCode.REBALANCE_IN_PROGRESS, b""
        leader = member_id == group.leader
        return await group.sync(member, assignments if leader else None)

    def heartbeat(self, group_id: str, generation: int, member_id: str) -> ErrorCode:
        group = self._groups.get(group_id)
        member = None if group is None else group.members.get(member_id)
        if group is None or member is None:
            return ErrorCode.UNKNOWN_MEMBER_ID
        if generation != group.generation:
            return ErrorCode.ILLEGAL_GENERATION
        return group.heartbeat(member)

    def leave(self, group_id: str, member_id: str) -> ErrorCode:
        group = self._groups.get(group_id)
        if group is None or member_id not in group.members:
            return ErrorCode.UNKNOWN_MEMBER_ID
        group.leave(member_id)
        return ErrorCode.NONE

    # ---- offsets ----

    def may_commit(self, group_id: str, generation: int, member_id: str) -> ErrorCode:
        """Whether a commit of this generation and member is accepted now: a member of the
        current generation, unless its assignment is being decided (COMPLETING_REBALANCE); or
        anyone for a group without members (offsets managed by the client, generation -1)."""
        group = self._groups.get(group_id)
        if group is None or not group.members:  # also a group this broker lost on a restart
            return ErrorCode.NONE
        if member_id not in group.members:
            return ErrorCode.UNKNOWN_MEMBER_ID
        if generation != group.generation:
            return ErrorCode.ILLEGAL_GENERATION
        if group.state is GroupState.COMPLETING_REBALANCE:  # Kafka's rule: a member may
            return ErrorCode.REBALANCE_IN_PROGRESS          # commit before it rejoins
        return ErrorCode.NONE

    async def commit(self, group_id: str,
                     offsets: dict[str, tuple[int, str | None, int]]) -> None:
        """Store ``{"<topic>/<partition>": (offset, metadata, leader epoch)}`` in the group's
        one entry (one metadata write for the whole commit)."""
        def merge(current: bytes | None) -> bytes:
            found = json.loads(current) if current else {}
            found.update({key: list(value) for key, value in offsets.items()})
            return json.dumps(found, sort_keys=True).encode()

        await self._storage.kv_update(OFFSETS, group_id, merge)

    async def committed(self, group_id: str) -> dict[str, tuple[int, str | None, int]]:
        stored = await self._storage.kv_get(OFFSETS, group_id)
        if not stored:
            return {}
        return {key: (int(v[0]), v[1], int(v[2])) for key, v in json.loads(stored).items()}

    def close(self) -> None:
        for group in self._groups.values():
            for member_id in list(group.members):
                group.leave(member_id)
