"""An Azure forecast made by running the code.

The app's own node handlers and HTTP function run as Flex Consumption hosts them
(`raft.hosts.flex.FlexTopology`, on a virtual clock), behind a bus and a store that take the
time Service Bus Standard and Table Storage take: each operation's latency is drawn from a
log-normal distribution fitted to a median and a 99th percentile, every one a parameter
(sources in docs/performance.md). The platform's concurrency is the plan's: a batch-triggered
function runs one batch at a time per instance (up to host.json's 100 messages), one timer
instance ticks every server once a period, and the HTTP functions scale out at
`http_concurrency` requests per instance (1 by default for Python apps) up to the app's
`max_instances`.

Each cell runs `clients` callers in a closed loop (each posts its next command when it has
the last one's result) for `warmup_s`, then measures `window_s`: commit latency as the caller
sees it (from its POST to the HTTP function's answer), commands committed per second, and
what the window would be billed. Idle, the same cluster runs `idle_s` with no caller.

Billing, at the list prices of `bench.cost_model.AzureModel` (assumptions, as there):
Service Bus operations per message sent, plus its base charge; one Table transaction per
store operation (a load is two: the state row, then the log rows); one execution per batch,
timer firing and HTTP request; and GB-seconds of the instances' memory, under two readings of
Flex Consumption's on-demand meter, whose documentation says "the minimum billable execution
period ... is 1,000 ms; past that, the billable activity period is rounded up to the nearest
100 ms" without saying of what:

- `per_execution`: every execution is billed its own duration, at least `min_billed_ms` and
  rounded up to `billed_increment_ms`;
- `per_instance_second`: an instance is billed every whole second in which it runs any
  execution, however many.

Both modes of the HTTP function run: `publish` (the app today: the command goes to the
leader's subscription) and `step` (`raft.hosts.http_api.StepLocally`: the HTTP function steps
the leader's node handler itself, one Service Bus hop fewer, giving up after
`step_save_attempts` conflicting saves and publishing instead).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import Any

from bench.cost_model import SECONDS_PER_MONTH, AzureModel
from raft.adapters.memory_store import InMemoryStore
from raft.hosts.flex import FlexTiming, FlexTopology, Latencies, LogNormal, Usage
from raft.hosts.http_api import STEP_SAVE_ATTEMPTS
from raft.hosts.latency import Latency
from raft.hosts.settings import SERVER_COUNT, AppSettings

MODES = ("publish", "step")
# The throughput the latency improvement may cost at any load, within the runs' noise.
THROUGHPUT_TOLERANCE = 0.05
# Bounds a cluster's first election (the app's timeouts are several timer periods).
ELECTION_BOUND_S = 180.0


@dataclass(frozen=True)
class ForecastParameters:
    """Every input of the forecast; each one is a flag `--forecast-<name>` (a latency takes
    two values, its p50 and p99 in milliseconds)."""

    servers: int = 5
    clients: tuple[int, ...] = (1, 10, 100)
    warmup_s: float = 5.0
    window_s: float = 30.0
    idle_s: float = 60.0
    seed: int = 0
    # Service Bus Standard: a send and a settle are round trips to the broker; delivery is
    # from the send to the trigger's invocation with the message.
    servicebus_send_ms: tuple[float, float] = (20.0, 120.0)
    servicebus_delivery_ms: tuple[float, float] = (30.0, 200.0)
    servicebus_complete_ms: tuple[float, float] = (20.0, 120.0)
    # Table Storage, same region.
    table_point_read_ms: tuple[float, float] = (5.0, 30.0)
    table_query_ms: tuple[float, float] = (8.0, 50.0)
    table_transaction_ms: tuple[float, float] = (10.0, 60.0)
    # The Functions host's overhead per execution (dispatch to the Python worker and back).
    invocation_ms: tuple[float, float] = (2.0, 10.0)
    timer_ms: int = 1000
    max_batch: int = 100
    http_concurrency: int = 1
    max_instances: int = 40
    min_billed_ms: float = 1000.0
    billed_increment_ms: float = 100.0
    step_save_attempts: int = STEP_SAVE_ATTEMPTS

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def latencies(self) -> Latencies:
        return Latencies(
            invocation=LogNormal(*self.invocation_ms),
            send=LogNormal(*self.servicebus_send_ms),
            delivery=LogNormal(*self.servicebus_delivery_ms),
            complete=LogNormal(*self.servicebus_complete_ms),
            point_read=LogNormal(*self.table_point_read_ms),
            query=LogNormal(*self.table_query_ms),
            transaction=LogNormal(*self.table_transaction_ms),
        )

    def to_json(self) -> dict[str, Any]:
        return {name: _plain(getattr(self, name)) for name in self.names()}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Window:
    """What one measured interval of a run did and would be billed."""

    seconds: float
    committed: int
    latencies_ms: list[float]
    executions: Counter[str]
    messages: int
    store_ops: Counter[str]
    # Instance time billed (seconds), under each reading of the meter.
    billed_s_per_execution: float
    billed_s_per_instance_second: float
    http_instances: int

    def cost(self, model: AzureModel, billed_s: float) -> dict[str, float]:
        """USD for this window, with `billed_s` instance-seconds of memory billed."""
        gb_s = billed_s * model.function_instance_gb
        ops = self.messages * model.servicebus_ops_per_message
        base = model.servicebus_base_usd_per_month * self.seconds / SECONDS_PER_MONTH
        bus = ops / 1e6 * model.servicebus_usd_per_million_ops + base
        table = sum(self.store_ops.values()) / 10_000 * model.table_usd_per_10k_transactions
        executions = sum(self.executions.values())
        functions = (
            executions / 1e6 * model.functions_usd_per_million_executions
            + gb_s * model.functions_usd_per_gb_s
        )
        return {"servicebus_usd": bus, "table_usd": table, "functions_usd": functions}

    def costs(self, model: AzureModel, scale: float) -> dict[str, dict[str, float]]:
        """Both readings of the compute meter, each cost multiplied by `scale`."""
        out = {}
        for reading, billed_s in (
            ("per_execution", self.billed_s_per_execution),
            ("per_instance_second", self.billed_s_per_instance_second),
        ):
            parts = {k: v * scale for k, v in self.cost(model, billed_s).items()}
            parts["total_usd"] = sum(parts.values())
            parts["gb_s"] = billed_s * model.function_instance_gb * scale
            out[reading] = {k: round(v, 4) for k, v in parts.items()}
        return out


@dataclass(frozen=True)
class Cell:
    mode: str
    clients: int
    window: Window

    @property
    def throughput(self) -> float:
        return self.window.committed / self.window.seconds

    def to_json(self, model: AzureModel) -> dict[str, Any]:
        w = self.window
        latency = Latency.of(w.latencies_ms)
        per_million = 1e6 / w.committed if w.committed else 0.0
        return {
            "mode": self.mode,
            "clients": self.clients,
            "window_s": w.seconds,
            "committed": w.committed,
            "commands_per_s": round(self.throughput, 2),
            "commit_latency_ms": {"p50": latency.p50_ms, "p99": latency.p99_ms},
            "executions": dict(w.executions),
            "messages": w.messages,
            "store_operations": dict(w.store_ops),
            "http_instances": w.http_instances,
            "usd_per_million_commands": w.costs(model, per_million),
        }


@dataclass
class Forecast:
    parameters: ForecastParameters
    cells: list[Cell] = field(default_factory=list)
    idle: Window | None = None

    def cell(self, mode: str, clients: int) -> Cell | None:
        return next((c for c in self.cells if c.mode == mode and c.clients == clients), None)

    def decision(self) -> dict[str, Any]:
        """The latency improvement considered, judged by the forecast: its effect on latency
        and throughput at each load, against a stated rule."""
        effects = []
        meets = True
        for clients in self.parameters.clients:
            before, after = self.cell("publish", clients), self.cell("step", clients)
            if before is None or after is None:
                continue
            old, new = Latency.of(before.window.latencies_ms), Latency.of(after.window.latencies_ms)
            effects.append(
                {
                    "clients": clients,
                    "p50_ms": [old.p50_ms, new.p50_ms],
                    "p99_ms": [old.p99_ms, new.p99_ms],
                    "commands_per_s": [round(before.throughput, 2), round(after.throughput, 2)],
                }
            )
            meets &= after.throughput >= (1 - THROUGHPUT_TOLERANCE) * before.throughput
            if clients == min(self.parameters.clients):
                meets &= new.p50_ms < old.p50_ms
        return {
            "change": "the HTTP function steps an idle leader's node handler itself instead of "
            "publishing the command to it (raft.hosts.http_api.StepLocally)",
            "rule": "adopt if it lowers p50 at the fewest clients and costs no load more than "
            f"{THROUGHPUT_TOLERANCE:.0%} of its throughput",
            "meets_rule": meets and bool(effects),
            "effects": effects,
        }

    def to_json(self, model: AzureModel) -> dict[str, Any]:
        idle = None
        if self.idle is not None:
            month = SECONDS_PER_MONTH / self.idle.seconds
            idle = {
                "servers": self.parameters.servers,
                "window_s": self.idle.seconds,
                "executions": dict(self.idle.executions),
                "messages": self.idle.messages,
                "store_operations": dict(self.idle.store_ops),
                "usd_per_month": self.idle.costs(model, month),
            }
        return {
            "parameters": self.parameters.to_json(),
            "prices": {name: getattr(model, name) for name in model.parameters()},
            "cells": [c.to_json(model) for c in self.cells],
            "idle": idle,
            "decision": self.decision(),
        }


# ------------------------------------------------------------------------------ running


def topology(params: ForecastParameters, mode: str) -> FlexTopology:
    """A fresh cluster with the app's default settings, hosted as Flex Consumption would."""
    # Imported here: the Functions host pulls in the Azure SDKs, which every `python -m raft`
    # command would otherwise load (this module defines the bench command's flags).
    from raft.hosts.functions import api_limits, node_options

    settings = AppSettings.from_env({SERVER_COUNT: str(params.servers)})
    options = node_options(settings)
    timing = FlexTiming(
        timer_ms=params.timer_ms,
        churn_every_ms=0,
        racing=0.0,
        latencies=params.latencies(),
        max_batch=params.max_batch,
        http_concurrency=params.http_concurrency,
        max_instances=params.max_instances,
    )
    step = replace(options, max_conflict_retries=params.step_save_attempts)
    store = InMemoryStore()
    return FlexTopology(
        settings.servers,
        lambda: store,
        options,
        timing,
        seed=params.seed,
        limits=api_limits(settings),
        step_options=step if mode == "step" else None,
    )


def elect(topo: FlexTopology) -> None:
    deadline = topo.now + ELECTION_BOUND_S * 1000
    while not topo.leader_ready():
        if topo.now >= deadline:
            raise RuntimeError(f"no leader within {ELECTION_BOUND_S:g} simulated s")
        topo.advance(topo.now + 500)


def measure(topo: FlexTopology, seconds: float, params: ForecastParameters) -> Window:
    """Run `seconds` more and say what happened in them."""
    start = topo.now
    before = _copy(topo.usage)
    topo.advance(start + seconds * 1000)
    end = topo.now
    after = topo.usage
    commits = [latency for at, latency in topo.commits if start < at <= end]
    per_execution = instance_seconds = 0.0
    for spans in after.busy.values():
        seconds_touched: set[int] = set()
        for begin, finish in spans:
            if not start < finish <= end:
                continue
            billed = _round_up(finish - begin, params.billed_increment_ms)
            per_execution += max(params.min_billed_ms, billed) / 1000
            first = max(begin, start)
            seconds_touched.update(range(int(first // 1000), math.ceil(finish / 1000)))
        instance_seconds += len(seconds_touched)
    return Window(
        seconds=(end - start) / 1000,
        committed=len(commits),
        latencies_ms=commits,
        executions=after.executions - before.executions,
        messages=after.messages - before.messages,
        store_ops=after.store_ops - before.store_ops,
        billed_s_per_execution=per_execution,
        billed_s_per_instance_second=instance_seconds,
        http_instances=len(topo.http),
    )


def _round_up(ms: float, increment: float) -> float:
    return math.ceil(ms / increment) * increment if increment > 0 else ms


def _copy(usage: Usage) -> Usage:
    return Usage(Counter(usage.executions), usage.messages, Counter(usage.store_ops))


def run_cell(params: ForecastParameters, mode: str, clients: int) -> Cell:
    topo = topology(params, mode)
    elect(topo)
    topo.start_clients(clients)
    topo.advance(topo.now + params.warmup_s * 1000)
    window = measure(topo, params.window_s, params)
    topo.stop_clients()
    return Cell(mode, clients, window)


def run_idle(params: ForecastParameters) -> Window:
    topo = topology(params, "publish")
    elect(topo)
    topo.advance(topo.now + params.warmup_s * 1000)
    return measure(topo, params.idle_s, params)


def run_forecast(params: ForecastParameters) -> Forecast:
    forecast = Forecast(params)
    for mode in MODES:
        for clients in params.clients:
            forecast.cells.append(run_cell(params, mode, clients))
    forecast.idle = run_idle(params)
    return forecast
