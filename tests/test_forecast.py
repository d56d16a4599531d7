"""The Flex topology with platform latencies (raft/hosts/flex.py), the HTTP function stepping an
idle leader itself (StepLocally), and the Azure forecast built on them (bench/forecast.py).
Fixed latencies make the virtual times exact; nothing here depends on wall time."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from bench import cli
from bench.cost_model import AzureModel
from bench.forecast import ForecastParameters, run_forecast, topology
from raft.adapters.memory_bus import InMemoryBus
from raft.adapters.memory_store import InMemoryStore
from raft.core.messages import ClientRequest, Envelope, RequestVote
from raft.hosts.flex import Fixed, FlexTiming, FlexTopology, Latencies
from raft.hosts.functions import api_limits, node_options
from raft.hosts.http_api import ClusterApi, StepLocally
from raft.hosts.local_cluster import LocalCluster
from raft.hosts.settings import SERVER_COUNT, AppSettings
from raft.node.handler import NodeHandler, NodeOptions
from raft.ports.store import Change, VersionConflict
from tests.helpers import CONFIG

SETTINGS = AppSettings.from_env({SERVER_COUNT: "3"})
FIXED = Latencies(
    invocation=Fixed(2),
    send=Fixed(20),
    delivery=Fixed(30),
    complete=Fixed(20),
    point_read=Fixed(5),
    query=Fixed(8),
    transaction=Fixed(100),
)


def flex(step: bool = False, **timing: Any) -> FlexTopology:
    options = node_options(SETTINGS)
    store = InMemoryStore()
    # Polled every 5 ms: a latency is then the commit path's, not the HTTP backoff's steps.
    limits = replace(api_limits(SETTINGS), poll_s=0.005, max_poll_s=0.005)
    topo = FlexTopology(
        SETTINGS.servers,
        lambda: store,
        options,
        FlexTiming(churn_every_ms=0, racing=0.0, latencies=FIXED, **timing),
        limits=limits,
        step_options=replace(options, max_conflict_retries=1) if step else None,
    )
    while not topo.leader_ready():
        topo.advance(topo.now + 500)
        assert topo.now < 120_000, "no leader"
    return topo


def overlapping(spans: list[tuple[float, float]]) -> bool:
    ordered = sorted(spans)
    return any(b[0] < a[1] for a, b in itertools.pairwise(ordered))


def test_trigger_and_timer_instances_run_one_execution_at_a_time_and_batch_what_waits() -> None:
    topo = flex()
    topo.start_clients(20)
    topo.advance(topo.now + 10_000)
    for name, spans in topo.usage.busy.items():
        if not name.startswith("http"):
            assert not overlapping(spans), name
    # Twenty callers, one leader instance busy ~150 ms a batch: many commands per batch.
    assert topo.usage.executions["server"] < len(topo.commits)


def test_http_instances_take_one_request_each_up_to_the_apps_instance_cap() -> None:
    topo = flex(http_concurrency=1, max_instances=10)
    topo.start_clients(20)
    topo.advance(topo.now + 5_000)
    # 3 trigger instances and the timer's leave 6 for HTTP; the other callers wait.
    assert len(topo.http) == 6
    for instance in topo.http:
        assert not overlapping(topo.usage.busy[instance.name])


def test_a_result_is_read_only_after_the_saves_of_its_commit_path_complete() -> None:
    topo = flex()
    topo.start_clients(1)
    topo.advance(topo.now + 10_000)
    # The HTTP function's 3 state reads, its result check and send; then each hop's delivery,
    # and the leader, a follower and the leader again each take an invocation and a
    # transaction (and the first two a send) before the leader's save of the result lands.
    begin = 2 + 3 * 5 + 5 + 20
    path = begin + 3 * 30 + 3 * (2 + 100) + 2 * 20
    assert topo.commits and min(latency for _, latency in topo.commits) >= path


def test_stepping_an_idle_leader_saves_its_hop_and_its_message() -> None:
    published, stepped = flex(), flex(step=True)
    for topo in (published, stepped):
        topo.start_clients(1)
        topo.advance(topo.now + 20_000)
    mean = [sum(lat for _, lat in t.commits) / len(t.commits) for t in (published, stepped)]
    assert mean[1] < mean[0]
    per_command = [t.usage.messages / len(t.commits) for t in (published, stepped)]
    assert per_command[1] < per_command[0]


class ConflictingStore(InMemoryStore):
    """A store whose every save finds that someone else saved first."""

    def save(self, server_id: str, expected_version: str | None, change: Change) -> str:
        raise VersionConflict(server_id)


def test_step_locally_publishes_what_it_cannot_save() -> None:
    bus = InMemoryBus()
    handlers = handlers_over(ConflictingStore(), bus)
    # Anything that changes the server's state must be saved: a vote request of a new term.
    envelope = Envelope("s2", "s1", RequestVote(5, "s2", 0, 0))
    StepLocally(handlers, bus, FixedClock()).publish([envelope])
    assert bus.drain("s1") == [envelope]


def test_a_stepped_command_is_replicated_and_committed_by_the_cluster() -> None:
    store, bus, clock = InMemoryStore(), InMemoryBus(), FixedClock()
    cluster = LocalCluster(["s1", "s2", "s3"], store, bus, NodeOptions(config=CONFIG), clock)
    leader = None
    while clock.now < 5_000 and (leader is None or leader.commit_index < leader.last_index):
        clock.now += 10
        cluster.pump()
        leader = cluster.leader()
    assert leader is not None and leader.last_index > 0
    request = ClientRequest("http-y", 1, '{"op":"put","key":"k","value":1}')
    StepLocally(handlers_over(store, bus), bus, clock).publish(
        [Envelope("http-y", leader.server_id, request)]
    )
    queued = bus.drain(leader.server_id)
    assert not any(isinstance(e.message, ClientRequest) for e in queued)  # stepped, not sent
    bus.publish(queued)
    for _ in range(200):
        clock.now += 10
        cluster.pump()
    assert store.read_result(leader.server_id, "http-y") is not None


def test_the_api_steps_only_an_idle_leader() -> None:
    sent: dict[str, list[Envelope]] = {"bus": [], "step": []}

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def publish(self, envelopes: list[Envelope]) -> None:
            sent[self.name].extend(envelopes)

    class States(InMemoryStore):
        def __init__(self, uncommitted: int) -> None:
            super().__init__()
            self.uncommitted = uncommitted

        def read_state(self, server_id: str) -> dict[str, Any] | None:
            if server_id != "s1":
                return None
            return {"role": "leader", "current_term": 1, "last_index": 5 + self.uncommitted,
                    "commit_index": 5}  # fmt: skip

    for uncommitted, expected in ((0, "step"), (3, "bus")):
        api = ClusterApi(
            ["s1", "s2", "s3"],
            States(uncommitted),
            Recorder("bus"),
            step=Recorder("step"),
            monotonic=lambda: 0.0,
        )
        api.begin(f"r{uncommitted}", '{"op":"get","key":"k"}')
        assert [e.to for e in sent[expected]] == ["s1"]
        sent[expected].clear()
    assert sent == {"bus": [], "step": []}


class FixedClock:
    def __init__(self, now: int = 0) -> None:
        self.now = now

    def now_ms(self) -> int:
        return self.now


def handlers_over(store: InMemoryStore, bus: InMemoryBus) -> dict[str, NodeHandler]:
    options = NodeOptions(config=CONFIG, max_conflict_retries=1)
    return {s: NodeHandler(s, ["s1", "s2", "s3"], store, bus, options) for s in ("s1", "s2", "s3")}


@pytest.fixture(scope="module")
def small() -> dict[str, Any]:
    params = ForecastParameters(servers=3, clients=(1, 4), warmup_s=1, window_s=4, idle_s=10)
    return run_forecast(params).to_json(AzureModel())


def test_the_forecast_echoes_its_parameters_and_prices(small: dict[str, Any]) -> None:
    assert small["parameters"]["servers"] == 3
    assert small["parameters"]["table_transaction_ms"] == list(
        ForecastParameters().table_transaction_ms
    )
    assert set(small["prices"]) == set(AzureModel.parameters())


def test_every_cell_commits_and_is_priced_under_both_readings(small: dict[str, Any]) -> None:
    cells = {(c["mode"], c["clients"]) for c in small["cells"]}
    assert cells == {(m, n) for m in ("publish", "step") for n in (1, 4)}
    for cell in small["cells"]:
        assert cell["committed"] > 0
        assert 0 < cell["commit_latency_ms"]["p50"] <= cell["commit_latency_ms"]["p99"]
        for reading in ("per_execution", "per_instance_second"):
            cost = cell["usd_per_million_commands"][reading]
            assert cost["total_usd"] > 0 and cost["gb_s"] > 0
    idle = small["idle"]["usd_per_month"]
    assert idle["per_execution"]["total_usd"] > 0 and idle["per_instance_second"]["total_usd"] > 0
    assert [e["clients"] for e in small["decision"]["effects"]] == [1, 4]


def test_forecast_flags_reach_the_parameters() -> None:
    parser = cli.argparse.ArgumentParser()
    cli.add_bench_arguments(parser)
    args = parser.parse_args(
        ["--quick", "--forecast-table-transaction-ms", "7", "70", "--forecast-clients", "2", "3"]
    )
    params = cli._forecast_parameters(args)
    assert params.table_transaction_ms == (7.0, 70.0)
    assert params.clients == (2, 3)
    assert params.window_s == cli.QUICK_FORECAST["window_s"]


def test_the_forecast_topology_uses_the_apps_settings() -> None:
    topo = topology(ForecastParameters(servers=3), "step")
    assert topo.servers == SETTINGS.servers
    assert topo.step_options is not None and topo.step_options.max_conflict_retries == 1
    assert topo.limits == api_limits(SETTINGS)
