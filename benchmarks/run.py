"""Every benchmark of jams-dr, one after the other, with the machine they ran on (`make bench`).

    .venv/bin/python -m benchmarks.run [--quick] [--only cold_start,drill_time,...] [--list]

Each benchmark runs as its own process (``python -m benchmarks.<name> <args>``), so none inherits
another's embedded AWS, logging or environment; its figures are printed as it prints them. The
machine (CPU model, cores, Python) and the load average before each benchmark head the output: the
figures are wall-clock measurements, noisy on a shared machine (BENCHMARKS.md says how they were
taken). ``--quick`` runs tiny versions that only prove the scripts work: their figures mean nothing.
Each script prints its verdict against the issue's bar; the exit status is 1 when a script failed to
run (or a drill did not end as its scenario expects), not when a bar was missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Benchmark:
    name: str
    what: str
    full: tuple[str, ...]
    quick: tuple[str, ...]


BENCHMARKS = (
    Benchmark("cold_start", "issue 8.1: import time of app vs boto3",
              ("--runs", "15"), ("--runs", "2", "--first-call-runs", "1", "--top", "5")),
    Benchmark("package_size", "issue 8.2: the zip of chalice package", (), ()),
    Benchmark("detection_latency", "issue 8.3: detection latency and false decisions",
              ("--runs", "20", "--quiet-runs", "20"),
              ("--runs", "1", "--quiet-runs", "1", "--quiet-seconds", "2")),
    Benchmark("drill_time", "issue 8.4: make drill end to end",
              ("--runs", "5"), ("--runs", "1", "--lint-cache", "cold")),
    Benchmark("snapshot_calls", "issue 8.5: AWS calls of the snapshot pipeline",
              ("--sizes", "100,1000"), ("--sizes", "10")),
    Benchmark("recovery", "issue 8.5-8.6: AWS calls and Lambda invocations per recovery",
              ("--restore-minutes", "45"), ("--restore-minutes", "3")),
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> str:
    return (f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def run_one(benchmark: Benchmark, quick: bool) -> int:
    args = benchmark.quick if quick else benchmark.full
    command = [sys.executable, "-m", f"benchmarks.{benchmark.name}", *args]
    print(f"\n=== {benchmark.name}: {benchmark.what}")
    print(f"    {' '.join(['python', '-m', f'benchmarks.{benchmark.name}', *args])}   (load average {load()})",
          flush=True)
    started = time.perf_counter()
    # Our own scripts with fixed arguments; their stdout goes straight to ours, stderr (progress) too.
    done = subprocess.run(command, cwd=ROOT, check=False)
    print(f"--- {benchmark.name}: exit {done.returncode}, {time.perf_counter() - started:.0f} s", flush=True)
    return done.returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny runs that only prove the scripts work")
    parser.add_argument("--only", default="", help="comma list of benchmark names")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    chosen = [b for b in BENCHMARKS if not args.only or b.name in {n.strip() for n in args.only.split(",")}]
    unknown = {n.strip() for n in args.only.split(",") if n.strip()} - {b.name for b in BENCHMARKS}
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {[b.name for b in BENCHMARKS]}")
    if args.list:
        for benchmark in BENCHMARKS:
            print(f"{benchmark.name:<18} {benchmark.what}")
        return 0
    print(machine())
    print("mode: " + ("QUICK (tiny runs: the figures mean nothing)" if args.quick else "full"))
    failed = [b.name for b in chosen if run_one(b, args.quick) != 0]
    print(f"\n{len(chosen) - len(failed)} of {len(chosen)} benchmarks ran (verdicts against the bars above)"
          + (f"; not: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
