"""The versioned JSON wire format, with strict validation.

Every envelope is one JSON object::

    {"v": 1, "kind": "append_entries", "from": "server-1", "to": "server-2", "body": {...}}

`decode` raises `WireError` (and only `WireError`) for anything that is not exactly a valid
message of a known version: bad JSON (parsed by `strict_json`, the parser every boundary
shares: not UTF-8, nested too deeply, NaN, lone surrogates), unknown version or kind, missing,
extra or wrong-typed fields, numbers out of range, oversized payloads. Decoding has no side
effects, so a rejected message changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from raft.core import strict_json
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
    Message,
    RequestVote,
    RequestVoteResponse,
    Tick,
    TimeoutNow,
    TransferLeadership,
)
from raft.core.strict_json import brief

WIRE_VERSION = 1
# Service Bus Standard caps a message at 256 KiB; leave room for properties.
MAX_WIRE_BYTES = 240 * 1024
MAX_ID_CHARS = 128
# The most servers a configuration may name (Raft clusters are small; 15 is generous).
MAX_SERVERS = 15
# The largest term, index or sequence number accepted: the largest integer every JSON
# implementation holds exactly (I-JSON, RFC 7493), and far inside Table Storage's Int64, so a
# term one higher still fits when a server adopts it and starts an election.
MAX_NAT = 2**53 - 1


class WireError(ValueError):
    """A message that cannot be decoded; the only error `decode` raises."""


KINDS: dict[str, type] = {
    "request_vote": RequestVote,
    "request_vote_response": RequestVoteResponse,
    "append_entries": AppendEntries,
    "append_entries_response": AppendEntriesResponse,
    "install_snapshot": InstallSnapshot,
    "install_snapshot_response": InstallSnapshotResponse,
    "client_request": ClientRequest,
    "client_response": ClientResponse,
    "timeout_now": TimeoutNow,
    "transfer_leadership": TransferLeadership,
    "change_membership": ChangeMembership,
    "tick": Tick,
}
KIND_OF: dict[type, str] = {cls: kind for kind, cls in KINDS.items()}

# Field name -> expected JSON type, per record. "id" is a bounded string, "nat" a
# non-negative int (never a bool), "str" any string, "bool" a bool, "ids" a bounded list of
# ids (a cluster configuration), "config" the same or empty (an entry that is not one).
SCHEMAS: dict[type, dict[str, str]] = {
    Entry: {
        "term": "nat",
        "client_id": "id",
        "seq": "nat",
        "data": "str",
        "reply_to": "id",
        "issued_at": "nat",
        "time": "nat",
        "servers": "config",
    },
    RequestVote: {
        "term": "nat",
        "candidate_id": "id",
        "last_log_index": "nat",
        "last_log_term": "nat",
        "pre_vote": "bool",
        "transfer": "bool",
    },
    RequestVoteResponse: {"term": "nat", "voter_id": "id", "granted": "bool", "pre_vote": "bool"},
    AppendEntries: {
        "term": "nat",
        "leader_id": "id",
        "prev_log_index": "nat",
        "prev_log_term": "nat",
        "entries": "entries",
        "leader_commit": "nat",
        "quiesce": "bool",
        "read_round": "nat",
    },
    AppendEntriesResponse: {
        "term": "nat",
        "follower_id": "id",
        "success": "bool",
        "match_index": "nat",
        "conflict_index": "nat",
        "conflict_term": "nat",
        "read_round": "nat",
    },
    InstallSnapshot: {
        "term": "nat",
        "leader_id": "id",
        "last_index": "nat",
        "last_term": "nat",
        "servers": "ids",
        "offset": "nat",
        "data": "str",
        "done": "bool",
    },
    InstallSnapshotResponse: {
        "term": "nat",
        "follower_id": "id",
        "last_index": "nat",
        "next_offset": "nat",
        "done": "bool",
    },
    TimeoutNow: {"term": "nat", "leader_id": "id"},
    TransferLeadership: {"target": "id"},
    ChangeMembership: {"server": "id", "add": "bool"},
    ClientRequest: {
        "client_id": "id",
        "seq": "nat",
        "data": "str",
        "reply_to": "id",
        "hops": "nat",
        "issued_at": "nat",
        "read_only": "bool",
    },
    ClientResponse: {
        "client_id": "id",
        "seq": "nat",
        "status": "status",
        "result": "str",
        "index": "nat",
        "term": "nat",
        "leader_hint": "id",
    },
    Tick: {"now": "nat"},
}


# The body field that names a Raft message's sender: a server only ever sends its own id there,
# so a message whose body names another server than its envelope is refused.
SENDER_FIELDS: dict[type, str] = {
    RequestVote: "candidate_id",
    RequestVoteResponse: "voter_id",
    AppendEntries: "leader_id",
    AppendEntriesResponse: "follower_id",
    InstallSnapshot: "leader_id",
    InstallSnapshotResponse: "follower_id",
    TimeoutNow: "leader_id",
}


def kind_of(message: Message | Tick) -> str:
    return KIND_OF[type(message)]


def to_json_value(record: Any) -> dict[str, Any]:
    """A record as plain JSON values (entries as lists of objects, enums as strings)."""
    out: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, tuple):
            value = [e if isinstance(e, str) else to_json_value(e) for e in value]
        elif isinstance(value, ClientStatus):
            value = value.value
        out[f.name] = value
    return out


def encode(envelope: Envelope) -> str:
    return json.dumps(
        {
            "v": WIRE_VERSION,
            "kind": kind_of(envelope.message),
            "from": envelope.sender,
            "to": envelope.to,
            "body": to_json_value(envelope.message),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def decode(raw: str | bytes) -> Envelope:
    _check_size(raw)
    try:
        doc = strict_json.loads(raw)
    except strict_json.JsonInputError as exc:
        raise WireError(str(exc)) from None
    if not isinstance(doc, dict):
        raise WireError("envelope must be a JSON object")
    _exact_keys(doc, {"v", "kind", "from", "to", "body"}, "envelope")
    if type(doc["v"]) is not int or doc["v"] != WIRE_VERSION:
        raise WireError(f"unsupported wire version {brief(doc['v'])} (expected {WIRE_VERSION})")
    cls = KINDS.get(doc["kind"]) if isinstance(doc["kind"], str) else None
    if cls is None or cls is Tick:
        raise WireError(f"unknown message kind {brief(doc['kind'])}")
    sender = _check("id", doc["from"], "from")
    to = _check("id", doc["to"], "to")
    message = decode_record(cls, doc["body"], "body")
    named = SENDER_FIELDS.get(cls)
    if named is not None and getattr(message, named) != sender:
        raise WireError(f"body.{named} {brief(getattr(message, named))} is not the sender")
    return Envelope(sender=sender, to=to, message=message)


def decode_record(cls: type, value: Any, where: str) -> Any:
    schema = SCHEMAS[cls]
    if not isinstance(value, dict):
        raise WireError(f"{where} must be an object")
    _exact_keys(value, set(schema), where)
    return cls(
        **{name: _check(kind, value[name], f"{where}.{name}") for name, kind in schema.items()}
    )


def _check_size(raw: str | bytes) -> None:
    # A character takes at most 4 bytes of UTF-8: only long non-ASCII text is encoded to be
    # measured.
    if isinstance(raw, bytes) or raw.isascii():
        size = len(raw)
    elif 4 * len(raw) <= MAX_WIRE_BYTES:
        return
    else:
        size = len(raw.encode("utf-8", errors="surrogatepass"))
    if size > MAX_WIRE_BYTES:
        raise WireError(f"message of {size} bytes exceeds the {MAX_WIRE_BYTES}-byte limit")


def _exact_keys(doc: dict[str, Any], expected: set[str], where: str) -> None:
    keys = set(doc)
    if keys != expected:
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        raise WireError(f"{where}: missing fields {missing}, unexpected fields {extra}")


def _check(kind: str, value: Any, where: str) -> Any:
    if kind == "nat":
        if type(value) is not int or not 0 <= value <= MAX_NAT:
            raise WireError(f"{where} must be an integer from 0 to {MAX_NAT}, got {brief(value)}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise WireError(f"{where} must be a boolean, got {brief(value)}")
        return value
    if kind in ("id", "str"):
        if not isinstance(value, str):
            raise WireError(f"{where} must be a string, got {type(value).__name__}")
        if kind == "id" and len(value) > MAX_ID_CHARS:
            raise WireError(f"{where} is longer than {MAX_ID_CHARS} characters")
        return value
    if kind == "status":
        try:
            return ClientStatus(value)
        except ValueError:
            raise WireError(f"{where}: unknown status {brief(value)}") from None
    if kind in ("ids", "config"):
        if not isinstance(value, list) or len(value) > MAX_SERVERS:
            raise WireError(f"{where} must be a list of at most {MAX_SERVERS} ids")
        ids = tuple(_check("id", v, f"{where}[{i}]") for i, v in enumerate(value))
        # A configuration entry names at least one server; any other entry names none.
        if (kind == "ids" and not ids) or len(set(ids)) != len(ids):
            raise WireError(f"{where} must name at least one server, each once")
        return ids
    if kind == "entries":
        if not isinstance(value, list):
            raise WireError(f"{where} must be a list")
        return tuple(decode_record(Entry, e, f"{where}[{i}]") for i, e in enumerate(value))
    raise AssertionError(kind)
