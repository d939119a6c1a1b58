"""What the CLI prints where there is no terminal (CI logs, pipes, click's runner), and `jams-dr report`.

One embedded drill for the module (about 15 s): its lines on stdout, its drill.log, its report feed the
report and history tests, which need no drill of their own.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from jamsdr import cli
from jamsdr.cli import main
from jamsdr.cliutil import EXIT_BAD_INPUT, EXIT_OK

LINE = re.compile(r"^\s*(?P<elapsed>\d+\.\d) s  (?P<state>\S+)\s+(?P<what>.+?)(?:  (?P<detail>.*))?$")
MOTO_NOISE = ("No Moto CloudFormation support", "UserWarning", "DeprecationWarning")


class Drill:
    def __init__(self, result: Result, run: Path) -> None:
        self.result, self.run = result, run


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Drill:
    root = tmp_path_factory.mktemp("drill")
    result = CliRunner().invoke(main, ["drill", "--report-dir", str(root / "reports")])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    (run,) = list((root / "reports").iterdir())
    return Drill(result, run)


def _event_lines(output: str) -> list[dict[str, Any]]:
    events = []
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            events.append({**match.groupdict(), "elapsed": float(match["elapsed"])})
    return events


def test_without_a_terminal_the_drill_prints_one_line_per_event_in_time_order(drill: Drill) -> None:
    assert drill.result.exit_code == EXIT_OK, drill.result.output
    before_summary = drill.result.stdout.split("Outcome")[0]
    events = _event_lines(before_summary)
    # Every line before the summary is an event: no live table, whose frames only a terminal can redraw.
    assert len(events) == len([line for line in before_summary.splitlines() if line.strip()]) > 20
    assert "┏" not in before_summary and "│" not in before_summary
    elapsed = [e["elapsed"] for e in events]
    assert elapsed == sorted(elapsed)
    order = [(e["state"], e["what"]) for e in events]
    assert order[0] == ("started", "embedded AWS")
    assert order[-2:] == [("done", "teardown"), ("done", "report")]
    chain = order.index(("started", "recovery chain")), order.index(("done", "recovery chain"))
    steps = [what for state, what in order[chain[0]:chain[1]] if state == "done"]
    assert steps[:3] == ["step preflight", "step take_lease", "step fence_primary"]
    assert order.index(("done", "detection")) < chain[0]
    # Each step is shown as it starts, then as it ends, each on its own line.
    assert order.index(("started", "step verify")) < order.index(("done", "step verify"))


def test_moto_warnings_go_to_drill_log_and_never_to_the_console(drill: Drill) -> None:
    log = (drill.run / "drill.log").read_text(encoding="utf-8")
    assert "No Moto CloudFormation support for AWS::" in log
    assert "UserWarning: Tried to parse AWS::" in log
    for noise in MOTO_NOISE:
        assert noise not in drill.result.stdout and noise not in drill.result.stderr


def _history_dir(tmp_path: Path, drill: Drill, runs: int) -> Path:
    history = tmp_path / "history"
    report = json.loads((drill.run / "report.json").read_text(encoding="utf-8"))
    for index in range(runs):
        run = history / f"run-{index}"
        run.mkdir(parents=True)
        report["execution_id"] = f"rec-jams-2026120{index}T033021767Z"
        (run / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return history


def test_history_stays_legible_at_80_columns(
    tmp_path: Path, drill: Drill, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = _history_dir(tmp_path, drill, 3)
    monkeypatch.setattr(cli, "console", Console(width=80))  # what COLUMNS=80 gives a process

    result = CliRunner().invoke(main, ["report", "--history", str(history)])

    assert result.exit_code == EXIT_OK, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    rows = [line for line in lines if "region-recovery" in line]
    # One line per drill with every fact whole: nothing wrapped onto a second line, nothing cut.
    assert len(rows) == 3
    for row in rows:
        assert re.search(r"^\d\d-\d\d \d\d:\d\d +recovery +region-recovery +succeeded +\d+\.\ds +\d+\.\ds "
                         r"+\d+\.\ds *$", row), row
    assert "…" not in result.stdout and "detection" in result.stdout
    assert "RTO trend" in result.stdout


def test_history_at_80_columns_fits_the_widest_values(tmp_path: Path, drill: Drill, monkeypatch: pytest.MonkeyPatch) -> None:
    history = _history_dir(tmp_path, drill, 1)
    report = json.loads((history / "run-0" / "report.json").read_text(encoding="utf-8"))
    report.update(outcome="interrupted", decision="scheduler-outage", kind="failback", rto_seconds=3599.0,
                  rpo_seconds=7261.0, detection_seconds=59.94)
    (history / "run-0" / "report.json").write_text(json.dumps(report), encoding="utf-8")
    monkeypatch.setattr(cli, "console", Console(width=80))

    result = CliRunner().invoke(main, ["report", "--history", str(history)])

    (row,) = [line for line in result.stdout.splitlines() if "scheduler-outage" in line]
    assert re.search(r"failback +scheduler-outage +interrupted +59m59s +2h01m +59\.9s *$", row), row
    assert all(len(line) <= 80 for line in result.stdout.splitlines()) and "…" not in result.stdout


def test_history_at_a_wide_terminal_names_each_execution(
    tmp_path: Path, drill: Drill, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = _history_dir(tmp_path, drill, 2)
    monkeypatch.setattr(cli, "console", Console(width=160))

    result = CliRunner().invoke(main, ["report", "--history", str(history)])

    assert result.exit_code == EXIT_OK, result.output
    assert "rec-jams-20261200T033021767Z" in result.stdout and "rec-jams-20261201T033021767Z" in result.stdout


def test_history_skips_a_malformed_report_with_a_warning_naming_it(tmp_path: Path, drill: Drill) -> None:
    history = _history_dir(tmp_path, drill, 2)
    (history / "broken").mkdir()
    (history / "broken" / "report.json").write_text('{"kind": "recovery", ', encoding="utf-8")
    (history / "foreign").mkdir()
    (history / "foreign" / "report.json").write_text('{"execution_id": "x"}', encoding="utf-8")

    result = CliRunner().invoke(main, ["report", "--history", str(history)])

    assert result.exit_code == EXIT_OK, result.output
    assert "2 drill(s)" in result.stdout
    warnings = " ".join(result.stderr.split())
    assert f"warning: skipped {history / 'broken' / 'report.json'}: unreadable" in warnings
    assert f"warning: skipped {history / 'foreign' / 'report.json'}: no kind, outcome, decision" in warnings


def test_report_renders_several_files_and_skips_a_malformed_one(tmp_path: Path, drill: Drill) -> None:
    history = _history_dir(tmp_path, drill, 2)
    first, second = history / "run-0" / "report.json", history / "run-1" / "report.json"
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]", encoding="utf-8")

    result = CliRunner().invoke(main, ["report", str(first), str(bad), str(second)])

    assert result.exit_code == EXIT_BAD_INPUT, result.output
    for run in (first.parent, second.parent):
        assert (run / "report.md").is_file() and (run / "report.html").is_file()
        assert f"wrote {run / 'report.json'}" in result.stdout
    assert " ".join(result.stderr.split()) == f"warning: skipped {bad}: not a JSON object but list"


def test_report_of_good_files_only_exits_0(tmp_path: Path, drill: Drill) -> None:
    shutil.copy(drill.run / "report.json", tmp_path / "report.json")

    result = CliRunner().invoke(main, ["report", str(tmp_path / "report.json")])

    assert result.exit_code == EXIT_OK, result.output
    assert (tmp_path / "report.html").is_file() and result.stderr == ""


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_a_report_dir_that_cannot_be_written_exits_2_naming_it_before_the_drill(tmp_path: Path, kind: str) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("", encoding="utf-8")
    report_dir = blocker if kind == "a file" else blocker / "reports"

    result = CliRunner().invoke(main, ["drill", "--report-dir", str(report_dir)])

    assert result.exit_code == EXIT_BAD_INPUT
    assert f"--report-dir {report_dir}" in " ".join(result.stderr.split())
    assert "embedded AWS" not in result.stdout  # refused before anything started
