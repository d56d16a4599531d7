"""Command-line entry points for `raft test` and `raft replay` (wired into raft.cli), also
runnable as `python -m raft.sim test|replay ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from raft.sim import html, trace
from raft.sim.runner import STRATEGY_CHOICES, Exploration, RunOptions, explore, investigate
from raft.sim.schedule import SimSetup
from raft.sim.variants import PRODUCTION, VARIANTS, resolve_target


def add_test_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SimSetup()
    add = parser.add_argument
    add("--servers", type=int, default=defaults.servers, help="cluster size (default 5)")
    add("--clients", type=int, default=defaults.clients, help="simulated clients (default 3)")
    add("--keys", type=int, default=defaults.keys, help="keys the clients use (default 2)")
    add("--iterations", type=int, default=100, help="schedules to explore (default 100)")
    add("--max-steps", type=int, default=defaults.max_steps, help="steps per schedule")
    add(
        "--liveness-ms",
        type=int,
        default=defaults.liveness_ms,
        help="virtual ms after faults stop within which there must be a leader, no pending "
        "request, and every server must apply what is committed (default %(default)s)",
    )
    add("--seed", type=int, default=0, help="the run's seed (default 0)")
    add("--strategy", choices=STRATEGY_CHOICES, default="portfolio")
    add("-j", "--jobs", type=int, default=1, help="worker processes (results do not depend on it)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--variant", choices=sorted(VARIANTS), help="a catalogued buggy server")
    target.add_argument("--target", help="module:factory of your own server (default production)")
    add("--list-variants", action="store_true", help="list the catalogued variants and exit")
    add("--out", type=Path, default=Path("raft-traces"), help="where traces are written")
    add("--shrink-runs", type=int, default=400, help="replays the shrinker may use")
    add("--json", action="store_true", help="print one JSON object instead of the summary")


def run_test(args: argparse.Namespace) -> int:
    if args.list_variants:
        for name, variant in sorted(VARIANTS.items()):
            print(f"{name:<26} {variant.summary}")
        return 0
    target = f"variant:{args.variant}" if args.variant else args.target or PRODUCTION
    try:
        resolve_target(target)
    except (ValueError, ImportError, AttributeError) as exc:
        print(f"raft test: {exc}", file=sys.stderr)
        return 2
    setup = SimSetup(
        servers=args.servers,
        clients=args.clients,
        keys=args.keys,
        max_steps=args.max_steps,
        liveness_ms=args.liveness_ms,
        target=target,
    )
    options = RunOptions(setup, args.seed, args.iterations, args.strategy, args.jobs)
    print(
        f"raft test: {args.iterations} schedules of {args.max_steps} steps, {args.servers} "
        f"servers, target {target}, strategy {args.strategy}, seed {args.seed}, "
        f"{args.jobs} job(s)",
        file=sys.stderr,
    )
    result = explore(options, _progress_printer())
    report: dict[str, Any] = _report(options, result)
    if result.failure is not None:
        investigation = investigate(options, result.failure, args.shrink_runs)
        doc = trace.build(setup, investigation)
        path = trace.write(doc, args.out)
        page = path.with_suffix(".html")
        page.write_text(html.render(doc), encoding="utf-8")
        report["bug"] = {
            **doc["violation"],
            "schedule": result.failure.spec.index,
            "strategy": result.failure.spec.strategy,
            "original_steps": result.failure.violation.step,
            "shrunk_steps": len(doc["steps"]),
            "trace": str(path),
            "html": str(page),
        }
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(_summary(report, result))
    return 1 if result.failure is not None else 0


def _progress_printer() -> Any:
    last = [-1]

    def progress(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            print(f"... {done}/{total} schedules ({done * 100 // max(total, 1)}%)", file=sys.stderr)

    return progress


def _report(options: RunOptions, result: Exploration) -> dict[str, Any]:
    elapsed = result.elapsed_s
    return {
        "schedules": result.schedules,
        "fair_schedules": result.fair_schedules,
        "bugs": 0 if result.failure is None else 1,
        "steps": result.steps,
        "elapsed_s": round(elapsed, 3),
        "schedules_per_s": round(result.schedules / elapsed, 1) if elapsed else 0.0,
        "steps_per_s": round(result.steps / elapsed) if elapsed else 0,
        "seed": options.seed,
        "strategy": options.strategy,
        "target": options.setup.target,
        "jobs": options.jobs,
        "coverage": result.coverage.to_json(),
    }


def _summary(report: dict[str, Any], result: Exploration) -> str:
    lines = [
        "... Testing statistics:",
        f"..... Found {report['bugs']} bug{'s' if report['bugs'] != 1 else ''}.",
    ]
    bug = report.get("bug")
    if bug:
        lines += [
            f"..... {bug['property']}: {bug['message']}",
            f"..... schedule {bug['schedule']} ({bug['strategy']}), step {bug['original_steps']}; "
            f"shrunk to {bug['shrunk_steps']} steps",
            f"..... trace: {bug['trace']}",
            f"..... timeline: {bug['html']}",
            f"..... replay: python -m raft replay {bug['trace']}",
        ]
    lines += [
        "... Exploration statistics:",
        f"..... Explored {report['schedules']} schedules "
        f"({report['fair_schedules']} with a fair liveness suffix).",
        f"..... {report['steps']} steps, {report['steps'] // max(report['schedules'], 1)} "
        "per schedule on average.",
        f"..... Elapsed {report['elapsed_s']:.2f} s: {report['schedules_per_s']} schedules/s, "
        f"{report['steps_per_s']} steps/s.",
        "... Coverage:",
        *result.coverage.summary_lines(),
    ]
    return "\n".join(lines)


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", type=Path, help="a trace written by `raft test`")
    parser.add_argument("--quiet", action="store_true", help="only the verdict, not each step")
    parser.add_argument("--html", type=Path, help="also (re)write the trace's HTML timeline here")


def run_replay(args: argparse.Namespace) -> int:
    """Exit 0 if the trace replays to the violation it recorded, 1 otherwise."""
    try:
        doc = trace.load(args.trace)
    except (OSError, ValueError) as exc:
        print(f"raft replay: {exc}", file=sys.stderr)
        return 2
    echo = None if args.quiet else print
    found, same = trace.replay_doc(doc, echo)
    if args.html:
        args.html.write_text(html.render(doc), encoding="utf-8")
    recorded = doc["violation"]
    if same:
        where = f"{recorded['property']} at step {recorded['step']}"
        print(f"reproduced {where}: {recorded['message']}")
        return 0
    got = "no violation" if found is None else f"{found.property} at step {found.step}"
    print(f"did not reproduce {recorded['property']} at step {recorded['step']}: got {got}")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raft.sim")
    commands = parser.add_subparsers(dest="command", required=True)
    add_test_arguments(commands.add_parser("test", help="explore schedules"))
    add_replay_arguments(commands.add_parser("replay", help="replay a trace"))
    args = parser.parse_args(argv)
    return run_test(args) if args.command == "test" else run_replay(args)
