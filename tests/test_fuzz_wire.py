"""Fuzzing the Service Bus boundary: valid wire messages, mutated byte by byte and field by
field, through the wire decoder, the trigger's `receive` with the poison recorder, and the
whole Service Bus trigger of the Functions host. Only documented outcomes may follow: a
decoded envelope, `WireError`, a poison record that Table Storage accepts; never another
exception, and a batch of nothing but poison changes no state.

`RAFT_FUZZ_EXAMPLES` sets how many inputs each test tries (scripts/fuzz)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft.adapters.poison import Poison, TablePoisonRecorder
from raft.adapters.servicebus_bus import receive, to_service_bus_message
from raft.adapters.table_rows import check_entity
from raft.core import wire
from raft.core.messages import Envelope
from raft.hosts.functions import FunctionsHost
from raft.hosts.settings import AppSettings
from tests.fuzzing import SERVERS, envelope, fuzz_settings, mutate, tally
from tests.helpers import ManualCluster


class Delivery:
    """What the trigger hands the function for one message (the attributes `receive` reads)."""

    def __init__(
        self, body: bytes, properties: dict[Any, Any], message_id: Any, delivery_count: Any
    ) -> None:
        self.body = body
        self.application_properties = properties
        self.message_id = message_id
        self.delivery_count = delivery_count

    def get_body(self) -> bytes:
        return self.body


class ClusterClock:
    def __init__(self, cluster: ManualCluster) -> None:
        self.cluster = cluster

    def now_ms(self) -> int:
        return self.cluster.now


class CheckedTable:
    """A table that refuses what Table Storage refuses: a property over 64 KiB in UTF-16, an
    entity over 1 MiB, or a RowKey with characters it forbids."""

    def __init__(self) -> None:
        self.entities: list[dict[str, Any]] = []

    def create_entity(self, entity: dict[str, Any]) -> None:
        check_entity(entity, "poison")
        row_key = entity["RowKey"]
        assert len(row_key) <= 512 and not any(c in row_key for c in "/\\#?")
        assert all(ord(c) > 0x1F and not 0x7F <= ord(c) <= 0x9F for c in row_key)
        self.entities.append(entity)


def properties_for(env: Envelope) -> dict[str, Any]:
    return {"addressee": env.to, "sender": env.sender, "kind": wire.kind_of(env.message)}


property_value = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.just("\U0001f600" * 20_000),
)
extra_properties = st.dictionaries(
    st.one_of(st.text(max_size=10), st.binary(max_size=10)), property_value, max_size=4
)


def delivered(data: st.DataObject, env: Envelope) -> Delivery:
    """A mutated encoding of `env`, with its own properties (sometimes contradicting the body),
    or others, and any message id."""
    raw = mutate(data, wire.encode(env).encode())
    properties: dict[Any, Any] = {}
    if data.draw(st.booleans(), label="own properties"):
        properties.update(properties_for(env))
    properties.update(data.draw(extra_properties, label="properties"))
    message_id = data.draw(
        st.one_of(st.none(), st.text(max_size=300), st.integers()), label="message id"
    )
    return Delivery(raw, properties, message_id, data.draw(st.one_of(st.none(), st.integers())))


@fuzz_settings()
@given(st.data(), envelope)
def test_a_mutated_wire_message_decodes_or_raises_only_wire_error(
    data: st.DataObject, env: Envelope
) -> None:
    raw = mutate(data, wire.encode(env).encode())
    try:
        decoded = wire.decode(raw)
    except wire.WireError as exc:
        assert str(exc)
        tally("wire decoder", "WireError")
        return
    # Whatever it accepts, it can send on unchanged.
    assert wire.decode(wire.encode(decoded)) == decoded
    tally("wire decoder", "decoded")


@fuzz_settings()
@given(st.data(), envelope)
def test_any_delivery_is_decoded_or_recorded_where_table_storage_accepts_it(
    data: st.DataObject, env: Envelope
) -> None:
    server_id = data.draw(st.sampled_from(SERVERS), label="subscription")
    if data.draw(st.booleans(), label="addressed to the subscription's server"):
        env = Envelope(env.sender, server_id, env.message)
    message = delivered(data, env)
    table = CheckedTable()
    got = receive(message, TablePoisonRecorder(table), server_id=server_id)
    if got is None:
        (entity,) = table.entities
        assert entity["Reason"] and entity["ServerId"] == server_id
        tally("receive and poison recorder", "recorded")
    else:
        assert table.entities == [] and got.to == server_id
        tally("receive and poison recorder", "decoded")


@fuzz_settings(share=0.5)
@given(st.data(), st.lists(envelope, min_size=1, max_size=3), st.sampled_from(SERVERS))
def test_the_service_bus_trigger_never_raises_and_poison_alone_changes_nothing(
    data: st.DataObject, envelopes: list[Envelope], target: str
) -> None:
    cluster = ManualCluster(3)
    cluster.elect()
    table = CheckedTable()
    host = FunctionsHost(
        AppSettings.from_env({"RAFT_SERVER_COUNT": "3"}),
        cluster.store,
        cluster.bus,
        TablePoisonRecorder(table),
        ClusterClock(cluster),
    )
    # Half addressed to the target as they are, so some survive mutation and are stepped.
    batch = [delivered(data, Envelope(e.sender, target, e.message)) for e in envelopes]
    before = {s: cluster.store.read_state(s) for s in cluster.servers}
    host.on_messages(target, batch)
    poisoned = len(table.entities)
    if poisoned == len(batch):
        assert {s: cluster.store.read_state(s) for s in cluster.servers} == before
    for _ in range(poisoned):
        tally("Service Bus trigger", "recorded as poison")
    for _ in range(len(batch) - poisoned):
        tally("Service Bus trigger", "stepped")


@fuzz_settings()
@given(st.binary(max_size=300), extra_properties, st.text(max_size=2000))
def test_the_poison_recorder_stores_anything_within_table_storage_limits(
    body: bytes, properties: dict[Any, Any], reason: str
) -> None:
    table = CheckedTable()
    TablePoisonRecorder(table).record(Poison(reason, body * 300, "m", properties, "server-1"))
    (entity,) = table.entities
    assert entity["BodyBytes"] == 300 * len(body)
    tally("poison recorder", "recorded")


@pytest.mark.parametrize("kind", sorted(set(wire.KINDS) - {"tick"}))
@fuzz_settings(share=0.1)
@given(data=st.data())
def test_every_kind_of_message_can_be_put_on_service_bus(kind: str, data: st.DataObject) -> None:
    """Every kind the wire format knows, today's and any added later, gets its properties."""
    message = data.draw(st.from_type(wire.KINDS[kind]))
    sent = to_service_bus_message(Envelope("server-1", "server-2", message), 120, "m-1")
    assert sent.application_properties is not None
    assert sent.application_properties["kind"] == kind
    assert isinstance(sent.application_properties["term"], int)
