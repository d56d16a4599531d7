"""The Raft protocol core: pure, deterministic, no I/O."""
