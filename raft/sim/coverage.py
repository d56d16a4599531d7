"""Activity coverage (Coyote's): for each role, which message kinds servers received and
sent, which role transitions happened, and which fault kinds were exercised.

Counters are keyed by plain tuples of strings, so merging the coverage of many schedules (from any
number of worker processes) is a sum and does not depend on the order they finish in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ROLES = ("follower", "pre_candidate", "candidate", "leader")


@dataclass
class Coverage:
    received: Counter[tuple[str, str]] = field(default_factory=Counter)  # (role, kind)
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)  # (role, kind)
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (from, to)
    faults: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Coverage) -> None:
        self.received.update(other.received)
        self.sent.update(other.sent)
        self.transitions.update(other.transitions)
        self.faults.update(other.faults)

    def to_json(self) -> dict[str, Any]:
        def nested(counter: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for outer, inner in sorted(counter):
                out.setdefault(outer, {})[inner] = counter[outer, inner]
            return out

        return {
            "received": nested(self.received),
            "sent": nested(self.sent),
            "transitions": nested(self.transitions),
            "faults": {k: self.faults[k] for k in sorted(self.faults)},
        }

    def summary_lines(self) -> list[str]:
        doc = self.to_json()
        lines = []
        for role in ROLES:
            received = ", ".join(sorted(doc["received"].get(role, {}))) or "-"
            sent = ", ".join(sorted(doc["sent"].get(role, {}))) or "-"
            lines.append(f"  {role:<13} received: {received}")
            lines.append(f"  {'':<13} sent:     {sent}")
        moves = [f"{a}->{b}" for a, tos in doc["transitions"].items() for b in tos]
        lines.append(f"  transitions:  {', '.join(moves) or '-'}")
        faults = ", ".join(f"{k} {v}" for k, v in doc["faults"].items())
        lines.append(f"  faults:       {faults or '-'}")
        return lines
