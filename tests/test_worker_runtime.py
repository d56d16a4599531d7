"""The Functions Python worker library (azure-functions-runtime, what the platform runs for
Python 3.13 apps) indexes `function_app.py` and invokes its functions through its own binding
converters, with binding data shaped as the host sends it (tests/worker_harness.py).

The harness runs in .venv-worker (Python 3.13), which ./scripts/worker-venv builds and caches;
./scripts/test runs that first. Without it these tests fail rather than skip: CI must run them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from raft.hosts import settings as names

ROOT = Path(__file__).resolve().parent.parent
WORKER_PYTHON = ROOT / ".venv-worker" / "bin" / "python"
TIMEOUT_S = 120
SERVER_FUNCTIONS = [f"server_{i}" for i in range(1, int(names.DEFAULTS[names.SERVER_COUNT]) + 1)]
HTTP_FUNCTIONS = [
    "post_command",
    "get_command",
    "get_key",
    "get_cluster",
    "post_leader",
    "change_servers",
    "health",
]
ALL_FUNCTIONS = [*SERVER_FUNCTIONS, "timer", *HTTP_FUNCTIONS]


def run_harness(*args: str) -> dict[str, Any]:
    if not WORKER_PYTHON.exists():
        pytest.fail(
            f"{WORKER_PYTHON.relative_to(ROOT)} is missing: run ./scripts/worker-venv "
            "(needs Python 3.13; ./scripts/test runs it)",
            pytrace=False,
        )
    # The app's settings at their defaults, as deployed (5 servers).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFT_")}
    result = subprocess.run(
        [str(WORKER_PYTHON), "-m", "tests.worker_harness", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"the worker harness failed:\n{result.stderr[-4000:]}", pytrace=False)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return run_harness()


@pytest.fixture(scope="module")
def invocations(report: dict[str, Any]) -> dict[str, Any]:
    assert "invocations" in report, report["worker_init"]
    result: dict[str, Any] = report["invocations"]
    return result


def test_the_worker_indexes_every_function_and_refuses_none(report: dict[str, Any]) -> None:
    assert report["versions"]["python"].startswith("3.13.")
    assert report["worker_init"] == {"status": "Success", "error": None, "functions": ALL_FUNCTIONS}
    assert report["refused"] == []
    assert [f["name"] for f in report["indexed"]] == ALL_FUNCTIONS
    assert report["load_failures"] == []


def test_service_bus_triggers_ask_the_host_for_binary_batches(report: dict[str, Any]) -> None:
    """dataType binary: the host sends a batch as collection_bytes, the bodies untouched."""
    triggers = [f for f in report["indexed"] if f["name"] in SERVER_FUNCTIONS]
    assert len(triggers) == len(SERVER_FUNCTIONS)
    for trigger in triggers:
        assert trigger["bindings"]["messages"] == {
            "type": "serviceBusTrigger",
            "direction": "in",
            "data_type": "binary",
        }
        (raw,) = trigger["raw_bindings"]
        assert (raw["dataType"], raw["cardinality"]) == ("BINARY", "MANY")


def test_a_pep_585_list_annotation_is_refused_by_the_worker(tmp_path: Path) -> None:
    """The check above is live: the same app with `list[...]` is refused, with the error the
    platform showed, for every Service Bus trigger."""
    source = (ROOT / "function_app.py").read_text()
    mutated, count = re.subn(r"typing\.List\[(func\.ServiceBusMessage)\]", r"list[\1]", source)
    assert count == 1, "function_app.py no longer annotates the batch as typing.List[...]"
    (tmp_path / "function_app.py").write_text(mutated)
    refused = run_harness("--app-dir", str(tmp_path), "--index-only")
    assert refused["worker_init"]["status"] == "Failure"
    assert [r["name"] for r in refused["refused"]] == SERVER_FUNCTIONS
    for r in refused["refused"]:
        assert "invalid non-type annotation list[" in r["reason"]


def test_timer_and_service_bus_invocations_elect_a_leader(invocations: dict[str, Any]) -> None:
    assert invocations["failures"] == []
    assert invocations["leader"] in names.server_ids(len(SERVER_FUNCTIONS))
    counts = invocations["invocations"]
    assert counts["timer"] >= 1
    assert all(counts.get(f, 0) >= 1 for f in SERVER_FUNCTIONS), counts


def test_http_invocations_commit_and_read_through_the_cluster(
    invocations: dict[str, Any],
) -> None:
    by_function = {h["function"]: h for h in invocations["http"]}
    assert by_function["get_cluster"]["status"] == 200
    assert by_function["get_cluster"]["body"]["leader"] == invocations["leader"]
    posted = by_function["post_command"]
    assert posted["status"] == 200 and posted["body"]["result"] == {"ok": True, "previous": None}
    read = by_function["get_key"]
    assert (read["status"], read["body"]["value"]) == (200, "blå \U0001f600")
    outcome = by_function["get_command"]
    assert outcome["status"] == 200 and outcome["body"]["index"] == posted["body"]["index"]


def test_the_health_route_answers_ok_once_a_leader_is_known(invocations: dict[str, Any]) -> None:
    by_function = {h["function"]: h for h in invocations["http"]}
    assert (by_function["health"]["status"], by_function["health"]["body"]) == (
        200,
        {"status": "ok"},
    )


def test_bad_input_through_the_worker_is_a_400_that_says_why(invocations: dict[str, Any]) -> None:
    statuses = [(b["status"], b["body"]["error"]) for b in invocations["bad_input"]]
    assert [status for status, _ in statuses] == [400, 400, 400]
    assert "unknown op" in statuses[0][1]
    assert "lone surrogate" in statuses[1][1]
    assert "levels deep" in statuses[2][1]


def test_service_bus_batches_arrive_as_service_bus_messages_intact(
    invocations: dict[str, Any],
) -> None:
    batches = invocations["service_bus"]
    assert batches["batches"] > 0 and batches["messages_received"] == batches["messages_sent"]
    assert batches["received_types"] == ["azure.functions.servicebus.ServiceBusMessage"]
    assert batches["all_service_bus_messages"]
    assert batches["bodies_intact"] and batches["message_ids_intact"]
    assert batches["application_properties_intact"] and batches["addressees_match_subscription"]
    assert batches["delivery_counts_intact"] and batches["delivery_counts_seen"] == [1, 2]
    assert batches["poison"] == 0
    first = batches["first_received"]
    assert json.loads(first["body"])["to"] == first["application_properties"]["addressee"]


def test_a_string_body_is_not_double_encoded(invocations: dict[str, Any]) -> None:
    """The bytes the sender wrote arrive as they were; in the `json` batch shape (no dataType)
    the converter re-serializes each body, which then cannot be decoded."""
    first = invocations["service_bus"]["first_received"]
    assert first["body"].startswith("{")
    contrast = invocations["without_data_type"]
    assert contrast["double_encoded"] and contrast["recorded_as_poison"]
    assert contrast["received_body"] == json.dumps(contrast["sent_body"])
