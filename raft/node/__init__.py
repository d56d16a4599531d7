"""The host-neutral unit of work every host calls."""
