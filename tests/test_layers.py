"""Every import under `raft/` points down the layers, and no module imports itself back.

The layers, lowest first: core < app < ports < adapters < node < hosts, with the simulator
(`sim`) beside the hosts, and the command line above them all. A module may import its own
package and any lower layer; `hosts` and `sim` may not import each other; nothing under
`raft/` imports the benchmarks. Imports inside functions count too: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "raft"
LAYERS = {"core": 0, "app": 1, "ports": 2, "adapters": 3, "node": 4, "hosts": 5, "sim": 5}
TOP = 6  # raft/cli.py, raft/__main__.py, raft/__init__.py


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """Modules `path` imports; `from package import name` counts as the submodule when
    `package.name` is one."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return found


GRAPH = {
    name: {m for m in imported_modules(path) if m in MODULES} for name, path in MODULES.items()
}


def layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    package = parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""
    return package, LAYERS.get(package, TOP)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module: str) -> None:
    package, layer = layer_of(module)
    for target in GRAPH[module]:
        target_package, target_layer = layer_of(target)
        assert target_package == package or target_layer < layer, (
            f"{module} ({package or 'top'}) imports {target} ({target_package or 'top'})"
        )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_in_the_product_imports_the_benchmarks(module: str) -> None:
    outside = {m for m in imported_modules(MODULES[module]) if m.split(".")[0] == "bench"}
    assert not outside, f"{module} imports {sorted(outside)}"


def cycles_in(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components: each component of two or more modules, or a
    module importing itself, is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1 or module in graph[module]:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycles() -> None:
    assert not cycles_in(GRAPH), f"import cycles: {cycles_in(GRAPH)}"


def test_the_cycle_check_finds_a_cycle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles_in(graph) == [["a", "b", "c"], ["e"]]


def test_the_functions_app_reaches_raft_only_through_the_hosts() -> None:
    targets = {m for m in imported_modules(ROOT / "function_app.py") if m.startswith("raft")}
    assert targets and all(layer_of(m)[0] == "hosts" for m in targets), targets
