"""Schedules run with Raft's optional mechanisms (pre-vote, check-quorum, quiescence) on or,
in turn, one of them off; the choice is part of the schedule, so a trace replays with it."""

from __future__ import annotations

from collections import Counter

from raft.sim.runner import RunOptions, schedule
from raft.sim.schedule import ScheduleSpec, SimSetup


def test_half_the_schedules_run_production_options_and_the_rest_each_turn_one_off() -> None:
    specs = [schedule(RunOptions(), i)[0] for i in range(48)]
    off = Counter(
        tuple(name for name in ("pre_vote", "check_quorum", "quiesce") if not getattr(s, name))
        for s in specs
    )
    assert off == {(): 24, ("pre_vote",): 8, ("check_quorum",): 8, ("quiesce",): 8}


def test_every_strategy_runs_without_each_mechanism() -> None:
    specs = [schedule(RunOptions(), i)[0] for i in range(48)]
    for name in ("pre_vote", "check_quorum", "quiesce"):
        strategies = {s.strategy for s in specs if not getattr(s, name)}
        assert {name.split("+")[0] for name in strategies} == {
            "random",
            "probabilistic",
            "pct",
            "fair-pct",
        }


def test_the_servers_of_a_schedule_run_with_its_options() -> None:
    spec = schedule(RunOptions(), 8)[0]
    config = spec.config(SimSetup())
    assert (config.pre_vote, config.check_quorum, config.quiesce) == (True, True, False)


def test_a_trace_written_before_options_varied_replays_with_production_options() -> None:
    doc = schedule(RunOptions(), 0)[0].to_json()
    for name in ("pre_vote", "check_quorum", "quiesce"):
        del doc[name]
    spec = ScheduleSpec.from_json(doc)
    assert (spec.pre_vote, spec.check_quorum, spec.quiesce) == (True, True, True)
