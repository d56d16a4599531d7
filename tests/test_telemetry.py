"""Telemetry: the W3C trace context rides on every Service Bus message, so one trace follows
a command from its HTTP call through every server that replicates it; and without
OpenTelemetry installed nothing changes.

A real OpenTelemetry SDK records the spans here (the worker sets one up in Azure). Service Bus
is a loopback: what the bus sends is handed to the Service Bus trigger as the Functions host
would, application properties included, each delivery in an invocation of its own."""

from __future__ import annotations

import builtins
import importlib
import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from azure.functions.servicebus import ServiceBusMessage as TriggerMessage
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from opentelemetry import context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from raft.adapters.memory_store import InMemoryStore
from raft.adapters.servicebus_bus import ServiceBusBus, to_service_bus_message, trace_headers
from raft.core.messages import AppendEntries, Envelope
from raft.hosts import telemetry
from raft.hosts.functions import FunctionsHost
from raft.hosts.settings import AppSettings

SETTINGS = AppSettings.from_env(
    {"RAFT_SERVER_COUNT": "3", "RAFT_ELECTION_TIMEOUT_MS": "300", "RAFT_HEARTBEAT_MS": "100"}
)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (OpenTelemetry allows one), recording in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()


@pytest.fixture(autouse=True)
def fresh(spans: InMemorySpanExporter) -> None:
    spans.clear()


@contextmanager
def invocation() -> Iterator[None]:
    """A function invocation of its own: nothing of the caller's trace context is current."""
    token = context.attach(context.Context())
    try:
        yield
    finally:
        context.detach(token)


class Batch(ServiceBusMessageBatch):
    def __init__(self, max_size_in_bytes: int) -> None:
        super().__init__(max_size_in_bytes=max_size_in_bytes)
        self.added: list[ServiceBusMessage] = []

    def add_message(self, message: Any) -> None:
        super().add_message(message)
        self.added.append(message)


class Loopback:
    """A ServiceBusSender whose topic hands each message to its addressee's trigger, with the
    application properties as the Functions host passes them (string keys)."""

    def __init__(self) -> None:
        self.queued: dict[str, list[TriggerMessage]] = defaultdict(list)

    def create_message_batch(self, max_size_in_bytes: int | None = None) -> Batch:
        return Batch(max_size_in_bytes or 256 * 1024)

    def send_messages(self, batch: Batch, *, timeout: float | None = None) -> None:
        for sent in batch.added:
            properties = {
                (k.decode() if isinstance(k, bytes) else k): v
                for k, v in (sent.application_properties or {}).items()
            }
            self.queued[properties["addressee"]].append(
                TriggerMessage(
                    body=b"".join(sent.body),
                    message_id=sent.message_id,
                    application_properties=properties,
                    user_properties={},
                )
            )

    def close(self) -> None:
        pass


class Clock:
    now = 1_000_000

    def now_ms(self) -> int:
        return self.now


def cluster() -> tuple[FunctionsHost, Loopback, Clock]:
    sender, clock = Loopback(), Clock()
    bus = ServiceBusBus(sender, ttl_s=120, trace_context=telemetry.current_headers)
    host = FunctionsHost(SETTINGS, InMemoryStore(), bus, clock=clock)

    def step(_seconds: float = 0.0) -> None:
        """10 ms pass: the timer fires and every queued message is delivered, each in an
        invocation of its own, as on the platform."""
        clock.now += 10
        with invocation():
            host.on_timer()
        for server_id in SETTINGS.servers:
            batch = sender.queued.pop(server_id, [])
            if batch:
                with invocation():
                    host.on_messages(server_id, batch)

    host.api.sleep = step
    for _ in range(300):
        if host.api.find_leader() is not None:
            return host, sender, clock
        step()
    raise AssertionError("no leader elected")


def steps_in(trace_id: int, recorded: tuple[ReadableSpan, ...]) -> set[str]:
    return {
        str(s.attributes["raft.server"])
        for s in recorded
        if s.context.trace_id == trace_id and s.attributes and "raft.server" in s.attributes
    }


def test_one_trace_follows_a_command_from_the_http_call_through_every_server(
    spans: InMemorySpanExporter,
) -> None:
    host, _sender, _clock = cluster()
    spans.clear()
    command = json.dumps({"op": "put", "key": "k", "value": "v"}).encode()
    tracer = trace.get_tracer("test")
    with invocation(), tracer.start_as_current_span("POST /api/commands") as request:
        response = host.api.post_command(command, "traced-1")
    assert response.status == 200
    # The leader stepped the request, and both followers the entries it sent them.
    assert steps_in(request.get_span_context().trace_id, spans.get_finished_spans()) == set(
        SETTINGS.servers
    )


def test_a_published_message_carries_the_current_trace_context() -> None:
    sender = Loopback()
    bus = ServiceBusBus(sender, ttl_s=120, trace_context=telemetry.current_headers)
    heartbeat = Envelope("server-1", "server-2", AppendEntries(1, "server-1", 0, 0, (), 0))
    with trace.get_tracer("test").start_as_current_span("tick") as span:
        bus.publish([heartbeat])
    (delivered,) = sender.queued["server-2"]
    parent = delivered.application_properties["traceparent"]
    assert parent.split("-")[1] == format(span.get_span_context().trace_id, "032x")


def test_a_message_published_outside_any_trace_carries_none() -> None:
    sender = Loopback()
    bus = ServiceBusBus(sender, ttl_s=120, trace_context=telemetry.current_headers)
    with invocation():
        bus.publish([Envelope("server-1", "server-2", AppendEntries(1, "server-1", 0, 0, (), 0))])
    (delivered,) = sender.queued["server-2"]
    assert "traceparent" not in delivered.application_properties


def test_the_trace_property_is_written_once_even_when_the_sdk_traces_too() -> None:
    """The SDK adds b"traceparent" only if absent; a str key beside it would be a duplicate."""
    message = to_service_bus_message(
        Envelope("server-1", "server-2", AppendEntries(1, "server-1", 0, 0, (), 0)),
        120,
        "m-1",
        {"traceparent": TRACEPARENT},
    )
    keys = [k.decode() if isinstance(k, bytes) else k for k in message.application_properties]
    assert keys.count("traceparent") == 1
    assert message.application_properties[b"traceparent"] == TRACEPARENT


@pytest.mark.parametrize(
    "properties",
    [
        {"traceparent": "not a trace"},
        {"traceparent": TRACEPARENT.upper()},
        {"traceparent": 7},
        {"tracestate": "a=b"},
        {},
    ],
)
def test_a_malformed_or_missing_trace_context_is_ignored(properties: dict[str, Any]) -> None:
    assert trace_headers(properties) == {}


def test_a_batch_step_continues_the_first_traced_command_and_links_the_others(
    spans: InMemorySpanExporter,
) -> None:
    host, sender, _clock = cluster()
    leader = host.api.find_leader()
    assert leader is not None
    spans.clear()
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    follower = next(s for s in SETTINGS.servers if s != leader[0])
    heartbeat = to_service_bus_message(
        Envelope(leader[0], follower, AppendEntries(99, leader[0], 0, 0, (), 0)), 120, "h", {}
    )
    batch = [
        TriggerMessage(
            body=b"".join(heartbeat.body),
            message_id=f"m-{i}",
            application_properties={
                "addressee": follower,
                "sender": leader[0],
                "kind": "append_entries",
                "traceparent": parent,
            },
            user_properties={},
        )
        for i, parent in enumerate([TRACEPARENT, other])
    ]
    with invocation():
        host.on_messages(follower, batch)
    (step,) = [s for s in spans.get_finished_spans() if s.name == f"raft step {follower}"]
    assert format(step.context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    assert step.parent is not None and format(step.parent.span_id, "016x") == "b7ad6b7169203331"
    assert [format(link.context.trace_id, "032x") for link in step.links] == ["1" * 32]
    assert sender.queued  # the step answered, within the same trace


def test_without_opentelemetry_the_app_runs_and_carries_no_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = builtins.__import__

    def no_opentelemetry(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("opentelemetry"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_opentelemetry)
    bare = importlib.reload(telemetry)
    try:
        assert not bare.enabled() and bare.current_headers() == {}
        with bare.batch_span("step", [{"traceparent": TRACEPARENT}], {}):
            pass
    finally:
        monkeypatch.undo()
        importlib.reload(telemetry)
