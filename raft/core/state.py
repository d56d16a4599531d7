"""A server's state: Figure 2's persistent and volatile state, plus the timers and bookkeeping
a serverless host must keep between invocations.

Everything here is stored by the node handler after every step that changes it, because the
next message for this server may be handled by another function instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from raft.core.messages import Entry, ServerId


class Role(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class Config:
    """Timing (milliseconds on the host clock) and flow-control limits."""

    election_timeout_min: int = 150
    election_timeout_max: int = 300
    heartbeat_interval: int = 50
    max_entries_per_message: int = 256
    # Counted in characters of entry data: a character takes at most 4 bytes of UTF-8 and JSON
    # escaping at most doubles that, so this keeps an AppendEntries under Service Bus's
    # 256 KiB message limit (raft.core.wire.MAX_WIRE_BYTES).
    max_bytes_per_message: int = 28 * 1024
    # AppendEntries messages in flight to one follower once it is known to match (pipelining).
    max_inflight_messages: int = 4
    # Uncommitted entries a leader accepts before refusing proposals as overloaded.
    max_uncommitted_entries: int = 4096
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval < self.election_timeout_min:
            raise ValueError("heartbeat_interval must be below election_timeout_min")
        if self.election_timeout_max <= self.election_timeout_min:
            raise ValueError("election_timeout_max must exceed election_timeout_min")


@dataclass(slots=True)
class ServerState:
    server_id: ServerId
    # Every server in the cluster, this one included, in a fixed order.
    servers: tuple[ServerId, ...]
    rng: int
    # Persistent state on all servers (Figure 2).
    current_term: int = 0
    voted_for: ServerId = ""
    log: list[Entry] = field(default_factory=list)
    # Volatile state on all servers (Figure 2).
    commit_index: int = 0
    last_applied: int = 0
    role: Role = Role.FOLLOWER
    leader_id: ServerId = ""
    # Votes granted to this server in its current election or pre-election, as a set of voter
    # ids so that a duplicated response is never counted twice.
    votes: set[ServerId] = field(default_factory=set)
    # Volatile state on leaders (Figure 2), plus flow control: messages in flight per follower,
    # and followers being probed after a rejection (one message at a time).
    next_index: dict[ServerId, int] = field(default_factory=dict)
    match_index: dict[ServerId, int] = field(default_factory=dict)
    inflight: dict[ServerId, int] = field(default_factory=dict)
    probing: set[ServerId] = field(default_factory=set)
    # Check-quorum (thesis §6.2): followers heard from since the last check.
    recent_active: set[ServerId] = field(default_factory=set)
    # Followers sent an AppendEntries since the last heartbeat: it served as the heartbeat.
    replicated: set[ServerId] = field(default_factory=set)
    # Timers, as absolute times; 0 means "not yet armed".
    election_deadline: int = 0
    heartbeat_deadline: int = 0
    quorum_check_deadline: int = 0
    # When this server last heard from a current leader (the lease of thesis §4.2.3).
    leader_contact: int = -(1 << 62)

    @property
    def peers(self) -> tuple[ServerId, ...]:
        return tuple(s for s in self.servers if s != self.server_id)

    @property
    def quorum(self) -> int:
        return len(self.servers) // 2 + 1

    @property
    def last_index(self) -> int:
        return len(self.log)

    @property
    def last_term(self) -> int:
        return self.log[-1].term if self.log else 0

    def term_at(self, index: int) -> int:
        """Term of the entry at `index` (1-based); 0 for index 0."""
        return self.log[index - 1].term if index > 0 else 0


SCALARS = (
    "current_term",
    "voted_for",
    "commit_index",
    "last_applied",
    "leader_id",
    "election_deadline",
    "heartbeat_deadline",
    "quorum_check_deadline",
    "leader_contact",
    "rng",
)


def state_to_dict(state: ServerState) -> dict[str, Any]:
    """Everything but the log, as plain JSON values (the log is stored entry by entry).

    `last_index` is derived, for stores and status pages; `state_from_dict` ignores it.
    Built on every step (to tell whether anything changed), hence spelled out field by field.
    """
    return {
        "current_term": state.current_term,
        "voted_for": state.voted_for,
        "commit_index": state.commit_index,
        "last_applied": state.last_applied,
        "leader_id": state.leader_id,
        "election_deadline": state.election_deadline,
        "heartbeat_deadline": state.heartbeat_deadline,
        "quorum_check_deadline": state.quorum_check_deadline,
        "leader_contact": state.leader_contact,
        "rng": state.rng,
        "last_index": len(state.log),
        "role": state.role.value,
        "servers": list(state.servers),
        "votes": sorted(state.votes),
        "next_index": dict(state.next_index),
        "match_index": dict(state.match_index),
        "inflight": dict(state.inflight),
        "probing": sorted(state.probing),
        "recent_active": sorted(state.recent_active),
        "replicated": sorted(state.replicated),
    }


def state_from_dict(server_id: ServerId, doc: dict[str, Any], log: list[Entry]) -> ServerState:
    state = ServerState(server_id=server_id, servers=tuple(doc["servers"]), rng=doc["rng"], log=log)
    for name in SCALARS:
        setattr(state, name, doc[name])
    state.role = Role(doc["role"])
    state.votes = set(doc["votes"])
    state.next_index = dict(doc["next_index"])
    state.match_index = dict(doc["match_index"])
    state.inflight = dict(doc["inflight"])
    state.probing = set(doc["probing"])
    state.recent_active = set(doc["recent_active"])
    state.replicated = set(doc["replicated"])
    return state
