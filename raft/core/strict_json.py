"""Untrusted JSON, parsed with explicit limits: the one parser every boundary uses.

The HTTP API (request bodies), the wire decoder (Service Bus deliveries) and the application's
command validation all parse with `loads`, so a text one of them accepts is accepted by all,
whichever call stack they run on. It refuses, with `JsonInputError` (and only that):

- bytes that are not UTF-8 (no other encoding is guessed, and no byte-order mark);
- nesting deeper than `MAX_DEPTH` arrays and objects, counted over the text before it is
  parsed, so the parser never recurses anywhere near the interpreter's stack limit and the
  outcome never depends on how deep the caller's stack already is;
- anything that is not RFC 8259 JSON: trailing text, ``NaN``, ``Infinity``, and numbers too
  large for a float (``1e400``), which Python's json module would otherwise accept and later
  write back out as text no other JSON parser reads;
- strings holding a lone UTF-16 surrogate (``"\\ud800"``): valid JSON syntax, but not Unicode
  text, so it could not be encoded as UTF-8 for Table Storage or Service Bus later.

Duplicate object keys are not refused; the last one wins, as in Python's json module and
most others. Commands are re-encoded (sorted keys, no duplicates) before they enter the log,
so every server reads the same command.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Deep enough for any reasonable document (a command's value may nest 31 levels inside the
# command object), and far below the interpreter's recursion limit (1000), which json's C
# scanner counts against.
MAX_DEPTH = 32

# A JSON string token: quotes around anything but quote and backslash, or escape pairs.
# Written unrolled ("normal* (escape normal*)*") so matching is linear in the text.
_STRING_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST_PAIR = re.compile(r"\[\]|\{\}")
_SURROGATE = re.compile("[\ud800-\udfff]")
# After parsing, a surrogate can only come from an escape in the text: most texts have none,
# and then no string needs to be looked at.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_MAX_SHOWN_CHARS = 60


class JsonInputError(ValueError):
    """Text that `loads` refuses; the message says what is wrong with it."""


def brief(value: Any) -> str:
    """`repr(value)`, cut to a length that suits an error message."""
    shown = repr(value)
    return shown if len(shown) <= _MAX_SHOWN_CHARS else shown[: _MAX_SHOWN_CHARS - 3] + "..."


def nesting_depth(text: str, limit: int = MAX_DEPTH) -> int:
    """How deep arrays and objects nest in JSON `text` (0 for a scalar), counted without
    parsing and without counting past `limit + 1`. Brackets inside string tokens do not count.
    Raises `JsonInputError` if the other brackets do not pair up: then it is not JSON."""
    brackets = _NOT_BRACKET.sub("", _STRING_TOKEN.sub("", text))
    depth = 0
    # Each pass removes the innermost level of pairs: C-speed regex passes, at most limit + 1.
    while brackets and depth <= limit:
        inner = _INNERMOST_PAIR.sub("", brackets)
        if inner == brackets:
            raise JsonInputError("not JSON: its brackets do not pair up")
        brackets = inner
        depth += 1
    return depth


def loads(raw: str | bytes | bytearray | memoryview, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON text (or UTF-8 bytes) within the limits above."""
    if isinstance(raw, str):
        text = raw
        if _SURROGATE.search(text):
            raise JsonInputError("text holds a lone surrogate code point; it is not Unicode")
    else:
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"not UTF-8: {exc}") from None
    if text.startswith("\ufeff"):
        raise JsonInputError("not JSON: it starts with a byte-order mark (BOM)")
    # A quick upper bound first: most texts have fewer brackets than the limit.
    too_deep = (
        text.count("[") + text.count("{") > max_depth and nesting_depth(text, max_depth) > max_depth
    )
    if too_deep:
        raise JsonInputError(f"nested more than {max_depth} levels deep (the limit)")
    try:
        value = _DECODER.decode(text)
    except ValueError as exc:
        raise JsonInputError(f"not JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(value)
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {brief(text)} is too large")
    return value


# Built once and called directly: json.loads with hooks builds a decoder per call, which costs
# as much as decoding a small command, and every server parses every command it applies.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _refuse_lone_surrogates(value: Any) -> None:
    """Walk the parsed value without recursion (its depth is bounded, but a stack of our own
    costs nothing and keeps this independent of the caller's)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            for key, member in item.items():
                _check_text(key)
                pending.append(member)


def _check_text(text: str) -> None:
    if _SURROGATE.search(text):
        raise JsonInputError(
            f"string {brief(text)} holds a lone surrogate escape (\\ud800-\\udfff not part "
            "of a pair); strings must be Unicode text"
        )
