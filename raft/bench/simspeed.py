"""Simulator speed: the systematic tester's schedules/s and steps/s, if it is there.

The tester is another module's work; it is reached only through its command line
(`python -m raft test ...`), so nothing here depends on its internals, and its absence is
reported as "not available" rather than an error.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SimSpeed:
    available: bool
    reason: str = ""
    servers: int = 0
    iterations: int = 0
    max_steps: int = 0
    schedules: int = 0
    steps: int | None = None
    elapsed_s: float = 0.0
    exit_code: int | None = None

    @property
    def schedules_per_s(self) -> float:
        return self.schedules / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def steps_per_s(self) -> float | None:
        return self.steps / self.elapsed_s if self.elapsed_s and self.steps is not None else None

    def to_json(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "reason": self.reason}
        steps_per_s = self.steps_per_s
        return {
            "available": True,
            "servers": self.servers,
            "iterations": self.iterations,
            "max_steps": self.max_steps,
            "schedules": self.schedules,
            "steps": self.steps,
            "elapsed_s": round(self.elapsed_s, 3),
            "schedules_per_s": round(self.schedules_per_s, 1),
            "steps_per_s": None if steps_per_s is None else round(steps_per_s, 1),
            "exit_code": self.exit_code,
        }


def _has_test_command() -> bool:
    if importlib.util.find_spec("raft.sim") is None:
        return False
    from raft import cli

    parser = cli.build_parser()
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        choices = getattr(action, "choices", None) or {}
        if "test" in choices:
            return True
    return False


def _find_number(doc: Any, names: tuple[str, ...]) -> int | None:
    """The first integer field called one of `names`, searched depth first."""
    if isinstance(doc, dict):
        for name in names:
            value = doc.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        for value in doc.values():
            found = _find_number(value, names)
            if found is not None:
                return found
    return None


def measure_sim(
    servers: int = 5, iterations: int = 1000, max_steps: int = 200, timeout_s: float = 120.0
) -> SimSpeed:
    try:
        present = _has_test_command()
    except Exception as exc:  # Another engineer's module, mid-build: never fail the bench.
        return SimSpeed(False, f"not available ({type(exc).__name__}: {exc})")
    if not present:
        return SimSpeed(False, "not available (no `python -m raft test` yet)")
    command = [sys.executable, "-m", "raft", "test", "--servers", str(servers)]
    command += ["--iterations", str(iterations), "--max-steps", str(max_steps), "--json"]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return SimSpeed(False, f"not available (no result within {timeout_s:.0f} s)")
    elapsed = time.perf_counter() - started
    doc: Any = None
    for line in reversed(done.stdout.splitlines()):
        try:
            doc = json.loads(line)
            break
        except ValueError:
            continue
    if doc is None:
        return SimSpeed(False, f"not available (no JSON output; exit code {done.returncode})")
    schedules = _find_number(doc, ("schedules", "iterations_run", "iterations")) or iterations
    steps = _find_number(doc, ("steps", "total_steps"))
    reported = doc.get("elapsed_s") if isinstance(doc, dict) else None
    if isinstance(reported, int | float) and reported > 0:
        elapsed = float(reported)
    return SimSpeed(
        True,
        servers=servers,
        iterations=iterations,
        max_steps=max_steps,
        schedules=schedules,
        steps=steps,
        elapsed_s=elapsed,
        exit_code=done.returncode,
    )
