"""The node handler: persist before send, restart from what was persisted, conditional saves
with reload-and-retry, exactly-once client commands."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from raft.app.kv import encode
from raft.app.sessions import SessionPolicy
from raft.core.messages import (
    AppendEntriesResponse,
    ClientRequest,
    ClientStatus,
    Envelope,
    RequestVote,
    RequestVoteResponse,
)
from raft.node.handler import NodeHandler, NodeOptions
from tests.helpers import CONFIG, ManualCluster


def put(key: str, value: object) -> str:
    return encode({"op": "put", "key": key, "value": value})


def get(key: str) -> str:
    return encode({"op": "get", "key": key})


def result(response: object) -> dict[str, object]:
    return json.loads(response.result)  # type: ignore[attr-defined]


@pytest.fixture
def cluster() -> ManualCluster:
    c = ManualCluster(3)
    c.elect()
    return c


def test_cluster_elects_one_leader_and_commits_a_command(cluster: ManualCluster) -> None:
    (response,) = cluster.submit(ClientRequest("c", 1, put("k", "v"), "c"))
    assert response.status is ClientStatus.OK
    assert result(response) == {"ok": True, "previous": None}
    (read,) = cluster.submit(ClientRequest("c", 2, get("k"), "c"))
    assert result(read) == {"ok": True, "found": True, "value": "v"}


def test_retried_request_is_applied_once_and_answered_with_its_original_result(
    cluster: ManualCluster,
) -> None:
    first = cluster.submit(ClientRequest("c", 1, put("k", "a"), "c"))
    again = cluster.submit(ClientRequest("c", 1, put("k", "a"), "c"))
    assert [r.result for r in again] == [r.result for r in first]
    (read,) = cluster.submit(ClientRequest("c", 2, get("k"), "c"))
    assert result(read)["value"] == "a"


def test_request_appended_twice_before_commit_is_applied_once(cluster: ManualCluster) -> None:
    leader = cluster.leader()
    request = ClientRequest(
        "c", 1, encode({"op": "cas", "key": "n", "expected": None, "value": 1}), "c"
    )
    cluster.bus.publish([Envelope("c", leader, request), Envelope("c", leader, request)])
    cluster.deliver_all()
    answers = [e.message for e in cluster.bus.drain("c")]
    assert {a.result for a in answers} == {encode({"ok": True, "value": 1})}  # type: ignore[union-attr]
    (read,) = cluster.submit(ClientRequest("c", 2, get("n"), "c"))
    assert result(read)["value"] == 1


def test_request_older_than_the_clients_last_is_answered_stale(cluster: ManualCluster) -> None:
    cluster.submit(ClientRequest("c", 5, put("k", 1), "c"))
    (late,) = cluster.submit(ClientRequest("c", 4, put("k", 2), "c"))
    assert late.status is ClientStatus.STALE


def test_invalid_command_is_rejected_and_never_enters_the_log(cluster: ManualCluster) -> None:
    leader = cluster.handlers[cluster.leader()]
    before = leader.state().last_index
    (response,) = cluster.submit(ClientRequest("c", 1, '{"op": "explode"}', "c"))
    assert response.status is ClientStatus.REJECTED and "unknown op" in response.result
    assert leader.state().last_index == before


def test_message_from_an_unknown_server_changes_nothing(cluster: ManualCluster) -> None:
    follower = next(s for s in cluster.servers if s != cluster.leader())
    before = cluster.store.read_state(follower)
    cluster.bus.publish([Envelope("server-9", follower, RequestVote(99, "server-9", 9, 9))])
    cluster.deliver_all()
    assert cluster.store.read_state(follower) == before


def test_handler_refuses_an_unknown_server_id() -> None:
    c = ManualCluster(3)
    with pytest.raises(ValueError, match="unknown server id"):
        NodeHandler("server-7", c.servers, c.store, c.bus)


class RecordingBus:
    """A bus that records, for each published message, what its sender had persisted."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.seen: list[tuple[Envelope, dict[str, object] | None]] = []

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        for e in envelopes:
            self.seen.append((e, self.store.read_state(e.sender)))  # type: ignore[attr-defined]


def test_vote_is_persisted_before_the_vote_response_is_sent() -> None:
    c = ManualCluster(3)
    bus = RecordingBus(c.store)
    voter = NodeHandler("server-2", c.servers, c.store, bus, c.options)
    voter.handle([Envelope("server-1", "server-2", RequestVote(1, "server-1", 0, 0))], now=0)
    ((envelope, persisted),) = bus.seen
    assert envelope.message == RequestVoteResponse(1, "server-2", True)
    assert persisted is not None
    assert persisted["current_term"] == 1 and persisted["voted_for"] == "server-1"


def test_restarted_server_resumes_from_its_persisted_state(cluster: ManualCluster) -> None:
    for seq in range(1, 6):
        cluster.submit(ClientRequest("c", seq, put(f"k{seq}", seq), "c"))
    cluster.advance(100)
    server_id = cluster.servers[0]
    before = cluster.handlers[server_id].state()
    cold = NodeHandler(server_id, cluster.servers, cluster.store, cluster.bus, cluster.options)
    after = cold.state()
    assert (after.current_term, after.voted_for, after.log, after.commit_index) == (
        before.current_term,
        before.voted_for,
        before.log,
        before.commit_index,
    )


def test_cold_instance_restores_applied_state_from_the_snapshot_and_the_log_tail() -> None:
    c = ManualCluster(3, NodeOptions(config=CONFIG, snapshot_every=4))
    c.elect()
    for seq in range(1, 11):
        c.submit(ClientRequest("c", seq, put(f"k{seq}", seq), "c"))
    leader = c.leader()
    cold = NodeHandler(leader, c.servers, c.store, c.bus, c.options)
    cold.state()
    assert c.store.load(leader).snapshot is not None  # type: ignore[union-attr]
    c.handlers[leader] = cold
    (response,) = c.submit(ClientRequest("c", 10, put("k10", 10), "c"))
    assert result(response) == {"ok": True, "previous": None}
    (read,) = c.submit(ClientRequest("c", 11, get("k7"), "c"))
    assert result(read)["value"] == 7


def test_two_instances_of_one_server_race_and_neither_loses_an_entry(
    cluster: ManualCluster,
) -> None:
    leader = cluster.leader()
    twin = NodeHandler(leader, cluster.servers, cluster.store, cluster.bus, cluster.options)
    twin.state()
    cluster.submit(ClientRequest("c", 1, put("a", 1), "c"))
    # The twin's cached state is now stale: its save conflicts, it reloads and steps again.
    conflicts = cluster.store.conflicts
    twin.handle([Envelope("c", leader, ClientRequest("c", 2, put("b", 2), "c"))], cluster.now)
    cluster.deliver_all()
    assert cluster.store.conflicts == conflicts + 1
    log = cluster.handlers[leader].store.load(leader).log  # type: ignore[union-attr]
    assert [(e.client_id, e.seq) for e in log if e.client_id] == [("c", 1), ("c", 2)]


class FailingOnceBus:
    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.failed = False

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        if not self.failed and envelopes:
            self.failed = True
            raise ConnectionError("crash between the save and the send")
        self.inner.publish(envelopes)  # type: ignore[attr-defined]


def test_crash_between_save_and_send_is_repaired_by_retransmission(
    cluster: ManualCluster,
) -> None:
    leader = cluster.leader()
    flaky = FailingOnceBus(cluster.bus)
    cluster.handlers[leader] = NodeHandler(
        leader, cluster.servers, cluster.store, flaky, cluster.options
    )
    cluster.bus.publish([Envelope("c", leader, ClientRequest("c", 1, put("k", "v"), "c"))])
    with pytest.raises(ConnectionError):
        cluster.deliver_all()
    assert flaky.failed
    cluster.advance(200)  # heartbeats retransmit what the crashed send lost
    assert all(
        h.state().commit_index == cluster.handlers[leader].state().last_index
        for h in cluster.handlers.values()
    )
    (read,) = cluster.submit(ClientRequest("c", 2, get("k"), "c"))
    assert result(read)["value"] == "v"


def test_redelivered_message_is_harmless(cluster: ManualCluster) -> None:
    leader = cluster.leader()
    request = Envelope("c", leader, ClientRequest("c", 1, put("k", "v"), "c"))
    for _ in range(3):
        cluster.bus.publish([request])
        cluster.deliver_all()
    cluster.advance(100)
    logs = {s: [e for e in h.state().log if e.client_id] for s, h in cluster.handlers.items()}
    assert all(log == logs[leader] for log in logs.values())


def test_many_proposals_in_one_batch_take_one_save_and_one_message_per_follower(
    cluster: ManualCluster,
) -> None:
    leader = cluster.leader()
    cluster.advance(10)
    batch = [
        Envelope("c", leader, ClientRequest("c", seq, put("k", seq), "c")) for seq in range(1, 101)
    ]
    saves = cluster.store.saves
    cluster.handlers[leader].handle(batch, cluster.now)
    assert cluster.store.saves == saves + 1
    out = [e for q in cluster.servers if q != leader for e in cluster.bus.drain(q)]
    assert len(out) == 2


def test_polling_client_result_is_recorded_on_every_server(cluster: ManualCluster) -> None:
    cluster.submit(ClientRequest("http-1", 1, put("k", "v")))
    cluster.advance(100)
    for server_id in cluster.servers:
        recorded = cluster.store.read_result(server_id, "http-1")
        assert recorded is not None and json.loads(recorded.result)["ok"] is True


def test_a_step_that_changes_nothing_saves_nothing(cluster: ManualCluster) -> None:
    saves = cluster.store.saves
    follower = next(s for s in cluster.servers if s != cluster.leader())
    cluster.handlers[follower].handle([], cluster.now)
    assert cluster.store.saves == saves


def test_a_larger_applied_state_is_snapshotted_less_often() -> None:
    c = ManualCluster(3, NodeOptions(config=CONFIG, snapshot_every=4, snapshot_chars_per_entry=20))
    leader = c.elect()
    indexes = []
    for seq in range(1, 41):
        c.submit(ClientRequest("c", seq, put(f"key-{seq}", "x" * 40), "c"))
        stored = c.store.load(leader)
        if stored is not None and stored.snapshot:
            applied = stored.snapshot.index
            if not indexes or indexes[-1] != applied:
                indexes.append(applied)
    first, second = indexes[:2]
    assert first == 4, "the first snapshot comes after snapshot_every entries"
    assert second - first > 4, f"the next waits longer, the state being larger: {indexes}"


def test_a_batch_in_which_the_leader_steps_down_is_handled(cluster: ManualCluster) -> None:
    leader = cluster.leader()
    term = cluster.handlers[leader].state().current_term
    follower = next(s for s in cluster.servers if s != leader)
    batch = [
        Envelope("c", leader, ClientRequest("c", 1, put("k", 1), "c")),
        Envelope(follower, leader, AppendEntriesResponse(term + 5, follower, False)),
    ]
    cluster.handlers[leader].handle(batch, cluster.now)
    assert cluster.store.read_state(leader)["role"] == "follower"  # type: ignore[index]


def test_oversized_command_from_a_bus_client_is_rejected_before_the_log(
    cluster: ManualCluster,
) -> None:
    leader = cluster.handlers[cluster.leader()]
    before = leader.state().last_index
    (response,) = cluster.submit(ClientRequest("c", 1, put("k", "x" * 20_000), "c"))
    assert response.status is ClientStatus.REJECTED and "bytes" in response.result
    assert leader.state().last_index == before


def test_redelivery_after_its_session_was_evicted_is_refused_as_expired_not_reapplied() -> None:
    c = ManualCluster(3, NodeOptions(config=CONFIG, sessions=SessionPolicy(max_sessions=2)))
    c.elect()
    first = ClientRequest("a", 1, put("x", "A"), "a", issued_at=c.now)
    c.submit(first)
    c.submit(ClientRequest("b", 1, put("x", "B"), "b", issued_at=c.now))
    for n in range(3):  # other clients push a's and b's sessions out
        c.submit(ClientRequest(f"other-{n}", 1, put(f"y{n}", n), f"other-{n}", issued_at=c.now))
    (again,) = c.submit(first)  # at-least-once delivery hands over A's message again
    assert again.status is ClientStatus.EXPIRED
    (read,) = c.submit(ClientRequest("c", 1, get("x"), "c", issued_at=c.now + 1))
    assert result(read)["value"] == "B"


def test_request_issued_longer_ago_than_the_retention_is_refused_as_expired() -> None:
    retention = SessionPolicy(retention_ms=5_000)
    c = ManualCluster(3, NodeOptions(config=CONFIG, sessions=retention))
    c.elect()
    c.advance(6_000)
    leader = c.handlers[c.leader()]
    before = leader.state().last_index
    (late,) = c.submit(ClientRequest("a", 1, put("x", 1), "a", issued_at=c.now - 5_001))
    assert late.status is ClientStatus.EXPIRED and leader.state().last_index == before


def test_idle_sessions_expire_at_the_same_index_on_every_server() -> None:
    retention = SessionPolicy(retention_ms=2_000)
    c = ManualCluster(3, NodeOptions(config=CONFIG, sessions=retention))
    c.elect()
    c.submit(ClientRequest("a", 1, put("x", 1), "a", issued_at=c.now))
    c.advance(2_500)
    c.submit(ClientRequest("b", 1, put("y", 1), "b", issued_at=c.now))
    c.advance(500)  # followers learn the new commit index
    for handler in c.handlers.values():
        assert set(handler.applied().sessions) == {"b"}


def test_results_of_expired_sessions_are_deleted_from_the_store() -> None:
    retention = SessionPolicy(retention_ms=2_000)
    c = ManualCluster(3, NodeOptions(config=CONFIG, sessions=retention))
    leader = c.elect()
    c.handlers[leader].handle(
        [Envelope("http", leader, ClientRequest("http-1", 1, put("x", 1), issued_at=c.now))],
        c.now,
    )
    c.deliver_all()
    assert c.store.read_result(leader, "http-1") is not None
    c.advance(2_500)
    c.submit(ClientRequest("b", 1, put("y", 1), "b", issued_at=c.now))
    c.advance(500)
    assert all(c.store.read_result(s, "http-1") is None for s in c.handlers)


def test_a_quiescent_cluster_saves_and_sends_nothing_between_checks_and_still_commits() -> None:
    c = ManualCluster(3)
    c.elect()
    c.advance(500)  # settles and quiesces
    assert all(h.state().quiescent for h in c.handlers.values())
    saves, published = c.store.saves, c.bus.published
    c.advance(CONFIG.quiesce_interval // 2)
    assert (c.store.saves, c.bus.published) == (saves, published)
    (response,) = c.submit(ClientRequest("c", 1, put("k", 1), "c", issued_at=c.now))
    assert response.status is ClientStatus.OK
    assert not any(h.state().quiescent for h in c.handlers.values())


def test_a_steady_load_on_a_perfect_network_never_changes_the_term() -> None:
    c = ManualCluster(3)
    c.elect()
    term = c.handlers[c.leader()].state().current_term
    for seq in range(1, 61):  # a command every 30 ms, for almost two seconds
        (response,) = c.submit(ClientRequest("c", seq, put("k", seq), "c", issued_at=c.now))
        assert response.status is ClientStatus.OK
        c.advance(30)
    assert {h.state().current_term for h in c.handlers.values()} == {term}
