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
  entity (``segs``: ``[[start_index, generation], ...]``). **A row at an (index, generation)
  never changes**: entries that replace stored ones (a follower truncating a conflicting
  suffix) go under a fresh generation, so any row a reader holds stays valid.
- ``snap-<id>-<part>``: the latest snapshot of the applied state (application and client
  sessions), split into properties of at most 32,000 UTF-16 code units and rows of at most
  about 900 KiB; its index, term and configuration are columns of the state entity.
- ``inc-<id>-<part>``: the chunks received so far of a snapshot being installed.
- ``result-c-<client id>`` (ids of letters, digits and ``._~-``) or ``result-h-<sha256>`` (any
  other id: RowKeys may not hold ``/ \\ # ?`` or control characters): the last result for a
  client, with the real id as a property.

**Readers trust only what the state entity references**: log rows ``log_start``+1 ..
``last_index`` under the generation ``segs`` assigns to each index, and the snapshot and
incoming rows it names. Every other row is invisible, so rows may be written ahead of the state
entity that references them, and deleted after it stops referencing them.

**Compaction** moves ``log_start`` (the state dict's): the rows up to it become invisible at
once, and each save deletes up to 32 of them, from ``gc_from`` on, inside its own transaction,
so the work per save is bounded and no save grows past the transaction limits.

**The common save is one entity-group transaction**: the state entity first (Insert when no
state exists, which fails with 409 if one does; otherwise Replace with If-Match on the ETag the
caller loaded, which fails with 412), then the rows, then deletes of rows no state references
any more. Both failures become `VersionConflict`; everything else propagates.

**A save that needs more than 100 operations (or 3.5 MiB of payload)** is split so that it still
appears atomic and can never damage a state another instance saved concurrently:

1. Every earlier transaction is *also* conditioned on the state entity: it carries a Merge of the
   state entity with If-Match on the ETag from the previous transaction (touching only the
   ``next_gen`` counter, never the state), and continues the chain with the ETag it gets back.
   So no row is ever written unconditionally: if anybody else saves in between, the next
   transaction of the chain fails with 412 and the save stops with `VersionConflict`.
2. The earlier transactions write only invisible rows: entries past the stored ``last_index`` or
   under a fresh generation, and snapshot or incoming rows under a fresh id. The rows the stored
   state references are never overwritten.
3. The last transaction replaces the state entity (If-Match), which switches readers to the
   new rows at once, and carries the client results. If a save needs more than 99 results
   (never in practice: one step applies what one message committed), the excess results are
   written in the earlier, conditioned transactions; they may then become readable shortly
   before the state that produced them, which is harmless because a result is only recorded for
   a committed entry and is the same whichever instance applies it.
4. Rows that only the old state referenced are deleted in the last transaction if there is
   room, otherwise afterwards, best effort (they are invisible either way).

The earlier transactions change the state entity's ETag without changing the state, so the
entity also carries ``commit``, a random id written with each new state: a cached or half-read
log is still valid when the ETag moved but ``commit`` did not.

**Cache and incremental loads**: per server, this instance keeps the rows it last loaded or
saved. `load` reads the state entity (one point read) and then only the rows it lacks: log rows
past what it holds or under a generation it has not seen, and snapshot or incoming rows under an
id it has not read. A cold `load` reads the snapshot and the log tail, then re-reads the state
entity; if a new state was committed meanwhile it reads only what that one added, and repeats,
so it never returns a mixture of two versions, and never gives up on a server that keeps saving
as long as it reads faster than the server writes.

**Limits**: a property holds at most 64 KiB (strings are counted in UTF-16, so at most 32,768
code units) and an entity at most 1 MiB; a change that would break them raises
`StoreLimitError` before anything is sent.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from raft.adapters.connections import Connection
from raft.adapters.table_plan import (
    Meta,
    Plan,
    SnapshotRef,
    generation_at,
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
    incoming_key,
    log_key,
    parse_log_key,
    read_answer_key,
    result_key,
    result_of,
    snapshot_key,
)
from raft.core.messages import Entry
from raft.core.state import Snapshot
from raft.ports.store import Change, ClientResult, StoredServer, VersionConflict

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger("raft.store.table")

# A load gives up (the table is damaged, or the server saves faster than it can be read) after
# this many rounds that each read what the previous round's state added.
MAX_LOAD_ROUNDS = 64


@dataclass
class _Rows:
    """Rows this instance has read or written for one server: entries by index with the
    generation they were read under, and the snapshot and incoming rows by id."""

    entries: dict[int, tuple[int, Entry]] = field(default_factory=dict)
    snapshot: tuple[int, str] | None = None  # (snapshot id, data)
    incoming: tuple[int, list[str]] | None = None  # (transfer id, parts)

    def entry(self, meta: Meta, index: int) -> Entry | None:
        held = self.entries.get(index)
        if held is None or held[0] != meta.generation_at(index):
            return None
        return held[1]

    def forget_outside(self, meta: Meta) -> None:
        """Drop entries the state no longer references, so memory follows the log's size."""
        self.entries = {
            i: held
            for i, held in self.entries.items()
            if meta.log_start < i <= meta.last_index and held[0] == meta.generation_at(i)
        }


@dataclass
class _Cached:
    meta: Meta
    # None when this instance knows the version but not the state (a save on a point read).
    state: dict[str, Any] | None
    rows: _Rows


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
        self.point_reads = 0
        self.rows_read = 0
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
                and cached.state is not None
                and (cached.meta.etag == meta.etag or cached.meta.commit == meta.commit)
            ):
                cached.meta = replace(cached.meta, etag=meta.etag)
                self.cached_loads += 1
                return self._stored(cached)
            rows = cached.rows if cached is not None else _Rows()
        loaded = self._load_rows(server_id, pk, entity, rows)
        with self._lock:
            self._cache[server_id] = loaded
            self.full_loads += 1
            return self._stored(loaded)

    def version(self, server_id: str) -> str | None:
        entity = self._get(check_partition_key(server_id), STATE_ROW, select=["commit"])
        if entity is None:
            return None
        # A split save's earlier transactions move the ETag but not `commit`: the state is
        # the same, so a copy from the ETag the cache holds for it is still current.
        with self._lock:
            cached = self._cache.get(server_id)
            if cached is not None and cached.meta.commit == as_str(entity.get("commit")):
                return cached.meta.etag
        return str(entity.metadata["etag"])

    def read_state(self, server_id: str) -> dict[str, Any] | None:
        entity = self._get(check_partition_key(server_id), STATE_ROW)
        if entity is None or not Meta.of(entity).real:
            return None
        state: dict[str, Any] = json.loads(as_str(entity["state"]))
        return state

    def read_result(self, server_id: str, client_id: str) -> ClientResult | None:
        return self._client_row(server_id, result_key(client_id), client_id)

    def read_answer(self, server_id: str, client_id: str) -> ClientResult | None:
        return self._client_row(server_id, read_answer_key(client_id), client_id)

    def _client_row(self, server_id: str, row_key: str, client_id: str) -> ClientResult | None:
        """The result row at `row_key` if it is `client_id`'s (hashed keys and answer slots
        are shared)."""
        entity = self._get(check_partition_key(server_id), row_key)
        if entity is None:
            return None
        result = result_of(entity)
        return result if result.client_id == client_id else None

    @staticmethod
    def _stored(cached: _Cached) -> StoredServer:
        meta, rows = cached.meta, cached.rows
        assert meta.etag is not None and cached.state is not None
        entries = [rows.entry(meta, i) for i in range(meta.log_start + 1, meta.last_index + 1)]
        assert all(e is not None for e in entries), "a cached load holds every entry"
        snapshot = None
        if meta.snap is not None:
            assert rows.snapshot is not None and rows.snapshot[0] == meta.snap.id
            snapshot = _snapshot(meta.snap, rows.snapshot[1])
        incoming = ""
        if meta.inc is not None and rows.incoming is not None:
            incoming = "".join(rows.incoming[1][: meta.inc[1]])
        return StoredServer(
            version=meta.etag,
            state=copy.deepcopy(cached.state),
            log=[e for e in entries if e is not None],
            snapshot=snapshot,
            incoming=incoming,
        )

    def _get(self, pk: str, row_key: str, select: list[str] | None = None) -> Any:
        with self._lock:
            self.point_reads += 1
        try:
            return self.table.get_entity(pk, row_key, select=select)
        except ResourceNotFoundError:
            return None

    def _load_rows(self, server_id: str, pk: str, entity: Any, rows: _Rows) -> _Cached:
        """Read the rows `entity` references that `rows` lacks; re-read the state entity and
        repeat while new states are committed meanwhile, reading only what each one added."""
        for _round in range(MAX_LOAD_ROUNDS):
            meta = Meta.of(entity)
            state = json.loads(as_str(entity["state"]))
            self._read_log(pk, meta, rows)
            self._read_snapshot(pk, meta, rows)
            self._read_incoming(pk, meta, rows)
            again = self._get(pk, STATE_ROW)
            if again is None or not Meta.of(again).real:
                raise VersionConflict(f"{server_id}: the state entity vanished while loading")
            newer = Meta.of(again)
            missing = [
                i for i in range(meta.log_start + 1, meta.last_index + 1) if not rows.entry(meta, i)
            ]
            if newer.commit == meta.commit:
                if missing:
                    raise RuntimeError(
                        f"{server_id}: log rows missing for indexes {missing[:10]} "
                        f"(log {meta.log_start + 1}..{meta.last_index}); the table is damaged"
                    )
                rows.forget_outside(newer)
                return _Cached(newer, state, rows)
            log.info("server=%s state changed while loading; reading what it added", server_id)
            entity = again
        raise RuntimeError(
            f"{server_id}: the stored state changed {MAX_LOAD_ROUNDS} times while loading"
        )

    def _read_log(self, pk: str, meta: Meta, rows: _Rows) -> None:
        """Query the ranges of referenced entries `rows` lacks (usually just the tail)."""
        for lo, hi in _ranges(
            i for i in range(meta.log_start + 1, meta.last_index + 1) if not rows.entry(meta, i)
        ):
            found = self.table.query_entities(
                "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                parameters={"pk": pk, "lo": log_key(lo, 0), "hi": log_key(hi + 1, 0)},
                select=LOG_COLUMNS,
            )
            for row in found:
                index, generation = parse_log_key(row["RowKey"])
                with self._lock:
                    self.rows_read += 1
                if lo <= index <= hi and generation == meta.generation_at(index):
                    rows.entries[index] = (generation, entry_of(row))

    def _read_snapshot(self, pk: str, meta: Meta, rows: _Rows) -> None:
        ref = meta.snap
        if ref is None or (rows.snapshot is not None and rows.snapshot[0] == ref.id):
            return
        parts = [self._read_chunk_row(pk, snapshot_key(ref.id, p)) for p in range(ref.parts)]
        if all(p is not None for p in parts):
            rows.snapshot = (ref.id, "".join(p for p in parts if p is not None))

    def _read_incoming(self, pk: str, meta: Meta, rows: _Rows) -> None:
        if meta.inc is None:
            rows.incoming = None
            return
        transfer, count = meta.inc
        if rows.incoming is None or rows.incoming[0] != transfer:
            rows.incoming = (transfer, [])
        held = rows.incoming[1]
        for part in range(len(held), count):
            piece = self._read_chunk_row(pk, incoming_key(transfer, part))
            if piece is None:
                return
            held.append(piece)

    def _read_chunk_row(self, pk: str, row_key: str) -> str | None:
        row = self._get(pk, row_key)
        if row is None:
            return None
        with self._lock:
            self.rows_read += 1
        return "".join(as_str(row.get(f"p{i:02d}")) for i in range(as_int(row.get("n"))))

    # -------------------------------------------------------------------------- save

    def save(self, server_id: str, expected_version: str | None, change: Change) -> str:
        prepared = prepare(check_partition_key(server_id), change)
        try:
            base = self._base(server_id, prepared.pk, expected_version)
            plan = plan_save(base, prepared)
            if plan.fits_one_transaction():
                etag = self._submit(single_transaction(base, plan))
            else:
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
        if change.forget_results:
            # Not in the save's transaction: deleting a row that is already gone fails one.
            keys = [result_key(client_id) for client_id in change.forget_results]
            self._cleanup(server_id, prepared.pk, keys)
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
        """Keep what this save wrote, so the next load reads nothing but the state entity."""
        with self._lock:
            cached = self._cache.get(server_id)
            known = cached is not None and cached.meta.etag == base.etag
            rows = cached.rows if cached is not None and known else _Rows()
            if change.log_from is not None:
                generation = generation_at(meta.segs, change.log_from)
                for index, entry in enumerate(change.entries, change.log_from):
                    rows.entries[index] = (generation, entry)
            if change.snapshot is not None and meta.snap is not None:
                rows.snapshot = (meta.snap.id, change.snapshot.data)
            if meta.inc is None:
                rows.incoming = None
            elif change.snapshot_chunks:
                if rows.incoming is None or rows.incoming[0] != meta.inc[0]:
                    rows.incoming = (meta.inc[0], [])
                first_new = meta.inc[1] - len(change.snapshot_chunks)
                held = rows.incoming[1][: max(0, first_new)]
                rows.incoming = (meta.inc[0], held + [c.data for c in change.snapshot_chunks])
            rows.forget_outside(meta)
            # The rows held are all the new state references only if they were all held
            # before (or there was nothing before); otherwise the next load reads the rest.
            complete = not base.real or (known and cached is not None and cached.state is not None)
            state = copy.deepcopy(change.state) if complete else None
            self._cache[server_id] = _Cached(meta, state, rows)


def _snapshot(ref: SnapshotRef, data: str) -> Snapshot:
    return Snapshot(ref.index, ref.term, data, ref.servers)


def _ranges(indexes: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive runs of ascending indexes, as (first, last)."""
    runs: list[tuple[int, int]] = []
    for index in indexes:
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs
