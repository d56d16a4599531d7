"""Log replication and commitment: §5.3, §5.4.2 (Figure 8), Figure 7's follower logs, and the
flow control the paper leaves to implementations (batching, pipelining, backtracking)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    Entry,
    Envelope,
    InstallSnapshot,
)
from raft.core.server import RaftServer
from raft.core.state import Replication, Role, ServerState, Snapshot
from tests.helpers import (
    CONFIG,
    SERVERS,
    ack,
    append,
    deliver,
    entries,
    make_leader,
    sent,
    server,
)

FIGURE_7_LEADER = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)
FIGURE_7_FOLLOWERS = {
    "a": (1, 1, 1, 4, 4, 5, 5, 6, 6),
    "b": (1, 1, 1, 4),
    "c": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6),
    "d": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7),
    "e": (1, 1, 1, 4, 4, 4, 4),
    "f": (1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3),
}


def exchange(leader: RaftServer, follower: RaftServer, now: int = 2000) -> int:
    """Deliver messages between the two until both are quiet; return AppendEntries sent."""
    pending = [e for e in sent(leader) if e.to == follower.state.server_id]
    rounds = 0
    while pending:
        for envelope in pending:
            if isinstance(envelope.message, AppendEntries):
                rounds += 1
                follower.step(envelope, now)
            else:
                leader.step(envelope, now)
        pending = [e for e in sent(follower) if e.to == leader.state.server_id]
        pending += [e for e in sent(leader) if e.to == follower.state.server_id]
    return rounds


@pytest.mark.parametrize("case", sorted(FIGURE_7_FOLLOWERS))
def test_figure_7_follower_log_converges_to_the_leaders(case: str) -> None:
    leader = server("s1", servers=SERVERS, term=7, log=FIGURE_7_LEADER)
    make_leader(leader)
    follower = server("s2", servers=SERVERS, term=7, log=FIGURE_7_FOLLOWERS[case])
    # The first heartbeat period was the election's own AppendEntries; the next one sends.
    leader.tick(1000 + CONFIG.heartbeat_interval)
    leader.tick(1000 + 2 * CONFIG.heartbeat_interval)
    rounds = exchange(leader, follower)
    assert [e.term for e in follower.state.log] == [e.term for e in leader.state.log]
    assert follower.state.log == leader.state.log
    # Backtracking skips a whole term per round trip, not one entry at a time.
    assert rounds <= 5


def test_follower_with_missing_entries_reports_where_its_log_ends() -> None:
    follower = server("s2", term=2, log=(1, 1))
    out = deliver(follower, "s1", append(2, "s1", 5, 2, entries(2)))
    assert out == [AppendEntriesResponse(2, "s2", False, 0, conflict_index=3, conflict_term=0)]


def test_follower_with_a_conflicting_term_reports_the_first_index_of_that_term() -> None:
    follower = server("s2", term=3, log=(1, 2, 2, 2))
    out = deliver(follower, "s1", append(3, "s1", 4, 3, []))
    assert out == [AppendEntriesResponse(3, "s2", False, 0, conflict_index=2, conflict_term=2)]


def test_conflicting_suffix_is_replaced_by_the_leaders_entries() -> None:
    follower = server("s2", term=3, log=(1, 1, 2, 2))
    new = [Entry(3, "c", 99, "new")]
    out = deliver(follower, "s1", append(3, "s1", 2, 1, new))
    assert [e.term for e in follower.state.log] == [1, 1, 3]
    assert follower.state.log[-1] == new[0]
    assert out == [AppendEntriesResponse(3, "s2", True, 3)]


def test_stale_append_entries_never_removes_matching_entries() -> None:
    follower = server("s2", term=2, log=(1, 1, 2, 2))
    log = list(follower.state.log)
    # A delayed copy of an earlier message that carried only the first two entries.
    out = deliver(follower, "s1", append(2, "s1", 0, 0, log[:2]))
    assert follower.state.log == log
    assert out == [AppendEntriesResponse(2, "s2", True, 2)]


def test_reordered_append_entries_are_accepted_once_their_prefix_arrives() -> None:
    follower = server("s2", term=1)
    log = entries(1, 1, 1, 1)
    early = deliver(follower, "s1", append(1, "s1", 2, 1, log[2:]))
    assert isinstance(early[0], AppendEntriesResponse) and not early[0].success
    deliver(follower, "s1", append(1, "s1", 0, 0, log[:2]))
    deliver(follower, "s1", append(1, "s1", 2, 1, log[2:]))
    assert follower.state.log == log


def test_duplicated_append_entries_leave_the_log_unchanged() -> None:
    follower = server("s2", term=1)
    message = append(1, "s1", 0, 0, entries(1, 1))
    for _ in range(3):
        deliver(follower, "s1", message)
    assert follower.state.log == entries(1, 1)


def test_follower_commit_is_bounded_by_the_last_entry_the_leader_vouched_for() -> None:
    # Figure 2, receiver rule 5: min(leaderCommit, index of last new entry).
    follower = server("s2", term=2, log=(1, 1, 1, 1, 1))
    deliver(follower, "s1", append(2, "s1", 1, 1, follower.state.log[1:2], commit=5))
    assert follower.state.commit_index == 2


def test_follower_commit_never_moves_backwards() -> None:
    follower = server("s2", term=2, log=(1, 1, 1), commit=3)
    deliver(follower, "s1", append(2, "s1", 0, 0, follower.state.log[:1], commit=3))
    assert follower.state.commit_index == 3


def test_append_entries_from_an_older_term_is_refused() -> None:
    follower = server("s2", term=5, log=(1,))
    out = deliver(follower, "s1", append(4, "s1", 1, 1, entries(4)))
    assert out == [AppendEntriesResponse(5, "s2", False)]
    assert len(follower.state.log) == 1


def test_leader_commits_an_entry_stored_on_a_majority() -> None:
    leader = server("s1", servers=SERVERS, term=1)
    make_leader(leader)
    deliver(leader, "s2", ack(2, "s2", 1))
    assert leader.state.commit_index == 0
    deliver(leader, "s3", ack(2, "s3", 1))
    assert leader.state.commit_index == 1


def test_figure_8_leader_does_not_commit_an_old_term_entry_by_counting_replicas() -> None:
    # S1 was leader in term 2 and wrote index 2; now it leads term 4 and has replicated index 2
    # (term 2) to a majority. Counting replicas must not commit it: a server with a term-3
    # entry at index 2 could still be elected and overwrite it (§5.4.2).
    leader = server("s1", servers=SERVERS, term=3, log=(1, 2))
    make_leader(leader)
    assert leader.state.current_term == 4
    deliver(leader, "s2", ack(4, "s2", 2))
    deliver(leader, "s3", ack(4, "s3", 2))
    assert leader.state.commit_index == 0
    # Once the term-4 no-op is on a majority, it and everything before it commit.
    deliver(leader, "s2", ack(4, "s2", 3))
    deliver(leader, "s3", ack(4, "s3", 3))
    assert leader.state.commit_index == 3


def test_leader_backtracks_past_a_whole_conflicting_term_in_one_step() -> None:
    leader = server("s1", term=5, log=(1, 1, 4, 4, 4, 5))
    make_leader(leader)
    reply = AppendEntriesResponse(6, "s2", False, 0, conflict_index=3, conflict_term=3)
    out = deliver(leader, "s2", reply)
    (retry,) = [m for m in out if isinstance(m, AppendEntries)]
    assert retry.prev_log_index == 2


def test_leader_jumps_to_its_last_entry_of_the_conflicting_term() -> None:
    leader = server("s1", term=5, log=(1, 1, 4, 4, 4, 5))
    make_leader(leader)
    reply = AppendEntriesResponse(6, "s2", False, 0, conflict_index=3, conflict_term=4)
    out = deliver(leader, "s2", reply)
    (retry,) = [m for m in out if isinstance(m, AppendEntries)]
    assert retry.prev_log_index == 5


def test_a_stale_rejection_never_moves_next_index_below_the_match_index() -> None:
    leader = server("s1", term=1)
    make_leader(leader)
    deliver(leader, "s2", ack(2, "s2", 1))
    deliver(leader, "s2", AppendEntriesResponse(2, "s2", False, 0, conflict_index=1))
    progress = leader.state.progress["s2"]
    assert progress.next == 2 and progress.match == 1


def test_follower_is_caught_up_after_a_lost_message_past_a_million_entry_term() -> None:
    # Review finding: backtracking once searched at most a million entries back, so the probe
    # could land inside a long shared run; if the message carrying the divergence point was
    # then lost, later rejections were ignored as stale and the follower never caught up.
    run = 1_100_000
    leader = RaftServer(
        ServerState(
            "s1",
            SERVERS[:3],
            rng=1,
            current_term=7,
            log=[Entry(5)] * run + [Entry(6)] * 10,
            commit_index=run,
        ),
        CONFIG,
    )
    follower = RaftServer(
        ServerState(
            "s2", SERVERS[:3], rng=2, current_term=7, log=[Entry(5)] * (run + 50), commit_index=run
        ),
        CONFIG,
    )
    leader.become_leader(0)
    out = list(leader.ready().messages)
    lost = False
    for now in range(20, 2000, 20):
        for envelope in [e for e in out if e.to == "s2"]:
            m = envelope.message
            assert isinstance(m, AppendEntries)
            if (
                not lost
                and m.entries
                and m.prev_log_index <= run < m.prev_log_index + len(m.entries)
            ):
                lost = True
                continue
            follower.step(envelope, now)
        for reply in follower.ready().messages:
            leader.step(reply, now)
        leader.tick(now)
        out = list(leader.ready().messages)
    assert lost
    assert follower.state.log == leader.state.log


def propose(leader: RaftServer, count: int, size: int = 10) -> None:
    for seq in range(1, count + 1):
        leader.step(Envelope("c", "s1", ClientRequest("c", seq, "x" * size, "c")), 1000)


def test_one_append_entries_carries_many_entries() -> None:
    leader = server("s1", term=1)
    make_leader(leader)
    deliver(leader, "s2", ack(2, "s2", 1))
    propose(leader, 50)
    to_s2 = [e.message for e in sent(leader) if e.to == "s2"]
    assert len(to_s2) == 1 and isinstance(to_s2[0], AppendEntries)
    assert len(to_s2[0].entries) == 50


def test_append_entries_batches_are_bounded_in_count_and_bytes() -> None:
    config = replace(
        CONFIG,
        max_entries_per_message=8,
        max_bytes_per_message=1000,
    )
    leader = server("s1", term=1, config=config)
    make_leader(leader)
    deliver(leader, "s2", ack(2, "s2", 1))
    propose(leader, 20, size=200)
    batches = [e.message for e in sent(leader) if e.to == "s2"]
    assert all(isinstance(m, AppendEntries) for m in batches)
    assert all(
        len(m.entries) <= 8 and sum(e.size for e in m.entries) <= 1000
        for m in batches
        if isinstance(m, AppendEntries)
    )


def test_leader_pipelines_up_to_the_inflight_limit_to_a_matching_follower() -> None:
    config = replace(
        CONFIG,
        max_entries_per_message=2,
        max_inflight_messages=3,
    )
    leader = server("s1", term=1, config=config)
    make_leader(leader)
    deliver(leader, "s2", ack(2, "s2", 1))
    propose(leader, 20)
    assert len([e for e in sent(leader) if e.to == "s2"]) == 3


def test_leader_probes_one_message_at_a_time_after_a_rejection() -> None:
    leader = server("s1", term=1, log=(1, 1, 1))
    make_leader(leader)
    deliver(leader, "s2", AppendEntriesResponse(2, "s2", False, 0, conflict_index=2))
    propose(leader, 5)
    assert len([e for e in sent(leader) if e.to == "s2"]) == 0


def test_follower_forwards_a_client_request_to_the_leader_it_knows() -> None:
    follower = server("s2", term=1)
    deliver(follower, "s1", append(1, "s1", 0, 0, []))
    request = ClientRequest("c", 1, "{}", "c")
    follower.step(Envelope("c", "s2", request), 10)
    (out,) = sent(follower)
    assert out.to == "s1" and out.message == ClientRequest("c", 1, "{}", "c", hops=1)


def test_follower_without_a_leader_answers_not_leader() -> None:
    follower = server("s2", term=1)
    follower.step(Envelope("c", "s2", ClientRequest("c", 1, "{}", "c")), 10)
    (out,) = sent(follower)
    assert out.to == "c" and isinstance(out.message, ClientResponse)
    assert out.message.status is ClientStatus.NOT_LEADER


def test_forwarding_stops_after_the_hop_limit() -> None:
    follower = server("s2", term=1)
    deliver(follower, "s1", append(1, "s1", 0, 0, []))
    follower.step(Envelope("s3", "s2", ClientRequest("c", 1, "{}", "c", hops=2)), 10)
    (out,) = sent(follower)
    assert isinstance(out.message, ClientResponse)
    assert out.message.status is ClientStatus.NOT_LEADER and out.message.leader_hint == "s1"


def test_leader_refuses_proposals_beyond_its_uncommitted_bound() -> None:
    config = replace(
        CONFIG,
        max_uncommitted_entries=4,
    )
    leader = server("s1", term=1, config=config)
    make_leader(leader)
    propose(leader, 10)
    refusals = [e.message for e in sent(leader) if isinstance(e.message, ClientResponse)]
    assert len(leader.state.log) == 4
    assert len(refusals) == 7 and all(r.status is ClientStatus.OVERLOADED for r in refusals)


def test_single_server_leader_commits_its_own_entries() -> None:
    leader = server("s1", servers=("s1",))
    leader.tick(0)
    leader.tick(CONFIG.election_timeout_max)
    propose(leader, 3)
    sent(leader)
    assert leader.state.role is Role.LEADER and leader.state.commit_index == 4


def test_append_entries_contradicting_a_committed_entry_is_neither_applied_nor_acknowledged() -> (
    None
):
    follower = server("s2", term=3, log=(1, 1), commit=2)
    out = deliver(follower, "s1", append(3, "s1", 1, 1, [Entry(3, "c", 9, "other")]))
    assert [e.term for e in follower.state.log] == [1, 1]
    assert out == []


def test_leader_that_steps_down_later_in_the_same_batch_sends_no_append_entries() -> None:
    leader = server("s1", term=1)
    make_leader(leader)
    leader.step(Envelope("c", "s1", ClientRequest("c", 1, "{}", "c")), 1001)
    leader.step(Envelope("s2", "s1", AppendEntriesResponse(9, "s2", False)), 1001)
    out = sent(leader)
    assert leader.state.role is Role.FOLLOWER and leader.state.current_term == 9
    assert not [e for e in out if isinstance(e.message, AppendEntries)]


def test_a_ready_after_persisting_a_log_change_reports_nothing_changed() -> None:
    follower = server("s2", term=1, log=(1,))
    follower.ready()
    follower.persisted()
    assert not follower.ready().changed  # takes a fingerprint of the state as it was
    deliver(follower, "s1", append(1, "s1", 1, 1, entries(1, 1)[1:], commit=1), now=5)
    follower.persisted()
    assert not follower.ready().changed


def test_a_rejection_of_an_earlier_append_does_not_resend_the_snapshot_chunk_in_flight() -> None:
    """Two pipelined AppendEntries to a follower that lacks compacted entries are both
    rejected: the first rejection starts the snapshot, and the second, which answers an
    AppendEntries and not the chunk, leaves the chunk in flight alone."""
    leader = server("s1", term=1, log=(1, 1, 1, 1), commit=4)
    leader.state.last_applied = 4
    make_leader(leader)
    leader.compact(Snapshot(4, 1, "0123456789", SERVERS[:3]))
    progress = leader.state.progress["s3"]
    progress.mode, progress.next, progress.inflight = Replication.REPLICATE, 6, 2
    rejection = AppendEntriesResponse(2, "s3", False, conflict_index=1)

    first = [m for m in deliver(leader, "s3", rejection) if isinstance(m, InstallSnapshot)]
    second = deliver(leader, "s3", rejection)

    assert [(m.last_index, m.offset) for m in first] == [(4, 0)]
    assert second == []
