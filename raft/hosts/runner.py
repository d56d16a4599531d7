"""`python -m raft run`: the main job. Starts a cluster in one process over the in-memory bus
with real timers, waits for a leader, submits requests as a client and waits for each
committed response (the seed's `Raft.Azure --num-requests 5 --local-cluster-size 5`)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from raft.adapters.connections import AZURITE_CONNECTION_STRING, Connection, resolve
from raft.adapters.memory_bus import InMemoryBus
from raft.adapters.memory_store import InMemoryStore
from raft.app.kv import encode
from raft.core.messages import ClientStatus
from raft.core.state import Config
from raft.hosts.client import RaftClient
from raft.hosts.http_api import ApiLimits, ClusterApi
from raft.hosts.http_server import LOOPBACK, ApiServer
from raft.hosts.latency import Latency
from raft.hosts.local_cluster import LocalCluster
from raft.hosts.settings import DEFAULTS, STORAGE_CONNECTION, TABLE, server_ids
from raft.node.handler import NodeOptions
from raft.ports.store import Store


@dataclass
class RunReport:
    requested: int
    committed: int = 0
    leader: str = ""
    term: int = 0
    last_index: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    election_ms: float = 0.0
    servers: int = 0
    store: str = "memory"
    # With --grow-to: every change committed, and every request in the log exactly once.
    membership_ok: bool = True

    def to_json(self) -> dict[str, Any]:
        latency = Latency.of(self.latencies_ms)
        return {
            "requested": self.requested,
            "committed": self.committed,
            "leader": self.leader,
            "term": self.term,
            "last_index": self.last_index,
            "latency_ms": {"p50": latency.p50_ms, "p99": latency.p99_ms},
            "election_ms": round(self.election_ms, 3),
            "servers": self.servers,
            "store": self.store,
        }


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", type=int, default=5, help="cluster size (default 5)")
    parser.add_argument("--requests", type=int, default=5, help="requests to submit (default 5)")
    parser.add_argument(
        "--election-timeout-ms",
        type=int,
        default=150,
        help="minimum election timeout; the maximum is twice it (default 150)",
    )
    parser.add_argument("--heartbeat-ms", type=int, default=50, help="heartbeat period")
    parser.add_argument(
        "--request-timeout-s",
        type=float,
        default=10.0,
        help="give up on a request after this long (default 10)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the election timers")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument(
        "--store",
        choices=["memory", "tables", "azurite"],
        default="memory",
        help="where server state lives: in memory (default), Table Storage "
        "(--connection-string), or Azurite's default local endpoint",
    )
    parser.add_argument("--connection-string", help="Table Storage connection string")
    parser.add_argument("--table", default=DEFAULTS[TABLE], help="table name for --store tables")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="keep the cluster running and serve the HTTP API on 127.0.0.1",
    )
    parser.add_argument("--port", type=int, default=7071, help="port for --serve (default 7071)")
    parser.add_argument(
        "--grow-to",
        type=int,
        default=0,
        help="while the requests are written, add servers one at a time up to this many, "
        "then remove them again (membership change; default: none)",
    )
    parser.add_argument(
        "--functions-topology",
        action="store_true",
        help="host the app as Flex Consumption does (a timer instance, one or two racing "
        "instances per server's trigger, an HTTP instance, instances replaced at random) on a "
        "virtual clock with the app's production timing",
    )
    parser.add_argument(
        "--simulated-s",
        type=float,
        default=600.0,
        help="with --functions-topology, simulated seconds to run (default 600)",
    )
    parser.add_argument(
        "--churn-s",
        type=float,
        default=20.0,
        help="with --functions-topology, mean seconds between instance replacements "
        "(default 20; 0 for none)",
    )
    parser.add_argument(
        "--serve-for",
        type=float,
        default=0.0,
        help="with --serve, stop after this many seconds (default: until Ctrl-C)",
    )


def build_options(args: argparse.Namespace) -> NodeOptions:
    config = Config(
        election_timeout_min=args.election_timeout_ms,
        election_timeout_max=2 * args.election_timeout_ms,
        heartbeat_interval=args.heartbeat_ms,
    )
    return NodeOptions(config=config, seed=args.seed)


def run_requests(args: argparse.Namespace, store: Store, store_name: str, out: TextIO) -> int:
    if args.servers < 1 or args.requests < 0:
        raise SystemExit("--servers must be at least 1 and --requests not negative")
    servers = server_ids(args.servers)
    spares = server_ids(max(args.grow_to, args.servers))[args.servers :]
    bus = InMemoryBus()
    cluster = LocalCluster(servers, store, bus, build_options(args), spares=spares)
    report = RunReport(requested=args.requests, servers=args.servers, store=store_name)
    worker = threading.Thread(target=cluster.run_forever, name="raft-cluster", daemon=True)
    started = time.perf_counter()
    worker.start()
    try:
        states = cluster.states().values()
        resumed = max(s.last_index for s in states)
        if resumed:
            term = max(s.current_term for s in states)
            print(f"resuming from stored state: term {term}, last index {resumed}", file=out)
        leader = wait_for_leader(cluster, args.request_timeout_s)
        if leader is None:
            print("no leader elected", file=out)
        else:
            report.election_ms = (time.perf_counter() - started) * 1000
            print(
                f"leader elected: {leader} (term {cluster.states()[leader].current_term}) "
                f"after {report.election_ms:.1f} ms",
                file=out,
            )
            if spares:
                report.membership_ok = grow_and_shrink(cluster, bus, spares, args, report, out)
            else:
                submit_all(cluster, bus, servers, args, report, out)
    finally:
        cluster.stop()
        worker.join(timeout=5)
    final = cluster.leader()
    if final is not None:
        report.leader, report.term = final.server_id, final.current_term
    report.last_index = max(s.last_index for s in cluster.states().values())
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(f"{report.committed}/{report.requested} requests committed")
    ok = report.committed == report.requested and report.membership_ok
    return 0 if ok else 1


def wait_for_leader(cluster: LocalCluster, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        leader = cluster.leader()
        if leader is not None:
            return leader.server_id
        time.sleep(0.005)
    return None


def submit_all(
    cluster: LocalCluster,
    bus: InMemoryBus,
    servers: list[str],
    args: argparse.Namespace,
    report: RunReport,
    out: TextIO,
) -> None:
    # A fresh client id per run: a resumed cluster still holds the sessions of earlier runs.
    client = RaftClient(bus, servers, f"runner-{uuid.uuid4().hex[:12]}", cluster.clock)
    for number in range(1, args.requests + 1):
        command = encode({"op": "put", "key": f"key-{number}", "value": f"value-{number}"})
        sent = time.perf_counter()
        response = client.submit(command, args.request_timeout_s)
        latency = (time.perf_counter() - sent) * 1000
        if response is None or response.status is not ClientStatus.OK:
            status = "timed out" if response is None else response.status.value
            say(out, f"request {number}: {status}")
            continue
        report.committed += 1
        report.latencies_ms.append(latency)
        say(
            out,
            f"request {number}: committed at index {response.index} term {response.term} "
            f"in {latency:.1f} ms",
        )


def grow_and_shrink(
    cluster: LocalCluster,
    bus: InMemoryBus,
    spares: list[str],
    args: argparse.Namespace,
    report: RunReport,
    out: TextIO,
) -> bool:
    """Write the requests from another thread while the configuration grows by each spare,
    one at a time, and shrinks back; then check each request is in the log exactly once."""
    api = ClusterApi(
        cluster.servers + spares,
        cluster.store,
        bus,
        ApiLimits(wait_s=args.request_timeout_s),
        clock=cluster.clock,
    )
    writer = threading.Thread(
        target=submit_all, args=(cluster, bus, cluster.servers, args, report, out)
    )
    writer.start()
    changed = True
    for server, add in [*((s, True) for s in spares), *((s, False) for s in reversed(spares))]:
        answer = api.change_servers(json.dumps({"server": server}).encode(), add=add)
        verb = "added" if add else "removed"
        if answer.status == 200:
            say(out, f"{verb} {server}: configuration {answer.body['servers']}")
        else:
            say(out, f"could not change {server}: {answer.body}")
            changed = False
    writer.join()
    leader = cluster.leader()
    if leader is None:
        return False
    counts: dict[tuple[str, int], int] = {}
    for entry in leader.log:
        if entry.client_id.startswith("runner-"):
            counts[(entry.client_id, entry.seq)] = counts.get((entry.client_id, entry.seq), 0) + 1
    once = all(n == 1 for n in counts.values())
    print(
        f"configuration back to {list(leader.servers)}; "
        f"{len(counts)} requests in the log, each {'once' if once else 'NOT once'}",
        file=out,
    )
    return changed and once


_OUTPUT = threading.Lock()


def say(out: TextIO, line: str) -> None:
    """One whole line, also when the writer and the membership changes print at once."""
    with _OUTPUT:
        out.write(line + "\n")
        out.flush()


def open_store(args: argparse.Namespace) -> Store:
    return store_factory(args)()


def store_factory(args: argparse.Namespace) -> Callable[[], Store]:
    """Stores over one storage: the same in-memory store each time, or a new TableStore (a
    function instance's own client and row cache) over one table."""
    if args.store == "memory":
        shared = InMemoryStore()
        return lambda: shared
    from raft.adapters.table_store import TableStore

    if args.store == "azurite":
        connection = Connection(connection_string=AZURITE_CONNECTION_STRING)
    elif args.connection_string:
        connection = resolve(
            STORAGE_CONNECTION, {STORAGE_CONNECTION: args.connection_string}, "tables"
        )
    else:
        raise SystemExit("--store tables needs --connection-string")
    return lambda: TableStore.from_connection(connection, args.table)


def serve(args: argparse.Namespace, store: Store, out: TextIO) -> int:
    servers = server_ids(args.servers)
    bus = InMemoryBus()
    cluster = LocalCluster(servers, store, bus, build_options(args))
    api = ClusterApi(
        servers, store, bus, ApiLimits(wait_s=args.request_timeout_s), clock=cluster.clock
    )
    server = ApiServer(api, args.port)
    worker = threading.Thread(target=cluster.run_forever, name="raft-cluster", daemon=True)
    worker.start()
    server.start()
    print(
        f"serving http://{LOOPBACK}:{server.server_address[1]}/api with {args.servers} servers "
        f"({args.store} store); Ctrl-C stops",
        file=out,
        flush=True,
    )
    try:
        if args.serve_for:
            time.sleep(args.serve_for)
        else:
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        cluster.stop()
        worker.join(timeout=5)
    return 0


def run(args: argparse.Namespace) -> int:
    from azure.core.exceptions import ServiceRequestError

    out = sys.stderr if args.json else sys.stdout
    try:
        if args.functions_topology:
            return run_functions_topology(args, out)
        store = open_store(args)
        if args.serve:
            return serve(args, store, out)
        return run_requests(args, store, args.store, out)
    except ServiceRequestError as exc:
        hint = " (start it with scripts/azurite)" if args.store == "azurite" else ""
        print(f"cannot reach Table Storage{hint}: {exc}", file=sys.stderr)
        return 2


def run_functions_topology(args: argparse.Namespace, out: TextIO) -> int:
    """The cluster as Flex Consumption hosts it, on a virtual clock (raft/hosts/flex.py)."""
    from raft.hosts.flex import FlexTiming, FlexTopology
    from raft.hosts.functions import node_options
    from raft.hosts.settings import SERVER_COUNT, AppSettings

    settings = AppSettings.from_env({SERVER_COUNT: str(args.servers)})
    if args.store != "memory" and args.table == DEFAULTS[TABLE]:
        args.table = f"rafttopology{uuid.uuid4().hex[:12]}"  # a fresh cluster for each run
    timing = FlexTiming(churn_every_ms=int(args.churn_s * 1000))
    options = node_options(settings)
    config = options.config
    where = f"{args.store} store" + (f", table {args.table}" if args.store != "memory" else "")
    print(
        f"functions topology: {args.servers} servers, {args.simulated_s:g} simulated s ({where}); "
        f"timer {timing.timer_ms} ms, election {config.election_timeout_min}-"
        f"{config.election_timeout_max} ms, heartbeat {config.heartbeat_interval} ms",
        file=out,
    )
    topology = FlexTopology(settings.servers, store_factory(args), options, timing, args.seed)
    report = topology.run(int(args.simulated_s * 1000))
    first = "none" if report.first_leader_s is None else f"{report.first_leader_s:g} s"
    print(
        f"first leader after {first}; a leader {report.leader_fraction:.1%} of the time since",
        file=out,
    )
    print(
        f"{report.commands_committed}/{report.commands_sent} commands committed; "
        f"{report.instances_replaced} instances replaced; highest term {report.max_term}",
        file=out,
    )
    if args.json:
        print(json.dumps(report.to_json()))
    healthy = report.leader_fraction >= 0.99
    return 0 if healthy and report.commands_committed == report.commands_sent else 1
