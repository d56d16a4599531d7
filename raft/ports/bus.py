"""The bus port: publish addressed messages.

Delivery is at-least-once and unordered in general: a message may be lost, duplicated,
delayed or reordered, and the core tolerates all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from raft.core.messages import Envelope


class Bus(Protocol):
    def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Send each envelope to its addressee (`envelope.to`)."""
