"""One schedule: a whole cluster (node handlers on several function instances over one
store, see `instances.py`), simulated clients, the network and the monitors, driven step by
step by a `Choices` source.

A step is one event chosen from those that are due: a message delivery, a server's timer
firing or a client's timer. Virtual time (milliseconds) only moves when the chosen event is
in the future: when nothing is due, or when a strategy lets time pass with messages in flight.
Faults happen at step boundaries (crash, restart, partition, heal, an instance replaced),
at delivery (drop, duplicate), at publish (delay) and around the handler call (which trigger
instance runs it, and a crash after the save that loses the outbox the handler was
publishing).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from raft.core.messages import (
    ChangeMembership,
    ClientResponse,
    Envelope,
    TransferLeadership,
)
from raft.core.wire import KIND_OF
from raft.node.handler import NodeOptions
from raft.sim.clients import ClientProtocolError, SimClient
from raft.sim.coverage import Coverage
from raft.sim.faults import Fault, FaultPlan
from raft.sim.injector import BATCH, CRASH_AFTER_SAVE, DROP, DUPLICATE, RACE, FaultInjector
from raft.sim.instances import Instances
from raft.sim.linearizability import Operation
from raft.sim.monitors import (
    CommitSafety,
    ConfigurationSafety,
    Durability,
    ElectionSafety,
    LeaderAppendOnly,
    LeaderCompleteness,
    Linearizability,
    Liveness,
    LogDigests,
    LogMatching,
    Monitor,
    SnapshotSafety,
    StateMachineSafety,
    Violation,
)
from raft.sim.network import CLIENT, DELIVER, TICK, Network, Pending
from raft.sim.rest import at_rest
from raft.sim.schedule import Outcome, ScheduleSpec, SimSetup
from raft.sim.storage import SaveEvent, WatchedStore
from raft.sim.strategies import FAIR, Choices, Recorder
from raft.sim.tracer import Tracer
from raft.sim.variants import ServerFactory, resolve_handler, resolve_target

NO_FAULTS = FaultPlan()
# The sender of operators' requests (leadership transfers).
OPERATOR = "operator"
MESSAGE_TYPES: tuple[type, ...] = tuple(KIND_OF)
# The timer trigger ticks every server at least this often (virtual ms), whatever its stored
# deadlines say, as Azure's timer function does (every second, against election timeouts of
# 6-12 s; here a third of the minimum election timeout). Without it a server would only tick
# at a deadline it stored, and a deadline wrongly far ahead would never be found out.
TIMER_PERIOD = 50
# Messages handed to a server in one handler call, at most, when a batch fault takes the
# other messages due for it (Service Bus hands a trigger up to maxMessageBatchSize).
MAX_BATCH = 8


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
        prefix_steps: int | None = None,
    ) -> None:
        self.setup = setup
        # Steps before faults stop (a shrunk fair schedule may stop them sooner).
        self.prefix_steps = setup.max_steps if prefix_steps is None else prefix_steps
        self.spec = spec
        self.choices = choices
        self.recorder = choices if isinstance(choices, Recorder) else None
        self.servers = setup.server_ids()
        self.server_set = frozenset(self.servers)
        self.quorum = len(self.servers) // 2 + 1
        self.max_down = self.quorum - 1
        self.config = spec.config(setup)
        self.now = 0
        self.step_no = 0
        self.seq = 0
        self.stamp = 0
        self.issuing = True
        self.violation: Violation | None = None
        self.coverage = Coverage()
        self.network = Network(self.servers)
        self.down: set[str] = set()
        self.skew = dict.fromkeys(self.servers, 0)
        # Servers whose clock jumped and that have not ticked since.
        self._jumped: set[str] = set()
        # When each server last ticked (its periodic tick is due a period later).
        self._ticked = dict.fromkeys(self.servers, 0)
        # Scenario tests' network conditions: for each message sent, the extra delay (ms) of
        # each copy delivered; () loses it, two copies duplicate it.
        self.link: Callable[[Envelope], Sequence[int]] | None = None
        self.store = WatchedStore(self.servers, self._on_save)
        self.views = self.store.views
        self._outbox_lost = False
        self._saved = False
        # Whether the server being run became leader in this step, and crashes for it.
        self._elected = self._deposed = False
        # Messages servers published to servers (lost ones included), in all and per
        # (sender, destination).
        self.server_messages = 0
        self.link_messages: Counter[tuple[str, str]] = Counter()
        self._fault = 0
        # Virtual ms by which messages published during this step are delayed.
        self.delay = 0
        self.injector = FaultInjector(self, spec.plan)
        options = NodeOptions(
            config=self.config,
            seed=spec.node_seed,
            snapshot_every=setup.snapshot_every,
            compaction_keep=setup.compaction_keep,
            server_factory=factory or resolve_target(setup.target),
        )
        # The simulator is the bus (its `publish`) every handler on every instance uses.
        handler = resolve_handler(setup.target)
        self.instances = Instances(
            self.servers, lambda s: handler(s, self.servers, self.store, self, options)
        )
        self.instance_count = self.instances.count
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
        self._actors = {a: i for i, a in enumerate([*self.servers, *self.client_by_id])}
        self._codes: dict[tuple[str, str, type], int] = {}
        for server, timer in self.timers.items():
            timer.code = self.code(TICK, server)
        for client in self.clients:
            client.timer.code = self.code(CLIENT, client.id)
        self._rebuild_timers()
        self.history: list[Operation] = []
        self.pending_ops = 0
        # Monitors.
        self.digests = LogDigests(self.servers)
        self.election_safety = ElectionSafety()
        self.save_monitors: list[Monitor] = [
            self.election_safety,
            LeaderAppendOnly(),
            LogMatching(self.digests),
            StateMachineSafety(self.digests),
            # After StateMachineSafety, which extends the committed log it reads.
            CommitSafety(self.digests, self.views),
            LeaderCompleteness(self.digests),
            SnapshotSafety(self.servers),
            ConfigurationSafety(self.servers),
        ]
        self.durability = Durability(self.servers, self.views)
        self.save_monitors.append(self.durability)
        self._watching = {
            trigger: [m for m in self.save_monitors if m.trigger == trigger]
            for trigger in ("leader", "log", "commit", "snapshot")
        }
        self.linearizability = Linearizability()
        self.liveness = Liveness(setup.liveness_ms)
        self.tracing = tracing
        self.tracer = Tracer(tracing)

    # ----------------------------------------------------------------- running

    def run(self) -> Outcome:
        limit = self.prefix_steps if self.spec.fair_suffix else self.setup.max_steps
        while self.step_no < limit and self.violation is None:
            self.step()
        if self.violation is None and self.spec.fair_suffix:
            self.stop_faults()
            self.settle()
            if self.violation is None:
                at_rest(self)
        return self.outcome()

    def settle(self) -> None:
        """Step (fairly, faults stopped) until the liveness monitor cools down."""
        self.liveness.start(self.now, self.step_no)
        while self.violation is None:
            unfinished = self.unfinished()
            if unfinished is None:
                return
            self.step()
            problem = self.liveness.after_step(self.now, self.step_no, unfinished)
            if problem:
                self.violate(self.liveness.name, problem)

    def unfinished(self) -> str | None:
        """What keeps the liveness monitor hot, or None: no leader, requests pending, or a
        server that has not applied all of the (newest) leader's log, which, faults over,
        must all commit."""
        leaders = self.leaders()
        if not leaders:
            return "no leader was elected"
        if self.pending_ops:
            return f"{self.pending_ops} client requests still pending"
        # Servers the leader's configuration leaves out get nothing more: only members count.
        members = [s for s in self.servers if s in self.views[leaders[0]].state["servers"]]
        states = [self.views[s].state for s in members]
        end = max(
            self.views[leaders[0]].state["last_index"],
            *(state.get("commit_index", 0) for state in states),
        )
        behind = [
            s
            for s, state in zip(members, states, strict=True)
            if state.get("last_applied", 0) < end
        ]
        if behind:
            return f"{', '.join(behind)} had not applied the leader's log up to {end}"
        return None

    def outcome(self) -> Outcome:
        recorded = self.recorder.steps if self.recorder is not None else None
        return Outcome(
            self.violation,
            self.step_no,
            self.coverage,
            recorded,
            self.tracer.steps if self.tracing else None,
            self.history,
        )

    def set_plan(self, plan: FaultPlan) -> None:
        self.injector.set_plan(plan)

    def stop_faults(self) -> None:
        """Faults stop: heal, restart everyone, and schedule fairly from now on."""
        self.set_plan(NO_FAULTS)
        self.choices = FAIR
        self.issuing = False
        if self.network.blocked:
            self.heal()
        for server in sorted(self.down):
            self.restart(server)
        for server in self.servers:
            if self.skew[server]:
                self.set_skew(server, 0)

    def step(self) -> None:
        self.step_no += 1
        choices = self.choices
        choices.next_step()
        self.delay = 0
        self._fault = self.injector.draw() if self.injector.active else 0
        if choices is FAIR:
            # The fair suffix: the oldest event, found without listing what is due.
            item = self._oldest()
        else:
            items, earliest, due = self._enabled()
            item = items[choices.event(items, earliest, due, self.step_no)]
            head = items[earliest]
            if item is not head and item.kind == DELIVER and head.kind == DELIVER:
                self.coverage.faults[Fault.REORDER] += 1
        self._execute(item)

    def step_with(self, item: Pending, fault: int = 0) -> None:
        """One step running `item`, chosen by the caller rather than a strategy, with
        `fault` (a drop, duplicate, racing instance or crash after the save, as the injector
        numbers them) applied to it: scripted scenarios."""
        self.step_no += 1
        self.delay = 0
        self._fault = fault
        self._execute(item)

    def _execute(self, item: Pending) -> None:
        if item.time > self.now:
            self.now = item.time
        if item.kind == DELIVER:
            self._deliver(item)
        elif item.kind == TICK:
            if self.tracing:
                self.tracer.event({"type": "tick", "server": item.target})
            self.coverage.received[(self.role_of(item.target), "tick")] += 1
            self._run_server(item.target, None)
        else:
            self._client_timer(self.client_by_id[item.target])
        if self.tracing:
            self.tracer.finish_step(
                self.step_no, self.now, self.network.partition_name, self._server_rows
            )

    def _oldest(self) -> Pending:
        """The event with the smallest (time, seq): the oldest due one, else the next."""
        oldest: Pending | None = None
        for group in (self.network.inflight, self._timer_items):
            for item in group:
                if (
                    oldest is None
                    or item.time < oldest.time
                    or (item.time == oldest.time and item.seq < oldest.seq)
                ):
                    oldest = item
        assert oldest is not None, "every live server has a timer"
        return oldest

    def next_time(self) -> int:
        """When the oldest pending event is due (what a fair step runs next)."""
        return self._oldest().time

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

    # ----------------------------------------------------------------- events

    def _deliver(self, item: Pending) -> None:
        self.network.inflight.remove(item)
        envelope = item.envelope
        assert envelope is not None
        fault = self._fault
        if fault == DROP:
            self.coverage.faults[Fault.DROP] += 1
            if self.tracing:
                self.tracer.message("drop", item)
            return
        if fault == DUPLICATE:
            self.coverage.faults[Fault.DUPLICATE] += 1
            self.seq += 1
            copy = Pending(self.now, self.seq, DELIVER, item.actor, item.target, envelope)
            copy.sent_step = item.sent_step
            copy.code = item.code
            self.network.inflight.append(copy)
            self.tracer.note("duplicated")
        if self.tracing:
            self.tracer.message("deliver", item)
        client = self.client_by_id.get(item.target)
        if client is not None:
            self._client_response(client, envelope)
            return
        batch = (envelope, *self._batch_with(item)) if fault == BATCH else (envelope,)
        role, received = self.role_of(item.target), self.coverage.received
        for message in batch:
            received[(role, KIND_OF[type(message.message)])] += 1
        self._run_server(item.target, batch)

    def _batch_with(self, item: Pending) -> list[Envelope]:
        """The other messages due for `item`'s server, oldest first, taken out of the network
        to go with it in one handler call (a batch of one if there are none)."""
        due = sorted(
            (p for p in self.network.inflight if p.target == item.target and p.time <= self.now),
            key=lambda p: (p.time, p.seq),
        )[: MAX_BATCH - 1]
        if not due:
            return []
        self.coverage.faults[Fault.BATCH] += 1
        for p in due:
            self.network.inflight.remove(p)
        self.tracer.batch(due)
        self.tracer.note(f"{len(due) + 1} messages handed to {item.target} in one batch")
        return [p.envelope for p in due if p.envelope is not None]

    def _run_server(self, server: str, batch: tuple[Envelope, ...] | None) -> None:
        """Run the server's handler on a batch of messages, or its timer (None)."""
        fault = self._fault
        crash = fault == CRASH_AFTER_SAVE
        if batch is None:
            handler = self.instances.for_tick(server)
            self._jumped.discard(server)
            self._ticked[server] = self.now
        else:
            scaled_out = fault == RACE
            if scaled_out:
                self.coverage.faults[Fault.RACE] += 1
                self.tracer.note("second trigger instance")
            handler = self.instances.for_delivery(server, scaled_out)
        self._outbox_lost = crash
        self._saved = False
        self._elected = self._deposed = False
        local_now = max(1, self.now + self.skew[server])
        if self.tracing:
            loads, conflicts = self.store.loads, self.store.inner.conflicts
        try:
            if batch is None:
                handler.tick(local_now)
            else:
                handler.handle(batch, local_now)
        except Exception as exc:  # the server under test failed: that is a finding
            self.violate("handler-exception", f"{server}: {type(exc).__name__}: {exc}")
        finally:
            self._outbox_lost = False
        if self.tracing:
            if self.store.inner.conflicts != conflicts:
                self.tracer.note("its save conflicted: another instance had saved")
            if self.store.loads != loads:
                self.tracer.note("its handler loaded the stored state (cache cold or stale)")
        if batch is None and server in self.timers and not self._saved:
            # Nothing was due after all (or nothing changed): the next periodic tick.
            self._rearm(server, self.views[server].state)
        if crash:
            self.coverage.faults[Fault.CRASH_AFTER_SAVE] += 1
            self.tracer.note(f"crash of {server} after its save: outbox lost")
            self.crash(server)
            self.injector.crashed(server)
        elif self._deposed:
            self.coverage.faults[Fault.CRASH_NEW_LEADER] += 1
            self.tracer.note(f"crash of {server}, just elected, before its messages left")
            self.crash(server)
            self.injector.crashed(server)

    def deliver_now(self, server: str, envelope: Envelope) -> None:
        """Hand `envelope` to the server's trigger instance at once, outside any step (the
        scenario API's `start`)."""
        self._fault = 0
        self._run_server(server, (envelope,))

    def code(self, kind: int, target: str, sender: str = "", message: type | None = None) -> int:
        """The event's identity as a positive int (see `Pending.code`)."""
        actors = len(self._actors) + 1
        sender_index = self._actors.get(sender, len(self._actors))
        message_index = MESSAGE_TYPES.index(message) + 1 if message is not None else 0
        base = (kind * actors + self._actors[target]) * actors + sender_index
        return 1 + base * (len(MESSAGE_TYPES) + 1) + message_index

    def wake(self, client: SimClient) -> None:
        """A scripted client got work: its timer fires now."""
        if not client.active:
            client.active = True
            client.timer.time = self.now
            self._rebuild_timers()

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
            if self.tracing:
                self.tracer.event({"type": "invoke", "client": client.id, "op": op.describe()})
        elif self.tracing:
            self.tracer.event({"type": "retry" if retry else "idle", "client": client.id})

    def _client_response(self, client: SimClient, envelope: Envelope) -> None:
        m = envelope.message
        assert isinstance(m, ClientResponse)
        self.coverage.received[("client", KIND_OF[type(m)])] += 1
        self.stamp += 1
        try:
            op = client.on_response(m, self.now, self.stamp)
        except ClientProtocolError as exc:
            self.violate("sessions", str(exc))
            return
        if op is None:
            return
        self.pending_ops -= 1
        # A read's index is its read index, not an entry of its own (linearizability checks it).
        problem = None if op.op == "get" else self.durability.on_ack(op, m.index, m.term)
        if problem:
            self.violate(self.durability.name, problem)
            return
        problem = self.linearizability.on_response(op)
        if problem:
            self.violate(self.linearizability.name, problem)

    # ----------------------------------------------------------------- the bus

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        """The bus port: a handler publishes its batch (all from its own server)."""
        if self._outbox_lost or not envelopes:
            return
        if self._elected and self.injector.active and self.injector.crashes_new_leader():
            self._deposed = True
            return
        role = self.role_of(envelopes[0].sender)
        sent = self.coverage.sent
        servers = self.server_set
        for envelope in envelopes:
            sent[(role, KIND_OF[type(envelope.message)])] += 1
            if envelope.to in servers:
                self.server_messages += 1
                self.link_messages[envelope.sender, envelope.to] += 1
            self.enqueue(envelope)

    def enqueue(self, envelope: Envelope) -> None:
        to = envelope.to
        if (envelope.sender, to) in self.network.blocked or to not in self._actors:
            # Cut off, or addressed to no server or client: on the bus, a message no
            # subscription matches is dropped.
            return
        if self.link is None:
            self._enqueue(envelope, 0)
            return
        delays = self.link(envelope)
        if len(delays) != 1:
            self.coverage.faults[Fault.DROP if not delays else Fault.DUPLICATE] += 1
        for delay in delays:
            self._enqueue(envelope, delay)

    def _enqueue(self, envelope: Envelope, extra_delay: int) -> None:
        to = envelope.to
        time = self.now + self.delay + extra_delay
        self.seq += 1
        key = (to, envelope.sender, type(envelope.message))
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = self.code(DELIVER, to, envelope.sender, key[2])
        item = Pending(time, self.seq, DELIVER, to, to, envelope, self.step_no, code)
        if to in self.down:
            self.network.parked[to].append(item)
        else:
            self.network.inflight.append(item)

    # ----------------------------------------------------------------- the cluster's shape

    def crash(self, server: str) -> None:
        """The server's handlers die: caches and unsent messages are gone, the store is not."""
        self.instances.crash(server)
        self.down.add(server)
        self.timers.pop(server, None)
        self._rebuild_timers()
        self.network.park(server)
        self.tracer.note(f"crash {server}")

    def restart(self, server: str) -> None:
        self.coverage.faults[Fault.RESTART] += 1
        self.down.discard(server)
        self.network.unpark(server)
        self.seq += 1
        timer = Pending(0, self.seq, TICK, f"{server}:timer", server)
        timer.code = self.code(TICK, server)
        self.timers[server] = timer
        self._rebuild_timers()
        state = self.views[server].state
        if state:
            self._rearm(server, state)
        self.tracer.note(f"restart {server}")

    def transfer_leadership(self, leader: str, target: str) -> None:
        """An operator asks `leader` to hand leadership to `target` (a message like any
        other: it can be lost with the leader, or arrive after it stepped down)."""
        self.coverage.faults[Fault.TRANSFER] += 1
        self.enqueue(Envelope(OPERATOR, leader, TransferLeadership(target)))
        self.tracer.note(f"an operator asks {leader} to transfer leadership to {target}")

    def change_membership(self, leader: str, server: str) -> None:
        """An operator asks `leader` to remove `server` if it is in the leader's configuration
        (keeping at least three), or to add it back; one change at a time, so the leader may
        drop it."""
        servers = self.views[leader].state["servers"]
        add = server not in servers
        if not add and len(servers) <= 3:
            return
        self.coverage.faults[Fault.MEMBERSHIP] += 1
        self.enqueue(Envelope(OPERATOR, leader, ChangeMembership(server, add)))
        verb = "add" if add else "remove"
        self.tracer.note(f"an operator asks {leader} to {verb} {server}")

    def replace_instance(self, which: int) -> None:
        self.coverage.faults[Fault.COLD] += 1
        name = self.instances.replace(which)
        self.tracer.note(f"{name} replaced by a cold one")

    def set_skew(self, server: str, offset: int) -> None:
        self.coverage.faults[Fault.SKEW] += 1
        self.skew[server] = offset
        # The periodic timer trigger ticks the server soon, whatever its deadlines say: then
        # it notices the jump (the core pulls back times set by a clock that ran ahead).
        # Waiting for a deadline set by the old clock could leave a leader silent for as
        # long as its clock was ahead. Until that tick, saves do not re-arm it later.
        self._jumped.add(server)
        if server in self.timers:
            self._rearm(server, self.views[server].state)
        self.tracer.note(f"clock of {server} now {offset:+d} ms")

    def partition(self, name: str, pairs: set[tuple[str, str]]) -> None:
        self.coverage.faults[Fault.PARTITION] += 1
        self.network.partition(name, pairs)
        self.tracer.note(f"partition {name}")

    def heal(self) -> None:
        self.coverage.faults[Fault.HEAL] += 1
        self.network.heal()
        self.tracer.note("heal")

    # ----------------------------------------------------------------- observing

    def _on_save(self, event: SaveEvent) -> None:
        server, before, change = event.server, event.before, event.change
        state = change.state
        self._saved = True
        log_changed = change.log_from is not None
        if log_changed:
            self.digests.update(server, change, event.view)
        if self.violation is None:
            watching = self._watching
            due = [*watching["log"]] if log_changed else []
            if state["role"] == "leader":
                due += watching["leader"]
            if (
                log_changed
                or before is None
                or before["commit_index"] != state["commit_index"]
                or before["last_applied"] != state["last_applied"]
            ):
                due += watching["commit"]
            if change.snapshot is not None or (
                before is not None and before["log_start"] != state["log_start"]
            ):
                due += watching["snapshot"]
            for monitor in due:
                problem = monitor.on_save(event)
                if problem:
                    self.violate(monitor.name, problem)
                    break
        role = state["role"]
        previous = before["role"] if before else "follower"
        if role != previous:
            self.coverage.transitions[(previous, role)] += 1
            self._elected = role == "leader"
        if server in self.timers:
            self._rearm(server, state)

    def _rearm(self, server: str, state: dict[str, Any]) -> None:
        if server in self._jumped or not state:
            deadline = self.now
        elif state["role"] == "leader":
            deadline = state["heartbeat_deadline"]
            if self.config.check_quorum:
                deadline = min(deadline, state["quorum_check_deadline"])
            deadline -= self.skew[server]
        else:
            deadline = state["election_deadline"] - self.skew[server]
        periodic = self._ticked[server] + TIMER_PERIOD
        if deadline > periodic or (deadline <= self.now == self._ticked[server]):
            # Not due before the next periodic tick; or due, but the tick that just ran had
            # nothing to do: the next periodic tick.
            deadline = periodic
        timer = self.timers[server]
        if timer.time != deadline:
            self.seq += 1
            timer.time = deadline
            timer.seq = self.seq

    def violate(self, prop: str, message: str) -> None:
        if self.violation is None:
            self.violation = Violation(prop, message, self.step_no)
            self.tracer.note(f"VIOLATION {prop}: {message}")

    def snapshot_chars(self, server: str) -> int:
        """The size of the snapshot the store holds for `server` (0 if none)."""
        stored = self.store.inner.load(server)
        return 0 if stored is None or stored.snapshot is None else len(stored.snapshot.data)

    def role_of(self, server: str) -> str:
        role: str = self.views[server].state.get("role", "follower")
        return role

    def leaders(self) -> list[str]:
        """Live servers whose stored role is leader, highest term first."""
        live = [s for s in self.servers if s not in self.down and self.role_of(s) == "leader"]
        return sorted(live, key=lambda s: -self.views[s].state["current_term"])

    def _server_rows(self) -> dict[str, list[Any]]:
        rows = {}
        for s in self.servers:
            state = self.views[s].state
            rows[s] = [
                "down" if s in self.down else state.get("role", "follower"),
                state.get("current_term", 0),
                state.get("commit_index", 0),
                len(self.views[s].log),
            ]
        return rows
