"""Simulated clients: each issues key-value operations one at a time with unique
(client_id, seq), retries on timeout or NOT_LEADER with the same seq, and records what it
saw (invocation and response) for the linearizability checker.

Clients are outside any partition and never crash; what they send and when is part of the
schedule (`Choices`), so a replay reissues exactly the same operations.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from raft.app.kv import encode
from raft.core.messages import ClientRequest, ClientResponse, ClientStatus, Envelope
from raft.sim.linearizability import Operation
from raft.sim.network import CLIENT, Pending
from raft.sim.strategies import Choices

OPS = ("put", "get", "delete", "cas")
# Virtual milliseconds.
THINK_TIME = 10
NO_LEADER_BACKOFF = 50
OVERLOADED_BACKOFF = 50


class ClientProtocolError(Exception):
    """A response no correct cluster sends (kept by the simulator as a violation)."""


class SimClient:
    def __init__(
        self,
        client_id: str,
        servers: tuple[str, ...],
        keys: tuple[str, ...],
        timeout: int,
        send: Callable[[Envelope], None],
        script: deque[dict[str, Any]] | None = None,
    ) -> None:
        self.id = client_id
        self.servers = servers
        self.keys = keys
        self.timeout = timeout
        self.send = send
        # Scripted clients (scenario tests) run their queue; others make up operations.
        self.script = script
        self.seq = 0
        self.current: Operation | None = None
        self.hint = ""
        self.target = 0
        self.done: list[Operation] = []
        self.last_seen: dict[str, Any] = {}
        self.timer = Pending(0, 0, CLIENT, f"{client_id}:timer", client_id)
        self.active = True
        # Virtual ms between an answer and the next operation.
        self.think_time = THINK_TIME
        # Requests sent (retries included), and responses received of any status, by seq.
        self.requests = 0
        self.responses: Counter[int] = Counter()
        # Operations in turn (every kind on every key) instead of as the choices say: the
        # load at rest, whose fair choices would always say the first kind and key.
        self.rotate = False
        # A server every new operation goes to first, instead of one the choices name.
        self.prefer = ""

    def on_timer(self, now: int, choices: Choices, issuing: bool) -> Operation | None:
        """The client's timer fired: issue the next operation (returned, for the history) or
        retry the current one."""
        if self.current is not None:
            self.hint = ""
            self.target = (self.target + 1) % len(self.servers)
            self._send(now)
            return None
        if not issuing or (self.script is not None and not self.script):
            self.active = False
            return None
        self.seq += 1
        self.current = self._next_operation(choices)
        # A new operation goes to any server, as a request through the HTTP API may reach
        # any instance: not only to the leader the last answer named, which may since have
        # been deposed without knowing it (followers forward to the leader they know).
        self.hint = ""
        if self.prefer:
            self.target = self.servers.index(self.prefer)
        else:
            self.target = choices.below(len(self.servers))
        self._send(now)
        return self.current

    def _next_operation(self, choices: Choices) -> Operation:
        if self.script is not None:
            command = self.script.popleft()
            return Operation(
                self.id,
                self.seq,
                command["op"],
                command["key"],
                command.get("value"),
                command.get("expected"),
            )
        if self.rotate:
            op = OPS[self.seq % len(OPS)]
            key = self.keys[self.seq // len(OPS) % len(self.keys)]
        else:
            op = OPS[choices.below(len(OPS))]
            key = self.keys[choices.below(len(self.keys))]
        value = f"{self.id}.{self.seq}" if op in ("put", "cas") else None
        expected = self.last_seen.get(key) if op == "cas" else None
        return Operation(self.id, self.seq, op, key, value, expected)

    def command(self, op: Operation) -> str:
        doc: dict[str, Any] = {"op": op.op, "key": op.key}
        if op.op in ("put", "cas"):
            doc["value"] = op.value
        if op.op == "cas":
            doc["expected"] = op.expected
        return encode(doc)

    def _send(self, now: int) -> None:
        op = self.current
        assert op is not None
        to = self.hint or self.servers[self.target]
        self.send(Envelope(self.id, to, ClientRequest(self.id, op.seq, self.command(op), self.id)))
        self.requests += 1
        self.timer.time = now + self.timeout
        self.active = True

    def on_response(self, m: ClientResponse, now: int, stamp: int) -> Operation | None:
        """A response arrived; returns the operation it completed, if any."""
        self.responses[m.seq] += 1
        op = self.current
        if m.status is ClientStatus.OK:
            if op is None or m.seq != op.seq:
                self._check_repeat(m)
                return None
            op.response = stamp
            op.result = json.loads(m.result)
            self._remember(op)
            self.done.append(op)
            self.current = None
            self.hint = m.leader_hint
            self.timer.time = now + self.think_time
            return op
        if op is None or m.seq != op.seq:
            return None
        if m.status is ClientStatus.NOT_LEADER:
            self.hint = m.leader_hint
            if not self.hint:
                self.target = (self.target + 1) % len(self.servers)
            self.timer.time = now + (1 if self.hint else NO_LEADER_BACKOFF)
        elif m.status is ClientStatus.OVERLOADED:
            self.timer.time = now + OVERLOADED_BACKOFF
        else:
            raise ClientProtocolError(
                f"{self.id}#{m.seq} ({op.op} {op.key}) was answered {m.status.value}: "
                f"{m.result or 'a sequential client never retries an applied request'}"
            )
        return None

    def _check_repeat(self, m: ClientResponse) -> None:
        """Sessions: a retried request already applied is answered with the original result.
        A read is not applied (ReadIndex): each copy is answered afresh."""
        for op in reversed(self.done):
            if op.seq == m.seq and op.op != "get":
                if json.loads(m.result) != op.result:
                    raise ClientProtocolError(
                        f"{self.id}#{m.seq} was answered {op.result} and later {m.result}"
                    )
                return

    def _remember(self, op: Operation) -> None:
        result = op.result or {}
        if op.op in ("get", "cas"):
            self.last_seen[op.key] = result.get("value")
        elif op.op == "put":
            self.last_seen[op.key] = op.value
        else:
            self.last_seen[op.key] = None
