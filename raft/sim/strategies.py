"""Scheduling strategies, and the recorded choice stream every schedule is made of.

A strategy answers three kinds of question: which pending event runs next (`pick`), which
fault (if any) happens this step given their rates (`fault`), and a small integer (`below`:
which server to crash, which key a client uses, ...). Each owns a `random.Random(seed)`;
nothing reads the global random module or the clock, so a schedule is a pure function of its
seed.

`Recorder` wraps a strategy and writes down every answer, one list per step; `Replayer`
answers from such a list. Answers are encoded so that 0 is always the benign default (the
oldest pending event, no fault, the first option), which is what lets the shrinker delete or
zero choices and still have a runnable schedule; a chosen event is recorded by its identity
(`Pending.code`), not its position, so it survives the removal of earlier steps.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from raft.sim.network import Pending


class Strategy:
    """Uniformly random scheduling (Coyote's `random`)."""

    name = "random"
    # Whether the schedule ends with a fair, fault-free suffix in which liveness is checked.
    fair_suffix = False

    def __init__(self, rng: random.Random, max_steps: int) -> None:
        self.rng = rng
        self.max_steps = max_steps

    def pick(self, items: Sequence[Pending], earliest: int, due: int, step: int) -> int:
        """Index into `items` of the event to run. `items[:due]` are due now; an item past
        them is the next future event (choosing it lets time pass with messages in flight)."""
        return int(self.rng.random() * len(items))

    def fault(self, rates: tuple[float, ...]) -> int:
        """One draw for mutually exclusive faults: 0 for none, else 1 + which."""
        u = self.rng.random()
        if u >= sum(rates):
            return 0
        for i, rate in enumerate(rates):
            if u < rate:
                return i + 1
            u -= rate
        return 0

    def below(self, n: int) -> int:
        # Not randrange: this is on the hot path, and random() * n is uniform enough here.
        return int(self.rng.random() * n)


class ProbabilisticStrategy(Strategy):
    """Coyote's probabilistic random walk: with probability `stay`, keep running the actor
    that ran last (if it has work), else choose at random. Long runs of one actor reach
    states (a candidate collecting all its votes, a follower draining a backlog) that a
    uniform choice rarely strings together."""

    name = "probabilistic"

    def __init__(self, rng: random.Random, max_steps: int) -> None:
        super().__init__(rng, max_steps)
        self.stay = rng.choice((0.5, 0.75, 0.9))
        self.last_actor = ""

    def pick(self, items: Sequence[Pending], earliest: int, due: int, step: int) -> int:
        chosen = -1
        if self.last_actor and self.rng.random() < self.stay:
            for i, item in enumerate(items):
                if item.actor == self.last_actor and (
                    chosen < 0 or (item.time, item.seq) < (items[chosen].time, items[chosen].seq)
                ):
                    chosen = i
        if chosen < 0:
            chosen = int(self.rng.random() * len(items))
        self.last_actor = items[chosen].actor
        return chosen


class PCTStrategy(Strategy):
    """Probabilistic Concurrency Testing (Burckhardt et al., 2010), as in Coyote: every actor
    gets a random priority; the highest-priority actor with a due event runs (its oldest event
    first); at `depth` random steps the running actor drops to the lowest priority. A bug of
    depth d is found with probability at least 1/(n k^(d-1)). Time only passes when nothing
    is due, which keeps the schedule orderly except at the change points."""

    name = "pct"

    def __init__(self, rng: random.Random, max_steps: int, depth: int = 5) -> None:
        super().__init__(rng, max_steps)
        self.priorities: dict[str, float] = {}
        self.change_points = set(rng.sample(range(max_steps), min(depth, max_steps)))
        self.lowest = 0.0

    def pick(self, items: Sequence[Pending], earliest: int, due: int, step: int) -> int:
        if due == 0:
            return earliest
        best = 0
        best_key = (-1.0, 0, 0)
        for i in range(due):
            item = items[i]
            pri = self.priorities.get(item.actor)
            if pri is None:
                pri = self.priorities[item.actor] = self.rng.random()
            key = (pri, -item.time, -item.seq)
            if key > best_key:
                best, best_key = i, key
        if step in self.change_points:
            self.lowest -= 1.0
            self.priorities[items[best].actor] = self.lowest
        return best


class FairPCTStrategy(PCTStrategy):
    """PCT for the unfair prefix, then a fair suffix (oldest event first, no new faults) in
    which the liveness monitor must cool down: Coyote's `fair-pct`, needed for liveness."""

    name = "fair-pct"
    fair_suffix = True


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Strategy, ProbabilisticStrategy, PCTStrategy, FairPCTStrategy)
}
PORTFOLIO = ("random", "probabilistic", "pct", "fair-pct")
# The optional Raft mechanisms schedules run without, in turn, a block of eight schedules (two
# of each strategy, with either fault plan) at a time: half run production's options, the
# rest each without one of them, so the paths they replace are tested too (a candidate
# that campaigns without a pre-vote, a leader that heartbeats forever or never steps down
# for want of a quorum).
FEATURES: tuple[dict[str, bool], ...] = (
    {},
    {"quiesce": False},
    {},
    {"pre_vote": False},
    {},
    {"check_quorum": False},
)
FEATURE_BLOCK = 8


def features(index: int) -> dict[str, bool]:
    """The mechanisms schedule `index` turns off."""
    return FEATURES[index // FEATURE_BLOCK % len(FEATURES)]


# A recorded event is identity * RANKS + how many older events share its identity.
RANKS = 64


class Choices:
    """The simulator's source of decisions. Subclasses: live (recorded) and replayed."""

    def next_step(self) -> None:
        """A new step begins (recorded choices are grouped per step)."""

    def event(self, items: Sequence[Pending], earliest: int, due: int, step: int) -> int:
        return earliest

    def fault(self, rates: tuple[float, ...]) -> int:
        return 0

    def below(self, n: int) -> int:
        return 0


# Oldest event first, no faults, first option: the fair scheduler of the liveness suffix and
# of scenario tests, and what every deleted choice falls back to.
FAIR = Choices()


class Live(Choices):
    """A strategy's answers, not written down: exploration runs this way and reruns a
    failing schedule with a `Recorder` (the strategy is seeded, so it answers the same).
    Both skip the strategy for questions with one answer, so their random streams agree."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def event(self, items: Sequence[Pending], earliest: int, due: int, step: int) -> int:
        return self.strategy.pick(items, earliest, due, step)

    def fault(self, rates: tuple[float, ...]) -> int:
        return self.strategy.fault(rates) if any(rates) else 0

    def below(self, n: int) -> int:
        return self.strategy.below(n) if n > 1 else 0


class Recorder(Live):
    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self.steps: list[list[int]] = []
        self._current: list[int] = []

    def next_step(self) -> None:
        self._current = []
        self.steps.append(self._current)

    def event(self, items: Sequence[Pending], earliest: int, due: int, step: int) -> int:
        chosen = self.strategy.pick(items, earliest, due, step)
        if chosen == earliest:
            self._current.append(0)
            return chosen
        item = items[chosen]
        # Which of the events with this identity: how many same-identity events are older.
        rank = sum(
            1
            for other in items
            if other.code == item.code and (other.time, other.seq) < (item.time, item.seq)
        )
        self._current.append(item.code * RANKS + min(rank, RANKS - 1))
        return chosen

    def fault(self, rates: tuple[float, ...]) -> int:
        if not any(rates):
            return 0
        which = self.strategy.fault(rates)
        self._current.append(which)
        return which

    def below(self, n: int) -> int:
        value = self.strategy.below(n) if n > 1 else 0
        self._current.append(value)
        return value


class Replayer(Choices):
    """Answers from recorded steps; a missing or out-of-range answer is the default (0).
    Choices for a zero rate are skipped exactly as the recorder skipped them."""

    def __init__(self, steps: Sequence[Sequence[int]]) -> None:
        self.steps = steps
        self.step_index = -1
        self._current: Sequence[int] = ()
        self._pos = 0

    def next_step(self) -> None:
        self.step_index += 1
        self._current = self.steps[self.step_index] if self.step_index < len(self.steps) else ()
        self._pos = 0

    def _next(self) -> int:
        if self._pos >= len(self._current):
            return 0
        value = self._current[self._pos]
        self._pos += 1
        return value

    def event(self, items: Sequence[Pending], earliest: int, due: int, step: int) -> int:
        """The recorded event by identity and rank; failing that, the oldest event."""
        value = self._next()
        if value == 0:
            return earliest
        code, rank = divmod(value, RANKS)
        same = sorted(
            (i for i, item in enumerate(items) if item.code == code),
            key=lambda i: (items[i].time, items[i].seq),
        )
        return same[min(rank, len(same) - 1)] if same else earliest

    def fault(self, rates: tuple[float, ...]) -> int:
        if not any(rates):
            return 0
        which = self._next()
        return which if 0 < which <= len(rates) and rates[which - 1] > 0 else 0

    def below(self, n: int) -> int:
        value = self._next()
        return value if value < n else 0


class FairStrategy(Strategy):
    """Oldest event first, with faults still drawn at the plan's rates: scenario tests use it
    to inject one kind of fault (say, racing instances) into an otherwise orderly run."""

    name = "fair"

    def pick(self, items: Sequence[Pending], earliest: int, due: int, step: int) -> int:
        return earliest
