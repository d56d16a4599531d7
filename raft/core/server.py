"""The Raft server as a pure state machine (extended Raft paper, Figure 2; Ongaro's thesis for
log compaction, pre-vote, check-quorum and the leader lease).

`RaftServer` wraps one server's `ServerState`. Hosts feed it events with `step` (a message)
and `tick` (time passing), then call `ready()` to collect what changed: whether the state must
be saved, which log entries to rewrite, snapshot chunks to store, a snapshot installed, and the
messages to send. The host must persist before it sends (Figure 2: "respond to RPCs only after
updating stable storage"). There is no I/O, no clock and no global randomness here: `now`
comes with each event and the randomized election timeout comes from `state.rng`.

The methods are named after the rules they implement so that variants (the tester's catalogue
of known-buggy servers, or a user's own) can override one rule at a time.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace
from typing import Any

from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ChangeMembership,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    Entry,
    Envelope,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    ServerId,
    TimeoutNow,
    TransferLeadership,
)
from raft.core.rng import next_random
from raft.core.state import (
    Config,
    IncomingSnapshot,
    PendingRead,
    Progress,
    Replication,
    Role,
    ServerState,
    Snapshot,
    SnapshotChunk,
)


def entry_term(entry: Entry) -> int:
    return entry.term


# A follower forwards a client request to the leader it knows at most this many times, so a
# stale leader hint cannot bounce a request around forever.
MAX_FORWARD_HOPS = 2


@dataclass(frozen=True, slots=True)
class HardState:
    """What Figure 2 calls persistent state, besides the log."""

    term: int
    voted_for: ServerId
    commit: int


@dataclass(frozen=True, slots=True)
class Ready:
    """What steps changed since the host last stored the state (`persisted`), for the host to
    persist, then send.

    - `changed`: anything in the state differs from what was stored: it must be saved before
      `messages` are sent (and a host that saves nothing must check its copy was current);
    - `hard_state`: term, vote and commit index, if any of them changed;
    - `log_changed_from`: the lowest log index appended or overwritten (None if the log did
      not change): entries from there on must be rewritten and any stored entries past the new
      end deleted. Entries up to `state.log_start` are compacted and may be deleted;
    - `snapshot_chunks`: parts of a snapshot being received, to store with the state;
    - `installed`: a snapshot this server installed from its leader: the application must be
      restored from it (and it becomes the stored snapshot);
    - `committed`: the range of indexes newly known committed, (first, last), or None;
    - `reads`: read-only requests confirmed by a majority (ReadIndex): answer each from the
      applied state once its index is applied, after saving.
    """

    messages: tuple[Envelope, ...]
    changed: bool
    hard_state: HardState | None
    log_changed_from: int | None
    snapshot_chunks: tuple[SnapshotChunk, ...] = ()
    installed: Snapshot | None = None
    committed: tuple[int, int] | None = None
    reads: tuple[PendingRead, ...] = ()


# Read-only requests a leader holds at once; more are refused as overloaded.
MAX_PENDING_READS = 256


class RaftServer:
    def __init__(self, state: ServerState, config: Config) -> None:
        self.state = state
        self.config = config
        self._now = 0
        self._out: list[Envelope] = []
        self._log_changed_from: int | None = None
        self._to_replicate: set[ServerId] = set()
        self._heartbeat_due: set[ServerId] = set()
        self._chunks: list[SnapshotChunk] = []
        self._installed: Snapshot | None = None
        self._confirmed: list[PendingRead] = []
        self._mark = self._fingerprint()
        self._hard = self._hard_state()

    # ----------------------------------------------------------------- events

    def step(self, envelope: Envelope, now: int) -> None:
        """Handle one incoming message."""
        self._now = now
        m = envelope.message
        if isinstance(m, ClientRequest):
            self.on_client_request(m)
            return
        if isinstance(m, TransferLeadership):
            self.on_transfer_leadership(m, now)
            return
        if isinstance(m, ChangeMembership):
            self.on_change_membership(m)
            return
        if isinstance(m, ClientResponse):
            return
        sender = envelope.sender
        if sender == self.state.server_id:
            return
        if sender not in self.state.servers and not isinstance(m, AppendEntries | InstallSnapshot):
            # Only a leader may reach a server outside the configuration this one knows (one
            # that was added and has not yet received the entry that adds it).
            return
        if m.term > self.state.current_term and self.adopts_term(m, now):
            # §5.1: a server that sees a higher term updates its term and becomes a follower.
            leader = m.leader_id if isinstance(m, AppendEntries | InstallSnapshot) else ""
            self.become_follower(m.term, now, leader)
        if isinstance(m, RequestVote):
            self.on_request_vote(sender, m, now)
        elif isinstance(m, RequestVoteResponse):
            self.on_request_vote_response(sender, m, now)
        elif isinstance(m, AppendEntries):
            self.on_append_entries(sender, m, now)
        elif isinstance(m, AppendEntriesResponse):
            self.on_append_entries_response(sender, m)
        elif isinstance(m, InstallSnapshot):
            self.on_install_snapshot(sender, m, now)
        elif isinstance(m, TimeoutNow):
            self.on_timeout_now(m, now)
        else:
            self.on_install_snapshot_response(sender, m)

    def tick(self, now: int) -> None:
        """Time passes: fire whichever of this server's deadlines is due."""
        self._now = now
        s = self.state
        self.clamp_timers(now)
        if s.role is Role.LEADER:
            if s.transfer_to and now >= s.transfer_deadline:
                s.transfer_to = ""  # the target did not take over in time: lead on
            quorum_due = self.config.check_quorum and now >= s.quorum_check_deadline
            if quorum_due and not self.check_quorum(now):
                return
            if now >= s.heartbeat_deadline:
                self.heartbeat(now)
        elif now >= s.election_deadline and s.server_id in s.servers:
            if self.config.pre_vote:
                self.become_pre_candidate(now)
            else:
                self.become_candidate(now)

    def heartbeat(self, now: int) -> None:
        """Send to every follower that has had nothing from this leader for a heartbeat
        interval, so the gap between two messages to a follower never exceeds the interval
        by more than the host's tick is late; the next deadline is when the first follower
        falls due. A settled group is told to quiesce instead, and then only checked."""
        s, interval = self.state, self.config.heartbeat_interval
        if self.config.quiesce and (s.quiescent or self.settled()):
            s.quiescent = True
            for peer, p in s.progress.items():
                p.inflight = 0
                self._heartbeat_due.add(peer)
                self._to_replicate.add(peer)
            s.heartbeat_deadline = now + self.config.quiesce_interval
            # The answers to this round must come within the usual time, or it steps down.
            s.quorum_check_deadline = now + self.config.election_timeout_min
            return
        for peer, p in s.progress.items():
            if now - p.last_sent >= interval:
                p.inflight = 0
                self._heartbeat_due.add(peer)
                self._to_replicate.add(peer)
        self.rearm_heartbeat(now)

    def rearm_heartbeat(self, now: int) -> None:
        s, interval = self.state, self.config.heartbeat_interval
        due = [
            p.last_sent + interval
            for peer, p in s.progress.items()
            if peer not in self._heartbeat_due
        ]
        s.heartbeat_deadline = min([now + interval, *due])

    def settled(self) -> bool:
        """Every follower holds the whole log, all of it committed in this term: nothing is
        left for heartbeats to carry (the quiesce message itself carries the commit index)."""
        s = self.state
        return (
            s.commit_index == s.last_index
            and s.term_at(s.last_index) == s.current_term
            and all(
                p.match == s.last_index and p.mode is Replication.REPLICATE
                for p in s.progress.values()
            )
        )

    def wake(self, now: int) -> None:
        """Leave quiescence: a leader heartbeats again at once; a follower's timer is reset
        by the message that woke it."""
        s = self.state
        if not s.quiescent:
            return
        s.quiescent = False
        if s.role is Role.LEADER:
            s.heartbeat_deadline = now
            s.quorum_check_deadline = now + self.config.election_timeout_min

    def clamp_timers(self, now: int) -> None:
        """Arm the election timer on the first tick, and pull back any time set by an instance
        whose clock ran ahead of this one's: deadlines are absolute times, stored by whichever
        function instance stepped the server last, and a future `leader_contact` would keep
        the leader lease (and so votes) refused for as long as the skew."""
        s, c = self.state, self.config
        longest = c.election_timeout_max + (c.quiesce_interval if s.quiescent else 0)
        if s.election_deadline == 0 or s.election_deadline > now + longest:
            self.reset_election_timer(now)
        if s.leader_contact > now:
            s.leader_contact = now
        longest = c.quiesce_interval if s.quiescent else c.heartbeat_interval
        if s.heartbeat_deadline > now + longest:
            s.heartbeat_deadline = now
        longest = (c.quiesce_interval if s.quiescent else 0) + c.election_timeout_min
        if s.quorum_check_deadline > now + longest:
            s.quorum_check_deadline = now + c.election_timeout_min
        for p in s.progress.values():
            if p.last_sent > now:
                p.last_sent = now

    def ready(self) -> Ready:
        """Flush replication and hand over everything produced since the last call."""
        if self._to_replicate:
            for peer in sorted(self._to_replicate):
                self.send_append_entries(peer)
            self._to_replicate.clear()
            self._heartbeat_due.clear()
        s = self.state
        if s.role is Role.LEADER:
            self.maybe_advance_commit()
            self.index_waiting_reads()
            if s.server_id not in s.servers and s.config_index <= s.commit_index:
                # Thesis §4.2.2: a leader removed from the configuration steps down once the
                # change is committed.
                self.become_follower(s.current_term, self._now)
        hard, stored = self._hard_state(), self._hard
        out = Ready(
            messages=tuple(self._out),
            changed=self._log_changed_from is not None
            or bool(self._chunks)
            or self._fingerprint() != self._mark,
            hard_state=None if hard == stored else HardState(*hard),
            log_changed_from=self._log_changed_from,
            snapshot_chunks=tuple(self._chunks),
            installed=self._installed,
            committed=(stored[2] + 1, hard[2]) if hard[2] > stored[2] else None,
            reads=tuple(self._confirmed),
        )
        self._confirmed = []
        self._out = []
        self._log_changed_from = None
        self._chunks = []
        self._installed = None
        return out

    def applied_to(self, index: int) -> None:
        """The host applied the committed entries up to `index` to its state machine."""
        self.state.last_applied = index

    def persisted(self) -> None:
        """The host stored the state as it is now: later Readies report changes since."""
        self._mark = self._fingerprint()
        self._hard = self._hard_state()

    def _hard_state(self) -> tuple[int, ServerId, int]:
        """Term, vote and commit index as a plain tuple: compared on every `ready`, so a
        `HardState` is built only when it changed."""
        s = self.state
        return (s.current_term, s.voted_for, s.commit_index)

    def _fingerprint(self) -> tuple[Any, ...]:
        """Everything the host stores, as one comparable value: the log is covered by
        `_log_changed_from`, so only its bounds are here."""
        s = self.state
        return (
            s.current_term,
            s.voted_for,
            s.commit_index,
            s.last_applied,
            s.role,
            s.leader_id,
            s.election_deadline,
            s.heartbeat_deadline,
            s.quorum_check_deadline,
            s.leader_contact,
            s.rng,
            s.log_start,
            s.log_start_term,
            s.quiescent,
            s.read_round,
            tuple(s.reads),
            s.transfer_to,
            s.transfer_deadline,
            s.servers,
            frozenset(s.votes),
            tuple((peer, *p.key()) for peer, p in s.progress.items()),
            None if s.incoming is None else tuple(s.incoming.to_json()[:4]),
        )

    # ----------------------------------------------------------------- terms and roles

    def adopts_term(self, m: Message, now: int) -> bool:
        """Whether a higher term in `m` makes this server adopt it.

        Pre-vote requests carry a term the candidate has not started, and a granted pre-vote
        echoes it back: neither changes anyone's term (thesis §9.6). A real vote request that
        arrives while this server has heard from a current leader within the minimum
        election timeout is ignored entirely (thesis §4.2.3), so that a server that was
        partitioned away cannot depose a healthy leader.
        """
        if isinstance(m, RequestVote):
            return not m.pre_vote and (m.transfer or not self.in_leader_lease(now))
        if isinstance(m, RequestVoteResponse) and m.pre_vote:
            return not m.granted
        return True

    def in_leader_lease(self, now: int) -> bool:
        s = self.state
        if not self.config.check_quorum or not s.leader_id:
            return False
        if s.role is Role.LEADER:
            return True
        if s.quiescent and now < s.election_deadline:
            return True  # the leader said it would stay quiet this long
        return now - s.leader_contact < self.config.election_timeout_min

    def become_follower(self, term: int, now: int, leader: ServerId = "") -> None:
        s = self.state
        if term > s.current_term:
            s.current_term = term
            s.voted_for = ""
        if s.role is not Role.FOLLOWER:
            self.reset_election_timer(now)
        s.role = Role.FOLLOWER
        s.leader_id = leader
        s.votes = set()
        s.quiescent = False
        self.clear_leader_state()

    def become_pre_candidate(self, now: int) -> None:
        """Thesis §9.6: ask whether an election could be won before disrupting anyone."""
        s = self.state
        s.role = Role.PRE_CANDIDATE
        s.leader_id = ""
        s.votes = {s.server_id}
        self.clear_leader_state()
        self.reset_election_timer(now)
        if len(s.votes) >= s.quorum:
            self.become_candidate(now)
            return
        self.broadcast_vote_request(s.current_term + 1, pre_vote=True)

    def become_candidate(self, now: int, transfer: bool = False) -> None:
        """§5.2: increment currentTerm, vote for self, reset the timer, request votes."""
        s = self.state
        s.current_term += 1
        s.voted_for = s.server_id
        s.role = Role.CANDIDATE
        s.leader_id = ""
        s.votes = {s.server_id}
        self.clear_leader_state()
        self.reset_election_timer(now)
        if len(s.votes) >= s.quorum:
            self.become_leader(now)
            return
        self.broadcast_vote_request(s.current_term, pre_vote=False, transfer=transfer)

    def become_leader(self, now: int) -> None:
        s = self.state
        s.role = Role.LEADER
        s.leader_id = s.server_id
        s.votes = set()
        s.quiescent = False
        # Figure 2: nextIndex starts just past the leader's log, matchIndex at 0.
        s.progress = {peer: Progress(next=s.last_index + 1) for peer in s.peers}
        s.quorum_check_deadline = now + self.config.election_timeout_min
        s.heartbeat_deadline = now + self.config.heartbeat_interval
        # §5.4.2 and §8: a leader cannot count replicas of earlier terms' entries, so it
        # commits a no-op of its own term, which commits everything before it.
        self.append(Entry(term=s.current_term))
        self._to_replicate.update(s.peers)

    def clear_leader_state(self) -> None:
        # Replication scheduled earlier in this batch is void once this server stops leading,
        # and so are reads it had not confirmed: their clients ask the new leader.
        self._to_replicate.clear()
        self._heartbeat_due.clear()
        s = self.state
        s.progress = {}
        s.transfer_to = ""
        for read in s.reads:
            if read.reply_to:
                self.send(read.reply_to, ClientResponse(read.client_id, read.seq,
                                                        ClientStatus.NOT_LEADER))  # fmt: skip
        s.reads = []
        s.read_round = 0

    def reset_election_timer(self, now: int) -> None:
        s = self.state
        s.rng, value = next_random(s.rng)
        spread = self.config.election_timeout_max - self.config.election_timeout_min
        s.election_deadline = now + self.config.election_timeout_min + value % spread

    def check_quorum(self, now: int) -> bool:
        """Thesis §6.2: a leader that has not heard from a majority within an election
        timeout steps down, so clients can find the real leader."""
        s = self.state
        active = sum(1 for p in s.progress.values() if p.recent_active)
        if active + (s.server_id in s.servers) < s.quorum:
            self.become_follower(s.current_term, now)
            return False
        for p in s.progress.values():
            p.recent_active = False
        # A quiescent leader hears from followers only after its next check round.
        start = s.heartbeat_deadline if s.quiescent else now
        s.quorum_check_deadline = start + self.config.election_timeout_min
        return True

    # ----------------------------------------------------------------- elections

    def broadcast_vote_request(self, term: int, pre_vote: bool, transfer: bool = False) -> None:
        s = self.state
        for peer in s.peers:
            self.send(
                peer,
                RequestVote(term, s.server_id, s.last_index, s.last_term, pre_vote, transfer),
            )

    def log_is_up_to_date(self, last_log_term: int, last_log_index: int) -> bool:
        """§5.4.1: compare the terms of the last entries first; if equal, the longer log."""
        s = self.state
        if last_log_term != s.last_term:
            return last_log_term > s.last_term
        return last_log_index >= s.last_index

    def can_vote_for(self, m: RequestVote, now: int) -> bool:
        s = self.state
        if m.pre_vote and m.term > s.current_term:
            return not self.in_leader_lease(now)
        return s.voted_for in ("", m.candidate_id) and (
            s.voted_for == m.candidate_id or not s.leader_id
        )

    def on_request_vote(self, sender: ServerId, m: RequestVote, now: int) -> None:
        s = self.state
        if s.role is Role.LEADER:
            self.wake(now)  # a follower's timer ran out: it may have missed the quiesce
        if m.term < s.current_term or (m.term > s.current_term and not m.pre_vote):
            # Stale, or a higher-term vote ignored under the leader lease.
            granted = False
        else:
            granted = self.can_vote_for(m, now) and self.log_is_up_to_date(
                m.last_log_term, m.last_log_index
            )
        if granted and not m.pre_vote:
            s.voted_for = m.candidate_id
            # Figure 2: granting a vote resets the election timer.
            self.reset_election_timer(now)
        term = m.term if granted and m.pre_vote else s.current_term
        self.send(sender, RequestVoteResponse(term, s.server_id, granted, m.pre_vote))

    def on_request_vote_response(self, sender: ServerId, m: RequestVoteResponse, now: int) -> None:
        s = self.state
        if not m.granted:
            return
        if m.pre_vote:
            if s.role is not Role.PRE_CANDIDATE or m.term != s.current_term + 1:
                return
            self.count_vote(sender)
            if len(s.votes) >= s.quorum:
                self.become_candidate(now)
            return
        if s.role is not Role.CANDIDATE or m.term != s.current_term:
            return
        self.count_vote(sender)
        if len(s.votes) >= s.quorum:
            self.become_leader(now)

    def count_vote(self, voter: ServerId) -> None:
        # A set of voter ids: a duplicated response never counts twice.
        self.state.votes.add(voter)

    # ----------------------------------------------------------------- log replication

    def hear_from_leader(self, m: AppendEntries | InstallSnapshot, now: int) -> None:
        """A message from the leader of the current term: follow it and reset the timer."""
        s = self.state
        if s.role is not Role.FOLLOWER:
            # §5.2: a candidate that hears from the leader of its term returns to follower.
            self.become_follower(m.term, now, m.leader_id)
        s.leader_id = m.leader_id
        s.leader_contact = now
        s.quiescent = False
        self.reset_election_timer(now)

    def on_append_entries(self, sender: ServerId, m: AppendEntries, now: int) -> None:
        s = self.state
        if m.term < s.current_term:
            # Figure 2, receiver rule 1.
            self.send(sender, AppendEntriesResponse(s.current_term, s.server_id, False))
            return
        # A quiescent follower stays so for a message of its leader that brings nothing new:
        # a copy delivered late, sent before the group quiesced (waking on it would let its
        # timer run out while the leader stays silent, and depose it).
        same_leader = s.quiescent and m.term == s.current_term and m.leader_id == s.leader_id
        quiet_at = (s.last_index, s.commit_index) if same_leader else None
        self.hear_from_leader(m, now)
        prev_index, prev_term, entries = m.prev_log_index, m.prev_log_term, m.entries
        if prev_index < s.log_start:
            # The entries up to log_start are compacted: they were committed, so they match
            # the leader's (Log Matching); skip the ones this message repeats.
            skip = min(len(entries), s.log_start - prev_index)
            if skip < s.log_start - prev_index:
                # Everything in the message is already in the snapshot.
                self.accept_append(sender, m, s.log_start)
                return
            prev_index, prev_term, entries = s.log_start, s.log_start_term, entries[skip:]
        if prev_index > s.last_index:
            # Receiver rule 2: we lack prevLogIndex entirely.
            self.reject_append(sender, m, s.last_index + 1, 0)
            return
        if s.term_at(prev_index) != prev_term:
            conflict_term = s.term_at(prev_index)
            self.reject_append(
                sender, m, self.first_index_of_term(conflict_term, prev_index), conflict_term
            )
            return
        if not self.merge_entries(prev_index, entries):
            return
        self.accept_append(sender, m, prev_index + len(entries))
        settled = s.commit_index == m.leader_commit == s.last_index == prev_index + len(entries)
        if (m.quiesce and settled) or quiet_at == (s.last_index, s.commit_index):
            # Settled with the leader: wait for its next check round, not a heartbeat.
            s.quiescent = True
            s.election_deadline += self.config.quiesce_interval

    def accept_append(self, sender: ServerId, m: AppendEntries, last_new: int) -> None:
        s = self.state
        if m.leader_commit > s.commit_index:
            # Receiver rule 5: the index of the last *new* entry, not our last index, since
            # entries past it have not been checked against the leader's log.
            s.commit_index = max(s.commit_index, min(m.leader_commit, last_new))
            self.drop_stale_incoming()
        self.send(
            sender,
            AppendEntriesResponse(
                s.current_term, s.server_id, True, last_new, read_round=m.read_round
            ),
        )

    def merge_entries(self, prev_index: int, entries: tuple[Entry, ...]) -> bool:
        """Receiver rules 3 and 4: skip entries we already have; truncate only at a real
        conflict (same index, different term), so a stale or reordered AppendEntries never
        removes entries that match. False if the message contradicts a committed entry."""
        s = self.state
        for offset, entry in enumerate(entries):
            index = prev_index + 1 + offset
            if index <= s.last_index:
                if s.term_at(index) == entry.term:
                    continue
                if index <= s.commit_index:
                    # Log Matching makes this impossible for a correct leader; refuse to
                    # destroy committed entries (and do not acknowledge them) rather than
                    # trust the message.
                    return False
                self.truncate(index)
            for new_entry in entries[offset:]:
                self.append(new_entry)
            return True
        return True

    def first_index_of_term(self, term: int, index: int) -> int:
        """The first index of `term`'s run, which holds `index` (terms never decrease); no
        earlier than the first index still in the log."""
        s = self.state
        if index <= s.log_start:
            return index
        position = bisect_left(s.log, term, hi=index - s.log_start, key=entry_term)
        return s.log_start + position + 1

    def reject_append(
        self, leader: ServerId, m: AppendEntries, conflict_index: int, conflict_term: int
    ) -> None:
        # A rejection still acknowledges the leader's term, so it confirms its reads too.
        s = self.state
        self.send(
            leader,
            AppendEntriesResponse(
                s.current_term, s.server_id, False, 0, conflict_index, conflict_term, m.read_round
            ),
        )

    def on_append_entries_response(self, sender: ServerId, m: AppendEntriesResponse) -> None:
        s = self.state
        if s.role is not Role.LEADER or m.term != s.current_term:
            return
        p = s.progress[sender]
        p.recent_active = True
        if p.mode is not Replication.SNAPSHOT:
            # While a snapshot is sent, `inflight` counts its chunk, which this does not answer
            # (a rejection of an AppendEntries pipelined before would have it sent again).
            p.inflight = max(0, p.inflight - 1)
        if m.read_round > p.read_acked:
            p.read_acked = m.read_round
            self.confirm_reads()
        if not m.success or m.match_index < s.last_index:
            self.wake(self._now)
        if m.success:
            if m.match_index > s.last_index:
                # Only a newer instance of this leader can have sent entries past our log
                # (two function instances of one server); that instance's save wins.
                return
            if m.match_index > p.match:
                p.match = m.match_index
            if sender == s.transfer_to and p.match == s.last_index:
                self.send(sender, TimeoutNow(s.current_term, s.server_id))
            p.next = max(p.next, p.match + 1)
            if p.mode is Replication.SNAPSHOT and p.match >= p.snapshot_index:
                p.mode, p.inflight = Replication.PROBE, 0
            if p.mode is Replication.PROBE and p.next > s.log_start:
                p.mode = Replication.REPLICATE
            self.maybe_advance_commit()
        elif p.mode is not Replication.SNAPSHOT:
            # Even a rejection that looks stale is acted on (never below matchIndex + 1): the
            # response does not say which AppendEntries it answers, and ignoring a real one
            # after a lost message would leave the follower behind for good.
            p.next = self.next_index_after_conflict(m, p.match)
            p.mode = Replication.PROBE
            p.inflight = 0
        if p.next <= s.last_index or not m.success:
            self._to_replicate.add(sender)

    def next_index_after_conflict(self, m: AppendEntriesResponse, match: int) -> int:
        """Fast backtracking: skip the follower's whole conflicting term, or jump to the
        leader's last entry of that term if it has one."""
        s = self.state
        target = m.conflict_index
        if m.conflict_term:
            # Terms never decrease along a log, so a binary search finds the last entry of
            # conflict_term (or of the last term before it).
            position = bisect_right(s.log, m.conflict_term, key=entry_term)
            if position > 0 and s.log[position - 1].term == m.conflict_term:
                target = s.log_start + position + 1
        return max(match + 1, min(target, s.last_index + 1))

    def maybe_advance_commit(self) -> None:
        """§5.3/§5.4.2: commit the highest index stored on a majority, but only if it is from
        the current term; earlier terms' entries commit indirectly (Figure 8)."""
        s = self.state
        if s.role is not Role.LEADER or s.commit_index >= s.last_index:
            return  # nothing left to commit: no follower holds more than the leader
        own = [s.last_index] if s.server_id in s.servers else []
        matches = sorted([*own, *(p.match for p in s.progress.values())], reverse=True)
        candidate = matches[s.quorum - 1]
        if candidate > s.commit_index and s.term_at(candidate) == s.current_term:
            s.commit_index = candidate

    def send_append_entries(self, peer: ServerId) -> None:
        """Send one or more AppendEntries to `peer`: one at a time while probing, up to
        `max_inflight_messages` pipelined once the follower is known to match; a snapshot
        chunk instead when the entries it needs are compacted away."""
        s = self.state
        p = s.progress[peer]
        if p.mode is Replication.SNAPSHOT or p.next <= s.log_start:
            self.send_snapshot_chunk(peer, p)
            return
        probing = p.mode is Replication.PROBE
        cap = 1 if probing else self.config.max_inflight_messages
        must_send = peer in self._heartbeat_due
        while p.inflight < cap or must_send:
            must_send = False
            prev = p.next - 1
            entries = self.entries_from(prev + 1)
            self.send(
                peer,
                AppendEntries(
                    s.current_term,
                    s.server_id,
                    prev,
                    s.term_at(prev),
                    entries,
                    s.commit_index,
                    s.quiescent,
                    s.read_round,
                ),
            )
            p.inflight += 1
            p.last_sent = self._now
            if not entries or probing:
                return
            p.next = prev + len(entries) + 1
            if p.next > s.last_index:
                return

    def send_snapshot_chunk(self, peer: ServerId, p: Progress) -> None:
        """Thesis §5.3: the follower needs entries this leader has compacted, so it gets the
        latest snapshot instead, one chunk at a time (each chunk acknowledged once stored)."""
        s = self.state
        snapshot = s.snapshot
        assert snapshot is not None and snapshot.index >= s.log_start, "compacted w/o snapshot"
        if p.mode is not Replication.SNAPSHOT or p.snapshot_index != snapshot.index:
            p.mode = Replication.SNAPSHOT
            p.snapshot_index, p.snapshot_offset = snapshot.index, 0
        elif p.inflight and p.last_sent + self.config.heartbeat_interval > self._now:
            return  # a chunk is in flight; it is resent if unanswered for a heartbeat interval
        start = p.snapshot_offset
        end = min(len(snapshot.data), start + self.config.snapshot_chunk_chars)
        self.send(
            peer,
            InstallSnapshot(
                s.current_term,
                s.server_id,
                snapshot.index,
                snapshot.term,
                snapshot.servers,
                start,
                snapshot.data[start:end],
                end == len(snapshot.data),
            ),
        )
        p.inflight = 1
        p.last_sent = self._now

    def on_install_snapshot_response(self, sender: ServerId, m: InstallSnapshotResponse) -> None:
        s = self.state
        if s.role is not Role.LEADER or m.term != s.current_term:
            return
        if m.last_index > s.last_index:
            # As for AppendEntries: only a newer instance of this leader sent that snapshot.
            return
        p = s.progress[sender]
        p.recent_active = True
        if m.done:
            # The follower holds everything up to last_index (installed, or already committed).
            p.match = max(p.match, m.last_index)
            p.next = max(p.next, p.match + 1)
            if p.mode is Replication.SNAPSHOT:
                p.mode, p.inflight = Replication.PROBE, 0
            self.maybe_advance_commit()
            self._to_replicate.add(sender)
        elif p.mode is Replication.SNAPSHOT and m.last_index == p.snapshot_index:
            if m.next_offset == p.snapshot_offset and p.inflight:
                return  # a repeated answer for the chunk in flight
            # Where the follower says it is: normally further on; back at 0 if it lost the
            # transfer (a delayed chunk of another snapshot replaced it). Either way it
            # converges, since the follower stores each chunk before answering.
            p.snapshot_offset = m.next_offset
            p.inflight = 0
            self._to_replicate.add(sender)

    def on_install_snapshot(self, sender: ServerId, m: InstallSnapshot, now: int) -> None:
        s = self.state
        if m.term < s.current_term:
            self.send(sender, InstallSnapshotResponse(s.current_term, s.server_id, 0, 0, False))
            return
        self.hear_from_leader(m, now)
        if m.last_index <= s.commit_index:
            # A snapshot older than what this server has committed (Log Matching: the same
            # entries): nothing to install.
            self.drop_stale_incoming()
            self.answer_snapshot(sender, m.last_index, 0, done=True)
            return
        incoming = s.incoming
        key = (m.term, m.last_index, m.last_term)
        # A first chunk starts a transfer, unless one of a newer snapshot (a later term, or a
        # later index) is under way: then it is a delayed chunk of an older snapshot.
        if m.offset == 0 and (incoming is None or incoming.key < key):
            incoming = s.incoming = IncomingSnapshot(*key, offset=0, servers=m.servers)
        if incoming is None or incoming.key != key or m.offset != incoming.offset:
            # A stale, repeated or early chunk: say where this server is.
            at = incoming.offset if incoming is not None and incoming.key == key else 0
            self.answer_snapshot(sender, m.last_index, at, done=False)
            return
        self._chunks.append(SnapshotChunk(m.last_index, m.last_term, m.offset, m.data))
        incoming.data += m.data
        incoming.offset += len(m.data)
        if m.done:
            self.install_snapshot(incoming)
        self.answer_snapshot(sender, m.last_index, incoming.offset, done=m.done)

    def answer_snapshot(self, leader: ServerId, index: int, offset: int, done: bool) -> None:
        s = self.state
        self.send(leader, InstallSnapshotResponse(s.current_term, s.server_id, index, offset, done))

    def drop_stale_incoming(self) -> None:
        s = self.state
        if s.incoming is not None and s.incoming.index <= s.commit_index:
            s.incoming = None

    def install_snapshot(self, incoming: IncomingSnapshot) -> None:
        """§7: keep the log after the snapshot if it agrees at the snapshot's last entry,
        otherwise discard the whole log; the snapshot replaces the applied state."""
        s = self.state
        index, term = incoming.index, incoming.last_term
        keep_tail = s.log_start <= index <= s.last_index and s.term_at(index) == term
        old_last = s.last_index
        s.log = s.log[index - s.log_start :] if keep_tail else []
        s.log_start, s.log_start_term = index, term
        if not keep_tail and old_last > index:
            self.mark_log_changed(index + 1)
        s.commit_index = max(s.commit_index, index)
        s.last_applied = max(s.last_applied, index)
        s.base_servers = incoming.servers
        self.configure(s.servers_at(s.last_index))
        s.incoming = None
        s.snapshot = Snapshot(index, term, incoming.data, incoming.servers)
        self._installed = s.snapshot

    def compact(self, snapshot: Snapshot, keep: int = 0) -> None:
        """The host saved `snapshot` of the applied state: entries up to its index, less the
        last `keep` (for followers that are only a little behind), leave the log."""
        s = self.state
        if snapshot.index > s.last_applied:
            raise ValueError(f"snapshot at {snapshot.index} is past last_applied {s.last_applied}")
        s.snapshot = snapshot
        start = max(s.log_start, snapshot.index - keep)
        if start > s.log_start:
            s.base_servers = s.servers_at(start)
            s.log_start_term = s.term_at(start)
            del s.log[: start - s.log_start]
            s.log_start = start

    def entries_from(self, index: int) -> tuple[Entry, ...]:
        """Entries from `index` on, bounded in count and bytes (at least one if any)."""
        s = self.state
        end = min(s.last_index, index - 1 + self.config.max_entries_per_message)
        batch: list[Entry] = []
        size = 0
        for entry in s.log[index - s.log_start - 1 : end - s.log_start]:
            size += entry.size
            if batch and size > self.config.max_bytes_per_message:
                break
            batch.append(entry)
        return tuple(batch)

    # ----------------------------------------------------------------- clients

    def on_client_request(self, m: ClientRequest) -> None:
        s = self.state
        if m.read_only and s.role is Role.LEADER:
            self.on_read(m)
            return
        if s.role is not Role.LEADER:
            if s.leader_id and m.hops < MAX_FORWARD_HOPS:
                self.send(s.leader_id, replace(m, hops=m.hops + 1))
            elif m.reply_to:
                self.reply(m, ClientStatus.NOT_LEADER)
            return
        if self.overloaded() or s.transfer_to:
            # Thesis §3.10: no proposals while handing over, so the target stays caught up.
            if m.reply_to:
                self.reply(m, ClientStatus.OVERLOADED)
            return
        self.wake(self._now)
        self.append(
            Entry(s.current_term, m.client_id, m.seq, m.data, m.reply_to, m.issued_at, self._now)
        )
        self._to_replicate.update(s.peers)

    def on_change_membership(self, m: ChangeMembership) -> None:
        """Thesis §4.1: one server at a time, and only once the previous change is committed
        and this leader has committed an entry of its own term (the fix for the bug found in
        single-server changes, thesis errata and §4.1 of the Raft dissertation's updates).
        Requests that do not qualify are dropped; the operator sees the configuration and
        asks again."""
        s = self.state
        if s.role is not Role.LEADER or s.transfer_to:
            return
        if s.config_index > s.commit_index or s.term_at(s.commit_index) != s.current_term:
            return
        if m.add == (m.server in s.servers):
            return  # already so
        servers = (*s.servers, m.server) if m.add else tuple(x for x in s.servers if x != m.server)
        if not servers:
            return
        self.wake(self._now)
        self.append(Entry(term=s.current_term, servers=servers))
        self._to_replicate.update(s.peers)

    def on_transfer_leadership(self, m: TransferLeadership, now: int) -> None:
        """Thesis §3.10: bring the target up to date, then tell it to campaign at once; give
        up after an election timeout (the target may be down or partitioned)."""
        s = self.state
        if s.role is not Role.LEADER or m.target not in s.peers:
            return
        self.wake(now)
        s.transfer_to = m.target
        s.transfer_deadline = now + self.config.election_timeout_max
        if s.progress[m.target].match == s.last_index:
            self.send(m.target, TimeoutNow(s.current_term, s.server_id))
        else:
            self._to_replicate.add(m.target)

    def on_timeout_now(self, m: TimeoutNow, now: int) -> None:
        s = self.state
        if m.term == s.current_term and m.leader_id == s.leader_id and s.role is Role.FOLLOWER:
            self.become_candidate(now, transfer=True)

    def on_read(self, m: ClientRequest) -> None:
        """ReadIndex (thesis §6.4): note the commit index, confirm leadership with a round of
        heartbeats, and answer once a majority acknowledged a round at least that new."""
        s = self.state
        if len(s.reads) >= MAX_PENDING_READS:
            if m.reply_to:
                self.reply(m, ClientStatus.OVERLOADED)
            return
        self.wake(self._now)
        s.read_round += 1
        index = s.commit_index if s.term_at(s.commit_index) == s.current_term else 0
        s.reads.append(PendingRead(m.client_id, m.seq, m.data, m.reply_to, index, s.read_round))
        for peer in s.peers:
            s.progress[peer].inflight = 0
            self._heartbeat_due.add(peer)
            self._to_replicate.add(peer)
        self.confirm_reads()

    def index_waiting_reads(self) -> None:
        """Thesis §6.4: once the leader has committed an entry of its own term its commit
        index is current; reads that waited for that read at least it."""
        s = self.state
        waiting = any(read.index == 0 for read in s.reads)
        if waiting and s.term_at(s.commit_index) == s.current_term:
            s.reads = [r if r.index else replace(r, index=s.commit_index) for r in s.reads]
            self.confirm_reads()

    def confirm_reads(self) -> None:
        """Hand over the reads whose round a majority (this leader included) acknowledged."""
        s = self.state
        own = [s.read_round] if s.server_id in s.servers else []
        acked = sorted([*own, *(p.read_acked for p in s.progress.values())], reverse=True)
        confirmed = acked[s.quorum - 1]
        ready = [r for r in s.reads if r.round <= confirmed and r.index]
        if ready:
            self._confirmed.extend(ready)
            s.reads = [r for r in s.reads if not (r.round <= confirmed and r.index)]

    def overloaded(self) -> bool:
        """A leader refuses proposals once too many entries wait to commit, so a load past
        capacity is turned away at once instead of growing the log without bound."""
        s = self.state
        return s.role is Role.LEADER and (
            s.last_index - s.commit_index >= self.config.max_uncommitted_entries
        )

    def reply(self, m: ClientRequest, status: ClientStatus) -> None:
        s = self.state
        self.send(
            m.reply_to,
            ClientResponse(
                m.client_id, m.seq, status, term=s.current_term, leader_hint=s.leader_id
            ),
        )

    # ----------------------------------------------------------------- helpers

    def append(self, entry: Entry) -> None:
        s = self.state
        s.log.append(entry)
        self.mark_log_changed(s.last_index)
        if entry.servers:
            # Thesis §4.1: a server uses the latest configuration in its log, committed or not.
            self.configure(entry.servers)

    def truncate(self, index: int) -> None:
        s = self.state
        removed_config = any(e.servers for e in s.log[index - s.log_start - 1 :])
        del s.log[index - s.log_start - 1 :]
        self.mark_log_changed(index)
        if removed_config:
            self.configure(s.servers_at(s.last_index))

    def configure(self, servers: tuple[ServerId, ...]) -> None:
        """Adopt `servers`: a leader starts or stops replicating to the servers that come or go."""
        s = self.state
        s.servers = servers
        # Votes count only from the configuration in use (thesis §4.1).
        s.votes = {voter for voter in s.votes if voter in servers}
        if s.role is not Role.LEADER:
            return
        s.progress = {
            peer: s.progress.get(peer) or Progress(next=s.last_index + 1) for peer in s.peers
        }
        self._to_replicate &= set(s.peers)
        self._heartbeat_due &= set(s.peers)
        if s.transfer_to not in s.peers:
            s.transfer_to = ""

    def mark_log_changed(self, index: int) -> None:
        if self._log_changed_from is None or index < self._log_changed_from:
            self._log_changed_from = index

    def send(self, to: str, message: Message) -> None:
        self._out.append(Envelope(self.state.server_id, to, message))
