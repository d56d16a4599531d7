"""An in-memory store with the same semantics as the Table Storage adapter: whole-change
atomic saves, conditional on a version, compaction of the log prefix, and no mutable state
shared with callers.

State dicts are treated as values: a saved `Change.state` is never mutated afterwards (the
node handler builds a fresh one per save) and `state_from_dict` copies what it reads, so
`load` and `save` need not deep-copy them on the hot path; `read_state` hands out a copy.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

from raft.core.messages import Entry
from raft.core.state import Snapshot
from raft.ports.store import (
    Change,
    ClientResult,
    StoredServer,
    VersionConflict,
    read_answer_slot,
)


@dataclass
class _Record:
    version: int
    state: dict[str, Any]
    # Entries log_start + 1 .. last.
    log: list[Entry]
    log_start: int
    snapshot: Snapshot | None
    incoming: list[str] = field(default_factory=list)
    results: dict[str, ClientResult] = field(default_factory=dict)
    answers: dict[int, ClientResult] = field(default_factory=dict)


class InMemoryStore:
    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()
        # Counted for the benchmarks: successful saves, conflicts, and version reads.
        self.saves = 0
        self.conflicts = 0
        self.version_reads = 0
        self.rows_read = 0  # entries, snapshots and chunks handed out by `load`

    def load(self, server_id: str) -> StoredServer | None:
        with self._lock:
            record = self._records.get(server_id)
            if record is None:
                return None
            self.rows_read += len(record.log) + (record.snapshot is not None) + len(record.incoming)
            return StoredServer(
                version=str(record.version),
                state=record.state,
                log=list(record.log),
                snapshot=record.snapshot,
                incoming="".join(record.incoming),
            )

    def version(self, server_id: str) -> str | None:
        with self._lock:
            self.version_reads += 1
            record = self._records.get(server_id)
            return None if record is None else str(record.version)

    def save(self, server_id: str, expected_version: str | None, change: Change) -> str:
        with self._lock:
            record = self._records.get(server_id)
            current = None if record is None else str(record.version)
            if current != expected_version:
                self.conflicts += 1
                raise VersionConflict(
                    f"{server_id}: expected version {expected_version}, found {current}"
                )
            if record is None:
                record = _Record(0, {}, [], 0, None)
                self._records[server_id] = record
            _apply(record, change)
            self.saves += 1
            return str(record.version)

    def read_answer(self, server_id: str, client_id: str) -> ClientResult | None:
        with self._lock:
            record = self._records.get(server_id)
            if record is None:
                return None
            answer = record.answers.get(read_answer_slot(client_id))
            return answer if answer is not None and answer.client_id == client_id else None

    def row_counts(self, server_id: str) -> dict[str, int]:
        """What is kept for a server, named as the Table Storage rows would be."""
        with self._lock:
            record = self._records.get(server_id)
            if record is None:
                return {"log-": 0, "snap-": 0, "result-": 0}
            snapshots = int(record.snapshot is not None)
            return {"log-": len(record.log), "snap-": snapshots, "result-": len(record.results)}

    def read_state(self, server_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._records.get(server_id)
            return None if record is None else copy.deepcopy(record.state)

    def read_result(self, server_id: str, client_id: str) -> ClientResult | None:
        with self._lock:
            record = self._records.get(server_id)
            return None if record is None else record.results.get(client_id)


def _apply(record: _Record, change: Change) -> None:
    state = change.state
    log_start = state.get("log_start", 0)
    if change.log_from is not None and change.log_from <= log_start:
        raise ValueError(f"log_from {change.log_from} is inside the compacted log")
    if (
        change.log_from is not None
        and change.log_from > max(record.log_start + len(record.log), log_start) + 1
    ):
        raise ValueError(f"log_from {change.log_from} leaves a gap in the log")
    record.version += 1
    if log_start > record.log_start:
        # Compact first: a snapshot installed past the end of the log empties it.
        del record.log[: log_start - record.log_start]
        record.log_start = log_start
    if change.log_from is not None:
        del record.log[change.log_from - 1 - record.log_start :]
        record.log.extend(change.entries)
    record.state = state
    if change.snapshot is not None:
        record.snapshot = change.snapshot
    if state.get("incoming") is None:
        record.incoming = []
    elif change.snapshot_chunks:
        if change.snapshot_chunks[0].offset == 0:
            record.incoming = []
        record.incoming.extend(chunk.data for chunk in change.snapshot_chunks)
    for result in change.results:
        record.results[result.client_id] = result
    for client_id in change.forget_results:
        record.results.pop(client_id, None)
    for answer in change.read_answers:
        record.answers[read_answer_slot(answer.client_id)] = answer
