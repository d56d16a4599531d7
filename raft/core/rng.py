"""A tiny seeded generator (SplitMix64) whose whole state is one integer.

The state lives in the server's persisted state, so election timeouts are replayable from a
seed and survive restarts without touching the global `random` module.
"""

from __future__ import annotations

MASK64 = (1 << 64) - 1


def next_random(state: int) -> tuple[int, int]:
    """Return (new_state, a 64-bit pseudo-random value)."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def seed_for(server_id: str, seed: int) -> int:
    """A per-server starting state derived from a cluster seed (stable across processes)."""
    state = seed & MASK64
    for byte in server_id.encode():
        state, value = next_random(state ^ byte)
        state ^= value
    return state
