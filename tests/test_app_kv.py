"""The key-value application's commands, as a client sees their results."""

from __future__ import annotations

import json
from typing import Any

import pytest

from raft.app.kv import KeyValueStore


def run(store: KeyValueStore, **command: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(store.apply(json.dumps(command)))
    return result


def test_cas_swaps_when_the_current_value_equals_the_expected_one() -> None:
    store = KeyValueStore()
    run(store, op="put", key="k", value={"n": [1, 2]})
    assert run(store, op="cas", key="k", expected={"n": [1, 2]}, value="w") == {
        "ok": True,
        "value": "w",
    }


@pytest.mark.parametrize(("stored", "expected"), [(True, 1), (1, True), (False, 0), ([True], [1])])
def test_cas_does_not_take_a_boolean_for_a_number(stored: Any, expected: Any) -> None:
    store = KeyValueStore()
    run(store, op="put", key="k", value=stored)
    assert run(store, op="cas", key="k", expected=expected, value="w") == {
        "ok": False,
        "value": stored,
    }


def test_cas_takes_an_integer_and_the_same_float_for_the_same_number() -> None:
    store = KeyValueStore()
    run(store, op="put", key="k", value=1)
    assert run(store, op="cas", key="k", expected=1.0, value=2)["ok"] is True


def test_cas_with_null_expected_swaps_only_an_absent_key() -> None:
    store = KeyValueStore()
    assert run(store, op="cas", key="k", expected=None, value=1)["ok"] is True
    assert run(store, op="cas", key="k", expected=None, value=2) == {"ok": False, "value": 1}
