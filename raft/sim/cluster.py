"""A Python API for scenario tests: a whole simulated cluster you drive by hand.

    cluster = SimulatedCluster(servers=5, seed=1)
    leader = cluster.run_until_leader()
    index, term, is_leader = cluster.start(leader, {"op": "put", "key": "x", "value": 1})
    cluster.disconnect(leader)
    cluster.run_until(lambda c: c.leader() not in (None, leader))
    cluster.connect(leader)
    op = cluster.submit({"op": "put", "key": "x", "value": 2})
    cluster.wait(op)

Events run oldest first (a fair, orderly network) and faults happen only when you call
`disconnect`, `partition`, `crash`, `restart`, `duplicate` or `unreliable`, or at the rate
of `race` (messages handled by a server's second trigger instance). Every monitor of the
systematic tester is active: a violated property raises `PropertyViolated` at the step that
violated it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from raft.app.kv import encode
from raft.core.messages import (
    AppendEntriesResponse,
    ClientRequest,
    Entry,
    Envelope,
    InstallSnapshotResponse,
    RequestVoteResponse,
)
from raft.core.server import MAX_FORWARD_HOPS
from raft.sim.clients import SimClient
from raft.sim.faults import FaultPlan
from raft.sim.linearizability import Operation
from raft.sim.monitors import Violation
from raft.sim.network import all_pairs
from raft.sim.schedule import ScheduleSpec, SimSetup
from raft.sim.simulator import Simulator
from raft.sim.strategies import FairStrategy, Recorder
from raft.sim.variants import ServerFactory

# What `start` sends as: a client that never listens, so results are only recorded.
STARTER = "start"
# The replies an unreliable network with long reordering holds back.
REPLIES = (RequestVoteResponse, AppendEntriesResponse, InstallSnapshotResponse)


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
        tracing: bool = False,
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
            self.setup,
            spec,
            Recorder(strategy),
            server_factory,
            tracing=tracing,
            scripts=[self._script],
        )
        self._client = self.sim.clients[-1]
        self.servers = self.sim.servers
        self._groups: set[tuple[str, str]] = set()
        self._disconnected: set[str] = set()
        self._duplicate: Callable[[Envelope], bool] | None = None
        self._unreliable: random.Random | None = None
        self._long_reordering = False
        self._started = 0

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
        """Let exactly `ms` virtual milliseconds pass: every event due by then runs, and the
        clock stops at that time."""
        end = self.sim.now + ms
        for _ in range(max_steps):
            if self.sim.next_time() > end:
                self.sim.now = end
                return
            self.step()
        raise SimulationTimeout(f"{ms} ms did not pass within {max_steps} steps")

    def run_until_leader(self, max_steps: int = 5000) -> str:
        self.run_until(lambda c: c.leader() is not None, max_steps)
        leader = self.leader()
        assert leader is not None
        return leader

    @property
    def now(self) -> int:
        return self.sim.now

    # ----------------------------------------------------------------- faults

    def disconnect(self, server: str) -> None:
        """Cut `server` off from every other server (clients still reach it); composes with
        other disconnections and with `partition`."""
        self._disconnected.add(server)
        self._apply_cuts()

    def connect(self, server: str) -> None:
        """Undo `disconnect(server)`, leaving every other cut as it is."""
        self._disconnected.discard(server)
        self._apply_cuts()

    def partition(self, *groups: list[str]) -> None:
        """Split the servers into `groups`; servers left out form one more group. Replaces
        the previous partition, not the disconnections."""
        listed = {s for g in groups for s in g}
        rest = [s for s in self.servers if s not in listed]
        self._groups = all_pairs([list(g) for g in groups] + ([rest] if rest else []))
        self._apply_cuts()

    def isolate(self, server: str) -> None:
        self.partition([server])

    def heal(self) -> None:
        """Reconnect everything: no partition, no disconnected server."""
        self._groups = set()
        self._disconnected = set()
        self._apply_cuts()

    def _apply_cuts(self) -> None:
        pairs = set(self._groups)
        for server in self._disconnected:
            for other in self.servers:
                if other != server:
                    pairs |= {(server, other), (other, server)}
        if pairs:
            cut = sorted(self._disconnected)
            self.sim.partition(f"disconnected {','.join(cut)}" if cut else "partition", pairs)
        elif self.sim.network.blocked:
            self.sim.heal()

    def crash(self, server: str) -> None:
        self.sim.crash(server)

    def restart(self, server: str) -> None:
        self.sim.restart(server)

    def duplicate(self, predicate: Callable[[Envelope], bool] | None) -> None:
        """Deliver every message matching `predicate` twice (None: stop)."""
        self._duplicate = predicate
        self._set_link()

    def unreliable(self, on: bool = True, *, long_reordering: bool = False) -> None:
        """An unreliable network, as in the MIT 6.5840 labs: each message is lost with
        probability 1/10 and duplicated with probability 1/20, and delayed 0-27 ms; with
        `long_reordering`, two thirds of the replies (responses between servers) are held
        back a further 200-2200 ms, so they arrive long after newer ones. Drawn from the
        cluster's seed, so a scenario runs the same every time."""
        self._unreliable = random.Random(f"unreliable:{self.sim.spec.seed}") if on else None
        self._long_reordering = on and long_reordering
        self._set_link()

    def _set_link(self) -> None:
        active = self._duplicate is not None or self._unreliable is not None
        self.sim.link = self._link if active else None

    def _link(self, envelope: Envelope) -> Sequence[int]:
        copies = 2 if self._duplicate is not None and self._duplicate(envelope) else 1
        rng = self._unreliable
        if rng is None:
            return (0,) * copies
        if rng.random() < 0.1:
            return ()
        if rng.random() < 0.05:
            copies += 1
        delays = []
        for _ in range(copies):
            delay = rng.randrange(28)
            reply = isinstance(envelope.message, REPLIES)
            if self._long_reordering and reply and rng.random() < 2 / 3:
                delay += 200 + rng.randrange(2001)
            delays.append(delay)
        return delays

    # ----------------------------------------------------------------- clients

    def start(self, server: str, command: dict[str, Any]) -> tuple[int, int, bool]:
        """Hand a key-value command straight to `server`, as the MIT 6.5840 labs' `Start()`:
        if it is the leader it appends the command at once and returns (its index, the term,
        True); otherwise (or if it is down) nothing happens and it returns (0, its term,
        False). No client waits for the result: watch the logs (`committed`)."""
        if server in self.sim.down or self.role(server) != "leader":
            return 0, self.term(server), False
        self._started += 1
        client_id = f"{STARTER}-{self._started}"
        # At the forwarding limit, so that a server which is no longer leader drops it.
        request = ClientRequest(client_id, 1, encode(command), hops=MAX_FORWARD_HOPS)
        self.sim.deliver_now(server, Envelope(STARTER, server, request))
        if self.sim.violation is not None:
            raise PropertyViolated(self.sim.violation)
        log = self.sim.views[server].log
        for index in range(len(log), 0, -1):
            if log[index - 1].client_id == client_id:
                return index, log[index - 1].term, True
        return 0, self.term(server), False

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

    def committed(self, index: int) -> tuple[int, Entry | None]:
        """How many servers have committed `index`, and the entry there (the monitors check
        they all hold the same one)."""
        holders = [s for s in self.servers if self.commit_index(s) >= index]
        entry = self.sim.views[holders[0]].log[index - 1] if holders else None
        return len(holders), entry

    def leader(self) -> str | None:
        """The live leader of the highest term, if any (by persisted state)."""
        leaders = self.leaders()
        return leaders[0] if leaders else None

    def leaders(self) -> list[str]:
        """Every live server that is leader now (by persisted state), highest term first:
        more than one only while a deposed leader has not heard of the newer term."""
        return self.sim.leaders()

    def leaders_by_term(self) -> dict[int, str]:
        """Every term's leader so far (from the election-safety monitor's record)."""
        return dict(self.sim.election_safety.leaders)

    @property
    def server_messages(self) -> int:
        """Messages servers have sent one another so far (lost ones included)."""
        return self.sim.server_messages

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
