"""The HTTP API (host-neutral): submit and wait, idempotency, linearizable reads, clear errors
that change nothing."""

from __future__ import annotations

import json

import pytest

from raft.hosts.http_api import ApiLimits, ClusterApi
from tests.helpers import ManualCluster


def make_api(cluster: ManualCluster, **limits: float) -> ClusterApi:
    # Waiting advances the simulated cluster: deterministic, no threads.
    return ClusterApi(
        cluster.servers,
        cluster.store,
        cluster.bus,
        ApiLimits(**{"wait_s": 5.0, "poll_s": 0.0, **limits}),  # type: ignore[arg-type]
        sleep=lambda _s: cluster.advance(10),
    )


@pytest.fixture
def cluster() -> ManualCluster:
    c = ManualCluster(3)
    c.elect()
    return c


def command(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_post_command_waits_for_the_committed_result(cluster: ManualCluster) -> None:
    response = make_api(cluster).post_command(command(op="put", key="k", value="v"), "r1")
    assert response.status == 200
    assert response.body["result"] == {"ok": True, "previous": None}
    assert response.body["index"] > 0 and response.body["term"] >= 1


def test_post_with_the_same_request_id_is_applied_once(cluster: ManualCluster) -> None:
    api = make_api(cluster)
    first = api.post_command(command(op="cas", key="n", expected=None, value=1), "once")
    again = api.post_command(command(op="cas", key="n", expected=None, value=1), "once")
    assert again.body == first.body
    assert first.body["result"] == {"ok": True, "value": 1}


def test_get_key_is_a_read_through_the_log(cluster: ManualCluster) -> None:
    api = make_api(cluster)
    api.post_command(command(op="put", key="colour", value="blue"), None)
    read = api.get_key("colour")
    assert read.status == 200
    assert (read.body["found"], read.body["value"]) == (True, "blue")
    assert not make_api(cluster).get_key("missing").body["found"]


def test_get_cluster_shows_every_server_and_the_leader(cluster: ManualCluster) -> None:
    body = make_api(cluster).get_cluster().body
    assert body["leader"] == cluster.leader()
    assert [s["id"] for s in body["servers"]] == cluster.servers
    roles = sorted(s["role"] for s in body["servers"])
    assert roles == ["follower", "follower", "leader"]
    assert all(s["last_activity_ms"] is not None for s in body["servers"])


BAD_INPUT = {
    "not json": (b"{oops", 400),
    "not an object": (b"[1]", 400),
    "unknown op": (command(op="explode", key="k"), 400),
    "missing key": (command(op="get"), 400),
    "oversized": (command(op="put", key="k", value="x" * 20_000), 413),
}


@pytest.mark.parametrize(("body", "status"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_gets_a_clear_error_and_changes_nothing(
    cluster: ManualCluster, body: bytes, status: int
) -> None:
    before = {s: cluster.store.load(s) for s in cluster.servers}
    response = make_api(cluster).post_command(body, None)
    assert response.status == status and response.body["error"]
    assert {s: cluster.store.load(s) for s in cluster.servers} == before


def test_malformed_request_id_is_rejected(cluster: ManualCluster) -> None:
    response = make_api(cluster).post_command(command(op="get", key="k"), "bad id/")
    assert response.status == 400


def test_no_known_leader_is_503_with_a_retry_hint() -> None:
    fresh = ManualCluster(3)
    response = make_api(fresh).post_command(command(op="get", key="k"), None)
    assert response.status == 503 and response.headers["Retry-After"]


def test_leader_with_too_many_uncommitted_entries_is_503_overloaded(
    cluster: ManualCluster,
) -> None:
    response = make_api(cluster, max_uncommitted=0).post_command(command(op="get", key="k"), None)
    assert response.status == 503 and "overloaded" in response.body["error"]


def test_slow_commit_answers_202_with_a_status_url_that_reports_later(
    cluster: ManualCluster,
) -> None:
    stalled = ClusterApi(
        cluster.servers,
        cluster.store,
        cluster.bus,
        ApiLimits(wait_s=0.0, poll_s=0.0),
        sleep=lambda _s: None,
    )
    accepted = stalled.post_command(command(op="put", key="k", value=1), "slow")
    assert accepted.status == 202
    assert accepted.headers["Location"] == "/api/commands/slow"
    assert stalled.get_command("slow").status == 202
    cluster.advance(100)
    later = stalled.get_command("slow")
    assert later.status == 200 and later.body["result"] == {"ok": True, "previous": None}


def test_leadership_moves_to_the_named_server_and_no_acknowledged_write_is_lost() -> None:
    cluster = ManualCluster(3)
    leader = cluster.elect()
    api = ClusterApi(
        cluster.servers,
        cluster.store,
        cluster.bus,
        ApiLimits(wait_s=5.0, poll_s=0.0),
        sleep=lambda _s: cluster.advance(10),
    )
    for n in range(5):
        body = json.dumps({"op": "put", "key": f"k{n}", "value": n}).encode()
        assert api.post_command(body, f"w{n}").status == 200
    target = next(s for s in cluster.servers if s != leader)
    moved = api.post_leader(json.dumps({"server": target}).encode())
    assert moved.status == 200 and moved.body["leader"] == target
    assert api.find_leader()[0] == target  # type: ignore[index]
    for n in range(5):
        read = api.get_key(f"k{n}")
        assert (read.status, read.body["value"]) == (200, n)


def test_leadership_transfer_to_an_unknown_server_is_404() -> None:
    cluster = ManualCluster(3)
    cluster.elect()
    api = ClusterApi(cluster.servers, cluster.store, cluster.bus)
    assert api.post_leader(b'{"server": "server-9"}').status == 404
    assert api.post_leader(b"nope").status == 400
