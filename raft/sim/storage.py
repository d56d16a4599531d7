"""The production in-memory store, watched: every successful save is mirrored into a
read-only `PersistedView` per server and reported to the simulator, which is how monitors see
exactly what survives a crash without reading the store's private records or deep-copying.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from raft.adapters.memory_store import InMemoryStore
from raft.core.messages import Entry
from raft.ports.store import Change, ClientResult, StoredServer


@dataclass(slots=True)
class PersistedView:
    """What the store holds for one server: its state dict (never mutated once saved) and a
    mirror of its log. The mirror is the server's logical log: entries compacted into a
    snapshot stay in it, since they are still part of what the server holds."""

    state: dict[str, Any] = field(default_factory=dict)
    log: list[Entry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SaveEvent:
    """One successful save, as the monitors see it."""

    server: str
    before: dict[str, Any] | None  # the state saved before, None on the first save
    change: Change
    old_length: int  # how long the persisted log was before
    view: PersistedView  # what the store holds now

    @property
    def state(self) -> dict[str, Any]:
        return self.change.state


SaveListener = Callable[[SaveEvent], None]


class WatchedStore:
    def __init__(self, servers: tuple[str, ...], listener: SaveListener) -> None:
        self.inner = InMemoryStore()
        self.views = {s: PersistedView() for s in servers}
        self.listener = listener
        # Loads so far: a handler loads when its cache is cold or stale (traces note it).
        self.loads = 0

    def load(self, server_id: str) -> StoredServer | None:
        self.loads += 1
        return self.inner.load(server_id)

    def version(self, server_id: str) -> str | None:
        return self.inner.version(server_id)

    def save(self, server_id: str, expected_version: str | None, change: Change) -> str:
        version = self.inner.save(server_id, expected_version, change)
        view = self.views[server_id]
        before = view.state or None
        old_length = len(view.log)
        view.state = change.state
        rewritten = self._fill_compacted(server_id, view, change)
        if change.log_from is not None:
            del view.log[change.log_from - 1 :]
            view.log.extend(change.entries)
        if rewritten is not None and (change.log_from is None or rewritten < change.log_from):
            # Monitors see the filled-in prefix as written by this save.
            change = replace(change, log_from=rewritten, entries=tuple(view.log[rewritten - 1 :]))
        self.listener(SaveEvent(server_id, before, change, old_length, view))
        return version

    def _fill_compacted(self, server_id: str, view: PersistedView, change: Change) -> int | None:
        """A snapshot from the leader replaces the log up to its index with the committed
        entries it covers, which this server may never have held: take them from a server
        that has committed that far (every such server holds the same ones). Returns the
        first index rewritten, if any."""
        log_start: int = change.state.get("log_start", 0)
        if change.snapshot is None or log_start == 0:
            return None
        donor = next(
            (
                v
                for s, v in self.views.items()
                if s != server_id
                and v.state.get("commit_index", 0) >= log_start
                and len(v.log) >= log_start
            ),
            None,
        )
        if donor is None:
            return None
        prefix = donor.log[:log_start]
        first = next((i for i, e in enumerate(view.log[:log_start]) if e != prefix[i]), None)
        if first is None and len(view.log) >= log_start:
            return None
        first = min(first if first is not None else len(view.log), log_start)
        tail = view.log[log_start:] if len(view.log) > log_start else []
        view.log[:] = prefix + tail
        return first + 1

    def read_state(self, server_id: str) -> dict[str, Any] | None:
        return self.inner.read_state(server_id)

    def read_result(self, server_id: str, client_id: str) -> ClientResult | None:
        return self.inner.read_result(server_id, client_id)

    def read_answer(self, server_id: str, client_id: str) -> ClientResult | None:
        return self.inner.read_answer(server_id, client_id)
