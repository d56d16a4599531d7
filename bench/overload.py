"""Overload: offer several times the measured capacity, open loop, and show that the leader
refuses what its bounded queue (`Config.max_uncommitted_entries`) cannot hold at once, that
no server wedges or diverges, that memory stays bounded, and that full speed returns when the
load drops."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from bench.inprocess import RUNNER_CONFIG, CellResult, InProcessCluster, OpenLoopResult
from bench.workload import Workload


def rss_mib() -> float:
    """Resident set size of this process, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


@dataclass(frozen=True, slots=True)
class OverloadResult:
    servers: int
    capacity_per_s: float
    factor: float
    queue_bound: int
    baseline: CellResult
    phase: OpenLoopResult
    recovery: CellResult
    settled: bool
    divergence: list[str]
    rss_before_mib: float
    rss_after_overload_mib: float
    rss_after_recovery_mib: float

    @property
    def recovery_ratio(self) -> float:
        """Throughput after the overload over throughput on the same cluster before it."""
        before = self.baseline.throughput
        return self.recovery.throughput / before if before else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "servers": self.servers,
            "capacity_per_s": round(self.capacity_per_s, 1),
            "factor": self.factor,
            "queue_bound": self.queue_bound,
            **self.phase.to_json(),
            "recovery": {
                "commands": self.recovery.committed,
                "requested": self.recovery.requested,
                "commands_per_s": round(self.recovery.throughput, 1),
                "before_per_s": round(self.baseline.throughput, 1),
                "ratio_to_before": round(self.recovery_ratio, 3),
                "latency_ms": {
                    "p50": self.recovery.latency.p50_ms,
                    "p99": self.recovery.latency.p99_ms,
                },
            },
            "settled": self.settled,
            "diverged": bool(self.divergence),
            "divergence": self.divergence,
            "rss_mib": {
                "before": round(self.rss_before_mib, 1),
                "after_overload": round(self.rss_after_overload_mib, 1),
                "after_recovery": round(self.rss_after_recovery_mib, 1),
            },
        }


def run_overload(
    capacity_per_s: float,
    servers: int = 3,
    factor: float = 3.0,
    seconds: float = 2.0,
    max_commands: int = 60_000,
    recovery_commands: int = 10_000,
    clients: int = 100,
    budget_s: float = 30.0,
    queue_bound: int = RUNNER_CONFIG.max_uncommitted_entries,
) -> OverloadResult:
    config = replace(RUNNER_CONFIG, max_uncommitted_entries=queue_bound)
    cluster = InProcessCluster(servers, config)
    cluster.wait_for_leader()
    # Full speed on this very cluster before the overload, to compare the recovery with.
    baseline = cluster.run_closed_loop(Workload(recovery_commands, clients, budget_s=budget_s))
    offered = capacity_per_s * factor
    # Bounded in count and time: `seconds` worth of arrivals, at most `max_commands`.
    commands = max(1, min(max_commands, int(offered * seconds)))
    rss_before = rss_mib()
    phase = cluster.run_open_loop(Workload(commands, clients, budget_s=budget_s), offered)
    # Whatever was accepted commits once the load stops; nothing is left hanging.
    settled = cluster.settle()
    rss_after = rss_mib()
    recovery = cluster.run_closed_loop(Workload(recovery_commands, clients, budget_s=budget_s))
    settled = cluster.settle() and settled
    return OverloadResult(
        servers=servers,
        capacity_per_s=capacity_per_s,
        factor=factor,
        queue_bound=cluster.config.max_uncommitted_entries,
        baseline=baseline,
        phase=phase,
        recovery=recovery,
        settled=settled,
        divergence=cluster.divergence(),
        rss_before_mib=rss_before,
        rss_after_overload_mib=rss_after,
        rss_after_recovery_mib=rss_mib(),
    )
