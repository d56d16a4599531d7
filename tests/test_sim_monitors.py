"""The snapshot-aware safety monitors on hand-made saves (the simulator calls them after
every save that can matter to them)."""

from __future__ import annotations

from typing import Any

from raft.core.messages import Entry
from raft.core.state import Snapshot
from raft.ports.store import Change
from raft.sim.monitors import (
    CommitSafety,
    ConfigurationSafety,
    Liveness,
    LogDigests,
    SnapshotSafety,
    Stability,
    StateMachineSafety,
)
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


def test_liveness_allows_any_number_of_steps_within_its_virtual_time() -> None:
    monitor = Liveness(bound_ms=3000)
    monitor.start(now=1000, step=200)
    # Many delayed messages falling due at once: a thousand steps in one virtual ms.
    assert monitor.after_step(now=1001, step=1200, unfinished="no leader was elected") is None
    assert monitor.after_step(now=4000, step=1201, unfinished="no leader was elected") is None


def test_liveness_is_violated_once_its_virtual_time_has_passed() -> None:
    monitor = Liveness(bound_ms=3000)
    monitor.start(now=1000, step=200)
    problem = monitor.after_step(now=4001, step=300, unfinished="s2 had not applied up to 7")
    assert problem == "s2 had not applied up to 7 3000 virtual ms after faults stopped"
    assert monitor.after_step(now=4001, step=300, unfinished=None) is None


def test_liveness_reports_a_message_storm_that_does_not_let_time_pass() -> None:
    monitor = Liveness(bound_ms=100, steps_per_ms=10)
    monitor.start(now=0, step=0)
    problem = monitor.after_step(now=5, step=1001, unfinished="no leader was elected")
    assert problem is not None and "message storm" in problem


def test_a_new_term_at_rest_breaks_stability() -> None:
    monitor = Stability(2, "s1", 0, 0, servers=3, window_ms=350, heartbeat_ms=50, forward_hops=2)
    assert monitor.after_step(2, "leader") is None
    problem = monitor.after_step(3, "leader")
    assert problem == "term 3 started after term 2, with no fault and the leader up"


def test_a_leader_stepping_down_at_rest_breaks_stability() -> None:
    monitor = Stability(2, "s1", 0, 0, servers=3, window_ms=350, heartbeat_ms=50, forward_hops=2)
    assert monitor.after_step(2, "follower") == "leader s1 became follower with no fault"


def test_more_messages_than_heartbeats_and_commands_need_is_a_cost_violation() -> None:
    # 2 followers, 350 / 50 + 1 intervals: 16 AppendEntries and 16 responses; 3 answers to
    # messages in flight when the window opens; and per command 4, plus 2 forwards: 12 more.
    monitor = Stability(2, "s1", 100, 3, servers=3, window_ms=350, heartbeat_ms=50, forward_hops=2)
    assert monitor.at_end(100 + 47, rounds=2) is None
    problem = monitor.at_end(100 + 48, rounds=2)
    assert problem is not None and "more than the 47" in problem


def _config_log(*configs: tuple[str, ...]) -> SaveEvent:
    view = PersistedView()
    view.log = [Entry(1, servers=c) for c in configs]
    return SaveEvent("s1", None, Change(state={}, log_from=1), 0, view)


def test_a_configuration_one_server_away_from_the_last_is_accepted() -> None:
    event = _config_log(SERVERS[:4], SERVERS[:3], SERVERS[:4])
    assert ConfigurationSafety(SERVERS[:3]).on_save(event) is None


def test_a_configuration_two_servers_away_from_the_last_is_reported() -> None:
    problem = ConfigurationSafety(SERVERS[:3]).on_save(_config_log(SERVERS))
    assert problem is not None and "majorities of the two may not meet" in problem
