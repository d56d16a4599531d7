"""The main job with its state in Table Storage (Azurite): a second run resumes from the
persisted terms and logs, and the first run's commands are still applied."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid

from raft.adapters.connections import Connection
from raft.adapters.memory_bus import InMemoryBus
from raft.adapters.table_store import TableStore
from raft.app.kv import encode
from raft.hosts.client import RaftClient
from raft.hosts.local_cluster import LocalCluster
from raft.hosts.settings import server_ids
from raft.node.handler import NodeOptions


def run_on_tables(connection: str, table: str) -> dict[str, object]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "raft",
            "run",
            "--servers",
            "3",
            "--requests",
            "4",
            "--json",
            "--store",
            "tables",
            "--connection-string",
            connection,
            "--table",
            table,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {"report": json.loads(done.stdout), "progress": done.stderr}


def test_second_run_resumes_from_persisted_state_and_keeps_earlier_commands(azurite: str) -> None:
    table = f"runner{uuid.uuid4().hex[:10]}"
    first = run_on_tables(azurite, table)
    second = run_on_tables(azurite, table)
    before, after = first["report"], second["report"]
    assert before["committed"] == after["committed"] == 4  # type: ignore[index]
    assert "resuming from stored state" in second["progress"]  # type: ignore[operator]
    assert after["term"] >= before["term"]  # type: ignore[index, operator]
    assert after["last_index"] > before["last_index"]  # type: ignore[index, operator]

    store = TableStore.from_connection(Connection(connection_string=azurite), table)
    bus = InMemoryBus()
    servers = server_ids(3)
    cluster = LocalCluster(servers, store, bus, NodeOptions())
    worker = threading.Thread(target=cluster.run_forever, daemon=True)
    worker.start()
    try:
        response = RaftClient(bus, servers, "checker").submit(
            encode({"op": "get", "key": "key-1"}), timeout_s=30
        )
    finally:
        cluster.stop()
        worker.join(timeout=5)
    assert response is not None and json.loads(response.result)["value"] == "value-1"
