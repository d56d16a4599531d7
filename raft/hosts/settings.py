"""Every app setting the Functions app reads, with its default.

The Bicep template (`infra/`), `local.settings.json.example` and the tests are checked against
this module, so a setting is named in exactly one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from raft.app.state_machine import MAX_COMMAND_BYTES_LIMIT
from raft.hosts.http_api import HTTP_RESEND_S

SERVER_COUNT = "RAFT_SERVER_COUNT"
TOPIC = "RAFT_TOPIC"
TABLE = "RAFT_TABLE"
TIMER_SCHEDULE = "RAFT_TIMER_SCHEDULE"
ELECTION_TIMEOUT_MS = "RAFT_ELECTION_TIMEOUT_MS"
HEARTBEAT_MS = "RAFT_HEARTBEAT_MS"
HTTP_WAIT_S = "RAFT_HTTP_WAIT_S"
MAX_COMMAND_BYTES = "RAFT_MAX_COMMAND_BYTES"
MESSAGE_TTL_S = "RAFT_MESSAGE_TTL_S"
SESSION_RETENTION_S = "RAFT_SESSION_RETENTION_S"
MAX_SERVERS = "RAFT_MAX_SERVERS"

# Binding connection names (Functions convention: NAME holds a connection string, or
# NAME__fullyQualifiedNamespace / NAME__tableServiceUri / NAME__accountName for identity).
SERVICE_BUS_CONNECTION = "ServiceBusConnection"
STORAGE_CONNECTION = "RaftStorage"

DEFAULTS: dict[str, str] = {
    SERVER_COUNT: "5",
    TOPIC: "rafttopic",
    TABLE: "raftstate",
    # NCRONTAB with seconds: every second.
    TIMER_SCHEDULE: "*/1 * * * * *",
    # Several timer periods plus a bus hop: the timer fires at most once a second.
    ELECTION_TIMEOUT_MS: "6000",
    HEARTBEAT_MS: "1000",
    HTTP_WAIT_S: "20",
    MAX_COMMAND_BYTES: "16384",
    MESSAGE_TTL_S: "120",
    SESSION_RETENTION_S: "900",
    # Servers that have a subscription and a trigger; those past RAFT_SERVER_COUNT are spares
    # that join when added to the configuration (0: none).
    MAX_SERVERS: "0",
}

# The name of each subscription's correlation-filter rule, which matches the adapter's
# ADDRESSEE_PROPERTY against the server's id.
SUBSCRIPTION_RULE = "addressee"

# Platform limits host.json and infra/ set, named here so the settings above can be checked
# against them (tests/test_deployment.py checks that the files agree).
#
# A Service Bus batch trigger cannot renew its messages' locks (host.json's
# maxAutoLockRenewalDuration applies to single-message triggers only): a batch still running
# when the lock expires is delivered again, to a second invocation, while the first goes on.
# So every invocation is cut off (functionTimeout) well before a lock taken just before it
# started can expire; the margin covers the host's receive-to-dispatch time and completion.
MESSAGE_LOCK_S = 60
FUNCTION_TIMEOUT_S = 45
LOCK_MARGIN_S = MESSAGE_LOCK_S - FUNCTION_TIMEOUT_S
# Messages per batch invocation: one step and one save for all of them, so the work grows
# with the entries and replies a batch makes, far inside FUNCTION_TIMEOUT_S at this size.
MAX_MESSAGE_BATCH = 100
# An HTTP call waits for its command at most RAFT_HTTP_WAIT_S, then a few more store reads
# and a resend may run: this much of FUNCTION_TIMEOUT_S is kept for them.
HTTP_WAIT_MARGIN_S = 15
# Concurrent HTTP invocations one instance serves (Flex Consumption's perInstanceConcurrency;
# the Python default is 1) and the worker threads that run them (PYTHON_THREADPOOL_THREAD_COUNT):
# a waiting POST sleeps between store reads, so one instance holds many without using much CPU.
HTTP_CONCURRENCY = 16


def server_ids(count: int) -> list[str]:
    """Server ids, which are also the subscription names: server-1 .. server-N."""
    return [f"server-{i}" for i in range(1, count + 1)]


@dataclass(frozen=True)
class AppSettings:
    server_count: int
    topic: str
    table: str
    timer_schedule: str
    election_timeout_ms: int
    heartbeat_ms: int
    http_wait_s: float
    max_command_bytes: int
    message_ttl_s: int
    # How long a client session (and a request id) is remembered: see raft/app/sessions.py.
    session_retention_s: int
    max_servers: int = 0

    @property
    def servers(self) -> list[str]:
        """The first configuration."""
        return server_ids(self.server_count)

    @property
    def all_servers(self) -> list[str]:
        """Every server that has a subscription and a trigger: the first configuration, then
        the spares."""
        return server_ids(max(self.server_count, self.max_servers))

    @property
    def spares(self) -> list[str]:
        return self.all_servers[self.server_count :]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AppSettings:
        source = os.environ if env is None else env

        def get(name: str) -> str:
            return source.get(name) or DEFAULTS[name]

        settings = cls(
            server_count=int(get(SERVER_COUNT)),
            topic=get(TOPIC),
            table=get(TABLE),
            timer_schedule=get(TIMER_SCHEDULE),
            election_timeout_ms=int(get(ELECTION_TIMEOUT_MS)),
            heartbeat_ms=int(get(HEARTBEAT_MS)),
            http_wait_s=float(get(HTTP_WAIT_S)),
            max_command_bytes=int(get(MAX_COMMAND_BYTES)),
            message_ttl_s=int(get(MESSAGE_TTL_S)),
            session_retention_s=int(get(SESSION_RETENTION_S)),
            max_servers=int(get(MAX_SERVERS)),
        )
        if settings.server_count < 1 or settings.server_count > 15:
            raise ValueError(
                f"{SERVER_COUNT} must be between 1 and 15, got {settings.server_count}"
            )
        if settings.max_servers > 15:
            raise ValueError(f"{MAX_SERVERS} must be at most 15, got {settings.max_servers}")
        if settings.heartbeat_ms * 3 > settings.election_timeout_ms:
            raise ValueError(f"{ELECTION_TIMEOUT_MS} must be at least 3x {HEARTBEAT_MS}")
        if not 0 < settings.max_command_bytes <= MAX_COMMAND_BYTES_LIMIT:
            raise ValueError(f"{MAX_COMMAND_BYTES} must be between 1 and {MAX_COMMAND_BYTES_LIMIT}")
        longest_wait = FUNCTION_TIMEOUT_S - HTTP_WAIT_MARGIN_S
        if not 0 < settings.http_wait_s <= longest_wait:
            raise ValueError(
                f"{HTTP_WAIT_S} must be between 0 and {longest_wait} s, so that an HTTP call "
                f"ends before host.json's functionTimeout ({FUNCTION_TIMEOUT_S} s)"
            )
        # A message may be delivered until its TTL runs out, and the HTTP function resends its
        # request while it waits: a session must outlive both, or a late copy of a request
        # whose session expired would be refused as expired although it was applied.
        needed = settings.message_ttl_s + settings.http_wait_s + HTTP_RESEND_S
        if settings.session_retention_s < needed:
            raise ValueError(
                f"{SESSION_RETENTION_S} must be at least {MESSAGE_TTL_S} + {HTTP_WAIT_S} + "
                f"{HTTP_RESEND_S} s (the HTTP resend period) = {needed:g} s, "
                f"got {settings.session_retention_s}"
            )
        return settings
