"""Random schedules with batched delivery, as Service Bus hands the function a batch: the
simulator delivers one message per step, so batches get their own property test here."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from raft.app.kv import encode
from raft.core.messages import ClientRequest, Envelope
from raft.core.state import Role
from tests.helpers import ManualCluster

ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["deliver", "duplicate", "drop", "tick", "submit"]),
        st.integers(min_value=0, max_value=4),
    ),
    max_size=120,
)


@settings(max_examples=100, deadline=None)
@given(ACTIONS)
def test_batched_delivery_with_loss_and_duplicates_keeps_raft_safe(
    actions: list[tuple[str, int]],
) -> None:
    cluster = ManualCluster(3)
    leaders: dict[int, str] = {}
    seq = 0
    for action, arg in actions:
        server = cluster.servers[arg % len(cluster.servers)]
        if action == "tick":
            cluster.now += 40 * (arg + 1)
            for handler in cluster.handlers.values():
                handler.tick(cluster.now)
        elif action == "submit":
            seq += 1
            command = encode({"op": "put", "key": f"k{arg}", "value": seq})
            cluster.bus.publish([Envelope("c", server, ClientRequest("c", seq, command, "c"))])
        else:
            batch = cluster.bus.drain(server)
            if action == "duplicate":
                batch = batch + batch[: arg + 1]
            if action != "drop" and batch:
                cluster.handlers[server].handle(batch, cluster.now)
        cluster.bus.drain("c")
        for server_id, handler in cluster.handlers.items():
            state = handler.state()
            if state.role is Role.LEADER:
                assert leaders.setdefault(state.current_term, server_id) == server_id
    committed = [h.state().log[: h.state().commit_index] for h in cluster.handlers.values()]
    longest = max(committed, key=len)
    assert all(log == longest[: len(log)] for log in committed)
