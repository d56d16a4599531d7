"""The interface a replicated application implements.

Replace the default key-value store by passing another factory to the node handler: this is
the seed's "implement whatever server logic you need at the point where new log entries are
about to be committed".
"""

from __future__ import annotations

from typing import Protocol


class CommandError(ValueError):
    """A command the application cannot accept; raised before it reaches the log."""


class SnapshotError(ValueError):
    """Snapshot data that cannot be restored (only a faulty or corrupted leader sends it)."""


# A command's size in the log, in bytes of UTF-8. Bounded so that the command, and a result of
# about its size, fit one Table Storage property (64 KiB of UTF-16) and one Service Bus
# message (JSON escaping at most doubles it): raft.hosts.settings caps the setting at this.
MAX_COMMAND_BYTES_LIMIT = 24 * 1024


def command_bytes(data: str) -> int:
    return len(data.encode("utf-8", errors="surrogatepass"))


class StateMachine(Protocol):
    def validate(self, data: str) -> None:
        """Raise CommandError if `data` is not a well-formed command. Called before proposing,
        so malformed commands never enter the log."""

    def apply(self, data: str) -> str:
        """Apply one committed command and return its encoded result. Must be deterministic
        and must not raise: every server applies the same commands in the same order."""

    def is_read_only(self, data: str) -> bool:
        """Whether the (valid) command `data` only reads: it is then served by ReadIndex
        (thesis §6.4), from the applied state, without a log entry."""

    def query(self, data: str) -> str:
        """Answer a read-only command from the current state, changing nothing."""

    def snapshot(self) -> str:
        """The whole state, encoded."""

    def restore(self, snapshot: str) -> None:
        """Replace the state with a snapshot taken by `snapshot`; raise SnapshotError, and
        change nothing, if `snapshot` is not one."""
