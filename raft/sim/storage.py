"""The production in-memory store, watched: every successful save is mirrored into a
read-only `PersistedView` per server and reported to the simulator, which is how monitors see
exactly what survives a crash without reading the store's private records or deep-copying.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raft.adapters.memory_store import InMemoryStore
from raft.core.messages import Entry
from raft.ports.store import Change, ClientResult, StoredServer


@dataclass(slots=True)
class PersistedView:
    """What the store holds for one server: its state dict (never mutated once saved) and a
    mirror of its log."""

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

    def load(self, server_id: str) -> StoredServer | None:
        return self.inner.load(server_id)

    def save(self, server_id: str, expected_version: str | None, change: Change) -> str:
        version = self.inner.save(server_id, expected_version, change)
        view = self.views[server_id]
        before = view.state or None
        old_length = len(view.log)
        view.state = change.state
        if change.log_from is not None:
            del view.log[change.log_from - 1 :]
            view.log.extend(change.entries)
        self.listener(SaveEvent(server_id, before, change, old_length, view))
        return version

    def read_state(self, server_id: str) -> dict[str, Any] | None:
        return self.inner.read_state(server_id)

    def read_result(self, server_id: str, client_id: str) -> ClientResult | None:
        return self.inner.read_result(server_id, client_id)
