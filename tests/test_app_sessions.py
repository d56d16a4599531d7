"""Client sessions: exactly-once application, expiry on the log's clock (thesis §6.3)."""

from __future__ import annotations

from raft.app.kv import KeyValueStore, encode
from raft.app.sessions import AppliedState, SessionPolicy
from raft.core.messages import ClientStatus, Entry


def put(key: str, value: object) -> str:
    return encode({"op": "put", "key": key, "value": value})


def applied_state(**policy: int) -> AppliedState:
    return AppliedState(KeyValueStore(), SessionPolicy(**policy))


def request(client: str, seq: int, issued_at: int, time: int, value: object = 1) -> Entry:
    return Entry(1, client, seq, put("k", value), "", issued_at, time)


def test_a_duplicate_of_the_last_request_returns_the_recorded_session() -> None:
    state = applied_state()
    first = state.apply(1, request("a", 1, 100, 100))
    assert state.apply(2, request("a", 1, 100, 150)) == first


def test_an_older_request_of_a_live_session_is_stale() -> None:
    state = applied_state()
    state.apply(1, request("a", 2, 100, 100))
    assert state.apply(2, request("a", 1, 90, 110)) is ClientStatus.STALE


def test_a_session_idle_past_the_retention_expires_when_the_log_clock_passes_it() -> None:
    state = applied_state(retention_ms=1_000)
    state.apply(1, request("a", 1, 100, 100))
    state.apply(2, request("b", 1, 1_050, 1_050))
    assert set(state.sessions) == {"a", "b"}
    state.apply(3, Entry(2, time=1_101))  # a leader's no-op moves the clock too
    assert set(state.sessions) == {"b"} and state.floor == 100


def test_a_duplicate_of_an_expired_request_is_refused_forever() -> None:
    state = applied_state(max_sessions=1)
    state.apply(1, request("a", 1, 100, 100, "A"))
    state.apply(2, request("b", 1, 200, 200, "B"))  # evicts a
    assert state.apply(3, request("a", 1, 100, 300, "A")) is ClientStatus.EXPIRED
    assert '"value":"B"' in state.machine.apply(encode({"op": "get", "key": "k"}))


def test_a_new_request_issued_after_the_floor_is_applied() -> None:
    state = applied_state(max_sessions=1)
    state.apply(1, request("a", 1, 100, 100))
    state.apply(2, request("b", 1, 200, 200))
    assert state.apply(3, request("a", 2, 250, 300)) is not ClientStatus.EXPIRED


def test_a_request_issued_more_than_the_retention_before_the_clock_is_expired() -> None:
    state = applied_state(retention_ms=1_000)
    state.apply(1, Entry(1, time=5_000))
    assert state.apply(2, request("a", 1, 3_999, 5_000)) is ClientStatus.EXPIRED


def test_only_results_stored_for_polling_are_queued_for_deletion() -> None:
    state = applied_state(max_sessions=1)
    state.apply(1, request("polled", 1, 1, 1))
    state.apply(2, Entry(1, "replied", 1, put("k", 2), "replied", 2, 2))
    state.apply(3, request("last", 1, 3, 3))
    assert state.expired == ["polled"]


def test_snapshot_round_trips_sessions_clock_and_floor() -> None:
    state = applied_state(max_sessions=1, retention_ms=1_000)
    state.apply(1, request("a", 1, 100, 100))
    state.apply(2, request("b", 1, 200, 200))
    restored = AppliedState.restore(state.snapshot(), KeyValueStore, state.policy)
    assert restored.snapshot() == state.snapshot()
    assert (restored.clock, restored.floor, restored.expired) == (200, 100, ["a"])
