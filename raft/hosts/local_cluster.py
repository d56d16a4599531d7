"""A whole cluster in one process, on real time: every server's node handler over one bus and
one store, pumped by a single thread. The local runner and `--serve` drive it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from raft.core.messages import Envelope
from raft.core.state import Role, ServerState
from raft.node.handler import NodeHandler, NodeOptions
from raft.ports.bus import Bus
from raft.ports.clock import Clock, WallClock
from raft.ports.store import Store


class DrainableBus(Bus, Protocol):
    """A bus the host pulls from (the in-memory bus)."""

    def drain(self, address: str) -> list[Envelope]: ...

    def wait(self, timeout_s: float) -> None: ...

    def wait_for(self, address: str, timeout_s: float) -> None: ...


class LocalCluster:
    def __init__(
        self,
        servers: Sequence[str],
        store: Store,
        bus: DrainableBus,
        options: NodeOptions,
        clock: Clock | None = None,
        tick_ms: int = 10,
        spares: Sequence[str] = (),
    ) -> None:
        self.servers = list(servers)
        self.store = store
        self.bus = bus
        self.clock = clock or WallClock()
        self.tick_ms = tick_ms
        # Spares: servers that run but are outside the first configuration until added.
        self.spares = list(spares)
        self.handlers = {
            s: NodeHandler(s, self.servers, store, bus, options, self.spares)
            for s in (*self.servers, *self.spares)
        }
        self._next_tick = 0
        self._stop = threading.Event()

    def pump(self) -> None:
        """Deliver everything queued for each server (one batch, one save per server) and fire
        timers that are due."""
        now = self.clock.now_ms()
        for server_id, handler in self.handlers.items():
            batch = self.bus.drain(server_id)
            if batch:
                handler.handle(batch, now)
        if now >= self._next_tick:
            self._next_tick = now + self.tick_ms
            for handler in self.handlers.values():
                handler.tick(now)

    def run_forever(self) -> None:
        while not self._stop.is_set():
            self.pump()
            self.bus.wait(self.tick_ms / 1000)

    def stop(self) -> None:
        self._stop.set()

    def states(self) -> dict[str, ServerState]:
        return {s: h.state() for s, h in self.handlers.items()}

    def leader(self) -> ServerState | None:
        """The leader of the highest term, if any server believes it leads."""
        leaders = [s for s in self.states().values() if s.role is Role.LEADER]
        return max(leaders, key=lambda s: s.current_term) if leaders else None
