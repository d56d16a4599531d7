"""The Bicep template under infra/: it parses, checkov finds nothing, and it agrees with
raft/hosts/settings.py (the one place every app setting is named).

The template is read with pycep (the parser checkov itself uses for Bicep), so these tests look
at the declared structure rather than at text. pycep writes an identifier reference and a string
literal the same way ("topicName" vs "rafttopic"); `_resolve` treats a string that names a
parameter of the same file as a reference to that parameter's default.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pycep
import pytest

from raft.adapters.servicebus_bus import ADDRESSEE_PROPERTY
from raft.hosts import settings

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
SERVICE_BUS = INFRA / "modules" / "servicebus.bicep"
ROLES = INFRA / "modules" / "roles.bicep"
STORAGE = INFRA / "modules" / "storage.bicep"
FUNCTION_APP = INFRA / "modules" / "functionapp.bicep"
ALERTS = INFRA / "modules" / "alerts.bicep"
# Built-in role definition ids (the same in every tenant).
SERVICE_BUS_DATA_OWNER = "090c5cfd-751d-490a-894a-3ce6f1109419"
SERVICE_BUS_DATA_RECEIVER = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"

# The identity-based connection settings the bindings and the host need (settings.py names the
# connection prefixes; the suffixes are the Functions conventions).
CONNECTION_SETTINGS = {
    "AzureWebJobsStorage__accountName",
    f"{settings.SERVICE_BUS_CONNECTION}__fullyQualifiedNamespace",
    f"{settings.STORAGE_CONNECTION}__tableServiceUri",
}
SECRET_MARKERS = ("AccountKey=", "SharedAccessKey=", "SharedAccessSignature=")
SUPPRESSION = re.compile(r"checkov:skip=(?P<check>[A-Z0-9_]+)(?::(?P<reason>.*))?")

Bicep = dict[str, Any]


def _bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@pytest.fixture(scope="session")
def parse() -> Any:
    parser = pycep.BicepParser()
    cache: dict[Path, Bicep] = {}

    def _parse(path: Path) -> Bicep:
        if path not in cache:
            cache[path] = parser.parse(file_path=path)
        return cache[path]

    return _parse


@pytest.fixture(scope="module")
def main(parse: Any) -> Bicep:
    return parse(MAIN)


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    """One checkov scan of infra/ per test module (it takes several seconds)."""
    exe = Path(sys.executable).with_name("checkov")
    command = str(exe) if exe.exists() else shutil.which("checkov")
    if command is None:
        pytest.fail("checkov is not installed; the project's dev extras install it")
    result = subprocess.run(
        [command, "-d", str(INFRA), "--framework", "bicep", "-o", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    if not result.stdout.strip():
        pytest.fail(f"checkov printed no report (exit {result.returncode}): {result.stderr}")
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    (bicep,) = [r for r in reports if r.get("check_type") == "bicep"]
    return bicep  # type: ignore[no-any-return]


def _resolve(value: Any, bicep: Bicep) -> Any:
    """The deploy-time value of a literal, a parameter reference or string(parameter).

    Anything computed from resources (module outputs and the like) resolves to None.
    """
    parameters = bicep.get("parameters", {})
    if isinstance(value, str):
        if value in parameters:
            return parameters[value].get("default")
        return value
    if isinstance(value, bool | int):
        return value
    if isinstance(value, dict) and value.get("function", {}).get("type") == "string":
        inner = _resolve(value["function"]["parameters"]["value_to_convert"], bicep)
        return None if inner is None else str(inner)
    return None


def _allowed(parameter: Bicep) -> list[Any]:
    for decorator in parameter.get("decorators", []):
        if decorator["type"] == "allowed":
            return list(decorator["argument"])
    return []


def _app_settings(main: Bicep) -> dict[str, Any]:
    return dict(main["variables"]["appSettings"]["value"])


def _body(resource: Bicep) -> Bicep:
    """A resource's body, looking through a `[for ...]` loop or an `if` condition."""
    config = resource["config"]
    if "loop_type" in config or "condition" in config:
        return dict(config["config"])
    return dict(config)


# --- the files are valid -------------------------------------------------------------------


@pytest.mark.parametrize("path", _bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_bicep_file_parses(parse: Any, path: Path) -> None:
    parsed = parse(path)
    assert parsed.get("resources") or parsed.get("modules"), f"{path} declares nothing"


def test_checkov_reports_no_failed_check(checkov_report: dict[str, Any]) -> None:
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in checkov_report["results"]["failed_checks"]
    ]
    assert checkov_report["summary"]["parsing_errors"] == 0
    assert checkov_report["summary"]["passed"] > 0
    assert failed == []


def test_every_checkov_suppression_states_its_reason() -> None:
    unexplained = []
    for path in _bicep_files():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = SUPPRESSION.search(line)
            if match and len((match["reason"] or "").strip()) < 20:
                unexplained.append(f"{path.name}:{number}: {line.strip()}")
    assert unexplained == []


def test_every_module_is_a_local_file(parse: Any) -> None:
    for path in _bicep_files():
        for name, module in parse(path).get("modules", {}).items():
            assert module["type"] == "local", f"{path.name}: module {name} is not local"
            assert (path.parent / module["detail"]["path"]).is_file(), name


# --- the template agrees with raft/hosts/settings.py --------------------------------------


def test_topic_default_is_the_settings_default(main: Bicep) -> None:
    assert main["parameters"]["topicName"]["default"] == settings.DEFAULTS[settings.TOPIC]


def test_table_default_is_the_settings_default(main: Bicep) -> None:
    assert main["parameters"]["tableName"]["default"] == settings.DEFAULTS[settings.TABLE]


def test_cluster_size_allows_3_5_or_7(main: Bicep) -> None:
    cluster_size = main["parameters"]["clusterSize"]
    assert _allowed(cluster_size) == [3, 5, 7]
    assert str(cluster_size["default"]) == settings.DEFAULTS[settings.SERVER_COUNT]


def test_subscription_names_follow_the_server_id_convention(main: Bicep) -> None:
    loop = main["variables"]["serverIds"]["value"]
    detail = loop["loop_type"]["detail"]
    assert loop["loop_type"]["type"] == "range"
    assert detail["count"] == "subscriptionCount"
    count = main["variables"]["subscriptionCount"]["value"]["function"]
    assert count == {
        "type": "max",
        "parameters": {"arg_1": "clusterSize", "arg_2": "maxClusterSize"},
    }
    for size in _allowed(main["parameters"]["clusterSize"]):
        indexes = range(detail["start_index"], detail["start_index"] + size)
        names = [loop["config"].replace("${" + detail["index_name"] + "}", str(i)) for i in indexes]
        assert names == settings.server_ids(size)
    assert main["modules"]["serviceBus"]["config"]["params"]["subscriptionNames"] == "serverIds"


def test_each_subscription_has_an_addressee_correlation_rule(parse: Any, main: Bicep) -> None:
    passed = main["modules"]["serviceBus"]["config"]["params"]
    assert passed["ruleName"] == settings.SUBSCRIPTION_RULE
    assert passed["addresseeProperty"] == ADDRESSEE_PROPERTY

    module = parse(SERVICE_BUS)
    rules = module["resources"]["addresseeRules"]
    loop = rules["config"]["loop_type"]["detail"]
    body = _body(rules)
    assert loop["array_name"] == "subscriptionNames"
    assert body["name"] == "ruleName"
    assert body["properties"]["filterType"] == "CorrelationFilter"
    # The filter matches application property <addresseeProperty> == the subscription's name.
    assert body["properties"]["correlationFilter"]["properties"] == {
        "'${addresseeProperty}'": loop["item_name"]
    }


def test_the_default_catch_all_rule_is_replaced_by_one_that_never_matches(parse: Any) -> None:
    rules = parse(SERVICE_BUS)["resources"]["defaultRules"]
    body = _body(rules)
    assert rules["config"]["loop_type"]["detail"]["array_name"] == "subscriptionNames"
    assert body["name"] == "$Default"
    assert body["properties"] == {"filterType": "SqlFilter", "sqlFilter": {"sqlExpression": "1=0"}}


def test_subscriptions_dead_letter_expired_messages_after_bounded_deliveries(parse: Any) -> None:
    properties = _body(parse(SERVICE_BUS)["resources"]["subscriptions"])["properties"]
    assert properties["deadLetteringOnMessageExpiration"] is True
    assert isinstance(_resolve(properties["maxDeliveryCount"], parse(SERVICE_BUS)), int)


def test_topic_detects_duplicates(parse: Any) -> None:
    properties = _body(parse(SERVICE_BUS)["resources"]["topic"])["properties"]
    assert properties["requiresDuplicateDetection"] is True
    assert properties["duplicateDetectionHistoryTimeWindow"]


def test_message_ttl_default_is_the_settings_default(main: Bicep) -> None:
    ttl = main["parameters"]["messageTtlSeconds"]["default"]
    assert str(ttl) == settings.DEFAULTS[settings.MESSAGE_TTL_S]
    assert main["modules"]["serviceBus"]["config"]["params"]["messageTtlSeconds"] == (
        "messageTtlSeconds"
    )


def test_app_settings_name_every_setting_and_connection(main: Bicep) -> None:
    missing = (set(settings.DEFAULTS) | CONNECTION_SETTINGS) - set(_app_settings(main))
    assert missing == set()


def test_app_settings_default_to_the_settings_defaults(main: Bicep) -> None:
    app_settings = _app_settings(main)
    values = {name: _resolve(app_settings[name], main) for name in settings.DEFAULTS}
    # Derived, not defaulted: every server with a subscription has a trigger.
    assert values.pop(settings.MAX_SERVERS) == "subscriptionCount"
    assert values == {k: v for k, v in settings.DEFAULTS.items() if k != settings.MAX_SERVERS}


def test_no_app_setting_carries_a_key_or_connection_string(main: Bicep) -> None:
    for name, value in _app_settings(main).items():
        text = json.dumps(value)
        assert not any(marker in text for marker in SECRET_MARKERS), name
    for path in _bicep_files():
        text = path.read_text()
        assert "listKeys(" not in text and "listConnectionStrings(" not in text, path
        assert not any(marker in text for marker in SECRET_MARKERS), path


def test_service_bus_and_storage_accept_only_entra_id(parse: Any) -> None:
    namespace = _body(parse(SERVICE_BUS)["resources"]["namespace"])
    assert namespace["sku"]["name"] == "Standard"
    assert namespace["properties"]["disableLocalAuth"] is True
    assert namespace["properties"]["minimumTlsVersion"] == "1.2"

    account = _body(parse(STORAGE)["resources"]["account"])["properties"]
    assert account["allowSharedKeyAccess"] is False
    assert account["allowBlobPublicAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2"


def test_receiver_role_is_scoped_to_each_subscription(parse: Any) -> None:
    receivers = parse(ROLES)["resources"]["receiverOnSubscription"]
    loop = receivers["config"]["loop_type"]["detail"]
    scope = _body(receivers)["scope"]["operator"]
    assert loop["array_name"] == "subscriptionNames"
    assert scope["type"] == "index_accessor"
    assert scope["operands"] == {"operand_1": "subscriptions", "operand_2": loop["index_name"]}


def test_sender_role_is_scoped_to_the_topic(parse: Any) -> None:
    assert _body(parse(ROLES)["resources"]["senderOnTopic"])["scope"] == "topic"


def test_outputs_name_what_a_deployer_needs(main: Bicep) -> None:
    expected = {"functionAppName", "httpEndpoint", "serviceBusNamespace", "storageAccountName"}
    assert expected <= set(main["outputs"])


def test_the_app_runs_the_python_version_whose_worker_the_tests_run(parse: Any) -> None:
    # tests/test_worker_runtime.py indexes the app with the Python 3.13 worker library.
    text = (ROOT / "infra" / "modules" / "functionapp.bicep").read_text()
    assert "version: '3.13'" in text


def _accessor(value: Any) -> tuple[Any, ...]:
    """`a.b.c` as ("a", "b", "c") from pycep's nested property accessors."""
    operands = value["operator"]["operands"]
    rest = operands["operand_2"]
    tail = _accessor(rest) if isinstance(rest, dict) else (rest,)
    return (operands["operand_1"], *tail)


# --- roles: the least that works ------------------------------------------------------------


def test_the_app_gets_data_owner_on_each_subscription_for_its_scale_metrics(parse: Any) -> None:
    """The trigger's scale metrics read a subscription's runtime properties, which takes the
    Manage right: Data Owner, scoped to the one subscription. A developer receives only."""
    roles = parse(ROLES)
    assert roles["variables"]["roleIds"]["value"]["serviceBusDataOwner"] == SERVICE_BUS_DATA_OWNER
    assert (
        roles["variables"]["roleIds"]["value"]["serviceBusDataReceiver"]
        == SERVICE_BUS_DATA_RECEIVER
    )
    choice = roles["variables"]["subscriptionRole"]["value"]["operator"]
    assert choice["type"] == "conditional"
    assert choice["operands"]["condition"] == "includeHostRoles"
    assert _accessor(choice["operands"]["true_value"]) == ("roleIds", "serviceBusDataOwner")
    assert _accessor(choice["operands"]["false_value"]) == ("roleIds", "serviceBusDataReceiver")
    assignment = _body(roles["resources"]["receiverOnSubscription"])["properties"]
    assert assignment["roleDefinitionId"]["function"]["parameters"]["resource_name_1"] == (
        "subscriptionRole"
    )


def test_only_the_app_gets_the_host_roles(main: Bicep) -> None:
    assert main["modules"]["appRoles"]["config"]["params"]["includeHostRoles"] is True
    assert _body(main["modules"]["developerRoles"])["params"]["includeHostRoles"] is False


def test_the_developer_principal_type_is_a_parameter_passed_to_the_role_assignments(
    main: Bicep,
) -> None:
    parameter = main["parameters"]["developerPrincipalType"]
    assert _allowed(parameter) == ["User", "ServicePrincipal", "Group"]
    params = _body(main["modules"]["developerRoles"])["params"]
    assert params["principalType"] == "developerPrincipalType"


# --- HTTP concurrency ------------------------------------------------------------------------


def test_one_instance_serves_the_documented_number_of_concurrent_http_calls(
    parse: Any, main: Bicep
) -> None:
    parameter = main["parameters"]["httpPerInstanceConcurrency"]
    assert parameter["default"] == settings.HTTP_CONCURRENCY
    passed = main["modules"]["functionApp"]["config"]["params"]["httpPerInstanceConcurrency"]
    assert passed == "httpPerInstanceConcurrency"
    app = _body(parse(FUNCTION_APP)["resources"]["app"])
    scale = app["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    assert scale["triggers"]["http"]["perInstanceConcurrency"] == "httpPerInstanceConcurrency"


def test_the_worker_has_a_thread_for_each_concurrent_http_call(main: Bicep) -> None:
    threads = _app_settings(main)["PYTHON_THREADPOOL_THREAD_COUNT"]
    assert _resolve(threads, main) == str(settings.HTTP_CONCURRENCY)
    assert threads["function"]["parameters"]["value_to_convert"] == "httpPerInstanceConcurrency"


# --- batches and locks -----------------------------------------------------------------------


def test_the_subscription_lock_is_the_one_host_json_is_bounded_by(parse: Any) -> None:
    properties = _body(parse(SERVICE_BUS)["resources"]["subscriptions"])["properties"]
    assert properties["lockDuration"] == f"PT{settings.MESSAGE_LOCK_S // 60}M"


# --- telemetry and alerts --------------------------------------------------------------------


def test_the_python_worker_exports_opentelemetry_with_the_apps_identity(main: Bicep) -> None:
    app_settings = _app_settings(main)
    assert app_settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"
    assert app_settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "Authorization=AAD"


def test_dead_lettered_messages_raise_an_alert_on_the_namespace(parse: Any, main: Bicep) -> None:
    assert main["modules"]["alerts"]["detail"]["path"] == "modules/alerts.bicep"
    alert = _body(parse(ALERTS)["resources"]["deadLettered"])["properties"]
    (criterion,) = alert["criteria"]["allOf"]
    assert (criterion["metricNamespace"], criterion["metricName"]) == (
        "Microsoft.ServiceBus/namespaces",
        "DeadletteredMessages",
    )
    assert criterion["operator"] == "GreaterThan"
    (scope,) = alert["scopes"]
    assert _accessor(scope) == ("namespace", "id")


def test_failed_invocations_raise_an_alert_but_client_errors_do_not(parse: Any) -> None:
    alert = _body(parse(ALERTS)["resources"]["failedInvocations"])["properties"]
    (criterion,) = alert["criteria"]["allOf"]
    assert criterion["query"].startswith("requests | where success == false")
    assert "!between (400 .. 499)" in criterion["query"]
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 0)
    (scope,) = alert["scopes"]
    assert _accessor(scope) == ("appInsights", "id")
