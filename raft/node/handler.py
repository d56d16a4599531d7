"""The node handler: load, step, persist (conditionally), publish, apply, record results.

Every host calls this: the Functions app for each Service Bus message and timer firing, the
local runner, and the simulator. Order matters and is the etcd `Ready` discipline: the new
state (including applied results) is saved in one conditional write *before* any message
leaves, so a crash at any point either loses the whole step (redelivery repeats it) or loses
only messages (Raft retransmits them).

The handler keeps the state it last saved, so a warm instance does not reload. If another
instance saved in between, the conditional save fails; the handler reloads and steps again,
which is safe because the core is pure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raft.app.kv import KeyValueStore
from raft.app.sessions import DEFAULT_MAX_SESSIONS, AppliedState, Session
from raft.app.state_machine import CommandError, StateMachine, command_bytes
from raft.core.messages import ClientRequest, ClientResponse, ClientStatus, Envelope
from raft.core.rng import seed_for
from raft.core.server import RaftServer
from raft.core.state import Config, Role, ServerState, state_from_dict, state_to_dict
from raft.ports.bus import Bus
from raft.ports.store import Change, ClientResult, Store, VersionConflict

log = logging.getLogger("raft.node")

ServerFactory = Callable[[ServerState, Config], RaftServer]

# Stored with each save (the host clock's `now`, milliseconds) for status pages. It is not
# server state: a step that changes nothing else does not save just to move it.
UPDATED_AT = "updated_at_ms"


def unstamped(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != UPDATED_AT}


class ConflictRetriesExhausted(RuntimeError):
    """Too many concurrent saves in a row; the host should let the event be redelivered."""


@dataclass
class _Loaded:
    version: str | None
    server: RaftServer
    applied: AppliedState
    saved_state: dict[str, Any] | None
    stored_last_index: int
    snapshot_index: int
    snapshot_chars: int


@dataclass(frozen=True)
class NodeOptions:
    config: Config = field(default_factory=Config)
    seed: int = 0
    server_factory: ServerFactory = RaftServer
    machine_factory: Callable[[], StateMachine] = KeyValueStore
    # Save the applied state every this many applied entries, so a cold instance replays at
    # most this many entries; a large state waits longer (one applied entry per
    # `snapshot_chars_per_entry` characters of the last snapshot), so snapshotting costs a
    # bounded amount per command however many keys and client sessions it holds.
    snapshot_every: int = 128
    snapshot_chars_per_entry: int = 256
    max_sessions: int = DEFAULT_MAX_SESSIONS
    # Commands larger than this (UTF-8 bytes) are rejected before they reach the log.
    max_command_bytes: int = 16 * 1024
    max_conflict_retries: int = 16


class NodeHandler:
    def __init__(
        self,
        server_id: str,
        servers: Sequence[str],
        store: Store,
        bus: Bus,
        options: NodeOptions | None = None,
    ) -> None:
        if server_id not in servers:
            raise ValueError(f"unknown server id {server_id!r}; servers are {list(servers)}")
        self.server_id = server_id
        self.servers = tuple(servers)
        self.store = store
        self.bus = bus
        self.options = options or NodeOptions()
        self._cached: _Loaded | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- entry points

    def handle(self, envelopes: Sequence[Envelope], now: int) -> None:
        """Handle a batch of messages for this server in one step and one save."""
        self._run(lambda loaded: self._step_all(loaded, envelopes, now), now)

    def tick(self, now: int) -> None:
        self._run(lambda loaded: self._tick(loaded, now), now)

    @staticmethod
    def _tick(loaded: _Loaded, now: int) -> list[Envelope]:
        loaded.server.tick(now)
        return []

    def state(self) -> ServerState:
        """The state this instance last loaded or saved (loading it if needed)."""
        with self._lock:
            if self._cached is None:
                self._cached = self._load()
            return self._cached.server.state

    def drop_cache(self) -> None:
        """Forget the cached state, as a cold instance would."""
        with self._lock:
            self._cached = None

    # ----------------------------------------------------------------- the unit of work

    def _run(self, action: Callable[[_Loaded], list[Envelope]], now: int) -> None:
        with self._lock:
            for _ in range(self.options.max_conflict_retries):
                loaded = self._cached or self._load()
                self._cached = None
                server = loaded.server
                state = server.state
                before = (state.role, state.current_term)
                direct = action(loaded)
                ready = server.ready()
                if loaded.applied.last_applied < state.commit_index:
                    replies, results = self._apply_committed(loaded)
                else:
                    replies, results = [], []
                new_state = state_to_dict(state)
                change = self._change(loaded, new_state, ready.log_changed_from, results, now)
                if change is not None:
                    try:
                        loaded.version = self.store.save(self.server_id, loaded.version, change)
                    except VersionConflict:
                        log.info("server=%s version conflict; reloading", self.server_id)
                        continue
                    loaded.saved_state = new_state
                    loaded.stored_last_index = state.last_index
                    if change.snapshot is not None:
                        loaded.snapshot_index = loaded.applied.last_applied
                        loaded.snapshot_chars = len(change.snapshot)
                self._cached = loaded
                if before != (state.role, state.current_term):
                    self._log_transition(state)
                outbox = (
                    [*ready.messages, *direct, *replies] if direct or replies else ready.messages
                )
                if outbox:
                    self.bus.publish(outbox)
                return
            raise ConflictRetriesExhausted(
                f"{self.server_id}: {self.options.max_conflict_retries} conflicting saves in a row"
            )

    def _step_all(self, loaded: _Loaded, envelopes: Sequence[Envelope], now: int) -> list[Envelope]:
        """Step each message; answer retried or invalid client requests without the core."""
        direct: list[Envelope] = []
        for envelope in envelopes:
            m = envelope.message
            if isinstance(m, ClientRequest):
                log.debug(
                    "server=%s role=%s client_request client=%s seq=%d from=%s hops=%d",
                    self.server_id,
                    loaded.server.state.role.value,
                    m.client_id,
                    m.seq,
                    envelope.sender,
                    m.hops,
                )
                answer = self._answer_without_log(loaded, m)
                if answer is not None:
                    if m.reply_to:
                        direct.append(Envelope(self.server_id, m.reply_to, answer))
                    continue
            loaded.server.step(envelope, now)
        return direct

    def _answer_without_log(self, loaded: _Loaded, m: ClientRequest) -> ClientResponse | None:
        applied, state = loaded.applied, loaded.server.state
        session = applied.lookup(m.client_id, m.seq)
        if session is not None:
            return self._ok(m.client_id, session, state.leader_id)
        if applied.is_stale(m.client_id, m.seq):
            return ClientResponse(m.client_id, m.seq, ClientStatus.STALE)
        if loaded.server.overloaded():
            return None  # the core refuses it; no need to parse the command first
        if command_bytes(m.data) > self.options.max_command_bytes:
            return ClientResponse(
                m.client_id,
                m.seq,
                ClientStatus.REJECTED,
                result=f"command over {self.options.max_command_bytes} bytes",
            )
        try:
            applied.machine.validate(m.data)
        except CommandError as exc:
            return ClientResponse(m.client_id, m.seq, ClientStatus.REJECTED, result=str(exc))
        return None

    def _apply_committed(self, loaded: _Loaded) -> tuple[list[Envelope], list[ClientResult]]:
        state, applied = loaded.server.state, loaded.applied
        replies: list[Envelope] = []
        results: list[ClientResult] = []
        for index in range(applied.last_applied + 1, state.commit_index + 1):
            entry = state.log[index - 1]
            session = applied.apply(index, entry)
            if session is None:
                continue
            # client= and seq= follow one request from the HTTP log line across servers.
            log.debug(
                "server=%s applied index=%d term=%d client=%s seq=%d",
                self.server_id,
                index,
                entry.term,
                entry.client_id,
                entry.seq,
            )
            if not entry.reply_to:
                results.append(
                    ClientResult(
                        entry.client_id, session.seq, session.result, session.index, session.term
                    )
                )
            elif state.role is Role.LEADER:
                reply = self._ok(entry.client_id, session, state.server_id)
                replies.append(Envelope(self.server_id, entry.reply_to, reply))
        state.last_applied = applied.last_applied
        return replies, results

    @staticmethod
    def _ok(client_id: str, session: Session, leader: str) -> ClientResponse:
        return ClientResponse(
            client_id,
            session.seq,
            ClientStatus.OK,
            session.result,
            session.index,
            session.term,
            leader,
        )

    def _change(
        self,
        loaded: _Loaded,
        new_state: dict[str, Any],
        log_from: int | None,
        results: list[ClientResult],
        now: int,
    ) -> Change | None:
        """What to save, or None if nothing changed (`new_state` is the state as it is now)."""
        state = loaded.server.state
        snapshot = None
        opts = self.options
        interval = max(opts.snapshot_every, loaded.snapshot_chars // opts.snapshot_chars_per_entry)
        if loaded.applied.last_applied - loaded.snapshot_index >= interval:
            snapshot = loaded.applied.snapshot()
        if new_state == loaded.saved_state and log_from is None and not results and not snapshot:
            return None
        return Change(
            state={**new_state, UPDATED_AT: now},
            log_from=log_from,
            entries=tuple(state.log[log_from - 1 :]) if log_from is not None else (),
            stored_last_index=loaded.stored_last_index,
            snapshot=snapshot,
            results=tuple(results),
        )

    def _load(self) -> _Loaded:
        opts = self.options
        stored = self.store.load(self.server_id)
        if stored is None:
            state = ServerState(
                self.server_id, self.servers, rng=seed_for(self.server_id, opts.seed)
            )
            applied = AppliedState(opts.machine_factory(), opts.max_sessions)
            server = opts.server_factory(state, opts.config)
            return _Loaded(None, server, applied, None, 0, 0, 0)
        state = state_from_dict(self.server_id, stored.state, stored.log)
        if state.servers != self.servers:
            raise ValueError(
                f"{self.server_id}: stored cluster {list(state.servers)} differs from the "
                f"configured {list(self.servers)}; membership changes are not supported"
            )
        applied = AppliedState.restore(stored.snapshot, opts.machine_factory, opts.max_sessions)
        snapshot_index = applied.last_applied
        # Replay what was applied after the last saved snapshot (results were recorded then).
        for index in range(applied.last_applied + 1, state.last_applied + 1):
            applied.apply(index, state.log[index - 1])
        server = opts.server_factory(state, opts.config)
        return _Loaded(
            stored.version,
            server,
            applied,
            unstamped(stored.state),
            state.last_index,
            snapshot_index,
            len(stored.snapshot or ""),
        )

    def _log_transition(self, state: ServerState) -> None:
        log.info(
            "server=%s role=%s term=%d leader=%s last_index=%d commit=%d",
            self.server_id,
            state.role.value,
            state.current_term,
            state.leader_id or "-",
            state.last_index,
            state.commit_index,
        )
