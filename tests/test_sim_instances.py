"""The simulator hosts each server's events on function instances as Flex Consumption does
(raft/sim/instances.py): ticks on the timer instance, messages on the server's trigger
instances, each with its own long-lived cache."""

from __future__ import annotations

from raft.sim.cluster import SimulatedCluster
from raft.sim.instances import TRIGGERS, Instances
from raft.sim.schedule import SimSetup


class _Handler:
    def __init__(self, server: str) -> None:
        self.server = server
        self.dropped = 0

    def drop_cache(self) -> None:
        self.dropped += 1


def _instances() -> Instances:
    return Instances(("s1", "s2"), _Handler)  # type: ignore[arg-type]


def test_ticks_and_messages_of_a_server_are_handled_by_different_handlers() -> None:
    instances = _instances()
    tick = instances.for_tick("s1")
    usual = instances.for_delivery("s1", scaled_out=False)
    second = instances.for_delivery("s1", scaled_out=True)
    assert len({id(tick), id(usual), id(second)}) == 3
    assert instances.for_delivery("s1", scaled_out=False) is usual


def test_replacing_the_timer_instance_drops_every_servers_timer_cache_only() -> None:
    instances = _instances()
    assert instances.replace(0) == "the timer instance"
    assert all(h.dropped == 1 for h in instances.timer.values())  # type: ignore[attr-defined]
    triggers = [h for hs in instances.triggers.values() for h in hs]
    assert all(h.dropped == 0 for h in triggers)  # type: ignore[attr-defined]


def test_replacing_a_trigger_instance_drops_that_cache_only() -> None:
    instances = _instances()
    assert instances.count == 1 + 2 * TRIGGERS
    assert instances.replace(TRIGGERS + 2) == "trigger instance 2 of s2"
    dropped = [
        h.dropped  # type: ignore[attr-defined]
        for h in [*instances.timer.values(), *instances.triggers["s1"], *instances.triggers["s2"]]
    ]
    assert dropped == [0, 0, 0, 0, 0, 1]


def test_the_production_handler_elects_again_with_ticks_and_messages_on_different_instances() -> (
    None
):
    cluster = SimulatedCluster(servers=5, seed=0)
    crashed = cluster.run_until_leader()
    cluster.crash(crashed)
    cluster.run_until(lambda c: c.leader() not in (None, crashed))


def test_a_handler_that_trusts_its_cache_never_elects_again() -> None:
    # Issue 10's wedge: the timer instance makes a server pre-candidate, the pre-vote grants
    # reach its trigger instance, whose stale copy says follower, and are ignored unsaved.
    cluster = SimulatedCluster(
        setup=SimSetup(servers=5, clients=0, target="variant:stale-cache-steps"), seed=0
    )
    crashed = cluster.run_until_leader()
    cluster.crash(crashed)
    cluster.run_for(5000)
    live = [s for s in cluster.servers if s != crashed]
    assert {cluster.role(s) for s in live} == {"pre_candidate"}
    assert {cluster.term(s) for s in live} == {1}
