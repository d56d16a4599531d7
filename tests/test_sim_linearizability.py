"""The Wing-Gong/Lowe linearizability checker on hand-written key-value histories."""

from __future__ import annotations

from typing import Any

from raft.sim.linearizability import Operation, check_history, linearizable


def op(
    kind: str,
    invoke: int,
    response: int | None,
    result: dict[str, Any] | None,
    key: str = "x",
    value: Any = None,
    expected: Any = None,
    client: str = "c1",
) -> Operation:
    return Operation(client, invoke, kind, key, value, expected, invoke, response, result)


def put(invoke: int, response: int | None, previous: Any, value: str, **kw: Any) -> Operation:
    result = None if response is None else {"ok": True, "previous": previous}
    return op("put", invoke, response, result, value=value, **kw)


def get(invoke: int, response: int, value: Any, **kw: Any) -> Operation:
    return op(
        "get", invoke, response, {"ok": True, "found": value is not None, "value": value}, **kw
    )


def test_a_sequential_history_is_linearizable() -> None:
    assert linearizable([put(1, 2, None, "a"), get(3, 4, "a"), put(5, 6, "a", "b"), get(7, 8, "b")])


def test_a_read_of_an_overwritten_value_after_the_overwrite_completed_is_not() -> None:
    assert not linearizable([put(1, 2, None, "a"), put(3, 4, "a", "b"), get(5, 6, "a")])


def test_overlapping_operations_may_take_effect_in_either_order() -> None:
    # Both puts overlap; the read after them may see either, consistently with `previous`.
    history = [put(1, 5, "b", "a", client="c1"), put(2, 6, None, "b", client="c2"), get(7, 8, "a")]
    assert linearizable(history)
    wrong = [put(1, 5, None, "a", client="c1"), put(2, 6, None, "b", client="c2")]
    assert not linearizable(wrong)


def test_a_pending_write_may_take_effect_or_not() -> None:
    pending = put(1, None, None, "a", client="c2")
    assert linearizable([pending, get(2, 3, "a")])
    assert linearizable([pending, get(2, 3, None)])
    # ...but not before it was invoked.
    assert not linearizable([get(1, 2, "a"), put(3, None, None, "a", client="c2")])


def test_compare_and_set_results_must_match_the_state() -> None:
    ok = op("cas", 3, 4, {"ok": True, "value": "b"}, value="b", expected="a")
    failed = op("cas", 3, 4, {"ok": False, "value": "a"}, value="b", expected="z")
    assert linearizable([put(1, 2, None, "a"), ok, get(5, 6, "b")])
    assert linearizable([put(1, 2, None, "a"), failed, get(5, 6, "a")])
    lying = op("cas", 3, 4, {"ok": True, "value": "b"}, value="b", expected="z")
    assert not linearizable([put(1, 2, None, "a"), lying])


def test_delete_reports_whether_the_key_was_there() -> None:
    gone = op("delete", 3, 4, {"ok": True, "found": True})
    assert linearizable([put(1, 2, None, "a"), gone, get(5, 6, None)])
    assert not linearizable([gone])


def test_keys_are_checked_independently() -> None:
    history = [
        put(1, 2, None, "a", key="x"),
        get(3, 4, "a", key="x"),
        put(5, 6, None, "q", key="y"),
        get(7, 8, "stale", key="y"),
    ]
    problem = check_history(history)
    assert problem is not None and "'y'" in problem and "'x'" not in problem.split(":")[0]


def test_memoization_keeps_many_concurrent_operations_fast() -> None:
    # Sixteen concurrent puts then a read: 16! orders, but few distinct (set, state) pairs.
    puts = [
        put(1, 100, None, f"v{i}", client=f"c{i}") if i == 0 else put(1, 100, f"v{i - 1}", f"v{i}")
        for i in range(16)
    ]
    assert linearizable([*puts, get(101, 102, "v15")])
    assert not linearizable([*puts, get(101, 102, "v3")])
