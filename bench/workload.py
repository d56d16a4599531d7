"""The workload both systems run, and the statistics both report.

The anchor workload is 20,000 writes of 16-byte values at 100 concurrent clients. Keys cycle
through a fixed key space so the replicated dictionary stays small and both systems do the
same work per command.
"""

from __future__ import annotations

from dataclasses import dataclass

from raft.app.kv import encode

ANCHOR_COMMANDS = 20_000
ANCHOR_CLIENTS = 100
VALUE_BYTES = 16
KEY_SPACE = 1024


@dataclass(frozen=True, slots=True)
class Workload:
    commands: int
    clients: int
    value_bytes: int = VALUE_BYTES
    key_space: int = KEY_SPACE
    # Wall-clock bound: a cell stops early (and says so) rather than run forever.
    budget_s: float = 30.0

    def key(self, number: int) -> str:
        return f"key-{number % self.key_space}"

    def value(self, number: int) -> str:
        # Exactly `value_bytes` ASCII characters, different for every command.
        return f"{number:0{self.value_bytes}x}"[-self.value_bytes :]

    def command(self, number: int) -> str:
        return encode({"op": "put", "key": self.key(number), "value": self.value(number)})
