"""`make drill`'s default scenario end to end, repeated in fresh processes: wall time, phases, steps.

    .venv/bin/python -m benchmarks.drill_time [--runs 5] [--scenario FILE] [--lint-cache warm|cold|off]

Each run is ``jams-dr drill --report-dir <tmp>`` in a new process (interpreter start, imports, the
embedded AWS, both regions built, recovery points, heartbeats, the failure, detection, the recovery
chain, teardown, the report): the wall time is the process's. The drill's own phase durations come
from the run's timing.json, the chain's steps from report.json (ended_at - started_at), RTO and
detection from report.json.

``--lint-cache`` (jamsdr/embedded.py, the fix the profile led to): ``warm`` (default) as ``make drill``
runs on a machine that drilled before (the clean lint of the unchanged template is remembered on
disk); ``cold``: a fresh cache directory per run (the first drill on a machine: the lint runs once,
in the background during the recovery points, and the drill waits for it in a "template lint" phase
before anything runs in real time); ``off``: JAMSDR_LINT_CACHE=off, moto's own ValidateTemplate (the
full cfn-lint rule set inside the recovery's preflight): the figure before the fix.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.clock import parse_iso

BAR_SECONDS = 30.0


@dataclass
class DrillRun:
    wall: float
    exit_code: int
    phases: dict[str, float] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def jams_dr() -> str:
    return str(Path(sys.executable).with_name("jams-dr"))


def one_run(report_root: Path, scenario: Path | None, lint_cache: str, scratch: Path,
            in_process: bool = False) -> DrillRun:
    env = dict(os.environ)
    if lint_cache == "off":
        env["JAMSDR_LINT_CACHE"] = "off"
    elif lint_cache == "cold":
        env["JAMSDR_CACHE_DIR"] = tempfile.mkdtemp(prefix="cold-cache-", dir=scratch)
    command = [jams_dr(), "drill", "--report-dir", str(report_root)]
    if scenario is not None:
        command += ["--scenario", str(scenario)]
    if in_process:
        command.append("--in-process")
    before = set(report_root.iterdir()) if report_root.exists() else set()
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # our own CLI
    wall = time.perf_counter() - started
    new = sorted(set(report_root.iterdir()) - before) if report_root.exists() else []
    if not new:
        raise RuntimeError(f"the drill wrote no report (exit {done.returncode}):\n{done.stderr[-2000:]}")
    run_dir = new[-1]
    report = json.loads((run_dir / "report.json").read_text())
    timing_file = run_dir / "timing.json"
    phases = json.loads(timing_file.read_text())["phases"] if timing_file.exists() else {}
    steps: dict[str, float] = {}
    for step in report.get("steps", []):
        if step.get("started_at") and step.get("ended_at"):
            seconds = (parse_iso(step["ended_at"]) - parse_iso(step["started_at"])).total_seconds()
            steps[step["name"]] = steps.get(step["name"], 0.0) + seconds
    return DrillRun(wall, done.returncode, phases, steps, report)


def medians(runs: Sequence[DrillRun], attribute: str) -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for name, seconds in getattr(run, attribute).items():
            values[name].append(seconds)
    return {name: statistics.median(v) for name, v in values.items()}


LABELS = {"warm": "lint cache warm (a machine that drilled before)",
          "cold": "lint cache cold (a machine's first drill)",
          "off": "lint cache OFF (moto's own ValidateTemplate: before the fix)"}


def report_runs(runs: Sequence[DrillRun], lint_cache: str, mode: str = "deployed") -> None:
    walls = [r.wall for r in runs]
    label = LABELS[lint_cache]
    flag = " --in-process" if mode == "in-process" else ""
    print(f"drill time: `jams-dr drill{flag}` default scenario ({mode}), {len(runs)} fresh processes, {label}")
    print(f"  wall (process)   median {statistics.median(walls):6.2f} s   min {min(walls):6.2f}   "
          f"max {max(walls):6.2f}   bar {BAR_SECONDS:.0f} s: "
          f"{'met' if statistics.median(walls) < BAR_SECONDS else 'NOT met'}")
    outcomes = sorted({f"{r.report.get('decision')}/{r.report.get('outcome')} (exit {r.exit_code})" for r in runs})
    print(f"  outcomes         {', '.join(outcomes)}")
    for key in ("rto_seconds", "detection_seconds", "rpo_seconds"):
        values = [float(r.report[key]) for r in runs if r.report.get(key) is not None]
        if values:
            print(f"  {key:<16} median {statistics.median(values):6.2f} s   min {min(values):6.2f}   "
                  f"max {max(values):6.2f}")
    phase_medians = medians(runs, "phases")
    if phase_medians:
        accounted = sum(phase_medians.values())
        print("  phases (median s; the rest of the wall is interpreter start, imports and the report):")
        for name, seconds in phase_medians.items():
            print(f"    {seconds:6.2f}  {name}")
        print(f"    {statistics.median(walls) - accounted:6.2f}  (outside the phases)")
    step_medians = medians(runs, "steps")
    if step_medians:
        print("  recovery chain steps (median s):")
        for name, seconds in step_medians.items():
            print(f"    {seconds:6.2f}  {name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenario", type=Path, default=None, help="scenario file (default: the default one)")
    parser.add_argument("--lint-cache", choices=sorted(LABELS), default="warm",
                        help="embedded template-lint cache (see the module doc)")
    parser.add_argument("--report-dir", type=Path, default=None, help="reports go here (default: a temp dir)")
    parser.add_argument("--mode", choices=("deployed", "in-process", "both"), default="deployed",
                        help="the drill's topology; both: the two interleaved, run for run (same load)")
    args = parser.parse_args(argv)
    modes = ["deployed", "in-process"] if args.mode == "both" else [args.mode]
    by_mode: dict[str, list[DrillRun]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="jamsdr-drill-bench-") as tmp:
        root = args.report_dir or Path(tmp) / "reports"
        if args.lint_cache == "warm":
            one_run(root, args.scenario, "warm", Path(tmp))  # fills the cache on a machine's first drill: uncounted
        for _ in range(max(1, args.runs)):
            for mode in modes:
                by_mode[mode].append(one_run(root, args.scenario, args.lint_cache, Path(tmp),
                                             in_process=mode == "in-process"))
    for mode, runs in by_mode.items():
        report_runs(runs, args.lint_cache, mode)
    return 0 if all(r.exit_code == 0 for runs in by_mode.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
