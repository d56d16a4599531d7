"""Scripted interactions with golden output, etcd's data-driven tests: a script drives a
simulated cluster one event at a time, and after each command its output (the steps taken,
then every server's stored state and the messages in flight) is compared with the output
written below it. `tests/test_sim_golden.py` runs `testdata/*.txt`;
`RAFT_REWRITE_GOLDEN=1` rewrites the expected output instead.

A script is blocks separated by blank lines, each optional `#` comments, one command, a
`----` line and the expected output:

    # Three servers; s1's election timer fires first.
    cluster servers=3
    ----
    ...

Commands (servers are s1, s2...; message filters `from=`, `to=`, `type=` match any when
left out, types as in the wire format, e.g. `append_entries`):

- `cluster servers=N [seed=S]`: a new cluster, no clients;
- `tick S`: S's timer fires once (time moves to when it is due: a deadline S stored, or
  the timer trigger's next periodic tick);
- `fire S`: S's timer fires until S sends something: a follower's election timeout, a
  leader's next heartbeat;
- `arm`: tick every server that never ran, which arms its election timer;
- `elect S`: arm every timer, fire S's until it campaigns, deliver everything, then one
  heartbeat so the no-op is committed everywhere (the steps are not printed);
- `deliver [filters] [skip=N] [count=N] [fault]`: deliver the messages now in flight that
  match, oldest first (past the `skip` oldest), one step each; `fault` is
  `crash-after-save` (the handler saves, then dies before its messages leave),
  `second-instance` (the server's second trigger instance, its cache stale, handles it) or
  `duplicate` (delivered, and a copy stays in flight);
- `drop [filters] [skip=N] [count=N]`: lose the matching messages;
- `stabilize`: deliver everything, oldest first, until nothing is in flight;
- `crash S`, `restart S`, `skew S MS`, `partition S.. [| S..]`, `heal`;
- `propose S KEY=VALUE`: hand a put straight to S (`SimulatedCluster.start`);
- `state`: print the state only.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ClientRequest,
    ClientResponse,
    Entry,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
)
from raft.core.wire import KIND_OF, to_json_value
from raft.sim.cluster import SimulatedCluster
from raft.sim.injector import CRASH_AFTER_SAVE, DROP, DUPLICATE, RACE
from raft.sim.network import Pending
from raft.sim.schedule import SimSetup

SEPARATOR = "----"
FAULTS = {"crash-after-save": CRASH_AFTER_SAVE, "second-instance": RACE, "duplicate": DUPLICATE}
MAX_STABILIZE_STEPS = 1000
MAX_TIMER_FIRINGS = 40


class ScriptError(ValueError):
    """A command the driver does not understand, or cannot carry out."""


@dataclass
class Block:
    comments: list[str]
    command: str
    expected: list[str]
    line: int


def parse(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        comments: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("#")):
            if lines[i].startswith("#"):
                comments.append(lines[i])
            i += 1
        if i >= len(lines):
            break
        command, line = lines[i], i + 1
        i += 1
        if i >= len(lines) or lines[i] != SEPARATOR:
            raise ScriptError(f"line {line}: {SEPARATOR!r} expected after {command!r}")
        i += 1
        expected: list[str] = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        blocks.append(Block(comments, command, expected, line))
    return blocks


def render(blocks: list[Block], outputs: list[list[str]]) -> str:
    parts = [
        "\n".join([*block.comments, block.command, SEPARATOR, *output])
        for block, output in zip(blocks, outputs, strict=True)
    ]
    return "\n\n".join(parts) + "\n"


def run_file(path: Path) -> tuple[list[Block], list[list[str]]]:
    """Every block of the script and the output its command gives."""
    blocks = parse(path.read_text(encoding="utf-8"))
    driver = Driver()
    outputs = []
    for block in blocks:
        try:
            outputs.append(driver.run(block.command))
        except ScriptError as exc:
            raise ScriptError(f"{path.name}:{block.line}: {exc}") from None
    return blocks, outputs


class Driver:
    def __init__(self) -> None:
        self._cluster: SimulatedCluster | None = None
        self._shown = 0

    @property
    def cluster(self) -> SimulatedCluster:
        if self._cluster is None:
            raise ScriptError("no cluster yet: start with `cluster servers=N`")
        return self._cluster

    def run(self, command: str) -> list[str]:
        words = shlex.split(command)
        if not words:
            raise ScriptError("empty command")
        name, args = words[0], words[1:]
        handler = getattr(self, "do_" + name.replace("-", "_"), None)
        if handler is None:
            raise ScriptError(f"unknown command {name!r}")
        extra: list[str] = handler(args)
        return [*self._steps(), *extra, *self._state()]

    # ----------------------------------------------------------------- commands

    def do_cluster(self, args: list[str]) -> list[str]:
        opts = _options(args)
        setup = SimSetup(servers=int(opts.get("servers", 3)), clients=0)
        self._cluster = SimulatedCluster(seed=int(opts.get("seed", 0)), setup=setup, tracing=True)
        self._shown = 0
        return []

    def do_tick(self, args: list[str]) -> list[str]:
        (server,) = _exactly(args, 1)
        timer = self.cluster.sim.timers.get(server)
        if timer is None:
            raise ScriptError(f"{server} has no timer (down, or no such server)")
        self.cluster.sim.step_with(timer)
        return []

    def do_fire(self, args: list[str]) -> list[str]:
        (server,) = _exactly(args, 1)
        sim = self.cluster.sim
        for _ in range(MAX_TIMER_FIRINGS):
            sent = sim.server_messages
            self.do_tick([server])
            if sim.server_messages != sent:
                return []
        raise ScriptError(f"{server} sent nothing in {MAX_TIMER_FIRINGS} timer firings")

    def do_deliver(self, args: list[str]) -> list[str]:
        faults = [a for a in args if a in FAULTS]
        fault = FAULTS[faults[0]] if faults else 0
        for item in self._matching([a for a in args if a not in FAULTS]):
            self.cluster.sim.step_with(item, fault)
        return []

    def do_drop(self, args: list[str]) -> list[str]:
        for item in self._matching(args):
            self.cluster.sim.step_with(item, DROP)
        return []

    def do_stabilize(self, args: list[str]) -> list[str]:
        sim = self.cluster.sim
        for _ in range(MAX_STABILIZE_STEPS):
            if not sim.network.inflight:
                return []
            sim.step_with(min(sim.network.inflight, key=lambda p: (p.time, p.seq)))
        raise ScriptError(f"messages still in flight after {MAX_STABILIZE_STEPS} steps")

    def do_arm(self, args: list[str]) -> list[str]:
        sim = self.cluster.sim
        for server in sim.servers:
            if not sim.views[server].state and server in sim.timers:
                sim.step_with(sim.timers[server])
        return []

    def do_elect(self, args: list[str]) -> list[str]:
        (server,) = _exactly(args, 1)
        sim = self.cluster.sim
        self.do_arm([])
        self.do_fire([server])
        self.do_stabilize([])
        if self.cluster.role(server) != "leader":
            raise ScriptError(f"{server} was not elected")
        self.do_fire([server])  # a heartbeat takes the commit index to all
        self.do_stabilize([])
        self._shown = len(sim.tracer.steps)
        return [f"{server} elected (steps not shown)"]

    def do_crash(self, args: list[str]) -> list[str]:
        self.cluster.crash(_exactly(args, 1)[0])
        return self._notes()

    def do_restart(self, args: list[str]) -> list[str]:
        self.cluster.restart(_exactly(args, 1)[0])
        return self._notes()

    def do_skew(self, args: list[str]) -> list[str]:
        server, offset = _exactly(args, 2)
        self.cluster.sim.set_skew(server, int(offset))
        return self._notes()

    def do_partition(self, args: list[str]) -> list[str]:
        groups: list[list[str]] = [[]]
        for word in args:
            if word == "|":
                groups.append([])
            else:
                groups[-1].append(word)
        self.cluster.partition(*groups)
        return self._notes()

    def do_heal(self, args: list[str]) -> list[str]:
        self.cluster.heal()
        return self._notes()

    def do_propose(self, args: list[str]) -> list[str]:
        server, assignment = _exactly(args, 2)
        key, _, value = assignment.partition("=")
        index, term, is_leader = self.cluster.start(
            server, {"op": "put", "key": key, "value": value}
        )
        return [f"propose to {server}: index={index} term={term} leader={is_leader}"]

    def do_state(self, args: list[str]) -> list[str]:
        return []

    # ----------------------------------------------------------------- output

    def _matching(self, args: list[str]) -> list[Pending]:
        opts = _options(args)
        unknown = set(opts) - {"from", "to", "type", "count", "skip"}
        if unknown:
            raise ScriptError(f"unknown options {sorted(unknown)}")
        items = sorted(self.cluster.sim.network.inflight, key=lambda p: (p.time, p.seq))
        chosen = [item for item in items if _matches(item, opts)][int(opts.get("skip", 0)) :]
        if "count" in opts:
            chosen = chosen[: int(opts["count"])]
        if not chosen:
            raise ScriptError(f"no message in flight matches {' '.join(args) or 'anything'}")
        return chosen

    def _steps(self) -> Iterator[str]:
        steps = self.cluster.sim.tracer.steps
        for step in steps[self._shown :]:
            yield f"{step['step']}: t={step['now']} {_event(step['event'])}"
            for note in step["notes"]:
                yield f"  ! {note}"
        self._shown = len(steps)

    def _notes(self) -> list[str]:
        """Notes left outside any step (crash, restart, ...)."""
        return [f"! {note}" for note in self.cluster.sim.tracer.take_notes()]

    def _state(self) -> list[str]:
        sim = self.cluster.sim
        lines = [
            _server_line(s, sim.views[s].state, sim.views[s].log, s in sim.down)
            for s in sim.servers
        ]
        inflight = sorted(sim.network.inflight, key=lambda p: (p.time, p.seq))
        for item in inflight:
            assert item.envelope is not None
            due = "" if item.time <= sim.now else f" (due t={item.time})"
            lines.append(
                f"  {_message(item.envelope.sender, item.target, item.envelope.message)}{due}"
            )
        return lines


def _options(args: list[str]) -> dict[str, str]:
    opts = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ScriptError(f"expected key=value, got {arg!r}")
        opts[key] = value
    return opts


def _exactly(args: list[str], count: int) -> list[str]:
    if len(args) != count:
        raise ScriptError(f"expected {count} argument(s), got {args}")
    return args


def _matches(item: Pending, opts: dict[str, str]) -> bool:
    envelope = item.envelope
    assert envelope is not None
    return (
        opts.get("from", envelope.sender) == envelope.sender
        and opts.get("to", item.target) == item.target
        and opts.get("type", KIND_OF[type(envelope.message)]) == KIND_OF[type(envelope.message)]
    )


def _server_line(server: str, state: dict[str, Any], log: list[Entry], down: bool) -> str:
    if not state:
        return f"{server} {'down' if down else 'new'}"
    role = "down" if down else state["role"]
    vote = state["voted_for"] or "-"
    start = state["log_start"]
    terms = ",".join(str(e.term) for e in log[start:]) or "-"
    compacted = f"{start}|" if start else ""
    return (
        f"{server} {role} term={state['current_term']} vote={vote} "
        f"commit={state['commit_index']} applied={state['last_applied']} log={compacted}{terms}"
    )


def _event(event: dict[str, Any]) -> str:
    kind = event.get("type", "")
    if kind == "tick":
        return f"tick {event['server']}"
    if kind in ("deliver", "drop"):
        verb = "deliver" if kind == "deliver" else "DROP"
        return f"{verb} {_describe(event['from'], event['to'], event['kind'], event['body'])}"
    return str(kind)


def _message(sender: str, to: str, message: Message) -> str:
    return _describe(sender, to, KIND_OF[type(message)], to_json_value(message))


def _describe(sender: str, to: str, kind: str, body: dict[str, Any]) -> str:
    fields = _FIELDS.get(kind, lambda b: "")(body)
    return f"{sender}->{to} {kind} {fields}".rstrip()


def _entries(body: dict[str, Any]) -> str:
    first = body["prev_log_index"] + 1
    return ",".join(f"{first + i}/{e['term']}" for i, e in enumerate(body["entries"])) or "-"


_FIELDS = {
    KIND_OF[RequestVote]: lambda b: (
        f"term={b['term']} last={b['last_log_index']}/{b['last_log_term']}"
        + (" pre-vote" if b["pre_vote"] else "")
    ),
    KIND_OF[RequestVoteResponse]: lambda b: (
        f"term={b['term']} {'granted' if b['granted'] else 'refused'}"
        + (" pre-vote" if b["pre_vote"] else "")
    ),
    KIND_OF[AppendEntries]: lambda b: (
        f"term={b['term']} prev={b['prev_log_index']}/{b['prev_log_term']} "
        f"entries={_entries(b)} commit={b['leader_commit']}"
    ),
    KIND_OF[AppendEntriesResponse]: lambda b: (
        f"term={b['term']} match={b['match_index']}"
        if b["success"]
        else f"term={b['term']} rejected hint={b['conflict_index']}/{b['conflict_term']}"
    ),
    KIND_OF[InstallSnapshot]: lambda b: (
        f"term={b['term']} last={b['last_index']}/{b['last_term']} offset={b['offset']} "
        f"chars={len(b['data'])}" + (" done" if b["done"] else "")
    ),
    KIND_OF[InstallSnapshotResponse]: lambda b: (
        f"term={b['term']} last={b['last_index']} next={b['next_offset']}"
        + (" done" if b["done"] else "")
    ),
    KIND_OF[ClientRequest]: lambda b: f"client={b['client_id']} seq={b['seq']}",
    KIND_OF[ClientResponse]: lambda b: f"client={b['client_id']} seq={b['seq']} {b['status']}",
}
