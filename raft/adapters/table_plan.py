"""Planning a save on Table Storage: which rows one `Change` writes and deletes, under which
generation, and how the operations are cut into entity-group transactions.

Pure: a plan is computed from the stored metadata and the change, and the store
(table_store.py) submits it. The rules it follows are in table_store.py's docstring.
"""

from __future__ import annotations

import json
import uuid
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import UpdateMode

from raft.adapters.table_rows import (
    FORMAT,
    MAX_BATCH_BYTES,
    MAX_OPERATIONS,
    MAX_PROPERTY_BYTES,
    OPERATION_OVERHEAD_BYTES,
    SNAPSHOT_CHUNK_UNITS,
    STATE_ROW,
    Entity,
    Operation,
    as_int,
    as_str,
    check_entity,
    chunks,
    entry_row,
    incoming_key,
    int_or_zero,
    int_property,
    log_key,
    now_iso,
    pack,
    payload_bytes,
    read_answer_key,
    result_row,
    snapshot_key,
    utf16_bytes,
)
from raft.core.state import Snapshot
from raft.ports.store import Change, StoreLimitError

# The placeholder generation of a planned log row, replaced once the plan picks one.
_UNPLACED = 999_999
# Compacted log rows deleted per save, at least (more when the save appends entries): bounded
# work, inside the save's own transaction.
GC_PER_SAVE = 32

Segments = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SnapshotRef:
    """Where the latest snapshot's rows are, and what it covers."""

    id: int
    parts: int
    index: int
    term: int
    servers: tuple[str, ...]


@dataclass(frozen=True)
class Meta:
    """What the state entity says about the stored rows, at one ETag."""

    etag: str | None  # None: no state entity at all
    real: bool  # False: absent, or a placeholder left by a split first save
    commit: str
    last_index: int
    # Entries up to log_start are compacted; rows gc_from .. log_start still exist and are
    # deleted a few per save.
    log_start: int
    gc_from: int
    segs: Segments
    next_gen: int
    snap: SnapshotRef | None
    # Rows of the snapshot being received: (id, parts).
    inc: tuple[int, int] | None

    @classmethod
    def absent(cls) -> Meta:
        return cls(None, False, "", 0, 0, 1, ((1, 0),), 1, None, None)

    @classmethod
    def of(cls, entity: Any) -> Meta:
        real = "state" in entity and entity.get("state") is not None
        if not real:
            return cls(entity.metadata["etag"], False, "", 0, 0, 1, ((1, 0),),
                       max(1, as_int(entity.get("next_gen"), 1)), None, None)  # fmt: skip
        segs = tuple((int(s), int(g)) for s, g in json.loads(as_str(entity.get("segs")) or "[]"))
        snap_id = as_int(entity.get("snap_id"), -1)
        snap = None
        if snap_id >= 0:
            snap = SnapshotRef(
                snap_id,
                as_int(entity.get("snap_parts")),
                as_int(entity.get("snap_index")),
                as_int(entity.get("snap_term")),
                tuple(json.loads(as_str(entity.get("snap_servers")) or "[]")),
            )
        inc_id = as_int(entity.get("inc_id"), -1)
        return cls(
            etag=entity.metadata["etag"],
            real=True,
            commit=as_str(entity.get("commit")),
            last_index=as_int(entity.get("last_index")),
            log_start=as_int(entity.get("log_start")),
            gc_from=as_int(entity.get("gc_from"), 1),
            segs=segs or ((1, 0),),
            next_gen=max(1, as_int(entity.get("next_gen"), 1)),
            snap=snap,
            inc=(inc_id, as_int(entity.get("inc_parts"))) if inc_id >= 0 else None,
        )

    def generation_at(self, index: int) -> int:
        return generation_at(self.segs, index)


def generation_at(segs: Sequence[tuple[int, int]], index: int) -> int:
    starts = [start for start, _ in segs]
    return segs[max(0, bisect_right(starts, index) - 1)][1]


@dataclass
class Plan:
    commit: Entity  # the new state entity
    meta: Meta  # what it says (ETag filled in after the save)
    writes: list[Entity] = field(default_factory=list)  # log, snapshot and incoming rows
    results: list[Entity] = field(default_factory=list)
    garbage: list[str] = field(default_factory=list)  # rows no state will reference again

    @property
    def operations(self) -> int:
        return 1 + len(self.writes) + len(self.results) + len(self.garbage)

    def payload_bytes(self) -> int:
        rows = [self.commit, *self.writes, *self.results]
        return sum(payload_bytes(e) for e in rows) + len(self.garbage) * OPERATION_OVERHEAD_BYTES

    def fits_one_transaction(self) -> bool:
        return self.operations <= MAX_OPERATIONS and self.payload_bytes() <= MAX_BATCH_BYTES


@dataclass(frozen=True)
class PreparedChange:
    """A change turned into rows and checked against the limits, before any planning."""

    pk: str
    change: Change
    state_json: str
    log_rows: list[Entity]
    result_rows: list[Entity]
    snapshot_chunks: list[str] | None


def prepare(pk: str, change: Change) -> PreparedChange:
    """Rows for `change`; StoreLimitError or ValueError before anything is planned or sent."""
    if change.log_from is not None and change.log_from < 1:
        raise ValueError(f"{pk}: log_from must be at least 1, got {change.log_from}")
    log_rows = [
        entry_row(pk, index, entry, _UNPLACED)
        for index, entry in enumerate(change.entries, change.log_from or 1)
    ]
    latest = {r.client_id: r for r in change.results}  # one row per client: the last wins
    result_rows = [result_row(pk, result) for result in latest.values()]
    answers = {read_answer_key(a.client_id): a for a in change.read_answers}
    result_rows += [result_row(pk, answer, key) for key, answer in answers.items()]
    snapshot = change.snapshot
    snapshot_chunks = None if snapshot is None else chunks(snapshot.data, SNAPSHOT_CHUNK_UNITS)
    state_json = json.dumps(change.state, separators=(",", ":"), sort_keys=True)
    if utf16_bytes(state_json) > MAX_PROPERTY_BYTES:
        raise StoreLimitError(
            f"{pk}: the state is {utf16_bytes(state_json)} bytes in UTF-16 as JSON; "
            f"Table Storage holds at most {MAX_PROPERTY_BYTES} bytes in one property"
        )
    return PreparedChange(pk, change, state_json, log_rows, result_rows, snapshot_chunks)


class _Generations:
    """Allocates row generations and snapshot ids from the stored counter."""

    def __init__(self, next_gen: int) -> None:
        self.next = next_gen

    def take(self) -> int:
        value = self.next
        self.next += 1
        return value


def plan_save(base: Meta, prepared: PreparedChange) -> Plan:
    """The rows a save writes and deletes, given the stored metadata `base`.

    Rows at an (index, generation) never change once written: entries that replace stored
    ones go under a fresh generation, so a reader's cached rows stay valid and a split save
    never writes onto rows the stored state references.
    """
    pk, change = prepared.pk, prepared.change
    state = change.state
    gens = _Generations(base.next_gen)
    log_start = int_or_zero(state.get("log_start"))
    if log_start < base.log_start:
        raise ValueError(f"{pk}: log_start {log_start} is before the stored {base.log_start}")
    writes: list[Entity] = []
    garbage: list[str] = []
    segs, last_index = _plan_log(base, prepared, log_start, gens, writes, garbage)
    gc_from, segs = _plan_gc(base, log_start, segs, _gc_budget(prepared), garbage)
    snap = _plan_snapshot(base, prepared, gens, writes, garbage)
    inc = _plan_incoming(pk, base, change, gens, writes, garbage)
    meta = Meta(
        etag=None,
        real=True,
        commit=uuid.uuid4().hex,
        last_index=last_index,
        log_start=log_start,
        gc_from=gc_from,
        segs=segs,
        next_gen=gens.next,
        snap=snap,
        inc=inc,
    )
    commit: Entity = {
        "PartitionKey": pk,
        "RowKey": STATE_ROW,
        "fmt": FORMAT,
        "state": prepared.state_json,
        "term": int_property(int_or_zero(state.get("current_term"))),
        "role": str(state.get("role", "")),
        "leader": str(state.get("leader_id", "")),
        "commit_index": int_property(int_or_zero(state.get("commit_index"))),
        "last_index": int_property(last_index),
        "log_start": int_property(log_start),
        "gc_from": int_property(gc_from),
        "updated": now_iso(),
        "commit": meta.commit,
        "segs": json.dumps([list(s) for s in segs]),
        "next_gen": int_property(gens.next),
        "snap_id": int_property(snap.id if snap else -1),
        "snap_parts": int_property(snap.parts if snap else 0),
        "snap_index": int_property(snap.index if snap else 0),
        "snap_term": int_property(snap.term if snap else 0),
        "snap_servers": json.dumps(list(snap.servers) if snap else []),
        "inc_id": int_property(inc[0] if inc else -1),
        "inc_parts": int_property(inc[1] if inc else 0),
    }
    check_entity(commit, f"{pk}: state entity")
    return Plan(commit, meta, writes, prepared.result_rows, garbage)


def _gc_budget(prepared: PreparedChange) -> int:
    """Compacted rows this save deletes: more than the entries it adds, so deleting keeps
    ahead of appending. In a split save, those that do not fit its last transaction are
    deleted right after it, best effort (a crash in between leaves invisible rows behind)."""
    return GC_PER_SAVE + 2 * len(prepared.log_rows)


def _plan_log(
    base: Meta,
    prepared: PreparedChange,
    log_start: int,
    gens: _Generations,
    writes: list[Entity],
    garbage: list[str],
) -> tuple[Segments, int]:
    """Log rows to write and rows retired by a rewrite; the new segments and last index."""
    change, pk = prepared.change, prepared.pk
    old_last = base.last_index
    segs = base.segs
    if change.log_from is None:
        return segs, max(old_last, log_start)
    log_from = change.log_from
    if log_from <= log_start or log_from > max(old_last, log_start) + 1:
        raise ValueError(
            f"{pk}: log_from {log_from} must follow log_start {log_start} and leave no gap "
            f"after the stored last index {old_last}"
        )
    if log_from <= old_last:
        # A rewrite: the new entries go under a fresh generation; the rows they replace,
        # and the stored rows past the new end, are retired.
        generation = gens.take()
        segs = (*(s for s in segs if s[0] < log_from), (log_from, generation))
        retired = range(log_from, old_last + 1)
        garbage.extend(log_key(index, generation_at(base.segs, index)) for index in retired)
    else:
        generation = segs[-1][1]
    for index, row in enumerate(prepared.log_rows, log_from):
        writes.append({**row, "RowKey": log_key(index, generation)})
    return segs, log_from - 1 + len(prepared.log_rows)


def _plan_gc(
    base: Meta, log_start: int, segs: Segments, budget: int, garbage: list[str]
) -> tuple[int, Segments]:
    """Delete up to `budget` compacted rows; the new gc_from, and the segments still needed
    (those covering gc_from onwards)."""
    gc_from = base.gc_from
    # Rows exist up to the stored last index; a snapshot installed past the end of the log
    # compacts indexes that were never written.
    existing_end = min(log_start, base.last_index)
    stop = min(existing_end + 1, gc_from + budget)
    garbage.extend(log_key(i, generation_at(base.segs, i)) for i in range(gc_from, stop))
    gc_from = max(gc_from, stop)
    if gc_from > existing_end:
        gc_from = max(gc_from, log_start + 1)
    keep_from = max(0, bisect_right([s[0] for s in segs], gc_from) - 1)
    return gc_from, segs[keep_from:]


def _plan_snapshot(
    base: Meta,
    prepared: PreparedChange,
    gens: _Generations,
    writes: list[Entity],
    garbage: list[str],
) -> SnapshotRef | None:
    snapshot: Snapshot | None = prepared.change.snapshot
    if snapshot is None or prepared.snapshot_chunks is None:
        return base.snap
    snapshot_id = gens.take()
    rows = pack(prepared.snapshot_chunks)
    for part, row_chunks in enumerate(rows):
        writes.append(_chunk_row(prepared.pk, snapshot_key(snapshot_id, part), row_chunks))
    if base.snap is not None:
        garbage.extend(snapshot_key(base.snap.id, p) for p in range(base.snap.parts))
    return SnapshotRef(snapshot_id, len(rows), snapshot.index, snapshot.term, snapshot.servers)


def _plan_incoming(
    pk: str,
    base: Meta,
    change: Change,
    gens: _Generations,
    writes: list[Entity],
    garbage: list[str],
) -> tuple[int, int] | None:
    """Rows of the snapshot being received: one per chunk, appended; a transfer that starts
    over (a chunk at offset 0) or ends (installed or abandoned) retires the earlier rows."""
    inc = base.inc
    for chunk in change.snapshot_chunks:
        if chunk.offset == 0 or inc is None:
            if inc is not None:
                garbage.extend(_incoming_keys(inc, writes))
            inc = (gens.take(), 0)
        pieces = chunks(chunk.data, SNAPSHOT_CHUNK_UNITS)
        writes.append(_chunk_row(pk, incoming_key(inc[0], inc[1]), pieces))
        inc = (inc[0], inc[1] + 1)
    if change.state.get("incoming") is None and inc is not None:
        garbage.extend(_incoming_keys(inc, writes))
        inc = None
    return inc


def _incoming_keys(inc: tuple[int, int], writes: list[Entity]) -> list[str]:
    """Keys of a transfer's rows; those planned in this same save are dropped instead."""
    keys = [incoming_key(inc[0], part) for part in range(inc[1])]
    planned = {row["RowKey"] for row in writes}
    writes[:] = [row for row in writes if row["RowKey"] not in keys]
    return [key for key in keys if key not in planned]


def _chunk_row(pk: str, row_key: str, pieces: list[str]) -> Entity:
    row: Entity = {"PartitionKey": pk, "RowKey": row_key, "n": len(pieces)}
    row.update({f"p{i:02d}": piece for i, piece in enumerate(pieces)})
    check_entity(row, f"{pk}: row {row_key}")
    return row


def state_operation(etag: str | None, entity: Entity, mode: UpdateMode) -> Operation:
    """Insert the state entity (no ETag: fails if one exists) or update it If-Match `etag`."""
    if etag is None:
        return ("create", entity)
    condition = MatchConditions.IfNotModified
    return ("update", entity, {"mode": mode, "etag": etag, "match_condition": condition})


def _upsert(row: Entity) -> Operation:
    return ("upsert", row, {"mode": UpdateMode.REPLACE})


def _delete(pk: str, key: str) -> Operation:
    return ("delete", {"PartitionKey": pk, "RowKey": key})


def single_transaction(base: Meta, plan: Plan) -> list[Operation]:
    pk = plan.commit["PartitionKey"]
    operations = [state_operation(base.etag, plan.commit, UpdateMode.REPLACE)]
    operations += [_upsert(row) for row in plan.writes + plan.results]
    operations += [_delete(pk, key) for key in plan.garbage]
    return operations


@dataclass(frozen=True)
class SplitSave:
    """A save cut into transactions: `early` batches of invisible rows, each to be chained on
    the state entity with `marker` (a Merge that touches only `next_gen`), then `final` (the
    state entity first), then `cleanup`: garbage that did not fit, deleted best effort."""

    marker: Entity
    early: list[list[Operation]]
    final: list[Operation]
    cleanup: list[str]


def split_transactions(plan: Plan) -> SplitSave:
    pk = plan.commit["PartitionKey"]
    # The last transaction: the state entity, then results and garbage while they fit.
    room_ops = MAX_OPERATIONS - 1
    room_bytes = MAX_BATCH_BYTES - payload_bytes(plan.commit)
    final: list[Operation] = []
    early_results: list[Entity] = []
    for row in plan.results:
        size = payload_bytes(row)
        if room_ops > 0 and size <= room_bytes:
            final.append(_upsert(row))
            room_ops, room_bytes = room_ops - 1, room_bytes - size
        else:
            early_results.append(row)
    garbage = list(plan.garbage)
    while garbage and room_ops > 0 and room_bytes >= OPERATION_OVERHEAD_BYTES:
        final.append(_delete(pk, garbage.pop(0)))
        room_ops, room_bytes = room_ops - 1, room_bytes - OPERATION_OVERHEAD_BYTES
    marker: Entity = {
        "PartitionKey": pk,
        "RowKey": STATE_ROW,
        "fmt": FORMAT,
        "next_gen": int_property(plan.meta.next_gen),
        "pending": now_iso(),
    }
    early = [_upsert(row) for row in plan.writes + early_results]
    batches = _batches(early, MAX_OPERATIONS - 1, MAX_BATCH_BYTES - payload_bytes(marker))
    return SplitSave(marker, batches, final, garbage)


def _batches(
    operations: list[Operation], max_operations: int, max_bytes: int
) -> list[list[Operation]]:
    batches: list[list[Operation]] = []
    current: list[Operation] = []
    size = 0
    for operation in operations:
        op_size = payload_bytes(operation[1])
        if current and (len(current) >= max_operations or size + op_size > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(operation)
        size += op_size
    if current:
        batches.append(current)
    return batches
