"""Safety and liveness monitors: separate objects the simulator registers and calls after
every save and client response (Coyote's monitors; the server code knows nothing of them).

They read only what the store persisted (`PersistedView`s) and what clients observed, and
are incremental: a save costs O(entries it wrote), using prefix digests of each server's log
(digest[i] = hash(digest[i-1], entry i)), so comparing two log prefixes is one integer
comparison. Digests are compared, never printed, so Python's per-process hash seed does not
leak into traces.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from raft.ports.store import Change
from raft.sim.linearizability import Operation, check_history
from raft.sim.storage import PersistedView, SaveEvent


@dataclass(frozen=True, slots=True)
class Violation:
    property: str
    message: str
    step: int


class LogDigests:
    """Prefix digests of every server's persisted log, and of the agreed committed log."""

    def __init__(self, servers: tuple[str, ...]) -> None:
        self.of: dict[str, list[int]] = {s: [] for s in servers}
        self.committed: list[int] = []
        # The term in which each committed entry was first known committed (nondecreasing,
        # since a prefix commits no later than what follows it).
        self.commit_terms: list[int] = []

    def update(self, server: str, change: Change, view: PersistedView) -> None:
        if change.log_from is None:
            return
        digests = self.of[server]
        start = change.log_from - 1
        del digests[start:]
        prev = digests[-1] if digests else 0
        for entry in view.log[start:]:
            prev = hash((prev, entry))
            digests.append(prev)


class Monitor:
    """Called after saves that can matter to it: `trigger` is "leader" (the server is a
    leader after the save), "log" (its log changed), "commit" (its commit or applied index,
    or its log, changed) or "snapshot" (it stored a snapshot or compacted its log). Returns
    a description of a violation, or None."""

    name = "monitor"
    trigger = "log"

    def on_save(self, event: SaveEvent) -> str | None:
        return None


class ConfigurationSafety(Monitor):
    """Thesis §4.1: each configuration in a log differs from the one before it by one server
    at most, so a majority of the old and a majority of the new always share a server (no
    two disjoint majorities can each elect a leader or commit), and never names no one."""

    name = "configuration-safety"
    trigger = "log"

    def __init__(self, servers: tuple[str, ...]) -> None:
        self.initial = servers

    def on_save(self, event: SaveEvent) -> str | None:
        start = event.change.log_from
        if start is None:
            return None
        log = event.view.log
        previous = next(
            (log[i].servers for i in range(start - 2, -1, -1) if log[i].servers), self.initial
        )
        for index in range(start, len(log) + 1):
            servers = log[index - 1].servers
            if not servers:
                continue
            if len(set(servers) ^ set(previous)) > 1:
                return (
                    f"{event.server}'s entry {index} changes the configuration from "
                    f"{sorted(previous)} to {sorted(servers)}: majorities of the two may not meet"
                )
            previous = servers
        return None


class ElectionSafety(Monitor):
    """§5.2: at most one leader per term."""

    name = "election-safety"
    trigger = "leader"

    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}

    def on_save(self, event: SaveEvent) -> str | None:
        state = event.state
        if state["role"] != "leader":
            return None
        term = state["current_term"]
        first = self.leaders.setdefault(term, event.server)
        if first != event.server:
            return f"{first} and {event.server} are both leaders of term {term}"
        return None


class LeaderAppendOnly(Monitor):
    """§5.3: a leader never overwrites or deletes entries in its log."""

    name = "leader-append-only"
    trigger = "leader"

    def on_save(self, event: SaveEvent) -> str | None:
        state = event.state
        if (
            event.change.log_from is not None
            and event.change.log_from <= event.old_length
            and event.before is not None
            and event.before["role"] == "leader"
            and state["role"] == "leader"
            and event.before["current_term"] == state["current_term"]
        ):
            return (
                f"leader {event.server} of term {state['current_term']} rewrote its log from index "
                f"{event.change.log_from} (it had {event.old_length} entries)"
            )
        return None


class LogMatching(Monitor):
    """§5.3: entries with the same index and term have identical logs up to them. Checked
    over every log any server ever persisted: (index, term) must always come with the same
    prefix digest."""

    name = "log-matching"

    def __init__(self, digests: LogDigests) -> None:
        self.digests = digests
        self.seen: dict[tuple[int, int], int] = {}

    def on_save(self, event: SaveEvent) -> str | None:
        if event.change.log_from is None:
            return None
        digests = self.digests.of[event.server]
        log = event.view.log
        for index in range(event.change.log_from, len(log) + 1):
            key = (index, log[index - 1].term)
            known = self.seen.setdefault(key, digests[index - 1])
            if known != digests[index - 1]:
                return (
                    f"{event.server} holds an entry at index {index} of term {key[1]} whose log "
                    f"prefix differs from another server's entry at the same index and term"
                )
        return None


class StateMachineSafety(Monitor):
    """§5.4.3: servers never commit (and so never apply) different entries at one index.
    Maintains the agreed committed log as digests; a server's committed prefix must match
    it, and must still be in its log."""

    name = "state-machine-safety"
    trigger = "commit"

    def __init__(self, digests: LogDigests) -> None:
        self.digests = digests

    def on_save(self, event: SaveEvent) -> str | None:
        state = event.state
        commit = state["commit_index"]
        if commit > len(event.view.log):
            length = len(event.view.log)
            return f"{event.server} has commit_index {commit} but only {length} log entries"
        if state["last_applied"] > commit:
            applied = state["last_applied"]
            return f"{event.server} applied up to {applied} past commit_index {commit}"
        committed = self.digests.committed
        mine = self.digests.of[event.server]
        shared = min(commit, len(committed))
        if shared and mine[shared - 1] != committed[shared - 1]:
            return (
                f"{event.server} committed a log prefix up to index {shared} that differs from the "
                f"one another server committed"
            )
        if commit > len(committed):
            self.digests.commit_terms.extend([state["current_term"]] * (commit - len(committed)))
            committed.extend(mine[len(committed) : commit])
        return None


class CommitSafety(Monitor):
    """§5.4.3's argument, checked when it is needed rather than when it fails: an entry is
    committed only once no server without it could be elected, that is, once every server
    lacking it has a log less up to date (§5.4.1) than the logs of a majority. Leader
    Completeness then follows for every future leader; a commit that breaks this (Figure 8's)
    is reported at the commit, not several elections later when a leader overwrites it."""

    name = "commit-safety"
    trigger = "commit"

    def __init__(self, digests: LogDigests, views: dict[str, PersistedView]) -> None:
        self.digests = digests
        self.views = views
        self.checked = 0

    def _config(self, server: str) -> tuple[str, ...]:
        """The servers `server` uses; all of them until it has saved (the first one)."""
        return tuple(self.views[server].state.get("servers") or self.views)

    def on_save(self, event: SaveEvent) -> str | None:
        committed = self.digests.committed
        index = len(committed)
        if index <= self.checked:
            return None
        self.checked = index
        ends = {s: (v.log[-1].term if v.log else 0, len(v.log)) for s, v in self.views.items()}
        for server, digests in self.digests.of.items():
            if len(digests) >= index and digests[index - 1] == committed[index - 1]:
                continue
            # Everyone whose log is no more up to date than `server`'s would vote for it, if
            # each has the other in its configuration (a server ignores vote requests from
            # outside it, and campaigns only inside its own).
            config = self._config(server)
            if server not in config:
                continue
            voters = [
                s
                for s, end in ends.items()
                if s in config and server in self._config(s) and end <= ends[server]
            ]
            if len(voters) >= len(config) // 2 + 1:
                return (
                    f"entry {index} was committed, but {server}, which lacks it, could be elected "
                    f"by {sorted(voters)}, whose logs are no more up to date than its own"
                )
        return None


class SnapshotSafety(Monitor):
    """Compaction discards only what a snapshot holds, and snapshots agree: a server's log
    starts no later than its latest snapshot and its commit index (entries compacted are
    committed and applied); a snapshot, taken or installed, covers only committed entries;
    and two snapshots at one index are identical (the same term and applied state), which a
    transfer that lost, repeated or reordered chunks, or resumed after a crash mid-install,
    would break."""

    name = "snapshot-safety"
    trigger = "snapshot"

    def __init__(self, servers: tuple[str, ...]) -> None:
        self.latest = dict.fromkeys(servers, 0)
        # index -> (term, hash of the data) of the first snapshot seen there.
        self.seen: dict[int, tuple[int, int]] = {}

    def on_save(self, event: SaveEvent) -> str | None:
        state, snapshot, server = event.state, event.change.snapshot, event.server
        commit = state["commit_index"]
        if snapshot is not None:
            if snapshot.index > commit:
                return (
                    f"{server} stored a snapshot at index {snapshot.index}, past its "
                    f"commit index {commit}"
                )
            digest = (snapshot.term, hash(snapshot.data))
            if self.seen.setdefault(snapshot.index, digest) != digest:
                return (
                    f"{server} stored a snapshot at index {snapshot.index} that differs from "
                    f"another snapshot at that index"
                )
            self.latest[server] = snapshot.index
        start = state["log_start"]
        if start > min(commit, self.latest[server]):
            return (
                f"{server} compacted its log up to {start}, past its commit index {commit} or "
                f"its latest snapshot (at {self.latest[server]})"
            )
        return None


class LeaderCompleteness(Monitor):
    """§5.4: a leader's log holds every entry committed in an earlier term. (A leader of a
    stale term elected late need not hold entries committed in later terms.)"""

    name = "leader-completeness"
    trigger = "leader"

    def __init__(self, digests: LogDigests) -> None:
        self.digests = digests

    def on_save(self, event: SaveEvent) -> str | None:
        state = event.state
        if state["role"] != "leader" or (
            event.before is not None
            and event.before["role"] == "leader"
            and event.before["current_term"] == state["current_term"]
        ):
            return None
        term = state["current_term"]
        committed = self.digests.committed
        k = bisect_left(self.digests.commit_terms, term)
        mine = self.digests.of[event.server]
        if k and (len(mine) < k or mine[k - 1] != committed[k - 1]):
            return (
                f"{event.server} became leader of term {term} without the first {k} entries, "
                f"committed in earlier terms"
            )
        return None


class Durability(Monitor):
    """Every write a client saw acknowledged is in the persisted log of enough servers that no
    majority lacks it, so it survives the crash of any minority (and stays there)."""

    name = "durability"
    trigger = "log"

    def __init__(self, servers: tuple[str, ...], views: dict[str, PersistedView]) -> None:
        self.servers = servers
        self.views = views
        # index -> (term, client, seq, holders)
        self.acked: dict[int, tuple[int, str, int, set[str]]] = {}

    def _holds(self, server: str, index: int, term: int, client: str, seq: int) -> bool:
        log = self.views[server].log
        if index > len(log):
            return False
        entry = log[index - 1]
        return entry.term == term and entry.client_id == client and entry.seq == seq

    def _config_at(self, index: int, holders: set[str]) -> tuple[str, ...]:
        for holder in sorted(holders):
            log = self.views[holder].log
            for entry in reversed(log[:index]):
                if entry.servers:
                    return entry.servers
        return self.servers

    def on_ack(self, op: Operation, index: int, term: int) -> str | None:
        if index in self.acked:
            return None
        holders = {s for s in self.servers if self._holds(s, index, term, op.client, op.seq)}
        self.acked[index] = (term, op.client, op.seq, holders)
        return self._check(index)

    def on_save(self, event: SaveEvent) -> str | None:
        if event.change.log_from is None or not self.acked:
            return None
        for index, (term, client, seq, holders) in self.acked.items():
            if index < event.change.log_from:
                continue
            if self._holds(event.server, index, term, client, seq):
                holders.add(event.server)
            else:
                holders.discard(event.server)
            problem = self._check(index)
            if problem:
                return problem
        return None

    def _check(self, index: int) -> str | None:
        term, client, seq, holders = self.acked[index]
        # No majority of the configuration in effect at that index, nor of the one a holder
        # uses now, may consist of servers without it: every election needs such a majority
        # (membership changes move it, one server at a time, thesis §4.1).
        configs = [self._config_at(index, holders)]
        configs += [tuple(self.views[h].state.get("servers") or ()) for h in sorted(holders)]
        if any(len(set(c) - holders) >= len(c) // 2 + 1 for c in configs if c):
            return (
                f"acknowledged write {client}#{seq} (index {index}, term {term}) is stored on "
                f"only {sorted(holders)}: a crash of the others would lose it"
            )
        return None


class Linearizability:
    """The client history is linearizable; rechecked (for the affected key only) whenever a
    response arrives, since only then does the history gain a constraint."""

    name = "linearizability"

    def __init__(self) -> None:
        self.by_key: dict[str, list[Operation]] = {}

    def on_invoke(self, op: Operation) -> None:
        self.by_key.setdefault(op.key, []).append(op)

    def on_response(self, op: Operation) -> str | None:
        return check_history(self.by_key[op.key])


class Liveness:
    """Coyote's hot monitor, judged on virtual time (TigerBeetle's liveness mode): once faults
    stop and scheduling is fair, the cluster must within `bound_ms` virtual milliseconds have
    a leader, no pending client request, and every server must have applied everything
    committed. A step count would not do: when many delayed messages fall due at once,
    hundreds of steps pass in a few virtual milliseconds. Steps are still capped, at
    `steps_per_ms` a virtual millisecond, so a schedule is bounded: a correct cluster at rest
    sends a few messages per heartbeat, so more is a message storm, itself a liveness bug."""

    name = "liveness"

    def __init__(self, bound_ms: int, steps_per_ms: int = 10) -> None:
        self.bound_ms = bound_ms
        self.max_steps = bound_ms * steps_per_ms
        self.started = 0
        self.first_step = 0

    def start(self, now: int, step: int) -> None:
        self.started, self.first_step = now, step

    def after_step(self, now: int, step: int, unfinished: str | None) -> str | None:
        """`unfinished` says what is still hot, None when the monitor cooled down."""
        if unfinished is None:
            return None
        if now - self.started > self.bound_ms:
            return f"{unfinished} {self.bound_ms} virtual ms after faults stopped"
        if step - self.first_step > self.max_steps:
            return (
                f"{unfinished} after {self.max_steps} fair steps, which covered only "
                f"{now - self.started} virtual ms: a message storm"
            )
        return None


class Stability:
    """Once the cluster has settled after faults stop (see `Liveness`), with the network
    fault-free and the leader up, one client sends a steady load (a command per heartbeat
    interval) for `window_ms`. No server may start a new term and the leader (of the newest
    term) must stay leader (stability: servers that lag may catch up with its term, and a
    stale leader step down). And servers may send one another no more than heartbeats and
    the commands need (cost): an AppendEntries and its response per follower per heartbeat
    interval (one more for the interval the window starts in) and per round the leader owes
    the load (an entry committed, a read confirmed, each after at most `forward_hops`
    forwards from the server the client asked), plus one answer to each message in flight
    when the window opens."""

    name = "stability"
    cost = "cost"

    def __init__(
        self,
        term: int,
        leader: str,
        messages: int,
        inflight: int,
        servers: int,
        window_ms: int,
        heartbeat_ms: int,
        forward_hops: int,
    ) -> None:
        self.term = term
        self.leader = leader
        self.messages = messages
        heartbeat = 2 * (servers - 1)
        self.per_round = heartbeat + forward_hops
        self.bound = heartbeat * (window_ms // heartbeat_ms + 1) + inflight

    def after_step(self, term: int, leader_role: str) -> str | None:
        if term != self.term:
            return f"term {term} started after term {self.term}, with no fault and the leader up"
        if leader_role != "leader":
            return f"leader {self.leader} became {leader_role} with no fault"
        return None

    def at_end(self, messages: int, rounds: int) -> str | None:
        """`rounds`: entries the leader committed and reads it answered in the window."""
        sent = messages - self.messages
        bound = self.bound + self.per_round * rounds
        if sent > bound:
            return (
                f"servers sent {sent} messages for {rounds} commands, more than the {bound} "
                f"that heartbeats, the commands and answers to messages in flight need"
            )
        return None
