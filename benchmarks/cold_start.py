"""Cold start of the Lambda code: the import time of ``app`` next to ``import boto3`` alone.

    .venv/bin/python -m benchmarks.cold_start [--runs 15] [--top 15]

Every sample is a fresh interpreter: ``python -X importtime -c "import app"`` in a copy of what the
deployment zip holds (app.py and chalicelib/, no bytecode), and ``python -X importtime -c "import
boto3"``, interleaved so that both see the same machine load. The figure per sample is the cumulative
import time of the top-level module as ``-X importtime`` reports it (includes everything it pulls in;
interpreter start-up is not). Two figures for app:
- "source": no bytecode for app.py and chalicelib (PYTHONDONTWRITEBYTECODE=1), as in Lambda: the zip
  of ``chalice package`` ships no .pyc and /var/task is read-only, so every cold start compiles them.
  boto3 and the layer's packages come with bytecode. This is the headline figure.
- "bytecode": the same copy with its __pycache__ written by an uncounted first import.
Reported: median and p90, the ratio of the medians to boto3's (the issue's bar: <= 1.5; with the
median of back-to-back ratios and the ratio of the minima, steadier on a loaded machine), what app
adds when boto3 is already imported (``import boto3; import app``: app's own cost, the steadiest
figure), the process wall time, the heaviest cumulative imports of app, what each family of
functions imports on its first call (the handlers' lazy imports), and whether a module that must stay
out of the Lambda path (moto, rich, click, X-Ray, yaml, jamsdr, pydantic) was loaded.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RATIO_BAR = 1.5
FORBIDDEN = ("moto", "rich", "click", "aws_xray_sdk", "yaml", "jamsdr", "pydantic")
# What each family of functions imports on its first call, after app (the lazy imports of the handlers).
FIRST_CALLS: dict[str, tuple[str, ...]] = {
    "heartbeat_watcher": ("chalicelib.detection.watcher", "chalicelib.workflow.steps.fence"),
    "health/alarm/rds events": ("chalicelib.detection.triggers", "chalicelib.workflow.steps.fence",
                                "chalicelib.detection.events"),
    "snapshot_tick": ("chalicelib.snapshots.tick",),
    "workflow (payloads, engine)": ("chalicelib.handlers.payloads", "chalicelib.notify",
                                    "chalicelib.workflow.engine"),
}
# Printed after the import: which of the forbidden top-level packages the import loaded.
_PROBE = "import sys; print('LOADED=' + ','.join(m for m in {mods!r} if m in sys.modules))"


@dataclass
class Sample:
    cumulative_us: int
    wall_s: float
    modules: dict[str, int] = field(default_factory=dict)  # module -> cumulative us
    loaded: list[str] = field(default_factory=list)


MODES = ("source", "bytecode")


def lambda_like_env(mode: str) -> dict[str, str]:
    """The environment the Lambda runtime gives the code: no endpoint overrides, tracing off."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_ENDPOINT_URL", "PYTHONPROFILE", "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE"))}
    env.update({"POWERTOOLS_TRACE_DISABLED": "true", "AWS_DEFAULT_REGION": "us-west-2"})
    if mode == "source":
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@contextmanager
def task_roots(source: Path = ROOT) -> Iterator[dict[str, Path]]:
    """One copy of what the zip holds per mode (app.py, chalicelib/ of ``source``), without bytecode."""
    with tempfile.TemporaryDirectory(prefix="jamsdr-task-root-") as tmp:
        roots: dict[str, Path] = {}
        for mode in MODES:
            root = Path(tmp) / mode
            root.mkdir()
            shutil.copy2(source / "app.py", root / "app.py")
            shutil.copytree(source / "chalicelib", root / "chalicelib",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            roots[mode] = root
        yield roots


def sample(module: str, root: Path, mode: str, then: Sequence[str] = ()) -> Sample:
    """One fresh interpreter importing ``module`` (then ``then``, whose cumulative times are summed)."""
    code = ("; ".join(f"import {m}" for m in (module, *then)) + "; " + _PROBE.format(mods=FORBIDDEN)
            + "; import chalicelib; print('FROM=' + chalicelib.__file__)")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], cwd=root, env=lambda_like_env(mode),
        capture_output=True, text=True, check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"import {module} failed:\n{done.stderr[-2000:]}")
    modules = parse_importtime(done.stderr)
    if module not in modules:
        raise RuntimeError(f"no importtime line for {module!r}")
    loaded = next((line.split("=", 1)[1] for line in done.stdout.splitlines() if line.startswith("LOADED=")), "")
    origin = next((line.split("=", 1)[1] for line in done.stdout.splitlines() if line.startswith("FROM=")), "")
    if not origin.startswith(str(root)):
        raise RuntimeError(f"chalicelib came from {origin}, not from the copy in {root}")
    figure = sum(after_first(done.stderr, module).values()) if then else modules[module]
    return Sample(figure, wall, modules, [m for m in loaded.split(",") if m])


def parse_importtime(stderr: str) -> dict[str, int]:
    """``import time: self [us] | cumulative | imported package`` lines -> {module: cumulative us}."""
    result: dict[str, int] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3:
            continue
        name = parts[2].strip()
        # A module imported twice (never, in practice) keeps its first figure: it is the real one.
        result.setdefault(name, int(parts[1].strip()))
    return result


def after_first(stderr: str, module: str) -> dict[str, int]:
    """Top-level imports that came after ``module``'s: what the later imports added, nested ones included."""
    seen, added = False, {}
    for line in stderr.splitlines():
        parts = line[len("import time:"):].split("|") if line.startswith("import time:") else []
        if len(parts) != 3 or "cumulative" in line or parts[2].startswith("  "):
            continue
        name = parts[2].strip()
        if seen:
            added[name] = int(parts[1].strip())
        seen = seen or name == module
    return added


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


BOTO_TREE = frozenset({"boto3", "botocore", "s3transfer", "urllib3", "dateutil", "jmespath", "six"})


def top_imports(samples: Sequence[Sample], count: int, *, own_only: bool = False) -> list[tuple[str, float]]:
    per_module: dict[str, list[int]] = defaultdict(list)
    for s in samples:
        for name, us in s.modules.items():
            top = name.split(".")[0]
            if own_only and (top in BOTO_TREE or top in sys.stdlib_module_names or top.startswith("_")):
                continue
            per_module[name].append(us)
    medians = {name: statistics.median(v) for name, v in per_module.items() if len(v) == len(samples)}
    return sorted(medians.items(), key=lambda item: -item[1])[:count]


@dataclass
class Result:
    app: dict[str, list[Sample]]
    boto3: list[Sample]
    first_calls: dict[str, list[Sample]] = field(default_factory=dict)
    increment: list[Sample] = field(default_factory=list)  # import app after boto3 (source)

    def ratio(self, mode: str) -> float:
        return statistics.median(s.cumulative_us for s in self.app[mode]) / statistics.median(
            s.cumulative_us for s in self.boto3)

    def paired_ratio(self, mode: str) -> float:
        """Median of app/boto3 over samples taken back to back: less sensitive to the machine's load
        drifting during the run than the ratio of the medians."""
        return statistics.median(a.cumulative_us / b.cumulative_us for a, b in zip(self.app[mode], self.boto3,
                                                                                   strict=True))

    def ratio_of_minima(self, mode: str) -> float:
        return min(s.cumulative_us for s in self.app[mode]) / min(s.cumulative_us for s in self.boto3)


def measure(runs: int, first_call_runs: int, source: Path = ROOT) -> Result:
    with task_roots(source) as roots:
        for mode in MODES:
            sample("app", roots[mode], mode)  # uncounted: the page cache, and the bytecode of "bytecode"
        sample("boto3", roots["source"], "source")
        apps: dict[str, list[Sample]] = {mode: [] for mode in MODES}
        boto3s, increments = [], []
        for _ in range(runs):
            for mode in MODES:
                apps[mode].append(sample("app", roots[mode], mode))
            boto3s.append(sample("boto3", roots["source"], "source"))
            increments.append(sample("boto3", roots["source"], "source", then=("app",)))
        first: dict[str, list[Sample]] = {name: [] for name in FIRST_CALLS}
        for _ in range(first_call_runs):
            for name, modules in FIRST_CALLS.items():
                first[name].append(sample("app", roots["source"], "source", then=modules))
    return Result(apps, boto3s, first, increments)


def line(name: str, values: Sequence[float], unit: str) -> str:
    return (f"  {name:<28} median {statistics.median(values):7.1f} {unit}  p90 {percentile(values, 90):7.1f} {unit}"
            f"  min {min(values):7.1f}  max {max(values):7.1f}")


def report(result: Result, top: int) -> None:
    runs = len(result.boto3)
    print(f"cold start: import time in fresh interpreters, {runs} interleaved samples each "
          f"(python {sys.version.split()[0]})")
    for mode in MODES:
        print(line(f"import app ({mode})", [s.cumulative_us / 1000 for s in result.app[mode]], "ms"))
    print(line("import boto3", [s.cumulative_us / 1000 for s in result.boto3], "ms"))
    for mode in MODES:
        ratio = result.ratio(mode)
        verdict = "within" if ratio <= RATIO_BAR else "OVER"
        print(f"  ratio app ({mode})/boto3, medians: {ratio:.2f}  ({verdict} the {RATIO_BAR}x bar); "
              f"median of paired ratios {result.paired_ratio(mode):.2f}, ratio of minima "
              f"{result.ratio_of_minima(mode):.2f}")
    if result.increment:
        extra = statistics.median(s.cumulative_us for s in result.increment)
        base = statistics.median(s.cumulative_us for s in result.boto3)
        print(line("app on top of boto3", [s.cumulative_us / 1000 for s in result.increment], "ms")
              + f"   -> (boto3 + this) / boto3 = {(base + extra) / base:.2f}")
    for mode in MODES:
        print(line(f"process wall, app ({mode})", [s.wall_s * 1000 for s in result.app[mode]], "ms"))
    print(line("process wall, boto3", [s.wall_s * 1000 for s in result.boto3], "ms"))
    loaded = sorted({m for mode in MODES for s in result.app[mode] for m in s.loaded})
    print(f"  kept out of the Lambda path ({', '.join(FORBIDDEN)}): "
          + ("all absent" if not loaded else f"LOADED: {', '.join(loaded)}"))
    print(f"  heaviest cumulative imports of app (source; median ms over {runs} samples):")
    for name, us in top_imports(result.app["source"], top):
        print(f"    {us / 1000:7.1f}  {name}")
    print("  the same without boto3's own tree and the standard library (what app adds to boto3):")
    for name, us in top_imports(result.app["source"], top, own_only=True):
        print(f"    {us / 1000:7.1f}  {name}")
    if any(result.first_calls.values()):
        print("  imported on a function's first call, after app (source; lazy imports; median ms):")
        for name, samples in result.first_calls.items():
            values = [s.cumulative_us / 1000 for s in samples]
            print(f"    {statistics.median(values):7.1f}  {name}: {', '.join(FIRST_CALLS[name])} "
                  f"(n={len(values)})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15, help="fresh processes per module (>= 15 for the figure)")
    parser.add_argument("--top", type=int, default=15, help="cumulative imports of app to list")
    parser.add_argument("--first-call-runs", type=int, default=5,
                        help="fresh processes per family for the first-call imports (0: skip)")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="a tree with app.py and chalicelib/ (e.g. `git archive` of an older commit)")
    args = parser.parse_args(argv)
    result = measure(max(1, args.runs), max(0, args.first_call_runs), args.root.resolve())
    report(result, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
