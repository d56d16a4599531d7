"""Determinism: one seed gives one run, whatever the process, hash seed or job count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from raft.sim.runner import RunOptions, explore, replay, schedule
from raft.sim.schedule import SimSetup
from raft.sim.simulator import Simulator
from raft.sim.strategies import Recorder

ROOT = Path(__file__).resolve().parent.parent


def _test_in_subprocess(out: Path, hash_seed: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    args = [
        "--variant",
        "vote-not-persisted",
        "--seed",
        "0",
        "--iterations",
        "50",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "raft.sim", "test", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr


def test_a_fixed_seed_writes_byte_identical_traces(tmp_path: Path) -> None:
    # Different hash seeds too: nothing may depend on set order or str hashes.
    _test_in_subprocess(tmp_path / "a", "1")
    _test_in_subprocess(tmp_path / "b", "2")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names and names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_results_do_not_depend_on_the_number_of_jobs() -> None:
    one = explore(RunOptions(SimSetup(), seed=11, iterations=60, jobs=1))
    two = explore(RunOptions(SimSetup(), seed=11, iterations=60, jobs=2))
    assert (one.schedules, one.steps) == (two.schedules, two.steps)
    assert one.coverage.to_json() == two.coverage.to_json()
    buggy = SimSetup(target="variant:duplicate-votes")
    first = explore(RunOptions(buggy, seed=0, iterations=700, jobs=1))
    again = explore(RunOptions(buggy, seed=0, iterations=700, jobs=2))
    assert first.failure is not None and again.failure is not None
    assert first.failure.spec == again.failure.spec
    assert first.failure.choices == again.failure.choices
    assert (first.schedules, first.steps) == (again.schedules, again.steps)


def test_replaying_recorded_choices_reproduces_each_schedule() -> None:
    options = RunOptions(SimSetup(target="variant:no-up-to-date-check"), seed=5)
    for index in range(30):
        spec, strategy = schedule(options, index)
        recorder = Recorder(strategy)
        live = Simulator(options.setup, spec, recorder).run()
        again = replay(options.setup, spec, recorder.steps)
        assert (again.steps, again.violation) == (live.steps, live.violation)
        assert again.coverage == live.coverage
