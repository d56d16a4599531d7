"""Typed, immutable records for everything a server receives or sends.

Names follow the extended Raft paper (Ongaro & Ousterhout, 2014), Figure 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

ServerId = str


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. `data` is the application's encoded command, opaque to the core.

    An entry with an empty `client_id` is a no-op appended by a new leader (§5.4.2).
    `reply_to` is where the leader that applies it sends the result; empty means the client
    polls the stored result instead. `issued_at` is the client's time for the request and
    `time` the leader's clock when it appended the entry (milliseconds): every server applies
    the same times at the same index, so sessions expire identically everywhere (thesis §6.3).
    """

    term: int
    client_id: str = ""
    seq: int = 0
    data: str = ""
    reply_to: str = ""
    issued_at: int = 0
    time: int = 0
    # A configuration entry (thesis §4.1): the cluster's servers from this entry on.
    servers: tuple[ServerId, ...] = ()

    @property
    def size(self) -> int:
        return len(self.data) + len(self.client_id) + len(self.reply_to) + 24


@dataclass(frozen=True, slots=True)
class RequestVote:
    """RequestVote RPC (§5.2), or a PreVote probe (thesis §9.6) when `pre_vote`.

    A pre-vote carries the term the candidate *would* use; receivers do not adopt it.
    """

    term: int
    candidate_id: ServerId
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    # Sent on the leader's TimeoutNow (thesis §3.10): receivers set their leader lease aside.
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    term: int
    voter_id: ServerId
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """AppendEntries RPC (§5.3); with no entries it is a heartbeat. `quiesce`: the leader
    holds nothing uncommitted and stops heartbeating until it has work or checks again."""

    term: int
    leader_id: ServerId
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    quiesce: bool = False
    # The leader's latest ReadIndex round; the follower echoes it to confirm leadership.
    read_round: int = 0


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Reply to AppendEntries.

    On success `match_index` is the last index known to match the leader's log. On failure
    `conflict_index`/`conflict_term` let the leader skip a whole conflicting term at once
    (the optimisation sketched at the end of §5.3).
    """

    term: int
    follower_id: ServerId
    success: bool
    match_index: int = 0
    conflict_index: int = 0
    conflict_term: int = 0
    read_round: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """InstallSnapshot RPC (§7, thesis §5.3), one chunk at a time.

    The snapshot covers the log up to `last_index` (whose entry had `last_term`) and carries
    the configuration as of that index. `offset` is where `data` starts in the encoded
    snapshot; `done` marks the last chunk. A chunk also serves as a heartbeat.
    """

    term: int
    leader_id: ServerId
    last_index: int
    last_term: int
    servers: tuple[ServerId, ...]
    offset: int
    data: str
    done: bool


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    """Reply to InstallSnapshot: the follower has stored the snapshot at `last_index` up to
    `next_offset` (and installed it, if `done`). A follower that already holds everything
    the snapshot covers answers `done` at once."""

    term: int
    follower_id: ServerId
    last_index: int
    next_offset: int
    done: bool


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A command from a client (§8). (`client_id`, `seq`) identifies it for deduplication.

    `reply_to` is the address the response goes to; empty means the caller polls the stored
    result instead (the HTTP function does). `hops` bounds forwarding between servers.
    `issued_at` is when the client issued it (milliseconds on the cluster's clock); a request
    older than the session retention is refused as expired, never applied.
    """

    client_id: str
    seq: int
    data: str
    reply_to: str = ""
    hops: int = 0
    issued_at: int = 0
    # A command that only reads: served by ReadIndex (thesis §6.4) without a log entry.
    read_only: bool = False


class ClientStatus(StrEnum):
    OK = "ok"
    NOT_LEADER = "not_leader"
    OVERLOADED = "overloaded"
    STALE = "stale"
    REJECTED = "rejected"
    # Older than the session retention: it may be a duplicate of a request whose session is
    # gone, so it is never applied (thesis §6.3).
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class ClientResponse:
    client_id: str
    seq: int
    status: ClientStatus
    result: str = ""
    index: int = 0
    term: int = 0
    leader_hint: ServerId = ""


@dataclass(frozen=True, slots=True)
class Tick:
    """The passage of time: `now` in milliseconds on the host's clock."""

    now: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer (thesis §3.10): the leader tells a caught-up follower to start an
    election at once."""

    term: int
    leader_id: ServerId


@dataclass(frozen=True, slots=True)
class ChangeMembership:
    """From an operator to the leader: add `server` to the configuration, or remove it (one
    server at a time, thesis §4.1)."""

    server: ServerId
    add: bool


@dataclass(frozen=True, slots=True)
class TransferLeadership:
    """From an operator to the leader: hand leadership to `target` (within an election
    timeout, or not at all)."""

    target: ServerId


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | ClientRequest
    | ClientResponse
    | TimeoutNow
    | TransferLeadership
    | ChangeMembership
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message addressed from one node (server or client) to another."""

    sender: str
    to: str
    message: Message
