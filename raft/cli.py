"""Command line: `python -m raft run | test | replay | bench`."""

from __future__ import annotations

import argparse
import logging
import sys

from raft.bench import cli as bench_cli
from raft.hosts import runner
from raft.sim import cli as sim_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m raft", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a local cluster and submit requests (main job)")
    runner.add_run_arguments(run)
    run.set_defaults(handler=runner.run)
    test = commands.add_parser("test", help="systematic testing under adversarial schedules")
    sim_cli.add_test_arguments(test)
    test.set_defaults(handler=sim_cli.run_test)
    replay = commands.add_parser("replay", help="replay a trace written by `test` step by step")
    sim_cli.add_replay_arguments(replay)
    replay.set_defaults(handler=sim_cli.run_replay)
    bench = commands.add_parser("bench", help="measure throughput, latency, messages and writes")
    bench_cli.add_bench_arguments(bench)
    bench.set_defaults(handler=bench_cli.run_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    code: int = args.handler(args)
    return code
