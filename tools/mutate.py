"""Mutation testing of the Raft core and node handler against the systematic tester.

Opt-in (the test suite does not run it; a full run takes tens of minutes):

    .venv/bin/python tools/mutate.py --jobs 2 --out mutation-results.json
    .venv/bin/python tools/mutate.py --list raft/core/server.py
    .venv/bin/python tools/mutate.py --only raft/core/server.py:17
    .venv/bin/python tools/mutate.py --shard 0/4     # every 4th mutant: a quick estimate

Each mutant changes one operator or statement of a file (the operators below), and is killed
if `python -m raft test` at its default budget (5 servers, 100 schedules of 200 steps, seed
0, the default portfolio) reports a bug against it, or if that run crashes or exceeds
`--timeout`. A mutant runs in its own process, whose import of the mutated module is
served from the mutated syntax tree, so the source files are never touched.

Operators: a comparison replaced by its neighbour (< and <=, > and >=, == and !=, is and is
not, in and not in); `and` and `or` swapped; a `not` removed; + and - swapped, * and //
swapped; += and -= swapped; an integer constant n replaced by n + 1 (1 by 0); True and
False swapped; min and max swapped; a statement (an expression, an assignment or a
deletion) replaced by `pass`. Not mutated: docstrings, annotations, f-strings, the
arguments of `raise` and `assert`, and logging calls (they change no behaviour the tester
can observe, by design).
"""

from __future__ import annotations

import argparse
import ast
import importlib.abc
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("raft/core/server.py", "raft/node/handler.py")

COMPARISONS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
ARITHMETIC: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
}
SYMBOLS = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.FloorDiv: "//",
}


@dataclass(frozen=True)
class Site:
    """One mutant: where, and what it changes."""

    file: str
    index: int
    line: int
    change: str


class Mutator(ast.NodeTransformer):
    """Walks a module in a fixed order, numbering every mutation it could make; applies the
    one numbered `target` (None: applies nothing, only lists)."""

    def __init__(self, file: str, target: int | None = None) -> None:
        self.file = file
        self.target = target
        self.sites: list[Site] = []
        self.depth = 0

    def _site(self, node: ast.AST, change: str) -> bool:
        """Number a possible mutation; True if it is the one to apply."""
        index = len(self.sites)
        self.sites.append(Site(self.file, index, getattr(node, "lineno", 0), change))
        return index == self.target

    # Parts of the tree that are never mutated.
    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        return node

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        return node

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_arguments(self, node: ast.arguments) -> ast.AST:
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.depth += 1
        node.body = self._statements(node.body)
        self.depth -= 1
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.body = self._statements(node.body)
        return node

    def visit_Module(self, node: ast.Module) -> ast.AST:
        node.body = self._statements(node.body)
        return node

    def generic_visit(self, node: ast.AST) -> ast.AST:
        """Visit every child once, statement lists through `_statements`."""
        for field, value in ast.iter_fields(node):
            if isinstance(value, list):
                if value and isinstance(value[0], ast.stmt):
                    setattr(node, field, self._statements(value))
                else:
                    value[:] = [self.visit(v) if isinstance(v, ast.AST) else v for v in value]
            elif isinstance(value, ast.AST):
                setattr(node, field, self.visit(value))
        return node

    def _statements(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for stmt in body:
            # Only inside functions: deleting a module or class attribute breaks the import.
            deletable = self.depth > 0 and _deletable(stmt)
            if deletable and self._site(stmt, f"delete `{_short(stmt)}`"):
                out.append(ast.copy_location(ast.Pass(), stmt))
                continue
            if _is_docstring(stmt) or _is_logging(stmt):
                out.append(stmt)
                continue
            visited = self.visit(stmt)
            out.append(visited if isinstance(visited, ast.stmt) else stmt)
        return out or [ast.Pass()]

    # Operators.
    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            swap = COMPARISONS.get(type(op))
            if swap is not None and self._site(
                node, f"`{SYMBOLS[type(op)]}` -> `{SYMBOLS[swap]}` in `{_short(node)}`"
            ):
                node.ops[i] = swap()
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        name = "and" if isinstance(node.op, ast.And) else "or"
        other = "or" if name == "and" else "and"
        if self._site(node, f"`{name}` -> `{other}` in `{_short(node)}`"):
            node.op = ast.Or() if name == "and" else ast.And()
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self._site(node, f"remove `not` in `{_short(node)}`"):
            return node.operand
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        swap = ARITHMETIC.get(type(node.op))
        if swap is not None and self._site(
            node, f"`{SYMBOLS[type(node.op)]}` -> `{SYMBOLS[swap]}` in `{_short(node)}`"
        ):
            node.op = swap()
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        self.generic_visit(node)
        swap = ARITHMETIC.get(type(node.op))
        if (
            swap is not None
            and isinstance(node.op, ast.Add | ast.Sub)
            and self._site(
                node, f"`{SYMBOLS[type(node.op)]}=` -> `{SYMBOLS[swap]}=` in `{_short(node)}`"
            )
        ):
            node.op = swap()
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, bool):
            if self._site(node, f"`{value}` -> `{not value}`"):
                return ast.copy_location(ast.Constant(not value), node)
        elif isinstance(value, int):
            new = 0 if value == 1 else value + 1
            if self._site(node, f"`{value}` -> `{new}`"):
                return ast.copy_location(ast.Constant(new), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
            other = "max" if node.func.id == "min" else "min"
            if self._site(node, f"`{node.func.id}` -> `{other}` in `{_short(node)}`"):
                node.func = ast.copy_location(ast.Name(other, ast.Load()), node.func)
        return node


def _deletable(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Expr):
        return not _is_docstring(stmt) and not _is_logging(stmt)
    return isinstance(stmt, ast.Assign | ast.AugAssign | ast.Delete)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)


def _is_logging(stmt: ast.stmt) -> bool:
    if not isinstance(stmt, ast.Expr) or not isinstance(stmt.value, ast.Call):
        return False
    func = stmt.value.func
    return isinstance(func, ast.Attribute) and (
        (isinstance(func.value, ast.Name) and func.value.id == "log")
        or func.attr == "_log_transition"
    )


def _short(node: ast.AST) -> str:
    text = ast.unparse(node).splitlines()[0]
    return text if len(text) <= 70 else text[:67] + "..."


def sites(file: str) -> list[Site]:
    mutator = Mutator(file)
    mutator.visit(ast.parse((ROOT / file).read_text(encoding="utf-8")))
    return mutator.sites


def mutated_code(file: str, index: int) -> Any:
    mutator = Mutator(file, index)
    tree = ast.fix_missing_locations(
        mutator.visit(ast.parse((ROOT / file).read_text(encoding="utf-8")))
    )
    return compile(tree, str(ROOT / file), "exec")


class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one module from mutated code; every other import is left alone."""

    def __init__(self, name: str, code: Any, path: str) -> None:
        self.name, self.code, self.path = name, code, path

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=self.path)

    def exec_module(self, module: ModuleType) -> None:
        module.__file__ = self.path
        exec(self.code, module.__dict__)


def run_child(file: str, index: int) -> int:
    """In a fresh process: import the mutant, run the default `raft test`, print a verdict."""
    sys.path.insert(0, str(ROOT))
    name = file.removesuffix(".py").replace("/", ".")
    sys.meta_path.insert(0, _MutantFinder(name, mutated_code(file, index), str(ROOT / file)))
    from raft.sim.runner import RunOptions, explore
    from raft.sim.schedule import SimSetup

    result = explore(RunOptions(SimSetup(), seed=0, iterations=100))
    failure = result.failure
    verdict = {
        "killed": failure is not None,
        "by": failure.violation.property if failure else None,
        "schedule": failure.spec.index if failure else None,
    }
    print(json.dumps(verdict))
    return 0


def run_mutant(site: Site, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", site.file, str(site.index)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        verdict: dict[str, Any] = {"killed": True, "by": "timeout", "schedule": None}
    else:
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            verdict = {"killed": True, "by": f"crash: {last[:120]}", "schedule": None}
        else:
            verdict = json.loads(lines[-1])
    return {**asdict(site), **verdict, "seconds": round(time.perf_counter() - started, 2)}


def _selected(args: argparse.Namespace) -> Iterator[Site]:
    if args.only:
        for spec in args.only:
            file, _, index = spec.rpartition(":")
            yield sites(file)[int(index)]
        return
    shard, _, shards = (args.shard or "0/1").partition("/")
    for file in args.files or TARGETS:
        for site in sites(file):
            if site.index % int(shards) == int(shard):
                yield site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help=f"files to mutate (default {' '.join(TARGETS)})")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", help="FILE:INDEX, one mutant (repeatable)")
    parser.add_argument(
        "--shard", help="K/N: only the mutants whose index is K modulo N (a sample)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant")
    parser.add_argument("--out", type=Path, help="write every verdict here (JSON)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child[0], int(args.child[1]))
    selected = list(_selected(args))
    if args.list:
        for site in selected:
            print(f"{site.file}:{site.index} line {site.line}: {site.change}")
        return 0
    results: list[dict[str, Any]] = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for result in pool.map(lambda s: run_mutant(s, args.timeout), selected):
            results.append(result)
            mark = "killed" if result["killed"] else "SURVIVED"
            print(
                f"{result['file']}:{result['index']} line {result['line']} {mark} "
                f"({result['by']}, {result['seconds']} s): {result['change']}",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for file in sorted({r["file"] for r in results}):
        mine = [r for r in results if r["file"] == file]
        killed = sum(r["killed"] for r in mine)
        print(f"{file}: {killed}/{len(mine)} killed ({100 * killed / len(mine):.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
