"""Simulator speed: the systematic tester's schedules/s and steps/s, measured by calling its
Python API (`raft.sim.runner.explore`) in this process, on one core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raft.sim.runner import RunOptions, explore
from raft.sim.schedule import SimSetup


@dataclass(frozen=True, slots=True)
class SimSpeed:
    servers: int
    iterations: int
    max_steps: int
    schedules: int
    steps: int
    elapsed_s: float
    bugs: int

    @property
    def schedules_per_s(self) -> float:
        return self.schedules / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.elapsed_s if self.elapsed_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "servers": self.servers,
            "iterations": self.iterations,
            "max_steps": self.max_steps,
            "schedules": self.schedules,
            "steps": self.steps,
            "bugs": self.bugs,
            "elapsed_s": round(self.elapsed_s, 3),
            "schedules_per_s": round(self.schedules_per_s, 1),
            "steps_per_s": round(self.steps_per_s, 1),
        }


def measure_sim(
    servers: int = 5, iterations: int = 1000, max_steps: int = 200, seed: int = 1
) -> SimSpeed:
    """The shape Coyote publishes figures for: 5 servers, 1000 schedules of 200 steps."""
    options = RunOptions(SimSetup(servers=servers, max_steps=max_steps), seed, iterations)
    result = explore(options)
    return SimSpeed(
        servers=servers,
        iterations=iterations,
        max_steps=max_steps,
        schedules=result.schedules,
        steps=result.steps,
        elapsed_s=result.elapsed_s,
        bugs=int(result.failure is not None),
    )
