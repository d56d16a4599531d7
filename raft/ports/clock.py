"""The clock port: hosts pass `now` (milliseconds) into the core; this is where they get it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class MonotonicClock:
    def now_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000


class WallClock:
    """Milliseconds since the epoch: comparable across function instances and machines."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000
