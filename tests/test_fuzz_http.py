"""Fuzzing the HTTP API: valid commands, mutated byte by byte and field by field, and
arbitrary bytes, as POST bodies with any request id. Only documented statuses may follow
(200, 202, 400, 413, 503: never a 500 or an exception); a refusal says why and changes
nothing; and a command the API accepted is never refused by the leader.

`RAFT_FUZZ_EXAMPLES` sets how many inputs each test tries (scripts/fuzz)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from raft.hosts.http_api import REQUEST_ID, ApiLimits, ClusterApi
from tests.fuzzing import command, fuzz_settings, key, mutate, tally
from tests.helpers import ManualCluster

DOCUMENTED = {200, 202, 400, 413, 503}

request_id = st.one_of(st.none(), st.from_regex(REQUEST_ID, fullmatch=True), st.text(max_size=110))


def api_for(cluster: ManualCluster) -> ClusterApi:
    return ClusterApi(
        cluster.servers,
        cluster.store,
        cluster.bus,
        ApiLimits(max_command_bytes=2048, wait_s=2.0, poll_s=0.0),
        sleep=lambda _s: cluster.advance(10),
    )


@st.composite
def body(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    text = json.dumps(draw(command), ensure_ascii=draw(st.booleans()))
    return mutate(draw(st.data()), text.encode())


@fuzz_settings()
@given(body(), request_id)
def test_any_post_body_gets_a_documented_status_and_a_refusal_changes_nothing(
    raw: bytes, rid: str | None
) -> None:
    cluster = ManualCluster(3)
    cluster.elect()
    before = {s: cluster.store.load(s) for s in cluster.servers}
    response = api_for(cluster).post_command(raw, rid)
    assert response.status in DOCUMENTED, response
    json.loads(response.text())
    if response.status in (400, 413):
        assert response.body["error"]
        assert {s: cluster.store.load(s) for s in cluster.servers} == before
        assert cluster.bus.pending() == 0
    elif response.status == 200:
        # The leader applied what the API accepted: a result, never a validation error.
        result = response.body["result"]
        assert "ok" in result and "error" not in result, result
    tally("HTTP API, POST /api/commands", str(response.status))


@fuzz_settings(share=0.3)
@given(st.one_of(key, st.text(max_size=1100)))
def test_any_key_read_gets_a_documented_status(k: str) -> None:
    cluster = ManualCluster(3)
    cluster.elect()
    response = api_for(cluster).get_key(k)
    assert response.status in DOCUMENTED
    json.loads(response.text())
    tally("HTTP API, GET /api/kv/{key}", str(response.status))


@fuzz_settings(share=0.3)
@given(st.text(max_size=120))
def test_any_status_lookup_gets_a_documented_status(rid: str) -> None:
    cluster = ManualCluster(3)
    response = api_for(cluster).get_command(rid)
    assert response.status in {200, 202, 400}
    tally("HTTP API, GET /api/commands/{id}", str(response.status))
