"""The store port: one server's state, loaded with a version and saved conditionally on it.

A save either applies a whole `Change` or nothing, and only if the stored version is still the
one the caller loaded (Table Storage: an entity-group transaction with If-Match on the state
entity's ETag). A mismatch raises `VersionConflict`; the caller reloads and steps again.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Protocol

from raft.core.messages import Entry
from raft.core.state import Snapshot, SnapshotChunk

READ_ANSWER_SLOTS = 1024


def read_answer_slot(client_id: str) -> int:
    """Where a read's answer is kept: a later read that lands in the same slot replaces it."""
    return zlib.crc32(client_id.encode("utf-8", "surrogatepass")) % READ_ANSWER_SLOTS


class VersionConflict(Exception):
    """Someone else saved this server's state since it was loaded."""


class StoreLimitError(ValueError):
    """A change the store cannot hold (for example over Table Storage's size limits)."""


@dataclass(frozen=True, slots=True)
class ClientResult:
    """The outcome of a client request, kept so a client that polls can read it."""

    client_id: str
    seq: int
    result: str
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class StoredServer:
    version: str
    # The server state without its log, as JSON values (raft.core.state.state_to_dict).
    state: dict[str, Any]
    # Entries state["log_start"] + 1 .. state["last_index"].
    log: list[Entry]
    # The latest snapshot of the applied state (application and client sessions), if any.
    snapshot: Snapshot | None
    # The chunks stored so far of the snapshot being received (state["incoming"]), joined.
    incoming: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """One atomic update of a server's stored state.

    Log entries at index >= `log_from` are replaced by `entries` (so `entries[0]` has index
    `log_from`); stored entries past the new end are deleted. `log_from` is None when the log
    did not change. Entries up to the new `state["log_start"]` are compacted: the store no
    longer returns them and may delete them. `snapshot`, if set, becomes the latest snapshot;
    `snapshot_chunks` are appended to the snapshot being received (state["incoming"]).
    `forget_results` names clients whose stored results may be deleted (their sessions
    expired); the store may delete them later or not at all, but never before the change.
    """

    state: dict[str, Any]
    log_from: int | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    snapshot_chunks: tuple[SnapshotChunk, ...] = ()
    results: tuple[ClientResult, ...] = ()
    forget_results: tuple[str, ...] = ()
    # Answers to read-only requests for clients that poll (ReadIndex reads, never logged):
    # kept in a fixed ring of READ_ANSWER_SLOTS per server, so they take bounded room.
    read_answers: tuple[ClientResult, ...] = ()


class Store(Protocol):
    def load(self, server_id: str) -> StoredServer | None:
        """The server's stored state, or None if it was never saved."""

    def save(self, server_id: str, expected_version: str | None, change: Change) -> str:
        """Apply `change` if the stored version is `expected_version` (None: not yet stored);
        return the new version. Raises VersionConflict otherwise."""

    def version(self, server_id: str) -> str | None:
        """The stored version alone (one point read): whether a cached copy is current."""

    def read_state(self, server_id: str) -> dict[str, Any] | None:
        """Only the state entity (no log), for status pages."""

    def read_result(self, server_id: str, client_id: str) -> ClientResult | None:
        """The last recorded result for `client_id` on this server."""

    def read_answer(self, server_id: str, client_id: str) -> ClientResult | None:
        """The answer to `client_id`'s read, if its slot still holds it."""
