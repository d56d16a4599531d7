"""The default application: a key-value store with put, get, delete and compare-and-set.

Commands and results are JSON objects::

    {"op": "put", "key": "k", "value": <any JSON>}  -> {"ok": true, "previous": <old or null>}
    {"op": "get", "key": "k"}                       -> {"ok": true, "found": bool, "value": ...}
    {"op": "delete", "key": "k"}                    -> {"ok": true, "found": bool}
    {"op": "cas", "key": "k", "expected": <JSON or null for absent>, "value": <JSON>}
                                                    -> {"ok": swapped, "value": <current>}

Gets are linearizable without a log entry: the leader answers them after a ReadIndex round
(docs/design.md). `cas` compares as JSON does: `true` is not `1`, and `1` is `1.0`.

Validation is deterministic and independent of the call stack: the HTTP API and the leader
run the same `parse_command` on the same text, so a command the API accepted is never refused
later (docs/bad-input.md).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from raft.app.state_machine import CommandError, SnapshotError
from raft.core import strict_json
from raft.core.strict_json import brief

MAX_KEY_CHARS = 1024
FIELDS: dict[str, set[str]] = {
    "put": {"op", "key", "value"},
    "get": {"op", "key"},
    "delete": {"op", "key"},
    "cas": {"op", "key", "expected", "value"},
}


def parse_command(data: str) -> dict[str, Any]:
    try:
        # The parser every boundary shares (one decoder built once: every server parses
        # every command it applies).
        command = strict_json.loads(data)
    except strict_json.JsonInputError as exc:
        raise CommandError(f"command: {exc}") from None
    if not isinstance(command, dict):
        raise CommandError("command must be a JSON object")
    op = command.get("op")
    # isinstance first: an object or array `op` is unhashable, so `in FIELDS` would raise.
    if not isinstance(op, str) or op not in FIELDS:
        raise CommandError(f"unknown op {brief(op)}; expected one of {sorted(FIELDS)}")
    if command.keys() != FIELDS[op]:
        raise CommandError(f"{op} takes exactly the fields {sorted(FIELDS[op])}")
    key = command["key"]
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        raise CommandError(f"key must be a non-empty string of at most {MAX_KEY_CHARS} chars")
    return command


# Every server parses each command several times (on receipt, to tell a read, to apply it),
# and parsing is pure: the parsed command is shared among those calls (and among the state
# machines of one process), so neither it nor a value the store takes from it is ever mutated
# in place (put and cas replace a value). Bounded: 256 commands of at most 16 KiB.
_parse_shared = functools.lru_cache(maxsize=256)(parse_command)


# One encoder for every command and result: cheaper than json.dumps's per-call setup on the
# apply path, which every server runs for every command.
# Not ASCII-escaped: an emoji stays one character instead of twelve, so a command's size in
# the log is what the caller sent.
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)
# JSONEncoder.encode builds CPython's C encoder afresh on every call, which costs as much as
# encoding a small result: build it once, with the same settings. Without the check for
# circular references: what is encoded here was parsed from JSON, which has no cycles.
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER = (
    None
    if _make_c_encoder is None
    else _make_c_encoder(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", True, False, True
    )
)


def encode(value: Any) -> str:
    if _C_ENCODER is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODER(value, 0))


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values, which Python's `==` is not: `true` is not `1` (nor `false`
    `0`), while `1` and `1.0` are the same number. Depth is bounded by the parser's limit."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    return bool(a == b)


class KeyValueStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def validate(self, data: str) -> None:
        _parse_shared(data)

    def apply(self, data: str) -> str:
        try:
            command = _parse_shared(data)
        except CommandError as exc:
            return encode({"ok": False, "error": str(exc)})
        return encode(self.execute(command))

    def is_read_only(self, data: str) -> bool:
        try:
            return bool(_parse_shared(data)["op"] == "get")
        except CommandError:
            return False

    def query(self, data: str) -> str:
        command = _parse_shared(data)
        if command["op"] != "get":
            raise CommandError(f"{command['op']!r} is not a read")
        return encode(self.execute(command))

    def execute(self, command: dict[str, Any]) -> dict[str, Any]:
        op, key = command["op"], command["key"]
        if op == "get":
            return {"ok": True, "found": key in self.data, "value": self.data.get(key)}
        if op == "put":
            previous = self.data.get(key)
            self.data[key] = command["value"]
            return {"ok": True, "previous": previous}
        if op == "delete":
            return {"ok": True, "found": self.data.pop(key, None) is not None}
        current = self.data.get(key)
        if json_equal(current, command["expected"]):
            self.data[key] = command["value"]
            return {"ok": True, "value": command["value"]}
        return {"ok": False, "value": current}

    def snapshot(self) -> str:
        return encode(self.data)

    def restore(self, snapshot: str) -> None:
        try:
            data = json.loads(snapshot)
        except (ValueError, RecursionError) as exc:
            raise SnapshotError(f"key-value snapshot is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SnapshotError("key-value snapshot must be a JSON object")
        self.data = data
