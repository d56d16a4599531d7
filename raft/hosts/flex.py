"""The app hosted the way Flex Consumption runs it, on a virtual clock.

Flex Consumption scales each non-HTTP function on its own instances, and each instance keeps
its warm in-memory state for as long as it lives. So here:

- one *timer instance* ticks every server once per timer period, with node handlers (and
  caches) of its own;
- each server's Service Bus trigger runs on one or two *trigger instances* of its own (two race
  for the same subscription), each with its own handler and cache. A batch-triggered function
  runs one batch at a time per instance: messages that arrive while every instance of a
  server is busy wait, and the next batch takes up to `max_batch` of them;
- *HTTP instances* run the HTTP function's own code (`ClusterApi.begin` and `check`: find the
  leader in the store, send it the command with no reply address, poll its stored result
  with a backoff, resend to the current leader every few seconds), at most `http_concurrency`
  requests each, scaled out up to `max_instances` instances in all; a request answered 202
  is followed up by polling its status, as a client would;
- instances are replaced at random (a cold instance with an empty cache), as the platform
  recycles them.

Time is virtual (milliseconds). Every platform operation can take time (`Latencies`): a
publish, a message's delivery, settling a batch, each store read and transaction, and the
host's overhead per execution. An execution runs the real handler code at the instant it
starts; the store operations and sends it makes add up to its duration, keep its instance
busy, and delay the messages it sends by the time they were sent at. Its store writes are
visible from its start, so another instance may see them up to one execution early. With the
default latencies (all zero but the bus delay) 600 simulated seconds run in seconds.

`store_factory` gives each instance its store: one shared in-memory store, or a TableStore per
instance (each with its own row cache) over one Azurite table. The report says how much of
the run had a leader and whether every command was committed; `usage` counts executions,
messages, store operations and each instance's busy time, for the cost forecast
(bench/forecast.py).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from raft.app.kv import encode
from raft.core.messages import Envelope
from raft.hosts.http_api import ApiLimits, ApiResponse, ClusterApi, StepLocally, Waiting
from raft.node.handler import NodeHandler, NodeOptions
from raft.ports.store import Change, ClientResult, Store, StoredServer, VersionConflict

# The standard normal's 99th percentile: a log-normal delay is fitted to a median and a p99.
Z99 = 2.3263478740408408


class Delay(Protocol):
    def sample(self, rng: random.Random) -> float:
        """One duration, in milliseconds."""
        ...


@dataclass(frozen=True)
class Fixed:
    ms: float = 0.0

    def sample(self, rng: random.Random) -> float:
        return self.ms


@dataclass(frozen=True)
class Uniform:
    """Whole milliseconds, as the hosts' clocks count: events often coincide, as they do when
    a timer fires in the millisecond a message arrives."""

    low_ms: int
    high_ms: int

    def sample(self, rng: random.Random) -> float:
        return rng.randint(self.low_ms, self.high_ms)


@dataclass(frozen=True)
class LogNormal:
    """Long-tailed, as cloud latencies are: fitted to a median and a 99th percentile."""

    p50_ms: float
    p99_ms: float

    def __post_init__(self) -> None:
        if not 0 < self.p50_ms <= self.p99_ms:
            raise ValueError(f"need 0 < p50 <= p99, got {self.p50_ms} and {self.p99_ms}")

    def sample(self, rng: random.Random) -> float:
        sigma = math.log(self.p99_ms / self.p50_ms) / Z99
        return self.p50_ms * math.exp(sigma * rng.gauss(0.0, 1.0))


@dataclass(frozen=True)
class Latencies:
    """How long each platform operation takes. Zero by default, except a message's delivery
    (None: uniform over `FlexTiming.bus_delay_ms`)."""

    # The host's own overhead per execution, before the function's code runs.
    invocation: Delay = Fixed()
    # One publish (the sender waits for it), and from then until an idle trigger instance
    # of the addressee is invoked with the message.
    send: Delay = Fixed()
    delivery: Delay | None = None
    # Settling a batch after the function returns, before the instance takes the next one.
    complete: Delay = Fixed()
    # Table Storage: a point read, a query (a load reads the state row, then the log rows)
    # and an entity-group transaction.
    point_read: Delay = Fixed()
    query: Delay = Fixed()
    transaction: Delay = Fixed()


@dataclass(frozen=True)
class FlexTiming:
    """Production timing (the app's default settings) and the platform's behaviour."""

    timer_ms: int = 1000
    bus_delay_ms: tuple[int, int] = (15, 150)
    # Commands are submitted this often (the open-loop caller of `run`).
    command_every_ms: int = 2000
    # No command is sent in the last `settle_ms` of a run, so every one sent can commit.
    settle_ms: int = 30_000
    # A caller answered 202 polls the command's status this often.
    poll_ms: int = 250
    # Mean time between instance replacements (0: none), and the chance that a server's
    # trigger runs on two racing instances.
    churn_every_ms: int = 20_000
    racing: float = 0.5
    sample_ms: int = 100
    latencies: Latencies = field(default_factory=Latencies)
    # host.json's maxMessageBatchSize.
    max_batch: int = 100
    # Concurrent requests per HTTP instance (Flex Consumption's default for Python apps is 1),
    # and instances of the whole app (infra/main.bicep's maximumInstanceCount).
    http_concurrency: int = 1
    max_instances: int = 40


@dataclass
class FlexReport:
    servers: int
    simulated_s: float
    first_leader_s: float | None = None
    # Of the time after the first election: how much of it some server led the highest term.
    leader_fraction: float = 0.0
    commands_sent: int = 0
    commands_committed: int = 0
    max_term: int = 0
    instances_replaced: int = 0
    invocations: int = 0
    messages: int = 0
    commit_latencies_ms: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        latencies = sorted(self.commit_latencies_ms)
        return {
            "servers": self.servers,
            "simulated_s": self.simulated_s,
            "first_leader_s": self.first_leader_s,
            "leader_fraction": round(self.leader_fraction, 4),
            "commands_sent": self.commands_sent,
            "commands_committed": self.commands_committed,
            "max_term": self.max_term,
            "instances_replaced": self.instances_replaced,
            "invocations": self.invocations,
            "messages": self.messages,
            "commit_p50_ms": latencies[len(latencies) // 2] if latencies else None,
            "commit_max_ms": latencies[-1] if latencies else None,
        }


@dataclass
class Usage:
    """What the platform would bill: executions by function ("server", "timer", "http"),
    messages sent to servers, store operations by kind, and each instance's executions as
    (start, end) in virtual milliseconds."""

    executions: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    store_ops: Counter[str] = field(default_factory=Counter)
    busy: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


@dataclass(eq=False)
class _Instance:
    name: str
    store: Store
    handlers: dict[str, NodeHandler]
    api: ClusterApi | None = None
    free_at: float = 0.0
    # HTTP requests it is executing.
    active: int = 0


@dataclass(eq=False)
class _Call:
    """One command posted to the HTTP function, from the caller's first request until it
    learns the result."""

    request_id: str
    data: str
    issued: float
    # The closed-loop client that sent it, or None for the open-loop commands of `run`.
    client: int | None
    sent: bool = False
    # After a 202: the caller polls GET /api/commands/{id}.
    polling: bool = False
    waiting: Waiting | None = None
    instance: _Instance | None = None
    started: float = 0.0


class _TimedStore:
    """An instance's store: every operation takes its latency out of the running execution.

    Executions run whole at the instant they start, so one that started earlier may already
    have saved a state that, in virtual time, is saved only later. Two rules keep that from
    flattering the forecast: a stored result (or a read's answer) becomes readable only once
    the save that wrote it has completed; and a load that completes before the latest save of
    that server has completed stands for an older state, so the save that follows it fails as
    a conflict (and the handler reloads, later), as it would on Table Storage.
    """

    def __init__(self, inner: Store, topology: FlexTopology) -> None:
        self.inner = inner
        self.topology = topology
        # Servers whose last load here stands for a state older than the stored one.
        self._behind: set[str] = set()

    def load(self, server_id: str) -> StoredServer | None:
        t = self.topology
        try:
            return self.inner.load(server_id)
        finally:
            t.spend("point_read")
            if t.spend("query") < t.saved_at.get(server_id, 0.0):
                self._behind.add(server_id)
            else:
                self._behind.discard(server_id)

    def save(self, server_id: str, expected_version: str | None, change: Change) -> str:
        t = self.topology
        done = t.spend("transaction")
        if server_id in self._behind:
            self._behind.discard(server_id)
            raise VersionConflict(f"{server_id}: saved meanwhile (virtual time)")
        version = self.inner.save(server_id, expected_version, change)
        t.saved_at[server_id] = max(done, t.saved_at.get(server_id, 0.0))
        for result in (*change.results, *change.read_answers):
            t.result_at[(server_id, result.client_id)] = done
        return version

    def version(self, server_id: str) -> str | None:
        try:
            return self.inner.version(server_id)
        finally:
            self.topology.spend("point_read")

    def read_state(self, server_id: str) -> dict[str, Any] | None:
        try:
            return self.inner.read_state(server_id)
        finally:
            self.topology.spend("point_read")

    def read_result(self, server_id: str, client_id: str) -> ClientResult | None:
        return self._visible(server_id, client_id, self.inner.read_result(server_id, client_id))

    def read_answer(self, server_id: str, client_id: str) -> ClientResult | None:
        return self._visible(server_id, client_id, self.inner.read_answer(server_id, client_id))

    def _visible(
        self, server_id: str, client_id: str, found: ClientResult | None
    ) -> ClientResult | None:
        t = self.topology
        if t.spend("point_read") < t.result_at.get((server_id, client_id), 0.0):
            return None  # the save that wrote it has not completed yet
        return found


class _SimBus:
    """Service Bus on the virtual clock: a publish takes its send time out of the running
    execution, and each message reaches its server's subscription after a delivery delay."""

    def __init__(self, topology: FlexTopology) -> None:
        self.topology = topology

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        t = self.topology
        sent = t.spend("send")
        for envelope in envelopes:
            if envelope.to in t.servers:  # replies to HTTP callers: none are asked for
                t.usage.messages += 1
                t.schedule(sent + t.delivery.sample(t.rng), "arrive", envelope)


class _VirtualClock:
    """The clock of whatever runs now: the running execution's time, in milliseconds."""

    def __init__(self, topology: FlexTopology) -> None:
        self.topology = topology

    def now_ms(self) -> int:
        return int(self.topology.time())

    def monotonic(self) -> float:
        return self.topology.time() / 1000


class FlexTopology:
    def __init__(
        self,
        servers: Sequence[str],
        store_factory: Callable[[], Store],
        options: NodeOptions,
        timing: FlexTiming | None = None,
        seed: int = 0,
        limits: ApiLimits | None = None,
        step_options: NodeOptions | None = None,
    ) -> None:
        """`limits` are the HTTP function's; with `step_options`, it steps the leader's
        handler itself (`StepLocally`, handlers with these options) instead of publishing."""
        self.servers = list(servers)
        self.store_factory = store_factory
        self.options = options
        self.timing = timing or FlexTiming()
        self.latencies = self.timing.latencies
        self.delivery = self.latencies.delivery or Uniform(*self.timing.bus_delay_ms)
        self.limits = limits or ApiLimits()
        self.step_options = step_options
        self.rng = random.Random(seed)
        self.now = 0.0
        self.usage = Usage()
        self.bus = _SimBus(self)
        self.clock = _VirtualClock(self)
        self._events: list[tuple[float, int, str, Any]] = []
        self._order = itertools.count()
        self._names = itertools.count()
        # The running execution's time, while one runs.
        self._at: float | None = None
        # When each server's latest save, and each stored result's, completes.
        self.saved_at: dict[str, float] = {}
        self.result_at: dict[tuple[str, str], float] = {}
        # Messages waiting for each server's trigger, servers in order of first arrival.
        self._inbox: dict[str, deque[Envelope]] = {}
        self._timer_due = False
        self.timer = self._instance("timer")
        self.triggers = {
            s: [
                self._instance(f"{s}-trigger")
                for _ in range(2 if self.rng.random() < self.timing.racing else 1)
            ]
            for s in self.servers
        }
        self.http: list[_Instance] = []
        self._queue: deque[_Call] = deque()
        self._clients = 0
        self._client_seq: Counter[int] = Counter()
        self._calls: dict[str, _Call] = {}
        self._commands = 0
        # (when, latency) of each committed command, in virtual milliseconds.
        self.commits: list[tuple[float, float]] = []
        # The harness's own view of the store (not billed, takes no time).
        self.observer = store_factory()
        self.report = FlexReport(servers=len(self.servers), simulated_s=0.0)
        self._started = False
        # The open-loop commands stop `settle_ms` before the end of `run`.
        self._duration = 0
        self._led_ms = 0
        self._observed_ms = 0

    def _instance(self, role: str) -> _Instance:
        """A function instance: its own store object (and row cache) and handlers."""
        store = _TimedStore(self.store_factory(), self)
        handlers = {
            s: NodeHandler(s, self.servers, store, self.bus, self.options) for s in self.servers
        }
        return _Instance(f"{role}-{next(self._names)}", store, handlers)

    def _http_instance(self) -> _Instance:
        store = _TimedStore(self.store_factory(), self)
        handlers: dict[str, NodeHandler] = {}
        step = None
        if self.step_options is not None:
            handlers = {
                s: NodeHandler(s, self.servers, store, self.bus, self.step_options)
                for s in self.servers
            }
            step = StepLocally(handlers, self.bus, self.clock)
        api = ClusterApi(
            self.servers,
            store,
            self.bus,
            self.limits,
            clock=self.clock,
            monotonic=self.clock.monotonic,
            step=step,
        )
        instance = _Instance(f"http-{next(self._names)}", store, handlers, api)
        self.http.append(instance)
        return instance

    def schedule(self, at: float, kind: str, payload: Any = None) -> None:
        heapq.heappush(self._events, (at, next(self._order), kind, payload))

    def time(self) -> float:
        return self.now if self._at is None else self._at

    def spend(self, operation: str) -> float:
        """Count a platform operation; inside an execution it also takes its time. Returns
        the time it completes."""
        if operation != "send":
            self.usage.store_ops[operation] += 1
        if self._at is None:
            return self.now
        delay: Delay = getattr(self.latencies, operation)
        self._at += delay.sample(self.rng)
        return self._at

    # ------------------------------------------------------------------ running

    def start(self, commands: bool = False) -> None:
        """Arm the timer, the observer's samples and the churn (and open-loop commands)."""
        if self._started:
            return
        self._started = True
        t = self.timing
        self.schedule(t.timer_ms, "timer")
        self.schedule(t.sample_ms, "sample")
        if commands:
            self.schedule(t.command_every_ms, "command")
        if t.churn_every_ms:
            self.schedule(self._next_churn(), "churn")

    def run(self, duration_ms: int, commands: bool = True) -> FlexReport:
        self.start(commands)
        self._duration = duration_ms
        self.advance(duration_ms)
        report = self.report
        report.simulated_s = duration_ms / 1000
        report.leader_fraction = self._led_ms / self._observed_ms if self._observed_ms else 0.0
        report.messages = self.usage.messages
        report.invocations = self.usage.executions["server"] + self.usage.executions["timer"]
        report.commit_latencies_ms = [int(latency) for _, latency in self.commits]
        states = [self.observer.read_state(s) or {} for s in self.servers]
        report.max_term = max(state.get("current_term", 0) for state in states)
        return report

    def advance(self, until_ms: float) -> None:
        """Run every event up to `until_ms`."""
        self.start()
        while True:
            if not self._events or self._events[0][0] != self.now:
                # Everything due now has happened: hand out the work (which may schedule
                # more for now, handled before time moves on).
                self._dispatch()
            if not self._events or self._events[0][0] > until_ms:
                break
            at, _, kind, payload = heapq.heappop(self._events)
            self.now = at
            self._handle(kind, payload)
        self.now = max(self.now, until_ms)

    def _handle(self, kind: str, payload: Any) -> None:
        t = self.timing
        if kind == "arrive":
            self._inbox.setdefault(payload.to, deque()).append(payload)
        elif kind == "timer":
            self._timer_due = True
            self._run_timer()
            self.schedule(self.now + t.timer_ms, "timer")
        elif kind == "http":
            self._segment(payload, self._check)
        elif kind == "client":
            self._new_call(payload)
        elif kind == "release":
            payload.active -= 1
        elif kind == "poll":
            self._queue.append(payload)
            self._start_http()
        elif kind == "sample":
            self._sample()
            self.schedule(self.now + t.sample_ms, "sample")
        elif kind == "command" and self.now + t.settle_ms <= self._duration:
            self._new_call(None)
            self.schedule(self.now + t.command_every_ms, "command")
        elif kind == "churn":
            self._replace_an_instance()
            self.schedule(self.now + self._next_churn(), "churn")
        # "free": nothing to do but dispatch, which follows once everything due now is done.

    def _dispatch(self) -> None:
        """Hand waiting work to free instances: the timer's tick, batches to trigger instances,
        queued HTTP requests."""
        self._run_timer()
        for server_id in list(self._inbox):
            inbox = self._inbox[server_id]
            while inbox:
                free = [i for i in self.triggers[server_id] if i.free_at <= self.now]
                if not free:
                    break
                instance = self.rng.choice(free)
                batch = [inbox.popleft() for _ in range(min(len(inbox), self.timing.max_batch))]
                step = partial(self._step, instance.handlers[server_id], batch)
                self._execute(instance, "server", step)
            if not inbox:
                del self._inbox[server_id]
        self._start_http()

    def _run_timer(self) -> None:
        """The timer function does not overlap itself: a tick due while the last one runs
        starts when it ends."""
        if self._timer_due and self.timer.free_at <= self.now:
            self._timer_due = False
            self._execute(self.timer, "timer", self._tick_all, settle=False)

    def _start_http(self) -> None:
        while self._queue:
            instance = self._free_http_instance()
            if instance is None:
                return
            call = self._queue.popleft()
            instance.active += 1
            call.instance, call.started = instance, self.now
            self._segment(call, self._poll_status if call.polling else self._begin, first=True)

    def _ms(self) -> int:
        return int(self.time())

    def _step(self, handler: NodeHandler, batch: list[Envelope]) -> None:
        handler.handle(batch, self._ms())

    def _tick_all(self) -> None:
        for handler in self.timer.handlers.values():
            handler.tick(self._ms())

    def _execute(
        self, instance: _Instance, function: str, action: Callable[[], None], settle: bool = True
    ) -> None:
        """Run one execution to completion now; its instance is busy for as long as its
        operations take (and, for a batch, settling it)."""
        start = self.now
        self._at = start + self.latencies.invocation.sample(self.rng)
        try:
            action()
        finally:
            end, self._at = self._at, None
        self._record(instance, function, start, end)
        instance.free_at = end + (self.latencies.complete.sample(self.rng) if settle else 0.0)
        self.schedule(instance.free_at, "free")

    def _record(self, instance: _Instance, function: str, start: float, end: float) -> None:
        self.usage.executions[function] += 1
        self.usage.busy.setdefault(instance.name, []).append((start, end))

    # ------------------------------------------------------------------ HTTP

    def start_clients(self, count: int) -> None:
        """`count` callers, each posting its next command as soon as it has the last one's
        result."""
        for _ in range(count):
            self.schedule(self.now, "client", self._clients)
            self._clients += 1

    def stop_clients(self) -> None:
        self._clients = 0

    def _new_call(self, client: int | None) -> None:
        if client is not None and client >= self._clients:
            return  # stopped
        number = self._commands = self._commands + 1
        if client is None:
            request_id = f"flex-{number}"
        else:
            self._client_seq[client] += 1
            request_id = f"c{client}-{self._client_seq[client]}"
        data = encode({"op": "put", "key": f"key-{number % 1024}", "value": number})
        call = _Call(request_id, data, self.now, client)
        self._calls[request_id] = call
        self._queue.append(call)
        self._start_http()

    def _free_http_instance(self) -> _Instance | None:
        for instance in self.http:
            if instance.active < self.timing.http_concurrency:
                return instance
        others = sum(len(i) for i in self.triggers.values()) + 1
        if others + len(self.http) < self.timing.max_instances:
            return self._http_instance()
        return None

    def _begin(self, call: _Call) -> ApiResponse | Waiting:
        assert call.instance is not None and call.instance.api is not None
        return call.instance.api.begin(call.request_id, call.data)

    def _check(self, call: _Call) -> ApiResponse | Waiting:
        assert call.instance is not None and call.instance.api is not None
        assert call.waiting is not None
        return call.instance.api.check(call.waiting)

    def _poll_status(self, call: _Call) -> ApiResponse | Waiting:
        assert call.instance is not None and call.instance.api is not None
        return call.instance.api.get_command(call.request_id)

    def _segment(
        self, call: _Call, step: Callable[[_Call], ApiResponse | Waiting], first: bool = False
    ) -> None:
        """Run the HTTP function from now until it sleeps or answers."""
        self._at = self.now + (self.latencies.invocation.sample(self.rng) if first else 0.0)
        try:
            outcome = step(call)
        finally:
            end, self._at = self._at, None
        if isinstance(outcome, Waiting):
            self._sent(call)
            call.waiting = outcome
            self.schedule(end + outcome.poll_s * 1000, "http", call)
            return
        self._answered(call, outcome, end)

    def _answered(self, call: _Call, response: ApiResponse, end: float) -> None:
        instance = call.instance
        assert instance is not None
        self._record(instance, "http", call.started, end)
        self.schedule(end, "release", instance)
        if response.status == 200:
            self._sent(call)
            del self._calls[call.request_id]
            self.report.commands_committed += 1
            self.commits.append((end, end - call.issued))
            if call.client is not None:
                self.schedule(end, "client", call.client)
        elif response.status == 202:
            self._sent(call)
            call.polling = True
            self.schedule(end + self.timing.poll_ms, "poll", call)
        else:
            # No leader, or overloaded (503): the caller tries again after Retry-After, with
            # a new command (the open-loop caller moves on to its next one).
            del self._calls[call.request_id]
            if call.client is not None:
                retry_ms = float(response.headers.get("Retry-After", "1")) * 1000
                self.schedule(end + retry_ms, "client", call.client)

    def _sent(self, call: _Call) -> None:
        if not call.sent:
            call.sent = True
            self.report.commands_sent += 1

    def pending_commands(self) -> int:
        return sum(1 for c in self._calls.values() if c.sent)

    # ------------------------------------------------------------------ the observer

    def _sample(self) -> None:
        if self._has_leader():
            if self.report.first_leader_s is None:
                self.report.first_leader_s = self.now / 1000
            self._led_ms += self.timing.sample_ms
        if self.report.first_leader_s is not None:
            self._observed_ms += self.timing.sample_ms

    def _has_leader(self) -> bool:
        states = [self.observer.read_state(s) or {} for s in self.servers]
        top = max(state.get("current_term", 0) for state in states)
        return any(st.get("role") == "leader" and st.get("current_term") == top for st in states)

    def leader_ready(self) -> bool:
        """Some server leads the highest term and has committed its whole log."""
        states = [self.observer.read_state(s) or {} for s in self.servers]
        top = max(state.get("current_term", 0) for state in states)
        return any(
            st.get("role") == "leader"
            and st.get("current_term") == top
            and st.get("commit_index") == st.get("last_index", -1) > 0
            for st in states
        )

    def _next_churn(self) -> int:
        return max(1, int(self.rng.expovariate(1 / self.timing.churn_every_ms)))

    def _replace_an_instance(self) -> None:
        choice = self.rng.randrange(len(self.servers) + 1)
        if choice == len(self.servers):
            self.timer = self._instance("timer")
        else:
            instances = self.triggers[self.servers[choice]]
            index = self.rng.randrange(len(instances))
            instances[index] = self._instance(f"{self.servers[choice]}-trigger")
        self.report.instances_replaced += 1
