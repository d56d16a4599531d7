"""The deployment files agree with each other, with raft/hosts/settings.py and with what Azure
documents, checked offline: host.json, requirements.txt and pyproject.toml, azd's
main.parameters.json, setup.ps1 and local.settings.json.example. (The Bicep template itself
is checked in tests/test_infra.py.)"""

from __future__ import annotations

import json
import re
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from raft.hosts import settings

ROOT = Path(__file__).resolve().parent.parent
EMULATOR_CONFIG = ROOT / "infra" / "servicebus-emulator" / "Config.json"
REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)>=(?P<floor>[0-9.]+)$")
LOG_LEVELS = ["Trace", "Debug", "Information", "Warning", "Error", "Critical", "None"]


def host_json() -> dict[str, Any]:
    return json.loads((ROOT / "host.json").read_text())  # type: ignore[no-any-return]


def seconds(timespan: str) -> int:
    """host.json's hh:mm:ss, or an ISO 8601 duration (PT1M, PT45S), in seconds."""
    if match := re.fullmatch(r"(\d+):(\d\d):(\d\d)", timespan):
        hours, minutes, secs = (int(g) for g in match.groups())
        return 3600 * hours + 60 * minutes + secs
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", timespan)
    assert match, timespan
    hours, minutes, secs = (int(g or 0) for g in match.groups())
    return 3600 * hours + 60 * minutes + secs


def floors(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            match = REQUIREMENT.match(line)
            assert match, f"not name>=floor: {line!r}"
            found[match["name"].lower()] = match["floor"]
    return found


def as_tuple(floor: str) -> tuple[int, ...]:
    return tuple(int(part) for part in floor.split("."))


# --- host.json: batches end before their locks do -------------------------------------------


def test_every_invocation_ends_well_before_the_locks_of_its_batch_expire() -> None:
    """Batch triggers cannot renew locks: functionTimeout must cut an invocation off first."""
    host = host_json()
    assert seconds(host["functionTimeout"]) == settings.FUNCTION_TIMEOUT_S
    assert settings.FUNCTION_TIMEOUT_S + 10 <= settings.MESSAGE_LOCK_S


def test_the_emulator_subscriptions_lock_as_long_as_the_deployed_ones() -> None:
    config = json.loads(EMULATOR_CONFIG.read_text())
    (namespace,) = config["UserConfig"]["Namespaces"]
    (topic,) = namespace["Topics"]
    for subscription in topic["Subscriptions"]:
        assert seconds(subscription["Properties"]["LockDuration"]) == settings.MESSAGE_LOCK_S


def test_a_batch_holds_at_most_the_messages_settings_allows() -> None:
    service_bus = host_json()["extensions"]["serviceBus"]
    assert service_bus["maxMessageBatchSize"] == settings.MAX_MESSAGE_BATCH


def test_host_json_sets_nothing_a_batch_trigger_ignores() -> None:
    """Lock renewal and call concurrency apply to single-message triggers only; setting them
    here would suggest a protection these batch triggers do not have."""
    service_bus = host_json()["extensions"]["serviceBus"]
    assert {"maxAutoLockRenewalDuration", "maxConcurrentCalls", "maxConcurrentSessions"}.isdisjoint(
        service_bus
    )


def test_an_http_call_ends_before_the_function_timeout() -> None:
    default = settings.AppSettings.from_env({})
    assert default.http_wait_s + settings.HTTP_WAIT_MARGIN_S <= settings.FUNCTION_TIMEOUT_S
    too_long = str(settings.FUNCTION_TIMEOUT_S - settings.HTTP_WAIT_MARGIN_S + 1)
    with pytest.raises(ValueError, match="functionTimeout"):
        settings.AppSettings.from_env({settings.HTTP_WAIT_S: too_long})


# --- host.json: telemetry -------------------------------------------------------------------


def test_successful_invocations_are_logged_to_the_requests_table() -> None:
    levels = host_json()["logging"]["logLevel"]
    for category in ("Host.Results", "Function", "default"):
        assert LOG_LEVELS.index(levels[category]) <= LOG_LEVELS.index("Information"), category


def test_requests_and_exceptions_are_never_sampled_away() -> None:
    sampling = host_json()["logging"]["applicationInsights"]["samplingSettings"]
    assert sampling["isEnabled"] is True
    assert set(sampling["excludedTypes"].split(";")) == {"Request", "Exception"}


def test_the_host_exports_opentelemetry_like_the_workers_distro() -> None:
    assert host_json()["telemetryMode"] == "OpenTelemetry"


# --- dependencies ---------------------------------------------------------------------------


def test_the_deployment_requirements_and_the_package_name_the_same_floors() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    package = floors([*project["dependencies"], *project["optional-dependencies"]["telemetry"]])
    deployed = floors((ROOT / "requirements.txt").read_text().splitlines())
    assert deployed == package


def test_the_service_bus_sdk_reads_emulator_connection_strings() -> None:
    deployed = floors((ROOT / "requirements.txt").read_text().splitlines())
    assert as_tuple(deployed["azure-servicebus"]) >= (7, 14)
    assert as_tuple(version("azure-servicebus")) >= as_tuple(deployed["azure-servicebus"])


def test_the_worker_gets_the_opentelemetry_distro_it_configures() -> None:
    deployed = floors((ROOT / "requirements.txt").read_text().splitlines())
    assert "azure-monitor-opentelemetry" in deployed


# --- azd and setup.ps1 ----------------------------------------------------------------------


def test_azd_passes_the_signed_in_principal_type_through() -> None:
    parameters = json.loads((ROOT / "infra" / "main.parameters.json").read_text())["parameters"]
    assert parameters["developerPrincipalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    assert parameters["developerPrincipalType"]["value"] == "${AZURE_PRINCIPAL_TYPE=User}"


def setup_script() -> str:
    return (ROOT / "setup.ps1").read_text()


def test_setup_refuses_windows_powershell() -> None:
    assert setup_script().splitlines()[0] == "#Requires -Version 7.0"


def test_setup_retries_publishing_with_a_bounded_back_off() -> None:
    script = setup_script()
    retry = script[script.index("function Invoke-WithRetry") :]
    retry = retry[: retry.index("\n}\n")]
    attempts = re.search(r"\[ValidateRange\(1, (\d+)\)\] \[int\] \$Attempts = (\d+)", retry)
    assert attempts and int(attempts[2]) <= int(attempts[1]) <= 10
    assert "[Math]::Min(2 * $delay, $MaxDelaySeconds)" in retry
    assert re.search(r"Invoke-WithRetry -What '[^']+' -Action \{ Publish-App ", script)


def test_setup_grants_developer_roles_to_whichever_principal_is_signed_in() -> None:
    script = setup_script()
    assert "'servicePrincipal'" in script and "Type = 'ServicePrincipal'" in script
    assert '"developerPrincipalType=$($Developer.Type)"' in script


def test_local_runs_use_as_many_worker_threads_as_deployed_ones() -> None:
    example = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    assert example["PYTHON_THREADPOOL_THREAD_COUNT"] == str(settings.HTTP_CONCURRENCY)
