"""Running many schedules: deriving each from the run's seed and its index, in one process
or several, and investigating the first failure (shrink it, then trace it).

Schedule i depends only on (seed, i), never on which process runs it or when, and results
are consumed in index order, so a run's outcome (the first failing schedule, the step counts,
the coverage) is the same for any number of jobs.
"""

from __future__ import annotations

import gc
import multiprocessing
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from raft.sim.coverage import Coverage
from raft.sim.faults import FaultPlan
from raft.sim.monitors import Violation
from raft.sim.schedule import Outcome, ScheduleSpec, SimSetup
from raft.sim.shrink import shrink
from raft.sim.simulator import Simulator
from raft.sim.strategies import (
    PORTFOLIO,
    STRATEGIES,
    Live,
    Recorder,
    Replayer,
    Strategy,
    features,
)

STRATEGY_CHOICES = ("portfolio", "swarm", *PORTFOLIO)
# Schedules per unit of work handed to a process (fixed, so results never depend on -j).
CHUNK = 25


@dataclass(frozen=True)
class RunOptions:
    setup: SimSetup = field(default_factory=SimSetup)
    seed: int = 0
    iterations: int = 100
    strategy: str = "portfolio"
    jobs: int = 1


def schedule(options: RunOptions, index: int) -> tuple[ScheduleSpec, Strategy]:
    """Schedule `index` of a run. The portfolio rotates the strategies and alternates the
    default fault plan with swarm plans; `swarm` rotates the strategies, always swarmed.
    Either way blocks of schedules turn Raft's optional mechanisms off in turn
    (`strategies.features`)."""
    rng = random.Random(f"raft-sim:{options.seed}:{index}")
    name = options.strategy
    swarm = name == "swarm"
    if name in ("portfolio", "swarm"):
        name = PORTFOLIO[index % len(PORTFOLIO)]
        swarm = swarm or (index // len(PORTFOLIO)) % 2 == 1
    strategy = STRATEGIES[name](rng, options.setup.max_steps)
    plan = FaultPlan.swarm(rng) if swarm else FaultPlan.default()
    spec = ScheduleSpec(
        index=index,
        seed=options.seed,
        strategy=f"{name}+swarm" if swarm else name,
        plan=plan,
        node_seed=rng.getrandbits(32),
        fair_suffix=strategy.fair_suffix,
        **features(index),
    )
    return spec, strategy


@dataclass
class Failure:
    spec: ScheduleSpec
    violation: Violation
    choices: list[list[int]]


@dataclass
class Batch:
    """What a range of schedules produced, up to and including its first failure."""

    schedules: int = 0
    steps: int = 0
    fair_schedules: int = 0
    coverage: Coverage = field(default_factory=Coverage)
    failure: Failure | None = None


def run_batch(options: RunOptions, start: int, stop: int) -> Batch:
    batch = Batch()
    # A schedule allocates many short-lived objects and few cycles: collecting once per
    # batch instead of every few hundred allocations saves a tenth of the run, and freezing
    # what exists before the batch (modules, the run's options) halves that collection.
    gc.disable()
    gc.freeze()
    try:
        return _run_schedules(options, start, stop, batch)
    finally:
        gc.collect()
        gc.unfreeze()
        gc.enable()


def _run_schedules(options: RunOptions, start: int, stop: int, batch: Batch) -> Batch:
    for index in range(start, stop):
        spec, strategy = schedule(options, index)
        outcome = Simulator(options.setup, spec, Live(strategy)).run()
        batch.schedules += 1
        batch.steps += outcome.steps
        batch.fair_schedules += spec.fair_suffix
        batch.coverage.merge(outcome.coverage)
        if outcome.violation is not None:
            batch.failure = record(options, index)
            break
    return batch


def record(options: RunOptions, index: int) -> Failure:
    """Run schedule `index` again, writing its choices down."""
    spec, strategy = schedule(options, index)
    recorder = Recorder(strategy)
    outcome = Simulator(options.setup, spec, recorder).run()
    assert outcome.violation is not None, "schedules are deterministic"
    return Failure(spec, outcome.violation, recorder.steps)


def _run_batch_job(job: tuple[RunOptions, int, int]) -> Batch:
    return run_batch(*job)


@dataclass
class Exploration:
    schedules: int
    steps: int
    fair_schedules: int
    coverage: Coverage
    failure: Failure | None
    elapsed_s: float


Progress = Callable[[int, int], None]


def explore(options: RunOptions, progress: Progress | None = None) -> Exploration:
    """Run schedules 0..iterations-1 until the first failure."""
    started = time.perf_counter()
    jobs = [
        (options, start, min(start + CHUNK, options.iterations))
        for start in range(0, options.iterations, CHUNK)
    ]
    total = Batch()
    if options.jobs <= 1 or len(jobs) <= 1:
        for job in jobs:
            if _absorb(total, _run_batch_job(job), options, progress):
                break
    else:
        context = multiprocessing.get_context("fork")
        with context.Pool(options.jobs) as pool:
            for batch in pool.imap(_run_batch_job, jobs):
                if _absorb(total, batch, options, progress):
                    pool.terminate()
                    break
    return Exploration(
        total.schedules,
        total.steps,
        total.fair_schedules,
        total.coverage,
        total.failure,
        time.perf_counter() - started,
    )


def _absorb(total: Batch, batch: Batch, options: RunOptions, progress: Progress | None) -> bool:
    total.schedules += batch.schedules
    total.steps += batch.steps
    total.fair_schedules += batch.fair_schedules
    total.coverage.merge(batch.coverage)
    total.failure = batch.failure
    if progress is not None:
        progress(total.schedules, options.iterations)
    return batch.failure is not None


def replay(
    setup: SimSetup, spec: ScheduleSpec, choices: Sequence[Sequence[int]], tracing: bool = False
) -> Outcome:
    """Replay recorded choices. In a fair schedule faults stop where the choices end, which is
    where they stopped when recorded, and earlier once the shrinker has removed steps."""
    prefix = min(len(choices), setup.max_steps)
    return Simulator(setup, spec, Replayer(choices), tracing=tracing, prefix_steps=prefix).run()


@dataclass
class Investigation:
    failure: Failure
    shrunk: list[list[int]]
    outcome: Outcome  # the traced replay of the shrunk schedule
    shrink_runs: int


def investigate(options: RunOptions, failure: Failure, max_runs: int = 400) -> Investigation:
    """Shrink the failing schedule to a short one with the same violated property, then
    replay it with tracing on."""
    setup, spec = options.setup, failure.spec
    shrunk, runs = shrink(
        lambda choices: replay(setup, spec, choices).violation,
        failure.choices,
        failure.violation,
        max_runs,
    )
    outcome = replay(setup, spec, shrunk, tracing=True)
    return Investigation(failure, shrunk, outcome, runs)
