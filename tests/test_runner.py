"""The main job: `python -m raft run`."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raft", "run", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_default_run_commits_five_requests_on_five_servers() -> None:
    done = run()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "5/5 requests committed"
    assert any(line.startswith("leader elected: server-") for line in lines)
    assert sum(line.startswith("request ") and "committed at index" in line for line in lines) == 5


def test_json_run_prints_one_object_with_the_documented_fields() -> None:
    done = run("--servers", "3", "--requests", "12", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["requested"] == report["committed"] == 12
    assert report["leader"].startswith("server-") and report["term"] >= 1
    assert report["last_index"] >= 13  # the leader's no-op plus twelve commands
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]


def test_single_server_cluster_commits_on_its_own() -> None:
    done = run("--servers", "1", "--requests", "3")
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "3/3 requests committed"


def test_three_servers_grow_to_five_and_back_while_a_client_writes() -> None:
    done = run("--servers", "3", "--grow-to", "5", "--requests", "40")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    changes = [line.split(":")[0] for line in lines if line.startswith(("added", "removed"))]
    assert changes == ["added server-4", "added server-5", "removed server-5", "removed server-4"]
    assert (
        "configuration back to ['server-1', 'server-2', 'server-3']; 40 requests in the log, "
        "each once" in lines
    )
    assert lines[-1] == "40/40 requests committed"
