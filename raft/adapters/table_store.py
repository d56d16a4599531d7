"""The store on Azure Table Storage (azure-data-tables), with the in-memory store's semantics:
the reads and the transactions. Row keys and sizes are in table_rows.py; which rows a save
writes, under which generation and in which transactions, is planned in table_plan.py.

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
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from raft.adapters.connections import Connection
from raft.adapters.table_plan import (
    Meta,
    Plan,
    plan_save,
    prepare,
    single_transaction,
    split_transactions,
    state_operation,
)
from raft.adapters.table_rows import (
    LOG_COLUMNS,
    MAX_OPERATIONS,
    STATE_ROW,
    Operation,
    as_int,
    as_str,
    check_partition_key,
    entry_of,
    log_key,
    parse_log_key,
    result_key,
    result_of,
    snapshot_key,
)
from raft.core.messages import Entry
from raft.ports.store import Change, ClientResult, StoredServer, VersionConflict

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger("raft.store.table")

# A cold load re-reads the state entity after the rows; it retries this often if new states
# keep being committed meanwhile.
MAX_LOAD_ATTEMPTS = 8


@dataclass
class _Cached:
    meta: Meta
    # None when this instance knows the version but not the rows (a save based on a point read).
    state: dict[str, Any] | None
    log: list[Entry] | None
    snapshot: str | None


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
        pk = check_partition_key(server_id)
        entity = self._get(pk, STATE_ROW)
        if entity is None or not Meta.of(entity).real:
            self.drop_cache(server_id)
            return None
        meta = Meta.of(entity)
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
        entity = self._get(check_partition_key(server_id), STATE_ROW)
        if entity is None or not Meta.of(entity).real:
            return None
        state: dict[str, Any] = json.loads(as_str(entity["state"]))
        return state

    def read_result(self, server_id: str, client_id: str) -> ClientResult | None:
        entity = self._get(check_partition_key(server_id), result_key(client_id))
        if entity is None:
            return None
        result = result_of(entity)
        return result if result.client_id == client_id else None

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
            meta = Meta.of(entity)
            state = json.loads(as_str(entity["state"]))
            entries = self._read_log(server_id, pk, meta)
            snapshot = self._read_snapshot(server_id, pk, meta)
            again = self._get(pk, STATE_ROW)
            if again is None or not Meta.of(again).real:
                return None
            newer = Meta.of(again)
            if newer.commit == meta.commit:
                return _Cached(newer, state, entries, snapshot)
            log.info("server=%s state changed while loading; reading it again", server_id)
            entity = again
        raise RuntimeError(
            f"{server_id}: the stored state changed {MAX_LOAD_ATTEMPTS} times while loading"
        )

    def _read_log(self, server_id: str, pk: str, meta: Meta) -> list[Entry]:
        if meta.last_index == 0:
            return []
        found: list[Entry | None] = [None] * meta.last_index
        rows = self.table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": pk, "lo": log_key(1, 0), "hi": log_key(meta.last_index + 1, 0)},
            select=LOG_COLUMNS,
        )
        for row in rows:
            index, generation = parse_log_key(row["RowKey"])
            if 1 <= index <= meta.last_index and generation == meta.generation_at(index):
                found[index - 1] = entry_of(row)
        missing = [i for i, e in enumerate(found, 1) if e is None]
        if missing:
            raise RuntimeError(
                f"{server_id}: log rows missing for indexes {missing[:10]} "
                f"(last_index {meta.last_index}); the table is damaged"
            )
        return [e for e in found if e is not None]

    def _read_snapshot(self, server_id: str, pk: str, meta: Meta) -> str | None:
        if meta.snap is None:
            return None
        snapshot_id, parts = meta.snap
        pieces: list[str] = []
        for part in range(parts):
            row = self._get(pk, snapshot_key(snapshot_id, part))
            if row is None:
                raise RuntimeError(f"{server_id}: snapshot row {part} of {parts} is missing")
            pieces.extend(as_str(row.get(f"p{i:02d}")) for i in range(as_int(row.get("n"))))
        return "".join(pieces)

    # -------------------------------------------------------------------------- save

    def save(self, server_id: str, expected_version: str | None, change: Change) -> str:
        prepared = prepare(check_partition_key(server_id), change)
        try:
            base = self._base(server_id, prepared.pk, expected_version)
            plan = plan_save(base, prepared, split=False)
            if plan.fits_one_transaction():
                etag = self._submit(single_transaction(base, plan))
            else:
                plan = plan_save(base, prepared, split=True)
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

    def _base(self, server_id: str, pk: str, expected: str | None) -> Meta:
        """The stored metadata at `expected`, or VersionConflict if that is not the stored one."""
        if expected is not None:
            with self._lock:
                cached = self._cache.get(server_id)
            if cached is not None and cached.meta.etag == expected:
                return cached.meta
        entity = self._get(pk, STATE_ROW)
        meta = Meta.absent() if entity is None else Meta.of(entity)
        if expected is None and not meta.real:
            return meta  # absent, or a placeholder a split first save left
        if expected is None or meta.etag != expected or not meta.real:
            raise VersionConflict(
                f"{server_id}: expected version {expected}, found "
                f"{meta.etag if meta.real else None}"
            )
        return meta

    def _save_split(self, server_id: str, base: Meta, plan: Plan) -> str:
        split = split_transactions(plan)
        log.info(
            "server=%s split save: %d operations in %d transactions",
            server_id,
            plan.operations,
            len(split.early) + 1,
        )
        etag = base.etag
        for batch in split.early:
            etag = self._submit([state_operation(etag, split.marker, UpdateMode.MERGE), *batch])
        etag = self._submit([state_operation(etag, plan.commit, UpdateMode.REPLACE), *split.final])
        if split.cleanup:
            self._cleanup(server_id, plan.commit["PartitionKey"], split.cleanup)
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

    def _remember(self, server_id: str, base: Meta, meta: Meta, change: Change) -> None:
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
