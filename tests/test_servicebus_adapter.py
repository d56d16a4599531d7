"""The Service Bus bus at the SDK boundary, without a broker.

Messages are real `azure.servicebus.ServiceBusMessage` objects and batches real
`ServiceBusMessageBatch` objects (constructible offline, with the SDK's own size accounting);
only the sender is a fake. Deliveries are the `azure.functions.servicebus.ServiceBusMessage`
objects the trigger's converter builds. The emulator's Config.json is checked against the
settings convention.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.functions.servicebus import ServiceBusMessage as TriggerMessage
from azure.identity import DefaultAzureCredential
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.exceptions import MessagingEntityNotFoundError, OperationTimeoutError

from raft.adapters import servicebus_bus as sb
from raft.adapters.connections import Connection, MissingConnectionError, resolve
from raft.adapters.poison import (
    MAX_STORED_UTF16_BYTES,
    LoggingPoisonRecorder,
    Poison,
    TablePoisonRecorder,
    poison_row_key,
)
from raft.core import wire
from raft.core.messages import (
    AppendEntries,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    Entry,
    Envelope,
    RequestVote,
)
from raft.hosts import settings

ROOT = Path(__file__).resolve().parent.parent
EMULATOR_CONFIG = ROOT / "infra" / "servicebus-emulator" / "Config.json"
EMULATOR_CONNECTION_STRING = (
    "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;"
    "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
)
TTL_S = 120


def heartbeat(term: int = 3, to: str = "server-2") -> Envelope:
    return Envelope("server-1", to, AppendEntries(term, "server-1", 0, 0, (), 0))


def append(to: str, data: str, term: int = 3) -> Envelope:
    return Envelope(
        "server-1", to, AppendEntries(term, "server-1", 0, 0, (Entry(term, data=data),), 0)
    )


def body_of(message: ServiceBusMessage) -> bytes:
    return b"".join(message.body)


# ------------------------------------------------------------------------ fakes


class RecordingBatch(ServiceBusMessageBatch):
    """A real batch (the SDK's size accounting) that remembers what was added."""

    def __init__(self, max_size_in_bytes: int) -> None:
        super().__init__(max_size_in_bytes=max_size_in_bytes)
        self.added: list[ServiceBusMessage] = []

    def add_message(self, message: Any) -> None:
        super().add_message(message)
        self.added.append(message)


class FakeSender:
    """Stands in for ServiceBusSender: hands out real batches, records every send attempt."""

    def __init__(self, max_batch_bytes: int = 256 * 1024, failures: list[Exception] | None = None):
        self.max_batch_bytes = max_batch_bytes
        self.failures = list(failures or [])
        self.attempts: list[list[str]] = []
        self.sent: list[list[ServiceBusMessage]] = []
        self.closed = False

    def create_message_batch(self, max_size_in_bytes: int | None = None) -> RecordingBatch:
        return RecordingBatch(max_size_in_bytes or self.max_batch_bytes)

    def send_messages(self, message: Any, *, timeout: float | None = None) -> None:
        assert isinstance(message, RecordingBatch)
        self.attempts.append([m.message_id for m in message.added])
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(list(message.added))

    def close(self) -> None:
        self.closed = True

    @property
    def sent_messages(self) -> list[ServiceBusMessage]:
        return [m for batch in self.sent for m in batch]


class FakeClient:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class ListRecorder:
    def __init__(self) -> None:
        self.poisons: list[Poison] = []

    def record(self, poison: Poison) -> None:
        self.poisons.append(poison)


class FakeTable:
    def __init__(self) -> None:
        self.entities: list[dict[str, Any]] = []

    def create_entity(self, entity: dict[str, Any]) -> None:
        self.entities.append(entity)


class StaticCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("token", 2**31)


def delivery(body: bytes, properties: dict[str, Any] | None, message_id: str = "m-1") -> Any:
    return TriggerMessage(
        body=body,
        application_properties=properties or {},
        user_properties={},
        message_id=message_id,
        delivery_count=1,
    )


def make_bus(sender: FakeSender, **options: Any) -> sb.ServiceBusBus:
    return sb.ServiceBusBus(sender, ttl_s=TTL_S, **options)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# ------------------------------------------------------------------------ outgoing messages


def test_message_body_round_trips_through_decode_delivery() -> None:
    envelope = append("server-2", "put k v")
    message = sb.to_service_bus_message(envelope, TTL_S, "id-1")
    assert sb.decode_delivery(body_of(message), message.application_properties) == envelope


def test_message_properties_name_kind_sender_addressee_and_term() -> None:
    envelope = Envelope("server-3", "server-4", RequestVote(7, "server-3", 10, 6))
    message = sb.to_service_bus_message(envelope, TTL_S, "id-1")
    assert message.application_properties == {
        "kind": "request_vote",
        "sender": "server-3",
        sb.ADDRESSEE_PROPERTY: "server-4",
        "term": 7,
    }


def test_client_messages_carry_term_zero() -> None:
    request = Envelope("client-1", "server-1", ClientRequest("client-1", 1, "get k"))
    response = Envelope(
        "server-1", "client-1", ClientResponse("client-1", 1, ClientStatus.OK, term=5)
    )
    terms = [
        sb.to_service_bus_message(e, TTL_S, "i").application_properties["term"]
        for e in (request, response)
    ]
    assert terms == [0, 0]


def test_message_subject_is_the_kind_and_content_type_is_json() -> None:
    message = sb.to_service_bus_message(heartbeat(), TTL_S, "id-1")
    assert (message.subject, message.content_type) == ("append_entries", "application/json")


def test_message_time_to_live_is_the_configured_ttl() -> None:
    message = sb.to_service_bus_message(heartbeat(), 45, "id-1")
    assert message.time_to_live == timedelta(seconds=45)


def test_message_id_is_the_one_given() -> None:
    assert sb.to_service_bus_message(heartbeat(), TTL_S, "abc.1").message_id == "abc.1"


def test_identical_heartbeats_get_distinct_message_ids() -> None:
    sender = FakeSender()
    bus = make_bus(sender)
    bus.publish([heartbeat()])
    bus.publish([heartbeat()])
    first, second = sender.sent_messages
    assert body_of(first) == body_of(second)
    assert first.message_id != second.message_id


def test_retried_send_reuses_the_same_message_ids() -> None:
    sender = FakeSender(failures=[OperationTimeoutError()])
    bus = make_bus(sender)
    bus.publish([heartbeat(to="server-2"), heartbeat(to="server-3")])
    assert len(sender.attempts) == 2
    assert sender.attempts[0] == sender.attempts[1]
    assert (bus.sends, bus.published) == (1, 2)


def test_buses_started_separately_never_share_message_ids() -> None:
    a, b = FakeSender(), FakeSender()
    make_bus(a).publish([heartbeat()])
    make_bus(b).publish([heartbeat()])
    assert a.sent_messages[0].message_id != b.sent_messages[0].message_id


def test_message_id_names_the_sender_and_fits_the_service_bus_limit() -> None:
    ids = sb.MessageIds(boot_id="boot")
    assert ids("server-1") == "server-1.boot.1"
    assert len(ids("x" * 128)) <= sb.MAX_MESSAGE_ID_CHARS


# ------------------------------------------------------------------------ batching


def test_many_envelopes_go_in_one_batch_send() -> None:
    sender = FakeSender()
    bus = make_bus(sender)
    envelopes = [heartbeat(to=f"server-{i % 5 + 1}") for i in range(200)]
    bus.publish(envelopes)
    assert (bus.sends, bus.published) == (1, 200)


def test_a_full_batch_is_sent_and_a_new_one_started() -> None:
    sender = FakeSender(max_batch_bytes=4096)
    bus = make_bus(sender)
    envelopes = [append("server-2", f"{i:04d}" * 100) for i in range(20)]
    bus.publish(envelopes)
    delivered = [
        sb.decode_delivery(body_of(m), m.application_properties) for m in sender.sent_messages
    ]
    assert delivered == envelopes
    assert 1 < bus.sends < len(envelopes)
    assert bus.sends == len(sender.sent)


def test_an_envelope_too_large_for_an_empty_batch_raises_clearly() -> None:
    sender = FakeSender(max_batch_bytes=2048)
    bus = make_bus(sender)
    with pytest.raises(sb.MessageTooLargeError, match=r"append_entries server-1->server-2"):
        bus.publish([append("server-2", "x" * 4096)])
    assert sender.attempts == []


def test_other_envelopes_are_still_sent_when_one_is_too_large() -> None:
    sender = FakeSender(max_batch_bytes=2048)
    bus = make_bus(sender)
    with pytest.raises(sb.MessageTooLargeError):
        bus.publish(
            [heartbeat(to="server-2"), append("server-3", "x" * 4096), heartbeat(to="server-4")]
        )
    assert [m.application_properties["addressee"] for m in sender.sent_messages] == [
        "server-2",
        "server-4",
    ]


def test_an_envelope_over_the_wire_limit_is_refused_before_the_sdk() -> None:
    sender = FakeSender(max_batch_bytes=1024 * 1024)
    bus = make_bus(sender)
    with pytest.raises(sb.MessageTooLargeError, match="wire limit"):
        bus.publish([append("server-2", "x" * wire.MAX_WIRE_BYTES)])
    assert sender.attempts == []


def test_publishing_nothing_sends_nothing() -> None:
    sender = FakeSender()
    bus = make_bus(sender)
    bus.publish([])
    assert (sender.attempts, bus.sends) == ([], 0)


def test_a_definite_send_failure_is_not_resent() -> None:
    sender = FakeSender(failures=[MessagingEntityNotFoundError()])
    with pytest.raises(MessagingEntityNotFoundError):
        make_bus(sender).publish([heartbeat()])
    assert len(sender.attempts) == 1


def test_an_ambiguous_send_failure_is_raised_after_the_last_attempt() -> None:
    sender = FakeSender(failures=[OperationTimeoutError(), OperationTimeoutError()])
    bus = make_bus(sender, send_attempts=2)
    with pytest.raises(OperationTimeoutError):
        bus.publish([heartbeat()])
    assert (len(sender.attempts), bus.sends, bus.published) == (2, 0, 0)


def test_close_closes_the_sender_and_the_client() -> None:
    sender, client = FakeSender(), FakeClient()
    make_bus(sender, client=client).close()
    assert sender.closed and client.closed


# ------------------------------------------------------------------------ building from settings


def test_from_connection_builds_an_emulator_client_without_network(no_network: None) -> None:
    connection = resolve(
        settings.SERVICE_BUS_CONNECTION,
        {settings.SERVICE_BUS_CONNECTION: EMULATOR_CONNECTION_STRING},
        "servicebus",
    )
    bus = sb.ServiceBusBus.from_connection(connection, settings.DEFAULTS[settings.TOPIC], TTL_S)
    client = bus._client
    assert client.fully_qualified_namespace == "localhost"
    assert client._config.use_tls is False
    assert bus._sender.entity_name == "rafttopic"
    bus.close()


def test_from_connection_uses_the_credential_for_a_namespace(no_network: None) -> None:
    credential = StaticCredential()
    connection = Connection(endpoint="raft-ns.servicebus.windows.net")
    bus = sb.ServiceBusBus.from_connection(connection, "rafttopic", TTL_S, credential=credential)
    assert bus._client.fully_qualified_namespace == "raft-ns.servicebus.windows.net"
    assert bus._client._credential is credential
    bus.close()


def test_from_connection_defaults_to_default_azure_credential(no_network: None) -> None:
    connection = Connection(endpoint="raft-ns.servicebus.windows.net")
    bus = sb.ServiceBusBus.from_connection(connection, "rafttopic", TTL_S)
    assert isinstance(bus._client._credential, DefaultAzureCredential)
    bus.close()


def test_from_connection_without_a_setting_raises() -> None:
    with pytest.raises(MissingConnectionError):
        sb.ServiceBusBus.from_connection(Connection(), "rafttopic", TTL_S)


# ------------------------------------------------------------------------ decoding deliveries


def props_for(envelope: Envelope) -> dict[str, Any]:
    return dict(sb.to_service_bus_message(envelope, TTL_S, "i").application_properties)


def test_decode_delivery_rejects_garbage_bytes() -> None:
    with pytest.raises(wire.WireError):
        sb.decode_delivery(b"\x00\x01garbage", {})


def test_decode_delivery_rejects_json_that_is_not_utf8() -> None:
    # json.loads would accept UTF-16; the wire format is UTF-8 only.
    with pytest.raises(wire.WireError, match="UTF-8"):
        sb.decode_delivery(wire.encode(heartbeat()).encode("utf-16"), {})


def test_decode_delivery_rejects_a_contradicting_addressee_property() -> None:
    envelope = heartbeat(to="server-2")
    with pytest.raises(wire.WireError, match="addressee"):
        sb.decode_delivery(
            wire.encode(envelope).encode(), {**props_for(envelope), "addressee": "server-3"}
        )


def test_decode_delivery_rejects_a_contradicting_sender_property() -> None:
    envelope = heartbeat()
    with pytest.raises(wire.WireError, match="sender"):
        sb.decode_delivery(
            wire.encode(envelope).encode(), {**props_for(envelope), "sender": "server-9"}
        )


def test_decode_delivery_rejects_an_unknown_wire_version() -> None:
    doc = json.loads(wire.encode(heartbeat()))
    doc["v"] = 2
    with pytest.raises(wire.WireError, match="version"):
        sb.decode_delivery(json.dumps(doc).encode(), {})


def test_decode_delivery_rejects_an_oversized_body() -> None:
    with pytest.raises(wire.WireError, match="exceeds"):
        sb.decode_delivery(b" " * (wire.MAX_WIRE_BYTES + 1), {})


def test_decode_delivery_rejects_a_message_for_another_server() -> None:
    envelope = heartbeat(to="server-2")
    with pytest.raises(wire.WireError, match="delivered to"):
        sb.decode_delivery(wire.encode(envelope).encode(), {}, expected_addressee="server-3")


def test_decode_delivery_accepts_bytes_property_keys_and_values() -> None:
    envelope = heartbeat()
    props = {
        k.encode(): (v.encode() if isinstance(v, str) else v)
        for k, v in props_for(envelope).items()
    }
    assert sb.decode_delivery(wire.encode(envelope).encode(), props) == envelope


def test_receive_decodes_a_functions_service_bus_message() -> None:
    envelope = heartbeat()
    message = sb.to_service_bus_message(envelope, TTL_S, "id-1")
    recorder = ListRecorder()
    got = sb.receive(
        delivery(body_of(message), message.application_properties), recorder, server_id="server-2"
    )
    assert (got, recorder.poisons) == (envelope, [])


def test_receive_falls_back_to_user_properties() -> None:
    envelope = heartbeat(to="server-2")
    message = TriggerMessage(
        body=wire.encode(envelope).encode(),
        application_properties=None,  # type: ignore[arg-type]
        user_properties={"addressee": "server-3"},
        message_id="m-1",
    )
    assert sb.delivery_properties(message) == {"addressee": "server-3"}


def test_receive_records_a_malformed_message_and_returns_none() -> None:
    recorder = ListRecorder()
    got = sb.receive(
        delivery(b"not json", {"sender": "server-1"}, "m-42"), recorder, server_id="server-2"
    )
    assert got is None
    (poison,) = recorder.poisons
    assert (poison.message_id, poison.sender, poison.body, poison.server_id) == (
        "m-42",
        "server-1",
        b"not json",
        "server-2",
    )
    assert "not JSON" in poison.reason


# ------------------------------------------------------------------------ poison recorders


def test_logging_recorder_logs_reason_message_id_sender_and_a_bounded_body_prefix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    poison = Poison(
        reason="not JSON", body=b"z" * 10_000, message_id="m-7", properties={"sender": "s-1"}
    )
    with caplog.at_level(logging.ERROR, logger="raft.poison"):
        LoggingPoisonRecorder().record(poison)
    (rec,) = caplog.records
    fields = json.loads(rec.getMessage().split(": ", 1)[1])
    assert (fields["reason"], fields["message_id"], fields["sender"]) == ("not JSON", "m-7", "s-1")
    assert fields["body_prefix"] == "z" * 512 and fields["body_bytes"] == 10_000


def test_table_recorder_writes_a_poison_entity() -> None:
    table = FakeTable()
    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    recorder = TablePoisonRecorder(table, now=lambda: when)
    recorder.record(
        Poison(reason="bad", body=b"\xffabc", message_id="m-1", properties={b"kind": b"x"})
    )
    (entity,) = table.entities
    assert entity["PartitionKey"] == "poison"
    assert entity["RowKey"] == "20240506T070809.123456Z-m-1"
    assert (entity["Reason"], entity["Body"], json.loads(entity["Properties"])) == (
        "bad",
        "\\xffabc",
        {"kind": "x"},
    )


def test_table_recorder_bounds_the_stored_body() -> None:
    table = FakeTable()
    TablePoisonRecorder(table).record(Poison(reason="big", body=b"a" * 100_000, message_id="m"))
    assert len(table.entities[0]["Body"].encode("utf-16-le")) == MAX_STORED_UTF16_BYTES
    assert table.entities[0]["BodyBytes"] == 100_000


def test_poison_row_key_replaces_characters_table_storage_forbids() -> None:
    key = poison_row_key(datetime(2024, 1, 1, tzinfo=UTC), "a/b\\c#d?e\x01f")
    assert key.endswith("-a_b_c_d_e_f")


# ------------------------------------------------------------------------ emulator Config.json


def emulator_topic() -> dict[str, Any]:
    config = json.loads(EMULATOR_CONFIG.read_text())
    (namespace,) = config["UserConfig"]["Namespaces"]
    assert namespace["Name"] == "sbemulatorns"
    (topic,) = namespace["Topics"]
    return topic


def iso_seconds(duration: str) -> int:
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", duration)
    assert match, duration
    h, m, s = (int(g or 0) for g in match.groups())
    return h * 3600 + m * 60 + s


def test_emulator_topic_is_the_default_topic() -> None:
    assert emulator_topic()["Name"] == settings.DEFAULTS[settings.TOPIC]


def test_emulator_declares_one_subscription_per_default_server() -> None:
    names = [s["Name"] for s in emulator_topic()["Subscriptions"]]
    assert names == settings.server_ids(int(settings.DEFAULTS[settings.SERVER_COUNT]))


def test_emulator_subscriptions_filter_on_the_addressee_property() -> None:
    for subscription in emulator_topic()["Subscriptions"]:
        assert subscription["Rules"] == [
            {
                "Name": settings.SUBSCRIPTION_RULE,
                "Properties": {
                    "FilterType": "Correlation",
                    "CorrelationFilter": {
                        "Properties": {sb.ADDRESSEE_PROPERTY: subscription["Name"]}
                    },
                },
            }
        ]


def test_emulator_subscriptions_dead_letter_expired_and_hopeless_messages() -> None:
    for subscription in emulator_topic()["Subscriptions"]:
        props = subscription["Properties"]
        assert props["DeadLetteringOnMessageExpiration"] is True
        assert props["MaxDeliveryCount"] == 10
        assert props["RequiresSession"] is False


def test_emulator_time_to_live_is_the_default_message_ttl() -> None:
    ttl = int(settings.DEFAULTS[settings.MESSAGE_TTL_S])
    topic = emulator_topic()
    assert iso_seconds(topic["Properties"]["DefaultMessageTimeToLive"]) == ttl
    for subscription in topic["Subscriptions"]:
        assert iso_seconds(subscription["Properties"]["DefaultMessageTimeToLive"]) == ttl


def test_emulator_topic_detects_duplicates() -> None:
    props = emulator_topic()["Properties"]
    assert props["RequiresDuplicateDetection"] is True
    assert iso_seconds(props["DuplicateDetectionHistoryTimeWindow"]) >= 20
