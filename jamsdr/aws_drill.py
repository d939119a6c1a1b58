"""`jams-dr drill --aws`: a drill against a real account, through the deployed chain or in-process."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from rich.console import Console

from chalicelib.aws import get_factory
from chalicelib.clock import SystemClock
from chalicelib.settings import Settings
from jamsdr.cliutil import EXIT_BAD_INPUT, EXIT_MISMATCH, EXIT_OK
from jamsdr.report_render import write_report_files

# A drill restores a full SQL Server database: hours are possible (docs/aws-facts.md, "SQL Server
# restore durations").
FOLLOW_TIMEOUT = timedelta(hours=12)
FOLLOW_POLL_SECONDS = 15.0


def production_names(settings: Settings) -> set[str]:
    return {settings.app_stack_name, settings.network_stack_name, settings.standby_stack_name}


def check_drill_target(settings: Settings, drill_id: str) -> str | None:
    """Why the drill may not run against this stage, or None."""
    target = settings.drill_stack_name(drill_id)
    if target in production_names(settings):
        return (f"the drill stack {target!r} is a production stack name of this stage; "
                "set APP_STACK_NAME / NETWORK_STACK_NAME / STANDBY_STACK_NAME so none starts with "
                f"'{settings.environment}-drill-'")
    for name in production_names(settings):
        if name.startswith(f"{settings.environment}-drill-"):
            return (f"the stage's production stack {name!r} looks like a drill stack; a drill's teardown could "
                    "delete it. Rename the stack setting before drilling.")
    return None


def run_aws_drill(settings: Settings, stage: str, report_root: Path, *, as_json: bool, local_runner: bool,
                  out: Console) -> int:
    import json  # noqa: PLC0415
    import uuid  # noqa: PLC0415

    from chalicelib.report import build_report  # noqa: PLC0415
    from chalicelib.workflow import starter  # noqa: PLC0415
    from chalicelib.workflow.ledger import Ledger  # noqa: PLC0415
    from chalicelib.workflow.runners import InProcessRunner  # noqa: PLC0415
    from jamsdr.operate import _invoke  # noqa: PLC0415

    drill_id = uuid.uuid4().hex[:8]
    problem = check_drill_target(settings, drill_id)
    if problem:
        out.print(f"[red]refused:[/red] {problem}")
        return EXIT_BAD_INPUT
    clients, clock = get_factory(), SystemClock()
    if local_runner:
        started = starter.start_drill(settings, clients, clock, drill_id=drill_id, launcher=starter.no_launch)
        execution = InProcessRunner(settings, clients, clock,
                                    on_progress=lambda p: out.print(f"{p.at:%H:%M:%S} {p.state}: {p.kind} {p.note}"),
                                    ).run(started.execution_id)
    else:
        answer = _invoke(settings, stage, "start_drill", {"drill_id": drill_id})
        if not answer.get("ok"):
            out.print(f"[red]refused:[/red] {answer.get('error')}")
            return EXIT_MISMATCH
        ledger = Ledger(settings, clients, clock)
        deadline = clock.now() + FOLLOW_TIMEOUT
        seen = 0
        while True:
            execution = ledger.load(str(answer["execution_id"]))
            for entry in execution.history[seen:]:
                out.print(f"{entry.get('ended_at')} {entry.get('name')}: {entry.get('outcome')}")
            seen = len(execution.history)
            if not execution.active or clock.now() > deadline:
                break
            clock.sleep(FOLLOW_POLL_SECONDS)
    report = build_report(execution.item)
    files = write_report_files(report, report_root / execution.execution_id)
    out.print(f"Report: {files[0].parent}/")
    if as_json:
        print(json.dumps(report, indent=2))
    return EXIT_OK if report["outcome"] == "succeeded" else EXIT_MISMATCH
