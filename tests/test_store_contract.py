"""The Store contract, checked on the in-memory store and on the Table Storage store (Azurite).

Each test gets fresh storage; `backend.new_instance()` gives another store over the same storage
(for Table Storage a new TableStore with its own, cold cache, as another Functions instance has;
the in-memory store is one object, so it returns that object). The tests at the end check what
only the Table Storage store has: its cache, its limits, and split saves under failures.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from raft.adapters.connections import resolve
from raft.adapters.memory_store import InMemoryStore
from raft.adapters.table_plan import GC_PER_SAVE
from raft.adapters.table_rows import log_key, result_key
from raft.adapters.table_store import TableStore
from raft.core.messages import Entry
from raft.core.state import Snapshot, SnapshotChunk
from raft.ports.store import (
    Change,
    ClientResult,
    Store,
    StoredServer,
    StoreLimitError,
    VersionConflict,
)

SERVER = "server-1"


@dataclass
class Backend:
    name: str
    new_instance: Callable[[], Any]


def _table_name() -> str:
    return "raft" + uuid.uuid4().hex[:20]


@pytest.fixture(params=["memory", "table"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        store = InMemoryStore()
        yield Backend("memory", lambda: store)
        return
    connection = resolve(
        "RaftStorage", {"RaftStorage": request.getfixturevalue("azurite")}, "tables"
    )
    table = _table_name()
    stores: list[TableStore] = []

    def new_instance() -> TableStore:
        stores.append(TableStore.from_connection(connection, table))
        return stores[-1]

    yield Backend("table", new_instance)
    for store in stores:
        store.close()


class Interposer:
    """A TableClient stand-in that calls `hook(n, operations)` before the n-th transaction."""

    def __init__(self, inner: Any, hook: Callable[[int, list[Any]], None] | None = None) -> None:
        self.inner = inner
        self.hook = hook
        self.submits = 0
        self.queries = 0
        self.query_hook: Callable[[int], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def submit_transaction(self, operations: Any, **kwargs: Any) -> Any:
        operations = list(operations)
        self.submits += 1
        if self.hook is not None:
            self.hook(self.submits, operations)
        return self.inner.submit_transaction(operations, **kwargs)

    def query_entities(self, *args: Any, **kwargs: Any) -> Any:
        self.queries += 1
        rows = list(self.inner.query_entities(*args, **kwargs))
        if self.query_hook is not None:
            self.query_hook(self.queries)
        return rows


@dataclass
class Tables:
    """TableStores over one fresh Azurite table, each optionally behind an Interposer."""

    connection_string: str
    table: str = field(default_factory=_table_name)

    def client(self) -> Any:
        service = TableServiceClient.from_connection_string(self.connection_string)
        return service.create_table_if_not_exists(self.table)

    def store(self) -> tuple[TableStore, Interposer]:
        interposer = Interposer(self.client())
        return TableStore(interposer), interposer  # type: ignore[arg-type]


@pytest.fixture
def tables(azurite: str) -> Tables:
    return Tables(azurite)


def make_entries(count: int, *, start: int = 1, term: int = 1, tag: str = "x") -> tuple[Entry, ...]:
    return tuple(
        Entry(term=term, client_id=f"client-{i % 7}", seq=i, data=f'{{"op":"put","k":"{tag}{i}"}}')
        for i in range(start, start + count)
    )


def make_state(**fields: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "current_term": 1,
        "voted_for": "",
        "role": "follower",
        "leader_id": "",
        "commit_index": 0,
        "next_index": {"server-2": 1},
    }
    state.update(fields)
    return state


def snap(data: str) -> Snapshot:
    return Snapshot(0, 0, data, (SERVER, "server-2"))


def contents(stored: StoredServer | None) -> tuple[Any, ...] | None:
    return None if stored is None else (stored.state, stored.log, stored.snapshot)


# ------------------------------------------------------------------------------ the contract


def test_unknown_server_loads_as_none(backend: Backend) -> None:
    store: Store = backend.new_instance()
    assert store.load(SERVER) is None
    assert store.read_state(SERVER) is None
    assert store.read_result(SERVER, "client") is None


def test_first_save_expects_no_version_and_round_trips(backend: Backend) -> None:
    store = backend.new_instance()
    change = Change(make_state(commit_index=2), log_from=1, entries=make_entries(3))
    version = store.save(SERVER, None, change)
    loaded = store.load(SERVER)
    assert loaded is not None
    assert loaded.version == version
    assert loaded.state == make_state(commit_index=2)
    assert loaded.log == list(make_entries(3))
    assert loaded.snapshot is None


def test_second_save_expecting_no_version_conflicts(backend: Backend) -> None:
    store = backend.new_instance()
    store.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(1)))
    with pytest.raises(VersionConflict):
        store.save(SERVER, None, Change(make_state(current_term=9)))
    loaded = store.load(SERVER)
    assert loaded is not None and loaded.state["current_term"] == 1


def test_stale_version_conflicts_and_changes_nothing(backend: Backend) -> None:
    store = backend.new_instance()
    v1 = store.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(2)))
    v2 = store.save(
        SERVER, v1, Change(make_state(current_term=2), log_from=3, entries=make_entries(1, start=3))
    )
    before = contents(store.load(SERVER))
    with pytest.raises(VersionConflict):
        store.save(
            SERVER,
            v1,
            Change(
                make_state(current_term=7),
                log_from=1,
                entries=make_entries(5, tag="stale"),
                snapshot=snap("stale snapshot"),
                results=(ClientResult("c-stale", 1, "stale", 1, 7),),
            ),
        )
    after = backend.new_instance().load(SERVER)
    assert contents(after) == before
    assert after is not None and after.version == v2
    assert store.read_result(SERVER, "c-stale") is None


def _apply_script(store: Any, script: list[Change]) -> list[tuple[Any, ...] | None]:
    version = None
    seen = []
    for change in script:
        version = store.save(SERVER, version, change)
        seen.append(contents(store.load(SERVER)))
    return seen


def _script() -> list[Change]:
    """Appends, a truncation with replacement, a pure truncation, and state-only changes."""
    return [
        Change(make_state(), log_from=1, entries=make_entries(5)),
        Change(
            make_state(commit_index=3),
            log_from=6,
            entries=make_entries(3, start=6),
        ),
        Change(
            make_state(current_term=2),
            log_from=4,
            entries=make_entries(2, start=4, term=2, tag="t2-"),
        ),
        Change(make_state(current_term=3), log_from=3, entries=()),
        Change(make_state(current_term=3, voted_for="server-2")),
        Change(
            make_state(current_term=3),
            log_from=3,
            entries=make_entries(4, start=3, term=3, tag="t3-"),
        ),
        Change(
            make_state(current_term=4),
            log_from=1,
            entries=make_entries(2, term=4, tag="t4-"),
        ),
    ]


def test_truncation_and_append_match_the_in_memory_store(backend: Backend) -> None:
    expected = _apply_script(InMemoryStore(), _script())
    assert _apply_script(backend.new_instance(), _script()) == expected
    cold = backend.new_instance().load(SERVER)
    assert contents(cold) == expected[-1]
    assert cold is not None and [e.data for e in cold.log] == [
        '{"op":"put","k":"t4-1"}',
        '{"op":"put","k":"t4-2"}',
    ]


def test_snapshot_is_kept_until_a_later_change_replaces_it(backend: Backend) -> None:
    store = backend.new_instance()
    v = store.save(
        SERVER,
        None,
        Change(make_state(), log_from=1, entries=make_entries(2), snapshot=snap("snap-1")),
    )
    v = store.save(
        SERVER, v, Change(make_state(commit_index=1), log_from=3, entries=make_entries(1, start=3))
    )
    assert backend.new_instance().load(SERVER).snapshot == snap("snap-1")  # type: ignore[union-attr]
    store.save(SERVER, v, Change(make_state(commit_index=2), snapshot=snap("snap-2")))
    assert store.load(SERVER).snapshot == snap("snap-2")  # type: ignore[union-attr]
    assert backend.new_instance().load(SERVER).snapshot == snap("snap-2")  # type: ignore[union-attr]


def test_large_unicode_snapshot_round_trips(backend: Backend) -> None:
    # Over one property (32K UTF-16 units) and over one entity (1 MiB): several rows; astral
    # characters take two UTF-16 units and must not be cut in half.
    snapshot = ("kv:é€𝄞" * 90_000) + "end"
    store = backend.new_instance()
    v = store.save(SERVER, None, Change(make_state(), snapshot=snap(snapshot)))
    assert backend.new_instance().load(SERVER).snapshot == snap(snapshot)  # type: ignore[union-attr]
    v = store.save(SERVER, v, Change(make_state(), snapshot=snap("small")))
    assert backend.new_instance().load(SERVER).snapshot == snap("small")  # type: ignore[union-attr]
    store.save(SERVER, v, Change(make_state(), snapshot=snap("")))
    assert backend.new_instance().load(SERVER).snapshot == snap("")  # type: ignore[union-attr]


AWKWARD_CLIENT_IDS = [
    "plain-client_1.2",
    "with/slash",
    "hash#and?question",
    "back\\slash",
    "ünïcødé-客户-🚀",
    "control\x01\x1fchars",
    "x" * 300,
    "",
    "result-c-plain-client_1.2",
]


def test_results_are_readable_by_any_client_id(backend: Backend) -> None:
    store = backend.new_instance()
    results = tuple(
        ClientResult(cid, i, f"result for {cid!r}", i, 1)
        for i, cid in enumerate(AWKWARD_CLIENT_IDS, 1)
    )
    v = store.save(SERVER, None, Change(make_state(), results=results))
    reader = backend.new_instance()
    for result in results:
        assert reader.read_result(SERVER, result.client_id) == result
    assert reader.read_result(SERVER, "unknown") is None
    assert reader.read_result("server-2", "with/slash") is None
    # The last result for a client replaces the earlier one, also within one change.
    newer = (
        ClientResult("with/slash", 50, "older", 9, 2),
        ClientResult("with/slash", 51, "newest", 10, 2),
    )
    store.save(SERVER, v, Change(make_state(), results=newer))
    assert reader.read_result(SERVER, "with/slash") == newer[-1]
    assert reader.read_result(SERVER, "plain-client_1.2") == results[0]


def test_read_state_returns_the_saved_state(backend: Backend) -> None:
    store = backend.new_instance()
    v = store.save(
        SERVER,
        None,
        Change(make_state(role="leader", leader_id=SERVER), log_from=1, entries=make_entries(3)),
    )
    assert backend.new_instance().read_state(SERVER) == make_state(role="leader", leader_id=SERVER)
    store.save(SERVER, v, Change(make_state(current_term=5)))
    assert store.read_state(SERVER) == make_state(current_term=5)


def test_entry_fields_round_trip(backend: Backend) -> None:
    entries = (
        Entry(term=1),  # a leader's no-op: every string empty
        Entry(
            term=2**40, client_id="ünï/#?", seq=2**62, data='{"v":"𝄞 é"}', reply_to="client:reply/1"
        ),
        Entry(term=3, client_id="c", seq=0, data="x" * 32_000),
    )
    backend.new_instance().save(SERVER, None, Change(make_state(), log_from=1, entries=entries))
    assert backend.new_instance().load(SERVER).log == list(entries)  # type: ignore[union-attr]


def test_change_of_250_entries_round_trips(backend: Backend) -> None:
    store = backend.new_instance()
    entries = make_entries(250)
    v = store.save(SERVER, None, Change(make_state(), log_from=1, entries=entries))
    assert store.load(SERVER).log == list(entries)  # type: ignore[union-attr]
    assert backend.new_instance().load(SERVER).log == list(entries)  # type: ignore[union-attr]
    more = make_entries(3, start=251)
    store.save(
        SERVER,
        v,
        Change(make_state(commit_index=250), log_from=251, entries=more),
    )
    assert backend.new_instance().load(SERVER).log == list(entries + more)  # type: ignore[union-attr]


def test_rewrites_of_over_100_stored_entries_match_the_in_memory_store(backend: Backend) -> None:
    script = [
        Change(make_state(), log_from=1, entries=make_entries(250)),
        # Replace 200 stored entries and add 30 (a split save over stored rows).
        Change(
            make_state(current_term=2),
            log_from=51,
            entries=make_entries(230, start=51, term=2, tag="b"),
        ),
        # A small append to the rewritten part, then a small rewrite reaching back before it.
        Change(
            make_state(current_term=2),
            log_from=281,
            entries=make_entries(2, start=281, term=2, tag="c"),
        ),
        Change(
            make_state(current_term=3),
            log_from=40,
            entries=make_entries(3, start=40, term=3, tag="d"),
        ),
        # Regrow past the earlier segments' ends, then a long truncation.
        Change(
            make_state(current_term=3),
            log_from=43,
            entries=make_entries(150, start=43, term=3, tag="e"),
        ),
        Change(make_state(current_term=4), log_from=10, entries=()),
        Change(
            make_state(current_term=4),
            log_from=10,
            entries=make_entries(5, start=10, term=4, tag="f"),
        ),
    ]
    expected = _apply_script(InMemoryStore(), script)
    assert _apply_script(backend.new_instance(), script) == expected
    assert contents(backend.new_instance().load(SERVER)) == expected[-1]


def test_change_with_over_100_results_round_trips(backend: Backend) -> None:
    store = backend.new_instance()
    results = tuple(ClientResult(f"client/{i}", i, f"r{i}", i, 1) for i in range(1, 151))
    store.save(
        SERVER, None, Change(make_state(), log_from=1, entries=make_entries(20), results=results)
    )
    reader = backend.new_instance()
    assert all(reader.read_result(SERVER, r.client_id) == r for r in results)
    assert reader.load(SERVER).log == list(make_entries(20))  # type: ignore[union-attr]


def test_change_over_the_transaction_payload_limit_round_trips(backend: Backend) -> None:
    # 60 operations, but well over 4 MiB as the JSON the SDK sends (non-ASCII is escaped).
    entries = tuple(
        Entry(term=1, client_id="c", seq=i, data=f"{i}:" + "é" * 20_000) for i in range(1, 61)
    )
    backend.new_instance().save(SERVER, None, Change(make_state(), log_from=1, entries=entries))
    assert backend.new_instance().load(SERVER).log == list(entries)  # type: ignore[union-attr]


def test_cold_instance_sees_what_another_saved(backend: Backend) -> None:
    writer = backend.new_instance()
    v = writer.save(
        SERVER, None, Change(make_state(), log_from=1, entries=make_entries(4), snapshot=snap("s"))
    )
    writer.save(
        SERVER, v, Change(make_state(commit_index=4), log_from=5, entries=make_entries(1, start=5))
    )
    cold = backend.new_instance().load(SERVER)
    assert contents(cold) == (make_state(commit_index=4), list(make_entries(5)), snap("s"))
    assert cold is not None and cold.version == writer.load(SERVER).version  # type: ignore[union-attr]


def test_warm_cache_is_validated_by_version(backend: Backend) -> None:
    a, b = backend.new_instance(), backend.new_instance()
    a.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(3)))
    warm = a.load(SERVER)
    seen_by_b = b.load(SERVER)
    assert warm is not None and seen_by_b is not None and seen_by_b.version == warm.version
    b.save(
        SERVER,
        seen_by_b.version,
        Change(
            make_state(current_term=2),
            log_from=2,
            entries=make_entries(1, start=2, term=2, tag="b"),
        ),
    )
    again = a.load(SERVER)
    assert contents(again) == contents(b.load(SERVER))
    assert again is not None and again.log[1].data.endswith('"b2"}') and len(again.log) == 2
    with pytest.raises(VersionConflict):
        a.save(SERVER, warm.version, Change(make_state(current_term=9)))
    assert a.load(SERVER).state["current_term"] == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("size", [3, 250], ids=["one-transaction", "split"])
def test_racing_saves_from_one_version_have_exactly_one_winner(backend: Backend, size: int) -> None:
    a, b = backend.new_instance(), backend.new_instance()
    base = a.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(120)))
    assert b.load(SERVER) is not None and a.load(SERVER) is not None
    changes = {
        "a": Change(
            make_state(current_term=2, voted_for="a"),
            log_from=60,
            entries=make_entries(size, start=60, term=2, tag="a"),
        ),
        "b": Change(
            make_state(current_term=2, voted_for="b"),
            log_from=30,
            entries=make_entries(size, start=30, term=2, tag="b"),
        ),
    }
    stores = {"a": a, "b": b}
    barrier = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def run(name: str) -> None:
        barrier.wait()
        try:
            stores[name].save(SERVER, base, changes[name])
            outcome[name] = "saved"
        except VersionConflict:
            outcome[name] = "conflict"

    threads = [threading.Thread(target=run, args=(name,)) for name in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcome.values()) == ["conflict", "saved"]
    winner = next(name for name, result in outcome.items() if result == "saved")
    reference = InMemoryStore()
    v = reference.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(120)))
    reference.save(SERVER, v, changes[winner])
    assert contents(backend.new_instance().load(SERVER)) == contents(reference.load(SERVER))
    assert contents(a.load(SERVER)) == contents(reference.load(SERVER))
    assert contents(b.load(SERVER)) == contents(reference.load(SERVER))


def test_compaction_hides_the_entries_up_to_log_start(backend: Backend) -> None:
    store = backend.new_instance()
    v = store.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(10)))
    store.save(
        SERVER,
        v,
        Change(make_state(commit_index=8, log_start=6), snapshot=Snapshot(6, 1, "s6", (SERVER,))),
    )
    for loaded in (store.load(SERVER), backend.new_instance().load(SERVER)):
        assert loaded is not None and loaded.log == list(make_entries(10))[6:]
        assert loaded.snapshot == Snapshot(6, 1, "s6", (SERVER,))


def test_a_snapshot_installed_past_the_end_of_the_log_empties_it(backend: Backend) -> None:
    store = backend.new_instance()
    v = store.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(3)))
    v = store.save(
        SERVER, v, Change(make_state(log_start=8), snapshot=Snapshot(8, 2, "s8", (SERVER,)))
    )
    assert backend.new_instance().load(SERVER).log == []  # type: ignore[union-attr]
    more = make_entries(2, start=9, term=2)
    store.save(SERVER, v, Change(make_state(log_start=8), log_from=9, entries=more))
    assert backend.new_instance().load(SERVER).log == list(more)  # type: ignore[union-attr]


def test_a_change_cannot_rewrite_compacted_entries(backend: Backend) -> None:
    store = backend.new_instance()
    v = store.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(5)))
    v = store.save(SERVER, v, Change(make_state(log_start=3)))
    with pytest.raises(ValueError):
        store.save(SERVER, v, Change(make_state(log_start=3), log_from=2, entries=make_entries(1)))


def test_received_snapshot_chunks_accumulate_until_the_transfer_ends(backend: Backend) -> None:
    store = backend.new_instance()
    receiving = make_state(incoming={"index": 9, "term": 2, "offset": 0})
    chunk = SnapshotChunk
    v = store.save(SERVER, None, Change(receiving, snapshot_chunks=(chunk(9, 2, 0, "ab"),)))
    v = store.save(SERVER, v, Change(receiving, snapshot_chunks=(chunk(9, 2, 2, "cd"),)))
    assert backend.new_instance().load(SERVER).incoming == "abcd"  # type: ignore[union-attr]
    v = store.save(SERVER, v, Change(receiving, snapshot_chunks=(chunk(12, 2, 0, "new"),)))
    assert backend.new_instance().load(SERVER).incoming == "new"  # type: ignore[union-attr]
    store.save(SERVER, v, Change(make_state(incoming=None)))
    assert backend.new_instance().load(SERVER).incoming == ""  # type: ignore[union-attr]


def test_version_is_the_loaded_version_and_moves_with_each_save(backend: Backend) -> None:
    store, other = backend.new_instance(), backend.new_instance()
    assert store.version(SERVER) is None
    v1 = store.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(1)))
    assert other.version(SERVER) == v1 == other.load(SERVER).version  # type: ignore[union-attr]
    v2 = other.save(SERVER, v1, Change(make_state(current_term=2)))
    assert v2 != v1 and store.version(SERVER) == v2


# ------------------------------------------------------------------------------ Table Storage only


def test_warm_load_reads_only_the_state_entity(tables: Tables) -> None:
    store, client = tables.store()
    v = store.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(30)))
    store.save(
        SERVER,
        v,
        Change(make_state(commit_index=30), log_from=31, entries=make_entries(2, start=31)),
    )
    for _ in range(3):
        assert store.load(SERVER).log == list(make_entries(32))  # type: ignore[union-attr]
    assert client.queries == 0 and store.full_loads == 0 and store.cached_loads == 3
    cold, cold_client = tables.store()
    cold.load(SERVER)
    cold.load(SERVER)
    assert cold_client.queries == 1 and cold.full_loads == 1 and cold.cached_loads == 1


def test_common_save_is_one_transaction(tables: Tables) -> None:
    store, client = tables.store()
    v = store.save(
        SERVER, None, Change(make_state(), log_from=1, entries=make_entries(60), snapshot=snap("s"))
    )
    store.save(
        SERVER,
        v,
        Change(
            make_state(),
            log_from=40,
            entries=make_entries(30, start=40, tag="n"),
            snapshot=snap("t"),
            results=(ClientResult("c", 1, "r", 1, 1),),
        ),
    )
    assert client.submits == 2


def test_oversized_entry_raises_store_limit_error_and_sends_nothing(tables: Tables) -> None:
    store, client = tables.store()
    v = store.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(2)))
    before = contents(store.load(SERVER))
    submits = client.submits
    too_long = Entry(term=1, client_id="c", seq=1, data="é" * 32_769)  # 65,538 bytes in UTF-16
    with pytest.raises(StoreLimitError, match=r"log entry 4: property 'd' is 65538 bytes"):
        store.save(
            SERVER,
            v,
            Change(make_state(), log_from=3, entries=(*make_entries(1, start=3), too_long)),
        )
    astral = Entry(term=1, data="𝄞" * 16_385)  # 16,385 characters, 32,770 UTF-16 units
    with pytest.raises(StoreLimitError):
        store.save(SERVER, v, Change(make_state(), log_from=3, entries=(astral,)))
    with pytest.raises(StoreLimitError, match="state"):
        store.save(SERVER, v, Change(make_state(blob="x" * 40_000)))
    with pytest.raises(StoreLimitError, match="result"):
        store.save(
            SERVER, v, Change(make_state(), results=(ClientResult("c", 1, "r" * 40_000, 1, 1),))
        )
    assert client.submits == submits
    assert contents(tables.store()[0].load(SERVER)) == before
    fits = Entry(term=1, data="é" * 32_768)
    store.save(SERVER, v, Change(make_state(), log_from=3, entries=(fits,)))
    assert tables.store()[0].load(SERVER).log[-1] == fits  # type: ignore[union-attr]


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])
def test_interrupted_split_save_leaves_the_previous_state_intact(
    tables: Tables, crash_at: int
) -> None:
    store, client = tables.store()
    v = store.save(
        SERVER,
        None,
        Change(make_state(), log_from=1, entries=make_entries(150), snapshot=snap("old")),
    )
    before = contents(store.load(SERVER))
    submits = client.submits

    def crash(n: int, _operations: list[Any]) -> None:
        if n == submits + crash_at:
            raise Crash

    client.hook = crash
    rewrite = Change(
        make_state(current_term=2),
        log_from=20,
        entries=make_entries(200, start=20, term=2, tag="new"),
        snapshot=snap("new"),
    )
    with pytest.raises(Crash):
        store.save(SERVER, v, rewrite)
    client.hook = None
    assert contents(tables.store()[0].load(SERVER)) == before
    assert contents(store.load(SERVER)) == before
    # The caller's version may be stale now; reloading (cheap: the state did not change) works.
    current = store.load(SERVER)
    assert current is not None
    store.save(SERVER, current.version, rewrite)
    reference = InMemoryStore()
    rv = reference.save(
        SERVER,
        None,
        Change(make_state(), log_from=1, entries=make_entries(150), snapshot=snap("old")),
    )
    reference.save(SERVER, rv, rewrite)
    assert contents(tables.store()[0].load(SERVER)) == contents(reference.load(SERVER))


@pytest.mark.parametrize("overtake_at", [1, 2])
@pytest.mark.parametrize("kind", ["rewrite", "append"])
def test_split_save_overtaken_by_another_instance_conflicts_without_damage(
    tables: Tables, kind: str, overtake_at: int
) -> None:
    a, a_client = tables.store()
    b, _ = tables.store()
    v = a.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(150)))
    # b writes rows that a's split save also writes (in place: one small transaction).
    b_change = Change(
        make_state(current_term=3, voted_for="b"),
        log_from=140,
        entries=make_entries(20, start=140, term=3, tag="b"),
    )
    submits = a_client.submits

    def overtake(n: int, _operations: list[Any]) -> None:
        if n == submits + overtake_at:  # b loads the current version and saves, before a's n-th
            seen = b.load(SERVER)
            assert seen is not None
            b.save(SERVER, seen.version, b_change)

    a_client.hook = overtake
    log_from = 10 if kind == "rewrite" else 151
    a_change = Change(
        make_state(current_term=2, voted_for="a"),
        log_from=log_from,
        entries=make_entries(250, start=log_from, term=2, tag="a"),
    )
    with pytest.raises(VersionConflict):
        a.save(SERVER, v, a_change)
    assert a_client.submits == submits + overtake_at
    reference = InMemoryStore()
    rv = reference.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(150)))
    reference.save(SERVER, rv, b_change)
    assert contents(tables.store()[0].load(SERVER)) == contents(reference.load(SERVER))
    assert contents(a.load(SERVER)) == contents(reference.load(SERVER))


def test_cold_load_never_mixes_two_versions(tables: Tables) -> None:
    reader, reader_client = tables.store()
    writer, _ = tables.store()
    v = writer.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(10)))
    newer = Change(
        make_state(current_term=2),
        log_from=5,
        entries=make_entries(8, start=5, term=2, tag="n"),
    )

    def save_between_rows_and_recheck(n: int) -> None:
        if n == 1:
            writer.save(SERVER, v, newer)

    reader_client.query_hook = save_between_rows_and_recheck
    loaded = reader.load(SERVER)
    assert contents(loaded) == contents(writer.load(SERVER))
    assert loaded is not None and loaded.log[4].data.endswith('"n5"}')
    assert reader_client.queries == 2


def test_result_keys_are_valid_row_keys() -> None:
    for client_id in AWKWARD_CLIENT_IDS:
        key = result_key(client_id)
        assert len(key) <= 255 and not set(key) & set("/\\#?")
        assert all(0x20 <= ord(ch) < 0x7F for ch in key)
    assert result_key("with/slash") != result_key("with\\slash")


def test_invalid_server_id_is_refused(tables: Tables) -> None:
    store, client = tables.store()
    with pytest.raises(ValueError, match="PartitionKey"):
        store.save("bad/id", None, Change(make_state()))
    assert client.submits == 0


def test_node_handlers_run_a_cluster_on_table_storage(tables: Tables) -> None:
    from raft.app.kv import encode
    from raft.core.messages import ClientRequest, ClientStatus
    from raft.node.handler import NodeHandler, NodeOptions
    from tests.helpers import CONFIG, ManualCluster

    cluster = ManualCluster(3, NodeOptions(config=CONFIG, snapshot_every=4))
    store, _ = tables.store()
    cluster.store = store  # type: ignore[assignment]
    cluster.handlers = {
        s: NodeHandler(s, cluster.servers, store, cluster.bus, cluster.options)
        for s in cluster.servers
    }
    leader = cluster.elect()
    for seq in range(1, 11):
        command = encode({"op": "put", "key": f"k{seq}", "value": seq})
        (response,) = cluster.submit(ClientRequest("c/1", seq, command, "c/1"))
        assert response.status is ClientStatus.OK
    # A cold instance on another TableStore restores the snapshot and replays the log tail.
    cold_store, _ = tables.store()
    cold = NodeHandler(leader, cluster.servers, cold_store, cluster.bus, cluster.options)
    assert cold.state().last_applied == cluster.handlers[leader].state().last_applied
    assert cold_store.load(leader).snapshot is not None  # type: ignore[union-attr]
    cluster.handlers[leader] = cold
    (read,) = cluster.submit(
        ClientRequest("c/1", 11, encode({"op": "get", "key": "k7"}), "c/1"), to=leader
    )
    assert read.status is ClientStatus.OK and json.loads(read.result)["value"] == 7


def _partition_rows(tables: Tables, prefix: str) -> list[str]:
    rows = tables.client().query_entities(f"PartitionKey eq '{SERVER}'", select=["RowKey"])
    return sorted(r["RowKey"] for r in rows if r["RowKey"].startswith(prefix))


def test_compacted_rows_are_deleted_a_bounded_number_per_save(tables: Tables) -> None:
    store, client = tables.store()
    v = store.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(90)))
    submits = client.submits
    v = store.save(SERVER, v, Change(make_state(log_start=80)))
    assert client.submits == submits + 1  # the deletes ride in the save's one transaction
    assert len(_partition_rows(tables, "log-")) == 90 - GC_PER_SAVE
    for _ in range(3):
        v = store.save(SERVER, v, Change(make_state(log_start=80)))
    assert _partition_rows(tables, "log-") == [log_key(i, 0) for i in range(81, 91)]


def test_replaced_snapshots_and_finished_transfers_leave_no_rows(tables: Tables) -> None:
    store, _ = tables.store()
    big = "x" * 100_000  # several rows
    v = store.save(SERVER, None, Change(make_state(), snapshot=Snapshot(1, 1, big, (SERVER,))))
    v = store.save(SERVER, v, Change(make_state(), snapshot=Snapshot(2, 1, "small", (SERVER,))))
    assert len(_partition_rows(tables, "snap-")) == 1
    receiving = make_state(incoming={"index": 9})
    v = store.save(SERVER, v, Change(receiving, snapshot_chunks=(SnapshotChunk(9, 1, 0, "abc"),)))
    assert len(_partition_rows(tables, "inc-")) == 1
    store.save(SERVER, v, Change(make_state(incoming=None)))
    assert _partition_rows(tables, "inc-") == []


def test_a_stale_warm_cache_reads_only_the_rows_it_lacks(tables: Tables) -> None:
    a, _ = tables.store()
    b, _ = tables.store()
    v = a.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(200)))
    assert b.load(SERVER) is not None
    v = a.save(SERVER, v, Change(make_state(), log_from=201, entries=make_entries(3, start=201)))
    before = b.rows_read
    loaded = b.load(SERVER)
    assert loaded is not None and loaded.log == list(make_entries(203))
    assert b.rows_read - before == 3


def test_a_cold_load_finishes_while_the_server_keeps_saving(tables: Tables) -> None:
    writer, _ = tables.store()
    reader, reader_client = tables.store()
    version = writer.save(SERVER, None, Change(make_state(), log_from=1, entries=make_entries(50)))
    last = 50

    def save_after_every_query(n: int) -> None:
        nonlocal version, last
        if n <= 10:  # ten saves land while the reader reads
            version = writer.save(
                SERVER,
                version,
                Change(make_state(), log_from=last + 1, entries=make_entries(1, start=last + 1)),
            )
            last += 1

    reader_client.query_hook = save_after_every_query
    loaded = reader.load(SERVER)
    assert contents(loaded) == contents(writer.load(SERVER))
    assert loaded is not None and len(loaded.log) == 60
