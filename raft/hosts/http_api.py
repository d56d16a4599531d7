"""The HTTP API, host-neutral: the Functions app and `python -m raft run --serve` both route
requests here.

    POST /api/commands            submit a command; wait for its committed result
    POST /api/cluster/leader      move leadership to {"server": id}; wait until it leads
    POST /api/cluster/servers     add {"server": id} to the configuration (DELETE: remove it)
    GET  /api/commands/{id}       the outcome of an earlier submission
    GET  /api/kv/{key}            linearizable read (ReadIndex: no log entry)
    GET  /api/cluster             each server's role, term, commit and last index, leader
    GET  /api/health              anonymous: 200 while a leader is known, else 503

A command is sent to the leader with no reply address (`reply_to` empty): every server records
the result in the store when it applies the entry, and this API polls the leader's record.
The client id is derived from the caller's request id (`x-request-id` header or `request_id`
query parameter), so a retried POST with the same id is applied at most once and answered with
the original result.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raft.app.kv import KeyValueStore, encode
from raft.app.state_machine import CommandError, command_bytes
from raft.core import strict_json
from raft.core.messages import ChangeMembership, ClientRequest, Envelope, TransferLeadership
from raft.core.strict_json import brief
from raft.node.handler import UPDATED_AT, ConflictRetriesExhausted, NodeHandler
from raft.ports.bus import Bus
from raft.ports.clock import Clock, WallClock
from raft.ports.store import ClientResult, Store

log = logging.getLogger("raft.http")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")
CLIENT_PREFIX = "http-"
RETRY_AFTER_S = "1"


# Seconds between resends of a request while the HTTP function waits for its result.
HTTP_RESEND_S = 3.0


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return json.dumps(self.body)


def error(status: int, message: str, **headers: str) -> ApiResponse:
    return ApiResponse(status, {"error": message}, dict(headers))


@dataclass(frozen=True)
class ApiLimits:
    max_command_bytes: int = 16 * 1024
    # Bounded well under the platform's 230 s cut; then 202 and a status URL.
    wait_s: float = 20.0
    # Uncommitted entries at the leader beyond which new commands are refused at once.
    max_uncommitted: int = 4096
    # Polling for the result starts fast and backs off, so a slow commit costs few reads.
    poll_s: float = 0.02
    max_poll_s: float = 0.5
    # Resend to the (possibly new) leader this often while waiting; the session makes it safe.
    resend_s: float = HTTP_RESEND_S


@dataclass
class Waiting:
    """A command sent to the leader whose result the HTTP function is waiting for."""

    request_id: str
    request: ClientRequest
    leader_id: str
    # Where the answer will be: a write's stored result, or a read's answer.
    answer: Callable[[str, str], ClientResult | None]
    # On the API's monotonic clock (seconds).
    deadline: float
    resend_at: float
    # How long to sleep before the next check.
    poll_s: float


class ClusterApi:
    def __init__(
        self,
        servers: Sequence[str],
        store: Store,
        bus: Bus,
        limits: ApiLimits | None = None,
        sleep: Callable[[float], None] = time.sleep,
        validate: Callable[[str], None] | None = None,
        clock: Clock | None = None,
        is_read_only: Callable[[str], bool] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        step: Bus | None = None,
    ) -> None:
        self.servers = list(servers)
        self.store = store
        self.bus = bus
        # Where a command goes when the leader is idle (`StepLocally`); None: `bus` always.
        self.step = step
        self.limits = limits or ApiLimits()
        self.sleep = sleep
        # Seconds, for the wait's deadline and resends (a virtual clock in raft/hosts/flex.py).
        self.monotonic = monotonic
        # The cluster's clock, to stamp requests with their issue time (resends keep it).
        self.clock = clock or WallClock()
        # The application's own check, so a malformed command is a 400, not a log entry.
        self.validate = validate or KeyValueStore().validate
        # Read-only commands are answered by ReadIndex: no log entry, the answer in a slot.
        self.is_read_only = is_read_only or KeyValueStore().is_read_only

    # ----------------------------------------------------------------- routes

    def post_command(self, body: bytes, request_id: str | None) -> ApiResponse:
        """Every refusal happens here, before anything is sent, and with the checks the
        leader repeats (the same parser, the same validation, the same size bound), so a
        command accepted here is never refused later for its content."""
        if request_id is not None and not REQUEST_ID.fullmatch(request_id):
            return error(400, "request id must be 1-100 characters of A-Z a-z 0-9 . _ : -")
        if len(body) > self.limits.max_command_bytes:
            return error(
                413, f"command is {len(body)} bytes; the limit is {self.limits.max_command_bytes}"
            )
        try:
            command = strict_json.loads(body)
        except strict_json.JsonInputError as exc:
            return error(400, f"body: {exc}")
        # What the log holds: canonical (sorted keys, one of each), measured as UTF-8.
        data = encode(command)
        if command_bytes(data) > self.limits.max_command_bytes:
            return error(
                413,
                f"command is {command_bytes(data)} bytes encoded; the limit is "
                f"{self.limits.max_command_bytes}",
            )
        try:
            self.validate(data)
        except CommandError as exc:
            return error(400, str(exc))
        return self.submit(request_id or uuid.uuid4().hex, data)

    def get_command(self, request_id: str) -> ApiResponse:
        if not REQUEST_ID.fullmatch(request_id):
            return error(400, "malformed request id")
        for server_id in self.servers:
            found = self.store.read_result(server_id, CLIENT_PREFIX + request_id)
            if found is not None:
                return self.committed(request_id, found)
        return ApiResponse(
            202,
            {
                "request_id": request_id,
                "status": "pending",
                "detail": "not applied yet (or unknown)",
            },
        )

    def get_key(self, key: str) -> ApiResponse:
        data = encode({"op": "get", "key": key})
        try:
            self.validate(data)
        except CommandError as exc:
            return error(400, str(exc))
        response = self.submit(uuid.uuid4().hex, data)
        if response.status != 200:
            return response
        result = response.body["result"]
        return ApiResponse(
            200,
            {
                "key": key,
                "found": result["found"],
                "value": result["value"],
                "index": response.body["index"],
                "term": response.body["term"],
            },
        )

    def post_leader(self, body: bytes) -> ApiResponse:
        """Move leadership to `{"server": id}` (thesis §3.10) and wait until it leads."""
        target = self._server_in(body)
        if isinstance(target, ApiResponse):
            return target
        if self.find_leader() is None:
            return error(503, "no leader is known; retry shortly", **{"Retry-After": RETRY_AFTER_S})

        def moved(leader_id: str, state: dict[str, Any]) -> ApiResponse | None:
            if leader_id != target:
                return None
            return ApiResponse(200, {"leader": target, "term": state["current_term"]})

        # Asked again after a while: the leader gives up on a target that lags.
        return self._ask_leader(
            moved,
            lambda _leader_id, _state: TransferLeadership(target),
            f"{target} did not take over in {self.limits.wait_s:g} s",
        )

    def change_servers(self, body: bytes, add: bool) -> ApiResponse:
        """Add `{"server": id}` to the configuration (POST) or remove it (DELETE), one at a
        time (thesis §4.1), and wait until the leader has committed the change."""
        server = self._server_in(body)
        if isinstance(server, ApiResponse):
            return server

        def changed(leader_id: str, state: dict[str, Any]) -> ApiResponse | None:
            done = (server in state["servers"]) == add
            if done and state["config_index"] <= state["commit_index"]:
                return ApiResponse(200, {"servers": state["servers"], "leader": leader_id})
            return None

        def request(_leader_id: str, state: dict[str, Any]) -> ChangeMembership | None:
            # Dropped while another change is uncommitted: asked again later.
            pending = (server in state["servers"]) != add
            return ChangeMembership(server, add) if pending else None

        verb = "add" if add else "remove"
        return self._ask_leader(
            changed, request, f"could not {verb} {server} in {self.limits.wait_s:g} s"
        )

    def _ask_leader(
        self,
        answer: Callable[[str, dict[str, Any]], ApiResponse | None],
        request: Callable[[str, dict[str, Any]], TransferLeadership | ChangeMembership | None],
        timeout: str,
    ) -> ApiResponse:
        """Send the leader an operator's `request` (again every resend period, since a leader
        may drop it) until `answer` reads the outcome in its stored state, or time out."""
        deadline = time.monotonic() + self.limits.wait_s
        poll, ask_at = self.limits.poll_s, 0.0
        while True:
            leader = self.find_leader()
            if leader is not None:
                outcome = answer(*leader)
                if outcome is not None:
                    return outcome
                message = request(*leader)
                now = time.monotonic()
                if message is not None and now >= ask_at:
                    log.info("operator leader=%s request=%s", leader[0], message)
                    self.bus.publish([Envelope("operator", leader[0], message)])
                    ask_at = now + self.limits.resend_s
            if time.monotonic() >= deadline:
                return error(504, timeout)
            self.sleep(poll)
            poll = min(self.limits.max_poll_s, poll * 1.5)

    def _server_in(self, body: bytes) -> str | ApiResponse:
        """The server a `{"server": id}` body names, or the 400 or 404 that refuses it."""
        try:
            doc = strict_json.loads(body)
        except strict_json.JsonInputError as exc:
            return error(400, f"body: {exc}")
        server = doc.get("server") if isinstance(doc, dict) else None
        if not isinstance(server, str):
            return error(400, 'body must be JSON like {"server": "server-2"}')
        if server not in self.servers:
            return error(404, f"unknown server {brief(server)}; servers are {self.servers}")
        return server

    def get_cluster(self) -> ApiResponse:
        servers = []
        for server_id in self.servers:
            state = self.store.read_state(server_id) or {}
            servers.append(
                {
                    "id": server_id,
                    "role": state.get("role", "unknown"),
                    "term": state.get("current_term", 0),
                    "commit_index": state.get("commit_index", 0),
                    "last_index": state.get("last_index", 0),
                    "leader": state.get("leader_id") or None,
                    "configuration": state.get("servers", []),
                    "last_activity_ms": state.get(UPDATED_AT),
                }
            )
        leader = self.find_leader()
        return ApiResponse(200, {"leader": leader[0] if leader else None, "servers": servers})

    def health(self) -> ApiResponse:
        """For availability tests and load balancers, so anonymous: whether the cluster can
        take commands (a leader is known), and nothing that names a server, term or key."""
        if self.find_leader() is None:
            return ApiResponse(
                503,
                {"status": "unavailable", "detail": "no leader is known"},
                {"Retry-After": RETRY_AFTER_S},
            )
        return ApiResponse(200, {"status": "ok"})

    # ----------------------------------------------------------------- submitting

    def submit(self, request_id: str, data: str) -> ApiResponse:
        """Send the command to the leader and wait for its result (or answer 202 after
        `wait_s`), polling the leader's stored result with a backoff."""
        outcome = self.begin(request_id, data)
        while isinstance(outcome, Waiting):
            self.sleep(outcome.poll_s)
            outcome = self.check(outcome)
        return outcome

    def begin(self, request_id: str, data: str) -> ApiResponse | Waiting:
        """The first part of `submit`: find the leader and send it the command, unless the
        answer is already known (or there is no leader, or it is overloaded)."""
        client_id = CLIENT_PREFIX + request_id
        leader = self.find_leader()
        if leader is None:
            return error(503, "no leader is known; retry shortly", **{"Retry-After": RETRY_AFTER_S})
        leader_id, state = leader
        read_only = self.is_read_only(data)
        # A write's result stays under its request id; a read is simply asked again.
        answer = self.store.read_answer if read_only else self.store.read_result
        known = None if read_only else answer(leader_id, client_id)
        if known is not None:
            return self.committed(request_id, known)
        if state.get("last_index", 0) - state.get("commit_index", 0) >= self.limits.max_uncommitted:
            return error(
                503,
                "overloaded: too many commands waiting to commit",
                **{"Retry-After": RETRY_AFTER_S},
            )
        request = ClientRequest(
            client_id, 1, data, issued_at=self.clock.now_ms(), read_only=read_only
        )
        log.info("request=%s client=%s leader=%s submitted", request_id, client_id, leader_id)
        # A leader with nothing in flight has no batch to add the command to: stepping it
        # here saves a hop. A busy one batches commands from its subscription, and stepping
        # it here would race its trigger's saves.
        idle = state.get("last_index") == state.get("commit_index")
        bus = self.step if self.step is not None and idle else self.bus
        bus.publish([Envelope(client_id, leader_id, request)])
        now = self.monotonic()
        waiting = Waiting(
            request_id,
            request,
            leader_id,
            answer,
            deadline=now + self.limits.wait_s,
            resend_at=now + self.limits.resend_s,
            poll_s=self.limits.poll_s,
        )
        return self._wait_more(waiting)

    def check(self, waiting: Waiting) -> ApiResponse | Waiting:
        """After sleeping `waiting.poll_s`: the committed result, a 202 once the wait is over,
        or `waiting` again (resent to the current leader every `resend_s`)."""
        request_id, client_id = waiting.request_id, waiting.request.client_id
        waiting.poll_s = min(self.limits.max_poll_s, waiting.poll_s * 1.5)
        found = waiting.answer(waiting.leader_id, client_id)
        if found is not None:
            log.info("request=%s committed index=%d term=%d", request_id, found.index, found.term)
            return self.committed(request_id, found)
        if self.monotonic() >= waiting.resend_at:
            waiting.resend_at = self.monotonic() + self.limits.resend_s
            current = self.find_leader()
            if current is not None and current[0] != waiting.leader_id:
                waiting.leader_id = current[0]
                # The new leader may have applied it already: never send it twice then.
                found = waiting.answer(waiting.leader_id, client_id)
                if found is not None:
                    return self.committed(request_id, found)
            self.bus.publish([Envelope(client_id, waiting.leader_id, waiting.request)])
        return self._wait_more(waiting)

    def _wait_more(self, waiting: Waiting) -> ApiResponse | Waiting:
        if self.monotonic() < waiting.deadline:
            return waiting
        status_url = f"/api/commands/{waiting.request_id}"
        return ApiResponse(
            202,
            {"request_id": waiting.request_id, "status": "pending", "status_url": status_url},
            {"Location": status_url},
        )

    def find_leader(self) -> tuple[str, dict[str, Any]] | None:
        """The server that believes it leads the highest term, from the stored states."""
        best: tuple[str, dict[str, Any]] | None = None
        for server_id in self.servers:
            state = self.store.read_state(server_id)
            if state is None or state.get("role") != "leader":
                continue
            if best is None or state["current_term"] > best[1]["current_term"]:
                best = (server_id, state)
        return best

    @staticmethod
    def committed(request_id: str, found: ClientResult) -> ApiResponse:
        return ApiResponse(
            200,
            {
                "request_id": request_id,
                "result": json.loads(found.result),
                "index": found.index,
                "term": found.term,
            },
        )


# Saves a command stepped from the HTTP function tries before it is published instead: one,
# since a conflict means the server's own trigger is busy, and that batches commands better.
STEP_SAVE_ATTEMPTS = 1


class StepLocally:
    """A bus for the HTTP function that steps the addressed server's node handler in this
    instance instead of publishing the command to the server's subscription: one Service Bus
    hop (and the trigger's wait for a batch) fewer.

    Safe because the step is the node handler's ordinary unit of work, which any instance
    may run: every save is conditional on the version the step started from, so a step that
    races the server's own trigger instance either wins or reloads and steps again. If it
    cannot save (the handler gives up after its options' `max_conflict_retries` attempts) or
    fails, the command is published as usual, so under contention the trigger's batches
    carry the load.
    """

    def __init__(self, handlers: Mapping[str, NodeHandler], bus: Bus, clock: Clock) -> None:
        self.handlers = handlers
        self.bus = bus
        self.clock = clock

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        rest: list[Envelope] = []
        for envelope in envelopes:
            handler = self.handlers.get(envelope.to)
            if handler is None:
                rest.append(envelope)
                continue
            # Its own trigger saves the server between two requests, so a cached copy here
            # is nearly always stale: load afresh rather than fail a save first.
            handler.drop_cache()
            try:
                handler.handle([envelope], self.clock.now_ms())
            except ConflictRetriesExhausted:
                log.info("server=%s busy; publishing the command instead", envelope.to)
                rest.append(envelope)
            except Exception:
                log.warning("server=%s not stepped; publishing", envelope.to, exc_info=True)
                rest.append(envelope)
        if rest:
            self.bus.publish(rest)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup."""
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)
