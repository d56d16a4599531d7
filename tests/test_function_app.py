"""The Functions app's bindings agree with configuration."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from raft.hosts import settings as names

ROOT = Path(__file__).resolve().parent.parent


def load_app(monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sys.modules.pop("function_app", None)
    return importlib.import_module("function_app")


def bindings(module: ModuleType) -> dict[str, list[dict[str, Any]]]:
    return {
        f.get_function_name(): [
            json.loads(json.dumps(b.get_dict_repr(), default=str)) for b in f.get_bindings()
        ]
        for f in module.app.get_functions()
    }


@pytest.mark.parametrize("count", [3, 5, 7])
def test_every_server_has_a_trigger_on_its_own_subscription(
    monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    found = bindings(load_app(monkeypatch, RAFT_SERVER_COUNT=str(count)))
    triggers = {
        b[0]["subscriptionName"]: b[0]
        for b in found.values()
        if b[0]["type"] == "serviceBusTrigger"
    }
    assert sorted(triggers) == sorted(names.server_ids(count))
    for trigger in triggers.values():
        assert trigger["topicName"] == f"%{names.TOPIC}%"
        assert trigger["connection"] == names.SERVICE_BUS_CONNECTION
        assert trigger["cardinality"] == "MANY"
        # A batch then arrives as raw bytes per message (tests/test_worker_runtime.py).
        assert trigger["dataType"] == "BINARY"


def test_timer_reads_its_schedule_from_app_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    (timer,) = bindings(load_app(monkeypatch))["timer"]
    assert timer["type"] == "timerTrigger"
    assert timer["schedule"] == f"%{names.TIMER_SCHEDULE}%"


def test_http_routes_are_function_key_protected_but_health(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = bindings(load_app(monkeypatch))
    routes = {b[0]["route"]: b[0] for b in found.values() if b[0]["type"] == "httpTrigger"}
    assert sorted(routes) == [
        "cluster",
        "cluster/leader",
        "cluster/servers",
        "commands",
        "commands/{request_id}",
        "health",
        "kv/{key}",
    ]
    assert {r["authLevel"] for name, r in routes.items() if name != "health"} == {"FUNCTION"}
    assert routes["health"]["authLevel"] == "ANONYMOUS"
    assert routes["health"]["methods"] == ["GET"]


def settings_read_by_the_code() -> set[str]:
    """AppSettings.from_env reads DEFAULTS' keys; the adapters resolve the two connections."""
    return set(names.DEFAULTS) | {names.SERVICE_BUS_CONNECTION, names.STORAGE_CONNECTION}


def test_every_setting_the_code_reads_is_in_the_local_settings_example() -> None:
    example = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    assert settings_read_by_the_code() <= set(example)
    assert example["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert example["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"


def test_local_settings_example_values_are_valid_settings() -> None:
    example = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    parsed = names.AppSettings.from_env(example)
    assert parsed.server_count == 5 and parsed.topic == "rafttopic"


def test_host_json_pins_the_extension_bundle() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["extensionBundle"]["version"] == "[4.*, 5.0.0)"
    assert "serviceBus" in host["extensions"]


def test_command_size_setting_is_capped_to_what_storage_and_the_bus_can_hold() -> None:
    with pytest.raises(ValueError, match=names.MAX_COMMAND_BYTES):
        names.AppSettings.from_env({names.MAX_COMMAND_BYTES: "100000"})


def test_session_retention_must_outlive_a_message_and_the_http_wait() -> None:
    with pytest.raises(ValueError, match=names.SESSION_RETENTION_S):
        names.AppSettings.from_env({names.MESSAGE_TTL_S: "600", names.SESSION_RETENTION_S: "600"})
    accepted = names.AppSettings.from_env(
        {names.MESSAGE_TTL_S: "600", names.SESSION_RETENTION_S: "700"}
    )
    assert accepted.session_retention_s == 700
