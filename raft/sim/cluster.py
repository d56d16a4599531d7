"""A Python API for scenario tests: a whole simulated cluster you drive by hand.

    cluster = SimulatedCluster(servers=5, seed=1)
    leader = cluster.run_until_leader()
    cluster.isolate(leader)
    cluster.run_until(lambda c: c.leader() not in (None, leader))
    op = cluster.submit({"op": "put", "key": "x", "value": 1})
    cluster.wait(op)

Events run oldest first (a fair, orderly network) and faults happen only when you call
`partition`, `isolate`, `heal`, `crash`, `restart` or `duplicate`, or at the rate of
`race` (events handled by a server's second node-handler instance). Every monitor of the
systematic tester is active: a violated property raises `PropertyViolated` at the step
that violated it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raft.core.messages import Entry, Envelope
from raft.sim.clients import SimClient
from raft.sim.faults import FaultPlan
from raft.sim.linearizability import Operation
from raft.sim.monitors import Violation
from raft.sim.network import all_pairs
from raft.sim.schedule import ScheduleSpec, SimSetup
from raft.sim.simulator import Simulator
from raft.sim.strategies import FairStrategy, Recorder
from raft.sim.variants import ServerFactory


class PropertyViolated(AssertionError):
    def __init__(self, violation: Violation) -> None:
        super().__init__(f"{violation.property} at step {violation.step}: {violation.message}")
        self.violation = violation


class SimulationTimeout(AssertionError):
    """A condition did not hold within the allowed steps."""


class SimulatedCluster:
    def __init__(
        self,
        servers: int = 3,
        *,
        seed: int = 0,
        server_factory: ServerFactory | None = None,
        race: float = 0.0,
        setup: SimSetup | None = None,
    ) -> None:
        self.setup = setup or SimSetup(servers=servers, clients=0)
        spec = ScheduleSpec(
            index=0,
            seed=seed,
            strategy="fair",
            plan=FaultPlan(race=race),
            node_seed=seed,
            fair_suffix=False,
        )
        self._script: deque[dict[str, Any]] = deque()
        strategy = FairStrategy(random.Random(seed), self.setup.max_steps)
        self.sim = Simulator(
            self.setup, spec, Recorder(strategy), server_factory, scripts=[self._script]
        )
        self._client = self.sim.clients[-1]
        self.servers = self.sim.servers

    # ----------------------------------------------------------------- running

    def step(self, count: int = 1) -> None:
        for _ in range(count):
            self.sim.step()
            if self.sim.violation is not None:
                raise PropertyViolated(self.sim.violation)

    def run_until(
        self, condition: Callable[[SimulatedCluster], bool], max_steps: int = 5000
    ) -> int:
        """Step until `condition(self)` holds; returns the steps taken."""
        for taken in range(max_steps + 1):
            if condition(self):
                return taken
            self.step()
        raise SimulationTimeout(f"condition still false after {max_steps} steps")

    def run_for(self, ms: int, max_steps: int = 20_000) -> None:
        """Let `ms` virtual milliseconds pass."""
        end = self.sim.now + ms
        self.run_until(lambda c: c.now >= end, max_steps)

    def run_until_leader(self, max_steps: int = 5000) -> str:
        self.run_until(lambda c: c.leader() is not None, max_steps)
        leader = self.leader()
        assert leader is not None
        return leader

    @property
    def now(self) -> int:
        return self.sim.now

    # ----------------------------------------------------------------- faults

    def partition(self, *groups: list[str]) -> None:
        """Split the servers into `groups`; servers left out form one more group."""
        listed = {s for g in groups for s in g}
        rest = [s for s in self.servers if s not in listed]
        parts = [list(g) for g in groups] + ([rest] if rest else [])
        name = " | ".join(",".join(g) for g in parts)
        self.sim.partition(name, all_pairs(parts))

    def isolate(self, server: str) -> None:
        self.partition([server])

    def heal(self) -> None:
        self.sim.heal()

    def crash(self, server: str) -> None:
        self.sim.crash(server)

    def restart(self, server: str) -> None:
        self.sim.restart(server)

    def duplicate(self, predicate: Callable[[Envelope], bool] | None) -> None:
        """Deliver every message matching `predicate` twice (None: stop)."""
        self.sim.duplicate_filter = predicate

    # ----------------------------------------------------------------- clients

    def submit(self, command: dict[str, Any]) -> Submission:
        """Queue a key-value command for the cluster's client, which sends one at a time and
        retries each (same seq) until it is answered."""
        self._script.append(command)
        self.sim.wake(self._client)
        return Submission(self._client, self._client.seq + len(self._script))

    def wait(self, submission: Submission, max_steps: int = 5000) -> dict[str, Any]:
        """Step until the command is answered; returns its result."""
        self.run_until(lambda c: submission.result is not None, max_steps)
        assert submission.result is not None
        return submission.result

    # ----------------------------------------------------------------- observing

    def role(self, server: str) -> str:
        return "down" if server in self.sim.down else self.sim.role_of(server)

    def term(self, server: str) -> int:
        return int(self.sim.views[server].state.get("current_term", 0))

    def log(self, server: str) -> list[Entry]:
        """The server's persisted log (read-only)."""
        return list(self.sim.views[server].log)

    def commit_index(self, server: str) -> int:
        return int(self.sim.views[server].state.get("commit_index", 0))

    def leader(self) -> str | None:
        """The live leader of the highest term, if any (by persisted state)."""
        best: tuple[int, str] | None = None
        for s in self.servers:
            if self.role(s) == "leader" and (best is None or self.term(s) > best[0]):
                best = (self.term(s), s)
        return None if best is None else best[1]

    def leaders(self) -> dict[int, str]:
        """Every term's leader so far (from the election-safety monitor's record)."""
        return dict(self.sim.election_safety.leaders)

    @property
    def history(self) -> list[Operation]:
        return list(self.sim.history)


@dataclass(frozen=True)
class Submission:
    """A submitted command: its client and the seq it is (or will be) sent with."""

    client: SimClient
    seq: int

    @property
    def operation(self) -> Operation | None:
        current = self.client.current
        if current is not None and current.seq == self.seq:
            return current
        return next((op for op in self.client.done if op.seq == self.seq), None)

    @property
    def result(self) -> dict[str, Any] | None:
        op = self.operation
        return None if op is None else op.result
