"""The snapshot-aware safety monitors on hand-made saves (the simulator calls them after
every save that can matter to them)."""

from __future__ import annotations

from typing import Any

from raft.core.messages import Entry
from raft.core.state import Snapshot
from raft.ports.store import Change
from raft.sim.monitors import CommitSafety, LogDigests, SnapshotSafety, StateMachineSafety
from raft.sim.storage import PersistedView, SaveEvent

SERVERS = ("s1", "s2", "s3", "s4", "s5")


def _state(commit: int, log_start: int = 0, applied: int | None = None) -> dict[str, Any]:
    return {
        "commit_index": commit,
        "last_applied": commit if applied is None else applied,
        "log_start": log_start,
        "current_term": 3,
        "role": "follower",
    }


def _save(server: str, state: dict[str, Any], snapshot: Snapshot | None = None) -> SaveEvent:
    return SaveEvent(server, None, Change(state=state, snapshot=snapshot), 0, PersistedView(state))


def test_a_snapshot_past_the_commit_index_is_reported() -> None:
    monitor = SnapshotSafety(SERVERS)
    problem = monitor.on_save(_save("s1", _state(commit=4), Snapshot(5, 1, "{}", SERVERS)))
    assert problem is not None and "past its commit index 4" in problem


def test_two_different_snapshots_at_one_index_are_reported() -> None:
    monitor = SnapshotSafety(SERVERS)
    assert monitor.on_save(_save("s1", _state(commit=6), Snapshot(5, 1, "a", SERVERS))) is None
    assert monitor.on_save(_save("s2", _state(commit=5), Snapshot(5, 1, "a", SERVERS))) is None
    problem = monitor.on_save(_save("s3", _state(commit=5), Snapshot(5, 1, "b", SERVERS)))
    assert problem is not None and "differs" in problem


def test_compacting_past_the_latest_snapshot_is_reported() -> None:
    monitor = SnapshotSafety(SERVERS)
    snapshot = Snapshot(5, 1, "a", SERVERS)
    assert monitor.on_save(_save("s1", _state(commit=9, log_start=4), snapshot)) is None
    problem = monitor.on_save(_save("s1", _state(commit=9, log_start=7)))
    assert problem is not None and "compacted its log up to 7" in problem


def _cluster(logs: dict[str, list[int]]) -> tuple[LogDigests, dict[str, PersistedView]]:
    """Servers holding logs given as lists of entry terms."""
    digests = LogDigests(SERVERS)
    views = {s: PersistedView() for s in SERVERS}
    for server, terms in logs.items():
        views[server].log = [Entry(term, "c", i) for i, term in enumerate(terms)]
        digests.update(server, Change(state={}, log_from=1), views[server])
    return digests, views


def _commit(digests: LogDigests, views: dict[str, PersistedView], server: str, index: int) -> str:
    event = SaveEvent(server, None, Change(state=_state(index)), 0, views[server])
    assert StateMachineSafety(digests).on_save(event) is None
    return CommitSafety(digests, views).on_save(event) or ""


def test_a_commit_on_a_majority_with_the_newest_term_is_safe() -> None:
    digests, views = _cluster(
        {"s1": [1, 2], "s2": [1, 2], "s3": [1, 2], "s4": [1], "s5": [1, 1, 1]}
    )
    assert _commit(digests, views, "s1", 2) == ""


def test_figure_8s_commit_of_an_old_term_entry_by_counting_is_reported() -> None:
    # s1 (leader of term 4) has its term-2 entry on s1-s3; s5 holds a term-3 entry there and
    # could still win the votes of s2, s3 and s4, whose logs end in earlier terms.
    digests, views = _cluster(
        {"s1": [1, 2, 4], "s2": [1, 2], "s3": [1, 2], "s4": [1], "s5": [1, 3]}
    )
    problem = _commit(digests, views, "s1", 2)
    assert "s5, which lacks it, could be elected" in problem
