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
    int_or_zero,
    int_property,
    log_key,
    now_iso,
    pack,
    payload_bytes,
    result_row,
    snapshot_key,
    utf16_bytes,
)
from raft.ports.store import Change, StoreLimitError

# The placeholder generation of a planned log row, replaced once the plan picks one.
_UNPLACED = 999_999


@dataclass(frozen=True)
class Meta:
    """What the state entity says about the stored rows, at one ETag."""

    etag: str | None  # None: no state entity at all
    real: bool  # False: absent, or a placeholder left by a split first save
    commit: str
    last_index: int
    segs: tuple[tuple[int, int], ...]
    next_gen: int
    snap: tuple[int, int] | None  # (snapshot id, rows)

    @classmethod
    def absent(cls) -> Meta:
        return cls(None, False, "", 0, ((1, 0),), 1, None)

    @classmethod
    def of(cls, entity: Any) -> Meta:
        real = "state" in entity and entity.get("state") is not None
        segs = tuple((int(s), int(g)) for s, g in json.loads(as_str(entity.get("segs")) or "[]"))
        snap_id = as_int(entity.get("snap_id"), -1)
        return cls(
            etag=entity.metadata["etag"],
            real=real,
            commit=as_str(entity.get("commit")),
            last_index=as_int(entity.get("last_index")) if real else 0,
            segs=(segs or ((1, 0),)) if real else ((1, 0),),
            next_gen=max(1, as_int(entity.get("next_gen"), 1)),
            snap=(snap_id, as_int(entity.get("snap_parts"))) if real and snap_id >= 0 else None,
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
    writes: list[Entity] = field(default_factory=list)  # log and snapshot rows
    results: list[Entity] = field(default_factory=list)
    atomic_deletes: list[str] = field(default_factory=list)  # must go with the state entity
    garbage: list[str] = field(default_factory=list)  # rows no state will reference again

    @property
    def operations(self) -> int:
        return (
            1 + len(self.writes) + len(self.results) + len(self.atomic_deletes) + len(self.garbage)
        )

    def payload_bytes(self) -> int:
        rows = [self.commit, *self.writes, *self.results]
        deletes = len(self.atomic_deletes) + len(self.garbage)
        return sum(payload_bytes(e) for e in rows) + deletes * OPERATION_OVERHEAD_BYTES

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
    snapshot_chunks = (
        None if change.snapshot is None else chunks(change.snapshot, SNAPSHOT_CHUNK_UNITS)
    )
    state_json = json.dumps(change.state, separators=(",", ":"), sort_keys=True)
    if utf16_bytes(state_json) > MAX_PROPERTY_BYTES:
        raise StoreLimitError(
            f"{pk}: the state is {utf16_bytes(state_json)} bytes in UTF-16 as JSON; "
            f"Table Storage holds at most {MAX_PROPERTY_BYTES} bytes in one property"
        )
    return PreparedChange(pk, change, state_json, log_rows, result_rows, snapshot_chunks)


def plan_save(base: Meta, prepared: PreparedChange, *, split: bool) -> Plan:
    """The rows a save writes and deletes, given the stored metadata `base`. With `split`, the
    save will span several transactions, so rewritten entries must not land on rows the stored
    state references."""
    pk, change = prepared.pk, prepared.change
    old_last = base.last_index
    segs = list(base.segs)
    next_gen = base.next_gen
    writes: list[Entity] = []
    atomic_deletes: list[str] = []
    garbage: list[str] = []
    new_last = old_last
    if change.log_from is not None:
        log_from = change.log_from
        if log_from > old_last + 1:
            raise ValueError(
                f"{pk}: log_from {log_from} leaves a gap after the stored last index {old_last}"
            )
        new_last = log_from - 1 + len(prepared.log_rows)
        last_start, last_gen = segs[-1]
        rewrites = log_from <= old_last
        if rewrites and (split or log_from < last_start):
            # Rewritten entries go under a fresh generation: never onto rows the stored
            # state references (a split save), and never by regrowing a cut segment.
            generation = next_gen
            next_gen += 1
            new_segs = [s for s in segs if s[0] < log_from] + [(log_from, generation)]
        else:
            generation = last_gen
            new_segs = segs
        for index, row in enumerate(prepared.log_rows, log_from):
            writes.append({**row, "RowKey": log_key(index, generation)})
        for index in range(log_from, old_last + 1):
            old_generation = generation_at(segs, index)
            if index <= new_last and old_generation == generation:
                continue  # replaced in place, in the same transaction as the state
            if old_generation == generation:
                atomic_deletes.append(log_key(index, old_generation))
            else:
                garbage.append(log_key(index, old_generation))
        segs = new_segs
    snap = base.snap
    if prepared.snapshot_chunks is not None:
        snapshot_id = next_gen
        next_gen += 1
        rows = pack(prepared.snapshot_chunks)
        for part, row_chunks in enumerate(rows):
            snapshot_row: Entity = {
                "PartitionKey": pk,
                "RowKey": snapshot_key(snapshot_id, part),
                "n": len(row_chunks),
            }
            snapshot_row.update({f"p{i:02d}": chunk for i, chunk in enumerate(row_chunks)})
            writes.append(snapshot_row)
        if base.snap is not None:
            garbage.extend(snapshot_key(base.snap[0], p) for p in range(base.snap[1]))
        snap = (snapshot_id, len(rows))
    meta = Meta(
        etag=None,
        real=True,
        commit=uuid.uuid4().hex,
        last_index=new_last,
        segs=tuple(segs),
        next_gen=next_gen,
        snap=snap,
    )
    state = change.state
    commit: Entity = {
        "PartitionKey": pk,
        "RowKey": STATE_ROW,
        "fmt": FORMAT,
        "state": prepared.state_json,
        "term": int_property(int_or_zero(state.get("current_term"))),
        "role": str(state.get("role", "")),
        "leader": str(state.get("leader_id", "")),
        "commit_index": int_property(int_or_zero(state.get("commit_index"))),
        "last_index": int_property(new_last),
        "updated": now_iso(),
        "commit": meta.commit,
        "segs": json.dumps([list(s) for s in segs]),
        "next_gen": int_property(next_gen),
        "snap_id": int_property(snap[0] if snap else -1),
        "snap_parts": int_property(snap[1] if snap else 0),
    }
    check_entity(commit, f"{pk}: state entity")
    return Plan(commit, meta, writes, prepared.result_rows, atomic_deletes, garbage)


def state_operation(etag: str | None, entity: Entity, mode: UpdateMode) -> Operation:
    """Insert the state entity (no ETag: fails if one exists) or update it If-Match `etag`."""
    if etag is None:
        return ("create", entity)
    return (
        "update",
        entity,
        {"mode": mode, "etag": etag, "match_condition": MatchConditions.IfNotModified},
    )


def _upsert(row: Entity) -> Operation:
    return ("upsert", row, {"mode": UpdateMode.REPLACE})


def _delete(pk: str, key: str) -> Operation:
    return ("delete", {"PartitionKey": pk, "RowKey": key})


def single_transaction(base: Meta, plan: Plan) -> list[Operation]:
    pk = plan.commit["PartitionKey"]
    operations = [state_operation(base.etag, plan.commit, UpdateMode.REPLACE)]
    operations += [_upsert(row) for row in plan.writes + plan.results]
    operations += [_delete(pk, key) for key in plan.atomic_deletes + plan.garbage]
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
    assert not plan.atomic_deletes, "a split save only deletes rows no state references"
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
