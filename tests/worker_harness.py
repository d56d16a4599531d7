"""Runs `function_app.py` through the Functions Python worker library, azure-functions-runtime
(what the platform runs for Python 3.13 apps), the way the platform's worker process drives it,
and prints a JSON report. Not a pytest module: tests/test_worker_runtime.py runs it, from the
repository root, with the Python 3.13 environment that scripts/worker-venv builds:

    .venv-worker/bin/python -m tests.worker_harness [--app-dir DIR] [--index-only]

The worker library's own entry points do the work: `worker_init_request` (imports the app,
validates every function's bindings and annotations, builds its metadata),
`functions_metadata_request`, `function_load_request` and `invocation_request` (turns the
host's binding data into Python arguments with azure.functions' converters, runs the function
and encodes its result). `loader.process_indexed_function` indexes each function alone as
well, so every refusal is reported with its reason, not only the first.

The harness plays the host's part: it sends binding data shaped as the host sends it (an HTTP
request as RpcHttp, a timer as JSON TimerInfo, a Service Bus batch as `collection_bytes` with
the trigger's `*Array` metadata) and runs a 5-server cluster end to end through those
invocations, over the in-memory store and bus, with the app's host object replaced by one
built here whose Service Bus entry point records what each invocation received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import azure_functions_runtime as worker
from azure_functions_runtime import loader
from azure_functions_runtime.functions import FunctionLoadError, Registry
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from raft.adapters.memory_bus import InMemoryBus
from raft.adapters.memory_store import InMemoryStore
from raft.adapters.poison import Poison
from raft.adapters.servicebus_bus import to_service_bus_message
from raft.core.messages import Envelope
from raft.hosts.functions import FunctionsHost, use_host
from raft.hosts.settings import AppSettings

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ the host protocol
#
# The worker library takes the host protocol's message classes from its caller (`protos`):
# the platform's proxy worker generates them from the protocol's FunctionRpc.proto. These are
# the messages and fields that the code paths above read or write, with the protocol's own
# names and field numbers, built with protobuf at run time. Retry options and cookies are
# empty: the app declares no retry policy and sets no cookies.

PACKAGE = "AzureFunctionsRpcMessages"
SCHEMA = """
message StreamingMessage {
  oneof content {
    InvocationRequest invocation_request = 4;
    FunctionLoadRequest function_load_request = 8;
    WorkerInitRequest worker_init_request = 17;
  }
}
message WorkerInitRequest {
  map<string, string> capabilities = 2;
  string function_app_directory = 5;
}
message WorkerInitResponse {
  map<string, string> capabilities = 2;
  StatusResult result = 3;
  WorkerMetadata worker_metadata = 4;
}
message WorkerMetadata {
  string runtime_name = 1;
  string runtime_version = 2;
  string worker_version = 3;
  string worker_bitness = 4;
  map<string, string> custom_properties = 5;
}
message StatusResult {
  enum Status { Failure = 0; Success = 1; Cancelled = 2; }
  Status status = 4;
  RpcException exception = 2;
}
message RpcException {
  string stack_trace = 1;
  string message = 2;
}
message FunctionMetadataResponse {
  repeated RpcFunctionMetadata function_metadata_results = 1;
  StatusResult result = 2;
  bool use_default_metadata_indexing = 3;
}
message RpcFunctionMetadata {
  string name = 4;
  string directory = 1;
  string script_file = 2;
  string entry_point = 3;
  map<string, BindingInfo> bindings = 6;
  bool is_proxy = 7;
  string language = 9;
  repeated string raw_bindings = 10;
  string function_id = 13;
  bool managed_dependency_enabled = 14;
  RpcRetryOptions retry_options = 15;
  map<string, string> properties = 16;
}
message RpcRetryOptions {}
message BindingInfo {
  enum Direction { in = 0; out = 1; inout = 2; }
  enum DataType { undefined = 0; string = 1; binary = 2; stream = 3; }
  string type = 2;
  Direction direction = 3;
  DataType data_type = 4;
}
message FunctionLoadRequest {
  string function_id = 1;
  RpcFunctionMetadata metadata = 2;
}
message FunctionLoadResponse {
  string function_id = 1;
  StatusResult result = 2;
}
message InvocationRequest {
  string invocation_id = 1;
  string function_id = 2;
  repeated ParameterBinding input_data = 3;
  map<string, TypedData> trigger_metadata = 4;
  RpcTraceContext trace_context = 5;
  RetryContext retry_context = 6;
}
message RpcTraceContext {
  string trace_parent = 1;
  string trace_state = 2;
  map<string, string> attributes = 3;
}
message RetryContext {
  int32 retry_count = 1;
  int32 max_retry_count = 2;
  RpcException exception = 3;
}
message InvocationResponse {
  string invocation_id = 1;
  repeated ParameterBinding output_data = 2;
  TypedData return_value = 4;
  StatusResult result = 3;
}
message ParameterBinding {
  string name = 1;
  oneof rpc_data {
    TypedData data = 2;
  }
}
message TypedData {
  oneof data {
    string string = 1;
    string json = 2;
    bytes bytes = 3;
    RpcHttp http = 5;
    sint64 int = 6;
    double double = 7;
    CollectionBytes collection_bytes = 8;
    CollectionString collection_string = 9;
    CollectionSInt64 collection_sint64 = 11;
  }
}
message CollectionString { repeated string string = 1; }
message CollectionBytes { repeated bytes bytes = 1; }
message CollectionSInt64 { repeated sint64 sint64 = 1; }
message RpcHttp {
  string method = 1;
  string url = 2;
  map<string, string> headers = 3;
  TypedData body = 4;
  map<string, string> params = 10;
  string status_code = 12;
  map<string, string> query = 15;
  bool enable_content_negotiation = 16;
  repeated RpcHttpCookie cookies = 19;
}
message RpcHttpCookie {}
"""

TOKEN = re.compile(r"[A-Za-z_]\w*|\d+|[{}=;<>,]")
FIELD = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    "string": FIELD.TYPE_STRING,
    "bytes": FIELD.TYPE_BYTES,
    "bool": FIELD.TYPE_BOOL,
    "int32": FIELD.TYPE_INT32,
    "sint64": FIELD.TYPE_SINT64,
    "double": FIELD.TYPE_DOUBLE,
}


def build_protocol(schema: str) -> SimpleNamespace:
    """Message classes for a proto3 schema of top-level messages (fields, maps, oneofs and
    nested enums: what SCHEMA uses)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="function_rpc_subset.proto", package=PACKAGE, syntax="proto3"
    )
    tokens = deque(TOKEN.findall(schema))
    while tokens:
        _take(tokens, "message")
        file.message_type.append(_message(tokens))
    _resolve_types(file)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return SimpleNamespace(
        **{
            m.name: message_factory.GetMessageClass(
                pool.FindMessageTypeByName(f"{PACKAGE}.{m.name}")
            )
            for m in file.message_type
        }
    )


def _take(tokens: deque[str], expected: str | None = None) -> str:
    token = tokens.popleft()
    if expected is not None and token != expected:
        raise SyntaxError(f"expected {expected!r}, got {token!r}")
    return token


def _message(tokens: deque[str]) -> Any:
    message = descriptor_pb2.DescriptorProto(name=_take(tokens))
    _take(tokens, "{")
    while (token := _take(tokens)) != "}":
        if token == "enum":
            _enum(tokens, message)
        elif token == "oneof":
            message.oneof_decl.add(name=_take(tokens))
            _take(tokens, "{")
            while tokens[0] != "}":
                _field(tokens, message, _take(tokens), len(message.oneof_decl) - 1)
            _take(tokens, "}")
        else:
            _field(tokens, message, token, None)
    return message


def _enum(tokens: deque[str], message: Any) -> None:
    enum = message.enum_type.add(name=_take(tokens))
    _take(tokens, "{")
    while (name := _take(tokens)) != "}":
        _take(tokens, "=")
        enum.value.add(name=name, number=int(_take(tokens)))
        _take(tokens, ";")


def _field(tokens: deque[str], message: Any, first: str, oneof: int | None) -> None:
    label = FIELD.LABEL_OPTIONAL
    type_name = first
    if first == "repeated":
        label, type_name = FIELD.LABEL_REPEATED, _take(tokens)
    elif first == "map":
        label, type_name = FIELD.LABEL_REPEATED, _map_entry(tokens, message)
    name = _take(tokens)
    _take(tokens, "=")
    added = message.field.add(name=name, number=int(_take(tokens)), label=label)
    added.type_name = type_name  # resolved to a type by _resolve_types
    if oneof is not None:
        added.oneof_index = oneof
    _take(tokens, ";")


def _map_entry(tokens: deque[str], message: Any) -> str:
    """`map<K, V>`: a nested `{Name}Entry` message with the map_entry option, as protoc makes."""
    _take(tokens, "<")
    key = _take(tokens)
    _take(tokens, ",")
    value = _take(tokens)
    _take(tokens, ">")
    entry = message.nested_type.add(name=f"{tokens[0].title().replace('_', '')}Entry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=FIELD.LABEL_OPTIONAL, type_name=key)
    entry.field.add(name="value", number=2, label=FIELD.LABEL_OPTIONAL, type_name=value)
    return f"{message.name}.{entry.name}"


def _resolve_types(file: Any) -> None:
    """Each field's written type name as a scalar, one of its message's enums, or a message."""
    for message in file.message_type:
        enums = {e.name for e in message.enum_type}
        for f in [*message.field, *(f for entry in message.nested_type for f in entry.field)]:
            name = f.type_name
            if name in SCALARS:
                f.ClearField("type_name")
                f.type = SCALARS[name]
            elif name in enums:
                f.type, f.type_name = FIELD.TYPE_ENUM, f".{PACKAGE}.{message.name}.{name}"
            else:
                f.type, f.type_name = FIELD.TYPE_MESSAGE, f".{PACKAGE}.{name}"


# ------------------------------------------------------------------ driving the worker


@dataclass
class WorkerRequest:
    """What the platform's proxy worker hands the library: the host's StreamingMessage."""

    name: str
    request: Any
    properties: dict[str, Any] = field(default_factory=dict)


def status_name(protos: SimpleNamespace, result: Any) -> str:
    return str(protos.StatusResult.Status.Name(result.status))


def failure(protos: SimpleNamespace, result: Any) -> str | None:
    if result.status == protos.StatusResult.Success:
        return None
    return result.exception.message or status_name(protos, result)


async def init_worker(protos: SimpleNamespace, app_dir: Path) -> dict[str, Any]:
    message = protos.StreamingMessage(
        worker_init_request=protos.WorkerInitRequest(function_app_directory=str(app_dir))
    )
    worker.start_threadpool_executor()
    response = await worker.worker_init_request(
        WorkerRequest("WorkerInitRequest", message, {"protos": protos, "host": "127.0.0.1"})
    )
    return {
        "status": status_name(protos, response.result),
        "error": failure(protos, response.result),
    }


async def function_metadata(protos: SimpleNamespace) -> list[Any]:
    response = await worker.functions_metadata_request(WorkerRequest("WorkerMetadataRequest", None))
    return list(response.function_metadata_results)


def describe_metadata(protos: SimpleNamespace, metadata: Any) -> dict[str, Any]:
    info = protos.BindingInfo
    return {
        "name": metadata.name,
        "function_id": metadata.function_id,
        "bindings": {
            name: {
                "type": b.type,
                "direction": info.Direction.Name(b.direction),
                "data_type": info.DataType.Name(b.data_type),
            }
            for name, b in sorted(metadata.bindings.items())
        },
        "raw_bindings": [json.loads(raw) for raw in metadata.raw_bindings],
    }


def index_each(protos: SimpleNamespace, app_dir: Path) -> tuple[list[Any], list[dict[str, str]]]:
    """Index each function on its own, so every refusal shows, not only the first: the
    metadata of those accepted, and the refused with their reasons. The app is imported
    afresh, as azure.functions lets one app object list its functions only once."""
    sys.modules.pop("function_app", None)
    accepted, refused = [], []
    for function in loader.index_function_app(str(app_dir / "function_app.py")):
        try:
            metadata, _ = loader.process_indexed_function(
                protos, Registry(), [function], str(app_dir)
            )
            accepted.extend(metadata)
        except FunctionLoadError as exc:
            refused.append({"name": function.get_function_name(), "reason": str(exc)})
    return accepted, refused


async def load_functions(protos: SimpleNamespace, metadata: Iterable[Any]) -> list[str]:
    """FunctionLoadRequest for each indexed function, as the host sends; failures returned."""
    failures = []
    for m in metadata:
        message = protos.StreamingMessage(
            function_load_request=protos.FunctionLoadRequest(function_id=m.function_id, metadata=m)
        )
        response = await worker.function_load_request(WorkerRequest("FunctionLoadRequest", message))
        if (error := failure(protos, response.result)) is not None:
            failures.append(f"{m.name}: {error}")
    return failures


# ------------------------------------------------------------------ binding data, host-shaped


def typed(protos: SimpleNamespace, **value: Any) -> Any:
    return protos.TypedData(**value)


def http_data(
    protos: SimpleNamespace,
    method: str,
    path: str,
    body: bytes = b"",
    route_params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """An HTTP trigger's input: RpcHttp with the body as bytes (the worker declares the
    RawHttpBodyBytes capability) and the route parameters in `params`."""
    return typed(
        protos,
        http=protos.RpcHttp(
            method=method,
            url=f"http://localhost:7071{path}",
            headers={"content-type": "application/json", **(headers or {})},
            body=typed(protos, bytes=body),
            params=route_params or {},
            query={},
        ),
    )


def timer_data(protos: SimpleNamespace, now: datetime) -> Any:
    """A timer trigger's input: TimerInfo as JSON."""
    stamp = now.isoformat()
    return typed(
        protos,
        json=json.dumps(
            {
                "Schedule": {"AdjustForDST": True},
                "ScheduleStatus": {"Last": stamp, "Next": stamp, "LastUpdated": stamp},
                "IsPastDue": False,
            }
        ),
    )


@dataclass(frozen=True)
class Delivery:
    """One Service Bus message as the broker hands it to the trigger."""

    body: bytes
    message_id: str
    application_properties: dict[str, Any]
    delivery_count: int = 1
    content_type: str = "application/json"


def service_bus_batch(
    protos: SimpleNamespace, deliveries: list[Delivery]
) -> tuple[Any, dict[str, Any]]:
    """A batch (cardinality many, dataType binary): the bodies as `collection_bytes`, and the
    per-message properties in the `*Array` trigger metadata that azure.functions'
    ServiceBusMessageInConverter reads (strings as collection_string, integers as
    collection_sint64, dictionaries and times as JSON)."""
    now = datetime.now(UTC).isoformat()
    properties = [d.application_properties for d in deliveries]
    metadata = {
        "MessageIdArray": strings(protos, [d.message_id for d in deliveries]),
        "ContentTypeArray": strings(protos, [d.content_type for d in deliveries]),
        "SubjectArray": strings(protos, [str(p.get("kind", "")) for p in properties]),
        "DeliveryCountArray": integers(protos, [d.delivery_count for d in deliveries]),
        "SequenceNumberArray": integers(protos, list(range(1, len(deliveries) + 1))),
        "EnqueuedTimeUtcArray": typed(protos, json=json.dumps([now] * len(deliveries))),
        "ApplicationPropertiesArray": typed(protos, json=json.dumps(properties)),
        "UserPropertiesArray": typed(protos, json=json.dumps(properties)),
    }
    bodies = protos.CollectionBytes(bytes=[d.body for d in deliveries])
    return typed(protos, collection_bytes=bodies), metadata


def service_bus_batch_as_json(
    protos: SimpleNamespace, deliveries: list[Delivery]
) -> tuple[Any, dict[str, Any]]:
    """The same batch with the bodies as one JSON array of strings: the `json` shape a batch
    binding can take when the trigger declares no dataType."""
    _, metadata = service_bus_batch(protos, deliveries)
    texts = [d.body.decode("utf-8") for d in deliveries]
    return typed(protos, json=json.dumps(texts)), metadata


def strings(protos: SimpleNamespace, values: list[str]) -> Any:
    return typed(protos, collection_string=protos.CollectionString(string=values))


def integers(protos: SimpleNamespace, values: list[int]) -> Any:
    return typed(protos, collection_sint64=protos.CollectionSInt64(sint64=values))


def delivery(envelope: Envelope, ttl_s: float) -> Delivery:
    """What the trigger gets for an envelope the app's Service Bus adapter sent."""
    message = to_service_bus_message(envelope, ttl_s, uuid.uuid4().hex)
    return Delivery(
        body=b"".join(message.body),
        message_id=str(message.message_id),
        application_properties=dict(message.application_properties or {}),
    )


# ------------------------------------------------------------------ the cluster, end to end

STEP_MS = 500
MAX_ELECTION_STEPS = 200
HTTP_TIMEOUT_S = 30.0
PACE_S = 0.005


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def now_ms(self) -> int:
        return self.now


class KeptPoison:
    def __init__(self) -> None:
        self.kept: list[Poison] = []

    def record(self, poison: Poison) -> None:
        self.kept.append(poison)


def seen(message: Any) -> dict[str, Any]:
    """What the function received for one message."""
    return {
        "type": f"{type(message).__module__}.{type(message).__qualname__}",
        "is_service_bus_message": isinstance(message, func.ServiceBusMessage),
        "body": message.get_body(),
        "message_id": message.message_id,
        "application_properties": message.application_properties,
        "delivery_count": message.delivery_count,
    }


def record_batches(host: FunctionsHost, received: list[list[dict[str, Any]]]) -> None:
    """Wrap the host's Service Bus entry point to keep what each invocation handed it."""
    handle = host.on_messages

    def on_messages(server_id: str, messages: Any) -> None:
        received.append([seen(m) for m in messages])
        handle(server_id, messages)

    host.on_messages = on_messages  # type: ignore[method-assign]


@dataclass
class Batch:
    server_id: str
    sent: list[Delivery]
    received: list[dict[str, Any]]


class FunctionsHostDriver:
    """Sends invocations to the worker as the Functions host does, one request per call."""

    def __init__(self, protos: SimpleNamespace, function_ids: dict[str, str]) -> None:
        self.protos = protos
        self.function_ids = function_ids
        self.invocations: dict[str, int] = {}
        self.failures: list[str] = []

    async def invoke(
        self, function: str, binding: str, data: Any, metadata: dict[str, Any] | None = None
    ) -> Any:
        request = self.protos.InvocationRequest(
            invocation_id=str(uuid.uuid4()),
            function_id=self.function_ids[function],
            input_data=[self.protos.ParameterBinding(name=binding, data=data)],
            trigger_metadata=metadata or {},
        )
        response = await worker.invocation_request(
            WorkerRequest(
                "FunctionInvocationRequest",
                self.protos.StreamingMessage(invocation_request=request),
            )
        )
        self.invocations[function] = self.invocations.get(function, 0) + 1
        if (error := failure(self.protos, response.result)) is not None:
            self.failures.append(f"{function}: {error}")
        return response


def function_name(server_id: str) -> str:
    return f"server_{server_id.split('-')[-1]}"


class Cluster:
    def __init__(self, protos: SimpleNamespace, driver: FunctionsHostDriver) -> None:
        self.protos = protos
        self.driver = driver
        self.settings = AppSettings.from_env()
        self.bus = InMemoryBus()
        self.clock = VirtualClock()
        self.poison = KeptPoison()
        self.host = FunctionsHost(
            self.settings, InMemoryStore(), self.bus, self.poison, clock=self.clock
        )
        self.received: list[list[dict[str, Any]]] = []
        self.batches: list[Batch] = []
        record_batches(self.host, self.received)
        use_host(self.host)

    async def step(self) -> None:
        """Advance the clock, fire the timer, deliver everything queued as batches."""
        self.clock.now += STEP_MS
        now = datetime.fromtimestamp(self.clock.now / 1000, UTC)
        await self.driver.invoke("timer", "timer", timer_data(self.protos, now))
        for server_id in self.settings.servers:
            envelopes = self.bus.drain(server_id)
            if envelopes:
                ttl_s = self.settings.message_ttl_s
                await self.deliver(server_id, [delivery(e, ttl_s) for e in envelopes])

    async def deliver(
        self,
        server_id: str,
        deliveries: list[Delivery],
        shape: Callable[[SimpleNamespace, list[Delivery]], tuple[Any, dict[str, Any]]] = (
            service_bus_batch
        ),
    ) -> Batch:
        data, metadata = shape(self.protos, deliveries)
        before = len(self.received)
        await self.driver.invoke(function_name(server_id), "messages", data, metadata)
        received = [m for batch in self.received[before:] for m in batch]
        batch = Batch(server_id, deliveries, received)
        self.batches.append(batch)
        return batch

    async def elect(self) -> str | None:
        for _ in range(MAX_ELECTION_STEPS):
            await self.step()
            if (leader := self.host.api.find_leader()) is not None:
                return leader[0]
        return None

    async def http(
        self,
        function: str,
        method: str,
        path: str,
        body: bytes = b"",
        route_params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """An HTTP invocation; the cluster keeps stepping while the function waits, as the
        platform keeps delivering Service Bus batches and timer ticks meanwhile."""
        data = http_data(self.protos, method, path, body, route_params, headers)
        call = asyncio.create_task(self.driver.invoke(function, "req", data))
        deadline = asyncio.get_running_loop().time() + HTTP_TIMEOUT_S
        while not call.done() and asyncio.get_running_loop().time() < deadline:
            await self.step()
            await asyncio.sleep(PACE_S)
        http = (await call).return_value.http
        return {
            "function": function,
            "request": f"{method} {path}",
            "status": int(http.status_code) if http.status_code else None,
            "body": json.loads(http.body.bytes) if http.body.bytes else None,
        }


async def run_cluster(protos: SimpleNamespace, function_ids: dict[str, str]) -> dict[str, Any]:
    driver = FunctionsHostDriver(protos, function_ids)
    cluster = Cluster(protos, driver)
    leader = await cluster.elect()
    command = json.dumps({"op": "put", "key": "colour", "value": "blå \U0001f600"}).encode()
    http = [
        await cluster.http("get_cluster", "GET", "/api/cluster"),
        await cluster.http(
            "post_command", "POST", "/api/commands", command, headers={"x-request-id": "h-1"}
        ),
        await cluster.http("get_key", "GET", "/api/kv/colour", route_params={"key": "colour"}),
        await cluster.http(
            "get_command", "GET", "/api/commands/h-1", route_params={"request_id": "h-1"}
        ),
        await cluster.http("health", "GET", "/api/health"),
    ]
    # Bad input through the worker's own HTTP converters: a 400 that says why, never a 500.
    bad_input = [
        await cluster.http("post_command", "POST", "/api/commands", body)
        for body in (
            b'{"op": {}, "key": "k"}',
            b'{"op": "get", "key": "\\ud800"}',
            b"[" * 5000 + b"]" * 5000,
        )
    ]
    await redeliver(cluster, cluster.batches[-1])
    service_bus = summarize(cluster.batches, len(cluster.poison.kept))
    return {
        "leader": leader,
        "invocations": driver.invocations,
        "failures": driver.failures,
        "http": http,
        "bad_input": bad_input,
        "service_bus": service_bus,
        "without_data_type": await without_data_type(cluster),
    }


async def redeliver(cluster: Cluster, batch: Batch) -> None:
    """The same batch again, as Service Bus redelivers after a lost lock: count + 1."""
    again = [replace(d, delivery_count=d.delivery_count + 1) for d in batch.sent]
    await cluster.deliver(batch.server_id, again)


def summarize(batches: list[Batch], poison: int) -> dict[str, Any]:
    pairs = [(b, sent, got) for b in batches for sent, got in zip(b.sent, b.received, strict=False)]
    first = pairs[0][2] if pairs else {}
    return {
        "batches": len(batches),
        "messages_sent": sum(len(b.sent) for b in batches),
        "messages_received": sum(len(b.received) for b in batches),
        "received_types": sorted({got["type"] for _, _, got in pairs}),
        "all_service_bus_messages": all(got["is_service_bus_message"] for _, _, got in pairs),
        "bodies_intact": all(got["body"] == sent.body for _, sent, got in pairs),
        "message_ids_intact": all(got["message_id"] == sent.message_id for _, sent, got in pairs),
        "application_properties_intact": all(
            got["application_properties"] == sent.application_properties for _, sent, got in pairs
        ),
        "addressees_match_subscription": all(
            got["application_properties"].get("addressee") == b.server_id for b, _, got in pairs
        ),
        "delivery_counts_intact": all(
            got["delivery_count"] == sent.delivery_count for _, sent, got in pairs
        ),
        "delivery_counts_seen": sorted({got["delivery_count"] for _, _, got in pairs}),
        "poison": poison,
        "first_received": {**first, "body": first.get("body", b"").decode("utf-8")},
    }


async def without_data_type(cluster: Cluster) -> dict[str, Any]:
    """One valid message in the `json` batch shape: what the function gets then."""
    sent = cluster.batches[-1].sent[0]
    poison_before = len(cluster.poison.kept)
    batch = await cluster.deliver(cluster.batches[-1].server_id, [sent], service_bus_batch_as_json)
    received = batch.received[0]["body"] if batch.received else b""
    text = sent.body.decode("utf-8")
    return {
        "sent_body": text,
        "received_body": received.decode("utf-8"),
        "double_encoded": received == json.dumps(text).encode("utf-8"),
        "recorded_as_poison": len(cluster.poison.kept) - poison_before == 1,
    }


# ------------------------------------------------------------------ the report


PACKAGES = ("azure-functions-runtime", "azure-functions", "protobuf")


def versions() -> dict[str, str]:
    return {"python": sys.version.split()[0], **{name: version(name) for name in PACKAGES}}


async def report(app_dir: Path, index_only: bool) -> dict[str, Any]:
    protos = build_protocol(SCHEMA)
    result: dict[str, Any] = {"versions": versions(), "app_dir": str(app_dir)}
    result["worker_init"] = await init_worker(protos, app_dir)
    metadata = await function_metadata(protos) if result["worker_init"]["error"] is None else []
    result["worker_init"]["functions"] = [m.name for m in metadata]
    accepted, result["refused"] = index_each(protos, app_dir)
    result["indexed"] = [describe_metadata(protos, m) for m in accepted]
    if metadata and not index_only:
        result["load_failures"] = await load_functions(protos, metadata)
        result["invocations"] = await run_cluster(protos, {m.name: m.function_id for m in metadata})
    worker.stop_threadpool_executor()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-dir", type=Path, default=ROOT, help="folder of function_app.py")
    parser.add_argument("--index-only", action="store_true", help="index; invoke nothing")
    args = parser.parse_args()
    app_dir = args.app_dir.resolve()
    # The platform's worker imports function_app from the app's folder, first on sys.path.
    sys.path.insert(0, str(app_dir))
    print(json.dumps(asyncio.run(report(app_dir, args.index_only)), indent=2, default=str))


if __name__ == "__main__":
    main()
