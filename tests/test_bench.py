"""The benchmark's behaviour on tiny counts: fields exist and agree with each other, the
adapters' counts add up, overload refuses without divergence, and the PySyncObj harness
really starts, loads and stops its three processes. No wall-clock figure is asserted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench import cli, pysyncobj_baseline
from bench.cost_model import AzureModel
from bench.inprocess import InProcessCluster
from bench.workload import Workload
from raft.hosts.latency import percentile


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One quick run (PySyncObj is covered by its own test below), read back from --json."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    code = cli.main(["--quick", "--no-pysyncobj", "--no-sim", "--json-out", str(out)])
    assert code == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def test_json_has_the_headline_fields(quick: dict[str, Any]) -> None:
    for name in (
        "throughput_ratio_vs_pysyncobj",
        "server_messages_per_command",
        "store_writes_per_command_per_server",
        "cells",
        "idle",
        "azure",
        "overload",
        "targets",
        "machine",
    ):
        assert name in quick
    assert quick["machine"]["nproc"] >= 1 and quick["machine"]["python"]
    five = next(c for c in quick["cells"] if c["servers"] == 5 and c["clients"] == 100)
    assert quick["server_messages_per_command"] == five["server_messages_per_command"]
    assert (
        quick["store_writes_per_command_per_server"] == five["store_writes_per_command_per_server"]
    )


def test_every_cell_commits_what_was_requested(quick: dict[str, Any]) -> None:
    cells = {(c["servers"], c["clients"]) for c in quick["cells"]}
    assert cells == {(s, n) for s in (3, 5) for n in (1, 10, 100)}
    for cell in quick["cells"]:
        assert cell["committed"] == cell["requested"] > 0
        assert cell["errors"] == 0 and not cell["timed_out"]
        assert cell["server_messages_per_command"] > 0
        assert cell["store_writes_per_command"] > 0
        # Each command is exactly one request and one result of the client's own.
        assert cell["client_messages"] == 2 * cell["committed"]
        assert cell["latency_ms"]["p50"] <= cell["latency_ms"]["p99"]
        assert cell["store_writes_per_command_per_server"] == pytest.approx(
            cell["store_writes_per_command"] / cell["servers"], abs=1e-4
        )


def test_batching_shows_in_the_counts(quick: dict[str, Any]) -> None:
    by = {(c["servers"], c["clients"]): c for c in quick["cells"]}
    for servers in (3, 5):
        one, hundred = by[(servers, 1)], by[(servers, 100)]
        assert hundred["server_messages_per_command"] < one["server_messages_per_command"]
        assert hundred["store_writes_per_command"] < one["store_writes_per_command"]


def test_idle_and_cost_model_sections(quick: dict[str, Any]) -> None:
    for idle in quick["idle"]:
        # Heartbeats flow while idle, and the per-minute rates are derived from the counts.
        assert idle["server_messages"] > 0
        # Both figures are rounded (seconds to 1 ms, the rate to 0.1): the rate lies within
        # what the count gives over the seconds' rounding interval.
        per_minute = idle["server_messages"] * 60
        low = per_minute / (idle["seconds"] + 0.0005) - 0.05
        high = per_minute / (idle["seconds"] - 0.0005) + 0.05
        assert low <= idle["server_messages_per_minute"] <= high
    azure = quick["azure"]
    assert set(azure["parameters"]) == set(AzureModel.parameters())
    assert set(azure["assumed_prices"]) <= set(AzureModel.parameters())
    for est in azure["cells"]:
        assert est["usd_per_million_commands"]["total_usd"] > 0
        assert est["commit_latency_ms"] > 0


def test_overload_refuses_and_nothing_diverges(quick: dict[str, Any]) -> None:
    overload = quick["overload"]
    assert overload["refused"] > 0
    assert overload["accepted"] > 0
    assert overload["accepted"] + overload["refused"] + overload["errors"] == overload["issued"]
    assert overload["unanswered"] == 0 and overload["errors"] == 0
    assert overload["max_uncommitted_entries"] <= overload["queue_bound"]
    assert overload["settled"] and not overload["diverged"]
    recovery = overload["recovery"]
    assert recovery["commands"] == recovery["requested"] > 0


def test_cost_model_flags_override_defaults() -> None:
    parser = cli.argparse.ArgumentParser()
    cli.add_bench_arguments(parser)
    args = parser.parse_args(["--azure-servicebus-hop-ms", "30"])
    model = cli._model(args)
    assert model.servicebus_hop_ms == 30
    assert model.commit_latency_ms() > AzureModel().commit_latency_ms()


def test_closed_loop_counts_client_messages_apart() -> None:
    cluster = InProcessCluster(3)
    cluster.wait_for_leader()
    cell = cluster.run_closed_loop(Workload(20, 1))
    assert cell.committed == 20
    assert cell.counts.client_requests == cell.counts.client_responses == 20
    assert cell.counts.server_messages == cell.counts.published - 40
    assert not cluster.divergence() or cluster.settle()
    assert not cluster.divergence()


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 99) == 99.0


def test_workload_values_are_sixteen_bytes() -> None:
    w = Workload(10, 1)
    assert {len(w.value(n)) for n in (0, 7, 10**12)} == {16}
    assert '"op":"put"' in w.command(3)


@pytest.mark.skipif(not pysyncobj_baseline.available(), reason="pysyncobj is not installed")
def test_pysyncobj_harness_runs_and_stops_its_processes() -> None:
    nodes: list[pysyncobj_baseline._Node] = []
    real = pysyncobj_baseline._Node

    class Tracked(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any) -> None:
            super().__init__(*a)
            nodes.append(self)

    pysyncobj_baseline._Node = Tracked  # type: ignore[misc]
    try:
        result = pysyncobj_baseline.run_baseline(
            Workload(200, 10, budget_s=20), append_period_s=0.01
        )
    finally:
        pysyncobj_baseline._Node = real  # type: ignore[misc]
    assert result.committed == result.requested == 200
    assert result.errors == 0 and not result.timed_out
    assert result.latency.p50_ms <= result.latency.p99_ms
    assert len(nodes) == 3
    assert all(node.process.poll() is not None for node in nodes)


def test_history_section_shows_rows_kept_and_cold_loads_flat_as_history_grows(
    quick: dict[str, Any],
) -> None:
    points = {p["committed"]: p for p in quick["history"]["points"] if p["store"] == "memory"}
    small, large = points[1000], points[2000]
    for key in ("log_rows", "result_rows", "cold_load_rows_read", "warm_reload_rows_read"):
        assert large[key] <= 1.5 * small[key], key
    # A warm instance reads only what it lacks: the entries added since, not the whole log.
    assert large["warm_reload_rows_read"] <= large["entries_added_meanwhile"] + 1


def test_json_has_the_azure_forecast_with_its_parameters(quick: dict[str, Any]) -> None:
    forecast = quick["azure_forecast"]
    assert forecast["parameters"]["window_s"] == cli.QUICK_FORECAST["window_s"]
    cells = {(c["mode"], c["clients"]) for c in forecast["cells"]}
    assert cells == {(m, n) for m in ("publish", "step") for n in (1, 10, 100)}
    month = forecast["idle"]["usd_per_month"]
    assert month["per_execution"]["total_usd"] > 0 and month["per_instance_second"]["total_usd"] > 0
    assert isinstance(forecast["decision"]["meets_rule"], bool)
