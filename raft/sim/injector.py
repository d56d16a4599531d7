"""Each step's fault: one draw from the schedule's `FaultPlan`, with the rates of faults the
cluster's current shape rules out set to zero (no crash past a minority, no second
partition).

Faults of the cluster's shape (crash, partition, clock jump, an instance replaced by a cold
one, an operator's request to transfer leadership) are carried out on the simulator at once;
the others (drop, duplicate, delay, racing instance, crash after the save, a batch) are
returned, and apply to the event the strategy chooses next. A crash or a partition lasts a
virtual duration drawn when it starts: some end before anyone notices, some outlast an
election (the time an old leader, cut off but alive, goes on believing it leads); ended at a
step boundary once the time has passed.
"""

from __future__ import annotations

from typing import Protocol

from raft.sim.coverage import Coverage
from raft.sim.faults import Fault, FaultPlan
from raft.sim.network import Network, partition_pairs
from raft.sim.strategies import Choices
from raft.sim.tracer import Tracer

# The draw's outcomes (0: none), in the order of `FaultInjector.rates`.
(
    CRASH,
    PARTITION,
    SKEW,
    DROP,
    DUPLICATE,
    DELAY,
    RACE,
    CRASH_AFTER_SAVE,
    COLD,
    TRANSFER,
    MEMBERSHIP,
    BATCH,
) = range(1, 13)
# A clock jump sets a server's offset from virtual time to one of these (ms). Raft's safety
# must not depend on clocks; skew makes timeouts fire early or late, as Coyote's
# nondeterministic timers do.
SKEWS = (-300, -200, -100, -50, 0, 50, 100, 200, 300)
# How long a crash or a partition lasts (virtual ms): from less than a heartbeat to several
# election timeouts.
OUTAGES = (50, 100, 200, 400, 800, 1600)
NEVER = 1 << 62


class Cluster(Protocol):
    """What the injector needs of the simulator."""

    servers: tuple[str, ...]
    now: int
    down: set[str]
    max_down: int
    network: Network
    choices: Choices
    coverage: Coverage
    tracer: Tracer
    delay: int
    # Function instances a `cold_instance` fault may replace.
    instance_count: int

    def crash(self, server: str) -> None: ...
    def restart(self, server: str) -> None: ...
    def partition(self, name: str, pairs: set[tuple[str, str]]) -> None: ...
    def heal(self) -> None: ...
    def set_skew(self, server: str, offset: int) -> None: ...
    def replace_instance(self, which: int) -> None: ...
    def leaders(self) -> list[str]: ...
    def transfer_leadership(self, leader: str, target: str) -> None: ...
    def change_membership(self, leader: str, server: str) -> None: ...
    def role_of(self, server: str) -> str: ...


class FaultInjector:
    def __init__(self, sim: Cluster, plan: FaultPlan) -> None:
        self.sim = sim
        self.set_plan(plan)

    def set_plan(self, plan: FaultPlan) -> None:
        self.plan = plan
        # Rates cached by the cluster's shape: (can crash, partitioned).
        self._rates: dict[tuple[bool, bool], tuple[float, ...]] = {}
        self.active = any(plan.to_json().values())
        # When the servers this injector crashed restart, and when its partition heals; and
        # the first of those times (checked every step, so kept at hand).
        self.restarts: dict[str, int] = {}
        self.heals_at: int | None = None
        self._next_end = NEVER

    def rates(self) -> tuple[float, ...]:
        sim = self.sim
        shape = (len(sim.down) < sim.max_down, bool(sim.network.blocked))
        rates = self._rates.get(shape)
        if rates is None:
            can_crash, blocked = shape
            p = self.plan
            rates = self._rates[shape] = (
                p.crash if can_crash else 0.0,
                0.0 if blocked else p.partition,
                p.skew,
                p.drop,
                p.duplicate,
                p.delay,
                p.race,
                p.crash_after_save if can_crash else 0.0,
                p.cold,
                p.transfer,
                p.membership,
                p.batch,
            )
        return rates

    def draw(self) -> int:
        """End the outages that are over, then draw this step's fault; cluster-shape faults
        are carried out now."""
        sim = self.sim
        if sim.now >= self._next_end:
            self._end_outages()
        choices = sim.choices
        fault = choices.fault(self.rates())
        if not fault:
            return 0
        if fault == CRASH:
            live = [s for s in sim.servers if s not in sim.down]
            sim.coverage.faults[Fault.CRASH] += 1
            server = self._pick_server(live)
            sim.crash(server)
            self.crashed(server)
        elif fault == PARTITION:
            shape = choices.below(3)
            rotation = sim.servers.index(self._pick_server(list(sim.servers)))
            sim.partition(*partition_pairs(sim.servers, shape, rotation))
            self.heals_at = sim.now + self._outage()
            self._next_end = min(self._next_end, self.heals_at)
        elif fault == SKEW:
            server = sim.servers[choices.below(len(sim.servers))]
            sim.set_skew(server, SKEWS[choices.below(len(SKEWS))])
        elif fault == COLD:
            sim.replace_instance(choices.below(sim.instance_count))
        elif fault == MEMBERSHIP:
            leaders = sim.leaders()
            if leaders:
                sim.change_membership(leaders[0], sim.servers[choices.below(len(sim.servers))])
        elif fault == TRANSFER:
            leaders = sim.leaders()
            if leaders:
                others = [s for s in sim.servers if s != leaders[0]]
                sim.transfer_leadership(leaders[0], others[choices.below(len(others))])
        elif fault == DELAY:
            # Everything published this step arrives late.
            sim.delay = 25 * (1 + choices.below(16))
            sim.coverage.faults[Fault.DELAY] += 1
            sim.tracer.note(f"messages sent now are delayed {sim.delay} ms")
        return fault

    def crashed(self, server: str) -> None:
        """A fault crashed `server`: it restarts after an outage."""
        at = self.restarts[server] = self.sim.now + self._outage()
        self._next_end = min(self._next_end, at)

    def _outage(self) -> int:
        return OUTAGES[self.sim.choices.below(len(OUTAGES))]

    def _end_outages(self) -> None:
        sim = self.sim
        for server, at in sorted(self.restarts.items()):
            if sim.now >= at:
                del self.restarts[server]
                if server in sim.down:  # not restarted by hand meanwhile
                    sim.restart(server)
        if self.heals_at is not None and sim.now >= self.heals_at:
            self.heals_at = None
            sim.heal()
        ends = [*self.restarts.values(), *([] if self.heals_at is None else [self.heals_at])]
        self._next_end = min(ends, default=NEVER)

    def crashes_new_leader(self) -> bool:
        """Whether a server that just became leader crashes before its messages leave."""
        sim = self.sim
        rate = self.plan.crash_new_leader if len(sim.down) < sim.max_down else 0.0
        return sim.choices.fault((rate,)) == 1

    def _pick_server(self, candidates: list[str]) -> str:
        """A server to crash or cut off, a leader half the time: leader changes are where
        Raft's subtle cases are (Jepsen's nemeses target the primary for the same reason)."""
        sim = self.sim
        leaders = [s for s in candidates if sim.role_of(s) == "leader"]
        others = [s for s in candidates if s not in leaders]
        ordered = leaders + others
        k = sim.choices.below(2 * len(ordered))
        return ordered[k] if k < len(ordered) else ordered[0]
