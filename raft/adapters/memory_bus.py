"""An in-process bus: one FIFO queue per address. Hosts drain it; it never drops anything
itself (the simulator adds loss, duplication and reordering on top)."""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Sequence

from raft.core.messages import Envelope


class InMemoryBus:
    def __init__(self) -> None:
        self._queues: dict[str, deque[Envelope]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # Counted for the benchmarks: every envelope published.
        self.published = 0

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        with self._lock:
            for envelope in envelopes:
                self._queues[envelope.to].append(envelope)
            self.published += len(envelopes)
            if envelopes:
                self._wake.notify_all()

    def drain(self, address: str) -> list[Envelope]:
        """Everything queued for `address`, oldest first."""
        with self._lock:
            # Removing the queue keeps the bus bounded however many client addresses it sees.
            queue = self._queues.pop(address, None)
            return list(queue) if queue else []

    def pending(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def wait(self, timeout_s: float) -> None:
        """Block until something is published or the timeout passes."""
        with self._lock:
            if not any(self._queues.values()):
                self._wake.wait(timeout_s)

    def wait_for(self, address: str, timeout_s: float) -> None:
        """Block until something is queued for `address` or the timeout passes."""
        with self._lock:
            self._wake.wait_for(lambda: bool(self._queues.get(address)), timeout_s)
