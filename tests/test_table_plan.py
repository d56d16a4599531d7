"""The Table Storage save planner, without a table: which rows a change writes and deletes,
under which generation, and how a large save is cut into conditioned transactions."""

from __future__ import annotations

import pytest

from raft.adapters.table_plan import (
    Meta,
    plan_save,
    prepare,
    single_transaction,
    split_transactions,
)
from raft.adapters.table_rows import MAX_OPERATIONS, STATE_ROW, log_key, snapshot_key
from raft.core.messages import Entry
from raft.ports.store import Change, ClientResult, StoreLimitError

PK = "server-1"


def stored(
    last_index: int,
    segs: tuple[tuple[int, int], ...] = ((1, 0),),
    next_gen: int = 1,
    snap: tuple[int, int] | None = None,
) -> Meta:
    return Meta("etag-1", True, "commit-1", last_index, segs, next_gen, snap)


def change(
    log_from: int | None, count: int = 0, term: int = 1, snapshot: str | None = None
) -> Change:
    entries = tuple(Entry(term, "c", i, "x") for i in range(count))
    return Change({"current_term": term}, log_from, entries, snapshot=snapshot)


def keys(rows: list[dict[str, object]]) -> list[object]:
    return [row["RowKey"] for row in rows]


def test_an_append_writes_new_rows_under_the_current_generation_and_deletes_nothing() -> None:
    plan = plan_save(stored(3), prepare(PK, change(4, 2)), split=False)
    assert keys(plan.writes) == [log_key(4, 0), log_key(5, 0)]
    assert plan.atomic_deletes == [] and plan.garbage == []
    assert plan.meta.last_index == 5 and plan.meta.segs == ((1, 0),)


def test_truncating_the_last_segment_rewrites_in_place_and_deletes_the_rest_atomically() -> None:
    plan = plan_save(stored(5), prepare(PK, change(3, 1, term=2)), split=False)
    assert keys(plan.writes) == [log_key(3, 0)]
    assert plan.atomic_deletes == [log_key(4, 0), log_key(5, 0)]
    assert plan.garbage == []
    assert plan.meta.last_index == 3


def test_a_split_save_never_writes_onto_rows_the_stored_state_references() -> None:
    plan = plan_save(stored(5, next_gen=4), prepare(PK, change(3, 1, term=2)), split=True)
    assert keys(plan.writes) == [log_key(3, 4)]
    assert plan.meta.segs == ((1, 0), (3, 4)) and plan.meta.next_gen == 5
    assert plan.atomic_deletes == []
    assert plan.garbage == [log_key(3, 0), log_key(4, 0), log_key(5, 0)]


def test_rewriting_before_the_last_segment_starts_a_fresh_generation() -> None:
    base = stored(6, segs=((1, 0), (4, 2)), next_gen=3)
    plan = plan_save(base, prepare(PK, change(2, 1, term=3)), split=False)
    assert keys(plan.writes) == [log_key(2, 3)]
    assert plan.meta.segs == ((1, 0), (2, 3))
    retired = [log_key(2, 0), log_key(3, 0), log_key(4, 2), log_key(5, 2), log_key(6, 2)]
    assert plan.garbage == retired


def test_a_new_snapshot_gets_a_fresh_id_and_retires_the_old_rows() -> None:
    base = stored(2, next_gen=7, snap=(3, 2))
    plan = plan_save(base, prepare(PK, change(None, snapshot="s" * 10)), split=False)
    assert keys(plan.writes) == [snapshot_key(7, 0)]
    assert plan.meta.snap == (7, 1) and plan.meta.next_gen == 8
    assert plan.garbage == [snapshot_key(3, 0), snapshot_key(3, 1)]


def test_a_change_that_leaves_a_gap_in_the_log_is_refused() -> None:
    with pytest.raises(ValueError, match="gap"):
        plan_save(stored(3), prepare(PK, change(5, 1)), split=False)


def test_a_state_over_the_property_limit_is_refused_before_planning() -> None:
    big = Change(state={"blob": "x" * 40_000})
    with pytest.raises(StoreLimitError, match="state"):
        prepare(PK, big)


def test_only_each_clients_last_result_is_written() -> None:
    results = (ClientResult("a", 1, "r1", 1, 1), ClientResult("a", 2, "r2", 2, 1))
    prepared = prepare(PK, Change(state={}, results=results))
    assert [row["seq"] for row in prepared.result_rows] == [2]


def test_a_single_transaction_puts_the_conditional_state_update_first() -> None:
    plan = plan_save(stored(5), prepare(PK, change(3, 1, term=2)), split=False)
    operations = single_transaction(stored(5), plan)
    assert operations[0][0] == "update" and operations[0][2]["etag"] == "etag-1"
    assert [op[0] for op in operations[1:]] == ["upsert", "delete", "delete"]


def test_a_first_save_inserts_the_state_entity_so_a_concurrent_first_save_conflicts() -> None:
    plan = plan_save(Meta.absent(), prepare(PK, change(1, 1)), split=False)
    assert single_transaction(Meta.absent(), plan)[0][0] == "create"


def test_a_large_save_is_cut_into_chained_batches_then_the_state() -> None:
    plan = plan_save(stored(0), prepare(PK, change(1, 250)), split=True)
    assert not plan.fits_one_transaction()
    split = split_transactions(plan)
    assert [len(batch) for batch in split.early] == [99, 99, 52]
    assert split.marker["RowKey"] == STATE_ROW and "state" not in split.marker
    assert split.final == [] and split.cleanup == []


def test_garbage_that_does_not_fit_the_last_transaction_is_left_for_cleanup() -> None:
    base = stored(300, next_gen=2)
    plan = plan_save(base, prepare(PK, change(1, 1, term=2)), split=True)
    split = split_transactions(plan)
    assert len(split.final) == MAX_OPERATIONS - 1
    assert len(split.final) + len(split.cleanup) == 300
    assert all(op[0] == "delete" for op in split.final)
