"""The benchmark scripts run (tiny modes) and print their figures; no figure is asserted (no timing).

Each script's ``main`` is called in-process with the smallest arguments that still take every code
path (the embedded AWS, the drill CLI, chalice package); the output is checked for the lines the
benchmark exists to print. Also here: the embedded AWS's template-lint cache, which the drill
benchmark measures (jamsdr/embedded.py).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import (
    cold_start,
    detection_latency,
    drill_time,
    package_size,
    recovery,
    run,
    self_fence_window,
    snapshot_calls,
)
from jamsdr import embedded


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The scripts quiet the app's logger and set moto's snapshot quota: put both back afterwards."""
    monkeypatch.setenv("MOTO_RDS_SNAPSHOT_LIMIT", "1000")
    logger = logging.getLogger("jams-dr")
    level = logger.level
    yield
    logger.setLevel(level)


def test_cold_start_prints_the_ratio_and_what_stays_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert cold_start.main(["--runs", "1", "--first-call-runs", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "ratio app (source)/boto3" in out and "ratio app (bytecode)/boto3" in out
    assert "kept out of the Lambda path" in out and "all absent" in out
    assert "heartbeat_watcher:" in out  # the first-call imports were measured


def test_cold_start_parses_importtime_lines() -> None:
    stderr = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       100 |        250 |   chalice.app",
        "import time:        50 |        900 | app",
        "import time:        10 |        400 | chalicelib.detection.watcher",
        "import time:         5 |         30 |   chalicelib.detection.heartbeats",
    ])
    assert cold_start.parse_importtime(stderr) == {
        "chalice.app": 250, "app": 900, "chalicelib.detection.watcher": 400, "chalicelib.detection.heartbeats": 30}
    assert cold_start.after_first(stderr, "app") == {"chalicelib.detection.watcher": 400}


def test_package_size_reports_the_zip_and_its_layer(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert package_size.main(["--stage", "dev", "--out", str(tmp_path / "pkg")]) == 0
    out = capsys.readouterr().out
    assert "deployment.zip" in out and "10 MB bar" in out
    assert "AWSLambdaPowertoolsPythonV3-python311-x86_64" in out
    assert "chalicelib" in out


def test_detection_latency_prints_the_bound_and_false_decisions(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--runs", "1", "--quiet-runs", "1", "--quiet-seconds", "1"]
    assert detection_latency.main(argv) == 0
    out = capsys.readouterr().out
    assert "bound (issue)" in out and "4.00 s" in out and "wall: median and p95" in out
    assert "false decisions with jitter 0.50" in out


@pytest.mark.slow
def test_drill_time_runs_the_drill_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A plain drill (failure "none"): every phase of the CLI run without waiting for a detection.
    scenario = tmp_path / "plain.json"
    scenario.write_text('{"failure": "none"}')
    reports = tmp_path / "reports"
    argv = ["--runs", "1", "--lint-cache", "cold", "--scenario", str(scenario), "--report-dir", str(reports)]
    assert drill_time.main(argv) == 0
    out = capsys.readouterr().out
    assert "healthy/succeeded (exit 0)" in out
    assert "drill chain" in out and "preflight" in out and "teardown" in out
    assert list(reports.glob("*/timing.json"))  # the drill wrote its phases


def test_snapshot_calls_counts_pages_and_deletes(capsys: pytest.CaptureFixture[str]) -> None:
    assert snapshot_calls.main(["--sizes", "4"]) == 0
    out = capsys.readouterr().out
    assert "steady state: nothing due" in out
    assert "prune 4 old snapshots" in out


def test_recovery_counts_calls_and_invocations(capsys: pytest.CaptureFixture[str]) -> None:
    assert recovery.main(["--restore-minutes", "2"]) == 0
    out = capsys.readouterr().out
    assert "AWS calls per recovery" in out and "chain status succeeded" in out
    assert "1 invocations" in out and "status succeeded" in out


def test_self_fence_window_prints_both_cases(capsys: pytest.CaptureFixture[str]) -> None:
    # One run of each case: the recovery chain records the pending fence, the simulated hosts read it.
    assert self_fence_window.main(["--runs", "1", "--outage-minutes", "20"]) == 0
    out = capsys.readouterr().out
    assert "region's return -> JAMS scheduler stopped by the host itself" in out
    assert "beats published after the return: 0" in out and "instances it stopped: 2 of 2" in out
    assert "fence recorded -> JAMS scheduler stopped" in out


def test_run_lists_every_benchmark_and_refuses_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in ("cold_start", "package_size", "detection_latency", "drill_time", "snapshot_calls", "recovery"):
        assert name in listed
    with pytest.raises(SystemExit) as refused:
        run.main(["--only", "cold_start,nonsense"])
    assert refused.value.code == 2
    assert "nonsense" in capsys.readouterr().err


# ---------------------------------------------------------------- the embedded AWS's template-lint cache


class _Lint:
    def __init__(self, answer: list[Any], delay: float = 0.0) -> None:
        self.answer, self.delay, self.calls = answer, delay, 0
        self.lock = threading.Lock()

    def __call__(self, template: str) -> list[Any]:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)  # a slow lint, so that a second caller arrives while it runs
        return list(self.answer)


def test_lint_cache_lints_each_body_once_even_when_callers_overlap(tmp_path: Path) -> None:
    lint = _Lint([], delay=0.2)
    cache = embedded._TemplateLintCache(lint, tmp_path)
    results: list[list[Any]] = []
    threads = [threading.Thread(target=lambda: results.append(cache("Resources: {}"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [[], [], []]
    assert lint.calls == 1
    cache("Resources: {A: 1}")
    assert lint.calls == 2  # another body is linted


def test_lint_cache_remembers_clean_bodies_on_disk_only(tmp_path: Path) -> None:
    clean = _Lint([])
    first = embedded._TemplateLintCache(clean, tmp_path)
    assert not first.known_clean("clean body")
    first("clean body")
    assert first.known_clean("clean body")
    unused = _Lint(["never used"])
    later = embedded._TemplateLintCache(unused, tmp_path)  # another process
    assert later.known_clean("clean body")
    assert later("clean body") == []
    assert unused.calls == 0

    finding = _Lint(["E3001 bad resource"])
    embedded._TemplateLintCache(finding, tmp_path)("bad body")
    again = _Lint(["E3001 bad resource"])
    rerun = embedded._TemplateLintCache(again, tmp_path)
    assert not rerun.known_clean("bad body")
    assert rerun("bad body") == ["E3001 bad resource"]
    assert again.calls == 1  # findings are always linted afresh


def test_lint_cache_does_not_remember_a_failed_lint(tmp_path: Path) -> None:
    calls = []

    def flaky(template: str) -> list[Any]:
        calls.append(template)
        if len(calls) == 1:
            raise RuntimeError("cfn-lint crashed")
        return []

    cache = embedded._TemplateLintCache(flaky, tmp_path)
    with pytest.raises(RuntimeError, match="crashed"):
        cache("body")
    assert cache("body") == []
    assert len(calls) == 2
