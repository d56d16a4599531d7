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
    leader after the save), "log" (its log changed) or "commit" (its commit or applied
    index, or its log, changed). Returns a description of a violation, or None."""

    name = "monitor"
    trigger = "log"

    def on_save(self, event: SaveEvent) -> str | None:
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
    """Every write a client saw acknowledged is in the persisted log of a majority, so it
    survives the crash of any minority (and stays there)."""

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
        # A majority of the configuration in effect at that index (membership changes move it).
        servers = self._config_at(index, holders)
        if len(holders & set(servers)) < len(servers) // 2 + 1:
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
    """Coyote's hot monitor: hot while no server is leader or a client request is pending.
    In the fair suffix it must cool down within `bound` steps (TigerBeetle's liveness mode)."""

    name = "liveness"

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.hot_steps = 0

    def hot(self, has_leader: bool, pending: int) -> bool:
        return not has_leader or pending > 0

    def after_step(self, has_leader: bool, pending: int) -> str | None:
        if not self.hot(has_leader, pending):
            return None
        self.hot_steps += 1
        if self.hot_steps > self.bound:
            what = "no leader was elected" if not has_leader else f"{pending} requests pending"
            return f"{self.bound} fair, fault-free steps after faults stopped and {what}"
        return None
