"""The `test` and `replay` entry points (raft.sim.cli), the trace files and the HTML page."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from raft.sim import cli
from raft.sim.variants import VARIANTS


def _test_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_test_arguments(parser)
    return parser.parse_args(list(argv))


def _replay_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_replay_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_clean_run_exits_0_and_prints_the_json_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.run_test(_test_args("--iterations", "40", "--json", "--out", str(tmp_path)))
    out, err = capsys.readouterr()
    assert code == 0
    report = json.loads(out)
    for key in ("schedules", "bugs", "steps", "elapsed_s", "schedules_per_s", "coverage"):
        assert key in report
    assert report["schedules"] == 40 and report["bugs"] == 0
    assert set(report["coverage"]) == {"received", "sent", "transitions", "faults"}
    assert "leader" in report["coverage"]["received"]
    assert "40/40 schedules (100%)" in err
    assert not list(tmp_path.iterdir())


def test_the_text_summary_reports_exploration_and_coverage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.run_test(_test_args("--iterations", "20", "--servers", "3")) == 0
    out = capsys.readouterr().out
    assert "Found 0 bugs." in out
    assert "Explored 20 schedules" in out
    assert "schedules/s" in out
    assert re.search(r"leader\s+received: .*append_entries_response", out)
    assert "transitions:" in out and "faults:" in out


def test_a_bug_exits_1_and_leaves_a_trace_that_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _test_args("--variant", "commit-before-majority", "--json", "--out", str(tmp_path))
    assert cli.run_test(args) == 1
    bug = json.loads(capsys.readouterr().out)["bug"]
    assert bug["property"] == "commit-safety"
    assert Path(bug["trace"]).exists() and Path(bug["html"]).exists()

    assert cli.run_replay(_replay_args(bug["trace"])) == 0
    out = capsys.readouterr().out
    assert out.startswith("#   1 ")
    assert f"reproduced commit-safety at step {bug['step']}" in out


def test_a_tampered_trace_does_not_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.run_test(_test_args("--variant", "vote-not-persisted", "--json", "--out", str(tmp_path)))
    path = Path(json.loads(capsys.readouterr().out)["bug"]["trace"])
    doc = json.loads(path.read_text())
    doc["setup"]["target"] = "raft.core.server:RaftServer"
    path.write_text(json.dumps(doc))
    assert cli.run_replay(_replay_args(str(path), "--quiet")) == 1
    assert "did not reproduce" in capsys.readouterr().out


def test_the_html_timeline_is_self_contained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.run_test(_test_args("--variant", "vote-not-persisted", "--json", "--out", str(tmp_path)))
    page = Path(json.loads(capsys.readouterr().out)["bug"]["html"]).read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page and "<style>" in page and "<script>" in page
    # No fetches: nothing but the SVG namespace names a URL, and nothing is linked in.
    assert set(re.findall(r"https?://[^\"' )]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert "<link" not in page and " src=" not in page
    assert "election-safety" in page
    for server in ("s1", "s5"):
        assert f">{server}</text>" in page


def test_list_variants_names_the_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run_test(_test_args("--list-variants")) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in VARIANTS)


def test_a_user_factory_is_tested_through_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = "raft.sim.variants:ForgetsVote"
    args = _test_args("--target", target, "--json", "--out", str(tmp_path))
    assert cli.run_test(args) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == target
    assert report["bug"]["property"] == "election-safety"


def test_a_bad_target_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run_test(_test_args("--target", "no_such_module:factory")) == 2
    assert "raft test:" in capsys.readouterr().err
