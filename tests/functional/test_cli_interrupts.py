"""Ctrl-C during a drill, at three moments: setup, the recovery chain, the teardown.

Each interrupt is triggered by an event of the drill (a phase or a step starting), never by a timer:
KeyboardInterrupt raised where the drill is at that moment (through click's runner), and once a real
SIGINT sent to a real process when it prints that the chain has begun. After each: exit 130, one line
naming the interrupted phase, a report (partial and ``interrupted``, or the complete one kept), and
nothing of the embedded AWS left behind (its server thread, its port).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner, Result

from jamsdr import cli, drill
from jamsdr.cli import main
from jamsdr.cliutil import EXIT_INTERRUPTED
from jamsdr.embedded import EmbeddedAws

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def endpoints(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The endpoint of every embedded AWS the drill starts."""
    started: list[str] = []
    real_start = EmbeddedAws.start

    def start(self: EmbeddedAws) -> Any:
        clients = real_start(self)
        started.append(self.endpoint)
        return clients

    monkeypatch.setattr(EmbeddedAws, "start", start)
    return started


def _drill(tmp_path: Path) -> tuple[Result, Path]:
    result = CliRunner().invoke(main, ["drill", "--report-dir", str(tmp_path / "r")])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    (run,) = list((tmp_path / "r").iterdir())
    return result, run


def _stopped_cleanly(endpoint: str, threads_before: set[threading.Thread]) -> None:
    url = urlsplit(endpoint)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.connect_ex((url.hostname or "", url.port or 0)) != 0, f"{endpoint} still accepts connections"
    left = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert left == [], left


def _one_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_ctrl_c_during_setup_writes_a_partial_report_and_stops_the_embedded_aws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoints: list[str]
) -> None:
    def interrupted(*_: Any, **__: Any) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(drill, "_snapshot_cycles", interrupted)
    before = set(threading.enumerate())

    result, run = _drill(tmp_path)

    assert result.exit_code == EXIT_INTERRUPTED, result.output
    line = _one_line(result)
    assert line.startswith("interrupted: drill interrupted (Ctrl-C) during recovery points: partial report ")
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert (report["outcome"], report["kind"], report["decision"]) == ("interrupted", "recovery", "undecided")
    assert report["steps"] == []
    assert report["interrupted"]["phase"] == "recovery points"
    done = [p["name"] for p in report["interrupted"]["phases_done"]]
    # The lint runs only where the template was never linted clean (the cache): it may or may not be there.
    assert [name for name in done if name != "template lint"] == ["embedded AWS", "build regions", "deploy functions",
                                                                  "teardown"]
    assert "interrupted" in (run / "report.md").read_text(encoding="utf-8")
    assert (run / "report.html").is_file()
    # The operator saw the teardown happen after the interrupt.
    assert "failed   recovery points  interrupted (Ctrl-C)" in result.stdout
    assert "done     teardown" in result.stdout
    _stopped_cleanly(endpoints[0], before)


def test_ctrl_c_during_the_chain_keeps_the_steps_done_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoints: list[str]
) -> None:
    real = cli.DrillLines.on_progress

    def on_progress(self: cli.DrillLines, progress: Any) -> None:
        real(self, progress)
        if (progress.kind, progress.state) == ("state-started", "verify"):
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.DrillLines, "on_progress", on_progress)
    before = set(threading.enumerate())

    result, run = _drill(tmp_path)

    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert "during recovery chain: partial report" in _one_line(result)
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert (report["outcome"], report["decision"]) == ("interrupted", "region-recovery")
    assert report["execution_id"].startswith("rec-")
    outcomes = [(s["name"], s["outcome"]) for s in report["steps"]]
    assert outcomes == [("preflight", "succeeded"), ("take_lease", "succeeded"), ("fence_primary", "succeeded"),
                        ("create_app_stack", "succeeded"), ("wait_for_stack", "succeeded"),
                        ("verify", "interrupted")]
    assert all(s["started_at"] and s["ended_at"] for s in report["steps"][:-1])
    assert report["failure_at"] and report["snapshot"]["id"]
    assert "detection" in [p["name"] for p in report["interrupted"]["phases_done"]]
    _stopped_cleanly(endpoints[0], before)


def test_ctrl_c_during_teardown_keeps_the_complete_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoints: list[str]
) -> None:
    real_stop = EmbeddedAws.stop
    calls: list[int] = []

    def stop(self: EmbeddedAws) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # before anything is stopped: the drill must finish the job
        real_stop(self)

    monkeypatch.setattr(EmbeddedAws, "stop", stop)
    before = set(threading.enumerate())

    result, run = _drill(tmp_path)

    assert result.exit_code == EXIT_INTERRUPTED, result.output
    line = _one_line(result)
    assert "during teardown, after it had completed: the complete report is kept" in line
    assert "outcome succeeded" in line
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert (report["outcome"], report["decision"]) == ("succeeded", "region-recovery")
    assert report["rto_seconds"] > 0 and "interrupted" not in report
    assert {p.name for p in run.iterdir()} >= {"report.json", "report.md", "report.html", "drill.log"}
    assert len(calls) == 2
    _stopped_cleanly(endpoints[0], before)


def test_a_real_sigint_when_the_chain_begins_exits_130_with_a_partial_report(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from jamsdr.cli import main; main()", "drill", "--report-dir", str(tmp_path / "r")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    seen: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if "step preflight" in line and " done " in line:
                process.send_signal(signal.SIGINT)
                break
        rest, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = "".join(seen) + rest

    assert process.returncode == EXIT_INTERRUPTED, (output, stderr)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "during recovery chain: partial report" in lines[0], stderr
    (run,) = list((tmp_path / "r").iterdir())
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert report["outcome"] == "interrupted"
    assert report["steps"][0]["name"] == "preflight" and report["steps"][0]["outcome"] == "succeeded"
    assert "done     teardown" in output
