"""Small builders for protocol-level tests: a server with a given term and log, and a way to
hand it one message and see what it sends back."""

from __future__ import annotations

from collections.abc import Sequence

from raft.adapters.memory_bus import InMemoryBus
from raft.adapters.memory_store import InMemoryStore
from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ClientRequest,
    ClientResponse,
    Entry,
    Envelope,
    Message,
    RequestVote,
    RequestVoteResponse,
)
from raft.core.server import RaftServer
from raft.core.state import Config, Role, ServerState
from raft.node.handler import NodeHandler, NodeOptions

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
    """Run a real election, pre-vote round then vote round, that every peer grants."""
    if target.state.election_deadline == 0:
        target.tick(0)
    target.tick(now)
    for _round in ("pre-vote", "vote"):
        for out in sent(target):
            m = out.message
            if isinstance(m, RequestVote):
                grant = RequestVoteResponse(m.term, out.to, True, m.pre_vote)
                target.step(Envelope(out.to, target.state.server_id, grant), now)
    assert target.state.role is Role.LEADER
    sent(target)


def committed_leader(now: int = 1000) -> RaftServer:
    """s1 leads s1..s3 in term 1, and s2 has acknowledged its no-op, so it is committed."""
    leader = server("s1")
    make_leader(leader, now)
    deliver(leader, "s2", ack(1, "s2", 1), now)
    assert leader.state.commit_index == 1
    return leader


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


class ManualCluster:
    """Node handlers over one in-memory store and bus, with time and delivery driven by the
    test: nothing happens until the test says so."""

    def __init__(self, size: int = 3, options: NodeOptions | None = None) -> None:
        self.servers = [f"server-{i}" for i in range(1, size + 1)]
        self.store = InMemoryStore()
        self.bus = InMemoryBus()
        self.options = options or NodeOptions(config=CONFIG)
        self.handlers = {
            s: NodeHandler(s, self.servers, self.store, self.bus, self.options)
            for s in self.servers
        }
        self.now = 0

    def deliver_all(self, max_rounds: int = 100) -> None:
        for _ in range(max_rounds):
            busy = False
            for server_id, handler in self.handlers.items():
                batch = self.bus.drain(server_id)
                if batch:
                    busy = True
                    handler.handle(batch, self.now)
            if not busy:
                return

    def advance(self, ms: int) -> None:
        for _ in range(ms // 10):
            self.now += 10
            for handler in self.handlers.values():
                handler.tick(self.now)
            self.deliver_all()

    def leader(self) -> str:
        leaders = [s for s, h in self.handlers.items() if h.state().role is Role.LEADER]
        return leaders[0] if len(leaders) == 1 else ""

    def elect(self) -> str:
        for _ in range(200):
            if self.leader():
                return self.leader()
            self.advance(10)
        raise AssertionError("no leader elected")

    def submit(self, request: ClientRequest, to: str | None = None) -> list[ClientResponse]:
        self.bus.publish([Envelope(request.client_id, to or self.leader(), request)])
        self.deliver_all()
        return [
            e.message
            for e in self.bus.drain(request.client_id)
            if isinstance(e.message, ClientResponse) and e.message.seq == request.seq
        ]
