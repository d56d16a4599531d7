"""Every catalogued buggy server is found by the default portfolio within its stated budget,
shrunk, and its trace replays to the same violation; the production server is not flagged.

Budgets (seed 0, default portfolio) are the schedules explored before giving up; the
schedule each variant is found at today is noted, so a regression in the tester's power
shows up as a budget overrun rather than silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from raft.sim import trace
from raft.sim.runner import RunOptions, explore, investigate
from raft.sim.schedule import SimSetup
from raft.sim.variants import VARIANTS

# variant -> (servers, max steps, schedules budget); found today at the noted schedule.
# (5, 200, 100) is the default `python -m raft test`.
BUDGETS: dict[str, tuple[int, int, int]] = {
    "duplicate-votes": (5, 200, 200),  # schedule 74
    "no-up-to-date-check": (5, 200, 100),  # schedule 15
    "figure-8": (5, 200, 1000),  # schedule 495
    "vote-not-persisted": (5, 200, 100),  # schedule 5
    "truncate-on-append": (5, 200, 100),  # schedule 4
    "no-step-down": (5, 200, 100),  # schedule 2
    "commit-before-majority": (5, 200, 100),  # schedule 1
    "unconfirmed-reads": (5, 200, 100),  # schedule 3
    "trusts-leader-commit": (5, 200, 100),  # schedule 3
    "stale-cache-steps": (5, 200, 100),  # schedule 3
    "follower-never-commits": (5, 200, 100),  # schedule 3
    "compacts-past-commit": (5, 200, 100),  # schedule 11
    "blind-snapshot-chunks": (5, 200, 1000),  # schedule 775
}


def test_every_catalogued_variant_has_a_budget() -> None:
    assert set(BUDGETS) == set(VARIANTS)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_portfolio_finds_shrinks_and_replays_the_variant(name: str, tmp_path: Path) -> None:
    servers, max_steps, budget = BUDGETS[name]
    setup = SimSetup(servers=servers, max_steps=max_steps, target=f"variant:{name}")
    options = RunOptions(setup, seed=0, iterations=budget, jobs=2)
    result = explore(options)
    assert result.failure is not None, f"{name} not found within {budget} schedules"
    violation = result.failure.violation
    assert violation.property in VARIANTS[name].expect, violation

    investigation = investigate(options, result.failure)
    doc = trace.build(setup, investigation)
    assert doc["violation"]["property"] == violation.property
    assert len(doc["steps"]) <= violation.step
    path = trace.write(doc, tmp_path)
    found, same = trace.replay_doc(trace.load(path))
    assert same, (found, doc["violation"])


def test_the_production_server_passes_a_short_run() -> None:
    result = explore(RunOptions(SimSetup(), seed=7, iterations=150, jobs=2))
    assert result.failure is None, result.failure and result.failure.violation
    assert result.schedules == 150
