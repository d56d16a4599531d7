"""Small builders for protocol-level tests: a server with a given term and log, and a way to
hand it one message and see what it sends back."""

from __future__ import annotations

from collections.abc import Sequence

from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    Envelope,
    Message,
    RequestVote,
    RequestVoteResponse,
)
from raft.core.server import RaftServer
from raft.core.state import Config, Role, ServerState

SERVERS = ("s1", "s2", "s3", "s4", "s5")
CONFIG = Config(election_timeout_min=150, election_timeout_max=300, heartbeat_interval=50)


def entries(*terms: int) -> list[Entry]:
    """Log entries with the given terms; each carries its position so logs are comparable."""
    return [Entry(term=t, client_id="c", seq=i, data=f"x{i}") for i, t in enumerate(terms, 1)]


def server(
    server_id: str = "s1",
    *,
    servers: Sequence[str] = SERVERS[:3],
    term: int = 0,
    log: Sequence[int] = (),
    voted_for: str = "",
    commit: int = 0,
    config: Config = CONFIG,
) -> RaftServer:
    state = ServerState(
        server_id,
        tuple(servers),
        rng=7,
        current_term=term,
        voted_for=voted_for,
        log=entries(*log),
        commit_index=commit,
    )
    return RaftServer(state, config)


def deliver(target: RaftServer, sender: str, message: Message, now: int = 0) -> list[Message]:
    """Step one message and return the messages sent in response."""
    target.step(Envelope(sender, target.state.server_id, message), now)
    return [e.message for e in target.ready().messages]


def sent(target: RaftServer) -> list[Envelope]:
    return list(target.ready().messages)


def make_leader(target: RaftServer, now: int = 1000) -> None:
    """Run a real (pre-)election that every peer grants."""
    if target.state.election_deadline == 0:
        target.tick(0)
    target.tick(now)
    for out in sent(target):
        m = out.message
        if isinstance(m, RequestVote):
            target.step(
                Envelope(
                    out.to,
                    target.state.server_id,
                    RequestVoteResponse(m.term, out.to, True, m.pre_vote),
                ),
                now,
            )
    for out in sent(target):
        m = out.message
        if isinstance(m, RequestVote):
            target.step(
                Envelope(
                    out.to,
                    target.state.server_id,
                    RequestVoteResponse(m.term, out.to, True, m.pre_vote),
                ),
                now,
            )
    assert target.state.role is Role.LEADER
    sent(target)


def vote_request(
    term: int, candidate: str, last_index: int, last_term: int, pre_vote: bool = False
) -> RequestVote:
    return RequestVote(term, candidate, last_index, last_term, pre_vote)


def append(
    term: int, leader: str, prev_index: int, prev_term: int, new: Sequence[Entry], commit: int = 0
) -> AppendEntries:
    return AppendEntries(term, leader, prev_index, prev_term, tuple(new), commit)


def ack(term: int, follower: str, match: int) -> AppendEntriesResponse:
    return AppendEntriesResponse(term, follower, True, match)
