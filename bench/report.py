"""The benchmark's results as one JSON object and as a text table, with the targets."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Any

from bench.cost_model import COMMIT_PATH_HOPS, COMMIT_PATH_SAVES, AzureModel
from bench.forecast import Forecast
from bench.inprocess import RUNNER_CONFIG, CellResult, IdleResult
from bench.overload import OverloadResult
from bench.pysyncobj_baseline import BaselineResult
from bench.simspeed import SimSpeed

TARGET_CLUSTER = 5
TARGET_CLIENTS = 100
RATIO_CLUSTER = 3
MAX_SERVER_MESSAGES_PER_COMMAND = 0.1
MAX_STORE_WRITES_PER_COMMAND_PER_SERVER = 0.02
MIN_RATIO_VS_TUNED = 2.0


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor() or "unknown",
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@dataclass
class BenchReport:
    command: str
    model: AzureModel
    cells: list[CellResult] = field(default_factory=list)
    idle: list[IdleResult] = field(default_factory=list)
    pysyncobj: BaselineResult | None = None
    pysyncobj_tuned: BaselineResult | None = None
    pysyncobj_note: str = ""
    overload: OverloadResult | None = None
    sim: SimSpeed | None = None
    # Keeping and loading a server as history grows (bench/history.py), and why a store was
    # left out.
    history: list[dict[str, Any]] = field(default_factory=list)
    history_note: str = ""
    forecast: Forecast | None = None

    def cell(self, servers: int, clients: int) -> CellResult | None:
        for c in self.cells:
            if c.servers == servers and c.clients == clients:
                return c
        return None

    def idle_for(self, servers: int) -> IdleResult | None:
        return next((i for i in self.idle if i.servers == servers), None)

    # ----------------------------------------------------------------- derived figures

    def ratio(self, baseline: BaselineResult | None) -> float | None:
        ours = self.cell(RATIO_CLUSTER, TARGET_CLIENTS)
        if ours is None or baseline is None or not baseline.throughput:
            return None
        return ours.throughput / baseline.throughput

    def azure(self, cell: CellResult) -> dict[str, Any]:
        all_messages = cell.server_messages_per_command + cell.client_messages_per_command
        cost = self.model.usd_per_million(
            all_messages, cell.store_writes_per_command, cell.servers, cell.clients
        )
        return {
            "servers": cell.servers,
            "clients": cell.clients,
            "commit_latency_ms": round(self.model.commit_latency_ms(), 1),
            "commands_per_s": round(self.model.throughput(cell.clients), 1),
            "usd_per_million_commands": cost.to_json(),
        }

    def azure_idle(self, idle: IdleResult) -> dict[str, Any]:
        cost = self.model.idle_usd_per_month(
            idle.server_messages_per_minute,
            idle.store_writes_per_minute,
            RUNNER_CONFIG.heartbeat_interval,
            idle.servers,
        )
        return {"servers": idle.servers, "usd_per_month": cost.to_json()}

    def targets(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        ratio = self.ratio(self.pysyncobj)
        out.append(
            {
                "target": f"{RATIO_CLUSTER} servers, {TARGET_CLIENTS} clients: throughput >= "
                "PySyncObj (batching) in the same run (aim 2x)",
                "value": None if ratio is None else round(ratio, 2),
                "met": None if ratio is None else ratio >= 1.0,
            }
        )
        tuned = self.ratio(self.pysyncobj_tuned)
        out.append(
            {
                "target": f"{RATIO_CLUSTER} servers, {TARGET_CLIENTS} clients: throughput >= "
                f"{MIN_RATIO_VS_TUNED:g}x PySyncObj with its batching period tuned, same run",
                "value": None if tuned is None else round(tuned, 2),
                "met": None if tuned is None else tuned >= MIN_RATIO_VS_TUNED,
            }
        )
        big = self.cell(TARGET_CLUSTER, TARGET_CLIENTS)
        if big is not None:
            out.append(
                {
                    "target": f"{TARGET_CLUSTER} servers, {TARGET_CLIENTS} clients: server "
                    f"messages per command <= {MAX_SERVER_MESSAGES_PER_COMMAND}",
                    "value": round(big.server_messages_per_command, 4),
                    "met": big.server_messages_per_command <= MAX_SERVER_MESSAGES_PER_COMMAND,
                }
            )
            writes = big.store_writes_per_command_per_server
            out.append(
                {
                    "target": f"{TARGET_CLUSTER} servers, {TARGET_CLIENTS} clients: store writes "
                    f"per command per server <= {MAX_STORE_WRITES_PER_COMMAND_PER_SERVER}",
                    "value": round(writes, 4),
                    "met": writes <= MAX_STORE_WRITES_PER_COMMAND_PER_SERVER,
                }
            )
        for c in self.cells:
            if c.clients == 1:
                bound = 2 * (c.servers - 1)
                out.append(
                    {
                        "target": f"{c.servers} servers, 1 client: server messages per command "
                        f"<= 2 x (servers - 1) = {bound}",
                        "value": round(c.server_messages_per_command, 4),
                        "met": c.server_messages_per_command <= bound,
                    }
                )
        return out

    # ----------------------------------------------------------------- output

    def to_json(self) -> dict[str, Any]:
        big = self.cell(TARGET_CLUSTER, TARGET_CLIENTS)
        ratio = self.ratio(self.pysyncobj)
        tuned = self.ratio(self.pysyncobj_tuned)
        return {
            "command": self.command,
            "machine": machine(),
            "throughput_ratio_vs_pysyncobj": None if ratio is None else round(ratio, 3),
            "throughput_ratio_vs_pysyncobj_tuned": None if tuned is None else round(tuned, 3),
            "server_messages_per_command": None
            if big is None
            else round(big.server_messages_per_command, 5),
            "store_writes_per_command_per_server": None
            if big is None
            else round(big.store_writes_per_command_per_server, 5),
            "config": {
                "election_timeout_ms": [
                    RUNNER_CONFIG.election_timeout_min,
                    RUNNER_CONFIG.election_timeout_max,
                ],
                "heartbeat_ms": RUNNER_CONFIG.heartbeat_interval,
                "max_entries_per_message": RUNNER_CONFIG.max_entries_per_message,
                "max_inflight_messages": RUNNER_CONFIG.max_inflight_messages,
                "max_uncommitted_entries": RUNNER_CONFIG.max_uncommitted_entries,
            },
            "cells": [c.to_json() for c in self.cells],
            "idle": [i.to_json() for i in self.idle],
            "azure": {
                "parameters": self.model.as_dict(),
                "assumed_prices": list(AzureModel.PRICES),
                "cells": [self.azure(c) for c in self.cells],
                "idle": [self.azure_idle(i) for i in self.idle],
            },
            "pysyncobj": None if self.pysyncobj is None else self.pysyncobj.to_json(),
            "pysyncobj_tuned": None
            if self.pysyncobj_tuned is None
            else self.pysyncobj_tuned.to_json(),
            "pysyncobj_note": self.pysyncobj_note,
            "overload": None if self.overload is None else self.overload.to_json(),
            "sim": None if self.sim is None else self.sim.to_json(),
            "history": {"points": self.history, "note": self.history_note},
            "azure_forecast": None if self.forecast is None else self.forecast.to_json(self.model),
            "targets": self.targets(),
        }

    def to_text(self) -> str:
        lines: list[str] = []
        m = machine()
        lines.append(f"$ {self.command}")
        lines.append(f"machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}")
        lines.append("")
        lines.append(
            "In-process cluster (InMemoryBus + InMemoryStore, runner timing "
            f"{RUNNER_CONFIG.election_timeout_min}-{RUNNER_CONFIG.election_timeout_max} ms "
            f"election, {RUNNER_CONFIG.heartbeat_interval} ms heartbeat)"
        )
        header = (
            f"{'servers':>7} {'clients':>7} {'committed':>11} {'cmd/s':>9} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'srv msg/cmd':>11} {'cli msg/cmd':>11} {'writes/cmd':>10} "
            f"{'/server':>8} {'cpu us/cmd':>10}"
        )
        lines.append(header)
        for c in self.cells:
            flag = " (budget hit)" if c.timed_out else ""
            lines.append(
                f"{c.servers:>7} {c.clients:>7} {c.committed:>5}/{c.requested:<5} "
                f"{c.throughput:>9.0f} {c.latency.p50_ms:>8.2f} {c.latency.p99_ms:>8.2f} "
                f"{c.server_messages_per_command:>11.4f} {c.client_messages_per_command:>11.2f} "
                f"{c.store_writes_per_command:>10.4f} "
                f"{c.store_writes_per_command_per_server:>8.4f} "
                f"{c.per_command(c.cpu_s) * 1e6:>10.1f}{flag}"
            )
        lines.append(
            "  srv msg = messages between servers (InMemoryBus.published less the client's); "
            "cli msg = the client's own requests and results, counted apart"
        )
        for i in self.idle:
            lines.append(
                f"idle, {i.servers} servers, {i.seconds:.1f} s: "
                f"{i.server_messages_per_minute:.0f} server messages/min, "
                f"{i.store_writes_per_minute:.0f} store writes/min"
            )
        lines.append("")
        lines.extend(self._azure_text())
        lines.append("")
        lines.extend(self._pysyncobj_text())
        lines.append("")
        lines.extend(self._overload_text())
        lines.append("")
        lines.extend(self._sim_text())
        lines.extend(self._history_text())
        lines.append("")
        lines.extend(self._forecast_text())
        lines.append("")
        lines.append("Targets")
        for t in self.targets():
            met = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
            lines.append(f"  [{met:>6}] {t['target']}: {t['value']}")
        return "\n".join(lines)

    def _azure_text(self) -> list[str]:
        model = self.model
        lines = [
            "Estimated on Azure (a model, not a measurement; prices are ASSUMPTIONS, "
            "override with --azure-<name>)"
        ]
        params = ", ".join(
            f"{name}={value:g}{' (assumed price)' if name in AzureModel.PRICES else ''}"
            for name, value in model.as_dict().items()
        )
        lines.append(f"  parameters: {params}")
        lines.append(
            f"  commit path: {COMMIT_PATH_HOPS} Service Bus hops + {COMMIT_PATH_SAVES} Table "
            f"transactions + 3 invocations = {model.commit_latency_ms():.0f} ms"
        )
        lines.append(
            f"  {'servers':>7} {'clients':>7} {'latency ms':>10} {'cmd/s':>8} "
            f"{'USD/M cmds':>10} {'(bus':>8} {'table':>8} {'funcs)':>8}"
        )
        for c in self.cells:
            est = self.azure(c)
            cost = est["usd_per_million_commands"]
            lines.append(
                f"  {c.servers:>7} {c.clients:>7} {est['commit_latency_ms']:>10.0f} "
                f"{est['commands_per_s']:>8.0f} {cost['total_usd']:>10.2f} "
                f"{cost['servicebus_usd']:>8.2f} {cost['table_usd']:>8.4f} "
                f"{cost['functions_usd']:>8.2f}"
            )
        for i in self.idle:
            cost = self.azure_idle(i)["usd_per_month"]
            lines.append(
                f"  idle {i.servers} servers at a {model.heartbeat_ms:g} ms heartbeat: "
                f"{cost['total_usd']:.2f} USD/month (bus {cost['servicebus_usd']:.2f} incl. base, "
                f"table {cost['table_usd']:.2f}, functions {cost['functions_usd']:.2f})"
            )
        return lines

    def _pysyncobj_text(self) -> list[str]:
        lines = ["PySyncObj 0.3.17 (3 processes on 127.0.0.1, ReplDict, appendEntriesUseBatch)"]
        for label, result in (("default", self.pysyncobj), ("tuned", self.pysyncobj_tuned)):
            if result is None:
                continue
            period = result.append_period_s or 0.1
            ratio = self.ratio(result)
            ratio_text = "" if ratio is None else f"; ours/theirs = {ratio:.2f}x"
            lines.append(
                f"  {label} (appendEntriesPeriod {period * 1000:g} ms): "
                f"{result.committed}/{result.requested} at {result.clients} clients, "
                f"{result.throughput:.0f} cmd/s, p50 {result.latency.p50_ms:.2f} ms, "
                f"p99 {result.latency.p99_ms:.2f} ms{ratio_text}"
            )
        if self.pysyncobj_note:
            lines.append(f"  {self.pysyncobj_note}")
        return lines

    def _overload_text(self) -> list[str]:
        o = self.overload
        if o is None:
            return ["Overload: not run"]
        p = o.phase.to_json()
        r = o.recovery
        return [
            f"Overload ({o.servers} servers, {o.factor:g}x the measured "
            f"{o.capacity_per_s:.0f} cmd/s, open loop, queue bound {o.queue_bound} "
            "uncommitted entries)",
            f"  offered {p['offered_per_s']:.0f}/s (achieved {p['achieved_offered_per_s']:.0f}/s): "
            f"issued {o.phase.issued}, accepted {o.phase.accepted}, refused "
            f"{o.phase.refused} (overloaded), errors {o.phase.errors}, unanswered "
            f"{o.phase.unanswered}",
            f"  accepted {p['accepted_per_s']:.0f}/s, "
            f"p50 {p['accepted_latency_ms']['p50']:.1f} ms, "
            f"p99 {p['accepted_latency_ms']['p99']:.1f} ms; refusals p99 "
            f"{p['refusal_latency_ms']['p99']:.1f} ms over {p['pumps']} pumps of "
            f"{p['mean_pump_ms']:.1f} ms mean; max uncommitted {o.phase.max_uncommitted}",
            f"  recovery: {r.committed}/{r.requested} at {r.throughput:.0f} cmd/s "
            f"(before: {o.baseline.throughput:.0f}, ratio {o.recovery_ratio:.2f}), "
            f"p99 {r.latency.p99_ms:.1f} ms",
            f"  settled: {o.settled}; diverged: {bool(o.divergence)}"
            + (f" ({'; '.join(o.divergence)})" if o.divergence else "")
            + f"; RSS {o.rss_before_mib:.1f} -> {o.rss_after_overload_mib:.1f} -> "
            f"{o.rss_after_recovery_mib:.1f} MiB",
        ]

    def _forecast_text(self) -> list[str]:
        if self.forecast is None:
            return ["Azure forecast: not run"]
        doc = self.forecast.to_json(self.model)
        p = doc["parameters"]
        lines = [
            f"Azure forecast, by running the code on a virtual clock ({p['servers']} servers, "
            f"{p['window_s']:g} s measured after {p['warmup_s']:g} s; parameters in the JSON)",
            f"  {'mode':>8} {'clients':>7} {'cmd/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'USD/M cmds':>11} {'(per inst-s)':>12} {'HTTP inst':>9}",
        ]
        for cell in doc["cells"]:
            cost, latency = cell["usd_per_million_commands"], cell["commit_latency_ms"]
            lines.append(
                f"  {cell['mode']:>8} {cell['clients']:>7} {cell['commands_per_s']:>8.1f} "
                f"{latency['p50']:>8.0f} {latency['p99']:>8.0f} "
                f"{cost['per_execution']['total_usd']:>11.2f} "
                f"{cost['per_instance_second']['total_usd']:>12.2f} {cell['http_instances']:>9}"
            )
        idle = doc["idle"]
        if idle is not None:
            month = idle["usd_per_month"]
            lines.append(
                f"  idle {idle['servers']} servers: {month['per_execution']['total_usd']:.2f} "
                f"USD/month billed per execution, {month['per_instance_second']['total_usd']:.2f} "
                f"per instance-second ({idle['messages']} messages, "
                f"{sum(idle['executions'].values())} executions in {idle['window_s']:g} s)"
            )
        decision = doc["decision"]
        verdict = "meets" if decision["meets_rule"] else "does not meet"
        lines.append(f"  considered: {decision['change']}; {verdict} the rule ({decision['rule']})")
        for e in decision["effects"]:
            p50, p99 = e["p50_ms"], e["p99_ms"]
            lines.append(
                f"    {e['clients']:>3} clients: p50 {p50[0]:.0f} -> {p50[1]:.0f} ms, "
                f"p99 {p99[0]:.0f} -> {p99[1]:.0f} ms, "
                f"{e['commands_per_s'][0]:.1f} -> {e['commands_per_s'][1]:.1f} cmd/s"
            )
        return lines

    def _history_text(self) -> list[str]:
        lines = ["History (leader of 3 servers; rows kept, cold load, warm reload):"]
        for p in self.history:
            lines.append(
                f"  {p['store']:8} {p['committed']:>7} committed: {p['log_rows']} log, "
                f"{p['snapshot_rows']} snapshot, {p['result_rows']} result rows; cold load "
                f"{p['cold_load_rows_read']} rows in {p['cold_load_s'] * 1000:.1f} ms, "
                f"{p['memory_kib']:.0f} KiB; warm reload {p['warm_reload_rows_read']} rows "
                f"after {p['entries_added_meanwhile']} new entries"
            )
        if self.history_note:
            lines.append(f"  {self.history_note}")
        return lines

    def _sim_text(self) -> list[str]:
        s = self.sim
        if s is None:
            return ["Simulator speed: not run"]
        return [
            f"Simulator speed ({s.servers} servers, {s.iterations} x {s.max_steps} steps): "
            f"{s.schedules_per_s:.1f} schedules/s, {s.steps_per_s:.0f} steps/s "
            f"({s.elapsed_s:.1f} s, {s.bugs} bugs)"
        ]
