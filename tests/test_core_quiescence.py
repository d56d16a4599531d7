"""Quiescence: a settled group stops heartbeating and wakes on work or a missed check
(the leader's check interval is Config.quiesce_interval: 200 heartbeats by default)."""

from __future__ import annotations

import pytest

from raft.core.messages import AppendEntries, ClientRequest, RequestVoteResponse
from raft.core.server import RaftServer
from raft.core.state import Config, Role
from tests.helpers import (
    CONFIG,
    ack,
    append,
    deliver,
    entries,
    make_leader,
    sent,
    server,
    vote_request,
)

CHECK = CONFIG.quiesce_interval


def settled_leader(now: int = 1000) -> RaftServer:
    """A leader of term 1 whose followers both hold and acknowledged its whole log."""
    leader = server("s1")
    make_leader(leader, now)
    last = leader.state.last_index
    for follower in ("s2", "s3"):
        deliver(leader, follower, ack(1, follower, last), now)
    assert leader.state.commit_index == last
    return leader


def appends(target: RaftServer) -> list[AppendEntries]:
    return [e.message for e in sent(target) if isinstance(e.message, AppendEntries)]


def test_a_settled_leader_tells_its_followers_to_quiesce_then_goes_quiet() -> None:
    leader = settled_leader()
    leader.tick(1000 + CONFIG.heartbeat_interval)
    told = appends(leader)
    assert len(told) == 2 and all(m.quiesce for m in told)
    assert all(m.leader_commit == leader.state.last_index for m in told)
    for now in range(1100, 1000 + CHECK, 50):
        leader.tick(now)
        assert appends(leader) == []


def test_a_quiescent_leader_checks_its_followers_once_per_check_interval() -> None:
    leader = settled_leader()
    leader.tick(1050)
    sent(leader)
    for follower in ("s2", "s3"):
        deliver(leader, follower, ack(1, follower, leader.state.last_index), 1060)
    leader.tick(1050 + CHECK)
    assert [m.quiesce for m in appends(leader)] == [True, True]


def test_a_quiescent_leader_that_hears_from_no_majority_steps_down() -> None:
    leader = settled_leader()
    leader.tick(1050)
    sent(leader)
    leader.tick(1050 + CHECK)  # the check round goes out, and nobody answers
    sent(leader)
    leader.tick(1050 + CHECK + CONFIG.election_timeout_min)
    assert leader.state.role is Role.FOLLOWER


def test_a_proposal_wakes_the_leader_and_its_followers() -> None:
    leader = settled_leader()
    leader.tick(1050)
    sent(leader)
    out = deliver(leader, "client", ClientRequest("c", 1, "{}", "c"), 1100)
    replication = [m for m in out if isinstance(m, AppendEntries)]
    assert not leader.state.quiescent
    assert replication and not any(m.quiesce for m in replication)


def test_a_vote_request_makes_a_quiescent_leader_repeat_its_round_at_once() -> None:
    # The follower whose timer ran out missed the quiesce message: it gets another.
    leader = settled_leader()
    leader.tick(1050)
    sent(leader)
    deliver(leader, "s2", vote_request(2, "s2", leader.state.last_index, 1, pre_vote=True))
    leader.tick(1200)
    assert [m.quiesce for m in appends(leader)] == [True, True]


def quiescent_follower(now: int = 1000) -> RaftServer:
    follower = server("s2")
    follower.tick(0)
    deliver(follower, "s1", append(1, "s1", 0, 0, entries(1), commit=1), now)
    quiesce = AppendEntries(1, "s1", 1, 1, (), 1, quiesce=True)
    deliver(follower, "s1", quiesce, now)
    assert follower.state.quiescent
    return follower


def test_a_quiescent_follower_waits_for_the_check_interval_before_an_election() -> None:
    follower = quiescent_follower()
    follower.tick(1000 + CONFIG.election_timeout_max + 1)
    assert follower.state.role is Role.FOLLOWER and sent(follower) == []
    follower.tick(1000 + CHECK + CONFIG.election_timeout_max + 1)
    assert follower.state.role is Role.PRE_CANDIDATE


def test_a_quiescent_follower_refuses_pre_votes_while_the_leader_is_promised_quiet() -> None:
    follower = quiescent_follower()
    (answer,) = deliver(follower, "s3", vote_request(2, "s3", 5, 1, pre_vote=True), 1000 + 400)
    assert isinstance(answer, RequestVoteResponse) and not answer.granted


def test_a_follower_that_is_behind_does_not_quiesce() -> None:
    follower = server("s2")
    follower.tick(0)
    quiesce = AppendEntries(1, "s1", 0, 0, (), 1, quiesce=True)  # commit 1, but no entry 1
    deliver(follower, "s1", quiesce, 1000)
    assert not follower.state.quiescent


def test_an_ordinary_append_entries_wakes_a_quiescent_follower() -> None:
    follower = quiescent_follower()
    deliver(follower, "s1", append(1, "s1", 1, 1, entries(1, 1)[1:], commit=1), 1500)
    assert not follower.state.quiescent


def test_config_refuses_a_check_interval_within_the_election_timeout() -> None:
    with pytest.raises(ValueError, match="quiesce"):
        Config(quiesce_check_interval=300)
    assert Config(quiesce=False, quiesce_check_interval=300).quiesce is False


def test_a_late_copy_of_an_earlier_append_entries_leaves_a_follower_quiescent() -> None:
    # Sent before the group quiesced and delivered after: it brings nothing new, so the
    # follower keeps waiting for the leader's check round instead of a heartbeat.
    follower = quiescent_follower()
    deliver(follower, "s1", append(1, "s1", 0, 0, entries(1), commit=1), 1500)
    assert follower.state.quiescent
    follower.tick(1500 + CONFIG.election_timeout_max + 1)
    assert follower.state.role is Role.FOLLOWER
