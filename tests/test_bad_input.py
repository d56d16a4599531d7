"""One rule for bad input at every boundary (docs/bad-input.md): the HTTP API, a Service Bus
delivery, the node handler and the application's validation refuse it with their documented
error, say what is wrong, change nothing, and never raise anything else. Limits are explicit
and the same everywhere, so what the API accepts is never refused later for its content."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import pytest
from azure.functions.servicebus import ServiceBusMessage as TriggerMessage

from raft.adapters.poison import MAX_STORED_UTF16_BYTES, Poison, TablePoisonRecorder
from raft.adapters.servicebus_bus import receive, to_service_bus_message
from raft.app.kv import KeyValueStore
from raft.app.sessions import AppliedState, SessionPolicy
from raft.app.state_machine import CommandError, SnapshotError
from raft.core import strict_json, wire
from raft.core.messages import (
    ClientRequest,
    ClientStatus,
    Envelope,
    InstallSnapshot,
    RequestVote,
    TransferLeadership,
)
from raft.core.strict_json import MAX_DEPTH, JsonInputError
from raft.hosts.functions import FunctionsHost
from raft.hosts.http_api import ApiLimits, ClusterApi
from raft.hosts.settings import AppSettings
from tests.helpers import ManualCluster


def nested(depth: int) -> str:
    """A JSON text whose arrays nest `depth` deep."""
    return "[" * depth + "]" * depth


def command_nested(depth: int) -> str:
    """A put whose command object nests `depth` deep in all (the object itself is level 1)."""
    return json.dumps({"op": "put", "key": "k", "value": 0})[:-2] + nested(depth - 1) + "}"


def at_stack_depth(frames: int, call: Callable[[], Any]) -> Any:
    """Run `call` with about `frames` frames already on the stack."""
    if frames <= 0:
        return call()
    return at_stack_depth(frames - 1, call)


def outcome(call: Callable[[], Any]) -> str:
    try:
        call()
    except (CommandError, JsonInputError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "accepted"


# --------------------------------------------------------------------- the shared parser


def test_nesting_at_the_limit_parses_and_one_level_deeper_is_refused() -> None:
    assert strict_json.loads(nested(MAX_DEPTH)) is not None
    with pytest.raises(JsonInputError, match=f"more than {MAX_DEPTH} levels"):
        strict_json.loads(nested(MAX_DEPTH + 1))


def test_nesting_far_beyond_the_stack_limit_is_refused_without_recursion_error() -> None:
    with pytest.raises(JsonInputError, match="levels deep"):
        strict_json.loads(nested(100_000))


def test_brackets_inside_strings_do_not_count_toward_the_depth() -> None:
    text = json.dumps(["[" * 100, {"k": "{" * 100 + '\\"]'}])
    assert strict_json.nesting_depth(text) == 2
    assert strict_json.loads(text)[0] == "[" * 100


def test_unbalanced_brackets_are_refused_as_not_json() -> None:
    with pytest.raises(JsonInputError, match="not JSON"):
        strict_json.loads("[" * 5000 + "}" * 5000)


def test_a_lone_surrogate_escape_is_refused_and_a_pair_is_accepted() -> None:
    with pytest.raises(JsonInputError, match="lone surrogate"):
        strict_json.loads(b'{"k": "\\ud800"}')
    with pytest.raises(JsonInputError, match="lone surrogate"):
        strict_json.loads(b'{"\\udfff": 1}')
    assert strict_json.loads(b'"\\ud83d\\ude00"') == "\U0001f600"


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"x": -Infinity}', "1e400", "-1e999"])
def test_numbers_json_cannot_carry_are_refused(text: str) -> None:
    with pytest.raises(JsonInputError, match="not JSON"):
        strict_json.loads(text)


@pytest.mark.parametrize(
    "raw", [b"\xff{}", b"\xef\xbb\xbf{}", '"x"'.encode("utf-16"), b'"\xed\xa0\x80"']
)
def test_bytes_must_be_utf8_without_a_byte_order_mark(raw: bytes) -> None:
    with pytest.raises(JsonInputError):
        strict_json.loads(raw)


# --------------------------------------------------------------------- application validation


@pytest.mark.parametrize("op", [{}, [], ["put"], 1, None, True])
def test_a_non_string_op_is_a_command_error(op: object) -> None:
    with pytest.raises(CommandError, match="unknown op"):
        KeyValueStore().validate(json.dumps({"op": op, "key": "k"}))


def test_validation_gives_the_same_answer_at_any_stack_depth() -> None:
    """The leader validates a few hundred frames deeper than the API: same text, same answer."""
    limit = sys.getrecursionlimit()
    for depth in (MAX_DEPTH, MAX_DEPTH + 1, 980, 5000):
        text = command_nested(depth)
        shallow = outcome(lambda t=text: KeyValueStore().validate(t))
        deep = outcome(
            lambda t=text: at_stack_depth(limit - 150, lambda: KeyValueStore().validate(t))
        )
        assert shallow == deep, depth
        assert (shallow == "accepted") == (depth <= MAX_DEPTH), depth


def test_apply_answers_a_malformed_command_with_an_error_result_instead_of_raising() -> None:
    result = json.loads(KeyValueStore().apply('{"op": {}, "key": "k"}'))
    assert result["ok"] is False and "unknown op" in result["error"]


# --------------------------------------------------------------------- the HTTP API


@pytest.fixture
def cluster() -> ManualCluster:
    c = ManualCluster(3)
    c.elect()
    return c


def api_for(cluster: ManualCluster) -> ClusterApi:
    return ClusterApi(
        cluster.servers,
        cluster.store,
        cluster.bus,
        ApiLimits(wait_s=5.0, poll_s=0.0),
        sleep=lambda _s: cluster.advance(10),
    )


HTTP_BAD_BODIES = {
    "non-string op": (b'{"op": {}, "key": "k"}', "unknown op"),
    "array op": (b'{"op": ["put"], "key": "k", "value": 1}', "unknown op"),
    "lone surrogate": (b'{"op": "put", "key": "k", "value": "\\ud800"}', "lone surrogate"),
    "lone surrogate key": (b'{"op": "get", "key": "\\udc00"}', "lone surrogate"),
    "nested past the limit": (command_nested(MAX_DEPTH + 1).encode(), "levels deep"),
    "nested past the stack": (command_nested(100_000)[:16_000].encode(), "not JSON"),
    "deep and balanced": (nested(5_000).encode(), "levels deep"),
    "NaN": (b'{"op": "put", "key": "k", "value": NaN}', "NaN"),
    "overflowing number": (b'{"op": "put", "key": "k", "value": 1e400}', "too large"),
    "not UTF-8": (b'{"op": "get", "key": "\xff"}', "UTF-8"),
    "byte-order mark": (b'\xef\xbb\xbf{"op": "get", "key": "k"}', "BOM"),
    "trailing text": (b'{"op": "get", "key": "k"} {}', "Extra data"),
    "empty body": (b"", "not JSON"),
}


@pytest.mark.parametrize(("body", "says"), HTTP_BAD_BODIES.values(), ids=HTTP_BAD_BODIES.keys())
def test_a_malformed_body_is_a_400_that_says_why_and_changes_nothing(
    cluster: ManualCluster, body: bytes, says: str
) -> None:
    before = {s: cluster.store.load(s) for s in cluster.servers}
    response = api_for(cluster).post_command(body, None)
    assert response.status == 400
    assert says in response.body["error"]
    assert {s: cluster.store.load(s) for s in cluster.servers} == before
    assert cluster.bus.pending() == 0


@pytest.mark.parametrize("request_id", ["ok\n", "", "x" * 101, "a b", "é", "a/b"])
def test_a_malformed_request_id_is_a_400_before_the_body_is_read(
    cluster: ManualCluster, request_id: str
) -> None:
    response = api_for(cluster).post_command(b"{not even json", request_id)
    assert response.status == 400 and "request id" in response.body["error"]


def test_a_command_at_the_nesting_limit_is_accepted_by_the_api_and_committed(
    cluster: ManualCluster,
) -> None:
    response = api_for(cluster).post_command(command_nested(MAX_DEPTH).encode(), "deep")
    assert response.status == 200 and response.body["result"] == {"ok": True, "previous": None}


LEADER_BAD_BODIES = {
    "not JSON": b"{server",
    "not an object": b'["server-1"]',
    "server not a string": b'{"server": {}}',
    "nested past the stack": nested(50_000).encode(),
    "lone surrogate": b'{"server": "\\ud800"}',
}


@pytest.mark.parametrize("body", LEADER_BAD_BODIES.values(), ids=LEADER_BAD_BODIES.keys())
def test_a_malformed_leadership_transfer_is_a_400_and_changes_nothing(
    cluster: ManualCluster, body: bytes
) -> None:
    before = {s: cluster.store.load(s) for s in cluster.servers}
    response = api_for(cluster).post_leader(body)
    assert response.status == 400 and response.body["error"]
    assert {s: cluster.store.load(s) for s in cluster.servers} == before
    assert cluster.bus.pending() == 0


def test_a_key_with_a_lone_surrogate_is_a_400_for_reads(cluster: ManualCluster) -> None:
    response = api_for(cluster).get_key("k\ud800")
    assert response.status == 400 and "lone surrogate" in response.body["error"]


# --------------------------------------------------------------------- through the bus


def test_a_non_string_op_through_the_bus_is_answered_rejected(cluster: ManualCluster) -> None:
    leader = cluster.handlers[cluster.leader()]
    before = leader.state().last_index
    (response,) = cluster.submit(ClientRequest("c", 1, '{"op": {}, "key": "k"}', "c"))
    assert response.status is ClientStatus.REJECTED and "unknown op" in response.result
    assert leader.state().last_index == before


def test_a_command_nested_past_the_limit_through_the_bus_is_answered_rejected(
    cluster: ManualCluster,
) -> None:
    (response,) = cluster.submit(ClientRequest("c", 1, command_nested(980), "c"))
    assert response.status is ClientStatus.REJECTED and "levels deep" in response.result


def test_a_non_string_op_through_the_service_bus_trigger_is_answered_rejected(
    cluster: ManualCluster,
) -> None:
    leader = cluster.leader()
    host = FunctionsHost(
        AppSettings.from_env({"RAFT_SERVER_COUNT": "3"}), cluster.store, cluster.bus
    )
    request = Envelope("c", leader, ClientRequest("c", 1, '{"op": {}, "key": "k"}', "c"))
    delivery = TriggerMessage(
        body=wire.encode(request).encode(),
        message_id="m-1",
        application_properties={"addressee": leader, "sender": "c", "kind": "client_request"},
        user_properties={},
    )
    before = cluster.store.read_state(leader)
    host.on_messages(leader, [delivery])  # returns: the message completes
    (reply,) = cluster.bus.drain("c")
    assert reply.message.status is ClientStatus.REJECTED  # type: ignore[union-attr]
    assert "unknown op" in reply.message.result  # type: ignore[union-attr]
    assert cluster.store.read_state(leader) == before


WIRE_BAD = {
    "lone surrogate in a command": wire.encode(
        Envelope("c", "server-1", ClientRequest("c", 1, '{"op":"get","key":"\\ud800"}'))
    ).replace("\\\\ud800", "\\ud800"),
    "term beyond 2**53 - 1": wire.encode(
        Envelope("server-2", "server-1", RequestVote(2**53, "server-2", 0, 0))
    ),
    "version as a float": wire.encode(
        Envelope("server-2", "server-1", RequestVote(1, "server-2", 0, 0))
    ).replace('"v":1', '"v":1.0'),
    "nested past the stack": '{"v":1,"kind":"tick","from":"a","to":"b","body":'
    + nested(50_000)
    + "}",
}


@pytest.mark.parametrize("raw", WIRE_BAD.values(), ids=WIRE_BAD.keys())
def test_a_malformed_wire_message_raises_only_wire_error(raw: str) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(raw.encode())


class Delivery:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.application_properties = {"addressee": "server-1"}
        self.message_id = "m-1"
        self.delivery_count = 1

    def get_body(self) -> bytes:
        return self.body


class Table:
    def __init__(self) -> None:
        self.entities: list[dict[str, Any]] = []

    def create_entity(self, entity: dict[str, Any]) -> None:
        self.entities.append(entity)


def test_a_malformed_delivery_is_recorded_and_stepped_by_no_one() -> None:
    table = Table()
    delivered = receive(Delivery(b'{"v": 1, ' + b"[" * 10_000), TablePoisonRecorder(table))
    assert delivered is None
    (entity,) = table.entities
    assert "not JSON" in entity["Reason"]


def test_a_leadership_transfer_can_be_sent_on_service_bus() -> None:
    """It carries no term; the term property of an operator's message is 0."""
    message = to_service_bus_message(
        Envelope("operator", "server-1", TransferLeadership("server-2")), 120, "m-1"
    )
    assert message.application_properties is not None
    assert message.application_properties["term"] == 0


# --------------------------------------------------------------------- snapshots


def applied_state(**fields: object) -> str:
    """An applied-state snapshot (raft/app/sessions.py) with `fields` replaced."""
    doc: dict[str, object] = {
        "last_applied": 1,
        "clock": 0,
        "floor": 0,
        "expired": [],
        "machine": "{}",
        "sessions": [],
    }
    return json.dumps({**doc, **fields})


def test_a_well_formed_applied_state_snapshot_restores() -> None:
    restored = AppliedState.restore(
        applied_state(sessions=[["c", 1, "r", 1, 1, 0, 0, True]]), KeyValueStore, SessionPolicy()
    )
    assert restored.last_applied == 1 and restored.sessions["c"].result == "r"


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        "[]",
        '{"last_applied": 1}',
        applied_state(last_applied="1"),
        applied_state(machine="[]"),
        applied_state(expired=[1]),
        applied_state(sessions=[["c", "1", "", 1, 1, 0, 0, False]]),
        applied_state(sessions=[["c", 1, "", 1, 1, 0, 0, "no"]]),
        applied_state(sessions=[["c", 1]]),
    ],
)
def test_an_unreadable_applied_state_snapshot_raises_only_snapshot_error(data: str) -> None:
    with pytest.raises(SnapshotError):
        AppliedState.restore(data, KeyValueStore, SessionPolicy())


@pytest.mark.parametrize(
    ("data", "servers"),
    [
        ("garbage", ("server-1", "server-2", "server-3")),
        (applied_state(last_applied=3), ("server-1", "server-2", "server-3")),
    ],
    ids=["unreadable", "holding another index"],
)
def test_a_snapshot_this_server_cannot_use_is_refused_and_changes_nothing(
    cluster: ManualCluster, data: str, servers: tuple[str, ...]
) -> None:
    leader = cluster.leader()
    follower = next(s for s in cluster.servers if s != leader)
    term = cluster.handlers[leader].state().current_term
    before = cluster.store.read_state(follower)
    snapshot = InstallSnapshot(term, leader, 50, term, servers, 0, data, True)
    cluster.handlers[follower].handle([Envelope(leader, follower, snapshot)], cluster.now)
    assert cluster.store.read_state(follower) == before
    assert cluster.bus.drain(leader) == []


# --------------------------------------------------------------------- the poison recorder


def utf16_bytes(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass"))


@pytest.mark.parametrize("char", ["\U0001f600", "é", "a", "\u4e00"])
def test_a_poison_body_is_cut_to_fit_one_table_property_in_utf16(char: str) -> None:
    table = Table()
    body = (char * 40_000).encode()
    TablePoisonRecorder(table).record(Poison(reason="bad", body=body, message_id="m"))
    stored = table.entities[0]["Body"]
    assert utf16_bytes(stored) <= MAX_STORED_UTF16_BYTES
    assert stored == char * len(stored)  # whole characters, never half of a pair
    assert utf16_bytes(stored) > MAX_STORED_UTF16_BYTES - 4


def test_poison_properties_are_cut_to_fit_one_table_property() -> None:
    table = Table()
    properties = {f"p{i}": "\U0001f600" * 1000 for i in range(20)}
    TablePoisonRecorder(table).record(Poison("bad", b"x", "m", properties=properties))
    assert utf16_bytes(table.entities[0]["Properties"]) <= MAX_STORED_UTF16_BYTES


def test_an_emoji_body_is_recorded_by_table_storage(azurite: str) -> None:
    from azure.data.tables import TableServiceClient

    service = TableServiceClient.from_connection_string(azurite)
    table = service.create_table_if_not_exists("poisonemoji")
    body = ("\U0001f600" * 40_000).encode()
    TablePoisonRecorder(table).record(Poison(reason="bad", body=body, message_id="m"))
    (kept,) = list(table.query_entities("PartitionKey eq 'poison'"))
    assert kept["BodyBytes"] == len(body)
    assert utf16_bytes(kept["Body"]) <= MAX_STORED_UTF16_BYTES
