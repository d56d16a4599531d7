"""End to end through the registered functions' own code path: the Service Bus trigger, timer
and HTTP functions of `function_app.py`, invoked with azure.functions' own `ServiceBusMessage`,
`TimerRequest` and `HttpRequest` objects, over the in-memory bus and Table Storage on a real
Azurite."""

from __future__ import annotations

import importlib
import json
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest

from raft.adapters.connections import Connection
from raft.adapters.memory_bus import InMemoryBus
from raft.adapters.table_store import TableStore
from raft.core import wire
from raft.core.messages import ClientRequest, Envelope
from raft.hosts.functions import FunctionsHost, use_host
from raft.hosts.settings import AppSettings

ENV = {
    "RAFT_SERVER_COUNT": "3",
    "RAFT_ELECTION_TIMEOUT_MS": "300",
    "RAFT_HEARTBEAT_MS": "100",
    "RAFT_HTTP_WAIT_S": "30",
}


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def now_ms(self) -> int:
        return self.now


def trigger_message(envelope: Envelope, body: bytes | None = None) -> func.ServiceBusMessage:
    """What the Service Bus trigger hands the function for one delivery."""
    return ServiceBusMessage(
        body=wire.encode(envelope).encode() if body is None else body,
        message_id=uuid.uuid4().hex,
        application_properties={
            "addressee": envelope.to,
            "sender": envelope.sender,
            "kind": wire.kind_of(envelope.message),
        },
        user_properties={},
    )


@dataclass
class FunctionsCluster:
    functions: dict[str, Callable[..., Any]]
    bus: InMemoryBus
    clock: VirtualClock
    hosts: list[FunctionsHost]
    delivered: list[func.ServiceBusMessage] = field(default_factory=list)
    pick: Callable[[int], int] = lambda step: 0

    def function(self, name: str) -> Callable[..., Any]:
        return self.functions[name]

    def step(self, ticks: int = 1) -> None:
        """Advance 10 ms, fire the timer, deliver everything queued through the triggers."""
        for _ in range(ticks):
            self.clock.now += 10
            use_host(self.hosts[self.pick(self.clock.now)])
            self.function("timer")(TimerRequest())
            for server_id in self.hosts[0].settings.servers:
                batch = [trigger_message(e) for e in self.bus.drain(server_id)]
                if batch:
                    self.delivered.extend(batch)
                    use_host(self.hosts[self.pick(len(self.delivered))])
                    self.function(f"server_{server_id.split('-')[-1]}")(batch)

    def leader(self) -> str | None:
        return self.hosts[0].api.get_cluster().body["leader"]  # type: ignore[no-any-return]

    def elect(self) -> str:
        for _ in range(300):
            self.step()
            if (leader := self.leader()) is not None:
                return leader
        raise AssertionError("no leader elected")

    def http(
        self,
        name: str,
        method: str,
        url: str,
        body: bytes = b"",
        route_params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        request = func.HttpRequest(
            method,
            url,
            headers=headers or {},
            params={},
            route_params=route_params or {},
            body=body,
        )
        response = self.function(name)(request)
        return response.status_code, json.loads(response.get_body())


@pytest.fixture
def cluster(azurite: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FunctionsCluster]:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    sys.modules.pop("function_app", None)
    app = importlib.import_module("function_app")
    settings = AppSettings.from_env()
    table = f"raft{uuid.uuid4().hex[:12]}"
    bus = InMemoryBus()
    clock = VirtualClock()
    # Two hosts over one table: two function instances with their own warm caches.
    hosts = [
        FunctionsHost(
            settings,
            TableStore.from_connection(Connection(connection_string=azurite), table),
            bus,
            clock=clock,
        )
        for _ in range(2)
    ]
    functions = {f.get_function_name(): f.get_user_function() for f in app.app.get_functions()}
    c = FunctionsCluster(functions, bus, clock, hosts)
    for host in hosts:
        host.api.sleep = lambda _s: c.step()
    yield c
    use_host(None)


def test_cluster_on_the_functions_code_path_elects_a_leader_and_commits_http_commands(
    cluster: FunctionsCluster,
) -> None:
    leader = cluster.elect()
    status, body = cluster.http(
        "post_command",
        "POST",
        "/api/commands",
        b'{"op": "put", "key": "colour", "value": "blue"}',
        headers={"x-request-id": "first"},
    )
    assert status == 200, body
    assert body["result"] == {"ok": True, "previous": None} and body["term"] >= 1
    status, read = cluster.http("get_key", "GET", "/api/kv/colour", route_params={"key": "colour"})
    assert (status, read["value"]) == (200, "blue")
    status, outcome = cluster.http(
        "get_command", "GET", "/api/commands/first", route_params={"request_id": "first"}
    )
    assert status == 200 and outcome["index"] == body["index"]
    status, view = cluster.http("get_cluster", "GET", "/api/cluster")
    assert view["leader"] == leader and len(view["servers"]) == 3


def test_two_function_instances_racing_lose_nothing(cluster: FunctionsCluster) -> None:
    cluster.pick = lambda step: step % 2
    cluster.elect()
    for n in range(5):
        status, _ = cluster.http(
            "post_command",
            "POST",
            "/api/commands",
            json.dumps({"op": "put", "key": f"k{n}", "value": n}).encode(),
        )
        assert status == 200
    cluster.step(30)
    for n in range(5):
        assert (
            cluster.http("get_key", "GET", f"/api/kv/k{n}", route_params={"key": f"k{n}"})[1][
                "value"
            ]
            == n
        )


def test_redelivered_messages_leave_the_cluster_correct(cluster: FunctionsCluster) -> None:
    cluster.elect()
    cluster.http("post_command", "POST", "/api/commands", b'{"op":"put","key":"a","value":1}')
    # Redeliver everything delivered so far, in order, as Service Bus may after a lost lock.
    for message in list(cluster.delivered):
        server = message.application_properties["addressee"]
        cluster.function(f"server_{server.split('-')[-1]}")([message])
    cluster.step(30)
    assert cluster.http("get_key", "GET", "/api/kv/a", route_params={"key": "a"})[1]["value"] == 1


class CrashOnceBus:
    """Raises on the first publish after `arm()`: a crash after the Table transaction and
    before the send."""

    def __init__(self, inner: InMemoryBus) -> None:
        self.inner = inner
        self.armed = False

    def arm(self) -> None:
        self.armed = True

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        if self.armed and envelopes:
            self.armed = False
            raise ConnectionError("process killed between the save and the send")
        self.inner.publish(envelopes)


def test_crash_between_the_table_transaction_and_the_send_is_recovered(
    cluster: FunctionsCluster,
) -> None:
    leader = cluster.elect()
    cluster.step(5)  # the followers' first acknowledgements arrive; replication is pipelined
    crashing = CrashOnceBus(cluster.bus)
    for host in cluster.hosts:
        for handler in host.handlers.values():
            handler.bus = crashing
    crashing.arm()
    request = ClientRequest("http-crash", 1, '{"op":"put","key":"c","value":3}')
    envelope = Envelope("http-crash", leader, request)
    function = cluster.function(f"server_{leader.split('-')[-1]}")
    use_host(cluster.hosts[0])
    with pytest.raises(ConnectionError):
        function([trigger_message(envelope)])
    function([trigger_message(envelope)])  # Service Bus redelivers the batch
    cluster.step(40)
    assert cluster.http("get_key", "GET", "/api/kv/c", route_params={"key": "c"})[1]["value"] == 3


def test_malformed_message_changes_nothing_and_completes(cluster: FunctionsCluster) -> None:
    cluster.elect()
    store = cluster.hosts[0].store
    before = store.read_state("server-2")
    bad = trigger_message(
        Envelope("server-1", "server-2", ClientRequest("x", 1, "{}")), body=b"{garbage"
    )
    use_host(cluster.hosts[0])
    cluster.function("server_2")([bad])  # returns normally: the message completes
    assert store.read_state("server-2") == before


def test_host_built_from_app_settings_keeps_malformed_messages_in_the_poison_partition(
    azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = f"raft{uuid.uuid4().hex[:12]}"
    env = {
        **ENV,
        "RaftStorage": azurite,
        "RAFT_TABLE": table,
        "ServiceBusConnection": "Endpoint=sb://localhost;SharedAccessKeyName=Root;"
        "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;",
    }
    host = FunctionsHost.from_env(env)
    bad = trigger_message(
        Envelope("server-1", "server-2", ClientRequest("x", 1, "{}")), body=b"\xff not a message"
    )
    host.on_messages("server-2", [bad])
    assert host.store.read_state("server-2") is None
    from azure.data.tables import TableClient

    client = TableClient.from_connection_string(azurite, table)
    (kept,) = list(client.query_entities("PartitionKey eq 'poison'"))
    assert "UTF-8" in kept["Reason"] and kept["ServerId"] == "server-2"


def test_largest_allowed_command_and_its_read_fit_table_storage(cluster: FunctionsCluster) -> None:
    cluster.elect()
    emoji = "\U0001f600"
    overhead = len(b'{"key":"big","op":"put","value":""}')
    value = emoji * ((16384 - overhead) // 4)
    body = json.dumps(
        {"op": "put", "key": "big", "value": value}, ensure_ascii=False, separators=(",", ":")
    ).encode()
    status, stored = cluster.http("post_command", "POST", "/api/commands", body)
    assert status == 200, stored
    status, read = cluster.http("get_key", "GET", "/api/kv/big", route_params={"key": "big"})
    assert (status, read["value"]) == (200, value)
    status, _ = cluster.http(
        "post_command", "POST", "/api/commands", b'{"op":"put","key":"after","value":1}'
    )
    assert status == 200, "the cluster still commits"


def test_command_over_the_limit_once_encoded_is_413(cluster: FunctionsCluster) -> None:
    cluster.elect()
    body = json.dumps(
        {"op": "put", "key": "big", "value": "\U0001f600" * 4100}, ensure_ascii=False
    ).encode()
    status, answer = cluster.http("post_command", "POST", "/api/commands", body)
    assert status == 413 and "limit" in answer["error"]
