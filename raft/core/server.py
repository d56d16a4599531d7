"""The Raft server as a pure state machine (extended Raft paper, Figure 2).

`RaftServer` wraps one server's `ServerState`. Hosts feed it events with `step` (a message)
and `tick` (time passing), then call `ready()` to collect what to persist and send. The host
must persist the state before sending the messages (Figure 2: "respond to RPCs only after
updating stable storage"). There is no I/O, no clock and no global randomness here: `now`
comes with each event and the randomized election timeout comes from `state.rng`.

The methods are named after the rules they implement so that variants (the tester's catalogue
of known-buggy servers, or a user's own) can override one rule at a time.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace

from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    Entry,
    Envelope,
    Message,
    RequestVote,
    RequestVoteResponse,
    ServerId,
)
from raft.core.rng import next_random
from raft.core.state import Config, Role, ServerState


def entry_term(entry: Entry) -> int:
    return entry.term


# A follower forwards a client request to the leader it knows at most this many times, so a
# stale leader hint cannot bounce a request around forever.
MAX_FORWARD_HOPS = 2


@dataclass(frozen=True, slots=True)
class Ready:
    """The output of a batch of steps.

    `log_changed_from` is the lowest log index appended or overwritten since the last Ready
    (None if the log did not change): entries from there on must be rewritten and any stored
    entries past the new end deleted.
    """

    messages: tuple[Envelope, ...]
    log_changed_from: int | None


class RaftServer:
    def __init__(self, state: ServerState, config: Config) -> None:
        self.state = state
        self.config = config
        self._out: list[Envelope] = []
        self._log_changed_from: int | None = None
        self._to_replicate: set[ServerId] = set()
        self._heartbeat_due: set[ServerId] = set()

    # ----------------------------------------------------------------- events

    def step(self, envelope: Envelope, now: int) -> None:
        """Handle one incoming message."""
        m = envelope.message
        if isinstance(m, ClientRequest):
            self.on_client_request(m)
            return
        if isinstance(m, ClientResponse):
            return
        sender = envelope.sender
        if sender not in self.state.servers or sender == self.state.server_id:
            return
        if m.term > self.state.current_term and self.adopts_term(m, now):
            # §5.1: a server that sees a higher term updates its term and becomes a follower.
            leader = m.leader_id if isinstance(m, AppendEntries) else ""
            self.become_follower(m.term, now, leader)
        if isinstance(m, RequestVote):
            self.on_request_vote(sender, m, now)
        elif isinstance(m, RequestVoteResponse):
            self.on_request_vote_response(sender, m, now)
        elif isinstance(m, AppendEntries):
            self.on_append_entries(sender, m, now)
        else:
            self.on_append_entries_response(sender, m)

    def tick(self, now: int) -> None:
        """Time passes: fire whichever of this server's deadlines is due."""
        s = self.state
        self.clamp_timers(now)
        if s.role is Role.LEADER:
            quorum_due = self.config.check_quorum and now >= s.quorum_check_deadline
            if quorum_due and not self.check_quorum(now):
                return
            if now >= s.heartbeat_deadline:
                s.heartbeat_deadline = now + self.config.heartbeat_interval
                for peer in s.peers:
                    if peer in s.replicated:
                        # An AppendEntries went out this period; it was the heartbeat.
                        continue
                    s.inflight[peer] = 0
                    self._heartbeat_due.add(peer)
                    self._to_replicate.add(peer)
                s.replicated = set()
        elif now >= s.election_deadline:
            if self.config.pre_vote:
                self.become_pre_candidate(now)
            else:
                self.become_candidate(now)

    def clamp_timers(self, now: int) -> None:
        """Arm the election timer on the first tick, and pull back any time set by an instance
        whose clock ran ahead of this one's: deadlines are absolute times, stored by whichever
        function instance stepped the server last, and a future `leader_contact` would keep
        the leader lease (and so votes) refused for as long as the skew."""
        s, c = self.state, self.config
        if s.election_deadline == 0 or s.election_deadline > now + c.election_timeout_max:
            self.reset_election_timer(now)
        if s.leader_contact > now:
            s.leader_contact = now
        if s.heartbeat_deadline > now + c.heartbeat_interval:
            s.heartbeat_deadline = now
        if s.quorum_check_deadline > now + c.election_timeout_min:
            s.quorum_check_deadline = now + c.election_timeout_min

    def ready(self) -> Ready:
        """Flush replication and hand over everything produced since the last call."""
        if self._to_replicate:
            for peer in sorted(self._to_replicate):
                self.send_append_entries(peer)
            self._to_replicate.clear()
            self._heartbeat_due.clear()
        if self.state.role is Role.LEADER:
            self.maybe_advance_commit()
        out = Ready(messages=tuple(self._out), log_changed_from=self._log_changed_from)
        self._out = []
        self._log_changed_from = None
        return out

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
            return not m.pre_vote and not self.in_leader_lease(now)
        if isinstance(m, RequestVoteResponse) and m.pre_vote:
            return not m.granted
        return True

    def in_leader_lease(self, now: int) -> bool:
        s = self.state
        if not self.config.check_quorum or not s.leader_id:
            return False
        if s.role is Role.LEADER:
            return True
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

    def become_candidate(self, now: int) -> None:
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
        self.broadcast_vote_request(s.current_term, pre_vote=False)

    def become_leader(self, now: int) -> None:
        s = self.state
        s.role = Role.LEADER
        s.leader_id = s.server_id
        s.votes = set()
        for peer in s.peers:
            # Figure 2: nextIndex starts just past the leader's log, matchIndex at 0.
            s.next_index[peer] = s.last_index + 1
            s.match_index[peer] = 0
            s.inflight[peer] = 0
        s.probing = set(s.peers)
        s.recent_active = set()
        s.quorum_check_deadline = now + self.config.election_timeout_min
        s.heartbeat_deadline = now + self.config.heartbeat_interval
        # §5.4.2 and §8: a leader cannot count replicas of earlier terms' entries, so it
        # commits a no-op of its own term, which commits everything before it.
        self.append(Entry(term=s.current_term))
        self._to_replicate.update(s.peers)

    def clear_leader_state(self) -> None:
        # Replication scheduled earlier in this batch is void once this server stops leading.
        self._to_replicate.clear()
        self._heartbeat_due.clear()
        s = self.state
        s.next_index.clear()
        s.match_index.clear()
        s.inflight.clear()
        s.probing.clear()
        s.recent_active.clear()
        s.replicated.clear()

    def reset_election_timer(self, now: int) -> None:
        s = self.state
        s.rng, value = next_random(s.rng)
        spread = self.config.election_timeout_max - self.config.election_timeout_min
        s.election_deadline = now + self.config.election_timeout_min + value % spread

    def check_quorum(self, now: int) -> bool:
        """Thesis §6.2: a leader that has not heard from a majority within an election
        timeout steps down, so clients can find the real leader."""
        s = self.state
        if len(s.recent_active) + 1 < s.quorum:
            self.become_follower(s.current_term, now)
            return False
        s.recent_active = set()
        s.quorum_check_deadline = now + self.config.election_timeout_min
        return True

    # ----------------------------------------------------------------- elections

    def broadcast_vote_request(self, term: int, pre_vote: bool) -> None:
        s = self.state
        for peer in s.peers:
            self.send(peer, RequestVote(term, s.server_id, s.last_index, s.last_term, pre_vote))

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

    def on_append_entries(self, sender: ServerId, m: AppendEntries, now: int) -> None:
        s = self.state
        if m.term < s.current_term:
            # Figure 2, receiver rule 1.
            self.send(sender, AppendEntriesResponse(s.current_term, s.server_id, False))
            return
        if s.role is not Role.FOLLOWER:
            # §5.2: a candidate that hears from the leader of its term returns to follower.
            self.become_follower(m.term, now, m.leader_id)
        s.leader_id = m.leader_id
        s.leader_contact = now
        self.reset_election_timer(now)
        if m.prev_log_index > s.last_index:
            # Receiver rule 2: we lack prevLogIndex entirely.
            self.reject_append(sender, s.last_index + 1, 0)
            return
        if m.prev_log_index > 0 and s.term_at(m.prev_log_index) != m.prev_log_term:
            conflict_term = s.term_at(m.prev_log_index)
            self.reject_append(
                sender, self.first_index_of_term(conflict_term, m.prev_log_index), conflict_term
            )
            return
        if not self.merge_entries(m.prev_log_index, m.entries):
            return
        last_new = m.prev_log_index + len(m.entries)
        if m.leader_commit > s.commit_index:
            # Receiver rule 5: the index of the last *new* entry, not our last index, since
            # entries past it have not been checked against the leader's log.
            s.commit_index = max(s.commit_index, min(m.leader_commit, last_new))
        self.send(sender, AppendEntriesResponse(s.current_term, s.server_id, True, last_new))

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
        """The first index of `term`'s run, which holds `index` (terms never decrease)."""
        return bisect_left(self.state.log, term, hi=index, key=entry_term) + 1

    def reject_append(self, leader: ServerId, conflict_index: int, conflict_term: int) -> None:
        s = self.state
        self.send(
            leader,
            AppendEntriesResponse(
                s.current_term, s.server_id, False, 0, conflict_index, conflict_term
            ),
        )

    def on_append_entries_response(self, sender: ServerId, m: AppendEntriesResponse) -> None:
        s = self.state
        if s.role is not Role.LEADER or m.term != s.current_term:
            return
        s.recent_active.add(sender)
        s.inflight[sender] = max(0, s.inflight[sender] - 1)
        if m.success:
            if m.match_index > s.last_index:
                # Only a newer instance of this leader can have sent entries past our log
                # (two function instances of one server); that instance's save wins.
                return
            if m.match_index > s.match_index[sender]:
                s.match_index[sender] = m.match_index
            s.next_index[sender] = max(s.next_index[sender], s.match_index[sender] + 1)
            s.probing.discard(sender)
            self.maybe_advance_commit()
        else:
            # Even a rejection that looks stale is acted on (never below matchIndex + 1): the
            # response does not say which AppendEntries it answers, and ignoring a real one
            # after a lost message would leave the follower behind for good.
            s.next_index[sender] = self.next_index_after_conflict(m, s.match_index[sender])
            s.probing.add(sender)
            s.inflight[sender] = 0
        if s.next_index[sender] <= s.last_index or not m.success:
            self._to_replicate.add(sender)

    def next_index_after_conflict(self, m: AppendEntriesResponse, match: int) -> int:
        """Fast backtracking: skip the follower's whole conflicting term, or jump to the
        leader's last entry of that term if it has one."""
        s = self.state
        target = m.conflict_index
        if m.conflict_term:
            # Terms never decrease along a log, so a binary search finds the last entry of
            # conflict_term (or of the last term before it).
            index = bisect_right(s.log, m.conflict_term, key=entry_term)
            if index > 0 and s.term_at(index) == m.conflict_term:
                target = index + 1
        return max(match + 1, min(target, s.last_index + 1))

    def maybe_advance_commit(self) -> None:
        """§5.3/§5.4.2: commit the highest index stored on a majority, but only if it is from
        the current term; earlier terms' entries commit indirectly (Figure 8)."""
        s = self.state
        if s.role is not Role.LEADER:
            return
        matches = sorted([s.last_index, *s.match_index.values()], reverse=True)
        candidate = matches[s.quorum - 1]
        if candidate > s.commit_index and s.term_at(candidate) == s.current_term:
            s.commit_index = candidate

    def send_append_entries(self, peer: ServerId) -> None:
        """Send one or more AppendEntries to `peer`: one at a time while probing, up to
        `max_inflight_messages` pipelined once the follower is known to match."""
        s = self.state
        cap = 1 if peer in s.probing else self.config.max_inflight_messages
        must_send = peer in self._heartbeat_due
        if not must_send and s.inflight[peer] < cap:
            s.replicated.add(peer)
        while s.inflight[peer] < cap or must_send:
            must_send = False
            prev = s.next_index[peer] - 1
            entries = self.entries_from(prev + 1)
            self.send(
                peer,
                AppendEntries(
                    s.current_term, s.server_id, prev, s.term_at(prev), entries, s.commit_index
                ),
            )
            s.inflight[peer] += 1
            if not entries or peer in s.probing:
                return
            s.next_index[peer] = prev + len(entries) + 1
            if s.next_index[peer] > s.last_index:
                return

    def entries_from(self, index: int) -> tuple[Entry, ...]:
        """Entries from `index` on, bounded in count and bytes (at least one if any)."""
        s = self.state
        end = min(s.last_index, index - 1 + self.config.max_entries_per_message)
        batch: list[Entry] = []
        size = 0
        for i in range(index, end + 1):
            entry = s.log[i - 1]
            size += entry.size
            if batch and size > self.config.max_bytes_per_message:
                break
            batch.append(entry)
        return tuple(batch)

    # ----------------------------------------------------------------- clients

    def on_client_request(self, m: ClientRequest) -> None:
        s = self.state
        if s.role is not Role.LEADER:
            if s.leader_id and m.hops < MAX_FORWARD_HOPS:
                self.send(s.leader_id, replace(m, hops=m.hops + 1))
            elif m.reply_to:
                self.reply(m, ClientStatus.NOT_LEADER)
            return
        if self.overloaded():
            if m.reply_to:
                self.reply(m, ClientStatus.OVERLOADED)
            return
        self.append(Entry(s.current_term, m.client_id, m.seq, m.data, m.reply_to))
        self._to_replicate.update(s.peers)

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

    def truncate(self, index: int) -> None:
        del self.state.log[index - 1 :]
        self.mark_log_changed(index)

    def mark_log_changed(self, index: int) -> None:
        if self._log_changed_from is None or index < self._log_changed_from:
            self._log_changed_from = index

    def send(self, to: str, message: Message) -> None:
        self._out.append(Envelope(self.state.server_id, to, message))
