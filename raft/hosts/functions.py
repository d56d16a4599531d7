"""What the Functions app's triggers call: one object per worker process holding the store,
the bus, a node handler per server (each with its warm cache) and the HTTP API.

`function_app.py` only registers triggers and forwards here; this module turns the trigger
payloads (`azure.functions` objects) into node-handler calls and API responses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace

import azure.functions as func

from raft.adapters.connections import resolve
from raft.adapters.poison import LoggingPoisonRecorder, PoisonRecorder, TablePoisonRecorder
from raft.adapters.servicebus_bus import (
    ServiceBusBus,
    delivery_properties,
    receive,
    trace_headers,
)
from raft.app.sessions import SessionPolicy
from raft.core.messages import AppendEntries, ClientRequest, Envelope
from raft.core.state import Config
from raft.hosts import settings as names
from raft.hosts import telemetry
from raft.hosts.http_api import (
    STEP_SAVE_ATTEMPTS,
    ApiLimits,
    ApiResponse,
    ClusterApi,
    StepLocally,
    header,
)
from raft.hosts.settings import AppSettings
from raft.node.handler import NodeHandler, NodeOptions
from raft.ports.bus import Bus
from raft.ports.clock import Clock, WallClock
from raft.ports.store import Store

log = logging.getLogger("raft.functions")


def node_options(settings: AppSettings) -> NodeOptions:
    """Timeouts for a cluster whose clock is a once-a-second timer and whose messages take a
    Service Bus hop: the election timeout spans several timer periods."""
    return NodeOptions(
        config=Config(
            election_timeout_min=settings.election_timeout_ms,
            election_timeout_max=2 * settings.election_timeout_ms,
            heartbeat_interval=settings.heartbeat_ms,
            # An idle cluster costs one check round a minute; a leader lost while the group
            # is quiescent is replaced within a minute plus an election timeout.
            quiesce_check_interval=max(60_000, 3 * settings.election_timeout_ms),
        ),
        max_command_bytes=settings.max_command_bytes,
        sessions=SessionPolicy(retention_ms=settings.session_retention_s * 1000),
    )


def api_limits(settings: AppSettings) -> ApiLimits:
    """The HTTP function's limits: command size and wait from the settings; new commands are
    refused at the leader's own bound on uncommitted entries."""
    return ApiLimits(
        max_command_bytes=settings.max_command_bytes,
        wait_s=settings.http_wait_s,
        max_uncommitted=node_options(settings).config.max_uncommitted_entries,
    )


class FunctionsHost:
    def __init__(
        self,
        settings: AppSettings,
        store: Store,
        bus: Bus,
        recorder: PoisonRecorder | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.recorder = recorder or LoggingPoisonRecorder()
        self.clock = clock or WallClock()
        options = node_options(settings)
        self.handlers = {
            s: NodeHandler(s, settings.servers, store, bus, options, settings.spares)
            for s in settings.all_servers
        }
        # The HTTP function steps an idle leader itself, one Service Bus hop fewer (the
        # forecast in docs/performance.md); its handlers publish instead after a conflict.
        stepping = replace(options, max_conflict_retries=STEP_SAVE_ATTEMPTS)
        step = StepLocally(
            {
                s: NodeHandler(s, settings.servers, store, bus, stepping, settings.spares)
                for s in settings.all_servers
            },
            bus,
            self.clock,
        )
        self.api = ClusterApi(
            settings.all_servers, store, bus, api_limits(settings), clock=self.clock, step=step
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FunctionsHost:
        from raft.adapters.table_store import TableStore

        source = os.environ if env is None else env
        settings = AppSettings.from_env(source)
        store = TableStore.from_connection(
            resolve(names.STORAGE_CONNECTION, source, "tables"), settings.table
        )
        bus = ServiceBusBus.from_connection(
            resolve(names.SERVICE_BUS_CONNECTION, source, "servicebus"),
            settings.topic,
            settings.message_ttl_s,
            trace_context=telemetry.current_headers,
        )
        # Malformed deliveries are kept in the Raft table's "poison" partition, with reasons.
        return cls(settings, store, bus, TablePoisonRecorder(store.table))

    # ----------------------------------------------------------------- triggers

    def on_messages(self, server_id: str, messages: Sequence[func.ServiceBusMessage]) -> None:
        """A batch from `server_id`'s subscription: malformed messages are recorded and
        dropped (returning normally completes them); the rest are stepped in one save, in a
        span that continues their trace. An exception makes Service Bus redeliver the batch,
        which the core tolerates; bad input never raises one (docs/bad-input.md)."""
        envelopes: list[Envelope] = []
        # The step continues the trace of a message carrying a command, if any, rather than
        # a heartbeat's: so a command's trace goes on through every server replicating it.
        with_command: list[dict[str, str]] = []
        without: list[dict[str, str]] = []
        for message in messages:
            envelope = receive(message, self.recorder, server_id=server_id)
            if envelope is not None:
                envelopes.append(envelope)
                headers = trace_headers(delivery_properties(message))
                (with_command if _carries(envelope) else without).append(headers)
        if not envelopes:
            return
        attributes = {
            "messaging.system": "servicebus",
            "messaging.batch.message_count": len(messages),
            "raft.server": server_id,
        }
        traces = with_command + without
        with telemetry.batch_span(f"raft step {server_id}", traces, attributes):
            self.handlers[server_id].handle(envelopes, self.clock.now_ms())

    def on_timer(self) -> None:
        """Drive every server's deadlines. One server's failure does not starve the others;
        it is raised after all were ticked so the platform logs it."""
        now = self.clock.now_ms()
        failures: list[Exception] = []
        for server_id, handler in self.handlers.items():
            try:
                handler.tick(now)
            except Exception as exc:
                log.exception("server=%s tick failed", server_id)
                failures.append(exc)
        if failures:
            raise failures[0]

    # ----------------------------------------------------------------- HTTP

    def post_command(self, req: func.HttpRequest) -> func.HttpResponse:
        request_id = header(req.headers, "x-request-id") or req.params.get("request_id")
        return to_http(self.api.post_command(req.get_body(), request_id))

    def get_command(self, req: func.HttpRequest) -> func.HttpResponse:
        return to_http(self.api.get_command(req.route_params.get("request_id", "")))

    def get_key(self, req: func.HttpRequest) -> func.HttpResponse:
        return to_http(self.api.get_key(req.route_params.get("key", "")))

    def get_cluster(self, req: func.HttpRequest) -> func.HttpResponse:
        return to_http(self.api.get_cluster())

    def post_leader(self, req: func.HttpRequest) -> func.HttpResponse:
        return to_http(self.api.post_leader(req.get_body()))

    def change_servers(self, req: func.HttpRequest) -> func.HttpResponse:
        return to_http(self.api.change_servers(req.get_body(), add=req.method == "POST"))

    def health(self, req: func.HttpRequest) -> func.HttpResponse:
        return to_http(self.api.health())


def _carries(envelope: Envelope) -> bool:
    """Whether `envelope` carries a client command (a request, or entries to replicate)."""
    m = envelope.message
    return isinstance(m, ClientRequest) or (isinstance(m, AppendEntries) and bool(m.entries))


def to_http(response: ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(
        response.text(),
        status_code=response.status,
        headers=response.headers,
        mimetype="application/json",
    )


_host: FunctionsHost | None = None


def host() -> FunctionsHost:
    """The worker's host, built from app settings on first use (a cold start)."""
    global _host
    if _host is None:
        _host = FunctionsHost.from_env()
    return _host


def use_host(instance: FunctionsHost | None) -> None:
    """Install a host built by hand (tests wire in the in-memory bus this way)."""
    global _host
    _host = instance
