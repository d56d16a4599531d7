"""Scripted interactions with golden output (etcd's data-driven tests): each file in
testdata/ walks a simulated cluster through one failure point of docs/design.md, printing
the steps taken, every server's stored state and the messages in flight after each command.
Run with RAFT_REWRITE_GOLDEN=1 to rewrite the expected output after a deliberate change,
then review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raft.sim.script import ScriptError, render, run_file

TESTDATA = Path(__file__).resolve().parent.parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


def test_there_are_scripts() -> None:
    assert SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_the_script_gives_its_golden_output(path: Path) -> None:
    blocks, outputs = run_file(path)
    if os.environ.get("RAFT_REWRITE_GOLDEN") == "1":
        path.write_text(render(blocks, outputs), encoding="utf-8")
        return
    for block, output in zip(blocks, outputs, strict=True):
        assert output == block.expected, f"{path.name}:{block.line}: {block.command}"


def test_a_command_the_driver_cannot_carry_out_names_its_line(tmp_path: Path) -> None:
    script = tmp_path / "bad.txt"
    script.write_text("cluster servers=3\n----\n\ndeliver to=s9\n----\n", encoding="utf-8")
    with pytest.raises(ScriptError, match=r"bad.txt:4: no message in flight matches to=s9"):
        run_file(script)
