"""``chalice package`` for the embedded drill, and the functions its SAM template declares.

The drill's settings are no stage of .chalice/config.json: ``package`` writes a copy of the project with one
stage made of them (its environment) and of the policies jamsdr/iam.py generates for them (one
``iam_policy_file`` per function), runs ``chalice package`` on it, and ``functions_from_sam`` reads back what
the template deploys: each function's handler, timeout, memory, environment, role policy, reserved
concurrency, schedule or event pattern. jamsdr/lambda_runtime.py deploys and runs them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess  # nosec B404 - runs the project's own chalice CLI, no shell
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalicelib.settings import Settings
from jamsdr.stage import StageError

APP_NAME = "jams-dr"
ADVANCE_HANDLER = "advance_execution"
PROJECT_DIR = Path(__file__).resolve().parents[1]
_SCHEDULE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_UNIT_SECONDS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}


class PackageProblem(StageError):
    """The package cannot be made, deployed or run as it is (no chalice project here, an unsupported event
    source, a missing handler): the CLI says so in one line and exits 2, as for any unusable stage."""


@dataclass(frozen=True)
class FunctionSpec:
    """One function of the SAM template."""

    handler: str  # the name in app.py (advance_execution)
    name: str  # the deployed name, as chalice deploy names it: jams-dr-<stage>-<handler>
    handler_path: str  # the template's Handler (chalicelib.handlers.workflow.advance_execution)
    timeout_seconds: int
    memory_mb: int
    environment: Mapping[str, str]
    policies: tuple[Mapping[str, Any], ...]
    reserved_concurrency: int | None
    schedule_seconds: int | None
    pattern: Mapping[str, Any] | None

    @property
    def policy(self) -> dict[str, Any]:
        """The role's inline policies as one document (what the enforcer evaluates)."""
        return {"Version": "2012-10-17",
                "Statement": [s for doc in self.policies for s in _statements(doc)]}


def _statements(document: Mapping[str, Any]) -> list[Any]:
    statement = document.get("Statement", [])
    return list(statement) if isinstance(statement, list) else [statement]


def schedule_seconds(expression: str) -> int:
    """Seconds between runs of an EventBridge ``rate(...)`` expression (the only kind app.py uses)."""
    match = _SCHEDULE.match(expression.strip())
    if match is None:
        raise PackageProblem(f"schedule {expression!r}: the embedded runtime runs rate(N minutes|hours|days) "
                             "schedules only; use Rate(...) in app.py or extend jamsdr/lambda_runtime.py")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def functions_from_sam(sam: Mapping[str, Any], stage: str) -> list[FunctionSpec]:
    resources: Mapping[str, Any] = sam.get("Resources") or {}
    specs: list[FunctionSpec] = []
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties") or {}
        handler_path = str(props.get("Handler") or "")
        if "." not in handler_path:
            raise PackageProblem(f"{logical_id}: Handler {handler_path!r} is not module.function")
        handler = handler_path.rsplit(".", 1)[1]
        role = props.get("Role")
        policies: tuple[Mapping[str, Any], ...] = ()
        if isinstance(role, Mapping) and "Fn::GetAtt" in role:
            role_props = (resources.get(role["Fn::GetAtt"][0]) or {}).get("Properties") or {}
            policies = tuple(p.get("PolicyDocument") or {} for p in role_props.get("Policies") or [])
        if not policies:
            raise PackageProblem(f"{logical_id}: no role with an inline policy (autogen_policy false and an "
                                 "iam_policy_file per function, as .chalice/config.json sets them)")
        schedule: int | None = None
        pattern: Mapping[str, Any] | None = None
        for event_id, event in (props.get("Events") or {}).items():
            kind = event.get("Type")
            if kind == "Schedule":
                schedule = schedule_seconds(str(event["Properties"]["Schedule"]))
            elif kind == "CloudWatchEvent":
                pattern = dict(event["Properties"]["Pattern"])
            else:
                raise PackageProblem(f"{logical_id}: event {event_id} of type {kind} is not run by the embedded "
                                     "runtime (Schedule and CloudWatchEvent are)")
        specs.append(FunctionSpec(
            handler=handler, name=f"{APP_NAME}-{stage}-{handler}", handler_path=handler_path,
            timeout_seconds=int(props.get("Timeout") or 3), memory_mb=int(props.get("MemorySize") or 128),
            environment=dict((props.get("Environment") or {}).get("Variables") or {}), policies=policies,
            reserved_concurrency=props.get("ReservedConcurrentExecutions"),
            schedule_seconds=schedule, pattern=pattern))
    if not specs:
        raise PackageProblem("the SAM template has no AWS::Serverless::Function")
    return specs


@dataclass(frozen=True)
class Package:
    sam: dict[str, Any]
    zip_bytes: bytes
    stage: str
    directory: Path


def package(settings: Settings, policies: Mapping[str, Mapping[str, Any]], out: Path, *,
            stage: str, template_stage: str = "dev", project_dir: Path | None = None) -> Package:
    """``chalice package`` of a stage ``stage`` made of ``settings`` (its environment) and ``policies``
    (one iam_policy_file per function), in a copy of the project under ``out``.

    The stage's other choices (layers, reserved concurrency, timeouts) are ``template_stage``'s."""
    project_dir = project_dir or PROJECT_DIR
    if not (project_dir / "app.py").is_file() or not (project_dir / ".chalice" / "config.json").is_file():
        raise PackageProblem(f"no chalice project at {project_dir} (app.py and .chalice/config.json): the "
                             "deployed-topology drill runs from a checkout; use --in-process elsewhere")
    project = out / "project"
    if project.exists():
        shutil.rmtree(project)
    (project / ".chalice" / "policies" / stage).mkdir(parents=True)
    shutil.copy2(project_dir / "app.py", project / "app.py")
    shutil.copy2(project_dir / "requirements.txt", project / "requirements.txt")
    shutil.copytree(project_dir / "chalicelib", project / "chalicelib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    config = json.loads((project_dir / ".chalice" / "config.json").read_text(encoding="utf-8"))
    base = copy.deepcopy(config["stages"][template_stage])
    functions = {}
    for handler, options in base.get("lambda_functions", {}).items():
        if handler not in policies:
            raise PackageProblem(f"no generated policy for {handler} (jamsdr/iam.py)")
        policy_file = f"policies/{stage}/{handler}.json"
        (project / ".chalice" / policy_file).write_text(json.dumps(policies[handler], indent=2), encoding="utf-8")
        functions[handler] = {**options, "iam_policy_file": policy_file}
    base["lambda_functions"] = functions
    environment = dict(settings.as_env())
    # As every stage of .chalice/config.json sets it: the chain's function, which the starters invoke.
    environment["ADVANCE_FUNCTION_NAME"] = environment.get("ADVANCE_FUNCTION_NAME") or \
        f"{APP_NAME}-{stage}-{ADVANCE_HANDLER}"
    base["environment_variables"] = environment
    config["stages"] = {stage: base}
    (project / ".chalice" / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    target = out / "package"
    chalice = Path(sys.executable).with_name("chalice")
    command = [str(chalice)] if chalice.exists() else [sys.executable, "-c", "from chalice.cli import main; main()"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # chalice package reads no AWS resource; it only wants a region and credentials to exist.
    env.update(AWS_DEFAULT_REGION=settings.recovery_region, AWS_ACCESS_KEY_ID="offline",
               AWS_SECRET_ACCESS_KEY="offline")  # noqa: S106  # nosec B106 - chalice package calls no AWS
    done = subprocess.run(  # noqa: S603  # nosec B603 - fixed argv (this Python's chalice), no shell
        [*command, "--project-dir", str(project), "package", "--stage", stage, str(target)],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    if done.returncode != 0:
        raise PackageProblem(f"chalice package --stage {stage} failed (exit {done.returncode}): "
                             f"{(done.stderr or done.stdout).strip()[-2000:]}")
    sam = json.loads((target / "sam.json").read_text(encoding="utf-8"))
    return Package(sam, (target / "deployment.zip").read_bytes(), stage, target)
