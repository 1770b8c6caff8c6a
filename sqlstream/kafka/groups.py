"""The classic consumer-group coordinator (JoinGroup, SyncGroup, Heartbeat, LeaveGroup).

Membership lives in memory, as in a Kafka broker's coordinator cache: a restarted
listener starts with empty groups and members rejoin (their next heartbeat gets
UNKNOWN_MEMBER_ID, after which every client rejoins). Committed offsets are in the
file (:class:`~sqlstream.kafka.store.KafkaStore`). Assignment is client-side: the
leader gets every member's subscription metadata and sends the assignments back in its
SyncGroup.

States, as Kafka's ``GroupCoordinator``: *empty* -> *preparing* (a join or leave started
a rebalance: known members have ``rebalance_timeout`` to rejoin, new ones are waited
for ``initial_delay`` when the group was empty) -> *completing* (the generation is
decided, joins answered; waiting for the leader's SyncGroup) -> *stable*. A member
whose heartbeats stop for ``session_timeout`` is removed and the group rebalances.
All methods run on the listener's event loop; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Coordinator", "GroupError", "JoinResult"]

log = logging.getLogger("sqlstream.kafka")

# Error codes of the group APIs.
UNKNOWN_MEMBER_ID = 25
ILLEGAL_GENERATION = 22
REBALANCE_IN_PROGRESS = 27
INCONSISTENT_GROUP_PROTOCOL = 23
MEMBER_ID_REQUIRED = 79
INVALID_SESSION_TIMEOUT = 26


class GroupError(Exception):
    """A group request refused with a Kafka error ``code``."""

    def __init__(self, code: int, message: str, member_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.member_id = member_id


@dataclass
class JoinResult:
    generation: int
    protocol: str | None
    protocol_type: str
    leader: str
    member_id: str
    members: list[tuple[str, str | None, bytes]]   # for the leader: (member id, instance id, metadata)


@dataclass
class _Member:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout: float
    rebalance_timeout: float
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    last_seen: float = field(default_factory=time.monotonic)
    join: asyncio.Future[JoinResult] | None = None
    sync: asyncio.Future[bytes] | None = None
    assignment: bytes = b""


@dataclass
class _Group:
    group_id: str
    state: str = "empty"   # empty, preparing, completing, stable
    generation: int = 0
    protocol_type: str | None = None
    protocol: str | None = None
    leader: str | None = None
    members: dict[str, _Member] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)   # ids handed out with MEMBER_ID_REQUIRED
    timer: asyncio.TimerHandle | None = None


class Coordinator:
    """Every group of one listener (see the module docstring)."""

    def __init__(self, *, initial_delay: float = 0.1) -> None:
        self.groups: dict[str, _Group] = {}
        self.initial_delay = initial_delay
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start expiring members whose sessions ended (call on the event loop)."""
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for group in self.groups.values():
            if group.timer is not None:
                group.timer.cancel()
            for m in group.members.values():
                for fut in (m.join, m.sync):
                    if fut is not None and not fut.done():
                        fut.cancel()

    def _group(self, group_id: str) -> _Group:
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = _Group(group_id)
        return group

    # ------------------------------------------------------------------ join

    async def join(self, group_id: str, member_id: str, instance_id: str | None, client_id: str, client_host: str,
                   session_timeout_ms: int, rebalance_timeout_ms: int, protocol_type: str,
                   protocols: list[tuple[str, bytes]], require_known_member: bool) -> JoinResult:
        """Join (or rejoin) and wait for the rebalance to complete; raises GroupError."""
        if not group_id:
            raise GroupError(24, "the group id is empty")  # INVALID_GROUP_ID
        if not 1000 <= session_timeout_ms <= 30 * 60_000:
            raise GroupError(INVALID_SESSION_TIMEOUT, f"session timeout {session_timeout_ms} ms is outside 1 s-30 min")
        group = self._group(group_id)
        if group.protocol_type is not None and group.members and protocol_type != group.protocol_type:
            raise GroupError(INCONSISTENT_GROUP_PROTOCOL, f"group {group_id!r} uses {group.protocol_type!r}")
        if group.members and not self._common(group, [p for p, _ in protocols]):
            raise GroupError(INCONSISTENT_GROUP_PROTOCOL, "no protocol in common with the group's members")
        if not member_id:
            member_id = f"{client_id or 'member'}-{uuid.uuid4()}"
            if require_known_member:
                group.pending.add(member_id)
                raise GroupError(MEMBER_ID_REQUIRED, "rejoin with the member id given", member_id)
        elif member_id not in group.members and member_id not in group.pending:
            raise GroupError(UNKNOWN_MEMBER_ID, f"member {member_id!r} is not in group {group_id!r}")
        group.pending.discard(member_id)
        rebalance_timeout = max(rebalance_timeout_ms, session_timeout_ms) / 1000
        member = group.members.get(member_id)
        loop = asyncio.get_running_loop()
        if member is None:
            member = _Member(member_id, instance_id, client_id, client_host, session_timeout_ms / 1000,
                             rebalance_timeout, protocol_type, protocols)
            group.members[member_id] = member
        else:
            member.protocols = protocols
            member.session_timeout = session_timeout_ms / 1000
            member.rebalance_timeout = rebalance_timeout
            member.last_seen = time.monotonic()
        if member.join is not None and not member.join.done():
            # A second join of the same member (a new connection): the first one ends.
            member.join.set_exception(GroupError(REBALANCE_IN_PROGRESS, "superseded by a newer join"))
        member.join = loop.create_future()
        group.protocol_type = protocol_type
        # Every join outside a rebalance starts one (a rejoin asks for a new assignment:
        # its subscription may have changed); the first member of an empty group waits
        # `initial_delay` for others, as Kafka's group.initial.rebalance.delay.ms.
        if group.state != "preparing":
            self._prepare(group, delay=self.initial_delay if group.state == "empty" or len(group.members) == 1
                          else None)
        elif all(m.join is not None and not m.join.done() for m in group.members.values()):
            self._complete(group)
        return await member.join

    def _common(self, group: _Group, names: list[str]) -> bool:
        others = [set(p for p, _ in m.protocols) for m in group.members.values()]
        return any(all(n in o for o in others) for n in names)

    def _prepare(self, group: _Group, delay: float | None) -> None:
        """Start a rebalance: members have their rebalance timeout to rejoin."""
        group.state = "preparing"
        for m in group.members.values():
            if m.sync is not None and not m.sync.done():
                m.sync.set_exception(GroupError(REBALANCE_IN_PROGRESS, "the group is rebalancing"))
            m.sync = None
        if group.timer is not None:
            group.timer.cancel()
        wait = delay if delay is not None else max((m.rebalance_timeout for m in group.members.values()), default=0)
        loop = asyncio.get_running_loop()
        if delay is None and all(m.join is not None and not m.join.done() for m in group.members.values()):
            wait = 0
        group.timer = loop.call_later(wait, self._complete, group)

    def _complete(self, group: _Group) -> None:
        """End the join phase: drop members that did not rejoin, pick the protocol and
        leader, answer every join."""
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        if group.state != "preparing":
            return
        for mid in [mid for mid, m in group.members.items() if m.join is None or m.join.done()]:
            log.info("group %s: member %s did not rejoin in time; removed", group.group_id, mid)
            del group.members[mid]
        group.generation += 1
        if not group.members:
            group.state = "empty"
            group.leader = None
            group.protocol = None
            return
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        group.protocol = self._choose(group)
        group.state = "completing"
        members = [(m.member_id, m.instance_id, dict(m.protocols).get(group.protocol or "", b""))
                   for m in group.members.values()]
        for m in group.members.values():
            assert m.join is not None
            m.last_seen = time.monotonic()
            m.join.set_result(JoinResult(group.generation, group.protocol, group.protocol_type or "",
                                         group.leader, m.member_id, members if m.member_id == group.leader else []))

    @staticmethod
    def _choose(group: _Group) -> str | None:
        # Kafka's rule: the protocol most members rank highest among those all support.
        candidates = set.intersection(*(set(p for p, _ in m.protocols) for m in group.members.values()))
        votes: dict[str, int] = {}
        for m in group.members.values():
            for name, _ in m.protocols:
                if name in candidates:
                    votes[name] = votes.get(name, 0) + 1
                    break
        return max(votes, key=lambda n: votes[n]) if votes else None

    # ------------------------------------------------------------------ sync

    async def sync(self, group_id: str, member_id: str, generation: int,
                   assignments: list[tuple[str, bytes]]) -> tuple[str | None, str | None, bytes]:
        """SyncGroup: the leader's assignments in, this member's assignment out."""
        group, member = self._member(group_id, member_id)
        if generation != group.generation:
            raise GroupError(ILLEGAL_GENERATION, f"generation {generation} is not the group's {group.generation}")
        if group.state == "preparing":
            raise GroupError(REBALANCE_IN_PROGRESS, "the group is rebalancing")
        member.last_seen = time.monotonic()
        if group.state == "stable":
            return group.protocol_type, group.protocol, member.assignment
        if member.sync is None or member.sync.done():
            member.sync = asyncio.get_running_loop().create_future()
        if member_id == group.leader:
            given = dict(assignments)
            for m in group.members.values():
                m.assignment = given.get(m.member_id, b"")
            group.state = "stable"
            for m in group.members.values():
                if m.sync is not None and not m.sync.done():
                    m.sync.set_result(m.assignment)
        assignment = await member.sync
        member.last_seen = time.monotonic()
        return group.protocol_type, group.protocol, assignment

    def heartbeat(self, group_id: str, member_id: str, generation: int) -> None:
        """Heartbeat: raises REBALANCE_IN_PROGRESS while the group rebalances."""
        group, member = self._member(group_id, member_id)
        member.last_seen = time.monotonic()
        if generation != group.generation:
            raise GroupError(ILLEGAL_GENERATION, f"generation {generation} is not the group's {group.generation}")
        if group.state == "preparing":
            raise GroupError(REBALANCE_IN_PROGRESS, "the group is rebalancing")

    def leave(self, group_id: str, member_id: str) -> None:
        """LeaveGroup: the member goes; the others rebalance."""
        group, member = self._member(group_id, member_id)
        self._remove(group, member, "left")

    def check_commit(self, group_id: str, member_id: str, generation: int) -> None:
        """OffsetCommit's rule: a group member commits in the current generation (also
        while a rebalance is being prepared, not while it completes); a
        commit without membership (generation -1) is accepted only when the group has no
        members (a standalone consumer)."""
        group = self.groups.get(group_id)
        if generation < 0 and not member_id:
            if group is not None and group.members:
                raise GroupError(UNKNOWN_MEMBER_ID, f"group {group_id!r} has members; commit as one of them")
            return
        if group is None or member_id not in group.members:
            raise GroupError(UNKNOWN_MEMBER_ID, f"member {member_id!r} is not in group {group_id!r}")
        if generation != group.generation:
            raise GroupError(ILLEGAL_GENERATION, f"generation {generation} is not the group's {group.generation}")
        # As Kafka: a member may still commit what it processed while the group prepares a
        # rebalance (its pre-rebalance commit); not between the joins and the assignment.
        if group.state == "completing":
            raise GroupError(REBALANCE_IN_PROGRESS, "the group is rebalancing")
        group.members[member_id].last_seen = time.monotonic()

    def describe(self, group_id: str) -> dict[str, Any]:
        group = self.groups.get(group_id)
        if group is None:
            return {"state": "Dead", "members": [], "protocol_type": "", "protocol": ""}
        names = {"empty": "Empty", "preparing": "PreparingRebalance", "completing": "CompletingRebalance",
                 "stable": "Stable"}
        return {
            "state": names[group.state], "protocol_type": group.protocol_type or "", "protocol": group.protocol or "",
            "members": [(m.member_id, m.instance_id, m.client_id, m.client_host,
                         dict(m.protocols).get(group.protocol or "", b""), m.assignment)
                        for m in group.members.values()],
        }

    def _member(self, group_id: str, member_id: str) -> tuple[_Group, _Member]:
        group = self.groups.get(group_id)
        member = group.members.get(member_id) if group is not None else None
        if group is None or member is None:
            raise GroupError(UNKNOWN_MEMBER_ID, f"member {member_id!r} is not in group {group_id!r}")
        return group, member

    def _remove(self, group: _Group, member: _Member, why: str) -> None:
        log.info("group %s: member %s %s", group.group_id, member.member_id, why)
        del group.members[member.member_id]
        for fut in (member.join, member.sync):
            if fut is not None and not fut.done():
                fut.set_exception(GroupError(UNKNOWN_MEMBER_ID, f"member {member.member_id} {why}"))
        if group.leader == member.member_id:
            group.leader = None
        if not group.members:
            if group.timer is not None:
                group.timer.cancel()
                group.timer = None
            group.state = "empty"
            group.generation += 1
            return
        if group.state == "preparing":
            if all(m.join is not None and not m.join.done() for m in group.members.values()):
                self._complete(group)
        else:
            self._prepare(group, delay=None)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for group in list(self.groups.values()):
                for member in list(group.members.values()):
                    # A member whose JoinGroup or SyncGroup is pending is alive: its
                    # heartbeats wait behind that request on its connection (as in Kafka,
                    # where a pending join or sync holds the session open).
                    waiting = any(f is not None and not f.done() for f in (member.join, member.sync))
                    if not waiting and now - member.last_seen > member.session_timeout:
                        self._remove(group, member, "let its session expire")
