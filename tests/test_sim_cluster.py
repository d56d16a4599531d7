"""The SimulatedCluster scenario API (raft/sim/cluster.py): what a scenario test can ask of it."""

from __future__ import annotations

from raft.app.kv import encode
from raft.core.messages import ClientRequest, Envelope
from raft.sim.cluster import SimulatedCluster

PUT = {"op": "put", "key": "x", "value": 1}


def test_start_on_the_leader_returns_its_index_and_term_at_once() -> None:
    cluster = SimulatedCluster(servers=3, seed=1)
    leader = cluster.run_until_leader()
    index, term, is_leader = cluster.start(leader, PUT)
    assert is_leader and term == cluster.term(leader)
    assert cluster.log(leader)[index - 1].data == encode(PUT)
    cluster.run_until(lambda c: c.committed(index)[0] == 3)
    assert cluster.committed(index)[1] == cluster.log(leader)[index - 1]


def test_start_on_a_follower_changes_nothing() -> None:
    cluster = SimulatedCluster(servers=3, seed=1)
    leader = cluster.run_until_leader()
    follower = next(s for s in cluster.servers if s != leader)
    assert cluster.start(follower, PUT) == (0, cluster.term(follower), False)
    cluster.run_for(500)
    assert all(e.client_id != "start-1" for s in cluster.servers for e in cluster.log(s))


def test_disconnections_compose() -> None:
    cluster = SimulatedCluster(servers=5, seed=1)
    cluster.disconnect("s1")
    cluster.disconnect("s2")
    cluster.connect("s1")
    blocked = cluster.sim.network.blocked
    assert ("s1", "s3") not in blocked and ("s3", "s1") not in blocked
    assert ("s2", "s3") in blocked and ("s3", "s2") in blocked and ("s1", "s2") in blocked


def test_a_partition_replaces_the_partition_but_not_the_disconnections() -> None:
    cluster = SimulatedCluster(servers=5, seed=1)
    cluster.disconnect("s5")
    cluster.partition(["s1", "s2"])
    cluster.partition(["s1", "s3"])
    blocked = cluster.sim.network.blocked
    assert ("s1", "s2") in blocked and ("s1", "s3") not in blocked
    assert ("s3", "s5") in blocked
    cluster.heal()
    assert not cluster.sim.network.blocked


def test_a_disconnected_leader_is_replaced_and_follows_once_connected() -> None:
    cluster = SimulatedCluster(servers=5, seed=2)
    old = cluster.run_until_leader()
    cluster.disconnect(old)
    cluster.run_until(lambda c: c.leader() not in (None, old) and c.role(old) != "leader")
    new = cluster.leader()
    cluster.connect(old)
    cluster.run_for(500)
    assert cluster.leaders() == [new]
    assert cluster.leaders_by_term()[cluster.term(old)] == new


def test_leaders_are_the_current_ones_not_the_history() -> None:
    cluster = SimulatedCluster(servers=3, seed=3)
    first = cluster.run_until_leader()
    cluster.crash(first)
    cluster.run_until(lambda c: c.leader() not in (None, first))
    second = cluster.leader()
    assert cluster.leaders() == [second]
    assert set(cluster.leaders_by_term().values()) == {first, second}


def test_an_unreliable_network_with_long_reordering_still_commits_every_command() -> None:
    cluster = SimulatedCluster(servers=5, seed=4)
    cluster.unreliable(long_reordering=True)
    cluster.run_until_leader(max_steps=20_000)
    results = [
        cluster.wait(cluster.submit({"op": "put", "key": "x", "value": i}), max_steps=20_000)
        for i in range(5)
    ]
    assert [r["previous"] for r in results] == [None, 0, 1, 2, 3]
    faults = cluster.sim.coverage.faults
    assert faults["drop"] > 0 and faults["duplicate"] > 0


def test_server_messages_count_what_servers_send_one_another() -> None:
    cluster = SimulatedCluster(servers=3, seed=5)
    leader = cluster.run_until_leader()
    cluster.run_for(1000)
    before = cluster.server_messages
    index, _, _ = cluster.start(leader, PUT)
    cluster.run_until(lambda c: c.committed(index)[0] == 3)
    # The entry went to both followers, both acknowledged it, and then the commit index.
    assert cluster.server_messages - before >= 4


def test_run_for_stops_exactly_at_the_time_asked() -> None:
    cluster = SimulatedCluster(servers=3, seed=6)
    cluster.run_until_leader()
    start = cluster.now
    cluster.run_for(123)
    assert cluster.now == start + 123
    cluster.run_for(0)
    assert cluster.now == start + 123


def test_a_reply_to_an_address_nobody_listens_on_is_dropped() -> None:
    cluster = SimulatedCluster(servers=3, seed=7)
    leader = cluster.run_until_leader()
    request = ClientRequest("ghost", 1, encode(PUT), reply_to="ghost")
    cluster.sim.deliver_now(leader, Envelope("ghost", leader, request))
    cluster.run_for(300)
    assert any(e.client_id == "ghost" for e in cluster.log(leader)[: cluster.commit_index(leader)])
