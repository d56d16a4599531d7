"""The host-neutral unit of work every host calls (DESIGN.md layer 5)."""
