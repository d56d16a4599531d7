"""What the fuzz tests (tests/test_fuzz_*.py) share: how many inputs to try, the inputs
themselves (valid messages and commands, then mutated), and a tally of what each target did.

In the normal test run each fuzz test tries `DEFAULT_EXAMPLES` inputs (seconds in all). Set
`RAFT_FUZZ_EXAMPLES` for a longer run; `scripts/fuzz` does, and loads this module as a pytest
plugin (`-p tests.fuzzing`) so the run ends with a table of how many inputs each target was
given and what came of them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from raft.core import wire
from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ChangeMembership,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    Entry,
    Envelope,
    InstallSnapshot,
    InstallSnapshotResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
    TransferLeadership,
)
from raft.core.strict_json import MAX_DEPTH

DEFAULT_EXAMPLES = 150
EXAMPLES = int(os.environ.get("RAFT_FUZZ_EXAMPLES") or DEFAULT_EXAMPLES)


def fuzz_settings(share: float = 1.0) -> settings:
    """Hypothesis settings for one fuzz test: `share` of the examples (for a target whose
    inputs each cost much more than the others')."""
    return settings(
        max_examples=max(1, int(EXAMPLES * share)),
        deadline=None,
        # Inputs are large on purpose, and some targets are slow per input.
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------------- the tally

TALLY: dict[str, Counter[str]] = {}


def tally(target: str, outcome: str) -> None:
    """Count one input given to `target` and what came of it."""
    TALLY.setdefault(target, Counter())[outcome] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY:
        return
    terminalreporter.section("fuzz inputs tried")
    for target, outcomes in sorted(TALLY.items()):
        total = sum(outcomes.values())
        detail = ", ".join(f"{name} {count}" for name, count in outcomes.most_common())
        terminalreporter.write_line(f"{target}: {total} inputs ({detail})")
    grand = sum(sum(o.values()) for o in TALLY.values())
    terminalreporter.write_line(f"total: {grand} inputs")


# ------------------------------------------------------------------------- valid inputs

SERVERS = ["server-1", "server-2", "server-3"]
MAX_NAT = wire.MAX_NAT

nat = st.one_of(st.integers(0, 8), st.integers(0, MAX_NAT))
ident = st.one_of(st.sampled_from([*SERVERS, "http-r1", "c1"]), st.text(max_size=12))
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
key = st.one_of(st.sampled_from(["k", "colour", "x" * 1024]), st.text(min_size=1, max_size=30))


def _cas(k: str, expected: Any, value: Any) -> dict[str, Any]:
    return {"op": "cas", "key": k, "expected": expected, "value": value}


command = st.one_of(
    st.builds(lambda k, v: {"op": "put", "key": k, "value": v}, key, json_value),
    st.builds(lambda k: {"op": "get", "key": k}, key),
    st.builds(lambda k: {"op": "delete", "key": k}, key),
    st.builds(_cas, key, json_value, json_value),
)
command_text = command.map(lambda c: json.dumps(c, ensure_ascii=False))
small = st.integers(0, 12)
session = st.tuples(ident, small, st.text(max_size=8), small, small, small, small, st.booleans())
# Applied-state snapshots (raft.app.sessions) with arbitrary, sometimes inconsistent, contents.
snapshot_data = st.builds(
    lambda last, clock, machine, sessions: json.dumps(
        {
            "last_applied": last,
            "clock": clock,
            "floor": 0,
            "expired": [],
            "machine": machine,
            "sessions": sessions,
        }
    ),
    st.one_of(small, json_value),
    small,
    st.one_of(st.just('{"k": 1}'), st.text(max_size=8), json_value.map(json.dumps)),
    st.lists(session.map(list), max_size=2),
)
entry = st.builds(Entry, nat, ident, nat, command_text, ident, nat, nat)
message = st.one_of(
    st.builds(RequestVote, nat, ident, nat, nat, st.booleans(), st.booleans()),
    st.builds(RequestVoteResponse, nat, ident, st.booleans(), st.booleans()),
    st.builds(
        AppendEntries,
        nat,
        ident,
        nat,
        nat,
        st.lists(entry, max_size=3).map(tuple),
        nat,
        st.booleans(),
    ),
    st.builds(AppendEntriesResponse, nat, ident, st.booleans(), nat, nat, nat),
    st.builds(
        InstallSnapshot,
        nat,
        ident,
        nat,
        nat,
        st.one_of(
            st.just(tuple(SERVERS)),
            st.lists(ident, min_size=1, max_size=3, unique=True).map(tuple),
        ),
        st.one_of(st.just(0), nat),
        st.one_of(st.text(max_size=40), snapshot_data),
        st.booleans(),
    ),
    st.builds(InstallSnapshotResponse, nat, ident, nat, nat, st.booleans()),
    st.builds(ClientRequest, ident, nat, command_text, ident, nat, nat, st.booleans()),
    st.builds(
        ClientResponse, ident, nat, st.sampled_from(ClientStatus), st.text(max_size=20), nat, nat
    ),
    st.builds(TimeoutNow, nat, ident),
    st.builds(TransferLeadership, ident),
    st.builds(ChangeMembership, ident, st.booleans()),
)


def sent_by_its_sender(env: Envelope) -> Envelope:
    """`env` with its body naming its envelope's sender, as a server's own messages do."""
    named = wire.SENDER_FIELDS.get(type(env.message))
    if named is None:
        return env
    return Envelope(env.sender, env.to, replace(env.message, **{named: env.sender}))


# Mostly consistent (so that most reach the core), now and then not.
envelope = st.one_of(
    st.builds(Envelope, ident, ident, message).map(sent_by_its_sender),
    st.builds(Envelope, ident, ident, message),
)


# ------------------------------------------------------------------------- mutations

# Fragments that reach the parser's and validators' edges when spliced into a text.
HOSTILE = [
    b"\\ud800",
    b"\\udfff\\ud800",
    b'"\\ud83d\\ude00"',
    b"NaN",
    b"-Infinity",
    b"1e400",
    b"9007199254740992",
    b"-1",
    b"1.0",
    b"true",
    b"null",
    b"{}",
    b"[]",
    b'{"op": {}}',
    b"[" * (MAX_DEPTH + 1),
    b"[" * 5000,
    b"{" * 2000,
    b"]" * 40,
    b'"',
    b"\\",
    b"\x00",
    b"\xff",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    "\U0001f600".encode(),
    b"\x7f\xc3\x28",
]


def hostile_value(depth: int) -> Any:
    """A JSON value nested `depth` deep."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


structured_value = st.one_of(
    json_value,
    st.sampled_from(["\ud800", "x\udfffy", 2**53, -1, 1.5, True, None, {}, []]),
    st.integers(1, 3 * MAX_DEPTH).map(hostile_value),
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `doc` (a few levels: wire documents are shallow)."""
    found = [prefix]
    if len(prefix) < 5:
        if isinstance(doc, dict):
            for k, v in doc.items():
                found += _paths(v, (*prefix, k))
        elif isinstance(doc, list):
            for i, v in enumerate(doc):
                found += _paths(v, (*prefix, i))
    return found


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


def _drop(doc: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return doc
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    return doc


MUTATIONS = ["flip", "insert", "delete", "duplicate", "cut", "hostile", "replace", "drop", "add"]


def mutate(data: st.DataObject, raw: bytes) -> bytes:
    """Up to four mutations of `raw` (now and then none, so that valid input is fed too):
    byte-level (flip, insert, delete, duplicate, cut, splice a hostile fragment), or
    structural when `raw` is JSON (replace a value anywhere with a hostile one, drop a field,
    add one)."""
    for _ in range(data.draw(st.integers(0, 4), label="mutations")):
        size = len(raw)
        at = data.draw(st.integers(0, size), label="at")
        kind = data.draw(st.sampled_from(MUTATIONS), label="kind")
        if kind == "flip" and size:
            i = min(at, size - 1)
            raw = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
        elif kind == "insert":
            raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=8)) + raw[at:]
        elif kind == "delete":
            raw = raw[:at] + raw[at + data.draw(st.integers(1, 16)) :]
        elif kind == "duplicate":
            raw = raw[:at] + raw[at : at + data.draw(st.integers(1, 64))] + raw[at:]
        elif kind == "cut":
            raw = raw[:at]
        elif kind == "hostile":
            raw = raw[:at] + data.draw(st.sampled_from(HOSTILE)) + raw[at:]
        else:
            raw = _mutate_structure(data, raw, kind)
    return raw


def _mutate_structure(data: st.DataObject, raw: bytes, kind: str) -> bytes:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return raw  # no longer JSON: byte-level mutations only
    paths = _paths(doc)
    path = data.draw(st.sampled_from(paths), label="path")
    if kind == "replace":
        doc = _set(doc, path, data.draw(structured_value, label="value"))
    elif kind == "drop":
        doc = _drop(doc, path)
    else:
        target = doc
        for step in path:
            target = target[step]
        if isinstance(target, dict):
            target[data.draw(st.text(max_size=8), label="field")] = data.draw(structured_value)
        elif isinstance(target, list):
            target.append(data.draw(structured_value, label="item"))
    ensure_ascii = data.draw(st.booleans(), label="ascii")
    return json.dumps(doc, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
