"""The Table Storage save planner, without a table: which rows a change writes and deletes,
under which generation, and how a large save is cut into conditioned transactions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from raft.adapters.table_plan import (
    GC_PER_SAVE,
    Meta,
    SnapshotRef,
    plan_save,
    prepare,
    single_transaction,
    split_transactions,
)
from raft.adapters.table_rows import (
    MAX_OPERATIONS,
    STATE_ROW,
    incoming_key,
    log_key,
    snapshot_key,
)
from raft.core.messages import Entry
from raft.core.state import Snapshot, SnapshotChunk
from raft.ports.store import Change, ClientResult, StoreLimitError

PK = "server-1"


def stored(
    last_index: int,
    segs: tuple[tuple[int, int], ...] = ((1, 0),),
    next_gen: int = 1,
    snap: SnapshotRef | None = None,
    *,
    log_start: int = 0,
    gc_from: int = 1,
    inc: tuple[int, int] | None = None,
) -> Meta:
    return Meta(
        "etag-1", True, "commit-1", last_index, log_start, gc_from, segs, next_gen, snap, inc
    )


def change(
    log_from: int | None,
    count: int = 0,
    term: int = 1,
    snapshot: Snapshot | None = None,
    **state: object,
) -> Change:
    entries = tuple(Entry(term, "c", i, "x") for i in range(count))
    return Change({"current_term": term, **state}, log_from, entries, snapshot=snapshot)


def keys(rows: list[dict[str, object]]) -> list[object]:
    return [row["RowKey"] for row in rows]


def test_an_append_writes_new_rows_under_the_current_generation_and_deletes_nothing() -> None:
    plan = plan_save(stored(3), prepare(PK, change(4, 2)))
    assert keys(plan.writes) == [log_key(4, 0), log_key(5, 0)]
    assert plan.garbage == []
    assert plan.meta.last_index == 5 and plan.meta.segs == ((1, 0),)


def test_a_rewrite_goes_under_a_fresh_generation_so_cached_rows_stay_valid() -> None:
    plan = plan_save(stored(5, next_gen=4), prepare(PK, change(3, 1, term=2)))
    assert keys(plan.writes) == [log_key(3, 4)]
    assert plan.meta.segs == ((1, 0), (3, 4)) and plan.meta.next_gen == 5
    assert plan.garbage == [log_key(3, 0), log_key(4, 0), log_key(5, 0)]
    assert plan.meta.last_index == 3


def test_a_pure_truncation_retires_the_rows_past_the_new_end() -> None:
    plan = plan_save(stored(5), prepare(PK, change(4)))
    assert plan.writes == [] and plan.meta.last_index == 3
    assert plan.garbage == [log_key(4, 0), log_key(5, 0)]
    # The next append goes under the truncation's fresh generation, never onto retired rows.
    after = plan_save(replace(plan.meta, etag="e2"), prepare(PK, change(4, 1)))
    assert keys(after.writes) == [log_key(4, 1)]


def test_rewriting_before_the_last_segment_starts_a_fresh_generation() -> None:
    base = stored(6, segs=((1, 0), (4, 2)), next_gen=3)
    plan = plan_save(base, prepare(PK, change(2, 1, term=3)))
    assert keys(plan.writes) == [log_key(2, 3)]
    assert plan.meta.segs == ((1, 0), (2, 3))
    retired = [log_key(2, 0), log_key(3, 0), log_key(4, 2), log_key(5, 2), log_key(6, 2)]
    assert plan.garbage == retired


def test_a_new_snapshot_gets_a_fresh_id_and_retires_the_old_rows() -> None:
    base = stored(2, next_gen=7, snap=SnapshotRef(3, 2, 1, 1, ("a",)))
    snapshot = Snapshot(2, 1, "s" * 10, ("a", "b"))
    plan = plan_save(base, prepare(PK, change(None, snapshot=snapshot)))
    assert keys(plan.writes) == [snapshot_key(7, 0)]
    assert plan.meta.snap == SnapshotRef(7, 1, 2, 1, ("a", "b")) and plan.meta.next_gen == 8
    assert plan.garbage == [snapshot_key(3, 0), snapshot_key(3, 1)]


def test_compaction_deletes_a_bounded_number_of_rows_per_save() -> None:
    plan = plan_save(stored(100), prepare(PK, change(None, log_start=90)))
    assert plan.garbage == [log_key(i, 0) for i in range(1, 1 + GC_PER_SAVE)]
    assert plan.meta.log_start == 90 and plan.meta.gc_from == 1 + GC_PER_SAVE
    assert plan.fits_one_transaction()
    # Later saves go on from where the last one stopped, until every compacted row is gone.
    meta = plan.meta
    for _ in range(3):
        again = prepare(PK, change(None, log_start=90))
        meta = plan_save(replace(meta, etag="e"), again).meta
    assert meta.gc_from == 91


def test_compaction_past_the_end_of_the_log_deletes_only_rows_that_exist() -> None:
    plan = plan_save(stored(3), prepare(PK, change(None, log_start=50)))
    assert plan.garbage == [log_key(1, 0), log_key(2, 0), log_key(3, 0)]
    assert plan.meta.gc_from == 51 and plan.meta.last_index == 50


def test_segments_wholly_compacted_and_collected_are_dropped() -> None:
    base = stored(30, segs=((1, 0), (10, 1), (20, 2)), next_gen=3, log_start=25, gc_from=21)
    plan = plan_save(base, prepare(PK, change(None, log_start=25)))
    assert plan.meta.segs == ((20, 2),) and plan.meta.gc_from == 26


def test_a_change_cannot_move_log_start_backwards() -> None:
    with pytest.raises(ValueError, match="log_start"):
        plan_save(stored(9, log_start=5), prepare(PK, change(None, log_start=3)))


def test_a_change_cannot_rewrite_compacted_entries() -> None:
    with pytest.raises(ValueError, match="log_start"):
        plan_save(stored(9, log_start=5), prepare(PK, change(5, 1, log_start=5)))


def test_received_snapshot_chunks_are_appended_as_rows_of_one_transfer() -> None:
    incoming = {"term": 2, "index": 9}
    first = Change({"incoming": incoming}, snapshot_chunks=(SnapshotChunk(9, 2, 0, "ab"),))
    plan = plan_save(stored(3, next_gen=5), prepare(PK, first))
    assert keys(plan.writes) == [incoming_key(5, 0)] and plan.meta.inc == (5, 1)
    more = Change({"incoming": incoming}, snapshot_chunks=(SnapshotChunk(9, 2, 2, "cd"),))
    plan = plan_save(replace(plan.meta, etag="e"), prepare(PK, more))
    assert keys(plan.writes) == [incoming_key(5, 1)] and plan.meta.inc == (5, 2)


def test_a_transfer_that_starts_over_or_ends_retires_its_rows() -> None:
    base = stored(3, next_gen=6, inc=(5, 2))
    again = Change({"incoming": {"index": 12}}, snapshot_chunks=(SnapshotChunk(12, 2, 0, "x"),))
    plan = plan_save(base, prepare(PK, again))
    assert plan.meta.inc == (6, 1)
    assert plan.garbage == [incoming_key(5, 0), incoming_key(5, 1)]
    done = plan_save(base, prepare(PK, Change({"incoming": None})))
    assert done.meta.inc is None
    assert done.garbage == [incoming_key(5, 0), incoming_key(5, 1)]


def test_a_change_that_leaves_a_gap_in_the_log_is_refused() -> None:
    with pytest.raises(ValueError, match="gap"):
        plan_save(stored(3), prepare(PK, change(5, 1)))


def test_a_state_over_the_property_limit_is_refused_before_planning() -> None:
    big = Change(state={"blob": "x" * 40_000})
    with pytest.raises(StoreLimitError, match="state"):
        prepare(PK, big)


def test_only_each_clients_last_result_is_written() -> None:
    results = (ClientResult("a", 1, "r1", 1, 1), ClientResult("a", 2, "r2", 2, 1))
    prepared = prepare(PK, Change(state={}, results=results))
    assert [row["seq"] for row in prepared.result_rows] == [2]


def test_a_single_transaction_puts_the_conditional_state_update_first() -> None:
    plan = plan_save(stored(5), prepare(PK, change(3, 1, term=2)))
    operations = single_transaction(stored(5), plan)
    assert operations[0][0] == "update" and operations[0][2]["etag"] == "etag-1"
    assert [op[0] for op in operations[1:]] == ["upsert", "delete", "delete", "delete"]


def test_a_first_save_inserts_the_state_entity_so_a_concurrent_first_save_conflicts() -> None:
    plan = plan_save(Meta.absent(), prepare(PK, change(1, 1)))
    assert single_transaction(Meta.absent(), plan)[0][0] == "create"


def test_a_large_save_is_cut_into_chained_batches_then_the_state() -> None:
    plan = plan_save(stored(0), prepare(PK, change(1, 250)))
    assert not plan.fits_one_transaction()
    split = split_transactions(plan)
    assert [len(batch) for batch in split.early] == [99, 99, 52]
    assert split.marker["RowKey"] == STATE_ROW and "state" not in split.marker
    assert split.final == [] and split.cleanup == []


def test_garbage_that_does_not_fit_the_last_transaction_is_left_for_cleanup() -> None:
    base = stored(300, next_gen=2)
    plan = plan_save(base, prepare(PK, change(1, 1, term=2)))
    split = split_transactions(plan)
    assert len(split.final) == MAX_OPERATIONS - 1
    assert len(split.final) + len(split.cleanup) == 300
    assert all(op[0] == "delete" for op in split.final)
