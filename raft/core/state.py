"""A server's state: Figure 2's persistent and volatile state, the leader's replication
progress per peer, the log with its compacted prefix, and the timers a serverless host keeps
between invocations.

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
    # Characters of snapshot data per InstallSnapshot chunk: like entry data, at most 8 bytes
    # each once encoded and escaped, so a chunk fits one Service Bus message.
    snapshot_chunk_chars: int = 28 * 1024
    pre_vote: bool = True
    check_quorum: bool = True
    # Quiescence: once every follower holds and has committed the whole log, the leader says
    # so and stops heartbeating; it then checks the group only every `quiesce_check_interval`
    # (0: 200 heartbeat intervals), and quiescent followers wait that long plus an election
    # timeout before they start an election. Any proposal or vote request wakes the group.
    quiesce: bool = True
    quiesce_check_interval: int = 0

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        # A follower hears from the leader at least once per heartbeat interval, plus however
        # late the host's tick is (at most one more interval when ticks come that often): the
        # minimum election timeout must exceed both, or a healthy leader is deposed.
        if self.election_timeout_min <= 2 * self.heartbeat_interval:
            raise ValueError(
                "election_timeout_min must exceed twice heartbeat_interval "
                f"(got {self.election_timeout_min} and {self.heartbeat_interval})"
            )
        if self.election_timeout_max <= self.election_timeout_min:
            raise ValueError("election_timeout_max must exceed election_timeout_min")
        if self.quiesce and self.quiesce_interval <= self.election_timeout_max:
            raise ValueError("quiesce_check_interval must exceed election_timeout_max")
        if self.snapshot_chunk_chars <= 0 or self.max_inflight_messages <= 0:
            raise ValueError("snapshot_chunk_chars and max_inflight_messages must be positive")

    @property
    def quiesce_interval(self) -> int:
        return self.quiesce_check_interval or 200 * self.heartbeat_interval


class Replication(StrEnum):
    """How a leader sends to one follower (etcd's progress states)."""

    # Where the follower's log matches is unknown: one AppendEntries at a time.
    PROBE = "probe"
    # The follower matches up to `match`: AppendEntries are pipelined.
    REPLICATE = "replicate"
    # The entries the follower needs are compacted away: a snapshot is being sent.
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Progress:
    """A leader's view of one follower (Figure 2's nextIndex and matchIndex, plus flow
    control)."""

    next: int
    match: int = 0
    mode: Replication = Replication.PROBE
    # AppendEntries (or snapshot chunks) sent and not yet answered.
    inflight: int = 0
    # When the leader last sent this follower anything that resets its election timer.
    last_sent: int = 0
    # Heard from since the last check-quorum (thesis §6.2).
    recent_active: bool = False
    # The latest ReadIndex round this follower acknowledged in the leader's term.
    read_acked: int = 0
    # While sending a snapshot: its index and the offset of the next chunk to send.
    snapshot_index: int = 0
    snapshot_offset: int = 0

    def key(self) -> tuple[Any, ...]:
        """Every field, in the stored order: compared on every step, so without looking up
        the mode's value."""
        return (
            self.next,
            self.match,
            self.mode,
            self.inflight,
            self.last_sent,
            self.recent_active,
            self.snapshot_index,
            self.snapshot_offset,
            self.read_acked,
        )

    def to_json(self) -> list[Any]:
        next_, match, mode, *rest = self.key()
        return [next_, match, mode.value, *rest]

    @classmethod
    def from_json(cls, doc: list[Any]) -> Progress:
        next_, match, mode, inflight, last_sent, active, snap_index, snap_offset, acked = doc
        return cls(
            next_,
            match,
            Replication(mode),
            inflight,
            last_sent,
            active,
            acked,
            snap_index,
            snap_offset,
        )


@dataclass(frozen=True, slots=True)
class PendingRead:
    """A read-only request a leader holds until a majority confirms it still leads (thesis
    §6.4): answered from the applied state once `index` is applied. `index` is 0 until the
    leader has committed an entry of its own term (before that its commit index may lag)."""

    client_id: str
    seq: int
    data: str
    reply_to: str
    index: int
    round: int

    def to_json(self) -> list[Any]:
        return [self.client_id, self.seq, self.data, self.reply_to, self.index, self.round]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The applied state as of `index` (whose entry had `term`), encoded by the application,
    and the cluster configuration at that index."""

    index: int
    term: int
    data: str
    servers: tuple[ServerId, ...]


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """A chunk of a snapshot being received, to be stored before it is acknowledged."""

    index: int
    term: int
    offset: int
    data: str


@dataclass(slots=True)
class IncomingSnapshot:
    """A snapshot a follower is receiving chunk by chunk. The chunks are stored as they
    arrive (`data`, like the log, is stored apart from the state dict)."""

    term: int  # the leader's term
    index: int
    last_term: int
    offset: int  # characters received so far
    servers: tuple[ServerId, ...]
    data: str = ""

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.term, self.index, self.last_term)

    def to_json(self) -> list[Any]:
        return [self.term, self.index, self.last_term, self.offset, list(self.servers)]

    @classmethod
    def from_json(cls, doc: list[Any]) -> IncomingSnapshot:
        term, index, last_term, offset, servers = doc
        return cls(term, index, last_term, offset, tuple(servers))


@dataclass(slots=True)
class ServerState:
    server_id: ServerId
    # The cluster's configuration: the latest one in the log, committed or not (thesis §4.1),
    # else `base_servers`. Empty on a server added later until it hears from a leader.
    servers: tuple[ServerId, ...]
    rng: int
    # Persistent state on all servers (Figure 2).
    current_term: int = 0
    voted_for: ServerId = ""
    # Entries log_start + 1 .. last_index; those up to log_start are compacted into a
    # snapshot (thesis ch. 5). log_start_term is the term of the entry at log_start.
    log: list[Entry] = field(default_factory=list)
    log_start: int = 0
    log_start_term: int = 0
    # Volatile state on all servers (Figure 2).
    commit_index: int = 0
    last_applied: int = 0
    role: Role = Role.FOLLOWER
    leader_id: ServerId = ""
    # Votes granted to this server in its current election or pre-election, as a set of voter
    # ids so that a duplicated response is never counted twice.
    votes: set[ServerId] = field(default_factory=set)
    # Volatile state on leaders: one Progress per peer.
    progress: dict[ServerId, Progress] = field(default_factory=dict)
    # The latest snapshot of the applied state (entries up to log_start are only in it), and
    # one being received from the leader. Stored apart from the state dict, like the log.
    snapshot: Snapshot | None = None
    incoming: IncomingSnapshot | None = None
    # Timers, as absolute times; 0 means "not yet armed".
    election_deadline: int = 0
    heartbeat_deadline: int = 0
    quorum_check_deadline: int = 0
    # When this server last heard from a current leader (the lease of thesis §4.2.3).
    leader_contact: int = -(1 << 62)
    # A leader that stopped heartbeating a settled group, or a follower told so by it.
    quiescent: bool = False
    # ReadIndex on leaders: the latest confirmation round, and the reads waiting for one.
    read_round: int = 0
    reads: list[PendingRead] = field(default_factory=list)
    # Leadership transfer in progress (thesis §3.10): to whom, and until when.
    transfer_to: ServerId = ""
    transfer_deadline: int = 0
    # The configuration in effect at log_start (before every configuration entry in the log).
    base_servers: tuple[ServerId, ...] | None = None

    def __post_init__(self) -> None:
        if self.base_servers is None:
            self.base_servers = self.servers

    def servers_at(self, index: int) -> tuple[ServerId, ...]:
        """The configuration in effect once entries up to `index` are in the log."""
        for i in range(min(index, self.last_index), self.log_start, -1):
            servers = self.log[i - self.log_start - 1].servers
            if servers:
                return servers
        assert self.base_servers is not None
        return self.base_servers

    @property
    def config_index(self) -> int:
        """The index of the latest configuration entry (log_start if none is in the log)."""
        for i in range(self.last_index, self.log_start, -1):
            if self.log[i - self.log_start - 1].servers:
                return i
        return self.log_start

    @property
    def peers(self) -> tuple[ServerId, ...]:
        return tuple(s for s in self.servers if s != self.server_id)

    @property
    def quorum(self) -> int:
        return len(self.servers) // 2 + 1

    @property
    def first_index(self) -> int:
        """The first index still in the log (there may be none)."""
        return self.log_start + 1

    @property
    def last_index(self) -> int:
        return self.log_start + len(self.log)

    @property
    def last_term(self) -> int:
        return self.log[-1].term if self.log else self.log_start_term

    def term_at(self, index: int) -> int:
        """Term of the entry at `index` (1-based): 0 for index 0, the snapshot's term at
        log_start. Indexes before log_start are compacted away: callers check first."""
        if index > self.log_start:
            return self.log[index - self.log_start - 1].term
        if index == self.log_start:
            return self.log_start_term
        raise IndexError(f"entry {index} is compacted (log starts after {self.log_start})")

    def entry(self, index: int) -> Entry:
        return self.log[index - self.log_start - 1]


def state_to_dict(state: ServerState) -> dict[str, Any]:
    """Everything but the log entries, as plain JSON values (the log is stored entry by entry).

    `last_index` is derived, for stores and status pages; `state_from_dict` ignores it.
    Built on every step that saves, hence spelled out field by field.
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
        "log_start": state.log_start,
        "log_start_term": state.log_start_term,
        "quiescent": state.quiescent,
        "read_round": state.read_round,
        "transfer_to": state.transfer_to,
        "transfer_deadline": state.transfer_deadline,
        "reads": [read.to_json() for read in state.reads],
        "last_index": state.last_index,
        "role": state.role.value,
        "servers": list(state.servers),
        "base_servers": list(state.base_servers or ()),
        "config_index": state.config_index,
        "votes": sorted(state.votes),
        "progress": {peer: p.to_json() for peer, p in state.progress.items()},
        "incoming": None if state.incoming is None else state.incoming.to_json(),
    }


def state_from_dict(
    server_id: ServerId,
    doc: dict[str, Any],
    log: list[Entry],
    snapshot: Snapshot | None = None,
    incoming_data: str = "",
) -> ServerState:
    """The state `state_to_dict` stored, with its log (and snapshot, and the data received so
    far of one being installed). One constructor call: every reload runs it."""
    incoming = doc["incoming"]
    state = ServerState(
        server_id=server_id,
        servers=tuple(doc["servers"]),
        rng=doc["rng"],
        current_term=doc["current_term"],
        voted_for=doc["voted_for"],
        log=log,
        log_start=doc["log_start"],
        log_start_term=doc["log_start_term"],
        commit_index=doc["commit_index"],
        last_applied=doc["last_applied"],
        role=Role(doc["role"]),
        leader_id=doc["leader_id"],
        votes=set(doc["votes"]),
        progress={peer: Progress.from_json(p) for peer, p in doc["progress"].items()},
        snapshot=snapshot,
        incoming=None if incoming is None else IncomingSnapshot.from_json(incoming),
        election_deadline=doc["election_deadline"],
        heartbeat_deadline=doc["heartbeat_deadline"],
        quorum_check_deadline=doc["quorum_check_deadline"],
        leader_contact=doc["leader_contact"],
        quiescent=doc["quiescent"],
        read_round=doc["read_round"],
        reads=[PendingRead(*read) for read in doc["reads"]],
        transfer_to=doc["transfer_to"],
        transfer_deadline=doc["transfer_deadline"],
        base_servers=tuple(doc["base_servers"]),
    )
    if state.incoming is not None:
        state.incoming.data = incoming_data
    return state
