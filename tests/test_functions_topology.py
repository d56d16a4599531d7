"""The app hosted as Flex Consumption runs it (raft/hosts/flex.py): a timer instance, racing
trigger instances per server, an HTTP instance, instances replaced at random, each with its own
warm cache, on the production timing and a virtual clock."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from raft.adapters.connections import resolve
from raft.adapters.memory_store import InMemoryStore
from raft.adapters.table_store import TableStore
from raft.cli import main
from raft.hosts.flex import FlexReport, FlexTiming, FlexTopology
from raft.hosts.functions import node_options
from raft.hosts.settings import AppSettings
from raft.sim.variants import TrustingStore

SETTINGS = AppSettings.from_env({})


def run_in_memory(seconds: int, timing: FlexTiming, seed: int = 0, view: Any = None) -> FlexReport:
    store = InMemoryStore()
    factory = (lambda: view(store)) if view else (lambda: store)
    topology = FlexTopology(SETTINGS.servers, factory, node_options(SETTINGS), timing, seed)
    return topology.run(seconds * 1000)


def test_five_servers_keep_a_leader_and_commit_every_command_for_600_simulated_seconds() -> None:
    report = run_in_memory(600, FlexTiming())
    assert report.leader_fraction >= 0.99
    assert report.commands_sent >= 250 and report.commands_committed == report.commands_sent
    assert report.instances_replaced >= 20 and report.max_term == 1


def test_racing_instances_fast_churn_and_slow_delivery_lose_no_command() -> None:
    timing = FlexTiming(churn_every_ms=3_000, racing=1.0, bus_delay_ms=(10, 900))
    report = run_in_memory(300, timing, seed=3)
    assert report.leader_fraction >= 0.99
    assert report.commands_committed == report.commands_sent > 100


def test_steps_on_unvalidated_caches_lose_the_leader_or_stall_commits() -> None:
    # The harness sees what the handler's per-step validation prevents.
    reports = [
        run_in_memory(300, FlexTiming(churn_every_ms=0), seed, TrustingStore) for seed in range(3)
    ]
    worst_latency = max(max(r.commit_latencies_ms) for r in reports)
    assert min(r.leader_fraction for r in reports) < 0.99 or worst_latency > 10_000
    validated = [run_in_memory(300, FlexTiming(churn_every_ms=0), seed) for seed in range(3)]
    assert all(r.leader_fraction >= 0.99 for r in validated)
    assert max(max(r.commit_latencies_ms) for r in validated) < 5_000


def test_on_table_storage_every_instance_has_its_own_store_and_row_cache(azurite: str) -> None:
    connection = resolve("RaftStorage", {"RaftStorage": azurite}, "tables")
    table = "rafttopo" + uuid.uuid4().hex[:16]
    stores: list[TableStore] = []

    def new_store() -> TableStore:
        stores.append(TableStore.from_connection(connection, table))
        return stores[-1]

    timing = FlexTiming(churn_every_ms=10_000, sample_ms=500)
    topology = FlexTopology(SETTINGS.servers, new_store, node_options(SETTINGS), timing, seed=5)
    report = topology.run(90_000)
    for store in stores:
        store.close()
    assert report.leader_fraction >= 0.99
    assert report.commands_committed == report.commands_sent > 20
    assert report.instances_replaced >= 3


def test_run_functions_topology_prints_the_leader_share_and_the_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["run", "--functions-topology", "--simulated-s", "120", "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0
    assert report["commands_committed"] == report["commands_sent"] > 30
    assert report["leader_fraction"] >= 0.99
    assert "functions topology: 5 servers, 120 simulated s (memory store)" in captured.err
    assert "commands committed" in captured.err


def test_an_idle_cluster_quiesces_so_the_timer_neither_writes_nor_sends_between_checks() -> None:
    store = InMemoryStore()
    topology = FlexTopology(
        SETTINGS.servers, lambda: store, node_options(SETTINGS), FlexTiming(churn_every_ms=0)
    )
    report = topology.run(300_000, commands=False)
    # Without quiescence: a heartbeat round (8 messages, 9 saves) every second for 300 s.
    assert report.leader_fraction >= 0.99
    assert report.messages < 100 and store.saves < 100
