"""A catalogue of known-buggy servers for validating the tester: each is a RaftServer
subclass overriding one rule, or a NodeHandler subclass bringing back a handler behaviour
that was once a bug, and each must be caught by the default portfolio (see
tests/test_sim_variants.py). Also resolves `--target module:factory` specs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from raft.core.messages import AppendEntries, Entry, InstallSnapshot, RequestVote, ServerId
from raft.core.server import RaftServer
from raft.core.state import Config, Role, ServerState, Snapshot
from raft.node.handler import NodeHandler, NodeOptions
from raft.ports.bus import Bus
from raft.ports.store import Change, ClientResult, Store, StoredServer

PRODUCTION = "raft.core.server:RaftServer"
ServerFactory = Callable[[ServerState, Config], RaftServer]
HandlerFactory = Callable[[str, Sequence[str], Store, Bus, NodeOptions], NodeHandler]


class CountsDuplicateVotes(RaftServer):
    """Counts votes with a counter, so a duplicated vote response counts twice."""

    def count_vote(self, voter: ServerId) -> None:
        self.state.votes.add(f"{voter}#{len(self.state.votes)}")


class GrantsStaleVotes(RaftServer):
    """Grants votes without the §5.4.1 up-to-date check."""

    def log_is_up_to_date(self, last_log_term: int, last_log_index: int) -> bool:
        return True


class CommitsOldTermByCount(RaftServer):
    """Commits an earlier term's entry once a majority stores it (the Figure 8 bug)."""

    def maybe_advance_commit(self) -> None:
        s = self.state
        if s.role is not Role.LEADER:
            return
        matches = sorted([s.last_index, *(p.match for p in s.progress.values())], reverse=True)
        s.commit_index = max(s.commit_index, matches[s.quorum - 1])


class ForgetsVote(RaftServer):
    """Answers a vote but does not persist voted_for: the handler stores the state dict after
    the step, so the vote is undone before the save, as if it had never reached the disk."""

    def on_request_vote(self, sender: ServerId, m: RequestVote, now: int) -> None:
        voted_for = self.state.voted_for
        super().on_request_vote(sender, m, now)
        if not m.pre_vote:
            self.state.voted_for = voted_for


class TruncatesOnEveryAppend(RaftServer):
    """Deletes everything after prevLogIndex on every AppendEntries, even matching entries,
    so a delayed, shorter AppendEntries erases entries the follower already acknowledged."""

    def merge_entries(self, prev_index: int, entries: tuple[Entry, ...]) -> bool:
        if prev_index < self.state.last_index:
            self.truncate(prev_index + 1)
        for entry in entries:
            self.append(entry)
        return True


class IgnoresHigherTerm(RaftServer):
    """A leader that sees a higher term adopts it but stays leader."""

    def become_follower(self, term: int, now: int, leader: ServerId = "") -> None:
        s = self.state
        if s.role is Role.LEADER and term > s.current_term:
            s.current_term = term
            s.voted_for = ""
            return
        super().become_follower(term, now, leader)


class CommitsBeforeMajority(RaftServer):
    """A leader commits (and so applies and acknowledges) its entries as soon as it appends
    them, before a majority stores them."""

    def maybe_advance_commit(self) -> None:
        s = self.state
        if s.role is Role.LEADER and s.term_at(s.last_index) == s.current_term:
            s.commit_index = s.last_index


class TrustsLeaderCommit(RaftServer):
    """A follower sets commit_index to leaderCommit without the min(·, index of last new
    entry) of Figure 2, so it counts as committed entries it has not received or checked."""

    def on_append_entries(self, sender: ServerId, m: AppendEntries, now: int) -> None:
        super().on_append_entries(sender, m, now)
        s = self.state
        accepted = (
            m.term == s.current_term
            and m.prev_log_index <= s.last_index
            and s.term_at(m.prev_log_index) == m.prev_log_term
        )
        if accepted and m.leader_commit > s.commit_index:
            s.commit_index = m.leader_commit


class ReadsWithoutConfirmation(RaftServer):
    """Serves reads without confirming leadership (ReadIndex without its heartbeat round), so
    a deposed leader that has not heard of its successor answers stale reads."""

    def confirm_reads(self) -> None:
        s = self.state
        ready = [r for r in s.reads if r.index]
        self._confirmed.extend(ready)
        s.reads = [r for r in s.reads if not r.index]


class FollowerNeverCommits(RaftServer):
    """A follower never learns the commit index from AppendEntries: it stores every entry
    and acknowledges it, so commits and safety are unaffected, but applies nothing."""

    def accept_append(self, sender: ServerId, m: AppendEntries, last_new: int) -> None:
        super().accept_append(sender, replace(m, leader_commit=0), last_new)


class CompactsPastCommit(RaftServer):
    """Compacts its whole log whenever the host snapshots, entries the snapshot does not hold
    (not yet applied, or not even committed) included."""

    def compact(self, snapshot: Snapshot, keep: int = 0) -> None:
        super().compact(snapshot, keep)
        s = self.state
        s.log_start, s.log_start_term, s.log = s.last_index, s.last_term, []


class AppendsChunksBlindly(RaftServer):
    """Appends each chunk of the snapshot being received where the transfer has got to,
    without checking the chunk's offset, so a repeated or reordered chunk corrupts it."""

    def on_install_snapshot(self, sender: ServerId, m: InstallSnapshot, now: int) -> None:
        incoming = self.state.incoming
        if (
            m.offset
            and incoming is not None
            and incoming.key == (m.term, m.last_index, m.last_term)
        ):
            m = replace(m, offset=incoming.offset)
        super().on_install_snapshot(sender, m, now)


class TrustingStore:
    """One handler's view of the store in which the stored version is always the one that
    handler last loaded or saved: its cache always looks current."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen: dict[str, str | None] = {}

    def load(self, server_id: str) -> StoredServer | None:
        stored = self.store.load(server_id)
        self.seen[server_id] = None if stored is None else stored.version
        return stored

    def save(self, server_id: str, expected_version: str | None, change: Change) -> str:
        version = self.seen[server_id] = self.store.save(server_id, expected_version, change)
        return version

    def version(self, server_id: str) -> str | None:
        return self.seen.get(server_id)

    def read_state(self, server_id: str) -> dict[str, Any] | None:
        return self.store.read_state(server_id)

    def read_result(self, server_id: str, client_id: str) -> ClientResult | None:
        return self.store.read_result(server_id, client_id)

    def read_answer(self, server_id: str, client_id: str) -> ClientResult | None:
        return self.store.read_answer(server_id, client_id)


class StepsOnStaleCache(NodeHandler):
    """Steps on its cached state without checking it is current (the handler before issue
    10): a step that changes nothing relative to a stale copy is not saved, yet its messages
    are sent, so, with the timer and the triggers on different instances, pre-vote grants
    reach a stale "follower" copy and are ignored, and elections never end."""

    def __init__(
        self,
        server_id: str,
        servers: Sequence[str],
        store: Store,
        bus: Bus,
        options: NodeOptions | None = None,
        spares: Sequence[str] = (),
    ) -> None:
        super().__init__(server_id, servers, TrustingStore(store), bus, options, spares)


@dataclass(frozen=True)
class Variant:
    name: str
    # The property the monitors are expected to report (any one of these).
    expect: tuple[str, ...]
    server: ServerFactory = RaftServer
    handler: HandlerFactory = NodeHandler

    @property
    def summary(self) -> str:
        buggy = self.server if self.server is not RaftServer else self.handler
        return (buggy.__doc__ or "").strip().splitlines()[0]


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "duplicate-votes",
            server=CountsDuplicateVotes,
            expect=(
                "election-safety",
                "commit-safety",
                "leader-completeness",
                "state-machine-safety",
                "durability",
            ),
        ),
        Variant(
            "no-up-to-date-check",
            server=GrantsStaleVotes,
            expect=(
                "commit-safety",
                "leader-completeness",
                "state-machine-safety",
                "durability",
                "linearizability",
            ),
        ),
        Variant(
            "figure-8",
            server=CommitsOldTermByCount,
            expect=(
                "commit-safety",
                "leader-completeness",
                "state-machine-safety",
                "durability",
                "linearizability",
            ),
        ),
        Variant("vote-not-persisted", server=ForgetsVote, expect=("election-safety",)),
        Variant(
            "truncate-on-append",
            server=TruncatesOnEveryAppend,
            expect=(
                "durability",
                "commit-safety",
                "leader-completeness",
                "state-machine-safety",
                "linearizability",
                "liveness",
            ),
        ),
        Variant("no-step-down", server=IgnoresHigherTerm, expect=("election-safety",)),
        Variant(
            "commit-before-majority",
            server=CommitsBeforeMajority,
            expect=(
                "durability",
                "commit-safety",
                "state-machine-safety",
                "leader-completeness",
                "linearizability",
            ),
        ),
        Variant("unconfirmed-reads", server=ReadsWithoutConfirmation, expect=("linearizability",)),
        Variant(
            "trusts-leader-commit",
            server=TrustsLeaderCommit,
            expect=("state-machine-safety", "handler-exception", "linearizability"),
        ),
        Variant("follower-never-commits", server=FollowerNeverCommits, expect=("liveness",)),
        Variant("stale-cache-steps", handler=StepsOnStaleCache, expect=("liveness", "stability")),
        Variant(
            "compacts-past-commit",
            server=CompactsPastCommit,
            expect=("snapshot-safety", "handler-exception"),
        ),
        Variant(
            "blind-snapshot-chunks",
            server=AppendsChunksBlindly,
            # A garbled snapshot the handler cannot read is refused (SnapshotError), so the
            # follower never catches up: liveness reports it when no save shows it first.
            expect=("snapshot-safety", "handler-exception", "liveness"),
        ),
    )
}


def _variant(spec: str) -> Variant | None:
    if not spec.startswith("variant:"):
        return None
    name = spec.split(":", 1)[1]
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def resolve_handler(spec: str) -> HandlerFactory:
    """The node handler a target runs behind: the production one unless a catalogued
    variant brings back a buggy one."""
    variant = _variant(spec)
    return NodeHandler if variant is None else variant.handler


def resolve_target(spec: str) -> ServerFactory:
    """`variant:NAME` from the catalogue, or `module:attribute` naming a server factory."""
    variant = _variant(spec)
    if variant is not None:
        return variant.server
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"target {spec!r} must look like module:factory")
    factory: ServerFactory = getattr(importlib.import_module(module_name), attribute)
    if not callable(factory):
        raise ValueError(f"target {spec!r} is not callable")
    return factory
