"""A stated model of latency and cost on Azure, fed with the adapters' measured counts.

Every number here is a named parameter with a default, printed with the results and
overridable by a flag (`--azure-<name>`). The prices are assumptions: list prices of the
Service Bus Standard tier, Table Storage (standard, LRS) and the Functions Flex Consumption plan
as published when this was written, ignoring free grants, regions, taxes and discounts.
Check the current price sheet before quoting a figure.

The model:

- Commit latency (one client, no queueing) is the commit path of the protocol: client ->
  leader, leader -> follower, follower -> leader, leader -> client are 4 Service Bus hops; the
  leader saves on the proposal and on the commit, and the follower once: 3 Table
  transactions in sequence; 3 function invocations. Latency = hops x hop + saves x
  transaction + invocations x overhead.
- Throughput at `c` clients assumes one commit round per commit latency, carrying all `c`
  outstanding commands (the batching the in-process cluster shows): c / latency.
- Cost per million commands counts what the in-process run measured per command: every
  published message (server and client) is `servicebus_ops_per_message` billed operations and
  one function execution per `messages_per_execution`; every store write is one
  entity-group transaction. Compute is Flex Consumption's on-demand GB-s: an instance is
  billed for its memory while it executes, and Raft's heartbeat keeps one instance per server
  function busy every second, plus the timer's and (under load) the HTTP function's, so a
  running cluster bills `servers + 2` instances continuously; per command that is their cost
  per second divided by the modelled throughput.
- Idle cost per month scales the idle counts measured at the runner's heartbeat to the
  Functions app's heartbeat, adds the timer trigger's executions, `servers + 1` instances
  billed all month (the cluster never scales to zero while it runs) and the Service Bus base
  charge.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

COMMIT_PATH_HOPS = 4
COMMIT_PATH_SAVES = 3
COMMIT_PATH_INVOCATIONS = 3
SECONDS_PER_MONTH = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class AzureModel:
    # Latency (milliseconds), same region.
    servicebus_hop_ms: float = 15.0
    table_transaction_ms: float = 10.0
    function_overhead_ms: float = 5.0
    # Prices (USD), assumptions.
    servicebus_usd_per_million_ops: float = 0.80
    servicebus_base_usd_per_month: float = 9.86
    servicebus_ops_per_message: float = 2.0
    table_usd_per_10k_transactions: float = 0.00036
    # Flex Consumption on demand (the plan infra/main.bicep deploys): executions, and GB-s of
    # each instance's memory (the template's default 2,048 MB) while it executes.
    functions_usd_per_million_executions: float = 0.40
    functions_usd_per_gb_s: float = 0.000026
    function_instance_gb: float = 2.048
    messages_per_execution: float = 1.0
    # The Functions app's timing (raft/hosts/settings.py defaults).
    heartbeat_ms: float = 1000.0
    timer_period_s: float = 1.0

    PRICES = (
        "servicebus_usd_per_million_ops",
        "servicebus_base_usd_per_month",
        "table_usd_per_10k_transactions",
        "functions_usd_per_million_executions",
        "functions_usd_per_gb_s",
    )

    @classmethod
    def parameters(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.parameters()}

    # ----------------------------------------------------------------- the model

    def instances_usd_per_s(self, instances: int) -> float:
        return instances * self.function_instance_gb * self.functions_usd_per_gb_s

    def commit_latency_ms(self) -> float:
        return (
            COMMIT_PATH_HOPS * self.servicebus_hop_ms
            + COMMIT_PATH_SAVES * self.table_transaction_ms
            + COMMIT_PATH_INVOCATIONS * self.function_overhead_ms
        )

    def throughput(self, clients: int) -> float:
        return clients / (self.commit_latency_ms() / 1000)

    def usd_per_million(
        self, messages_per_command: float, writes_per_command: float, servers: int, clients: int
    ) -> Cost:
        """Cost of one million commands at the modelled throughput for `clients`, from
        measured per-command counts (all messages, server and client; all servers' writes)."""
        bus = messages_per_command * self.servicebus_ops_per_message
        bus_usd = bus * self.servicebus_usd_per_million_ops
        table_usd = writes_per_command * 1e6 / 10_000 * self.table_usd_per_10k_transactions
        executions = messages_per_command / self.messages_per_execution
        seconds = 1e6 / self.throughput(clients)
        functions_usd = (
            executions * self.functions_usd_per_million_executions
            + seconds * self.instances_usd_per_s(servers + 2)
        )
        return Cost(bus_usd, table_usd, functions_usd)

    def idle_usd_per_month(
        self,
        messages_per_minute: float,
        writes_per_minute: float,
        measured_heartbeat_ms: float,
        servers: int,
    ) -> Cost:
        scale = measured_heartbeat_ms / self.heartbeat_ms
        minutes = SECONDS_PER_MONTH / 60
        messages = messages_per_minute * scale * minutes
        writes = writes_per_minute * scale * minutes
        bus_usd = (
            messages * self.servicebus_ops_per_message / 1e6 * self.servicebus_usd_per_million_ops
            + self.servicebus_base_usd_per_month
        )
        table_usd = writes / 10_000 * self.table_usd_per_10k_transactions
        executions = (
            messages / self.messages_per_execution + SECONDS_PER_MONTH / self.timer_period_s
        )
        functions_usd = (
            executions / 1e6 * self.functions_usd_per_million_executions
            + SECONDS_PER_MONTH * self.instances_usd_per_s(servers + 1)
        )
        return Cost(bus_usd, table_usd, functions_usd)


@dataclass(frozen=True, slots=True)
class Cost:
    servicebus_usd: float
    table_usd: float
    functions_usd: float

    @property
    def total_usd(self) -> float:
        return self.servicebus_usd + self.table_usd + self.functions_usd

    def to_json(self) -> dict[str, float]:
        return {
            "servicebus_usd": round(self.servicebus_usd, 4),
            "table_usd": round(self.table_usd, 4),
            "functions_usd": round(self.functions_usd, 4),
            "total_usd": round(self.total_usd, 4),
        }
