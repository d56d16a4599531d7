"""Delta debugging over a schedule's recorded choices (Zeller & Hildebrandt's ddmin, applied
to steps, then to single choices).

A schedule is a list of steps, each a list of recorded answers. A candidate is kept if its
replay violates the same property. Removing a step shifts the ones after it, and a removed
or zeroed answer falls back to the default (the oldest event, no fault), so every candidate
is a runnable schedule; most candidates fail differently or not at all, and the search just
moves on. Each kept candidate is cut at its (possibly earlier) violation step.
"""

from __future__ import annotations

from collections.abc import Callable

from raft.sim.monitors import Violation

Steps = list[list[int]]


def shrink(
    run: Callable[[Steps], Violation | None], steps: Steps, violation: Violation, max_runs: int
) -> tuple[Steps, int]:
    """Return (a shorter schedule with the same violated property, replays used)."""
    runs = 0
    best = violation.step

    def still_fails(candidate: Steps) -> Steps | None:
        """The candidate cut at its violation, if it fails the same way no later."""
        nonlocal runs, best
        runs += 1
        found = run(candidate)
        if found is None or found.property != violation.property or found.step > best:
            return None
        best = found.step
        return candidate[: found.step]

    current = [list(s) for s in steps[: violation.step]]
    # Repeat the passes while they make progress: zeroing a choice can make a later
    # deletion possible, and the other way round.
    while runs < max_runs:
        before = (best, sum(map(len, current)), sum(map(sum, current)))
        current = _remove_chunks(current, still_fails, lambda: runs < max_runs)
        current = _blank_steps(current, still_fails, lambda: runs < max_runs)
        current = _zero_choices(current, still_fails, lambda: runs < max_runs)
        if (best, sum(map(len, current)), sum(map(sum, current))) == before:
            break
    return current, runs


Attempt = Callable[[Steps], "Steps | None"]
Budget = Callable[[], bool]


def _remove_chunks(current: Steps, attempt: Attempt, budget: Budget) -> Steps:
    """ddmin over whole steps: remove chunks, halving the chunk size when nothing goes.
    Removing steps moves the choices after them earlier, which is what shortens a trace."""
    parts = 2
    while len(current) > 1 and budget():
        size = max(1, len(current) // parts)
        for start in range(0, len(current), size):
            if not budget():
                break
            kept = attempt(current[:start] + current[start + size :])
            if kept is not None:
                current = kept
                parts = max(parts - 1, 2)
                break
        else:
            if size == 1:
                break
            parts = min(len(current), parts * 2)
    return current


def _blank_steps(current: Steps, attempt: Attempt, budget: Budget) -> Steps:
    """Make whole steps the default (oldest event, no fault) where possible."""
    for i in reversed(range(len(current))):
        if not budget():
            break
        if i >= len(current) or not any(current[i]):
            continue
        kept = attempt([*current[:i], [], *current[i + 1 :]])
        if kept is not None:
            current = kept
    return current


def _zero_choices(current: Steps, attempt: Attempt, budget: Budget) -> Steps:
    """Make single answers the default where possible."""
    for i in reversed(range(len(current))):
        for j in reversed(range(len(current[i]) if i < len(current) else 0)):
            if not budget() or i >= len(current) or j >= len(current[i]):
                break
            if current[i][j] == 0:
                continue
            candidate = [list(s) for s in current]
            candidate[i][j] = 0
            kept = attempt(candidate)
            if kept is not None:
                current = kept
    return current
