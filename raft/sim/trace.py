"""Trace files: a failing schedule as JSON, enough to replay it step by step.

The file holds the run's setup, the schedule's spec and its (shrunk) recorded choices, which
is all a replay needs; plus, for people and for the HTML page, the steps the traced replay
took and the violation it ended in. Dumped with sorted keys and no timestamps, so the same
seed always writes the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raft.sim.monitors import Violation
from raft.sim.runner import Investigation, replay
from raft.sim.schedule import ScheduleSpec, SimSetup

FORMAT = "raft-sim-trace/2"


def build(setup: SimSetup, investigation: Investigation) -> dict[str, Any]:
    outcome = investigation.outcome
    failure = investigation.failure
    violation = outcome.violation
    assert violation is not None, "a shrunk schedule always fails"
    return {
        "format": FORMAT,
        "setup": setup.to_json(),
        "schedule": failure.spec.to_json(),
        "choices": investigation.shrunk,
        "violation": _violation_json(violation),
        "original": {
            "steps": failure.violation.step,
            "violation": _violation_json(failure.violation),
        },
        "shrink_runs": investigation.shrink_runs,
        "servers": list(setup.server_ids()),
        "clients": sorted({c for c in _client_ids(outcome.trace or [])}),
        "steps": outcome.trace,
        "history": [op.describe() for op in outcome.history],
    }


def _violation_json(v: Violation) -> dict[str, Any]:
    return {"property": v.property, "message": v.message, "step": v.step}


def _client_ids(steps: list[dict[str, Any]]) -> set[str]:
    ids = set()
    for step in steps:
        event = step["event"]
        for key in ("client", "from", "to"):
            value = event.get(key, "")
            if value.startswith("c"):
                ids.add(value)
    return ids


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def file_stem(doc: dict[str, Any]) -> str:
    schedule = doc["schedule"]
    prop = doc["violation"]["property"]
    return f"{prop}-seed{schedule['seed']}-schedule{schedule['index']}"


def write(doc: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{file_stem(doc)}.json"
    path.write_text(dumps(doc), encoding="utf-8")
    return path


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} trace")
    return doc


def replay_doc(
    doc: dict[str, Any], echo: Callable[[str], None] | None = None
) -> tuple[Violation | None, bool]:
    """Replay a trace; returns (the violation reached, whether it is the recorded one)."""
    setup = SimSetup.from_json(doc["setup"])
    spec = ScheduleSpec.from_json(doc["schedule"])
    outcome = replay(setup, spec, doc["choices"], tracing=echo is not None)
    if echo is not None:
        for step in outcome.trace or []:
            echo(describe_step(step))
    found = outcome.violation
    recorded = doc["violation"]
    same = (
        found is not None
        and found.property == recorded["property"]
        and found.step == recorded["step"]
        and found.message == recorded["message"]
    )
    return found, same


def describe_event(event: dict[str, Any]) -> str:
    kind = event.get("type", "")
    if kind in ("deliver", "drop"):
        body = event.get("body", {})
        fields = ", ".join(
            f"{k}={v}" for k, v in sorted(body.items()) if k not in ("entries", "data")
        )
        entries = body.get("entries")
        extra = f", {len(entries)} entries" if entries else ""
        verb = "deliver" if kind == "deliver" else "DROP"
        return (
            f"{verb} {event['kind']} {event['from']}->{event['to']} "
            f"(sent at step {event['sent']}; {fields}{extra})"
        )
    if kind == "tick":
        return f"timer fires on {event['server']}"
    if kind == "invoke":
        return f"client invokes {event['op']}"
    return f"{kind} {event.get('client', '')}".strip()


def describe_step(step: dict[str, Any]) -> str:
    servers = " ".join(
        f"{sid}={role}/t{term}/c{commit}/n{length}"
        for sid, (role, term, commit, length) in sorted(step["servers"].items())
    )
    notes = "".join(f"\n      ! {note}" for note in step["notes"])
    head = f"#{step['step']:>4} t={step['now']:>6}ms {describe_event(step['event'])}"
    return f"{head}{notes}\n      {servers}"
