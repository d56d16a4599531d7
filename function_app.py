"""Azure Functions app (Python v2 programming model): thin glue over the node handler.

One Service Bus topic trigger per server subscription, a timer that drives every server's
election and heartbeat deadlines, and the HTTP API. The server count and topic come from app
settings (raft/hosts/settings.py), so a 3-, 5- or 7-server cluster needs no code change.
"""

from __future__ import annotations

import typing

import azure.functions as func

from raft.hosts import settings as names
from raft.hosts.functions import host
from raft.hosts.settings import AppSettings

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
settings = AppSettings.from_env()


def register_server(server_id: str) -> None:
    @app.function_name(f"server_{server_id.split('-')[-1]}")
    @app.service_bus_topic_trigger(
        arg_name="messages",
        topic_name=f"%{names.TOPIC}%",
        subscription_name=server_id,
        connection=names.SERVICE_BUS_CONNECTION,
        cardinality=func.Cardinality.MANY,
        # Bodies arrive as raw bytes (collection_bytes); the json shape re-encodes each body.
        data_type=func.DataType.BINARY,
    )
    # The Python worker refuses a PEP 585 list[...] annotation ("invalid non-type annotation").
    def on_messages(messages: typing.List[func.ServiceBusMessage]) -> None:  # noqa: UP006
        host().on_messages(server_id, messages)


for server_id in settings.all_servers:
    register_server(server_id)


@app.function_name("timer")
@app.timer_trigger(arg_name="timer", schedule=f"%{names.TIMER_SCHEDULE}%", use_monitor=False)
def on_timer(timer: func.TimerRequest) -> None:
    host().on_timer()


@app.function_name("post_command")
@app.route(route="commands", methods=["POST"])
def post_command(req: func.HttpRequest) -> func.HttpResponse:
    return host().post_command(req)


@app.function_name("get_command")
@app.route(route="commands/{request_id}", methods=["GET"])
def get_command(req: func.HttpRequest) -> func.HttpResponse:
    return host().get_command(req)


@app.function_name("get_key")
@app.route(route="kv/{key}", methods=["GET"])
def get_key(req: func.HttpRequest) -> func.HttpResponse:
    return host().get_key(req)


@app.function_name("get_cluster")
@app.route(route="cluster", methods=["GET"])
def get_cluster(req: func.HttpRequest) -> func.HttpResponse:
    return host().get_cluster(req)


@app.function_name("post_leader")
@app.route(route="cluster/leader", methods=["POST"])
def post_leader(req: func.HttpRequest) -> func.HttpResponse:
    return host().post_leader(req)


@app.function_name("change_servers")
@app.route(route="cluster/servers", methods=["POST", "DELETE"])
def change_servers(req: func.HttpRequest) -> func.HttpResponse:
    return host().change_servers(req)


# Anonymous, for availability tests: says only whether a leader is known.
@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return host().health(req)
