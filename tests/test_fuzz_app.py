"""Fuzzing the application's validation and the node handler.

`validate` either accepts a command or raises CommandError (nothing else), and whatever it
accepts, every server applies without an error result. A node handler fed any batch of
envelopes never raises, leaves a state a cold instance can load, and changes nothing when the
batch holds only what must be refused: Raft messages from outside the cluster, client
responses, and client requests whose command is invalid.

`RAFT_FUZZ_EXAMPLES` sets how many inputs each test tries (scripts/fuzz)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from raft.adapters.memory_bus import InMemoryBus
from raft.app.kv import KeyValueStore, encode, parse_command
from raft.app.state_machine import CommandError
from raft.core.messages import (
    AppendEntries,
    ChangeMembership,
    ClientRequest,
    ClientResponse,
    Envelope,
    InstallSnapshot,
    TransferLeadership,
)
from raft.node.handler import NodeHandler, NodeOptions
from tests.fuzzing import SERVERS, command, envelope, fuzz_settings, mutate, tally
from tests.helpers import CONFIG, ManualCluster


@st.composite
def command_text(draw: st.DrawFn) -> str:
    raw = mutate(draw(st.data()), json.dumps(draw(command)).encode())
    return raw.decode("utf-8", errors=draw(st.sampled_from(["replace", "surrogateescape"])))


@fuzz_settings()
@given(command_text())
def test_validate_accepts_or_raises_command_error_and_what_it_accepts_applies(text: str) -> None:
    machine = KeyValueStore()
    try:
        machine.validate(text)
    except CommandError as exc:
        assert str(exc)
        tally("application validate", "CommandError")
        return
    result = json.loads(machine.apply(text))
    assert "error" not in result, result
    # The canonical form the API logs is accepted too, and the state survives a snapshot.
    machine.validate(encode(parse_command(text)))
    copy = KeyValueStore()
    copy.restore(machine.snapshot())
    assert copy.data == machine.data
    tally("application validate", "accepted")


def refused(env: Envelope, target: str) -> bool:
    """Whether `target` must change nothing for this envelope: its own messages, Raft
    messages from outside the cluster other than a leader's, client responses, and requests
    with invalid commands."""
    m = env.message
    if isinstance(m, ClientResponse):
        return True
    if isinstance(m, ClientRequest):
        try:
            KeyValueStore().validate(m.data)
        except CommandError:
            return True
        return False
    if isinstance(m, TransferLeadership | ChangeMembership):
        return False  # an operator's request: from any sender (the HTTP API's is "operator")
    if env.sender == target:
        return True
    # A leader may reach a server that does not know it yet (added to the configuration).
    return env.sender not in SERVERS and not isinstance(m, AppendEntries | InstallSnapshot)


def cluster_with_history() -> ManualCluster:
    """A 3-server cluster with a leader, a few commands applied and a snapshot taken."""
    cluster = ManualCluster(3, NodeOptions(config=CONFIG, snapshot_every=4, compaction_keep=1))
    cluster.elect()
    for seq in range(1, 7):
        put = json.dumps({"op": "put", "key": f"k{seq}", "value": seq})
        cluster.submit(ClientRequest("c", seq, put, "c"))
    return cluster


@fuzz_settings(share=0.5)
@given(st.lists(envelope, min_size=1, max_size=4), st.sampled_from(SERVERS), st.booleans())
def test_a_node_handler_fed_any_batch_never_raises_and_refuses_what_it_must(
    batch: list[Envelope], target: str, from_members: bool
) -> None:
    cluster = cluster_with_history()
    if from_members:  # most envelopes then come from the cluster, and reach the core
        batch = [Envelope(SERVERS[i % 3], target, e.message) for i, e in enumerate(batch)]
    batch = [Envelope(e.sender, target, e.message) for e in batch]
    before = cluster.store.read_state(target)
    cluster.handlers[target].handle(batch, cluster.now + 5)
    if all(refused(e, target) for e in batch):
        assert cluster.store.read_state(target) == before
        tally("node handler", "refused, nothing changed")
    else:
        tally("node handler", "stepped")
    # A cold instance loads what was saved, and steps on from it.
    cold = NodeHandler(target, SERVERS, cluster.store, InMemoryBus(), cluster.options)
    cold.tick(cluster.now + 10)
