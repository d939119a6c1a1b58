"""Profile the embedded drill (`make drill`'s default scenario) with pyinstrument.

    .venv/bin/python -m benchmarks.profile_drill [--lint-cache off|warm] [--html FILE]

The drill runs in this process (jamsdr.drill.run_embedded_drill), under pyinstrument's statistical
profiler. pyinstrument samples the main thread: the drill's client side. moto's server answers in
threads of the same process, so a slow API shows up as time in the client's socket read under the
call that made it (e.g. ``template_parameters`` -> ``validate_template``). ``--lint-cache off``
profiles moto's own ValidateTemplate (before the fix in jamsdr/embedded.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pyinstrument import Profiler


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lint-cache", choices=("off", "warm"), default="off")
    parser.add_argument("--html", type=Path, default=None, help="also write pyinstrument's HTML report here")
    parser.add_argument("--interval", type=float, default=0.005, help="sampling interval, seconds")
    args = parser.parse_args(argv)
    if args.lint_cache == "off":
        os.environ["JAMSDR_LINT_CACHE"] = "off"
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    from jamsdr.drill import run_embedded_drill  # after the environment is set: the cache reads it
    from jamsdr.scenario import Scenario

    profiler = Profiler(interval=args.interval)
    with tempfile.TemporaryDirectory(prefix="jamsdr-profile-") as tmp:
        profiler.start()
        try:
            result = run_embedded_drill(Scenario(), Path(tmp))
        finally:
            profiler.stop()
    print(f"drill: {result.report['decision']}/{result.report['outcome']}, phases (s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in result.phase_seconds.items()))
    print(profiler.output_text(unicode=False, color=False, show_all=False))
    if args.html is not None:
        args.html.write_text(profiler.output_html(), encoding="utf-8")
        print(f"HTML report: {args.html}")
    return 0 if result.matches_expectation else 1


if __name__ == "__main__":
    sys.exit(main())
