"""Scenario tests written with the SimulatedCluster API (every tester monitor is active, so
each scenario also checks election safety, log matching, durability, linearizability...)."""

from __future__ import annotations

from raft.core.messages import RequestVote, RequestVoteResponse
from raft.sim.cluster import SimulatedCluster
from raft.sim.script import Driver


def test_a_partitioned_leader_steps_down_and_the_majority_elects_a_new_one() -> None:
    cluster = SimulatedCluster(servers=5, seed=1)
    old = cluster.run_until_leader()
    cluster.isolate(old)
    cluster.run_until(lambda c: c.leader() not in (None, old))
    new = cluster.leader()
    assert new is not None and cluster.term(new) > cluster.term(old)
    # Check-quorum: the isolated leader notices it lost its majority.
    cluster.run_until(lambda c: c.role(old) == "follower")
    cluster.heal()
    cluster.run_for(500)
    assert cluster.leader() == new
    assert cluster.wait(cluster.submit({"op": "put", "key": "x", "value": 1}))["ok"]


def test_a_rejoining_partitioned_server_does_not_depose_the_healthy_leader() -> None:
    cluster = SimulatedCluster(servers=5, seed=2)
    leader = cluster.run_until_leader()
    term = cluster.term(leader)
    follower = next(s for s in cluster.servers if s != leader)
    cluster.isolate(follower)
    # Many election timeouts pass; with pre-vote the lone server never raises its term.
    cluster.run_for(2000)
    assert cluster.term(follower) == term
    cluster.heal()
    cluster.run_for(1000)
    assert cluster.leader() == leader
    assert cluster.term(leader) == term


def test_a_crashed_minority_does_not_lose_acknowledged_writes() -> None:
    cluster = SimulatedCluster(servers=5, seed=3)
    leader = cluster.run_until_leader()
    for value in range(5):
        assert cluster.wait(cluster.submit({"op": "put", "key": "x", "value": value}))["ok"]
    follower = next(s for s in cluster.servers if s != leader)
    cluster.crash(leader)
    cluster.crash(follower)
    cluster.run_until(lambda c: c.leader() not in (None, leader))
    assert cluster.wait(cluster.submit({"op": "get", "key": "x"}))["value"] == 4
    cluster.restart(leader)
    cluster.restart(follower)
    cluster.run_for(1000)
    survivors = {s: [e.data for e in cluster.log(s) if e.client_id] for s in cluster.servers}
    assert len({tuple(log) for log in survivors.values()}) == 1


def test_duplicated_vote_requests_and_responses_never_yield_two_leaders_in_a_term() -> None:
    cluster = SimulatedCluster(servers=5, seed=4)
    cluster.duplicate(lambda env: isinstance(env.message, (RequestVote, RequestVoteResponse)))
    for _ in range(4):
        leader = cluster.run_until_leader()
        term = cluster.term(leader)
        cluster.crash(leader)
        cluster.run_until(lambda c, old=leader, term=term: c.term(c.leader() or old) > term)
        cluster.restart(leader)
    leaders = cluster.leaders_by_term()
    assert len(leaders) >= 5
    assert len(set(leaders)) == len(leaders)  # one leader per term (the monitor checks too)


def test_two_racing_handler_instances_never_lose_an_entry() -> None:
    # Half the events are handled by each server's second function instance, whose cached
    # state is usually stale: every save races on the store version.
    cluster = SimulatedCluster(servers=3, seed=5, race=0.5)
    cluster.run_until_leader()
    results = [
        cluster.wait(cluster.submit({"op": "put", "key": "x", "value": i})) for i in range(10)
    ]
    assert [r["previous"] for r in results] == [None, *range(9)]
    assert cluster.sim.coverage.faults["race"] > 0
    assert cluster.sim.store.inner.conflicts > 0
    cluster.run_for(300)
    logs = {s: [e for e in cluster.log(s) if e.client_id] for s in cluster.servers}
    assert all(len(log) == 10 for log in logs.values())


def test_a_late_append_entries_does_not_start_an_election_in_a_quiescent_group() -> None:
    driver = Driver()
    for command in (
        "cluster servers=5",
        "elect s1",
        "propose s1 x=1",
        # Every follower stores entry 2; a copy of each AppendEntries stays in flight.
        "deliver type=append_entries duplicate",
        "deliver to=s1",
        # Settled: the leader tells the group to quiesce, and everyone does.
        "fire s1",
        "deliver type=append_entries skip=4",
        "deliver to=s1",
        # The late copies arrive; then s2's timer fires for longer than an election timeout,
        # before the leader's next check round is due.
        "deliver type=append_entries",
        "deliver to=s1",
    ):
        driver.run(command)
    sim = driver.cluster.sim
    late = sim.now
    for _ in range(8):
        driver.run("tick s2")
    assert sim.now - late > sim.config.election_timeout_max
    assert sim.views["s2"].state["role"] == "follower"
    assert sim.views["s2"].state["quiescent"]
    assert not [p for p in sim.network.inflight if isinstance(p.envelope.message, RequestVote)]
