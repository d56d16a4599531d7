"""Membership change, one server at a time (thesis §4.1): a configuration entry takes effect
when appended, a leader allows one uncommitted change, and only once it has committed an entry
of its own term."""

from __future__ import annotations

from raft.core.messages import (
    AppendEntries,
    ChangeMembership,
    Entry,
    RequestVote,
)
from raft.core.server import RaftServer
from raft.core.state import Role, ServerState
from tests.helpers import CONFIG, ack, append, committed_leader, deliver, make_leader, server


def test_adding_a_server_appends_a_configuration_entry_that_takes_effect_at_once() -> None:
    leader = committed_leader()
    out = deliver(leader, "operator", ChangeMembership("s4", add=True), 1010)
    assert leader.state.log[-1].servers == ("s1", "s2", "s3", "s4")
    assert leader.state.servers == ("s1", "s2", "s3", "s4") and leader.state.quorum == 3
    assert {m for m in out if isinstance(m, AppendEntries)} and "s4" in leader.state.progress


def test_a_second_change_waits_until_the_first_is_committed() -> None:
    leader = committed_leader()
    deliver(leader, "operator", ChangeMembership("s4", add=True), 1010)
    deliver(leader, "operator", ChangeMembership("s5", add=True), 1011)
    assert leader.state.servers == ("s1", "s2", "s3", "s4")
    for follower in ("s2", "s3"):
        deliver(leader, follower, ack(1, follower, 2), 1020)
    assert leader.state.commit_index == 2
    deliver(leader, "operator", ChangeMembership("s5", add=True), 1030)
    assert leader.state.servers == ("s1", "s2", "s3", "s4", "s5")


def test_a_new_leader_changes_nothing_before_committing_an_entry_of_its_term() -> None:
    leader = server("s1", term=1, log=(1,), commit=1)
    make_leader(leader, 1000)  # term 2: its no-op at index 2 is not committed
    deliver(leader, "operator", ChangeMembership("s4", add=True), 1010)
    assert leader.state.servers == ("s1", "s2", "s3")


def test_removing_a_follower_stops_replication_to_it() -> None:
    leader = committed_leader()
    deliver(leader, "operator", ChangeMembership("s3", add=False), 1010)
    assert leader.state.servers == ("s1", "s2") and "s3" not in leader.state.progress
    deliver(leader, "s2", ack(1, "s2", 2), 1020)
    assert leader.state.commit_index == 2  # s1 and s2 are a majority of two


def test_a_leader_that_removes_itself_steps_down_once_the_change_commits() -> None:
    leader = committed_leader()
    deliver(leader, "operator", ChangeMembership("s1", add=False), 1010)
    assert leader.state.role is Role.LEADER  # it manages the change without counting itself
    deliver(leader, "s2", ack(1, "s2", 2), 1020)
    assert leader.state.role is Role.LEADER and leader.state.commit_index == 1
    deliver(leader, "s3", ack(1, "s3", 2), 1020)
    assert leader.state.commit_index == 2 and leader.state.role is Role.FOLLOWER


def test_a_follower_uses_a_configuration_as_soon_as_it_is_appended_and_drops_it_if_truncated():
    follower = server("s2")
    bigger = Entry(1, servers=("s1", "s2", "s3", "s4"))
    deliver(follower, "s1", append(1, "s1", 0, 0, [Entry(1), bigger]), 1000)
    assert follower.state.servers == ("s1", "s2", "s3", "s4")
    deliver(follower, "s1", append(2, "s1", 1, 1, [Entry(2)]), 1100)  # a new leader overwrites
    assert follower.state.servers == ("s1", "s2", "s3")


def test_a_spare_never_campaigns_and_joins_when_a_leader_sends_it_the_log() -> None:
    spare = RaftServer(ServerState("s4", (), rng=3), CONFIG)
    spare.tick(0)
    spare.tick(10 * CONFIG.election_timeout_max)
    assert spare.state.role is Role.FOLLOWER
    joined = Entry(1, servers=("s1", "s2", "s3", "s4"))
    (answer,) = deliver(spare, "s1", append(1, "s1", 0, 0, [Entry(1), joined], commit=1), 5000)
    assert answer.success and spare.state.servers == joined.servers  # type: ignore[union-attr]


def test_a_removed_server_cannot_disrupt_the_cluster_with_vote_requests() -> None:
    member = server("s2")
    deliver(member, "s1", append(1, "s1", 0, 0, [Entry(1, servers=("s1", "s2", "s3"))]), 1000)
    assert deliver(member, "s9", RequestVote(9, "s9", 5, 5), 2000) == []
    assert member.state.current_term == 1
