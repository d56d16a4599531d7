"""Latency percentiles, shared by the runner's report and the benchmark."""

from __future__ import annotations

import math
from dataclasses import dataclass


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Latency:
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, samples_ms: list[float]) -> Latency:
        return cls(round(percentile(samples_ms, 50), 3), round(percentile(samples_ms, 99), 3))
