"""The Azure Service Bus bus (azure-servicebus 7.x): one topic, one subscription per server.

Every envelope becomes one Service Bus message:

- body: ``wire.encode(envelope)`` (UTF-8 JSON), ``content_type`` ``application/json``;
- application properties ``kind``, ``sender``, ``addressee`` and ``term`` (the Raft term of an
  RPC; 0 for client requests and responses). Each server's subscription has a correlation
  filter on ``addressee`` (``ADDRESSEE_PROPERTY``), so it sees only its own traffic;
- ``subject`` = kind (shown by Service Bus Explorer and usable in filters);
- ``time_to_live``: a message nobody reads in time is stale for Raft anyway, and expiry
  dead-letters it (``DeadLetteringOnMessageExpiration``) rather than letting it pile up;
- ``message_id``: one id per logical send, for the topic's duplicate detection;
- application properties ``traceparent`` and ``tracestate`` (W3C trace context), when the bus
  was given a `trace_context` source and there is a current trace: one trace follows a
  command from the HTTP call through every server that handles it (raft/hosts/telemetry.py).
  The keys are bytes, as the SDK writes them: when Azure SDK tracing is on (the worker's
  OpenTelemetry distro turns it on) the SDK adds ``traceparent`` only if it is absent, so the
  property is never written twice.

Message ids and duplicate detection
-----------------------------------
Duplicate detection drops a message whose ``message_id`` the topic has already seen within its
history window. The id must therefore NOT be derived from the content: a leader legitimately
sends byte-identical heartbeats every period, and a content hash would make the broker silently
drop every repeat inside the window. Instead each envelope published gets
``"{sender}.{boot id}.{counter}"`` (a random boot id per bus instance, so a restarted process
never reuses an id). The id is fixed when the message object is built, so when the SDK retries a
send internally, or this adapter resends a batch after an ambiguous failure (timeout, dropped
connection), the retry carries the same ids and the broker keeps at most one copy. That is the
case duplicate detection is for; any other duplicate (redelivery to a consumer, a re-stepped
handler) is tolerated by the Raft core.

Receiving
---------
The Functions trigger hands the app an ``azure.functions.ServiceBusMessage``; pass it to
`receive`, which decodes it with `decode_delivery` or, if it is malformed, records it with a
`PoisonRecorder` and returns ``None`` so the function returns normally, the message completes
and nothing is retried or changed.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    OperationTimeoutError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
)

from raft.adapters.connections import Connection, MissingConnectionError
from raft.adapters.poison import Poison, PoisonRecorder, normalize_properties
from raft.core import wire
from raft.core.messages import (
    ChangeMembership,
    ClientRequest,
    ClientResponse,
    Envelope,
    TransferLeadership,
)

log = logging.getLogger("raft.servicebus")

CONTENT_TYPE = "application/json"
KIND_PROPERTY = "kind"
SENDER_PROPERTY = "sender"
# The application property naming the server a message is for; each subscription's correlation
# filter (raft.hosts.settings.SUBSCRIPTION_RULE, infra/modules/servicebus.bicep) matches it.
ADDRESSEE_PROPERTY = "addressee"
TERM_PROPERTY = "term"
# W3C trace context (see the module docstring for why the keys are bytes).
TRACE_PROPERTIES = {"traceparent": b"traceparent", "tracestate": b"tracestate"}
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
MAX_TRACESTATE_CHARS = 512
# Service Bus caps a message id at 128 characters.
MAX_MESSAGE_ID_CHARS = 128

# Failures after which a send may or may not have reached the broker: resending the same batch
# (same message ids) is safe because duplicate detection drops any copy that did arrive.
AMBIGUOUS_SEND_ERRORS: tuple[type[Exception], ...] = (
    OperationTimeoutError,
    ServiceBusConnectionError,
    ServiceBusCommunicationError,
    ServiceBusServerBusyError,
)


class MessageTooLargeError(ValueError):
    """An envelope too large for a Service Bus message (or for `wire.decode` at the receiver)."""


# ------------------------------------------------------------------------ outgoing messages


def message_term(envelope: Envelope) -> int:
    """The Raft term an RPC carries; 0 for client and operator messages (a ClientResponse's
    `term` is the committed entry's term, not the sender's current term; an operator's
    request to transfer leadership or change the membership has none)."""
    m = envelope.message
    if isinstance(m, ClientRequest | ClientResponse | TransferLeadership | ChangeMembership):
        return 0
    return m.term


def to_service_bus_message(
    envelope: Envelope, ttl_s: float, message_id: str, trace: Mapping[str, str] | None = None
) -> ServiceBusMessage:
    """One envelope as a Service Bus message; `message_id` comes from the caller (see the
    module docstring: unique per logical send, reused on a retry of that send)."""
    return _message(envelope, wire.encode(envelope), ttl_s, message_id, trace or {})


def _message(
    envelope: Envelope, body: str, ttl_s: float, message_id: str, trace: Mapping[str, str]
) -> ServiceBusMessage:
    kind = wire.kind_of(envelope.message)
    properties: dict[str | bytes, Any] = {
        KIND_PROPERTY: kind,
        SENDER_PROPERTY: envelope.sender,
        ADDRESSEE_PROPERTY: envelope.to,
        TERM_PROPERTY: message_term(envelope),
    }
    for name, key in TRACE_PROPERTIES.items():
        if name in trace:
            properties[key] = trace[name]
    return ServiceBusMessage(
        body,
        application_properties=properties,
        message_id=message_id,
        subject=kind,
        content_type=CONTENT_TYPE,
        time_to_live=timedelta(seconds=ttl_s),
    )


class MessageIds:
    """``"{sender}.{boot id}.{counter}"``: unique per send across processes and restarts."""

    def __init__(self, boot_id: str | None = None) -> None:
        self.boot_id = boot_id or uuid.uuid4().hex[:16]
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, sender: str) -> str:
        with self._lock:
            n = next(self._counter)
        room = MAX_MESSAGE_ID_CHARS - len(self.boot_id) - len(str(n)) - 2
        return f"{sender[: max(room, 0)]}.{self.boot_id}.{n}"


class SenderLike(Protocol):
    """The part of ``azure.servicebus.ServiceBusSender`` the bus uses."""

    def create_message_batch(
        self, max_size_in_bytes: int | None = None
    ) -> ServiceBusMessageBatch: ...

    def send_messages(self, message: Any, *, timeout: float | None = None) -> None: ...

    def close(self) -> None: ...


class ServiceBusBus:
    """The `Bus` port on a Service Bus topic.

    `publish` packs the envelopes into as few batch sends as the broker's batch size allows.
    Thread-safe (Functions may run invocations concurrently on one worker; a ServiceBusSender
    is not safe to share unguarded). Counts `published` (messages) and `sends` (batch sends).
    `trace_context`, if given, returns the W3C trace context to stamp on what is published now.
    """

    def __init__(
        self,
        sender: SenderLike,
        *,
        ttl_s: float,
        client: Any = None,
        message_ids: Callable[[str], str] | None = None,
        send_attempts: int = 2,
        send_timeout_s: float | None = 30.0,
        max_batch_bytes: int | None = None,
        trace_context: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        if send_attempts < 1:
            raise ValueError(f"send_attempts must be at least 1, got {send_attempts}")
        self._sender = sender
        self._client = client
        self._ttl_s = ttl_s
        self._ids = message_ids or MessageIds()
        self._send_attempts = send_attempts
        self._send_timeout_s = send_timeout_s
        self._max_batch_bytes = max_batch_bytes
        self._trace_context = trace_context
        self._lock = threading.Lock()
        self.published = 0
        self.sends = 0

    @classmethod
    def from_connection(
        cls,
        connection: Connection,
        topic: str,
        ttl_s: float,
        *,
        credential: Any = None,
        **options: Any,
    ) -> ServiceBusBus:
        """A bus on `topic` from a resolved ``ServiceBusConnection`` setting: a connection
        string (including the emulator's ``UseDevelopmentEmulator=true``), or a fully qualified
        namespace reached with `credential` (default: ``connection.credential()``, a
        DefaultAzureCredential). Nothing connects until the first send."""
        from azure.servicebus import ServiceBusClient

        if connection.connection_string:
            client = ServiceBusClient.from_connection_string(connection.connection_string)
        elif connection.endpoint:
            client = ServiceBusClient(connection.endpoint, credential or connection.credential())
        else:
            raise MissingConnectionError("no Service Bus connection string or namespace")
        return cls(client.get_topic_sender(topic), ttl_s=ttl_s, client=client, **options)

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Send every envelope; each batch send is retried once after an ambiguous failure.

        An envelope too large for one message is not sent: the others still are, then
        `MessageTooLargeError` is raised naming the oversized ones.
        """
        if not envelopes:
            return
        too_large: list[str] = []
        trace = self._trace_context() if self._trace_context is not None else {}
        with self._lock:
            batch = self._new_batch()
            for envelope in envelopes:
                body = wire.encode(envelope)
                if len(body) > wire.MAX_WIRE_BYTES:
                    too_large.append(_describe(envelope, f"{len(body)}-byte body"))
                    continue
                message = _message(envelope, body, self._ttl_s, self._ids(envelope.sender), trace)
                try:
                    batch.add_message(message)
                    continue
                except MessageSizeExceededError:
                    if len(batch) == 0:
                        too_large.append(_describe(envelope, "exceeds an empty batch"))
                        continue
                self._send(batch)
                batch = self._new_batch()
                try:
                    batch.add_message(message)
                except MessageSizeExceededError:
                    too_large.append(_describe(envelope, "exceeds an empty batch"))
            if len(batch):
                self._send(batch)
        if too_large:
            raise MessageTooLargeError(
                f"{len(too_large)} envelope(s) too large for a Service Bus message "
                f"(wire limit {wire.MAX_WIRE_BYTES} bytes), not sent: " + "; ".join(too_large)
            )

    def close(self) -> None:
        with self._lock:
            self._sender.close()
            if self._client is not None:
                self._client.close()

    def _new_batch(self) -> ServiceBusMessageBatch:
        if self._max_batch_bytes is None:
            return self._sender.create_message_batch()
        return self._sender.create_message_batch(max_size_in_bytes=self._max_batch_bytes)

    def _send(self, batch: ServiceBusMessageBatch) -> None:
        for attempt in range(1, self._send_attempts + 1):
            try:
                self._sender.send_messages(batch, timeout=self._send_timeout_s)
                break
            except AMBIGUOUS_SEND_ERRORS as exc:
                if attempt == self._send_attempts:
                    raise
                log.warning("batch send failed (%s); resending with the same ids", exc)
        self.sends += 1
        self.published += len(batch)


def _describe(envelope: Envelope, why: str) -> str:
    return f"{wire.kind_of(envelope.message)} {envelope.sender}->{envelope.to} ({why})"


# ------------------------------------------------------------------------ incoming messages


def decode_delivery(
    body: bytes | bytearray | memoryview | str,
    application_properties: Mapping[Any, Any] | None,
    *,
    expected_addressee: str | None = None,
) -> Envelope:
    """The envelope a delivery carries. Raises `wire.WireError` (only) for anything wrong:
    oversized, not UTF-8, not a valid wire message, or application properties that contradict
    the body (addressee, sender, kind), or an addressee other than `expected_addressee` (the
    receiving server, when given: a misrouted message must not be stepped by the wrong server).
    Property keys and values may be str or bytes."""
    if isinstance(body, str):
        text = body
    else:
        raw = bytes(body)
        if len(raw) > wire.MAX_WIRE_BYTES:
            raise wire.WireError(
                f"message of {len(raw)} bytes exceeds the {wire.MAX_WIRE_BYTES}-byte limit"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise wire.WireError(f"body is not UTF-8: {exc}") from None
    envelope = wire.decode(text)
    props = normalize_properties(application_properties)
    expected = {
        ADDRESSEE_PROPERTY: envelope.to,
        SENDER_PROPERTY: envelope.sender,
        KIND_PROPERTY: wire.kind_of(envelope.message),
    }
    for name, value in expected.items():
        if name in props and props[name] != value:
            raise wire.WireError(
                f"application property {name}={props[name]!r} contradicts the body ({value!r})"
            )
    if expected_addressee is not None and envelope.to != expected_addressee:
        raise wire.WireError(
            f"message for {envelope.to!r} delivered to {expected_addressee!r}'s subscription"
        )
    return envelope


def delivery_properties(message: Any) -> dict[str, Any]:
    """Application properties of an ``azure.functions.ServiceBusMessage`` (falling back to the
    older ``user_properties``), with str keys; empty if it has none."""
    props = getattr(message, "application_properties", None)
    if not props:
        props = getattr(message, "user_properties", None)
    return normalize_properties(props if isinstance(props, Mapping) else None)


def trace_headers(properties: Mapping[str, Any]) -> dict[str, str]:
    """The W3C trace context a delivery carries (its normalized application properties), or
    nothing: a malformed one is ignored rather than handed to the tracer."""
    parent = properties.get("traceparent")
    if not isinstance(parent, str) or not _TRACEPARENT.fullmatch(parent):
        return {}
    headers = {"traceparent": parent}
    state = properties.get("tracestate")
    if isinstance(state, str) and len(state) <= MAX_TRACESTATE_CHARS:
        headers["tracestate"] = state
    return headers


def receive(
    message: Any, recorder: PoisonRecorder, *, server_id: str | None = None
) -> Envelope | None:
    """Decode a trigger's ``azure.functions.ServiceBusMessage`` (anything with ``get_body()``
    and ``application_properties``). A malformed one is handed to `recorder` and ``None`` is
    returned: the caller changes nothing and returns normally, so the message completes
    instead of being retried up to maxDeliveryCount."""
    body = message.get_body()
    props = delivery_properties(message)
    try:
        return decode_delivery(body, props, expected_addressee=server_id)
    except wire.WireError as exc:
        raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body or b"")
        message_id = getattr(message, "message_id", None)
        count = getattr(message, "delivery_count", None)
        recorder.record(
            Poison(
                reason=str(exc),
                body=raw,
                message_id=None if message_id is None else str(message_id),
                properties=props,
                server_id=server_id or "",
                delivery_count=count if type(count) is int else None,
            )
        )
        return None
