"""One schedule: a whole cluster (two node-handler instances per server over one store),
simulated clients, the network and the monitors, driven step by step by a `Choices` source.

A step is one event chosen from those that are due: a message delivery, a server's timer
firing or a client's timer. Virtual time (milliseconds) only moves when the chosen event is
in the future: when nothing is due, or when a strategy lets time pass with messages in flight.
Faults happen at step boundaries (crash, restart, partition, heal), at delivery (drop,
duplicate), at publish (delay) and around the handler call (which instance runs it, and a
crash after the save that loses the outbox the handler was publishing).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from raft.core.messages import ClientResponse, Envelope
from raft.core.state import Config
from raft.core.wire import KIND_OF, to_json_value
from raft.node.handler import NodeHandler, NodeOptions
from raft.ports.store import Change
from raft.sim.clients import ClientProtocolError, SimClient
from raft.sim.coverage import Coverage
from raft.sim.faults import Fault, FaultPlan
from raft.sim.linearizability import Operation
from raft.sim.monitors import (
    Durability,
    ElectionSafety,
    LeaderAppendOnly,
    LeaderCompleteness,
    Linearizability,
    Liveness,
    LogDigests,
    LogMatching,
    Monitor,
    StateMachineSafety,
    Violation,
)
from raft.sim.network import DELIVER, TICK, Network, Pending, partition_pairs
from raft.sim.storage import PersistedView, WatchedStore
from raft.sim.strategies import FAIR, Choices, Recorder
from raft.sim.variants import PRODUCTION, ServerFactory, resolve_target

NO_FAULTS = FaultPlan()
# A timer event that changed nothing (an instance whose cached state is stale still thinks
# the deadline is ahead) comes back after this many virtual ms, as a periodic timer trigger
# would; otherwise virtual time would never reach the stale deadline.
TIMER_PERIOD = 10


@dataclass(frozen=True)
class SimSetup:
    """The shape of every schedule of a test run."""

    servers: int = 5
    clients: int = 3
    keys: int = 2
    max_steps: int = 200
    # Fair steps the liveness monitor may stay hot after faults stop.
    liveness_steps: int = 400
    election_timeout_min: int = 150
    election_timeout_max: int = 300
    heartbeat_interval: int = 50
    client_timeout: int = 200
    target: str = PRODUCTION

    def config(self) -> Config:
        return Config(
            election_timeout_min=self.election_timeout_min,
            election_timeout_max=self.election_timeout_max,
            heartbeat_interval=self.heartbeat_interval,
        )

    def server_ids(self) -> tuple[str, ...]:
        return tuple(f"s{i}" for i in range(1, self.servers + 1))

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SimSetup:
        return cls(**doc)


@dataclass(frozen=True)
class ScheduleSpec:
    """What one schedule was drawn with (everything else is in its recorded choices)."""

    index: int
    seed: int
    strategy: str
    plan: FaultPlan
    node_seed: int
    fair_suffix: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": self.seed,
            "strategy": self.strategy,
            "plan": self.plan.to_json(),
            "node_seed": self.node_seed,
            "fair_suffix": self.fair_suffix,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ScheduleSpec:
        return cls(**{**doc, "plan": FaultPlan.from_json(doc["plan"])})


@dataclass
class Outcome:
    violation: Violation | None
    steps: int
    coverage: Coverage
    choices: list[list[int]] | None = None
    trace: list[dict[str, Any]] | None = None
    history: list[Operation] = field(default_factory=list)


class Simulator:
    def __init__(
        self,
        setup: SimSetup,
        spec: ScheduleSpec,
        choices: Choices,
        factory: ServerFactory | None = None,
        *,
        tracing: bool = False,
        scripts: Sequence[deque[dict[str, Any]]] = (),
    ) -> None:
        self.setup = setup
        self.spec = spec
        self.choices = choices
        self.recorder = choices if isinstance(choices, Recorder) else None
        self.set_plan(spec.plan)
        self.servers = setup.server_ids()
        self.server_set = frozenset(self.servers)
        self.quorum = len(self.servers) // 2 + 1
        self.max_down = self.quorum - 1
        self.config = setup.config()
        self.now = 0
        self.step_no = 0
        self.seq = 0
        self.stamp = 0
        self.issuing = True
        self.violation: Violation | None = None
        self.coverage = Coverage()
        self.network = Network(self.servers)
        self.down: set[str] = set()
        self.store = WatchedStore(self.servers, self._on_save)
        self.views = self.store.views
        self._outbox_lost = False
        self._saved = False
        options = NodeOptions(
            config=self.config,
            seed=spec.node_seed,
            server_factory=factory or resolve_target(setup.target),
        )
        # The simulator is the bus (its `publish`) both instances of every server use.
        self.handlers = {
            s: (
                NodeHandler(s, self.servers, self.store, self, options),
                NodeHandler(s, self.servers, self.store, self, options),
            )
            for s in self.servers
        }
        self.timers = {s: Pending(0, 0, TICK, f"{s}:timer", s) for s in self.servers}
        self._timer_items: list[Pending] = []
        keys = tuple("xyzw"[i] if i < 4 else f"k{i}" for i in range(setup.keys))
        self.clients: list[SimClient] = [
            SimClient(f"c{i}", self.servers, keys, setup.client_timeout, self.enqueue)
            for i in range(1, setup.clients + 1)
        ]
        for script in scripts:
            cid = f"c{len(self.clients) + 1}"
            self.clients.append(
                SimClient(cid, self.servers, keys, setup.client_timeout, self.enqueue, script)
            )
        self.client_by_id = {c.id: c for c in self.clients}
        self._rebuild_timers()
        self.history: list[Operation] = []
        self.pending_ops = 0
        # Monitors.
        self.digests = LogDigests(self.servers)
        self.save_monitors: list[Monitor] = [
            ElectionSafety(),
            LeaderAppendOnly(),
            LogMatching(self.digests),
            StateMachineSafety(self.digests),
            LeaderCompleteness(self.digests),
        ]
        self.durability = Durability(self.servers, self.views)
        self.linearizability = Linearizability()
        self.liveness = Liveness(setup.liveness_steps)
        self.tracing = tracing
        self.trace: list[dict[str, Any]] = []
        self._notes: list[str] = []
        self._event: dict[str, Any] = {}

    # ----------------------------------------------------------------- running

    def run(self) -> Outcome:
        while self.step_no < self.setup.max_steps and self.violation is None:
            self.step()
        if self.violation is None and self.spec.fair_suffix:
            self.stop_faults()
            while self.violation is None and self.liveness.hot(self.has_leader(), self.pending_ops):
                self.step()
                problem = self.liveness.after_step(self.has_leader(), self.pending_ops)
                if problem:
                    self.violate(self.liveness.name, problem)
        return self.outcome()

    def outcome(self) -> Outcome:
        recorded = self.recorder.steps if self.recorder is not None else None
        return Outcome(
            self.violation,
            self.step_no,
            self.coverage,
            recorded,
            self.trace if self.tracing else None,
            self.history,
        )

    def set_plan(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._structural = plan.structural
        # Mutually exclusive faults share one draw; all-zero tuples are skipped entirely.
        self._delivery_rates = (plan.drop, plan.duplicate) if plan.drop or plan.duplicate else ()
        self._handler_rates = (
            (plan.race, plan.crash_after_save) if plan.race or plan.crash_after_save else ()
        )
        self._race_only = (plan.race, 0.0)

    def stop_faults(self) -> None:
        """Faults stop: heal, restart everyone, and schedule fairly from now on."""
        self.set_plan(NO_FAULTS)
        self.choices = FAIR
        self.issuing = False
        if self.network.blocked:
            self.heal()
        for server in sorted(self.down):
            self.restart(server)

    def step(self) -> None:
        self.step_no += 1
        choices = self.choices
        choices.next_step()
        if self._structural:
            self._structural_faults()
        items, earliest, due = self._enabled()
        item = items[choices.event(items, earliest, due, self.step_no)]
        if item.time > self.now:
            self.now = item.time
        if item.kind == DELIVER:
            if item is not items[earliest] and self._overtakes(item, items):
                self.coverage.faults[Fault.REORDER] += 1
            self._deliver(item)
        elif item.kind == TICK:
            self._record_event({"type": "tick", "server": item.target})
            self.coverage.received[f"{self.role_of(item.target)}/tick"] += 1
            self._run_server(item.target, None)
        else:
            self._client_timer(self.client_by_id[item.target])
        if self.tracing:
            self._finish_trace_step()

    def _enabled(self) -> tuple[list[Pending], int, int]:
        """Due events, then the next future one; the index of the oldest due event; and how
        many are due. Oldest means smallest (time, seq); written out with locals because this
        runs once per step."""
        while True:
            now = self.now
            due: list[Pending] = []
            future: Pending | None = None
            future_time = future_seq = 0
            oldest = 0
            oldest_time = oldest_seq = 0
            for group in (self.network.inflight, self._timer_items):
                for item in group:
                    time = item.time
                    if time <= now:
                        if (
                            not due
                            or time < oldest_time
                            or (time == oldest_time and item.seq < oldest_seq)
                        ):
                            oldest, oldest_time, oldest_seq = len(due), time, item.seq
                        due.append(item)
                    elif (
                        future is None
                        or time < future_time
                        or (time == future_time and item.seq < future_seq)
                    ):
                        future, future_time, future_seq = item, time, item.seq
            if due:
                if future is not None:
                    due.append(future)
                    return due, oldest, len(due) - 1
                return due, oldest, len(due)
            assert future is not None, "every live server has a timer"
            self.now = future_time

    @staticmethod
    def _overtakes(item: Pending, items: list[Pending]) -> bool:
        """Whether a message is delivered before an older one (counted as a reordering)."""
        return any(
            other.kind == DELIVER and (other.time, other.seq) < (item.time, item.seq)
            for other in items
        )

    # ----------------------------------------------------------------- events

    def _deliver(self, item: Pending) -> None:
        self.network.inflight.remove(item)
        choices = self.choices
        envelope = item.envelope
        assert envelope is not None
        fault = choices.fault(self._delivery_rates) if self._delivery_rates else 0
        if fault == 1:
            self.coverage.faults[Fault.DROP] += 1
            if self.tracing:
                self._record_event(self._message_event("drop", item))
            return
        if fault == 2:
            self.coverage.faults[Fault.DUPLICATE] += 1
            self.seq += 1
            copy = Pending(self.now, self.seq, DELIVER, item.actor, item.target, envelope)
            copy.sent_step = item.sent_step
            self.network.inflight.append(copy)
            self._note("duplicated")
        if self.tracing:
            self._record_event(self._message_event("deliver", item))
        client = self.client_by_id.get(item.target)
        if client is not None:
            self._client_response(client, envelope)
            return
        kind = KIND_OF[type(envelope.message)]
        self.coverage.received[f"{self.role_of(item.target)}/{kind}"] += 1
        self._run_server(item.target, envelope)

    def _run_server(self, server: str, envelope: Envelope | None) -> None:
        choices = self.choices
        fault = 0
        if self._handler_rates:
            can_crash = len(self.down) < self.max_down
            fault = choices.fault(self._handler_rates if can_crash else self._race_only)
        instance = 1 if fault == 1 else 0
        crash = fault == 2
        if instance:
            self.coverage.faults[Fault.RACE] += 1
            self._note("second instance")
        handler = self.handlers[server][instance]
        self._outbox_lost = crash
        self._saved = False
        try:
            if envelope is None:
                handler.tick(self.now)
            else:
                handler.handle((envelope,), self.now)
        except Exception as exc:  # the server under test failed: that is a finding
            self.violate("handler-exception", f"{server}: {type(exc).__name__}: {exc}")
        finally:
            self._outbox_lost = False
        if envelope is None and not self._saved and server in self.timers:
            timer = self.timers[server]
            timer.time = max(timer.time, self.now + TIMER_PERIOD)
        if crash:
            self.coverage.faults[Fault.CRASH_AFTER_SAVE] += 1
            self._note(f"crash of {server} after its save: outbox lost")
            self.crash(server)

    def _rebuild_timers(self) -> None:
        """Timers of live servers (in server order) and of active clients."""
        self._timer_items = [self.timers[s] for s in self.servers if s in self.timers]
        self._timer_items.extend(c.timer for c in self.clients if c.active)

    def _client_timer(self, client: SimClient) -> None:
        retry = client.current is not None
        op = client.on_timer(self.now, self.choices, self.issuing)
        if not client.active:
            self._rebuild_timers()
        if op is not None:
            self.stamp += 1
            op.invoke = self.stamp
            self.history.append(op)
            self.linearizability.on_invoke(op)
            self.pending_ops += 1
            self._record_event({"type": "invoke", "client": client.id, "op": op.describe()})
        elif retry:
            self._record_event({"type": "retry", "client": client.id})
        else:
            self._record_event({"type": "idle", "client": client.id})

    def _client_response(self, client: SimClient, envelope: Envelope) -> None:
        m = envelope.message
        assert isinstance(m, ClientResponse)
        self.coverage.received[f"client/{KIND_OF[type(m)]}"] += 1
        self.stamp += 1
        try:
            op = client.on_response(m, self.now, self.stamp)
        except ClientProtocolError as exc:
            self.violate("sessions", str(exc))
            return
        if op is None:
            return
        self.pending_ops -= 1
        problem = self.durability.on_ack(op, m.index, m.term)
        if problem:
            self.violate(self.durability.name, problem)
            return
        problem = self.linearizability.on_response(op)
        if problem:
            self.violate(self.linearizability.name, problem)

    # ----------------------------------------------------------------- the bus

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        if self._outbox_lost:
            return
        for envelope in envelopes:
            sender = envelope.sender
            if sender in self.server_set:
                kind = KIND_OF[type(envelope.message)]
                self.coverage.sent[f"{self.role_of(sender)}/{kind}"] += 1
            self.enqueue(envelope)

    def enqueue(self, envelope: Envelope) -> None:
        to = envelope.to
        if (envelope.sender, to) in self.network.blocked:
            return
        time = self.now
        plan = self.plan
        if plan.delay and self.choices.flip(plan.delay):
            self.coverage.faults[Fault.DELAY] += 1
            time += 25 * (1 + self.choices.below(16))
        self.seq += 1
        item = Pending(time, self.seq, DELIVER, to, to, envelope, self.step_no)
        if to in self.down:
            self.network.parked[to].append(item)
        else:
            self.network.inflight.append(item)

    # ----------------------------------------------------------------- faults

    def _structural_faults(self) -> None:
        plan = self.plan
        blocked = bool(self.network.blocked)
        rates = (
            plan.crash if len(self.down) < self.max_down else 0.0,
            plan.restart if self.down else 0.0,
            0.0 if blocked else plan.partition,
            plan.heal if blocked else 0.0,
        )
        fault = self.choices.fault(rates)
        if fault == 1:
            live = [s for s in self.servers if s not in self.down]
            self.coverage.faults[Fault.CRASH] += 1
            self.crash(live[self.choices.below(len(live))])
        elif fault == 2:
            down = sorted(self.down)
            self.restart(down[self.choices.below(len(down))])
        elif fault == 3:
            shape = self.choices.below(3)
            rotation = self.choices.below(len(self.servers))
            self.partition(*partition_pairs(self.servers, shape, rotation))
        elif fault == 4:
            self.heal()

    def crash(self, server: str) -> None:
        """The server's instances die: caches and unsent messages are gone, the store is not."""
        for handler in self.handlers[server]:
            handler.drop_cache()
        self.down.add(server)
        self.timers.pop(server, None)
        self._rebuild_timers()
        self.network.park(server)
        self._note(f"crash {server}")

    def restart(self, server: str) -> None:
        self.coverage.faults[Fault.RESTART] += 1
        self.down.discard(server)
        self.network.unpark(server)
        self.seq += 1
        timer = Pending(0, self.seq, TICK, f"{server}:timer", server)
        self.timers[server] = timer
        self._rebuild_timers()
        state = self.views[server].state
        if state:
            self._rearm(server, state)
        self._note(f"restart {server}")

    def partition(self, name: str, pairs: set[tuple[str, str]]) -> None:
        self.coverage.faults[Fault.PARTITION] += 1
        self.network.partition(name, pairs)
        self._note(f"partition {name}")

    def heal(self) -> None:
        self.coverage.faults[Fault.HEAL] += 1
        self.network.heal()
        self._note("heal")

    # ----------------------------------------------------------------- observing

    def _on_save(
        self,
        server: str,
        before: dict[str, Any] | None,
        change: Change,
        old_length: int,
        view: PersistedView,
    ) -> None:
        state = change.state
        self._saved = True
        self.digests.update(server, change, view)
        if self.violation is None:
            for monitor in self.save_monitors:
                problem = monitor.on_save(server, before, change, old_length, view)
                if problem:
                    self.violate(monitor.name, problem)
                    break
            else:
                problem = self.durability.on_save(server, change)
                if problem:
                    self.violate(self.durability.name, problem)
        role = state["role"]
        previous = before["role"] if before else "follower"
        if role != previous:
            self.coverage.transitions[f"{previous}->{role}"] += 1
        if server in self.timers:
            self._rearm(server, state)

    def _rearm(self, server: str, state: dict[str, Any]) -> None:
        if state["role"] == "leader":
            deadline = state["heartbeat_deadline"]
            if self.config.check_quorum:
                deadline = min(deadline, state["quorum_check_deadline"])
        else:
            deadline = state["election_deadline"]
        timer = self.timers[server]
        if timer.time != deadline:
            self.seq += 1
            timer.time = deadline
            timer.seq = self.seq

    def violate(self, prop: str, message: str) -> None:
        if self.violation is None:
            self.violation = Violation(prop, message, self.step_no)
            self._note(f"VIOLATION {prop}: {message}")

    def role_of(self, server: str) -> str:
        return self.views[server].state.get("role", "follower")  # type: ignore[no-any-return]

    def has_leader(self) -> bool:
        return any(
            self.views[s].state.get("role") == "leader" for s in self.servers if s not in self.down
        )

    # ----------------------------------------------------------------- tracing

    def _note(self, text: str) -> None:
        if self.tracing:
            self._notes.append(text)

    def _message_event(self, kind: str, item: Pending) -> dict[str, Any]:
        if not self.tracing:
            return {}
        envelope = item.envelope
        assert envelope is not None
        return {
            "type": kind,
            "kind": KIND_OF[type(envelope.message)],
            "from": envelope.sender,
            "to": envelope.to,
            "sent": item.sent_step,
            "body": to_json_value(envelope.message),
        }

    def _record_event(self, event: dict[str, Any]) -> None:
        if self.tracing:
            self._event = event

    def _finish_trace_step(self) -> None:
        servers = {}
        for s in self.servers:
            state = self.views[s].state
            servers[s] = [
                "down" if s in self.down else state.get("role", "follower"),
                state.get("current_term", 0),
                state.get("commit_index", 0),
                len(self.views[s].log),
            ]
        self.trace.append(
            {
                "step": self.step_no,
                "now": self.now,
                "event": self._event,
                "notes": self._notes,
                "partition": self.network.partition_name,
                "servers": servers,
            }
        )
        self._notes = []
