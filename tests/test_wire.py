"""The wire format: every message round-trips, and anything malformed raises WireError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    Entry,
    Envelope,
    RequestVote,
    RequestVoteResponse,
)
from raft.core.wire import MAX_NAT, MAX_WIRE_BYTES, WIRE_VERSION, WireError, decode, encode
from tests.fuzzing import sent_by_its_sender

nat = st.integers(min_value=0, max_value=MAX_NAT)
ident = st.text(max_size=20)
entry = st.builds(Entry, nat, ident, nat, st.text(max_size=50), ident)
message = st.one_of(
    st.builds(RequestVote, nat, ident, nat, nat, st.booleans()),
    st.builds(RequestVoteResponse, nat, ident, st.booleans(), st.booleans()),
    st.builds(AppendEntries, nat, ident, nat, nat, st.lists(entry, max_size=4).map(tuple), nat),
    st.builds(AppendEntriesResponse, nat, ident, st.booleans(), nat, nat, nat),
    st.builds(ClientRequest, ident, nat, st.text(max_size=50), ident, nat),
    st.builds(
        ClientResponse,
        ident,
        nat,
        st.sampled_from(ClientStatus),
        st.text(max_size=20),
        nat,
        nat,
        ident,
    ),
)


@given(message, ident, ident)
def test_every_message_round_trips(m: object, sender: str, to: str) -> None:
    # A server's own messages name it in their body as well as in the envelope.
    envelope = sent_by_its_sender(Envelope(sender, to, m))  # type: ignore[arg-type]
    assert decode(encode(envelope)) == envelope


def test_a_raft_message_whose_body_names_another_sender_is_rejected() -> None:
    forged = Envelope("server-9", "s2", RequestVote(3, "s1", 4, 2, False))
    with pytest.raises(WireError, match="candidate_id 's1' is not the sender"):
        decode(encode(forged))


def valid() -> dict[str, object]:
    return json.loads(encode(Envelope("s1", "s2", RequestVote(3, "s1", 4, 2, False))))


def mutated(**changes: object) -> str:
    doc = valid()
    doc.update(changes)
    return json.dumps(doc)


def body_with(**changes: object) -> str:
    doc = valid()
    body = dict(doc["body"])  # type: ignore[call-overload]
    body.update(changes)
    doc["body"] = body
    return json.dumps(doc)


BAD = {
    "not json": "{nope",
    "not an object": "[1, 2]",
    "unknown version": mutated(v=WIRE_VERSION + 1),
    "version as bool": mutated(v=True),
    "unknown kind": mutated(kind="install_snapshot"),
    "tick over the wire": mutated(kind="tick", body={"now": 1}),
    "missing envelope field": json.dumps({k: v for k, v in valid().items() if k != "to"}),
    "extra envelope field": mutated(extra=1),
    "sender not a string": mutated(**{"from": 7}),
    "missing body field": json.dumps({**valid(), "body": {"term": 1}}),
    "extra body field": body_with(bonus=True),
    "term as string": body_with(term="3"),
    "term as bool": body_with(term=True),
    "negative term": body_with(term=-1),
    "float index": body_with(last_log_index=1.5),
    "flag as int": body_with(pre_vote=1),
    "overlong id": body_with(candidate_id="x" * 500),
    "body not object": mutated(body=[]),
}


@pytest.mark.parametrize("raw", BAD.values(), ids=BAD.keys())
def test_malformed_message_raises_wire_error(raw: str) -> None:
    with pytest.raises(WireError):
        decode(raw)


def test_entries_must_be_a_list_of_valid_entries() -> None:
    doc = json.loads(encode(Envelope("s1", "s2", AppendEntries(1, "s1", 0, 0, (), 0))))
    doc["body"]["entries"] = [{"term": 1}]
    with pytest.raises(WireError, match=r"entries\[0\]"):
        decode(json.dumps(doc))


def test_unknown_client_status_is_rejected() -> None:
    doc = json.loads(encode(Envelope("s1", "c", ClientResponse("c", 1, ClientStatus.OK))))
    doc["body"]["status"] = "maybe"
    with pytest.raises(WireError, match="status"):
        decode(json.dumps(doc))


def test_oversized_message_is_rejected_before_parsing() -> None:
    with pytest.raises(WireError, match="exceeds"):
        decode(b" " * (MAX_WIRE_BYTES + 1))


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(WireError):
        decode(b"\xff\xfe{}")
