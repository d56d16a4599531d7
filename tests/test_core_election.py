"""Leader election: §5.1, §5.2, §5.4.1 of the Raft paper, and pre-vote / check-quorum from
Ongaro's thesis (§9.6, §6.2, §4.2.3)."""

from __future__ import annotations

import pytest

from raft.core.messages import (
    AppendEntries,
    ClientRequest,
    Envelope,
    RequestVote,
    RequestVoteResponse,
)
from raft.core.state import Config, Role
from tests.helpers import (
    CONFIG,
    SERVERS,
    ack,
    append,
    deliver,
    make_leader,
    sent,
    server,
    vote_request,
)


def test_follower_that_hears_nothing_starts_a_pre_vote_without_changing_its_term() -> None:
    s = server(term=3)
    s.tick(0)
    s.tick(CONFIG.election_timeout_max)
    requests = [e.message for e in sent(s)]
    assert s.state.role is Role.PRE_CANDIDATE
    assert s.state.current_term == 3
    assert requests and all(
        isinstance(m, RequestVote) and m.pre_vote and m.term == 4 for m in requests
    )


def test_pre_candidate_with_a_majority_of_pre_votes_becomes_candidate_in_the_next_term() -> None:
    s = server(term=3)
    s.tick(0)
    s.tick(CONFIG.election_timeout_max)
    sent(s)
    out = deliver(s, "s2", RequestVoteResponse(4, "s2", True, pre_vote=True), now=400)
    assert s.state.role is Role.CANDIDATE
    assert s.state.current_term == 4 and s.state.voted_for == "s1"
    assert all(isinstance(m, RequestVote) and not m.pre_vote and m.term == 4 for m in out)


def test_candidate_with_a_majority_becomes_leader_and_appends_a_no_op() -> None:
    s = server(term=1, log=(1,))
    make_leader(s)
    assert s.state.role is Role.LEADER and s.state.current_term == 2
    assert s.state.log[-1].term == 2 and s.state.log[-1].client_id == ""


def test_duplicated_vote_responses_are_counted_once() -> None:
    s = server(servers=SERVERS, term=1)
    s.tick(0)
    s.tick(1000)
    for voter in ("s2", "s3", "s4", "s5"):
        deliver(s, voter, RequestVoteResponse(2, voter, True, pre_vote=True), now=1000)
        if s.state.role is Role.CANDIDATE:
            break
    assert s.state.role is Role.CANDIDATE
    for _ in range(5):
        deliver(s, "s2", RequestVoteResponse(s.state.current_term, "s2", True), now=1001)
    assert s.state.role is Role.CANDIDATE, "one voter, however often repeated, is not a majority"


def test_vote_granted_once_per_term() -> None:
    s = server(term=2)
    first = deliver(s, "s2", vote_request(3, "s2", 0, 0))
    second = deliver(s, "s3", vote_request(3, "s3", 0, 0))
    assert first == [RequestVoteResponse(3, "s1", True)]
    assert second == [RequestVoteResponse(3, "s1", False)]
    assert s.state.voted_for == "s2"


def test_repeated_vote_request_from_the_same_candidate_is_granted_again() -> None:
    s = server(term=2)
    deliver(s, "s2", vote_request(3, "s2", 0, 0))
    again = deliver(s, "s2", vote_request(3, "s2", 0, 0))
    assert again == [RequestVoteResponse(3, "s1", True)]


def test_vote_refused_to_a_candidate_whose_last_term_is_older() -> None:
    # §5.4.1: a longer log with an older last term is less up to date.
    s = server(term=3, log=(1, 3))
    out = deliver(s, "s2", vote_request(4, "s2", last_index=5, last_term=2))
    assert out == [RequestVoteResponse(4, "s1", False)]


def test_vote_granted_to_a_candidate_with_a_newer_last_term_and_shorter_log() -> None:
    s = server(term=3, log=(1, 1, 1, 2))
    out = deliver(s, "s2", vote_request(4, "s2", last_index=2, last_term=3))
    assert out == [RequestVoteResponse(4, "s1", True)]


def test_vote_refused_to_a_candidate_with_the_same_last_term_and_shorter_log() -> None:
    s = server(term=3, log=(1, 3, 3))
    out = deliver(s, "s2", vote_request(4, "s2", last_index=2, last_term=3))
    assert out == [RequestVoteResponse(4, "s1", False)]


def test_vote_request_from_an_older_term_is_refused_with_the_current_term() -> None:
    s = server(term=5)
    assert deliver(s, "s2", vote_request(4, "s2", 9, 9)) == [RequestVoteResponse(5, "s1", False)]


def test_higher_term_in_an_append_entries_makes_a_leader_step_down() -> None:
    s = server(term=1)
    make_leader(s)
    deliver(s, "s2", append(7, "s2", 0, 0, []), now=1001)
    assert s.state.role is Role.FOLLOWER
    assert s.state.current_term == 7 and s.state.leader_id == "s2" and s.state.voted_for == ""


def test_higher_term_in_a_response_makes_a_leader_step_down() -> None:
    s = server(term=1)
    make_leader(s)
    deliver(s, "s2", RequestVoteResponse(9, "s2", False), now=1001)
    assert s.state.role is Role.FOLLOWER and s.state.current_term == 9


def test_candidate_that_hears_from_the_leader_of_its_term_becomes_follower() -> None:
    s = server(term=1)
    s.tick(0)
    s.tick(CONFIG.election_timeout_max)
    deliver(s, "s2", RequestVoteResponse(2, "s2", True, pre_vote=True), now=300)
    assert s.state.role is Role.CANDIDATE
    deliver(s, "s3", append(2, "s3", 0, 0, []), now=301)
    assert s.state.role is Role.FOLLOWER and s.state.leader_id == "s3"


def test_pre_vote_request_never_changes_the_receivers_term_or_vote() -> None:
    s = server(term=2, voted_for="s3")
    out = deliver(s, "s2", vote_request(9, "s2", 0, 0, pre_vote=True), now=10_000)
    assert s.state.current_term == 2 and s.state.voted_for == "s3"
    assert out == [RequestVoteResponse(9, "s1", True, pre_vote=True)]


def test_pre_vote_refused_while_the_receiver_hears_from_a_leader() -> None:
    s = server(term=2)
    deliver(s, "s3", append(2, "s3", 0, 0, []), now=1000)
    out = deliver(s, "s2", vote_request(3, "s2", 0, 0, pre_vote=True), now=1050)
    assert out == [RequestVoteResponse(2, "s1", False, pre_vote=True)]


def test_higher_term_vote_request_is_ignored_by_a_follower_that_hears_its_leader() -> None:
    # Thesis §4.2.3: within the minimum election timeout of hearing from the leader, a vote
    # request is ignored, term and all.
    s = server(term=2)
    deliver(s, "s3", append(2, "s3", 0, 0, []), now=1000)
    out = deliver(s, "s2", vote_request(8, "s2", 5, 5), now=1050)
    assert out == [RequestVoteResponse(2, "s1", False)]
    assert s.state.current_term == 2 and s.state.leader_id == "s3"


def test_leader_without_a_quorum_of_responses_steps_down() -> None:
    s = server(term=1)
    make_leader(s, now=1000)
    s.tick(1000 + CONFIG.election_timeout_min)
    assert s.state.role is Role.FOLLOWER and s.state.leader_id == ""


def test_leader_with_a_quorum_of_responses_stays_leader() -> None:
    s = server(term=1)
    make_leader(s, now=1000)
    deliver(s, "s2", ack(2, "s2", 0), now=1100)
    s.tick(1000 + CONFIG.election_timeout_min)
    assert s.state.role is Role.LEADER


def test_leader_heartbeats_each_follower_a_heartbeat_interval_after_its_last_message() -> None:
    s = server(term=1)
    make_leader(s, now=1000)
    hb = CONFIG.heartbeat_interval
    s.tick(1000 + hb - 1)
    assert not sent(s), "the election's own AppendEntries went out at 1000"
    s.tick(1000 + hb)
    beats = [e for e in sent(s) if isinstance(e.message, AppendEntries)]
    assert sorted(e.to for e in beats) == ["s2", "s3"]
    s.tick(1000 + hb + 1)
    assert not sent(s), "no second heartbeat within the interval"


def test_follower_that_received_entries_recently_gets_no_extra_heartbeat() -> None:
    s = server(term=1)
    make_leader(s, now=1000)
    hb = CONFIG.heartbeat_interval
    deliver(s, "s2", ack(2, "s2", 1), now=1000 + hb // 2)
    s.step(Envelope("c", "s1", ClientRequest("c", 1, "{}", "c")), 1000 + hb // 2)
    assert [e.to for e in sent(s) if isinstance(e.message, AppendEntries)] == ["s2"]
    s.tick(1000 + hb)
    assert [e.to for e in sent(s) if isinstance(e.message, AppendEntries)] == ["s3"]
    s.tick(1000 + hb + hb // 2)
    assert [e.to for e in sent(s) if isinstance(e.message, AppendEntries)] == ["s2"]


def test_under_steady_load_no_follower_waits_more_than_a_heartbeat_interval() -> None:
    """The gap between two messages to a follower is at most the heartbeat interval when
    ticks come promptly, however proposals fall between heartbeats (a suppressed heartbeat
    used to let it reach almost twice the interval)."""
    s = server(term=1)
    make_leader(s, now=1000)
    hb = CONFIG.heartbeat_interval
    last = {"s2": 1000, "s3": 1000}
    worst = 0
    for now in range(1001, 3000):
        if now % 37 == 0:
            s.step(Envelope("c", "s1", ClientRequest("c", now, "{}", "c")), now)
        s.tick(now)
        for envelope in sent(s):
            worst = max(worst, now - last[envelope.to])
            last[envelope.to] = now
            follower = envelope.to
            m = envelope.message
            if isinstance(m, AppendEntries):
                match = m.prev_log_index + len(m.entries)
                deliver(s, follower, ack(m.term, follower, match), now)
    assert worst <= hb


def test_config_refuses_timing_that_a_heartbeat_gap_can_exceed() -> None:
    with pytest.raises(ValueError, match="twice heartbeat_interval"):
        Config(election_timeout_min=150, election_timeout_max=300, heartbeat_interval=100)


def test_single_server_cluster_elects_itself() -> None:
    s = server(servers=("s1",))
    s.tick(0)
    s.tick(CONFIG.election_timeout_max)
    assert s.state.role is Role.LEADER and s.state.current_term == 1


def test_election_timeouts_are_randomized_and_reproducible() -> None:
    deadlines = []
    for _ in range(2):
        s = server()
        seen = []
        for now in range(0, 5000, 400):
            s.tick(now)
            seen.append(s.state.election_deadline - now)
        deadlines.append(seen)
    assert deadlines[0] == deadlines[1]
    assert len(set(deadlines[0])) > 3


def test_times_set_by_an_instance_whose_clock_ran_ahead_are_pulled_back() -> None:
    s = server(term=2)
    deliver(s, "s3", append(2, "s3", 0, 0, []), now=60_000)  # an instance 60 s ahead
    s.tick(1000)
    assert s.state.leader_contact == 1000
    assert s.state.election_deadline <= 1000 + CONFIG.election_timeout_max
    # So the lease ends and an election can happen on this instance's clock.
    out = deliver(
        s, "s2", vote_request(3, "s2", 0, 0, pre_vote=True), now=1000 + CONFIG.election_timeout_min
    )
    assert out == [RequestVoteResponse(3, "s1", True, pre_vote=True)]
