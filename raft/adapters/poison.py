"""Keeping undecodable ("poison") Service Bus deliveries for inspection.

A plain Python Service Bus trigger completes the message when the function returns and
redelivers it when the function raises, dead-lettering only after ``maxDeliveryCount``
deliveries. A malformed message will never decode, so raising would only burn through the
delivery count (and the function's time) before the broker dead-letters it. Instead the
function records it here, with the reason, changes no state, and returns so the message
completes.

If recording itself fails (say Table Storage is unreachable) the recorder raises: the trigger
then redelivers the message and, after ``maxDeliveryCount`` attempts, Service Bus dead-letters
it, so the message is still kept, only in the dead-letter queue instead. What a poison message
holds never makes recording fail: every stored string is cut to fit one Table Storage
property (64 KiB, counted in UTF-16), so the entity is accepted whatever the body was.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger("raft.poison")

# Table Storage caps a string property at 64 KiB counted in UTF-16, where a character outside
# the Basic Multilingual Plane (an emoji) takes 4 bytes: stored strings are cut by that measure,
# never by characters. A little under the limit, for the property's own framing.
MAX_STORED_UTF16_BYTES = 64 * 1024 - 64
MAX_REASON_CHARS = 1_024
LOG_BODY_PREFIX_CHARS = 512
POISON_PARTITION = "poison"


@dataclass(frozen=True)
class Poison:
    """One delivery that could not be decoded, and why."""

    reason: str
    body: bytes
    message_id: str | None = None
    properties: Mapping[Any, Any] = field(default_factory=dict)
    # The server whose subscription delivered it, when known.
    server_id: str = ""
    delivery_count: int | None = None

    @property
    def sender(self) -> str | None:
        """The `sender` application property, if the message carried a readable one."""
        value = normalize_properties(self.properties).get("sender")
        return value if isinstance(value, str) else None


class PoisonRecorder(Protocol):
    def record(self, poison: Poison) -> None:
        """Keep `poison` for inspection; raise only if it could not be kept."""


def body_text(body: bytes, limit: int) -> str:
    """The body as text for humans: UTF-8, undecodable bytes shown as escapes, at most `limit`
    characters."""
    return bytes(body[: limit * 4]).decode("utf-8", errors="backslashreplace")[:limit]


def fit_utf16(text: str, max_bytes: int = MAX_STORED_UTF16_BYTES) -> str:
    """The longest prefix of `text` that takes at most `max_bytes` in UTF-16, never ending
    between the two halves of a surrogate pair."""
    if 4 * len(text) <= max_bytes:
        return text  # even if every character took 4 bytes, it would fit
    encoded = text.encode("utf-16-le", errors="surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    cut = encoded[: max_bytes - max_bytes % 2]
    if 0xD800 <= int.from_bytes(cut[-2:], "little") <= 0xDBFF:
        cut = cut[:-2]  # the first half of a pair whose second half was cut off
    return cut.decode("utf-16-le", errors="surrogatepass")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def normalize_properties(properties: Mapping[Any, Any] | None) -> dict[str, Any]:
    """Application properties with str keys and plain JSON values (AMQP may hand back bytes)."""
    return {str(_plain(k)): _plain(v) for k, v in (properties or {}).items()}


def properties_json(properties: Mapping[Any, Any] | None) -> str:
    # ASCII-escaped, so a cut never splits a character; a cut JSON text is for humans only.
    return fit_utf16(json.dumps(normalize_properties(properties), sort_keys=True))


class LoggingPoisonRecorder:
    """Logs one structured error per poison message (reason, message id, sender property,
    a bounded prefix of the body)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log

    def record(self, poison: Poison) -> None:
        fields = {
            "reason": poison.reason[:MAX_REASON_CHARS],
            "message_id": poison.message_id,
            "sender": poison.sender,
            "server_id": poison.server_id,
            "delivery_count": poison.delivery_count,
            "body_bytes": len(poison.body),
            "body_prefix": body_text(poison.body, LOG_BODY_PREFIX_CHARS),
        }
        self._log.error(
            "poison message: %s",
            json.dumps(fields, sort_keys=True),
            extra={f"raft_poison_{k}": v for k, v in fields.items()},
        )


_ROW_KEY_FORBIDDEN = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


def poison_row_key(when: datetime, message_id: str | None) -> str:
    """Sortable by time; the message id made safe for a RowKey (no / \\ # ? or control
    characters) and bounded."""
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    safe_id = _ROW_KEY_FORBIDDEN.sub("_", message_id or "no-message-id")[:200]
    return f"{stamp}-{safe_id}"


class TablePoisonRecorder:
    """Writes one entity per poison message to a Table (an azure-data-tables ``TableClient``,
    or anything with ``create_entity(entity)``): PartitionKey ``poison``, RowKey
    timestamp + message id."""

    def __init__(self, table: Any, *, now: Any = None) -> None:
        self._table = table
        self._now = now or (lambda: datetime.now(UTC))

    def entity(self, poison: Poison) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": POISON_PARTITION,
            "RowKey": poison_row_key(self._now(), poison.message_id),
            "Reason": poison.reason[:MAX_REASON_CHARS],
            "MessageId": (poison.message_id or "")[:1024],
            "ServerId": poison.server_id[:1024],
            "BodyBytes": len(poison.body),
            # Decoding at most one character per stored UTF-16 byte pair, then cutting to fit.
            "Body": fit_utf16(body_text(poison.body, MAX_STORED_UTF16_BYTES // 2)),
            "Properties": properties_json(poison.properties),
        }
        if poison.delivery_count is not None:
            entity["DeliveryCount"] = poison.delivery_count
        return entity

    def record(self, poison: Poison) -> None:
        entity = self.entity(poison)
        self._table.create_entity(entity)
        log.warning(
            "poison message %s recorded as %s/%s: %s",
            poison.message_id,
            entity["PartitionKey"],
            entity["RowKey"],
            entity["Reason"],
        )
