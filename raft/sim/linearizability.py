"""A linearizability checker for the key-value history (Wing & Gong 1993, with Lowe's 2017
memoization), written here because no Python package does it.

Keys are independent, so a history is linearizable iff each key's sub-history is
(P-compositionality, Horn & Kroening 2015): the checker runs per key, on small histories.
The search linearizes one operation at a time, choosing only operations that no unlinearized
completed operation precedes in real time, and remembers every (linearized set, state) pair
it has already failed from, so each is explored once. Operations with no response (pending:
the client gave up or the schedule ended) may take effect at any point after their
invocation, or never, and their result is unconstrained.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raft.app.kv import json_equal

# Sub-histories are small (tens of operations); the recursion depth is their length.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))


@dataclass(slots=True)
class Operation:
    """One client operation on one key, as the client saw it."""

    client: str
    seq: int
    op: str  # put | get | delete | cas
    key: str
    value: Any = None
    expected: Any = None
    invoke: int = 0
    # Ordering stamps of the history; None while no response has arrived.
    response: int | None = None
    result: dict[str, Any] | None = None

    def describe(self) -> str:
        args = {"put": f"{self.value!r}", "cas": f"{self.expected!r}->{self.value!r}"}
        call = f"{self.op}({self.key}{', ' + args[self.op] if self.op in args else ''})"
        outcome = "pending" if self.result is None else str(self.result)
        return f"{self.client}#{self.seq} {call} [{self.invoke},{self.response}] -> {outcome}"


def apply(op: Operation, current: Any) -> tuple[dict[str, Any], Any]:
    """The sequential specification of one key (None means absent): (result, new value)."""
    if op.op == "put":
        return {"ok": True, "previous": current}, op.value
    if op.op == "get":
        return {"ok": True, "found": current is not None, "value": current}, current
    if op.op == "delete":
        return {"ok": True, "found": current is not None}, None
    if json_equal(current, op.expected):
        return {"ok": True, "value": op.value}, op.value
    return {"ok": False, "value": current}, current


def linearizable(ops: Sequence[Operation], initial: Any = None) -> bool:
    """Whether the operations on one key have a legal sequential order respecting real
    time. Values must be hashable (the simulator uses strings)."""
    ops = sorted(ops, key=lambda o: o.invoke)
    n = len(ops)
    invokes = [o.invoke for o in ops]
    never = 1 << 62
    responses = [never if o.response is None else o.response for o in ops]
    complete = 0
    for i, o in enumerate(ops):
        if o.result is not None:
            complete |= 1 << i
    failed: set[tuple[int, Any]] = set()

    def search(done: int, state: Any) -> bool:
        if done & complete == complete:
            return True
        if (done, state) in failed:
            return False
        # Operations before the lowest one not yet linearized are all done.
        lo = (~done & (done + 1)).bit_length() - 1
        # An operation can go next only if it was invoked before every unlinearized
        # operation's response (otherwise that one must come first).
        bound = min(responses[i] for i in range(lo, n) if not done >> i & 1)
        for i in range(lo, n):
            if invokes[i] > bound:
                break  # sorted by invocation: so are all the rest
            if done >> i & 1:
                continue
            op = ops[i]
            result, after = apply(op, state)
            if (op.result is None or result == op.result) and search(done | 1 << i, after):
                return True
        failed.add((done, state))
        return False

    return search(0, initial)


def check_history(ops: Sequence[Operation]) -> str | None:
    """None if every key's sub-history is linearizable, else a description of the first key
    that is not."""
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    for key in sorted(by_key):
        if not linearizable(by_key[key]):
            return explain(key, by_key[key])
    return None


def explain(key: str, ops: Sequence[Operation]) -> str:
    lines = "; ".join(o.describe() for o in sorted(ops, key=lambda o: o.invoke))
    return f"history of key {key!r} is not linearizable: {lines}"
