"""`run --serve`: the same API over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from raft.hosts.http_api import ApiLimits, ClusterApi
from raft.hosts.http_server import ApiServer
from tests.helpers import ManualCluster


@pytest.fixture
def base_url() -> Iterator[str]:
    cluster = ManualCluster(3)
    cluster.elect()
    api = ClusterApi(
        cluster.servers,
        cluster.store,
        cluster.bus,
        ApiLimits(wait_s=5.0, poll_s=0.0),
        sleep=lambda _s: cluster.advance(10),
    )
    server = ApiServer(api, port=0)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def call(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url, data=body, headers=headers or {}, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_served_api_commits_a_command_and_reads_it_back(base_url: str) -> None:
    status, body = call(
        f"{base_url}/commands", b'{"op": "put", "key": "k", "value": 7}', {"x-request-id": "req-1"}
    )
    assert status == 200 and body["result"] == {"ok": True, "previous": None}
    assert call(f"{base_url}/kv/k")[1]["value"] == 7
    assert call(f"{base_url}/commands/req-1")[1]["index"] == body["index"]


def test_served_api_reports_the_cluster(base_url: str) -> None:
    status, body = call(f"{base_url}/cluster")
    assert status == 200 and body["leader"]


def test_served_api_answers_bad_json_with_400(base_url: str) -> None:
    status, body = call(f"{base_url}/commands", b"{nope")
    assert status == 400 and "not JSON" in str(body["error"])


def test_unknown_route_is_404(base_url: str) -> None:
    assert call(f"{base_url}/nothing")[0] == 404


def test_twenty_reads_through_run_serve_leave_every_log_unchanged() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "raft", "run", "--serve", "--port", "0", "--serve-for", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        base = line.split()[1]  # "serving http://127.0.0.1:PORT/api with ..."
        for _ in range(100):  # wait for a leader
            if call(f"{base}/cluster")[1]["leader"]:
                break
            time.sleep(0.05)
        status, _ = call(f"{base}/commands", b'{"op": "put", "key": "k", "value": 1}')
        assert status == 200
        before = call(f"{base}/cluster")[1]["servers"]
        for _ in range(20):
            status, body = call(f"{base}/kv/k")
            assert (status, body["value"]) == (200, 1)
        after = call(f"{base}/cluster")[1]["servers"]
        last = {s["id"]: s["last_index"] for s in before}  # type: ignore[index,union-attr]
        assert {s["id"]: s["last_index"] for s in after} == last  # type: ignore[index,union-attr]
    finally:
        process.terminate()
        process.wait(timeout=10)
