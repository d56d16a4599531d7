"""The node handler: load, validate, step, persist (conditionally), publish, apply, record
results.

Every host calls this: the Functions app for each Service Bus batch and timer firing, the
local runner, and the simulator. Order matters and is the etcd `Ready` discipline: the new
state (including applied results) is saved in one conditional write *before* any message
leaves, so a crash at any point either loses the whole step (redelivery repeats it) or loses
only messages (Raft retransmits them).

The handler keeps the state it last saved or loaded, so a warm instance does not reload. That
copy may be stale: on Flex Consumption the timer and each server's trigger run on different
instances, each with its own copy. **No step acts on a copy that was not current**: a step
that saves is checked by its save (conditional on the version the copy came from; a conflict
reloads and steps again, which is safe because the core is pure), and a step that saves
nothing is checked by one point read of the stored version before its messages leave (a
stale copy is reloaded and the step run again). Either way each step costs one store
operation, a write or a read, never both (docs/design.md, "Validated caches").

Snapshots: every `snapshot_every` applied entries (more for a large applied state, fewer for
a log heavy in bytes) the applied state is saved as a snapshot, and the log up to it, less
`compaction_keep` entries, is compacted in the same save.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from raft.app.kv import KeyValueStore
from raft.app.sessions import AppliedState, Session, SessionPolicy
from raft.app.state_machine import CommandError, SnapshotError, StateMachine, command_bytes
from raft.core.messages import ClientRequest, ClientResponse, ClientStatus, Envelope
from raft.core.rng import seed_for
from raft.core.server import RaftServer, Ready
from raft.core.state import (
    Config,
    PendingRead,
    Role,
    ServerState,
    Snapshot,
    state_from_dict,
    state_to_dict,
)
from raft.ports.bus import Bus
from raft.ports.store import Change, ClientResult, Store, StoredServer, VersionConflict

log = logging.getLogger("raft.node")

ServerFactory = Callable[[ServerState, Config], RaftServer]

# Stored with each save (the host clock's `now`, milliseconds) for status pages. It is not
# server state: a step that changes nothing else does not save just to move it.
UPDATED_AT = "updated_at_ms"
# Stored results of expired sessions deleted per save, at most: this many plus twice the
# entries the save applied, so deleting keeps ahead of expiring and the work per save stays
# bounded by the entries it applies.
FORGET_RESULTS_PER_SAVE = 16


class ConflictRetriesExhausted(RuntimeError):
    """Too many concurrent saves in a row; the host should let the event be redelivered."""


@dataclass
class _Loaded:
    """A server's state as of `version`, with its applied state machine."""

    version: str | None
    server: RaftServer
    applied: AppliedState
    # Since the latest snapshot: its size, and the bytes of the entries applied after it.
    snapshot_chars: int
    applied_bytes: int
    # Whether this copy was read from the store in this unit of work (so is current).
    fresh: bool = True


@dataclass(frozen=True)
class NodeOptions:
    config: Config = field(default_factory=Config)
    seed: int = 0
    server_factory: ServerFactory = RaftServer
    machine_factory: Callable[[], StateMachine] = KeyValueStore
    # Snapshot the applied state every this many applied entries, so a cold instance replays
    # at most this many entries; a large state waits longer (one applied entry per
    # `snapshot_chars_per_entry` characters of the last snapshot), so snapshotting costs a
    # bounded amount per command however many keys and client sessions it holds; and a log
    # heavy in bytes sooner (once the entries applied since hold `snapshot_log_bytes`).
    snapshot_every: int = 128
    snapshot_chars_per_entry: int = 256
    snapshot_log_bytes: int = 4 * 1024 * 1024
    # Entries kept in the log behind the snapshot, so a follower only a little behind gets
    # entries instead of the whole snapshot.
    compaction_keep: int = 64
    sessions: SessionPolicy = field(default_factory=SessionPolicy)
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
        spares: Sequence[str] = (),
    ) -> None:
        """`servers` is the cluster's first configuration; `spares` are servers that may be
        added later: one starts with no configuration and waits to hear from a leader."""
        if server_id not in (*servers, *spares):
            known = [*servers, *spares]
            raise ValueError(f"unknown server id {server_id!r}; servers are {known}")
        self.server_id = server_id
        self.servers = tuple(servers) if server_id in servers else ()
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
        return self._current().server.state

    def applied(self) -> AppliedState:
        """The applied state (application and client sessions) that goes with `state()`."""
        return self._current().applied

    def _current(self) -> _Loaded:
        with self._lock:
            if self._cached is None:
                self._cached = self._load()
            return self._cached

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
                if ready.installed is not None:
                    try:
                        self._install(loaded, ready.installed)
                    except SnapshotError as exc:
                        # Installing it would lose the applied state: the whole step is dropped
                        # (nothing saved or sent, the cache reloads), as if its batch were lost.
                        log.error("server=%s refused a snapshot: %s", self.server_id, exc)
                        return
                applied_from = loaded.applied.last_applied
                replies, results = self._apply_committed(loaded)
                answers: list[ClientResult] = []
                if ready.reads:
                    read_replies, answers = self._answer_reads(loaded, ready.reads)
                    replies += read_replies
                snapshot = self._maybe_snapshot(loaded)
                if (
                    ready.changed
                    or loaded.applied.last_applied != applied_from
                    or snapshot
                    or answers
                ):
                    forget = FORGET_RESULTS_PER_SAVE + 2 * (
                        loaded.applied.last_applied - applied_from
                    )
                    change = self._change(loaded, ready, results, answers, snapshot, now, forget)
                    try:
                        loaded.version = self.store.save(self.server_id, loaded.version, change)
                    except VersionConflict:
                        log.info("server=%s version conflict; reloading", self.server_id)
                        self._cached = self._reload(loaded)
                        continue
                    server.persisted()
                    del loaded.applied.expired[:forget]
                elif not loaded.fresh and self.store.version(self.server_id) != loaded.version:
                    # The step saved nothing, so no save checked the copy it ran on: it was
                    # stale, and whatever it did (or did not do) may be wrong. Step again.
                    log.info("server=%s cached state is stale; reloading", self.server_id)
                    self._cached = self._reload(loaded)
                    continue
                loaded.fresh = False
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
        # Asked once per batch: a disabled log.debug still costs a call per request.
        debug = log.isEnabledFor(logging.DEBUG)
        for envelope in envelopes:
            m = envelope.message
            if isinstance(m, ClientRequest):
                if debug:
                    log.debug(
                        "server=%s role=%s client_request client=%s seq=%d from=%s hops=%d",
                        self.server_id,
                        loaded.server.state.role.value,
                        m.client_id,
                        m.seq,
                        envelope.sender,
                        m.hops,
                    )
                answer = self._answer_without_log(loaded, m, now)
                if answer is not None:
                    if m.reply_to:
                        direct.append(Envelope(self.server_id, m.reply_to, answer))
                    continue
                if not m.read_only and loaded.applied.machine.is_read_only(m.data):
                    envelope = Envelope(envelope.sender, envelope.to, replace(m, read_only=True))
            loaded.server.step(envelope, now)
        return direct

    def _answer_without_log(
        self, loaded: _Loaded, m: ClientRequest, now: int
    ) -> ClientResponse | None:
        applied, state = loaded.applied, loaded.server.state
        if m.read_only:
            return self._refuse_invalid(applied, m)
        session = applied.lookup(m.client_id, m.seq)
        if session is not None:
            return self._ok(m.client_id, session, state.leader_id)
        refused = applied.refusal(m.client_id, m.seq, m.issued_at)
        too_old = m.issued_at and m.issued_at + self.options.sessions.retention_ms < now
        if refused is None and too_old:
            # By this server's clock, before it reaches the log; applying re-checks by the log's.
            refused = ClientStatus.EXPIRED
        if refused is not None:
            return ClientResponse(m.client_id, m.seq, refused)
        if loaded.server.overloaded():
            return None  # the core refuses it; no need to parse the command first
        return self._refuse_invalid(applied, m)

    def _refuse_invalid(self, applied: AppliedState, m: ClientRequest) -> ClientResponse | None:
        if command_bytes(m.data) > self.options.max_command_bytes:
            return ClientResponse(
                m.client_id,
                m.seq,
                ClientStatus.REJECTED,
                result=f"command over {self.options.max_command_bytes} bytes",
            )
        try:
            applied.machine.validate(m.data)
            if m.read_only and not applied.machine.is_read_only(m.data):
                raise CommandError("sent as a read, but the command writes")
        except CommandError as exc:
            return ClientResponse(m.client_id, m.seq, ClientStatus.REJECTED, result=str(exc))
        return None

    def _answer_reads(
        self, loaded: _Loaded, reads: Sequence[PendingRead]
    ) -> tuple[list[Envelope], list[ClientResult]]:
        """Reads a majority confirmed (ReadIndex): answered from the applied state, which
        holds at least their read index by now."""
        replies: list[Envelope] = []
        answers: list[ClientResult] = []
        state, machine = loaded.server.state, loaded.applied.machine
        for read in reads:
            assert loaded.applied.last_applied >= read.index
            result = machine.query(read.data)
            if read.reply_to:
                response = ClientResponse(
                    read.client_id, read.seq, ClientStatus.OK, result, read.index,
                    state.current_term, state.server_id,
                )  # fmt: skip
                replies.append(Envelope(self.server_id, read.reply_to, response))
            else:
                answers.append(
                    ClientResult(read.client_id, read.seq, result, read.index, state.current_term)
                )
        return replies, answers

    def _apply_committed(self, loaded: _Loaded) -> tuple[list[Envelope], list[ClientResult]]:
        server, applied = loaded.server, loaded.applied
        state = server.state
        replies: list[Envelope] = []
        results: list[ClientResult] = []
        if applied.last_applied >= state.commit_index:
            return replies, results
        debug = log.isEnabledFor(logging.DEBUG)
        for index in range(applied.last_applied + 1, state.commit_index + 1):
            entry = state.entry(index)
            loaded.applied_bytes += entry.size
            session = applied.apply(index, entry)
            if session is ClientStatus.EXPIRED and entry.reply_to and state.role is Role.LEADER:
                expired = ClientResponse(entry.client_id, entry.seq, ClientStatus.EXPIRED)
                replies.append(Envelope(self.server_id, entry.reply_to, expired))
            if not isinstance(session, Session):
                continue
            if debug:
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
        server.applied_to(applied.last_applied)
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

    def _install(self, loaded: _Loaded, snapshot: Snapshot) -> None:
        """The core installed a snapshot from its leader: the application follows it. Raises
        SnapshotError for one the application cannot restore, or that holds another index."""
        opts = self.options
        applied = AppliedState.restore(snapshot.data, opts.machine_factory, opts.sessions)
        if applied.last_applied != snapshot.index:
            raise SnapshotError(f"snapshot at {snapshot.index} holds {applied.last_applied}")
        loaded.applied = applied
        loaded.snapshot_chars = len(snapshot.data)
        loaded.applied_bytes = 0

    def _maybe_snapshot(self, loaded: _Loaded) -> Snapshot | None:
        """Snapshot the applied state and compact the log behind it, when enough was applied
        since the last snapshot (by entries, or by bytes)."""
        opts, applied, server = self.options, loaded.applied, loaded.server
        state = server.state
        latest = state.snapshot.index if state.snapshot is not None else 0
        interval = max(opts.snapshot_every, loaded.snapshot_chars // opts.snapshot_chars_per_entry)
        since = applied.last_applied - latest
        if since <= 0 or (since < interval and loaded.applied_bytes < opts.snapshot_log_bytes):
            return None
        index = applied.last_applied
        snapshot = Snapshot(
            index, state.term_at(index), applied.snapshot(), state.servers_at(index)
        )
        server.compact(snapshot, opts.compaction_keep)
        loaded.snapshot_chars = len(snapshot.data)
        loaded.applied_bytes = 0
        return snapshot

    def _change(
        self,
        loaded: _Loaded,
        ready: Ready,
        results: list[ClientResult],
        answers: list[ClientResult],
        snapshot: Snapshot | None,
        now: int,
        forget: int,
    ) -> Change:
        state = loaded.server.state
        log_from = ready.log_changed_from
        if log_from is not None and log_from <= state.log_start:
            # Compacted in this same step (the entries were applied): store from the start.
            log_from = state.log_start + 1
        stored = state_to_dict(state)
        stored[UPDATED_AT] = now
        return Change(
            state=stored,
            log_from=log_from,
            entries=tuple(state.log[log_from - state.log_start - 1 :]) if log_from else (),
            snapshot=snapshot or ready.installed,
            snapshot_chunks=ready.snapshot_chunks,
            results=tuple(results),
            forget_results=self._forgettable(loaded.applied, forget),
            read_answers=tuple(answers),
        )

    @staticmethod
    def _forgettable(applied: AppliedState, count: int) -> tuple[str, ...]:
        """Expired clients whose stored results this save deletes; not one that came back
        (its new session's result is stored under the same key)."""
        if not applied.expired:
            return ()
        due = applied.expired[:count]
        return tuple(client_id for client_id in due if client_id not in applied.sessions)

    def _load(self) -> _Loaded:
        opts = self.options
        stored = self.store.load(self.server_id)
        if stored is None:
            state = ServerState(
                self.server_id, self.servers, rng=seed_for(self.server_id, opts.seed)
            )
            applied = AppliedState(opts.machine_factory(), opts.sessions)
            return _Loaded(None, opts.server_factory(state, opts.config), applied, 0, 0)
        return self._restore(stored, None)

    def _reload(self, stale: _Loaded) -> _Loaded:
        """The current stored state, reusing the stale copy's applied state machine when the
        entries it lacks are still in the stored log (instead of restoring the snapshot)."""
        stored = self.store.load(self.server_id)
        if stored is None:
            return self._load()
        return self._restore(stored, stale)

    def _restore(self, stored: StoredServer, stale: _Loaded | None) -> _Loaded:
        opts = self.options
        state = state_from_dict(
            self.server_id, stored.state, stored.log, stored.snapshot, stored.incoming
        )
        snapshot = state.snapshot
        snapshot_chars = len(snapshot.data) if snapshot is not None else 0
        if (
            stale is not None
            and state.log_start <= stale.applied.last_applied <= state.last_applied
        ):
            applied, applied_bytes = stale.applied, stale.applied_bytes
            snapshot_chars = stale.snapshot_chars
        elif snapshot is not None:
            applied = AppliedState.restore(snapshot.data, opts.machine_factory, opts.sessions)
            applied_bytes = 0
        else:
            applied, applied_bytes = AppliedState(opts.machine_factory(), opts.sessions), 0
        # Replay what was applied after the snapshot (its results were recorded then).
        for index in range(applied.last_applied + 1, state.last_applied + 1):
            entry = state.entry(index)
            applied.apply(index, entry)
            applied_bytes += entry.size
        server = opts.server_factory(state, opts.config)
        return _Loaded(stored.version, server, applied, snapshot_chars, applied_bytes)

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
