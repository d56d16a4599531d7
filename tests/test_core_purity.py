"""The protocol core is pure: it imports no Azure SDK, clock, randomness, threads, event loop
or I/O, so every host (and the simulator) drives the very same code. (That it imports
nothing above itself is tests/test_layers.py's job.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "raft" / "core"
FORBIDDEN = {
    "azure",
    "time",
    "datetime",
    "random",
    "secrets",
    "uuid",
    "threading",
    "asyncio",
    "concurrent",
    "multiprocessing",
    "os",
    "socket",
    "subprocess",
    "io",
    "logging",
}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_nothing_impure(path: Path) -> None:
    for name in imports(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"{path.name} imports {name}"
