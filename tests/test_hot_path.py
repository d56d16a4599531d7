"""The apply path's shortcuts give exactly what the plain library calls give."""

from __future__ import annotations

import json
from typing import Any

import pytest

from raft.app.kv import KeyValueStore, encode, parse_command
from raft.app.sessions import AppliedState, Session
from raft.app.state_machine import CommandError
from raft.core.messages import Entry

VALUES: list[Any] = [
    "plain",
    'é😀\u2028\x00"\\',
    0,
    -7,
    1.5,
    1e300,
    -0.0,
    float("inf"),
    None,
    True,
    [],
    {},
    [1, {"b": 2, "a": [None, "x"]}],
    {"z": 1, "a": "ü", "m": {"k": [1.25, "s"]}},
]


@pytest.mark.parametrize("value", VALUES)
def test_encode_matches_json_dumps_with_the_same_settings(value: Any) -> None:
    expected = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    assert encode(value) == expected


def test_encode_refuses_what_json_refuses() -> None:
    with pytest.raises(TypeError):
        encode({"k": {1, 2}})


@pytest.mark.parametrize("data", ["", "{", "[1]", "\ufeff{}", '{"op":"put"}', "1 2"])
def test_parse_command_rejects_what_json_loads_rejects_or_the_schema_refuses(data: str) -> None:
    with pytest.raises(CommandError):
        parse_command(data)


def test_a_touched_session_takes_the_clock_and_keeps_everything_else() -> None:
    state = AppliedState(KeyValueStore())
    put = encode({"op": "put", "key": "k", "value": 1})
    first = state.apply(1, Entry(1, "a", 1, put, "", 100, 100))
    state.apply(2, Entry(1, "b", 1, put, "", 120, 120))
    again = state.apply(3, Entry(1, "a", 1, put, "", 100, 150))
    assert again == first
    touched = state.sessions["a"]
    assert isinstance(first, Session) and touched.time == 150
    assert (touched.seq, touched.result, touched.index, touched.term) == (1, first.result, 1, 1)
    # Touching moves the session to the back of the least-recently-used order.
    assert list(state.sessions) == ["b", "a"]
