"""What it costs to keep and load a server as history grows (log compaction, incremental loads).

A 3-server cluster of node handlers over one store commits N commands (1k, 10k, 100k), each
from its own HTTP-style client (no reply address, so its result is stored for polling, as the
HTTP function's are), on a bounded key space, so the application state stays the same size and
only history grows. The virtual clock moves 1 ms per command and sessions are kept for
`retention_ms`, so about that many sessions (and stored results) are live at any time.

Then, for the leader: rows kept (log, snapshot, incoming, results), rows a cold load reads and
how long that load takes (a new store object and a new node handler: snapshot restore plus log
replay), the memory the loaded server holds, and how many rows a warm instance re-reads after
another instance's saves (only what it lacks).
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from raft.adapters.memory_bus import InMemoryBus
from raft.adapters.memory_store import InMemoryStore
from raft.app.kv import encode
from raft.app.sessions import SessionPolicy
from raft.core.messages import ClientRequest, Envelope
from raft.core.state import Config, Role
from raft.hosts.settings import server_ids
from raft.node.handler import NodeHandler, NodeOptions
from raft.ports.store import Store

CONFIG = Config(election_timeout_min=150, election_timeout_max=300, heartbeat_interval=50)
KEYS = 200
BATCH = 200
RETENTION_MS = 500
# Each figure is the largest over this many rounds after the fill (a round commits a batch), so
# it does not depend on where in its snapshot cycle the server happens to be.
ROUNDS = 4


@dataclass(frozen=True)
class HistoryPoint:
    store: str
    committed: int
    log_rows: int
    snapshot_rows: int
    result_rows: int
    cold_load_rows_read: int
    cold_load_s: float
    memory_kib: float
    warm_reload_rows_read: int
    entries_added_meanwhile: int
    fill_s: float


class _Driver:
    def __init__(self, store_factory: Callable[[], Store], servers: int) -> None:
        self.store_factory = store_factory
        self.store = store_factory()
        self.bus = InMemoryBus()
        self.servers = server_ids(servers)
        # A snapshot every 128 applied entries whatever the state's size, so the figures do
        # not move with the snapshot's size.
        self.options = NodeOptions(
            config=CONFIG,
            sessions=SessionPolicy(retention_ms=RETENTION_MS),
            snapshot_every=128,
            snapshot_chars_per_entry=10**9,
        )
        self.handlers = {s: self._handler(s, self.store) for s in self.servers}
        self.now = 0
        self.sent = 0

    def _handler(self, server_id: str, store: Store) -> NodeHandler:
        return NodeHandler(server_id, self.servers, store, self.bus, self.options)

    def settle(self) -> None:
        for _ in range(1000):
            busy = False
            for server_id, handler in self.handlers.items():
                batch = self.bus.drain(server_id)
                if batch:
                    busy = True
                    handler.handle(batch, self.now)
            if not busy:
                return

    def leader(self) -> str:
        while True:
            for server_id, handler in self.handlers.items():
                if handler.state().role is Role.LEADER:
                    return server_id
            self.now += 10
            for handler in self.handlers.values():
                handler.tick(self.now)
            self.settle()

    def commit(self, count: int) -> None:
        while count > 0:
            leader = self.leader()
            batch = []
            for _ in range(min(BATCH, count)):
                self.sent += 1
                self.now += 1
                data = encode({"op": "put", "key": f"k{self.sent % KEYS}", "value": self.sent})
                request = ClientRequest(f"h-{self.sent}", 1, data, issued_at=self.now)
                batch.append(Envelope(request.client_id, leader, request))
            self.handlers[leader].handle(batch, self.now)
            count -= len(batch)
            self.settle()
            self.handlers[leader].tick(self.now)  # heartbeats carry the new commit index
            self.settle()


def _rows(store: Store, server_id: str) -> dict[str, int]:
    from raft.adapters.table_store import TableStore

    if isinstance(store, TableStore):
        keys = [
            row["RowKey"]
            for row in store.table.query_entities(
                "PartitionKey eq @pk", parameters={"pk": server_id}, select=["RowKey"]
            )
        ]
        return {prefix: sum(k.startswith(prefix) for k in keys) for prefix in PREFIXES}
    assert isinstance(store, InMemoryStore)
    return store.row_counts(server_id)


PREFIXES = ("log-", "snap-", "result-")


def measure_point(
    store_name: str, store_factory: Callable[[], Store], committed: int, servers: int = 3
) -> HistoryPoint:
    driver = _Driver(store_factory, servers)
    started = time.perf_counter()
    driver.commit(max(0, committed - 2 * ROUNDS * BATCH))  # each round commits two batches
    fill_s = time.perf_counter() - started
    rounds = [_round(driver, store_factory) for _ in range(ROUNDS)]
    return HistoryPoint(
        store_name,
        committed,
        fill_s=round(fill_s, 2),
        # The largest count over the rounds; the fastest load (timing noise only adds).
        **{
            key: (min if key == "cold_load_s" else max)(r[key] for r in rounds) for key in rounds[0]
        },
    )


def _round(driver: _Driver, store_factory: Callable[[], Store]) -> dict[str, Any]:
    """Commit one batch, then measure the leader as it stands."""
    driver.commit(BATCH)
    leader = driver.leader()
    rows = _rows(driver.store, leader)
    # A cold instance: a new store object (no row cache) and a new handler.
    cold_store = store_factory()
    read_before = getattr(cold_store, "rows_read", 0)
    started = time.perf_counter()
    cold = driver._handler(leader, cold_store)
    last_index = cold.state().last_index
    cold_load_s = time.perf_counter() - started
    cold_rows = getattr(cold_store, "rows_read", 0) - read_before
    # The memory a loaded server holds, from another cold load (tracing slows the timing).
    tracemalloc.start()
    held = driver._handler(leader, store_factory())
    held.state()
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del held
    # That instance stays warm while the main one commits more; its next load reads the rest.
    driver.commit(BATCH)
    read_before = getattr(cold_store, "rows_read", 0)
    cold_store.load(leader)
    return {
        "log_rows": rows["log-"],
        "snapshot_rows": rows["snap-"],
        "result_rows": rows["result-"],
        "cold_load_rows_read": cold_rows,
        "cold_load_s": round(cold_load_s, 4),
        "memory_kib": round(memory / 1024, 1),
        "warm_reload_rows_read": getattr(cold_store, "rows_read", 0) - read_before,
        "entries_added_meanwhile": driver.handlers[leader].state().last_index - last_index,
    }


def measure_history(
    sizes: tuple[int, ...], stores: dict[str, Callable[[], Callable[[], Store]]]
) -> list[dict[str, Any]]:
    """One point per store and size; `stores` maps a name to a maker of store factories (a
    fresh storage for each point)."""
    points = []
    for name, make in stores.items():
        for size in sizes:
            points.append(asdict(measure_point(name, make(), size)))
    return points


def azurite_reachable(host: str = "127.0.0.1", port: int = 10002) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def azurite_tables() -> Callable[[], Store]:
    """TableStores (each with its own row cache) over a fresh table on local Azurite."""
    import uuid

    from raft.adapters.connections import AZURITE_CONNECTION_STRING, Connection
    from raft.adapters.table_store import TableStore

    connection = Connection(connection_string=AZURITE_CONNECTION_STRING)
    table = f"benchhistory{uuid.uuid4().hex[:12]}"
    return lambda: TableStore.from_connection(connection, table)
