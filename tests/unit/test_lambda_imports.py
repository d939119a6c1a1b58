"""The Lambda path stays lean: ``import app`` in a fresh interpreter loads none of the heavy packages.

Every function of the app imports app.py on its cold start, so anything imported there is paid by the
one-minute watcher too. The operator's tools (moto, rich, click, yaml, jamsdr), the X-Ray SDK (tracing
is off) and pydantic (only the event and payload handlers need it, and import it on their first call)
must stay out. Not a timing test: benchmarks/cold_start.py measures the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEPT_OUT = ("moto", "rich", "click", "aws_xray_sdk", "yaml", "jamsdr", "pydantic")


def _loaded_after(code: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    env["POWERTOOLS_TRACE_DISABLED"] = "true"
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    modules: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return modules


def _top_level(modules: list[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_import_app_keeps_heavy_packages_out() -> None:
    modules = _loaded_after("import app")
    assert "app" in modules and "chalicelib.handlers.workflow" in modules  # the probe really imported it
    assert sorted(_top_level(modules) & set(KEPT_OUT)) == []


def test_import_app_defers_logic_modules_to_the_first_call() -> None:
    """The watcher, the pipeline, the engine and the payload models load inside their handlers."""
    modules = set(_loaded_after("import app"))
    deferred = {"chalicelib.detection.watcher", "chalicelib.detection.events", "chalicelib.snapshots.tick", "chalicelib.workflow.engine",
                "chalicelib.workflow.ledger", "chalicelib.handlers.payloads"}
    assert sorted(modules & deferred) == []


@pytest.mark.parametrize(
    ("first_call", "needed"),
    [
        ("from chalicelib.detection.watcher import run_watcher", "chalicelib.detection.watcher"),
        ("from chalicelib.snapshots.tick import run_tick", "chalicelib.snapshots.tick"),
        ("from chalicelib.handlers.payloads import parse_payload", "pydantic"),
    ],
)
def test_the_lazy_imports_resolve_and_still_keep_the_operator_tools_out(first_call: str, needed: str) -> None:
    """What a handler imports on its first call exists and pulls in no operator tool either."""
    modules = _loaded_after(f"import app\n{first_call}")
    assert needed in modules
    assert sorted(_top_level(modules) & {"moto", "rich", "click", "aws_xray_sdk", "yaml", "jamsdr"}) == []
