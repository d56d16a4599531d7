"""Command line: `python -m raft run | test | replay | cluster`, plus commands that other installed
packages plug in (the repository's `bench` adds `python -m raft bench`).

A plug-in names a function in the `raft.commands` entry-point group; it is called with the
subcommand parsers and adds its own, so this package never imports its plug-ins.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from raft.hosts import admin, runner
from raft.sim import cli as sim_cli

PLUGIN_GROUP = "raft.commands"


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
    cluster = commands.add_parser("cluster", help="operate a running cluster over its HTTP API")
    admin.add_cluster_arguments(cluster)
    cluster.set_defaults(handler=admin.run_cluster)
    for plugin in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        plugin.load()(commands)
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
