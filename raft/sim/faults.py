"""Fault kinds and the per-schedule fault plan (how often each kind is injected).

Swarm testing (Groce et al., 2012; FoundationDB, TigerBeetle): instead of every schedule
mixing every fault at a fixed rate, each swarm schedule enables a random subset of kinds at
random rates, so some schedules are, say, all partitions and no loss, which reaches states
that a uniform mix rarely does.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from enum import StrEnum


class Fault(StrEnum):
    DROP = "drop"
    # A server that just became leader crashes as it publishes (its first AppendEntries
    # lost): leaders that die with entries only they hold (Figure 8's histories).
    CRASH_NEW_LEADER = "crash_new_leader"
    DUPLICATE = "duplicate"
    DELAY = "delay"
    # Not injected: counted when a strategy delivers a message other than the oldest one.
    REORDER = "reorder"
    CRASH = "crash"
    CRASH_AFTER_SAVE = "crash_after_save"
    RESTART = "restart"
    PARTITION = "partition"
    HEAL = "heal"
    # A message handled by the server's second trigger instance (scaled out, its cache stale).
    RACE = "race"
    # A function instance replaced by a cold one (no cached state).
    COLD = "cold_instance"
    # An operator asks the leader to hand leadership to another server (thesis §3.10).
    TRANSFER = "transfer_leadership"
    # An operator asks the leader to add a server to the configuration or remove one (§4.1).
    MEMBERSHIP = "membership_change"
    # A server's clock jumps (function instances run on machines whose clocks disagree).
    SKEW = "clock_skew"
    # A delivery handed to the server's trigger with the other messages due for it, in one
    # handler call (a Service Bus batch).
    BATCH = "batch"


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Per-step probabilities of each injected fault (at most one fault per step), except
    `crash_new_leader`, drawn each time a server becomes leader. A crash or a partition
    ends by itself, after a duration drawn when it starts."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    crash: float = 0.0
    crash_after_save: float = 0.0
    partition: float = 0.0
    race: float = 0.0
    skew: float = 0.0
    cold: float = 0.0
    transfer: float = 0.0
    membership: float = 0.0
    # Per election won, not per step.
    crash_new_leader: float = 0.0
    batch: float = 0.0

    @classmethod
    def default(cls) -> FaultPlan:
        return cls(
            drop=0.03,
            duplicate=0.03,
            delay=0.03,
            crash=0.01,
            crash_after_save=0.01,
            partition=0.01,
            race=0.05,
            skew=0.02,
            cold=0.01,
            transfer=0.005,
            membership=0.005,
            crash_new_leader=0.25,
            batch=0.05,
        )

    @classmethod
    def swarm(cls, rng: random.Random) -> FaultPlan:
        """Each kind on with probability 1/2, at between a fifth of and four times its default
        rate."""
        base = cls.default()
        rates: dict[str, float] = {}
        for f in fields(cls):
            on = rng.random() < 0.5
            scale = rng.uniform(0.2, 4.0)
            rates[f.name] = min(0.9, getattr(base, f.name) * scale) if on else 0.0
        return cls(**rates)

    def to_json(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, float]) -> FaultPlan:
        """A plan as `to_json` wrote it; a kind an older trace does not name is off."""
        return cls(**doc)
