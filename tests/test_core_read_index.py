"""ReadIndex (thesis §6.4): a read-only request is answered without a log entry, once a
majority has confirmed the leader still leads, at an index no older than its commit index."""

from __future__ import annotations

from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    Envelope,
    Message,
)
from raft.core.server import MAX_PENDING_READS, RaftServer
from tests.helpers import committed_leader, deliver, make_leader, server

READ = ClientRequest("c", 1, '{"op":"get","key":"k"}', "c", read_only=True)


def step(target: RaftServer, sender: str, message: Message, now: int) -> None:
    """Step without taking the Ready, so the test can read it."""
    target.step(Envelope(sender, target.state.server_id, message), now)


def test_a_read_appends_nothing_and_asks_every_follower_to_confirm() -> None:
    leader = committed_leader()
    out = deliver(leader, "client", READ, 1010)
    assert leader.state.last_index == 1
    rounds = {m.read_round for m in out if isinstance(m, AppendEntries)}
    assert rounds == {leader.state.read_round} and len(out) == 2


def test_a_read_is_handed_over_once_a_majority_acknowledged_its_round() -> None:
    leader = committed_leader()
    deliver(leader, "client", READ, 1010)
    assert leader.ready().reads == ()
    confirmation = AppendEntriesResponse(1, "s2", True, 1, read_round=leader.state.read_round)
    step(leader, "s2", confirmation, 1020)
    assert [read.client_id for read in leader.ready().reads] == ["c"]
    assert leader.state.reads == []


def test_the_confirmed_read_carries_the_commit_index_at_registration() -> None:
    leader = committed_leader()
    deliver(leader, "client", READ, 1010)
    step(leader, "s3", AppendEntriesResponse(1, "s3", True, 1, read_round=1), 1020)
    (read,) = leader.ready().reads
    assert (read.client_id, read.index) == ("c", 1)


def test_an_acknowledgement_of_an_older_round_confirms_nothing() -> None:
    leader = committed_leader()
    deliver(leader, "client", READ, 1010)
    deliver(leader, "s2", AppendEntriesResponse(1, "s2", True, 1, read_round=0), 1020)
    assert len(leader.state.reads) == 1


def test_a_new_leader_reads_nothing_before_committing_an_entry_of_its_term() -> None:
    leader = server("s1", term=1, log=(1, 1), commit=1)
    make_leader(leader, 1000)  # term 2, its no-op at index 3 is not committed yet
    deliver(leader, "client", READ, 1010)
    (waiting,) = leader.state.reads
    assert waiting.index == 0
    rnd = leader.state.read_round
    step(leader, "s2", AppendEntriesResponse(2, "s2", True, 3, read_round=rnd), 1020)
    (read,) = leader.ready().reads
    assert read.index == 3


def test_a_leader_that_steps_down_tells_waiting_readers_it_no_longer_leads() -> None:
    leader = committed_leader()
    deliver(leader, "client", READ, 1010)
    out = deliver(leader, "s2", AppendEntries(5, "s2", 0, 0, (), 0), 1020)
    refused = [m for m in out if isinstance(m, ClientResponse)]
    assert [m.status for m in refused] == [ClientStatus.NOT_LEADER]
    assert leader.state.reads == []


def test_a_follower_echoes_the_read_round_even_when_it_rejects() -> None:
    follower = server("s2", term=1)
    (answer,) = deliver(follower, "s1", AppendEntries(1, "s1", 5, 1, (), 0, read_round=7), 1000)
    assert isinstance(answer, AppendEntriesResponse)
    assert not answer.success and answer.read_round == 7


def test_too_many_pending_reads_are_refused_as_overloaded() -> None:
    leader = committed_leader()
    for seq in range(MAX_PENDING_READS):
        deliver(leader, "client", ClientRequest("c", seq, READ.data, "c", read_only=True), 1010)
    (refused,) = deliver(leader, "client", ClientRequest("c", 999, READ.data, "c", read_only=True))
    assert isinstance(refused, ClientResponse) and refused.status is ClientStatus.OVERLOADED
