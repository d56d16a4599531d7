"""A catalogue of known-buggy servers for validating the tester: each is a RaftServer
subclass overriding one rule, and each must be caught by the default portfolio (see
tests/test_sim_variants.py). Also resolves `--target module:factory` specs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from raft.core.messages import AppendEntries, Entry, RequestVote, ServerId
from raft.core.server import RaftServer
from raft.core.state import Config, Role, ServerState

PRODUCTION = "raft.core.server:RaftServer"
ServerFactory = Callable[[ServerState, Config], RaftServer]


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


@dataclass(frozen=True)
class Variant:
    name: str
    factory: ServerFactory
    # The property the monitors are expected to report (any one of these).
    expect: tuple[str, ...]

    @property
    def summary(self) -> str:
        return (self.factory.__doc__ or "").strip().splitlines()[0]


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "duplicate-votes",
            CountsDuplicateVotes,
            ("election-safety", "leader-completeness", "state-machine-safety", "durability"),
        ),
        Variant(
            "no-up-to-date-check",
            GrantsStaleVotes,
            ("leader-completeness", "state-machine-safety", "durability", "linearizability"),
        ),
        Variant(
            "figure-8",
            CommitsOldTermByCount,
            ("leader-completeness", "state-machine-safety", "durability", "linearizability"),
        ),
        Variant("vote-not-persisted", ForgetsVote, ("election-safety",)),
        Variant(
            "truncate-on-append",
            TruncatesOnEveryAppend,
            (
                "durability",
                "leader-completeness",
                "state-machine-safety",
                "linearizability",
                "liveness",
            ),
        ),
        Variant("no-step-down", IgnoresHigherTerm, ("election-safety",)),
        Variant(
            "commit-before-majority",
            CommitsBeforeMajority,
            ("durability", "state-machine-safety", "leader-completeness", "linearizability"),
        ),
        Variant("unconfirmed-reads", ReadsWithoutConfirmation, ("linearizability",)),
        Variant(
            "trusts-leader-commit",
            TrustsLeaderCommit,
            ("state-machine-safety", "handler-exception", "linearizability"),
        ),
    )
}


def resolve_target(spec: str) -> ServerFactory:
    """`variant:NAME` from the catalogue, or `module:attribute` naming a server factory."""
    if spec.startswith("variant:"):
        name = spec.split(":", 1)[1]
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        return VARIANTS[name].factory
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"target {spec!r} must look like module:factory")
    factory: ServerFactory = getattr(importlib.import_module(module_name), attribute)
    if not callable(factory):
        raise ValueError(f"target {spec!r} is not callable")
    return factory
