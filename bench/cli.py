"""`python -m raft bench` (also `python -m bench`): arguments and the whole run.

Every measurement is bounded in count and in time; the default run takes about two to three
minutes, `--quick` a few seconds (for tests).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from bench import pysyncobj_baseline
from bench.cost_model import AzureModel
from bench.forecast import ForecastParameters, run_forecast
from bench.history import azurite_reachable, azurite_tables, measure_history
from bench.inprocess import RUNNER_CONFIG, InProcessCluster
from bench.overload import run_overload
from bench.report import RATIO_CLUSTER, TARGET_CLIENTS, BenchReport
from bench.simspeed import measure_sim
from bench.workload import ANCHOR_COMMANDS, Workload
from raft.ports.store import Store


@dataclass(frozen=True)
class Sizes:
    commands: dict[int, int]
    cell_budget_s: float
    idle_s: float
    pysyncobj_commands: int
    overload_s: float
    overload_max: int
    recovery_commands: int
    sim_iterations: int
    # The leader's bound on uncommitted entries (Config.max_uncommitted_entries) in the
    # overload section; the quick run's counts are too small to fill the default.
    queue_bound: int


FULL = Sizes({1: 2_000, 10: 5_000, 100: ANCHOR_COMMANDS}, 20.0, 5.0, ANCHOR_COMMANDS, 2.0,
             60_000, 10_000, 1000, RUNNER_CONFIG.max_uncommitted_entries)  # fmt: skip
QUICK = Sizes({1: 30, 10: 100, 100: 300}, 10.0, 0.3, 300, 0.2, 2_000, 300, 5, 64)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny counts (for tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--json-out", help="also write the JSON object to this file")
    parser.add_argument("--servers", type=int, nargs="+", default=[3, 5], help="cluster sizes")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument(
        "--commands", type=int, help="commands per cell (default: 2000/5000/20000 by clients)"
    )
    parser.add_argument("--cell-budget-s", type=float, help="wall-clock bound of one cell")
    parser.add_argument("--idle-s", type=float, help="idle interval measured per cluster size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the election timers")
    parser.add_argument("--no-pysyncobj", action="store_true", help="skip the baseline")
    parser.add_argument(
        "--pysyncobj-tuned-period-ms",
        type=float,
        default=5.0,
        help="also run PySyncObj with this appendEntriesPeriod (0: skip; default 5)",
    )
    parser.add_argument("--no-overload", action="store_true", help="skip the overload section")
    parser.add_argument("--overload-factor", type=float, default=3.0)
    parser.add_argument("--no-sim", action="store_true", help="skip the simulator speed")
    parser.add_argument("--sim-iterations", type=int, help="default 1000 (quick: 5)")
    parser.add_argument(
        "--history-sizes",
        type=int,
        nargs="*",
        help="committed entries per history point, in memory (default 1000 10000 100000)",
    )
    parser.add_argument(
        "--history-azurite-sizes",
        type=int,
        nargs="*",
        help="the same on Azurite at 127.0.0.1:10002, if it is running "
        "(default 1000 10000; 100000 takes about ten minutes)",
    )
    parser.add_argument("--no-forecast", action="store_true", help="skip the Azure forecast")
    add_forecast_arguments(parser)
    defaults = AzureModel()
    for name in AzureModel.parameters():
        parser.add_argument(
            f"--azure-{name.replace('_', '-')}",
            dest=f"azure_{name}",
            type=float,
            default=getattr(defaults, name),
            help=f"cost model parameter (default {getattr(defaults, name):g})",
        )


# The quick run's forecast: short windows, every load still run.
QUICK_FORECAST = {"warmup_s": 1.0, "window_s": 3.0, "idle_s": 10.0}


def add_forecast_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ForecastParameters()
    for f in fields(ForecastParameters):
        default = getattr(defaults, f.name)
        flag = f"--forecast-{f.name.replace('_', '-')}"
        dest = f"forecast_{f.name}"
        if f.name == "clients":
            parser.add_argument(flag, dest=dest, type=int, nargs="+", help="default 1 10 100")
        elif isinstance(default, tuple):
            parser.add_argument(
                flag,
                dest=dest,
                type=float,
                nargs=2,
                metavar=("P50", "P99"),
                help=f"log-normal latency, ms (default {default[0]:g} {default[1]:g})",
            )
        else:
            quick = f" (quick: {QUICK_FORECAST[f.name]:g})" if f.name in QUICK_FORECAST else ""
            help_text = f"default {default:g}{quick}"
            parser.add_argument(flag, dest=dest, type=type(default), help=help_text)


def _forecast_parameters(args: argparse.Namespace) -> ForecastParameters:
    params = ForecastParameters()
    if args.quick:
        params = replace(params, **QUICK_FORECAST)
    given = {
        f.name: getattr(args, f"forecast_{f.name}")
        for f in fields(ForecastParameters)
        if getattr(args, f"forecast_{f.name}", None) is not None
    }
    return replace(params, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def _model(args: argparse.Namespace) -> AzureModel:
    return AzureModel(**{name: getattr(args, f"azure_{name}") for name in AzureModel.parameters()})


def _progress(args: argparse.Namespace, text: str) -> None:
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def _command_line(args: argparse.Namespace) -> str:
    argv = getattr(args, "bench_argv", None)
    if argv is None:
        argv = sys.argv[1:]
        argv = argv[argv.index("bench") + 1 :] if "bench" in argv else argv
    return shlex.join(["python", "-m", "raft", "bench", *argv])


def run_bench(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    budget = args.cell_budget_s or sizes.cell_budget_s
    report = BenchReport(_command_line(args), _model(args))
    for servers in args.servers:
        for clients in args.clients:
            count = args.commands or sizes.commands.get(clients, sizes.commands[100])
            cluster = InProcessCluster(servers, seed=args.seed)
            cluster.wait_for_leader()
            cell = cluster.run_closed_loop(Workload(count, clients, budget_s=budget))
            report.cells.append(cell)
            _progress(args, f"in-process {servers} servers, {clients} clients: "
                            f"{cell.committed}/{count}, {cell.throughput:.0f} cmd/s")  # fmt: skip
        cluster = InProcessCluster(servers, seed=args.seed)
        cluster.wait_for_leader()
        report.idle.append(cluster.run_idle(args.idle_s or sizes.idle_s))
    if not args.no_pysyncobj:
        run_pysyncobj(args, sizes, budget, report)
    if not args.no_overload:
        anchor = report.cell(RATIO_CLUSTER, TARGET_CLIENTS) or report.cells[-1]
        _progress(args, f"overload at {args.overload_factor:g}x {anchor.throughput:.0f} cmd/s")
        report.overload = run_overload(
            anchor.throughput,
            servers=anchor.servers,
            factor=args.overload_factor,
            seconds=sizes.overload_s,
            max_commands=sizes.overload_max,
            recovery_commands=sizes.recovery_commands,
            clients=anchor.clients,
            budget_s=budget,
            queue_bound=sizes.queue_bound,
        )
    if not args.no_sim:
        _progress(args, "simulator speed")
        report.sim = measure_sim(iterations=args.sim_iterations or sizes.sim_iterations)
    run_history(args, report)
    if not args.no_forecast:
        params = _forecast_parameters(args)
        _progress(args, f"Azure forecast ({params.servers} servers, clients {params.clients})")
        report.forecast = run_forecast(params)
    doc = report.to_json()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=1)
    if args.json:
        print(json.dumps(doc))
    else:
        print(report.to_text())
    failed = [c for c in report.cells if c.committed != c.requested]
    return 1 if failed else 0


def run_pysyncobj(
    args: argparse.Namespace, sizes: Sizes, budget: float, report: BenchReport
) -> None:
    if not pysyncobj_baseline.available():
        report.pysyncobj_note = "PySyncObj not installed (pip install pysyncobj==0.3.17)"
        return
    # Its default period makes 20,000 writes at 100 clients take about 21 s: a longer bound.
    workload = Workload(sizes.pysyncobj_commands, TARGET_CLIENTS, budget_s=max(budget, 60.0))
    _progress(args, "pysyncobj (default batching period)")
    report.pysyncobj = pysyncobj_baseline.run_baseline(workload)
    if args.pysyncobj_tuned_period_ms > 0:
        _progress(args, f"pysyncobj (appendEntriesPeriod {args.pysyncobj_tuned_period_ms:g} ms)")
        report.pysyncobj_tuned = pysyncobj_baseline.run_baseline(
            workload, append_period_s=args.pysyncobj_tuned_period_ms / 1000
        )
    report.pysyncobj_note = (
        "PySyncObj with batching sends AppendEntries on a timer (appendEntriesPeriod), so at a "
        "fixed number of clients its throughput is about clients / period; the ratio in the "
        "JSON is against its default period, the tuned row shows a shorter one."
    )


def run_history(args: argparse.Namespace, report: BenchReport) -> None:
    from raft.adapters.memory_store import InMemoryStore

    quick = (1000, 2000)
    sizes = args.history_sizes or (quick if args.quick else (1000, 10_000, 100_000))
    azurite_sizes = args.history_azurite_sizes
    if azurite_sizes is None:
        azurite_sizes = () if args.quick else (1000, 10_000)
    _progress(args, f"history in memory at {sizes}")
    report.history = measure_history(tuple(sizes), {"memory": lambda: _shared(InMemoryStore())})
    if not azurite_sizes:
        return
    if not azurite_reachable():
        report.history_note = "Azurite not running at 127.0.0.1:10002 (scripts/azurite): skipped"
        return
    _progress(args, f"history on Azurite at {azurite_sizes}")
    report.history += measure_history(tuple(azurite_sizes), {"azurite": azurite_tables})


def _shared(store: Store) -> Callable[[], Store]:
    return lambda: store


def add_command(commands: Any) -> None:
    """The `raft.commands` entry point: adds `bench` to `python -m raft`."""
    bench = commands.add_parser("bench", help="measure throughput, latency, messages and writes")
    add_bench_arguments(bench)
    bench.set_defaults(handler=run_bench)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raft bench", description=__doc__)
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    args.bench_argv = argv
    return run_bench(args)
