"""The app hosted the way Flex Consumption runs it, on a virtual clock.

Flex Consumption scales each non-HTTP function on its own instances, and each instance keeps
its warm in-memory state for as long as it lives. So here:

- one *timer instance* ticks every server once per timer period, with node handlers (and
  caches) of its own;
- each server's Service Bus trigger runs on one or two *trigger instances* of its own (two race
  for the same subscription), each with its own handler and cache, and each delivery batch goes
  to one of them;
- an *HTTP instance* submits commands as the HTTP function does: to the leader it reads from the
  store, with no reply address, stamped with the issue time; it polls the stored result and
  resends to the current leader every `resend_ms` until the result is there;
- instances are replaced at random (a cold instance with an empty cache), as the platform
  recycles them.

Time is virtual (milliseconds): messages take a random bus delay, and nothing else takes time,
so 600 simulated seconds run in seconds on the in-memory store. `store_factory` gives each
instance its store: one shared in-memory store, or a TableStore per instance (each with its own
row cache) over one Azurite table. The report says how much of the run had a leader and
whether every command was committed.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raft.app.kv import encode
from raft.core.messages import ClientRequest, Envelope
from raft.hosts.http_api import ClusterApi
from raft.node.handler import NodeHandler, NodeOptions
from raft.ports.store import Store

HTTP_CLIENT_PREFIX = "flex-http-"


@dataclass(frozen=True)
class FlexTiming:
    """Production timing (the app's default settings) and the platform's behaviour."""

    timer_ms: int = 1000
    bus_delay_ms: tuple[int, int] = (15, 150)
    # Commands are submitted this often, and resent to the current leader this often.
    command_every_ms: int = 2000
    resend_ms: int = 3000
    # No command is sent in the last `settle_ms` of a run, so every one sent can commit.
    settle_ms: int = 30_000
    poll_ms: int = 250
    # Mean time between instance replacements (0: none), and the chance that a server's
    # trigger runs on two racing instances.
    churn_every_ms: int = 20_000
    racing: float = 0.5
    sample_ms: int = 100


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


class _DelayedBus:
    """Service Bus on the virtual clock: each message arrives after a random delay."""

    def __init__(self, topology: FlexTopology) -> None:
        self.topology = topology

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        t = self.topology
        for envelope in envelopes:
            if envelope.to in t.servers:  # replies to HTTP callers: none are asked for
                t.messages += 1
                t.schedule(t.now + t.rng.randint(*t.timing.bus_delay_ms), "deliver", envelope)


@dataclass
class _Command:
    request: ClientRequest
    sent_at: int
    leader: str
    resend_at: int


class FlexTopology:
    def __init__(
        self,
        servers: Sequence[str],
        store_factory: Callable[[], Store],
        options: NodeOptions,
        timing: FlexTiming | None = None,
        seed: int = 0,
    ) -> None:
        self.servers = list(servers)
        self.store_factory = store_factory
        self.options = options
        self.timing = timing or FlexTiming()
        self.rng = random.Random(seed)
        self.now = 0
        self.messages = 0
        self.bus = _DelayedBus(self)
        self._events: list[tuple[int, int, str, Any]] = []
        self._order = itertools.count()
        self._due: dict[str, list[Envelope]] = defaultdict(list)
        self.timer = self._instance()
        self.triggers = {
            s: [self._instance() for _ in range(2 if self.rng.random() < self.timing.racing else 1)]
            for s in self.servers
        }
        self.http_store = store_factory()
        self.api = ClusterApi(self.servers, self.http_store, self.bus)
        self._commands: dict[str, _Command] = {}
        self.report = FlexReport(servers=len(self.servers), simulated_s=0.0)

    def _instance(self) -> dict[str, NodeHandler]:
        """A function instance: its own store object (and row cache) and handlers."""
        store = self.store_factory()
        return {
            s: NodeHandler(s, self.servers, store, self.bus, self.options) for s in self.servers
        }

    def schedule(self, at: int, kind: str, payload: Any = None) -> None:
        heapq.heappush(self._events, (at, next(self._order), kind, payload))

    # ------------------------------------------------------------------ the run

    def run(self, duration_ms: int, commands: bool = True) -> FlexReport:
        t = self.timing
        self.schedule(t.timer_ms, "timer")
        self.schedule(t.sample_ms, "sample")
        if commands:
            self.schedule(t.command_every_ms, "command")
        if t.churn_every_ms:
            self.schedule(self._next_churn(), "churn")
        self.schedule(t.poll_ms, "poll")
        led_ms = observed_ms = 0
        while self._events and self._events[0][0] <= duration_ms:
            at, _, kind, payload = heapq.heappop(self._events)
            if at != self.now:
                self._deliver_due()
                self.now = at
            if kind == "deliver":
                self._due[payload.to].append(payload)
            elif kind == "timer":
                for handler in self.timer.values():
                    handler.tick(self.now)
                self.report.invocations += 1
                self.schedule(self.now + t.timer_ms, "timer")
            elif kind == "sample":
                if self._has_leader():
                    if self.report.first_leader_s is None:
                        self.report.first_leader_s = self.now / 1000
                    led_ms += t.sample_ms
                if self.report.first_leader_s is not None:
                    observed_ms += t.sample_ms
                self.schedule(self.now + t.sample_ms, "sample")
            elif kind == "command" and self.now + t.settle_ms <= duration_ms:
                self._submit()
                self.schedule(self.now + t.command_every_ms, "command")
            elif kind == "poll":
                self._poll()
                self.schedule(self.now + t.poll_ms, "poll")
            elif kind == "churn":
                self._replace_an_instance()
                self.schedule(self.now + self._next_churn(), "churn")
        self._deliver_due()
        report = self.report
        report.simulated_s = duration_ms / 1000
        report.leader_fraction = led_ms / observed_ms if observed_ms else 0.0
        report.messages = self.messages
        states = [self.http_store.read_state(s) or {} for s in self.servers]
        report.max_term = max(state.get("current_term", 0) for state in states)
        return report

    def pending_commands(self) -> int:
        return len(self._commands)

    def _deliver_due(self) -> None:
        """Each server's subscription hands what has arrived to one of its instances."""
        for server_id in list(self._due):
            batch = self._due.pop(server_id)
            instance = self.rng.choice(self.triggers[server_id])
            instance[server_id].handle(batch, self.now)
            self.report.invocations += 1

    def _next_churn(self) -> int:
        return max(1, int(self.rng.expovariate(1 / self.timing.churn_every_ms)))

    def _replace_an_instance(self) -> None:
        choice = self.rng.randrange(len(self.servers) + 1)
        if choice == len(self.servers):
            self.timer = self._instance()
        else:
            instances = self.triggers[self.servers[choice]]
            instances[self.rng.randrange(len(instances))] = self._instance()
        self.report.instances_replaced += 1

    # ------------------------------------------------------------------ the HTTP instance

    def _leader(self) -> str | None:
        found = self.api.find_leader()
        return found[0] if found else None

    def _has_leader(self) -> bool:
        states = [self.http_store.read_state(s) or {} for s in self.servers]
        top = max(state.get("current_term", 0) for state in states)
        return any(st.get("role") == "leader" and st.get("current_term") == top for st in states)

    def _submit(self) -> None:
        leader = self._leader()
        if leader is None:
            return  # the HTTP function answers 503; the caller retries with the next command
        number = self.report.commands_sent + 1
        client_id = f"{HTTP_CLIENT_PREFIX}{number}"
        data = encode({"op": "put", "key": f"key-{number}", "value": number})
        request = ClientRequest(client_id, 1, data, issued_at=self.now)
        self._commands[client_id] = _Command(
            request, self.now, leader, self.now + self.timing.resend_ms
        )
        self.report.commands_sent += 1
        self.bus.publish([Envelope(client_id, leader, request)])

    def _poll(self) -> None:
        for client_id, command in list(self._commands.items()):
            if self.http_store.read_result(command.leader, client_id) is not None:
                del self._commands[client_id]
                self.report.commands_committed += 1
                self.report.commit_latencies_ms.append(self.now - command.sent_at)
            elif self.now >= command.resend_at:
                command.leader = self._leader() or command.leader
                command.resend_at = self.now + self.timing.resend_ms
                self.bus.publish([Envelope(client_id, command.leader, command.request)])
