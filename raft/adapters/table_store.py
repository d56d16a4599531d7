"""The store on Azure Table Storage (azure-data-tables), with the in-memory store's semantics.

Layout: one partition per server (PartitionKey = server id), with these rows:

- ``state``: the state entity. ``state`` holds the state dict as JSON; ``term``, ``role``,
  ``leader``, ``commit_index``, ``last_index`` and ``updated`` are plain columns for status pages;
  the rest is bookkeeping (below). Its ETag is the version `load` returns and `save` checks.
- ``log-000000000042``: one row per log entry, zero-padded so lexical order is index order.
  Rows written under a *generation* other than 0 carry it as a suffix
  (``log-000000000042.000003``); which generation holds which index is recorded in the state
  entity (``segs``: ``[[start_index, generation], ...]``).
- ``snap-<id>-<part>``: the applied state (application snapshot and client sessions), split
  into properties of at most 32,000 UTF-16 code units and rows of at most about 900 KiB.
- ``result-c-<client id>`` (ids of letters, digits and ``._~-``) or ``result-h-<sha256>`` (any
  other id: RowKeys may not hold ``/ \\ # ?`` or control characters): the last result for a
  client, with the real id as a property.

**Readers trust only what the state entity references**: log rows 1..``last_index`` under the
generation ``segs`` assigns to each index, and the snapshot rows named by ``snap_id``. Every
other row is invisible, so rows may be written ahead of the state entity that references them.

**The common save is one entity-group transaction**: the state entity first (Insert when no
state exists, which fails with 409 if one does; otherwise Replace with If-Match on the ETag the
caller loaded, which fails with 412), then the log rows, deletes past the new end, the snapshot
and the results. Both failures become `VersionConflict`; everything else propagates.

**A save that needs more than 100 operations (or 3.5 MiB of payload)** is split so that it still
appears atomic and can never damage a state another instance saved concurrently:

1. Every earlier transaction is *also* conditioned on the state entity: it carries a Merge of the
   state entity with If-Match on the ETag from the previous transaction (touching only the
   ``next_gen`` counter, never the state), and continues the chain with the ETag it gets back.
   So no row is ever written unconditionally: if anybody else saves in between, the next
   transaction of the chain fails with 412 and the save stops with `VersionConflict`. There is
   no read-then-write window, hence no residual race.
2. The earlier transactions write only invisible rows: entries past the stored ``last_index``, a
   new snapshot under a fresh id, and, when the save replaces stored entries (a follower
   truncating a conflicting suffix), the replacement entries under a **fresh generation**
   (allocated by bumping ``next_gen`` in the first transaction, so a concurrent writer never
   picks the same one). The stored rows the old state references are never overwritten.
3. The last transaction replaces the state entity (If-Match), which switches readers to the
   new rows at once, and carries the client results. If a save needs more than 99 results
   (never in practice: one step applies what one message committed), the excess results are
   written in the earlier, conditioned transactions; they may then become readable shortly
   before the state that produced them, which is harmless because a result is only recorded for
   a committed entry and is the same whichever instance applies it.
4. Rows that only the old state referenced (a retired generation's entries, the old snapshot)
   are deleted in the last transaction if there is room, otherwise afterwards, best effort.
   Retired generations are never referenced again (only the last segment grows, and a save
   that rewrites an earlier segment always starts a new one), so deleting them late is safe.

A split save that stops half way (conflict, crash) leaves only invisible rows: entries past the
end are overwritten before any later state references them; rows of an abandoned generation stay
as garbage (rare, small, never read). Deletes that must be atomic with the state (entries of the
current generation past a shortened end, which the same keys will hold again later) are only
ever planned in a single transaction.

The earlier transactions change the state entity's ETag without changing the state, so the
entity also carries ``commit``, a random id written with each new state: a cached or half-read
log is still valid when the ETag moved but ``commit`` did not.

**Cache**: per server, this instance keeps the last state it loaded or saved. `load` reads the
state entity (one point read) and, if its ETag or ``commit`` matches the cache, returns the cached
log without querying log rows. A save updates the cache from the `Change`. A conflict drops it.
A cold `load` queries the referenced rows, then re-reads the state entity and retries if a
new state was committed meanwhile, so it never returns a mixture of two versions.

**Limits**: a property holds at most 64 KiB (strings are counted in UTF-16, so at most 32,768
code units) and an entity at most 1 MiB; a change that would break them raises
`StoreLimitError` before anything is sent.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import threading
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, TableTransactionError, UpdateMode

from raft.adapters.connections import Connection
from raft.core.messages import Entry
from raft.ports.store import Change, ClientResult, StoredServer, StoreLimitError, VersionConflict

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger("raft.store.table")

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
# A cold load re-reads the state entity after the rows; it retries this often if new states
# keep being committed meanwhile.
MAX_LOAD_ATTEMPTS = 8

_SAFE_CLIENT_ID = re.compile(r"[A-Za-z0-9._~-]{1,200}")
_INVALID_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_INT32 = range(-(2**31), 2**31)

Entity = dict[str, Any]
Operation = tuple[Any, ...]


# ------------------------------------------------------------------------------ row keys


def _log_key(index: int, generation: int) -> str:
    return f"log-{index:012d}" if generation == 0 else f"log-{index:012d}.{generation:06d}"


def _parse_log_key(row_key: str) -> tuple[int, int]:
    index = int(row_key[4:16])
    return index, int(row_key[17:]) if len(row_key) > 16 else 0


def _snapshot_key(snapshot_id: int, part: int) -> str:
    return f"snap-{snapshot_id:012d}-{part:04d}"


def result_key(client_id: str) -> str:
    """The RowKey of a client's result row (hashed when the id is not RowKey-safe)."""
    if _SAFE_CLIENT_ID.fullmatch(client_id):
        return f"result-c-{client_id}"
    digest = hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"result-h-{digest}"


def _check_partition_key(server_id: str) -> str:
    if not server_id or len(server_id) > MAX_KEY_CHARS or _INVALID_KEY_CHARS.search(server_id):
        raise ValueError(
            f"server id {server_id!r} cannot be a Table Storage PartitionKey (1 to "
            f"{MAX_KEY_CHARS} characters, none of / \\ # ? or control characters)"
        )
    return server_id


# ------------------------------------------------------------------------------ values and sizes


def _int(value: int) -> Any:
    """An int property: Int32 when it fits (the SDK's default), Int64 otherwise."""
    return value if value in _INT32 else EntityProperty(value, EdmType.INT64)


def _as_int(value: Any, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, EntityProperty):
        value = value.value
    return int(value)


def _as_str(value: Any) -> str:
    if isinstance(value, EntityProperty):
        value = value.value
    return "" if value is None else str(value)


def _utf16_bytes(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass"))


def _utf16_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


def _value_bytes(value: Any) -> int:
    if isinstance(value, EntityProperty):
        value = value.value
    if isinstance(value, str):
        return 4 + _utf16_bytes(value)
    if isinstance(value, bool):
        return 1
    return 8


def _check_entity(entity: Entity, what: str) -> None:
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
    total = max(total, _payload_bytes(entity) - OPERATION_OVERHEAD_BYTES)
    if total > MAX_ENTITY_BYTES:
        raise StoreLimitError(
            f"{what}: the entity is about {total} bytes; Table Storage holds at most "
            f"{MAX_ENTITY_BYTES} bytes in one entity"
        )


def _payload_bytes(entity: Entity) -> int:
    plain = {k: (v.value if isinstance(v, EntityProperty) else v) for k, v in entity.items()}
    return OPERATION_OVERHEAD_BYTES + len(json.dumps(plain, ensure_ascii=True))


def _chunks(text: str, units: int) -> list[str]:
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------------------ metadata


@dataclass(frozen=True)
class _Meta:
    """What the state entity says about the stored rows, at one ETag."""

    etag: str | None  # None: no state entity at all
    real: bool  # False: absent, or a placeholder left by a split first save
    commit: str
    last_index: int
    segs: tuple[tuple[int, int], ...]
    next_gen: int
    snap: tuple[int, int] | None  # (snapshot id, rows)

    @classmethod
    def absent(cls) -> _Meta:
        return cls(None, False, "", 0, ((1, 0),), 1, None)

    @classmethod
    def of(cls, entity: Any) -> _Meta:
        real = "state" in entity and entity.get("state") is not None
        segs = tuple((int(s), int(g)) for s, g in json.loads(_as_str(entity.get("segs")) or "[]"))
        snap_id = _as_int(entity.get("snap_id"), -1)
        return cls(
            etag=entity.metadata["etag"],
            real=real,
            commit=_as_str(entity.get("commit")),
            last_index=_as_int(entity.get("last_index")) if real else 0,
            segs=(segs or ((1, 0),)) if real else ((1, 0),),
            next_gen=max(1, _as_int(entity.get("next_gen"), 1)),
            snap=(snap_id, _as_int(entity.get("snap_parts"))) if real and snap_id >= 0 else None,
        )

    def generation_at(self, index: int) -> int:
        return _generation_at(self.segs, index)


def _generation_at(segs: Sequence[tuple[int, int]], index: int) -> int:
    starts = [start for start, _ in segs]
    return segs[max(0, bisect_right(starts, index) - 1)][1]


@dataclass
class _Cached:
    meta: _Meta
    # None when this instance knows the version but not the rows (a save based on a point read).
    state: dict[str, Any] | None
    log: list[Entry] | None
    snapshot: str | None


@dataclass
class _Plan:
    commit: Entity  # the new state entity
    meta: _Meta  # what it says (ETag filled in after the save)
    writes: list[Entity] = field(default_factory=list)  # log and snapshot rows
    results: list[Entity] = field(default_factory=list)
    atomic_deletes: list[str] = field(default_factory=list)  # must go with the state entity
    garbage: list[str] = field(default_factory=list)  # rows no state will reference again

    @property
    def operations(self) -> int:
        return (
            1 + len(self.writes) + len(self.results) + len(self.atomic_deletes) + len(self.garbage)
        )

    def payload_bytes(self) -> int:
        rows = [self.commit, *self.writes, *self.results]
        deletes = len(self.atomic_deletes) + len(self.garbage)
        return sum(_payload_bytes(e) for e in rows) + deletes * OPERATION_OVERHEAD_BYTES


# ------------------------------------------------------------------------------ the store


class TableStore:
    """`Store` on one Azure Table; see the module docstring for the layout and the guarantees."""

    def __init__(self, table: TableClient | Callable[[], TableClient]) -> None:
        self._table_source = table
        self._table: TableClient | None = None if callable(table) else table
        self._lock = threading.RLock()
        self._cache: dict[str, _Cached] = {}
        # Counted for tests and benchmarks.
        self.saves = 0
        self.conflicts = 0
        self.transactions = 0
        self.full_loads = 0
        self.cached_loads = 0

    @classmethod
    def from_connection(cls, connection: Connection, table_name: str) -> TableStore:
        """A store on `table_name`, created if missing on first use.

        A connection string (Azurite's included) or an identity-based endpoint
        (`DefaultAzureCredential`), as `raft.adapters.connections.resolve` gives them.
        """

        def factory() -> TableClient:
            from azure.data.tables import TableServiceClient

            if connection.connection_string:
                service = TableServiceClient.from_connection_string(connection.connection_string)
            elif connection.endpoint:
                service = TableServiceClient(
                    endpoint=connection.endpoint, credential=connection.credential()
                )
            else:
                raise ValueError("the connection has neither a connection string nor an endpoint")
            return service.create_table_if_not_exists(table_name)

        return cls(factory)

    @property
    def table(self) -> TableClient:
        if self._table is None:
            with self._lock:
                if self._table is None:
                    source = self._table_source
                    assert callable(source)
                    self._table = source()
        return self._table

    def close(self) -> None:
        if self._table is not None:
            self._table.close()

    def drop_cache(self, server_id: str | None = None) -> None:
        """Forget cached state (one server's, or all), as a cold instance would."""
        with self._lock:
            if server_id is None:
                self._cache.clear()
            else:
                self._cache.pop(server_id, None)

    # -------------------------------------------------------------------------- reads

    def load(self, server_id: str) -> StoredServer | None:
        pk = _check_partition_key(server_id)
        entity = self._get(pk, STATE_ROW)
        if entity is None or not _Meta.of(entity).real:
            self.drop_cache(server_id)
            return None
        meta = _Meta.of(entity)
        with self._lock:
            cached = self._cache.get(server_id)
            if (
                cached is not None
                and cached.log is not None
                and cached.state is not None
                and (cached.meta.etag == meta.etag or cached.meta.commit == meta.commit)
            ):
                cached.meta = meta
                self.cached_loads += 1
                return self._stored(cached)
        loaded = self._load_full(server_id, pk, entity)
        if loaded is None:
            self.drop_cache(server_id)
            return None
        with self._lock:
            self._cache[server_id] = loaded
            self.full_loads += 1
            return self._stored(loaded)

    def read_state(self, server_id: str) -> dict[str, Any] | None:
        entity = self._get(_check_partition_key(server_id), STATE_ROW)
        if entity is None or not _Meta.of(entity).real:
            return None
        state: dict[str, Any] = json.loads(_as_str(entity["state"]))
        return state

    def read_result(self, server_id: str, client_id: str) -> ClientResult | None:
        entity = self._get(_check_partition_key(server_id), result_key(client_id))
        if entity is None or _as_str(entity.get("client_id")) != client_id:
            return None
        return ClientResult(
            client_id=client_id,
            seq=_as_int(entity.get("seq")),
            result=_as_str(entity.get("result")),
            index=_as_int(entity.get("index")),
            term=_as_int(entity.get("term")),
        )

    @staticmethod
    def _stored(cached: _Cached) -> StoredServer:
        assert cached.meta.etag is not None and cached.log is not None
        return StoredServer(
            version=cached.meta.etag,
            state=copy.deepcopy(cached.state or {}),
            log=list(cached.log),
            snapshot=cached.snapshot,
        )

    def _get(self, pk: str, row_key: str) -> Any:
        try:
            return self.table.get_entity(pk, row_key)
        except ResourceNotFoundError:
            return None

    def _load_full(self, server_id: str, pk: str, entity: Any) -> _Cached | None:
        for _attempt in range(MAX_LOAD_ATTEMPTS):
            meta = _Meta.of(entity)
            state = json.loads(_as_str(entity["state"]))
            entries = self._read_log(server_id, pk, meta)
            snapshot = self._read_snapshot(server_id, pk, meta)
            again = self._get(pk, STATE_ROW)
            if again is None or not _Meta.of(again).real:
                return None
            newer = _Meta.of(again)
            if newer.commit == meta.commit:
                return _Cached(newer, state, entries, snapshot)
            log.info("server=%s state changed while loading; reading it again", server_id)
            entity = again
        raise RuntimeError(
            f"{server_id}: the stored state changed {MAX_LOAD_ATTEMPTS} times while loading"
        )

    def _read_log(self, server_id: str, pk: str, meta: _Meta) -> list[Entry]:
        if meta.last_index == 0:
            return []
        found: list[Entry | None] = [None] * meta.last_index
        rows = self.table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": pk, "lo": _log_key(1, 0), "hi": _log_key(meta.last_index + 1, 0)},
            select=["RowKey", "t", "c", "s", "d", "r"],
        )
        for row in rows:
            index, generation = _parse_log_key(row["RowKey"])
            if 1 <= index <= meta.last_index and generation == meta.generation_at(index):
                found[index - 1] = Entry(
                    term=_as_int(row.get("t")),
                    client_id=_as_str(row.get("c")),
                    seq=_as_int(row.get("s")),
                    data=_as_str(row.get("d")),
                    reply_to=_as_str(row.get("r")),
                )
        missing = [i for i, e in enumerate(found, 1) if e is None]
        if missing:
            raise RuntimeError(
                f"{server_id}: log rows missing for indexes {missing[:10]} "
                f"(last_index {meta.last_index}); the table is damaged"
            )
        return [e for e in found if e is not None]

    def _read_snapshot(self, server_id: str, pk: str, meta: _Meta) -> str | None:
        if meta.snap is None:
            return None
        snapshot_id, parts = meta.snap
        pieces: list[str] = []
        for part in range(parts):
            row = self._get(pk, _snapshot_key(snapshot_id, part))
            if row is None:
                raise RuntimeError(f"{server_id}: snapshot row {part} of {parts} is missing")
            pieces.extend(_as_str(row.get(f"p{i:02d}")) for i in range(_as_int(row.get("n"))))
        return "".join(pieces)

    # -------------------------------------------------------------------------- save

    def save(self, server_id: str, expected_version: str | None, change: Change) -> str:
        pk = _check_partition_key(server_id)
        log_rows = self._log_rows(server_id, change)
        result_rows = self._result_rows(server_id, change.results)
        snapshot_chunks = (
            None if change.snapshot is None else _chunks(change.snapshot, SNAPSHOT_CHUNK_UNITS)
        )
        state_json = json.dumps(change.state, separators=(",", ":"), sort_keys=True)
        if _utf16_bytes(state_json) > MAX_PROPERTY_BYTES:
            raise StoreLimitError(
                f"{server_id}: the state is {_utf16_bytes(state_json)} bytes in UTF-16 as JSON; "
                f"Table Storage holds at most {MAX_PROPERTY_BYTES} bytes in one property"
            )
        try:
            base = self._base(server_id, pk, expected_version)
            rows = (state_json, log_rows, result_rows, snapshot_chunks)
            plan = self._plan(pk, base, change, *rows, split=False)
            if plan.operations <= MAX_OPERATIONS and plan.payload_bytes() <= MAX_BATCH_BYTES:
                etag = self._save_single(base, plan)
            else:
                plan = self._plan(pk, base, change, *rows, split=True)
                etag = self._save_split(server_id, base, plan)
        except VersionConflict:
            self.drop_cache(server_id)
            with self._lock:
                self.conflicts += 1
            raise
        except BaseException:
            self.drop_cache(server_id)
            raise
        self._remember(server_id, base, replace(plan.meta, etag=etag), change)
        with self._lock:
            self.saves += 1
        return etag

    def _base(self, server_id: str, pk: str, expected: str | None) -> _Meta:
        """The stored metadata at `expected`, or VersionConflict if that is not the stored one."""
        if expected is not None:
            with self._lock:
                cached = self._cache.get(server_id)
            if cached is not None and cached.meta.etag == expected:
                return cached.meta
        entity = self._get(pk, STATE_ROW)
        meta = _Meta.absent() if entity is None else _Meta.of(entity)
        if expected is None and not meta.real:
            return meta  # absent, or a placeholder a split first save left
        if expected is None or meta.etag != expected or not meta.real:
            raise VersionConflict(
                f"{server_id}: expected version {expected}, found "
                f"{meta.etag if meta.real else None}"
            )
        return meta

    def _log_rows(self, server_id: str, change: Change) -> list[Entity]:
        """The change's entries as rows (RowKey filled in by the plan), checked for limits."""
        if change.log_from is None:
            return []
        if change.log_from < 1:
            raise ValueError(f"{server_id}: log_from must be at least 1, got {change.log_from}")
        rows: list[Entity] = []
        for index, entry in enumerate(change.entries, change.log_from):
            row: Entity = {
                "PartitionKey": server_id,
                "RowKey": _log_key(index, 999_999),
                "t": _int(entry.term),
                "s": _int(entry.seq),
            }
            if entry.client_id:
                row["c"] = entry.client_id
            if entry.data:
                row["d"] = entry.data
            if entry.reply_to:
                row["r"] = entry.reply_to
            _check_entity(row, f"{server_id}: log entry {index}")
            rows.append(row)
        return rows

    def _result_rows(self, server_id: str, results: Iterable[ClientResult]) -> list[Entity]:
        latest = {r.client_id: r for r in results}  # one row per client: the last result wins
        rows = []
        for result in latest.values():
            row: Entity = {
                "PartitionKey": server_id,
                "RowKey": result_key(result.client_id),
                "client_id": result.client_id,
                "seq": _int(result.seq),
                "result": result.result,
                "index": _int(result.index),
                "term": _int(result.term),
            }
            _check_entity(row, f"{server_id}: result for client {result.client_id!r}")
            rows.append(row)
        return rows

    def _plan(
        self,
        pk: str,
        base: _Meta,
        change: Change,
        state_json: str,
        log_rows: list[Entity],
        result_rows: list[Entity],
        snapshot_chunks: list[str] | None,
        *,
        split: bool,
    ) -> _Plan:
        old_last = base.last_index
        segs = list(base.segs)
        next_gen = base.next_gen
        writes: list[Entity] = []
        atomic_deletes: list[str] = []
        garbage: list[str] = []
        new_last = old_last
        if change.log_from is not None:
            log_from = change.log_from
            if log_from > old_last + 1:
                raise ValueError(
                    f"{pk}: log_from {log_from} leaves a gap after the stored last index {old_last}"
                )
            new_last = log_from - 1 + len(log_rows)
            last_start, last_gen = segs[-1]
            rewrites = log_from <= old_last
            if rewrites and (split or log_from < last_start):
                # Rewritten entries go under a fresh generation: never onto rows the stored
                # state references (a split save), and never by regrowing a cut segment.
                generation = next_gen
                next_gen += 1
                new_segs = [s for s in segs if s[0] < log_from] + [(log_from, generation)]
            else:
                generation = last_gen
                new_segs = segs
            for index, row in enumerate(log_rows, log_from):
                writes.append({**row, "RowKey": _log_key(index, generation)})
            for index in range(log_from, old_last + 1):
                old_generation = _generation_at(segs, index)
                if index <= new_last and old_generation == generation:
                    continue  # replaced in place, in the same transaction as the state
                if old_generation == generation:
                    atomic_deletes.append(_log_key(index, old_generation))
                else:
                    garbage.append(_log_key(index, old_generation))
            segs = new_segs
        snap = base.snap
        if snapshot_chunks is not None:
            snapshot_id = next_gen
            next_gen += 1
            rows = _pack(snapshot_chunks)
            for part, chunks in enumerate(rows):
                snapshot_row: Entity = {
                    "PartitionKey": pk,
                    "RowKey": _snapshot_key(snapshot_id, part),
                    "n": len(chunks),
                }
                snapshot_row.update({f"p{i:02d}": chunk for i, chunk in enumerate(chunks)})
                writes.append(snapshot_row)
            if base.snap is not None:
                garbage.extend(_snapshot_key(base.snap[0], p) for p in range(base.snap[1]))
            snap = (snapshot_id, len(rows))
        meta = _Meta(
            etag=None,
            real=True,
            commit=uuid.uuid4().hex,
            last_index=new_last,
            segs=tuple(segs),
            next_gen=next_gen,
            snap=snap,
        )
        state = change.state
        commit: Entity = {
            "PartitionKey": pk,
            "RowKey": STATE_ROW,
            "fmt": FORMAT,
            "state": state_json,
            "term": _int(_int_or_zero(state.get("current_term"))),
            "role": str(state.get("role", "")),
            "leader": str(state.get("leader_id", "")),
            "commit_index": _int(_int_or_zero(state.get("commit_index"))),
            "last_index": _int(new_last),
            "updated": _now(),
            "commit": meta.commit,
            "segs": json.dumps([list(s) for s in segs]),
            "next_gen": _int(next_gen),
            "snap_id": _int(snap[0] if snap else -1),
            "snap_parts": _int(snap[1] if snap else 0),
        }
        _check_entity(commit, f"{pk}: state entity")
        return _Plan(commit, meta, writes, result_rows, atomic_deletes, garbage)

    def _state_operation(self, etag: str | None, entity: Entity, mode: UpdateMode) -> Operation:
        if etag is None:
            return ("create", entity)
        return (
            "update",
            entity,
            {"mode": mode, "etag": etag, "match_condition": MatchConditions.IfNotModified},
        )

    def _save_single(self, base: _Meta, plan: _Plan) -> str:
        operations: list[Operation] = [
            self._state_operation(base.etag, plan.commit, UpdateMode.REPLACE)
        ]
        operations += [("upsert", row, {"mode": UpdateMode.REPLACE}) for row in plan.writes]
        operations += [("upsert", row, {"mode": UpdateMode.REPLACE}) for row in plan.results]
        pk = plan.commit["PartitionKey"]
        operations += [
            ("delete", {"PartitionKey": pk, "RowKey": key})
            for key in plan.atomic_deletes + plan.garbage
        ]
        return self._submit(operations)

    def _save_split(self, server_id: str, base: _Meta, plan: _Plan) -> str:
        assert not plan.atomic_deletes, "a split save only deletes rows no state references"
        pk = plan.commit["PartitionKey"]
        # The last transaction: the state entity, then results and garbage while they fit.
        room_ops = MAX_OPERATIONS - 1
        room_bytes = MAX_BATCH_BYTES - _payload_bytes(plan.commit)
        final: list[Operation] = []
        early_results: list[Entity] = []
        for row in plan.results:
            size = _payload_bytes(row)
            if room_ops > 0 and size <= room_bytes:
                final.append(("upsert", row, {"mode": UpdateMode.REPLACE}))
                room_ops, room_bytes = room_ops - 1, room_bytes - size
            else:
                early_results.append(row)
        garbage = list(plan.garbage)
        while garbage and room_ops > 0 and room_bytes >= OPERATION_OVERHEAD_BYTES:
            final.append(("delete", {"PartitionKey": pk, "RowKey": garbage.pop(0)}))
            room_ops, room_bytes = room_ops - 1, room_bytes - OPERATION_OVERHEAD_BYTES
        # The earlier transactions: invisible rows, each chained on the state entity's ETag.
        marker: Entity = {
            "PartitionKey": pk,
            "RowKey": STATE_ROW,
            "fmt": FORMAT,
            "next_gen": _int(plan.meta.next_gen),
            "pending": _now(),
        }
        early = [("upsert", row, {"mode": UpdateMode.REPLACE}) for row in plan.writes]
        early += [("upsert", row, {"mode": UpdateMode.REPLACE}) for row in early_results]
        batches = _batches(early, MAX_OPERATIONS - 1, MAX_BATCH_BYTES - _payload_bytes(marker))
        log.info(
            "server=%s split save: %d operations in %d transactions",
            server_id,
            plan.operations,
            len(batches) + 1,
        )
        etag = base.etag
        for batch in batches:
            etag = self._submit([self._state_operation(etag, marker, UpdateMode.MERGE), *batch])
        etag = self._submit([self._state_operation(etag, plan.commit, UpdateMode.REPLACE), *final])
        if garbage:
            self._cleanup(server_id, pk, garbage)
        return etag

    def _submit(self, operations: list[Operation]) -> str:
        """Submit one transaction whose first operation is on the state entity; its new ETag."""
        with self._lock:
            self.transactions += 1
        try:
            responses = self.table.submit_transaction(operations)
        except TableTransactionError as exc:
            if exc.status_code in (409, 412) or (exc.status_code == 404 and exc.index == 0):
                raise VersionConflict(
                    f"{operations[0][1]['PartitionKey']}: the state entity changed "
                    f"({exc.status_code} {getattr(exc, 'error_code', '')})"
                ) from exc
            raise
        return str(responses[0]["etag"])

    def _cleanup(self, server_id: str, pk: str, keys: list[str]) -> None:
        """Delete rows no state references any more; best effort (they are invisible anyway)."""
        for i in range(0, len(keys), MAX_OPERATIONS):
            chunk = keys[i : i + MAX_OPERATIONS]
            try:
                self.table.submit_transaction(
                    [("delete", {"PartitionKey": pk, "RowKey": key}) for key in chunk]
                )
            except Exception:
                try:
                    for key in chunk:
                        self.table.delete_entity(pk, key)  # ignores rows already gone
                except Exception as exc:
                    log.warning(
                        "server=%s could not delete %d unreferenced rows: %s",
                        server_id,
                        len(chunk),
                        exc,
                    )

    def _remember(self, server_id: str, base: _Meta, meta: _Meta, change: Change) -> None:
        with self._lock:
            cached = self._cache.get(server_id)
            if not base.real:
                old_log: list[Entry] | None = []
                old_snapshot = None
            elif cached is not None and cached.meta.etag == base.etag and cached.log is not None:
                old_log, old_snapshot = cached.log, cached.snapshot
            else:
                old_log, old_snapshot = None, None
            if old_log is None:
                self._cache[server_id] = _Cached(meta, None, None, None)
                return
            if change.log_from is not None:
                old_log = old_log[: change.log_from - 1] + list(change.entries)
            self._cache[server_id] = _Cached(
                meta,
                copy.deepcopy(change.state),
                list(old_log),
                change.snapshot if change.snapshot is not None else old_snapshot,
            )


def _pack(chunks: list[str]) -> list[list[str]]:
    """Snapshot chunks grouped into rows that stay well inside the 1 MiB entity limit."""
    rows: list[list[str]] = []
    current: list[str] = []
    size = 0
    for chunk in chunks:
        chunk_size = 16 + max(_utf16_bytes(chunk), len(json.dumps(chunk, ensure_ascii=True)))
        if current and (size + chunk_size > SNAPSHOT_ROW_BYTES or len(current) >= 99):
            rows.append(current)
            current, size = [], 0
        current.append(chunk)
        size += chunk_size
    rows.append(current)
    return rows


def _int_or_zero(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _batches(
    operations: list[Operation], max_operations: int, max_bytes: int
) -> list[list[Operation]]:
    batches: list[list[Operation]] = []
    current: list[Operation] = []
    size = 0
    for operation in operations:
        op_size = _payload_bytes(operation[1])
        if current and (len(current) >= max_operations or size + op_size > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(operation)
        size += op_size
    if current:
        batches.append(current)
    return batches
