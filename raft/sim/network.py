"""The simulated network: what is in flight, what is parked for a crashed server, and which
server pairs a partition separates.

Everything the scheduler can run next is a `Pending` event with a virtual time: a message
(due when sent, or later if delayed), a server's timer (due at its next deadline) or a
client's timer. Lists keep insertion order, so iteration, and hence every schedule, is
deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from raft.core.messages import Envelope

DELIVER = 0
TICK = 1
CLIENT = 2


@dataclass(slots=True, eq=False)
class Pending:
    """One event the scheduler may choose. Compared by identity (eq=False), so removing it
    from a list is a fast identity scan."""

    time: int
    seq: int
    kind: int
    # The schedulable unit PCT assigns priorities to: a destination's inbox or its timer.
    actor: str
    target: str
    envelope: Envelope | None = None
    sent_step: int = 0
    # What the event is, independent of when: (kind, target, sender, message type) as one
    # int (see `Simulator.code`). Schedules record chosen events by it, so a choice still
    # means "deliver the oldest vote request from s1 to s3" after the shrinker removed
    # earlier steps, rather than "the fifth event in the list".
    code: int = 0


class Network:
    def __init__(self, servers: tuple[str, ...]) -> None:
        self.servers = servers
        self.inflight: list[Pending] = []
        # Messages for a crashed server wait, as in its Service Bus subscription.
        self.parked: dict[str, list[Pending]] = {s: [] for s in servers}
        self.blocked: set[tuple[str, str]] = set()
        self.partition_name = ""

    def partition(self, name: str, pairs: set[tuple[str, str]]) -> int:
        """Separate `pairs` (both directions listed); drop what is in flight between them.
        Returns how many messages were dropped."""
        self.blocked = pairs
        self.partition_name = name
        kept = [p for p in self.inflight if not self._crosses(p)]
        dropped = len(self.inflight) - len(kept)
        self.inflight = kept
        return dropped

    def heal(self) -> None:
        self.blocked = set()
        self.partition_name = ""

    def park(self, server: str) -> None:
        keep: list[Pending] = []
        for p in self.inflight:
            (self.parked[server] if p.target == server else keep).append(p)
        self.inflight = keep

    def unpark(self, server: str) -> None:
        waiting, self.parked[server] = self.parked[server], []
        self.inflight.extend(p for p in waiting if not self._crosses(p))

    def _crosses(self, p: Pending) -> bool:
        return p.envelope is not None and (p.envelope.sender, p.target) in self.blocked


def partition_pairs(
    servers: tuple[str, ...], shape: int, rotation: int
) -> tuple[str, set[tuple[str, str]]]:
    """Shape 0: a minority of consecutive servers (cyclically, from `rotation`) against the
    rest; 1: one server alone; 2: the majorities ring (Jepsen), where every server sees a
    majority but no two see the same one."""
    n = len(servers)
    if shape == 2 and n >= 5:
        reach = (n // 2 + 1) // 2
        pairs = {
            (a, b)
            for i, a in enumerate(servers)
            for j, b in enumerate(servers)
            if min((i - j) % n, (j - i) % n) > reach
        }
        return "majorities-ring", pairs
    size = 1 if shape == 1 or n < 3 else (n - 1) // 2
    side = {servers[(rotation + k) % n] for k in range(size)}
    other = [s for s in servers if s not in side]
    pairs = {(a, b) for a in side for b in other} | {(b, a) for a in side for b in other}
    name = "lone" if size == 1 else "minority"
    return f"{name}:{','.join(sorted(side))}", pairs


def all_pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
    """Pairs separated when the cluster is split into `groups` (for scenario tests)."""
    pairs: set[tuple[str, str]] = set()
    for g1, g2 in combinations(groups, 2):
        for a in g1:
            for b in g2:
                pairs.add((a, b))
                pairs.add((b, a))
    return pairs
