"""The in-process cluster under load, driven from one loop (no thread per client).

The driver keeps the production pieces unchanged: `LocalCluster.pump()` hands every server's
drained batch to its `NodeHandler` (one `handle()` per server per pump) over the in-memory
bus and store, and fires timers at the real clock. Between pumps the driver publishes client
requests to the leader (each client has its own id and sequence numbers; every request's
`reply_to` is the driver's one address, as a client library multiplexing many callers over one
connection would) and drains that address for responses. Latency is `time.perf_counter()` from
the first publish of a request to the pump that delivered its response.

Message and write counts come from the adapters (`InMemoryBus.published`,
`InMemoryStore.saves`); the driver counts the client's own requests and the responses it
drains, so server-to-server messages are the difference.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from bench.workload import Workload
from raft.adapters.memory_bus import InMemoryBus
from raft.adapters.memory_store import InMemoryStore
from raft.core.messages import ClientRequest, ClientResponse, ClientStatus, Envelope
from raft.core.state import Config, Role
from raft.hosts.latency import Latency
from raft.hosts.local_cluster import LocalCluster
from raft.hosts.settings import server_ids
from raft.node.handler import NodeOptions

# The local runner's timing (python -m raft run): 150-300 ms election timeout, 50 ms heartbeat.
RUNNER_CONFIG = Config(election_timeout_min=150, election_timeout_max=300, heartbeat_interval=50)
TICK_MS = 10
# A request unanswered this long is resent with the same sequence number (a leader change can
# drop uncommitted entries); the servers' sessions make the resend safe.
RESEND_AFTER_S = 5.0
# Where every client's answers go.
DRIVER_ADDRESS = "bench-driver"


@dataclass(frozen=True, slots=True)
class Counters:
    published: int
    saves: int
    conflicts: int
    client_requests: int
    client_responses: int

    def minus(self, other: Counters) -> Counters:
        return Counters(
            self.published - other.published,
            self.saves - other.saves,
            self.conflicts - other.conflicts,
            self.client_requests - other.client_requests,
            self.client_responses - other.client_responses,
        )

    @property
    def server_messages(self) -> int:
        return self.published - self.client_requests - self.client_responses


@dataclass(frozen=True, slots=True)
class CellResult:
    """One measured cell: a cluster size and a number of concurrent clients."""

    servers: int
    clients: int
    requested: int
    committed: int
    errors: int
    elapsed_s: float
    # Process CPU time: steadier than wall time on a shared machine.
    cpu_s: float
    latency: Latency
    counts: Counters
    timed_out: bool

    @property
    def throughput(self) -> float:
        return self.committed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def per_command(self, count: float) -> float:
        return count / self.committed if self.committed else 0.0

    @property
    def server_messages_per_command(self) -> float:
        return self.per_command(self.counts.server_messages)

    @property
    def client_messages_per_command(self) -> float:
        return self.per_command(self.counts.client_requests + self.counts.client_responses)

    @property
    def store_writes_per_command(self) -> float:
        return self.per_command(self.counts.saves)

    @property
    def store_writes_per_command_per_server(self) -> float:
        return self.store_writes_per_command / self.servers

    def to_json(self) -> dict[str, object]:
        return {
            "servers": self.servers,
            "clients": self.clients,
            "requested": self.requested,
            "committed": self.committed,
            "errors": self.errors,
            "timed_out": self.timed_out,
            "elapsed_s": round(self.elapsed_s, 4),
            "commands_per_s": round(self.throughput, 1),
            "cpu_us_per_command": round(self.per_command(self.cpu_s) * 1e6, 2),
            "latency_ms": {"p50": self.latency.p50_ms, "p99": self.latency.p99_ms},
            "server_messages": self.counts.server_messages,
            "client_messages": self.counts.client_requests + self.counts.client_responses,
            "store_writes": self.counts.saves,
            "store_conflicts": self.counts.conflicts,
            "server_messages_per_command": round(self.server_messages_per_command, 5),
            "client_messages_per_command": round(self.client_messages_per_command, 5),
            "store_writes_per_command": round(self.store_writes_per_command, 5),
            "store_writes_per_command_per_server": round(
                self.store_writes_per_command_per_server, 5
            ),
        }


@dataclass(frozen=True, slots=True)
class IdleResult:
    servers: int
    seconds: float
    counts: Counters

    @property
    def server_messages_per_minute(self) -> float:
        return self.counts.server_messages * 60 / self.seconds

    @property
    def store_writes_per_minute(self) -> float:
        return self.counts.saves * 60 / self.seconds

    def to_json(self) -> dict[str, object]:
        return {
            "servers": self.servers,
            "seconds": round(self.seconds, 3),
            "server_messages": self.counts.server_messages,
            "store_writes": self.counts.saves,
            "server_messages_per_minute": round(self.server_messages_per_minute, 1),
            "store_writes_per_minute": round(self.store_writes_per_minute, 1),
        }


@dataclass(slots=True)
class OpenLoopResult:
    """An open-loop phase: requests arrive at `offered_per_s` whatever the cluster does."""

    offered_per_s: float
    issued: int = 0
    accepted: int = 0
    refused: int = 0
    errors: int = 0
    unanswered: int = 0
    elapsed_s: float = 0.0
    accepted_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    max_uncommitted: int = 0
    max_pending_messages: int = 0
    pumps: int = 0

    def to_json(self) -> dict[str, object]:
        accepted = Latency.of(self.accepted_ms)
        refused = Latency.of(self.refused_ms)
        return {
            "offered_per_s": round(self.offered_per_s, 1),
            "achieved_offered_per_s": round(self.issued / self.elapsed_s, 1)
            if self.elapsed_s
            else 0.0,
            "issued": self.issued,
            "accepted": self.accepted,
            "refused": self.refused,
            "errors": self.errors,
            "unanswered": self.unanswered,
            "elapsed_s": round(self.elapsed_s, 4),
            "accepted_per_s": round(self.accepted / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "accepted_latency_ms": {"p50": accepted.p50_ms, "p99": accepted.p99_ms},
            "refusal_latency_ms": {"p50": refused.p50_ms, "p99": refused.p99_ms},
            "max_uncommitted_entries": self.max_uncommitted,
            "max_pending_messages": self.max_pending_messages,
            # A refusal is answered in the pump that delivers the request: compare its
            # latency with the mean pump.
            "pumps": self.pumps,
            "mean_pump_ms": round(self.elapsed_s * 1000 / self.pumps, 3) if self.pumps else 0.0,
        }


@dataclass(slots=True)
class _Client:
    client_id: str
    seq: int = 0


@dataclass(slots=True)
class _Outstanding:
    client: _Client
    request: ClientRequest
    sent: float
    last_sent: float


class InProcessCluster:
    """A fresh cluster of `servers` over the in-memory bus and store, and its clients."""

    def __init__(self, servers: int, config: Config = RUNNER_CONFIG, seed: int = 0) -> None:
        self.server_ids = server_ids(servers)
        self.store = InMemoryStore()
        self.bus = InMemoryBus()
        self.config = config
        self.cluster = LocalCluster(
            self.server_ids,
            self.store,
            self.bus,
            NodeOptions(config=config, seed=seed),
            None,
            TICK_MS,
        )
        self.leader = ""
        self.client_requests = 0
        self.client_responses = 0
        self._outstanding: dict[tuple[str, int], _Outstanding] = {}
        self._runs = 0

    # ----------------------------------------------------------------- cluster helpers

    def counters(self) -> Counters:
        return Counters(
            self.bus.published,
            self.store.saves,
            self.store.conflicts,
            self.client_requests,
            self.client_responses,
        )

    def pump_for(self, seconds: float) -> None:
        """Run the cluster on its own, as `LocalCluster.run_forever` does, for `seconds`."""
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            self.cluster.pump()
            self.bus.wait(min(TICK_MS / 1000, max(0.0, deadline - time.perf_counter())))

    def wait_for_leader(self, timeout_s: float = 10.0) -> str:
        """Pump until one server leads and has committed its term's no-op."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            self.pump_for(TICK_MS / 1000)
            leader = self.cluster.leader()
            if leader is not None and leader.commit_index == leader.last_index > 0:
                self.leader = leader.server_id
                return self.leader
        raise RuntimeError(f"no leader elected within {timeout_s} s")

    def settle(self, timeout_s: float = 5.0) -> bool:
        """Pump until every server has the leader's whole log committed and applied."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            self.pump_for(TICK_MS / 1000)
            self._collect()
            if not self.divergence() and not self._outstanding:
                return True
        return False

    def divergence(self) -> list[str]:
        """Differences between the servers' logs, commit and applied indices (empty: none)."""
        states = self.cluster.states()
        leader = self.cluster.leader()
        if leader is None:
            return ["no leader"]
        problems = []
        for server_id, state in states.items():
            if state.log != leader.log:
                problems.append(f"{server_id}: log differs from the leader's ({leader.server_id})")
            if not state.commit_index == state.last_applied == leader.last_index:
                problems.append(
                    f"{server_id}: commit {state.commit_index}, applied {state.last_applied}, "
                    f"leader's last index {leader.last_index}"
                )
            stored = self.store.read_state(server_id) or {}
            if stored.get("last_applied") != state.last_applied:
                problems.append(f"{server_id}: stored last_applied {stored.get('last_applied')}")
        return problems

    def uncommitted(self) -> int:
        leader = self.cluster.handlers[self.leader].state() if self.leader else None
        if leader is None or leader.role is not Role.LEADER:
            return 0
        return leader.last_index - leader.commit_index

    # ----------------------------------------------------------------- clients

    def _new_clients(self, kind: str, count: int) -> list[_Client]:
        # Fresh ids for every run: the servers' sessions remember earlier runs' clients.
        self._runs += 1
        return [_Client(f"{kind}{self._runs}-{n}") for n in range(count)]

    def _send(self, pending: list[_Outstanding]) -> None:
        if not pending:
            return
        self.bus.publish([Envelope(p.client.client_id, self.leader, p.request) for p in pending])
        self.client_requests += len(pending)

    def _submit(self, client: _Client, data: str, now: float) -> _Outstanding:
        client.seq += 1
        request = ClientRequest(client.client_id, client.seq, data, reply_to=DRIVER_ADDRESS)
        item = _Outstanding(client, request, now, now)
        self._outstanding[(client.client_id, client.seq)] = item
        return item

    def _collect(self) -> list[tuple[_Outstanding, ClientResponse, float]]:
        """Drain the driver's address; return (request, answer, time) for each answer."""
        answers = []
        now = time.perf_counter()
        for envelope in self.bus.drain(DRIVER_ADDRESS):
            self.client_responses += 1
            m = envelope.message
            if not isinstance(m, ClientResponse):
                continue
            item = self._outstanding.get((m.client_id, m.seq))
            if item is None:
                continue  # A duplicate answer to a resent request.
            if m.status is ClientStatus.NOT_LEADER:
                self.leader = m.leader_hint or self.leader
                item.last_sent = now
                self._send([item])
                continue
            del self._outstanding[(m.client_id, m.seq)]
            answers.append((item, m, now))
        return answers

    def _resend_stale(self, now: float) -> None:
        stale = [p for p in self._outstanding.values() if now - p.last_sent > RESEND_AFTER_S]
        if not stale:
            return
        leader = self.cluster.leader()
        if leader is not None:
            self.leader = leader.server_id
        for item in stale:
            item.last_sent = now
        self._send(stale)

    def run_closed_loop(self, workload: Workload) -> CellResult:
        """Keep `workload.clients` requests outstanding until `workload.commands` commit (or
        the budget runs out); refused requests are retried by the same client."""
        clients = deque(self._new_clients("c", workload.clients))
        # Encoded before the clock starts: the clients' own JSON is not the cluster's work.
        commands = [workload.command(n) for n in range(workload.commands)]
        latencies: list[float] = []
        before = self.counters()
        issued = committed = errors = 0
        cpu_started = time.process_time()
        started = time.perf_counter()
        deadline = started + workload.budget_s
        retry: list[_Outstanding] = []
        while committed + errors < workload.commands:
            now = time.perf_counter()
            if now > deadline:
                break
            fresh = []
            while clients and issued < workload.commands:
                fresh.append(self._submit(clients.popleft(), commands[issued], now))
                issued += 1
            self._send(retry + fresh)
            retry = []
            self.cluster.pump()
            for item, answer, at in self._collect():
                if answer.status is ClientStatus.OK:
                    committed += 1
                    latencies.append((at - item.sent) * 1000)
                    clients.append(item.client)
                elif answer.status is ClientStatus.OVERLOADED:
                    # The same request again, after the next pump.
                    self._outstanding[(item.client.client_id, item.request.seq)] = item
                    item.last_sent = at
                    retry.append(item)
                else:
                    errors += 1
                    clients.append(item.client)
            self._resend_stale(now)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        self._send(retry)
        return CellResult(
            servers=len(self.server_ids),
            clients=workload.clients,
            requested=workload.commands,
            committed=committed,
            errors=errors,
            elapsed_s=elapsed,
            cpu_s=cpu,
            latency=Latency.of(latencies),
            counts=self.counters().minus(before),
            timed_out=committed + errors < workload.commands,
        )

    def run_idle(self, seconds: float) -> IdleResult:
        self._collect()
        before = self.counters()
        started = time.perf_counter()
        self.pump_for(seconds)
        return IdleResult(
            len(self.server_ids), time.perf_counter() - started, self.counters().minus(before)
        )

    def run_open_loop(
        self, workload: Workload, offered_per_s: float, client_pool: int = 100
    ) -> OpenLoopResult:
        """Issue `workload.commands` requests at `offered_per_s`, whatever the answers; a
        refused request is counted, not retried. Requests rotate over `client_pool` client
        ids, each with increasing sequence numbers (a small pool: every client id is a
        session the servers keep and snapshot)."""
        clients = self._new_clients("o", client_pool)
        result = OpenLoopResult(offered_per_s)
        started = time.perf_counter()
        deadline = started + workload.budget_s
        pumps = 0
        while result.issued < workload.commands or self._outstanding:
            now = time.perf_counter()
            if now > deadline:
                break
            due = min(workload.commands, int((now - started) * offered_per_s) + 1)
            fresh = []
            while result.issued < due:
                client = clients[result.issued % client_pool]
                fresh.append(self._submit(client, workload.command(result.issued), now))
                result.issued += 1
            self._send(fresh)
            self.cluster.pump()
            pumps += 1
            for item, answer, at in self._collect():
                latency = (at - item.sent) * 1000
                if answer.status is ClientStatus.OK:
                    result.accepted += 1
                    result.accepted_ms.append(latency)
                elif answer.status is ClientStatus.OVERLOADED:
                    result.refused += 1
                    result.refused_ms.append(latency)
                else:
                    result.errors += 1
            result.max_uncommitted = max(result.max_uncommitted, self.uncommitted())
            if pumps % 16 == 0:
                result.max_pending_messages = max(result.max_pending_messages, self.bus.pending())
            self._resend_stale(now)
        result.elapsed_s = time.perf_counter() - started
        result.pumps = pumps
        result.unanswered = len(self._outstanding)
        return result
