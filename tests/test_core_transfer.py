"""Leadership transfer (thesis §3.10): TimeoutNow to a caught-up target, no proposals
meanwhile, abandoned after an election timeout."""

from __future__ import annotations

from raft.core.messages import (
    ClientRequest,
    ClientResponse,
    ClientStatus,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
    TransferLeadership,
)
from raft.core.server import RaftServer
from raft.core.state import Role
from tests.helpers import CONFIG, ack, append, deliver, entries, make_leader, server


def leader_with_followers_at(match: dict[str, int]) -> RaftServer:
    leader = server("s1", term=1, log=(1, 1), commit=2)
    make_leader(leader, 1000)  # term 2; its no-op is index 3
    for follower, index in match.items():
        deliver(leader, follower, ack(2, follower, index), 1000)
    return leader


def test_a_caught_up_target_is_told_to_time_out_at_once() -> None:
    leader = leader_with_followers_at({"s2": 3, "s3": 3})
    out = deliver(leader, "operator", TransferLeadership("s2"), 1010)
    assert out == [TimeoutNow(2, "s1")]


def test_a_lagging_target_is_caught_up_first() -> None:
    leader = leader_with_followers_at({"s2": 3, "s3": 2})
    out = deliver(leader, "operator", TransferLeadership("s3"), 1010)
    assert not any(isinstance(m, TimeoutNow) for m in out)
    assert deliver(leader, "s3", ack(2, "s3", 3), 1020) == [TimeoutNow(2, "s1")]


def test_the_leader_takes_no_proposals_while_transferring() -> None:
    leader = leader_with_followers_at({"s2": 3, "s3": 2})
    deliver(leader, "operator", TransferLeadership("s3"), 1010)
    (refused,) = deliver(leader, "client", ClientRequest("c", 1, "{}", "c"), 1020)
    assert isinstance(refused, ClientResponse) and refused.status is ClientStatus.OVERLOADED
    assert leader.state.last_index == 3


def test_a_transfer_that_does_not_complete_in_an_election_timeout_is_abandoned() -> None:
    leader = leader_with_followers_at({"s2": 3, "s3": 2})
    deliver(leader, "operator", TransferLeadership("s3"), 1010)
    leader.tick(1010 + CONFIG.election_timeout_max)
    assert leader.state.transfer_to == "" and leader.state.role is Role.LEADER


def test_timeout_now_makes_the_follower_campaign_at_once_past_leases() -> None:
    follower = server("s2", term=2)
    deliver(follower, "s1", append(2, "s1", 0, 0, entries(2), commit=1), 1000)
    out = deliver(follower, "s1", TimeoutNow(2, "s1"), 1001)
    assert follower.state.role is Role.CANDIDATE and follower.state.current_term == 3
    assert {m.transfer for m in out if isinstance(m, RequestVote)} == {True}
    # A peer that heard from the leader just now still grants it (no lease for transfers).
    peer = server("s3", term=2)
    deliver(peer, "s1", append(2, "s1", 0, 0, entries(2), commit=1), 1000)
    vote = next(m for m in out if isinstance(m, RequestVote))
    (answer,) = deliver(peer, "s2", vote, 1002)
    assert isinstance(answer, RequestVoteResponse) and answer.granted


def test_timeout_now_from_anyone_but_the_current_leader_is_ignored() -> None:
    follower = server("s2", term=2)
    deliver(follower, "s1", append(2, "s1", 0, 0, entries(2), commit=1), 1000)
    deliver(follower, "s3", TimeoutNow(2, "s3"), 1001)
    assert follower.state.role is Role.FOLLOWER
