"""A schedule's step-by-step record, kept only when tracing (a replay of a shrunk failure):
each step's event, the notes faults left, and every server's role, term, commit and log
length after it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raft.core.wire import KIND_OF, to_json_value
from raft.sim.network import Pending

# Per server after a step: [role or "down", term, commit index, log length].
ServerRows = Callable[[], dict[str, list[Any]]]


class Tracer:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.steps: list[dict[str, Any]] = []
        self._notes: list[str] = []
        self._event: dict[str, Any] = {}

    def note(self, text: str) -> None:
        if self.enabled:
            self._notes.append(text)

    def take_notes(self) -> list[str]:
        """The notes left since the last step (faults carried out between steps)."""
        notes, self._notes = self._notes, []
        return notes

    def event(self, event: dict[str, Any]) -> None:
        if self.enabled:
            self._event = event

    def message(self, kind: str, item: Pending) -> None:
        """A delivery or a drop of `item`."""
        if self.enabled:
            self._event = {"type": kind, **_described(item)}

    def batch(self, items: list[Pending]) -> None:
        """Messages delivered with this step's one, in the same handler call."""
        if self.enabled:
            self._event["batch"] = [_described(item) for item in items]

    def finish_step(self, step: int, now: int, partition: str, servers: ServerRows) -> None:
        self.steps.append(
            {
                "step": step,
                "now": now,
                "event": self._event,
                "notes": self._notes,
                "partition": partition,
                "servers": servers(),
            }
        )
        self._notes = []


def _described(item: Pending) -> dict[str, Any]:
    envelope = item.envelope
    assert envelope is not None
    return {
        "kind": KIND_OF[type(envelope.message)],
        "from": envelope.sender,
        "to": envelope.to,
        "sent": item.sent_step,
        "body": to_json_value(envelope.message),
    }
