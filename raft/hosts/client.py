"""A client that submits commands over the bus and waits for the committed response,
following leader hints and retrying with the same sequence number (so a retry is applied at
most once: the servers' sessions answer it with the original result)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from raft.core.messages import ClientRequest, ClientResponse, ClientStatus, Envelope
from raft.hosts.local_cluster import DrainableBus
from raft.ports.clock import Clock, WallClock


class RaftClient:
    def __init__(
        self,
        bus: DrainableBus,
        servers: Sequence[str],
        client_id: str,
        clock: Clock | None = None,
        retry_ms: int = 500,
    ) -> None:
        self.bus = bus
        self.servers = list(servers)
        self.client_id = client_id
        # The cluster's clock: requests are stamped with it, and servers compare the stamps.
        self.clock = clock or WallClock()
        self.retry_ms = retry_ms
        self.leader_hint = ""
        self._seq = 0
        self._round_robin = itertools.cycle(self.servers)

    def submit(self, data: str, timeout_s: float) -> ClientResponse | None:
        """Send `data` until a final answer arrives; None if none came within the timeout."""
        self._seq += 1
        seq = self._seq
        deadline = self.clock.now_ms() + int(timeout_s * 1000)
        target = self.leader_hint or next(self._round_robin)
        request = ClientRequest(
            self.client_id, seq, data, reply_to=self.client_id, issued_at=self.clock.now_ms()
        )
        while self.clock.now_ms() < deadline:
            self.bus.publish([Envelope(self.client_id, target, request)])
            response = self._await(seq, min(deadline, self.clock.now_ms() + self.retry_ms))
            if response is None:
                target = next(self._round_robin)
                continue
            if response.status is ClientStatus.NOT_LEADER:
                target = response.leader_hint or next(self._round_robin)
                self.bus.wait_for(self.client_id, self.retry_ms / 10_000)
                continue
            if response.status is ClientStatus.OVERLOADED:
                self.bus.wait_for(self.client_id, self.retry_ms / 1000)
                continue
            self.leader_hint = response.leader_hint
            return response
        return None

    def _await(self, seq: int, until_ms: int) -> ClientResponse | None:
        while (now := self.clock.now_ms()) < until_ms:
            self.bus.wait_for(self.client_id, (until_ms - now) / 1000)
            for envelope in self.bus.drain(self.client_id):
                m = envelope.message
                if isinstance(m, ClientResponse) and m.seq == seq:
                    return m
        return None
