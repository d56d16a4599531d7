"""Applying committed entries exactly once, with client sessions (paper §8, thesis ch. 6).

Each client numbers its requests; the applied state remembers, per client, the last sequence
number applied and its result. A retried request is answered with the original result instead
of being applied again.

Sessions expire by time, on a clock agreed through the log (thesis §6.3): the leader stamps each
entry with its clock, and the applied state's clock is the latest stamp applied, so every server
expires the same sessions at the same index. A session unused for `retention_ms` expires, and so
does the least recently used one beyond `max_sessions` (a bound on memory). Each expiry raises
`floor`, the latest issue time of any expired session's last request. A request with no session
that was issued at or before the floor may be a duplicate of an expired one, and so is refused as
expired, never applied; so is any request issued more than `retention_ms` before the clock. Hence
a request answered once is answered the same way, or refused as expired, forever after.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from raft.app.state_machine import SnapshotError, StateMachine
from raft.core.messages import ClientStatus, Entry

DEFAULT_MAX_SESSIONS = 100_000
# Must cover a message's whole life: its TTL, the HTTP wait and resends (settings check it).
DEFAULT_SESSION_RETENTION_MS = 15 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Session:
    seq: int
    result: str
    index: int
    term: int
    # The last request's issue time (the client's) and the log time it was applied at.
    issued_at: int = 0
    time: int = 0
    # Whether its result was stored for the client to poll (a request with no reply address),
    # so the stored row is deleted when the session expires.
    polled: bool = False


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    retention_ms: int = DEFAULT_SESSION_RETENTION_MS
    max_sessions: int = DEFAULT_MAX_SESSIONS

    def __post_init__(self) -> None:
        if self.retention_ms <= 0 or self.max_sessions <= 0:
            raise ValueError("session retention and the maximum number of sessions must be > 0")


class AppliedState:
    def __init__(self, machine: StateMachine, policy: SessionPolicy | None = None) -> None:
        self.machine = machine
        self.policy = policy or SessionPolicy()
        # Least recently used first; each session's `time` is the clock when it was last used,
        # so the order is also by time and expiry only ever looks at the front.
        self.sessions: dict[str, Session] = {}
        self.last_applied = 0
        self.clock = 0
        self.floor = 0
        # Clients whose sessions expired and whose stored results are still to be deleted.
        self.expired: list[str] = []

    def lookup(self, client_id: str, seq: int) -> Session | None:
        """The recorded session if exactly (client_id, seq) was the last request applied."""
        session = self.sessions.get(client_id)
        return session if session is not None and session.seq == seq else None

    def refusal(self, client_id: str, seq: int, issued_at: int) -> ClientStatus | None:
        """Why a request that is not the client's last applied one must not be applied: STALE
        if older than it (its result is gone), EXPIRED if its session may have expired."""
        session = self.sessions.get(client_id)
        if session is not None:
            return ClientStatus.STALE if seq < session.seq else None
        if self.floor and issued_at <= self.floor:
            return ClientStatus.EXPIRED
        if issued_at and issued_at + self.policy.retention_ms < self.clock:
            return ClientStatus.EXPIRED
        return None

    def apply(self, index: int, entry: Entry) -> Session | ClientStatus | None:
        """Apply the entry at `index`: its session record, the status it was refused with, or
        None for a leader's no-op."""
        if index != self.last_applied + 1:
            raise ValueError(f"applying {index} after {self.last_applied}")
        self.last_applied = index
        if entry.time > self.clock:
            self.clock = entry.time
            self._expire_idle()
        if not entry.client_id:
            return None
        known = self.lookup(entry.client_id, entry.seq)
        if known is not None:
            self._touch(entry.client_id, known)
            return known
        refused = self.refusal(entry.client_id, entry.seq, entry.issued_at)
        if refused is not None:
            return refused
        result = self.machine.apply(entry.data)
        session = Session(
            entry.seq, result, index, entry.term, entry.issued_at, self.clock, not entry.reply_to
        )
        self._touch(entry.client_id, session)
        return session

    def _touch(self, client_id: str, session: Session) -> None:
        self.sessions.pop(client_id, None)
        if session.time != self.clock:
            # Spelled out, not dataclasses.replace (several times slower): every server runs
            # this for every command it applies.
            session = Session(
                session.seq,
                session.result,
                session.index,
                session.term,
                session.issued_at,
                self.clock,
                session.polled,
            )
        self.sessions[client_id] = session
        while len(self.sessions) > self.policy.max_sessions:
            self._evict(next(iter(self.sessions)))

    def _expire_idle(self) -> None:
        horizon = self.clock - self.policy.retention_ms
        while self.sessions:
            client_id, session = next(iter(self.sessions.items()))
            if session.time >= horizon:
                return
            self._evict(client_id)

    def _evict(self, client_id: str) -> None:
        session = self.sessions.pop(client_id)
        self.floor = max(self.floor, session.issued_at)
        if session.polled:
            self.expired.append(client_id)

    def snapshot(self) -> str:
        return json.dumps(
            {
                "last_applied": self.last_applied,
                "clock": self.clock,
                "floor": self.floor,
                "expired": self.expired,
                "machine": self.machine.snapshot(),
                "sessions": [
                    [cid, s.seq, s.result, s.index, s.term, s.issued_at, s.time, s.polled]
                    for cid, s in self.sessions.items()
                ],
            },
            separators=(",", ":"),
        )

    @classmethod
    def restore(
        cls,
        snapshot: str | None,
        factory: Callable[[], StateMachine],
        policy: SessionPolicy | None = None,
    ) -> AppliedState:
        """Raises SnapshotError for data `snapshot` did not write (nothing else)."""
        applied = cls(factory(), policy)
        if snapshot is not None:
            try:
                doc = json.loads(snapshot)
                applied.last_applied = _count(doc["last_applied"])
                applied.clock = _count(doc["clock"])
                applied.floor = _count(doc["floor"])
                applied.expired = [_text(cid) for cid in doc["expired"]]
                applied.machine.restore(doc["machine"])
                applied.sessions = {
                    _text(cid): _session(fields) for cid, *fields in doc["sessions"]
                }
            except SnapshotError:
                raise
            # Whatever else malformed JSON makes the lines above trip over.
            except (ValueError, TypeError, KeyError, RecursionError) as exc:
                raise SnapshotError(f"unreadable applied-state snapshot: {exc!r}") from None
        return applied


def _count(value: object) -> int:
    if type(value) is not int or value < 0:
        raise SnapshotError(f"expected a count, got {value!r}"[:200])
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise SnapshotError(f"expected a string, got {value!r}"[:200])
    return value


def _session(fields: list[object]) -> Session:
    seq, result, index, term, issued_at, time, polled = fields
    if not isinstance(polled, bool):
        raise SnapshotError(f"expected a boolean, got {polled!r}"[:200])
    return Session(
        _count(seq),
        _text(result),
        _count(index),
        _count(term),
        _count(issued_at),
        _count(time),
        polled,
    )
