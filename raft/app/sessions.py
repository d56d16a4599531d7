"""Applying committed entries exactly once, with client sessions (paper §8, thesis ch. 6).

Each client numbers its requests; the applied state remembers, per client, the last sequence
number applied and its result. A retried request is answered with the original result instead
of being applied again. Sessions are evicted least-recently-used beyond a fixed count, in log
order, so every server evicts the same ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from raft.app.state_machine import SnapshotError, StateMachine
from raft.core.messages import Entry

DEFAULT_MAX_SESSIONS = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    seq: int
    result: str
    index: int
    term: int


class AppliedState:
    def __init__(self, machine: StateMachine, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        self.machine = machine
        self.max_sessions = max_sessions
        self.sessions: dict[str, Session] = {}
        self.last_applied = 0
        # Sessions evicted so far (deterministic: every server evicts the same ones).
        self.evicted = 0

    def lookup(self, client_id: str, seq: int) -> Session | None:
        """The recorded session if exactly (client_id, seq) was the last request applied."""
        session = self.sessions.get(client_id)
        return session if session is not None and session.seq == seq else None

    def is_stale(self, client_id: str, seq: int) -> bool:
        """Whether `seq` is older than the client's last applied request (its result is gone),
        or may be: once sessions have been evicted, a client with no session sending more
        than its first request may be one whose session was evicted, and applying the request
        could apply it twice (thesis §6.3: an expired session gets an error, not a re-run)."""
        session = self.sessions.get(client_id)
        if session is None:
            return seq > 1 and self.evicted > 0
        return seq < session.seq

    def apply(self, index: int, entry: Entry) -> Session | None:
        """Apply the entry at `index`; return its session record (None for a no-op or a stale
        duplicate)."""
        if index != self.last_applied + 1:
            raise ValueError(f"applying {index} after {self.last_applied}")
        self.last_applied = index
        if not entry.client_id:
            return None
        if self.is_stale(entry.client_id, entry.seq):
            return None
        known = self.lookup(entry.client_id, entry.seq)
        if known is not None:
            self.touch(entry.client_id, known)
            return known
        session = Session(entry.seq, self.machine.apply(entry.data), index, entry.term)
        self.touch(entry.client_id, session)
        return session

    def touch(self, client_id: str, session: Session) -> None:
        self.sessions.pop(client_id, None)
        self.sessions[client_id] = session
        while len(self.sessions) > self.max_sessions:
            del self.sessions[next(iter(self.sessions))]
            self.evicted += 1

    def snapshot(self) -> str:
        return json.dumps(
            {
                "last_applied": self.last_applied,
                "evicted": self.evicted,
                "machine": self.machine.snapshot(),
                "sessions": [
                    [cid, s.seq, s.result, s.index, s.term] for cid, s in self.sessions.items()
                ],
            },
            separators=(",", ":"),
        )

    @classmethod
    def restore(
        cls, snapshot: str | None, factory: Callable[[], StateMachine], max_sessions: int
    ) -> AppliedState:
        """Raises SnapshotError for data `snapshot` did not write (nothing else)."""
        applied = cls(factory(), max_sessions)
        if snapshot is not None:
            try:
                doc = json.loads(snapshot)
                applied.last_applied = _count(doc["last_applied"])
                applied.evicted = _count(doc["evicted"])
                applied.machine.restore(doc["machine"])
                applied.sessions = {
                    _text(cid): Session(_count(seq), _text(result), _count(index), _count(term))
                    for cid, seq, result, index, term in doc["sessions"]
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
