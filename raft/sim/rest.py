"""The settled cluster at rest, once faults have stopped and the liveness monitor cooled down
(`Simulator.settle`): what users and operators rely on that no fault excuses any more.

- `steady_load`: one client sends a command per heartbeat interval for an election timeout;
  no server starts a term and the leader stays (stability), servers send no more messages
  than heartbeats and the commands need (cost), no follower goes a heartbeat interval
  without hearing from the leader while it is awake (heartbeats), and in the end every
  member follows the leader and names it (followers).
- `reconfigure`: adding back a server the faulty prefix left out, or else removing a
  follower and adding it back (thesis §4.1): each change commits, the members catch up, and
  no term starts.
- `quiet` (property `idle`): left idle, the group quiesces: no term starts, the leader
  stays, heartbeats keep coming until it quiesces, and servers send one another no more than
  the rounds quiescing takes plus one check round per quiesce interval (without quiescence,
  a heartbeat round per interval).
- `transfer`: a leadership transfer an operator asks of the leader completes (thesis
  §3.10): the target leads the next term before the leader's own deadline to give up.
- `clock_jumps`: the leader's clock jumps back, then a follower's forward, by the faulty
  prefix's largest skew: no term starts and the leader stays.
- `catch_up`: a follower cut off while commands commit, then reconnected, catches up at once
  and with no more messages than the entries or snapshot chunks it lacks need.

Each phase runs fair steps (oldest event first) until what it waits for holds or its
virtual-time bound passes, which is a violation; steps are capped per virtual millisecond as
in `Liveness`, so a message storm ends a phase too.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Protocol

from raft.core.messages import (
    ChangeMembership,
    Envelope,
    TimeoutNow,
    TransferLeadership,
)
from raft.core.server import MAX_FORWARD_HOPS
from raft.core.state import Config
from raft.sim.clients import SimClient
from raft.sim.injector import SKEWS
from raft.sim.monitors import Stability, Violation
from raft.sim.network import Network
from raft.sim.schedule import ScheduleSpec, SimSetup
from raft.sim.storage import PersistedView


class Simulator(Protocol):
    """What the phases need of the simulator."""

    setup: SimSetup
    spec: ScheduleSpec
    config: Config
    servers: tuple[str, ...]
    views: dict[str, PersistedView]
    clients: list[SimClient]
    network: Network
    now: int
    step_no: int
    server_messages: int
    link_messages: Counter[tuple[str, str]]
    issuing: bool
    violation: Violation | None

    def step(self) -> None: ...
    def next_time(self) -> int: ...
    def violate(self, prop: str, message: str) -> None: ...
    def leaders(self) -> list[str]: ...
    def role_of(self, server: str) -> str: ...
    def unfinished(self) -> str | None: ...
    def enqueue(self, envelope: Envelope) -> None: ...
    def wake(self, client: SimClient) -> None: ...
    def set_skew(self, server: str, offset: int) -> None: ...
    def snapshot_chars(self, server: str) -> int: ...


HEARTBEATS = "heartbeats"
FOLLOWERS = "followers"
QUIET = "idle"
TRANSFER = "leadership-transfer"
MEMBERSHIP = "membership-change"
CLOCK_JUMP = "clock-jump"
CATCH_UP = "catch-up"
ISOLATED_LEADER = "isolated-leader"
# Messages that ask for an election.
ELECTIONS = (TransferLeadership, TimeoutNow)
# Steps allowed per virtual millisecond before a phase counts as a message storm.
STEPS_PER_MS = 10
# Heartbeat rounds a leader may need to quiesce once the load stops: one to carry the last
# command's commit, one to find the group settled, one for a request still in flight.
ROUNDS_TO_QUIESCE = 3
# Who asks for transfers and membership changes.
OPERATOR = "operator"


Check = Callable[[], "str | None"]


def at_rest(sim: Simulator) -> None:
    """The steady load, then the other phases, each leaving the cluster settled for the
    next: only if no server is ahead of the leader's term (one left out of the
    configuration may be: brought back, it would rightly force an election)."""
    if not steady_load(sim):
        return
    leader = sim.leaders()[0]
    if sim.views[leader].state["current_term"] != _newest_term(sim):
        return
    for phase in (reconfigure, quiet, transfer, clock_jumps, catch_up, isolated_leader):
        if sim.violation is not None:
            return
        phase(sim)


def steady_load(sim: Simulator) -> bool:
    """The settled cluster under a steady load for an election timeout: the stability, cost
    and heartbeat monitors. Only if the network is fault-free by then, and no election was
    asked for: a message a fault delayed, still in flight, arrives late and rightly makes the
    leader probe again (or wakes a quiescent follower), and a leadership transfer an operator
    asked for rightly starts a term; neither property can tell those from a server that
    misbehaves. True if it ran without a violation."""
    leader = sim.leaders()[0]
    if (
        not sim.clients
        or sim.views[leader].state["transfer_to"]
        or any(
            item.time > sim.now or isinstance(item.envelope.message, ELECTIONS)
            for item in sim.network.inflight
            if item.envelope is not None
        )
    ):
        return False
    # Long enough for any follower whose timer the heartbeats fail to reset to time out.
    window = sim.setup.election_timeout_max
    members = _members(sim, leader)
    stability = Stability(
        _newest_term(sim, members),
        leader,
        sim.server_messages,
        len(sim.network.inflight),
        len(sim.servers),
        window,
        sim.config.heartbeat_interval,
        MAX_FORWARD_HOPS,
    )
    heartbeats = _heartbeats(sim, leader)
    load = sim.clients[0]
    load.think_time = sim.config.heartbeat_interval
    load.rotate = True
    sim.issuing = True
    sim.wake(load)
    commit = sim.views[leader].state["commit_index"]
    answered, requests, seq = len(load.done), load.requests, load.seq
    end = sim.now + window
    while sim.violation is None and sim.next_time() <= end:
        sim.step()
        problem = stability.after_step(_newest_term(sim, members), sim.role_of(leader))
        if problem:
            sim.violate(stability.name, problem)
        elif problem := heartbeats():
            sim.violate(HEARTBEATS, problem)
    sim.issuing = False
    reads = sum(op.op == "get" for op in load.done[answered:])
    rounds = sim.views[leader].state["commit_index"] - commit + reads
    problem = stability.at_end(sim.server_messages, rounds) or _answered_once(load, seq, requests)
    if problem:
        sim.violate(stability.cost, problem)
    elif problem := _following(sim, leader):
        sim.violate(FOLLOWERS, problem)
    return sim.violation is None


def _answered_once(client: SimClient, seq: int, requests: int) -> str | None:
    """On a perfect network each request `client` sent after its request `seq` (and after
    it had sent `requests`) is answered once: a leader answering again (a read it answers
    on every later step, say) costs as much as it does to send."""
    answers = sum(n for s, n in client.responses.items() if s > seq)
    sent = client.requests - requests
    if answers > sent:
        return f"{client.id} got {answers} responses to its {sent} requests on a perfect network"
    return None


def _following(sim: Simulator, leader: str) -> str | None:
    """After heartbeats every interval for an election timeout, every member is a follower
    that names the leader (where it forwards clients), and the leader names itself (what
    it tells clients): §5.2's candidates and stale leaders hearing of the leader step down,
    and no member's timer ran out since its last heartbeat."""
    for server in sim.views[leader].state["servers"]:
        state = sim.views[server].state
        role = "leader" if server == leader else "follower"
        if state["role"] != role or state["leader_id"] != leader:
            return (
                f"{server} is {state['role']} and names {state['leader_id'] or 'no one'} as "
                f"leader after an election timeout of heartbeats from leader {leader}"
            )
    return None


def _heartbeats(sim: Simulator, leader: str) -> Check:
    """While the leader is awake (not quiescent), every member hears from it at least once
    per heartbeat interval: it heartbeats each follower a heartbeat interval after it last
    sent it anything, and the simulated host ticks it exactly at the deadline it stored, so
    on a perfect network the gap is never longer (a leader's tick late by up to an
    interval is what the minimum election timeout allows for on a real host)."""
    interval = sim.config.heartbeat_interval
    awake_since = sim.now

    def check() -> str | None:
        nonlocal awake_since
        state = sim.views[leader].state
        if state["quiescent"] or state["role"] != "leader":
            awake_since = sim.now
            return None
        for server in state["servers"]:
            if server == leader:
                continue
            heard = max(sim.views[server].state.get("leader_contact", 0), awake_since)
            if sim.now - heard > interval:
                return (
                    f"{server} had heard nothing from leader {leader} for {sim.now - heard} "
                    f"virtual ms, more than a heartbeat interval ({interval})"
                )
        return None

    return check


def _newest_term(sim: Simulator, servers: Sequence[str] | None = None) -> int:
    """The newest term of `servers` (all of them by default)."""
    chosen = sim.servers if servers is None else servers
    return max(int(sim.views[s].state.get("current_term", 0)) for s in chosen)


def _members(sim: Simulator, leader: str) -> tuple[str, ...]:
    """The servers of the leader's configuration. One left out campaigns when its timer runs
    out, in vain (members ignore it), and without pre-vote raises its own term each time."""
    return tuple(sim.views[leader].state["servers"])


def _stable(sim: Simulator, leader: str, cause: str = "with no fault") -> Check:
    """No member of the leader's configuration starts a term, and `leader` stays leader."""
    term = sim.views[leader].state["current_term"]
    members = _members(sim, leader)

    def check() -> str | None:
        newest = _newest_term(sim, members)
        if newest != term:
            return f"term {newest} started after term {term}, {cause} and the leader up"
        role = sim.role_of(leader)
        if role != "leader":
            return f"leader {leader} became {role} {cause}"
        return None

    return check


def _run(sim: Simulator, prop: str, bound_ms: int, done: Check, check: Check | None = None) -> bool:
    """Fair steps until `done()` returns None (True), or a violation of `prop`: `done`'s
    last answer once `bound_ms` virtual ms have passed, or `check`'s answer after a step."""
    end, first_step = sim.now + bound_ms, sim.step_no
    while sim.violation is None:
        waiting = done()
        if waiting is None:
            return True
        if sim.next_time() > end:
            sim.violate(prop, f"{waiting} {bound_ms} virtual ms into a rest with no fault")
            return False
        if sim.step_no - first_step > bound_ms * STEPS_PER_MS:
            sim.violate(prop, f"{waiting} after {bound_ms * STEPS_PER_MS} steps: a message storm")
            return False
        sim.step()
        problem = check() if check is not None else None
        if problem:
            sim.violate(prop, problem)
    return False


def _run_for(sim: Simulator, prop: str, ms: int, check: Check) -> bool:
    """Fair steps for `ms` virtual ms, or until `check` reports a violation of `prop`."""
    end = sim.now + ms

    def over() -> str | None:
        return None if sim.next_time() > end else "the window was not over"

    return _run(sim, prop, ms + 1, over, check)


def _settled(sim: Simulator) -> Check:
    return sim.unfinished


def quiet(sim: Simulator) -> None:
    """No load for the rounds quiescing takes, a quiesce interval and an election timeout:
    long enough for a follower whose timer quiescence fails to extend to time out, and for a
    leader that misses its check round to lose its followers. Without quiescence, for an
    election timeout and a heartbeat interval, at most a heartbeat round per interval (and
    one more for the interval the window starts in). Only with every server a member: one
    left out campaigns, in vain, and its messages count."""
    config = sim.config
    leader = sim.leaders()[0]
    followers = len(sim.views[leader].state["servers"]) - 1
    if followers + 1 < len(sim.servers):
        return
    if config.quiesce:
        window = (
            ROUNDS_TO_QUIESCE * config.heartbeat_interval
            + config.quiesce_interval
            + config.election_timeout_max
        )
        rounds = ROUNDS_TO_QUIESCE + window // config.quiesce_interval + 1
    else:
        window = config.election_timeout_max + config.heartbeat_interval
        rounds = window // config.heartbeat_interval + 1
    bound = 2 * followers * rounds + len(sim.network.inflight)
    sent = sim.server_messages
    stable, heartbeats = _stable(sim, leader), _heartbeats(sim, leader)

    def check() -> str | None:
        problem = heartbeats()
        if problem:
            sim.violate(HEARTBEATS, problem)
        return stable()

    if not _run_for(sim, QUIET, window, check):
        return
    sent = sim.server_messages - sent
    if sent > bound:
        sim.violate(
            QUIET,
            f"servers sent {sent} messages in {window} idle virtual ms, more than the {bound} "
            f"that {rounds} heartbeat rounds need",
        )


def transfer(sim: Simulator) -> None:
    """An operator asks the leader to hand over to a follower of its configuration (which
    one rotates with the schedule); the target must lead the next term within the leader's
    deadline for the transfer (an election timeout)."""
    leader = sim.leaders()[0]
    state = sim.views[leader].state
    term = state["current_term"]
    peers = [s for s in state["servers"] if s != leader]
    if not peers:
        return
    target = peers[sim.spec.index % len(peers)]
    sim.enqueue(Envelope(OPERATOR, leader, TransferLeadership(target)))

    def led() -> str | None:
        if sim.role_of(target) == "leader" and sim.views[target].state["current_term"] > term:
            return None
        return f"{target} was not leader after {leader} of term {term} was asked to hand over"

    if _run(sim, TRANSFER, sim.config.election_timeout_max, led):
        _run(sim, TRANSFER, sim.setup.liveness_ms, _settled(sim))


def reconfigure(sim: Simulator) -> None:
    """Add back a server the faulty prefix left out of the configuration, or else remove a
    follower and add it back: each change commits on the leader, and then every member
    applies the leader's log. The configuration ends with every server in it. Only with
    pre-vote: without it a removed server raises its term each time its timer runs out, and
    added back it rightly forces an election."""
    if not sim.config.pre_vote:
        return
    leader = sim.leaders()[0]
    servers = sim.views[leader].state["servers"]
    missing = [s for s in sim.servers if s not in servers]
    if missing:
        changes = [(missing[sim.spec.index % len(missing)], True)]
    elif len(servers) > 3:
        followers = [s for s in servers if s != leader]
        server = followers[sim.spec.index % len(followers)]
        changes = [(server, False), (server, True)]
    else:
        return
    stable = _stable(sim, leader)
    for server, add in changes:
        if not _change(sim, leader, server, add, stable):
            return


def _change(sim: Simulator, leader: str, server: str, add: bool, stable: Check) -> bool:
    sim.enqueue(Envelope(OPERATOR, leader, ChangeMembership(server, add)))
    verb = "adding" if add else "removing"

    def committed() -> str | None:
        state = sim.views[leader].state
        if (server in state["servers"]) == add and state["config_index"] <= state["commit_index"]:
            return None
        return f"{leader} had not committed {verb} {server}"

    bound = sim.config.election_timeout_max
    return _run(sim, MEMBERSHIP, bound, committed, stable) and _run(
        sim, MEMBERSHIP, sim.setup.liveness_ms, _settled(sim), stable
    )


def clock_jumps(sim: Simulator) -> None:
    """Function instances run on machines whose clocks disagree, by as much as the faulty
    prefix's largest skew. With the group awake (a client's command wakes it), the leader's
    clock jumps back by that much: the deadlines and send times it stored now lie ahead, and
    it must pull them back (`clamp_timers`) rather than fall silent long enough for its
    followers to elect another; no term may start and the leader must stay for an election
    timeout and a heartbeat interval. Then, the group awake again, a follower's clock jumps
    forward by as much: its timer runs out at once, and its pre-vote must fail, since every
    other member heard from the leader within the minimum election timeout (the leader
    lease, thesis §4.2.3): no term may start within a heartbeat interval. (Without pre-vote
    or check-quorum, and so without the lease, the follower's election is rightful.)"""
    config = sim.config
    jump = max(SKEWS)
    leader = sim.leaders()[0]
    followers = [s for s in sim.views[leader].state["servers"] if s != leader]
    if not followers or not sim.clients:
        return
    follower = followers[sim.spec.index % len(followers)]
    jumps = [((leader, -jump), config.election_timeout_max + config.heartbeat_interval)]
    if config.pre_vote and config.check_quorum:
        jumps.append(((follower, jump), config.heartbeat_interval))
    for (server, offset), window in jumps:
        if not _awaken(sim, leader):
            return
        sim.set_skew(server, offset)
        cause = f"after {server}'s clock jumped {offset:+d} ms"
        if not _run_for(sim, CLOCK_JUMP, window, _stable(sim, leader, cause)):
            return


def _awaken(sim: Simulator, leader: str) -> bool:
    """One command from the load client, run until every member is awake (it was, or the
    command woke it: the leader on receiving it, followers on the entry that follows)."""
    load = sim.clients[0]
    sim.issuing = True
    sim.wake(load)

    def awake() -> str | None:
        members = sim.views[leader].state["servers"]
        asleep = [s for s in members if sim.views[s].state["quiescent"]]
        return f"{', '.join(asleep)} did not wake for a command" if asleep else None

    try:
        return _run(sim, CLOCK_JUMP, sim.setup.client_timeout, awake)
    finally:
        sim.issuing = False


def catch_up(sim: Simulator) -> None:
    """A follower cut off while the group commits commands, then reconnected, catches up
    (thesis §3.5 and §5.3). From the leader's first message (its next heartbeat, when the
    heartbeats monitor's bound applies), on a perfect network, the catch-up takes no
    virtual time: it must not wait a heartbeat interval. And the leader and it may exchange
    no more messages than the catch-up needs, each answered once: one AppendEntries
    rejected (its answer's hint, the follower's last index, finds where the logs match),
    one per `max_entries_per_message` entries the follower lacks, or the snapshot's chunks
    and the entries after it. Every other schedule
    commits enough commands for the leader to snapshot past the follower. Only with
    pre-vote: without it the follower cut off raises its term, and reconnected rightly
    forces an election."""
    config = sim.config
    if not config.pre_vote or not sim.clients:
        return
    leader = sim.leaders()[0]
    followers = [s for s in sim.views[leader].state["servers"] if s != leader]
    if len(followers) < 2:
        return
    follower = followers[sim.spec.index % len(followers)]
    others = [s for s in sim.servers if s != follower]
    sim.network.partition(
        f"lone:{follower}", {(follower, s) for s in others} | {(s, follower) for s in others}
    )
    if not _commands(sim, CATCH_UP, 2 if sim.spec.node_seed % 2 else sim.setup.snapshot_every + 2):
        return
    state, lagging = sim.views[leader].state, sim.views[follower].state
    target = state["commit_index"]
    snapshot = lagging["last_index"] < state["log_start"]
    entries = target - (state["log_start"] if snapshot else lagging["last_applied"])
    chunks = -(-sim.snapshot_chars(leader) // config.snapshot_chunk_chars) if snapshot else 0
    link = (leader, follower), (follower, leader)
    sent, reached = sum(sim.link_messages[pair] for pair in link), sim.link_messages[link[0]]
    sim.network.heal()
    first: list[int] = []  # when the leader first sent it something after the heal

    def caught_up() -> str | None:
        if not first and sim.link_messages[link[0]] > reached:
            first.append(sim.now)
        applied = sim.views[follower].state["last_applied"]
        if applied >= target:
            return None
        return f"{follower}, reconnected, had applied {applied} of the {target} committed"

    stable = _stable(sim, leader, f"while {follower} caught up")
    if not _run(sim, CATCH_UP, config.election_timeout_max, caught_up, stable):
        return
    took = sim.now - first[0]
    interval = config.heartbeat_interval
    if took >= interval:
        sim.violate(
            CATCH_UP,
            f"{follower} took {took} virtual ms to catch up from the leader's first message, "
            f"as long as a heartbeat interval ({interval}): the catch-up waited for heartbeats",
        )
        return
    rounds = 1 + -(-entries // config.max_entries_per_message) + chunks
    used = sum(sim.link_messages[pair] for pair in link) - sent
    if used > 2 * rounds:
        sim.violate(
            CATCH_UP,
            f"{leader} and {follower} exchanged {used} messages for a catch-up of {entries} "
            f"entries and {chunks} snapshot chunks, more than the {2 * rounds} it needs",
        )


def _commands(sim: Simulator, prop: str, count: int) -> bool:
    """The load client's next `count` commands, puts (each an entry) to the first key, back
    to back, all answered; then it goes idle."""
    load = sim.clients[0]
    start, think_time, rotate = len(load.done), load.think_time, load.rotate
    load.think_time, load.rotate = 1, False
    sim.issuing = True
    sim.wake(load)

    def answered() -> str | None:
        done = len(load.done) - start
        return None if done >= count else f"{done} of {count} commands were answered"

    def idle() -> str | None:
        return None if not load.active else f"{load.id} did not go idle"

    try:
        if not _run(sim, prop, sim.setup.liveness_ms, answered):
            return False
    finally:
        sim.issuing = False
        load.think_time, load.rotate = think_time, rotate
    return _run(sim, prop, sim.setup.client_timeout, idle)


def isolated_leader(sim: Simulator) -> None:
    """The leader is cut off from the other servers (not from clients); they elect a leader
    of a later term, which commits a put to the first key; then a second client reads that
    key from the old leader first. The old leader cannot confirm it still leads (ReadIndex,
    thesis §6.4), so it must not answer, whatever it believes: the linearizability monitor
    judges the read (without check-quorum the old leader believes it leads for as long as
    it is cut off). The read must be answered, by the new leader, and the group settle once
    the partition heals."""
    if len(sim.clients) < 2:
        return
    leader = sim.leaders()[0]
    term = sim.views[leader].state["current_term"]
    others = [s for s in sim.servers if s != leader]
    if len([s for s in sim.views[leader].state["servers"] if s != leader]) < 2:
        return
    sim.network.partition(
        f"lone:{leader}", {(leader, s) for s in others} | {(s, leader) for s in others}
    )

    def elected() -> str | None:
        if any(
            sim.role_of(s) == "leader" and sim.views[s].state["current_term"] > term for s in others
        ):
            return None
        return f"no server but {leader} led a later term after {leader} was cut off"

    bound = sim.setup.liveness_ms
    if not _run(sim, ISOLATED_LEADER, bound, elected) or not _commands(sim, ISOLATED_LEADER, 1):
        return
    reader = sim.clients[1]
    start, script = len(reader.done), reader.script
    reader.script, reader.prefer = deque([{"op": "get", "key": sim.clients[0].keys[0]}]), leader
    sim.issuing = True
    sim.wake(reader)

    def read() -> str | None:
        return None if len(reader.done) > start else f"{reader.id}'s read was not answered"

    try:
        if not _run(sim, ISOLATED_LEADER, bound, read):
            return
    finally:
        sim.issuing = False
        reader.script, reader.prefer = script, ""
    sim.network.heal()
    _run(sim, ISOLATED_LEADER, bound, _settled(sim))
