"""A trace as a self-contained HTML page (inline CSS, SVG and a few lines of JS; no network):
a message-sequence timeline with one lane per server and client, time (steps) flowing down,
each lane shaded by the server's role and labelled with its term, an arrow per delivered
message from the step it was sent to the step it arrived, and the violation marked.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from raft.sim.trace import describe_event, describe_step

ROW = 20
LANE = 110
# Room right of the lanes for each step's notes (faults, the violation).
NOTES = 360
LEFT = 60
TOP = 50
ROLE_COLOURS = {
    "follower": "#eef1f5",
    "pre_candidate": "#fff3c4",
    "candidate": "#ffd59e",
    "leader": "#b9e6b3",
    "down": "#9a9a9a",
}
KIND_COLOURS = {
    "request_vote": "#c77700",
    "request_vote_response": "#e3a33b",
    "append_entries": "#2f6fb3",
    "append_entries_response": "#6aa2da",
    "client_request": "#7a3fb0",
    "client_response": "#b083d6",
}

CSS = """
body { font: 13px system-ui, sans-serif; margin: 0; color: #222; }
header { padding: 10px 16px; background: #263238; color: #fff; }
header h1 { font-size: 16px; margin: 0 0 4px; }
header p { margin: 2px 0; }
.bad { color: #ffab91; font-weight: 600; }
main { display: flex; }
#timeline { flex: 1; overflow: auto; }
aside { width: 380px; padding: 10px; border-left: 1px solid #ccc; position: sticky; top: 0;
        height: 100vh; overflow: auto; box-sizing: border-box; font-family: monospace;
        white-space: pre-wrap; font-size: 12px; }
.legend span { display: inline-block; padding: 1px 6px; margin-right: 6px; border-radius: 3px;
               color: #222; background: #fff; }
svg text { font: 11px system-ui, sans-serif; }
.row:hover { fill: rgba(255, 235, 59, .25); }
"""

JS = """
const steps = JSON.parse(document.getElementById('steps').textContent);
const panel = document.getElementById('detail');
document.querySelectorAll('.row').forEach(r => r.addEventListener('mouseenter', () => {
  panel.textContent = steps[+r.dataset.i];
}));
"""


def render(doc: dict[str, Any]) -> str:
    steps: list[dict[str, Any]] = doc["steps"] or []
    servers: list[str] = doc["servers"]
    lanes = servers + doc["clients"]
    x = {name: LEFT + LANE * i + LANE // 2 for i, name in enumerate(lanes)}
    lanes_end = LEFT + LANE * len(lanes)
    width = lanes_end + NOTES
    height = TOP + ROW * (len(steps) + 1) + 20

    def y(step: int) -> int:
        return TOP + ROW * step - ROW // 2

    parts: list[str] = []
    # Role bands, merged over consecutive steps with the same role and term.
    for sid in servers:
        start = 0
        for i in range(len(steps) + 1):
            here = tuple(steps[i]["servers"][sid][:2]) if i < len(steps) else None
            first = tuple(steps[start]["servers"][sid][:2])
            if here != first:
                role, term = first
                top = TOP + ROW * start
                parts.append(
                    f'<rect x="{x[sid] - 30}" y="{top}" width="60" '
                    f'height="{ROW * (i - start)}" fill="{ROLE_COLOURS.get(role, "#fff")}" '
                    f'stroke="#bbb"><title>{escape(sid)}: {escape(role)}, term {term}, '
                    f"steps {start + 1}-{i}</title></rect>"
                    f'<text x="{x[sid] - 27}" y="{top + 12}" fill="#444">{escape(role[:4])}'
                    f" t{term}</text>"
                )
                start = i
    for name in lanes:
        parts.append(
            f'<line x1="{x[name]}" y1="{TOP}" x2="{x[name]}" y2="{height - 20}" '
            f'stroke="#999" stroke-dasharray="2,3"/>'
            f'<text x="{x[name]}" y="{TOP - 12}" text-anchor="middle" '
            f'font-weight="bold">{escape(name)}</text>'
        )
    for i, step in enumerate(steps):
        n = step["step"]
        row_y = TOP + ROW * i
        parts.append(
            f'<rect class="row" data-i="{i}" x="0" y="{row_y}" width="{width}" height="{ROW}" '
            f'fill="transparent"/>'
            f'<text x="6" y="{row_y + 14}" fill="#777">{n}</text>'
        )
        parts.append(_event_svg(step, i, x, y))
        if step["notes"]:
            note = "; ".join(step["notes"])
            colour = "#c62828" if "crash" in note or "VIOLATION" in note else "#555"
            parts.append(
                f'<text x="{lanes_end + 8}" y="{row_y + 14}" fill="{colour}">'
                f"{escape(note[:60])}<title>{escape(note)}</title></text>"
            )
    violation = doc["violation"]
    vy = TOP + ROW * len(steps)
    parts.append(
        f'<line x1="0" y1="{vy}" x2="{width}" y2="{vy}" stroke="#c62828" stroke-width="2"/>'
        f'<text x="{LEFT}" y="{vy + 15}" fill="#c62828" font-weight="bold">'
        f"{escape(violation['property'])} at step {violation['step']}</text>"
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="context-stroke"/></marker></defs>' + "".join(parts) + "</svg>"
    )
    schedule = doc["schedule"]
    legend = "".join(
        f'<span style="background:{c}">{escape(r)}</span>' for r, c in ROLE_COLOURS.items()
    ) + "".join(
        f'<span style="color:{c}">&#8594; {escape(k)}</span>' for k, c in KIND_COLOURS.items()
    )
    details = json.dumps([describe_step(s) for s in steps]).replace("</", "<\\/")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(violation['property'])}: raft simulation trace</title>"
        f"<style>{CSS}</style></head><body><header>"
        f'<h1>Raft simulation trace: <span class="bad">{escape(violation["property"])}'
        f"</span></h1><p>{escape(violation['message'])}</p>"
        f"<p>seed {schedule['seed']}, schedule {schedule['index']}, strategy "
        f"{escape(schedule['strategy'])}, target {escape(doc['setup']['target'])}; "
        f"{len(steps)} steps after shrinking (originally {doc['original']['steps']})</p>"
        f'<p class="legend">{legend}</p></header><main>'
        f'<div id="timeline">{svg}</div><aside id="detail">Hover a step to see it.</aside>'
        f'</main><script type="application/json" id="steps">{details}</script>'
        f"<script>{JS}</script></body></html>\n"
    )


def _event_svg(step: dict[str, Any], i: int, x: dict[str, int], y: Any) -> str:
    event = step["event"]
    kind = event.get("type")
    here = y(i + 1)
    title = f"<title>{escape(describe_event(event))}</title>"
    if kind in ("deliver", "drop"):
        colour = KIND_COLOURS.get(event["kind"], "#333")
        x1, x2 = x.get(event["from"], 0), x.get(event["to"], 0)
        y1 = y(event["sent"]) if event["sent"] else here
        if kind == "drop":
            return (
                f'<g><line x1="{x1}" y1="{y1}" x2="{x2}" y2="{here}" stroke="#c62828" '
                f'stroke-dasharray="4,3"/><text x="{x2 - 4}" y="{here + 4}" fill="#c62828" '
                f'font-weight="bold">&#215;</text>{title}</g>'
            )
        return (
            f'<g><line x1="{x1}" y1="{y1}" x2="{x2}" y2="{here}" stroke="{colour}" '
            f'stroke-width="1.5" marker-end="url(#arrow)"/>{title}</g>'
        )
    if kind == "tick":
        cx = x[event["server"]]
        return (
            f'<g><circle cx="{cx}" cy="{here}" r="5" fill="#fff" stroke="#333"/>'
            f'<line x1="{cx}" y1="{here}" x2="{cx}" y2="{here - 4}" stroke="#333"/>{title}</g>'
        )
    cx = x.get(event.get("client", ""), 0)
    return f'<g><rect x="{cx - 4}" y="{here - 4}" width="8" height="8" fill="#7a3fb0"/>{title}</g>'
