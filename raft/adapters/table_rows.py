"""Table Storage rows for one server's partition: row keys, property values, and the sizes
Table Storage and Azurite enforce (see table_store.py for the layout they make up).

Pure functions over plain dicts: nothing here talks to a table.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from azure.data.tables import EdmType, EntityProperty

from raft.core.messages import Entry
from raft.ports.store import ClientResult, StoreLimitError, read_answer_slot

STATE_ROW = "state"
FORMAT = 1
# Entity-group transaction limits: 100 operations, 4 MiB of payload. The payload is estimated
# from the JSON the SDK sends (ASCII-escaped, an upper bound) plus per-operation headers.
MAX_OPERATIONS = 100
MAX_BATCH_BYTES = 3_670_016  # 3.5 MiB
OPERATION_OVERHEAD_BYTES = 600
# Entity limits.
MAX_PROPERTY_BYTES = 64 * 1024
MAX_ENTITY_BYTES = 1024 * 1024
MAX_KEY_CHARS = 512
SNAPSHOT_CHUNK_UNITS = 32_000
# A snapshot row is filled up to this size, counted both in UTF-16 (how Table Storage counts)
# and as the JSON sent (how Azurite counts, non-ASCII escaped), whichever is larger.
SNAPSHOT_ROW_BYTES = 900 * 1024
# The log columns a load selects.
LOG_COLUMNS = ["RowKey", "t", "c", "s", "d", "r", "i", "m"]

_SAFE_CLIENT_ID = re.compile(r"[A-Za-z0-9._~-]{1,200}")
_INVALID_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_INT32 = range(-(2**31), 2**31)

Entity = dict[str, Any]
Operation = tuple[Any, ...]


# ------------------------------------------------------------------------------ row keys


def log_key(index: int, generation: int) -> str:
    return f"log-{index:012d}" if generation == 0 else f"log-{index:012d}.{generation:06d}"


def parse_log_key(row_key: str) -> tuple[int, int]:
    index = int(row_key[4:16])
    return index, int(row_key[17:]) if len(row_key) > 16 else 0


def snapshot_key(snapshot_id: int, part: int) -> str:
    return f"snap-{snapshot_id:012d}-{part:04d}"


def incoming_key(transfer: int, part: int) -> str:
    """A chunk of a snapshot being received, in the order it arrived."""
    return f"inc-{transfer:012d}-{part:04d}"


def result_key(client_id: str) -> str:
    """The RowKey of a client's result row (hashed when the id is not RowKey-safe)."""
    if _SAFE_CLIENT_ID.fullmatch(client_id):
        return f"result-c-{client_id}"
    digest = hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"result-h-{digest}"


def check_partition_key(server_id: str) -> str:
    if not server_id or len(server_id) > MAX_KEY_CHARS or _INVALID_KEY_CHARS.search(server_id):
        raise ValueError(
            f"server id {server_id!r} cannot be a Table Storage PartitionKey (1 to "
            f"{MAX_KEY_CHARS} characters, none of / \\ # ? or control characters)"
        )
    return server_id


# ------------------------------------------------------------------------------ values


def int_property(value: int) -> Any:
    """An int property: Int32 when it fits (the SDK's default), Int64 otherwise."""
    return value if value in _INT32 else EntityProperty(value, EdmType.INT64)


def as_int(value: Any, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, EntityProperty):
        value = value.value
    return int(value)


def as_str(value: Any) -> str:
    if isinstance(value, EntityProperty):
        value = value.value
    return "" if value is None else str(value)


def int_or_zero(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------------------ rows


def entry_row(server_id: str, index: int, entry: Entry, generation: int) -> Entity:
    """A log entry's row, checked against the entity limits."""
    row: Entity = {
        "PartitionKey": server_id,
        "RowKey": log_key(index, generation),
        "t": int_property(entry.term),
        "s": int_property(entry.seq),
    }
    if entry.client_id:
        row["c"] = entry.client_id
    if entry.data:
        row["d"] = entry.data
    if entry.reply_to:
        row["r"] = entry.reply_to
    if entry.issued_at:
        row["i"] = int_property(entry.issued_at)
    if entry.time:
        row["m"] = int_property(entry.time)
    check_entity(row, f"{server_id}: log entry {index}")
    return row


def entry_of(row: Any) -> Entry:
    return Entry(
        term=as_int(row.get("t")),
        client_id=as_str(row.get("c")),
        seq=as_int(row.get("s")),
        data=as_str(row.get("d")),
        reply_to=as_str(row.get("r")),
        issued_at=as_int(row.get("i")),
        time=as_int(row.get("m")),
    )


def read_answer_key(client_id: str) -> str:
    return f"read-{read_answer_slot(client_id):04d}"


def result_row(server_id: str, result: ClientResult, row_key: str | None = None) -> Entity:
    row: Entity = {
        "PartitionKey": server_id,
        "RowKey": row_key or result_key(result.client_id),
        "client_id": result.client_id,
        "seq": int_property(result.seq),
        "result": result.result,
        "index": int_property(result.index),
        "term": int_property(result.term),
    }
    check_entity(row, f"{server_id}: result for client {result.client_id!r}")
    return row


def result_of(row: Any) -> ClientResult:
    return ClientResult(
        client_id=as_str(row.get("client_id")),
        seq=as_int(row.get("seq")),
        result=as_str(row.get("result")),
        index=as_int(row.get("index")),
        term=as_int(row.get("term")),
    )


# ------------------------------------------------------------------------------ sizes


def utf16_bytes(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass"))


def _utf16_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


def _value_bytes(value: Any) -> int:
    if isinstance(value, EntityProperty):
        value = value.value
    if isinstance(value, str):
        return 4 + utf16_bytes(value)
    if isinstance(value, bool):
        return 1
    return 8


def check_entity(entity: Entity, what: str) -> None:
    """Raise StoreLimitError if `entity` breaks the 64 KiB property or 1 MiB entity limit."""
    total = 4 + 2 * (len(entity["PartitionKey"]) + len(entity["RowKey"]))
    for name, value in entity.items():
        if name in ("PartitionKey", "RowKey"):
            continue
        size = _value_bytes(value)
        if isinstance(value, str) and size - 4 > MAX_PROPERTY_BYTES:
            raise StoreLimitError(
                f"{what}: property {name!r} is {size - 4} bytes in UTF-16 "
                f"({len(value)} characters); Table Storage holds at most {MAX_PROPERTY_BYTES} "
                "bytes (32,768 UTF-16 code units) in one property"
            )
        total += 8 + 2 * len(name) + size
    # Azurite counts the JSON it receives instead; take whichever is larger.
    total = max(total, payload_bytes(entity) - OPERATION_OVERHEAD_BYTES)
    if total > MAX_ENTITY_BYTES:
        raise StoreLimitError(
            f"{what}: the entity is about {total} bytes; Table Storage holds at most "
            f"{MAX_ENTITY_BYTES} bytes in one entity"
        )


def payload_bytes(entity: Entity) -> int:
    plain = {k: (v.value if isinstance(v, EntityProperty) else v) for k, v in entity.items()}
    return OPERATION_OVERHEAD_BYTES + len(json.dumps(plain, ensure_ascii=True))


def chunks(text: str, units: int) -> list[str]:
    """`text` cut into pieces of at most `units` UTF-16 code units, never inside a pair."""
    out: list[str] = []
    start, count = 0, 0
    for i, char in enumerate(text):
        width = _utf16_units(char)
        if count + width > units:
            out.append(text[start:i])
            start, count = i, 0
        count += width
    if start < len(text) or not out:
        out.append(text[start:])
    return out


def pack(pieces: list[str]) -> list[list[str]]:
    """Snapshot chunks grouped into rows that stay well inside the 1 MiB entity limit."""
    rows: list[list[str]] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        piece_size = 16 + max(utf16_bytes(piece), len(json.dumps(piece, ensure_ascii=True)))
        if current and (size + piece_size > SNAPSHOT_ROW_BYTES or len(current) >= 99):
            rows.append(current)
            current, size = [], 0
        current.append(piece)
        size += piece_size
    rows.append(current)
    return rows
