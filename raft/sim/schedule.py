"""What a schedule is made of: the shape shared by every schedule of a run (`SimSetup`),
what one schedule was drawn with (`ScheduleSpec`), and what it came to (`Outcome`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from raft.core.state import Config
from raft.sim.coverage import Coverage
from raft.sim.faults import FaultPlan
from raft.sim.linearizability import Operation
from raft.sim.monitors import Violation
from raft.sim.variants import PRODUCTION


@dataclass(frozen=True)
class SimSetup:
    """The shape of every schedule of a test run."""

    servers: int = 5
    clients: int = 3
    keys: int = 2
    max_steps: int = 200
    # Virtual ms after faults stop within which the cluster must have a leader, answer every
    # pending request and apply everything committed on every server: a few times what a
    # few elections and client retries take, all ten times shorter than production's.
    liveness_ms: int = 3000
    election_timeout_min: int = 150
    election_timeout_max: int = 300
    heartbeat_interval: int = 50
    # Small batches and windows, so that a few dozen entries already exercise batching,
    # pipelining and probing (the production defaults need hundreds).
    max_entries_per_message: int = 1
    max_inflight_messages: int = 2
    # Snapshot the applied state often, so restoring from a snapshot (every cold load after
    # a crash or on a second instance) is exercised within short schedules.
    snapshot_every: int = 8
    # Keep one entry behind a snapshot, so lagging or restarted followers need
    # InstallSnapshot within short schedules; and send it in chunks small enough that a
    # transfer takes several (a key-value snapshot here is a few hundred characters), so
    # lost, repeated and reordered chunks and crashes mid-transfer happen.
    compaction_keep: int = 1
    snapshot_chunk_chars: int = 64
    # Quiescence: a short check interval, so that groups quiesce, wake and fail while
    # quiescent within short schedules (the production default is 100 heartbeats).
    quiesce_check_interval: int = 400
    client_timeout: int = 200
    target: str = PRODUCTION

    def config(self) -> Config:
        return Config(
            election_timeout_min=self.election_timeout_min,
            election_timeout_max=self.election_timeout_max,
            heartbeat_interval=self.heartbeat_interval,
            max_entries_per_message=self.max_entries_per_message,
            max_inflight_messages=self.max_inflight_messages,
            snapshot_chunk_chars=self.snapshot_chunk_chars,
            quiesce_check_interval=self.quiesce_check_interval,
        )

    def server_ids(self) -> tuple[str, ...]:
        return tuple(f"s{i}" for i in range(1, self.servers + 1))

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SimSetup:
        return cls(**doc)


@dataclass(frozen=True)
class ScheduleSpec:
    """What one schedule was drawn with (everything else is in its recorded choices)."""

    index: int
    seed: int
    strategy: str
    plan: FaultPlan
    node_seed: int
    fair_suffix: bool
    # The optional mechanisms the servers run with (all on in production).
    pre_vote: bool = True
    check_quorum: bool = True
    quiesce: bool = True

    def config(self, setup: SimSetup) -> Config:
        return replace(
            setup.config(),
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            quiesce=self.quiesce,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": self.seed,
            "strategy": self.strategy,
            "plan": self.plan.to_json(),
            "node_seed": self.node_seed,
            "fair_suffix": self.fair_suffix,
            "pre_vote": self.pre_vote,
            "check_quorum": self.check_quorum,
            "quiesce": self.quiesce,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ScheduleSpec:
        return cls(**{**doc, "plan": FaultPlan.from_json(doc["plan"])})


@dataclass
class Outcome:
    violation: Violation | None
    steps: int
    coverage: Coverage
    choices: list[list[int]] | None = None
    trace: list[dict[str, Any]] | None = None
    history: list[Operation] = field(default_factory=list)
