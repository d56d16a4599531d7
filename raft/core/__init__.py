"""The Raft protocol core: pure, deterministic, no I/O (DESIGN.md layer 1)."""
