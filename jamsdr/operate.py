"""Operator commands against a deployed stage: status, recover, failback, bootstrap.

By default `recover` and `failback` go through the deployed chain (they invoke the stage's start
functions, so the Lambda chain and its sweeper own the execution); `--local-runner` runs the same
definition in this process instead, for an operator whose Lambda side is unavailable.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from chalicelib import traffic
from chalicelib.aws import ClientFactory, error_code, get_factory
from chalicelib.clock import SystemClock, isoformat, parse_iso
from chalicelib.keys import APP_TEMPLATE_KEY
from chalicelib.settings import Settings
from chalicelib.stacks import PIN_PARAMETER, describe_stack, parameters_of
from jamsdr.cliutil import (
    CREDENTIAL_CODES,
    EXIT_AWS,
    EXIT_BAD_INPUT,
    EXIT_MISMATCH,
    EXIT_OK,
    console,
    err_console,
    fail_input,
    print_error,
    settings_for,
)
from jamsdr.deploy import TEMPLATES, ChangeSetReview, DeployError, Review, approve_all, deploy
from jamsdr.report_render import fmt_seconds
from jamsdr.stage import function_name
from jamsdr.traffic_stack import deploy_traffic_stack

_stage_option = click.option("--stage", required=True, help="Stage in .chalice/config.json.")


@dataclass
class StatusReport:
    """The rows of `jams-dr status` and the probes that failed (what, AWS error code, detail)."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    answered: int = 0  # probes that read something (an empty answer counts: AWS answered)
    # The same state as data, for `status --json` and the exit status (None: could not be read).
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def rpo_exceeded(self) -> bool:
        point = self.facts.get("recovery_point")
        return bool(point and point.get("over_target"))

    @property
    def read_anything(self) -> bool:
        return self.answered > 0

    def probe(self, call: Callable[[], Any], what: str) -> Any:
        """One status probe; a failure becomes a line of the output, never a crash of the command."""
        try:
            result = call()
        except Exception as exc:  # status shows what it can and names what it could not read
            self.failures.append((what, error_code(exc), str(exc)))
            return f"unavailable ({what}: {error_code(exc)})"
        self.answered += 1
        return result

    def failed(self, what: str, code: str, detail: str) -> None:
        """A probe that answered "nothing could be read" without raising (the heartbeat copies)."""
        self.answered -= 1
        self.failures.append((what, code, detail))


# "Who you are" rather than "where you are": one list for every command (jamsdr/cliutil.py).
_CREDENTIAL_CODES = CREDENTIAL_CODES


def nothing_read_message(settings: Settings, report: StatusReport) -> str:
    """Why `jams-dr status` could read nothing, and the fix that fits the errors seen."""
    # Each probe once: several probes read the same thing (both leases).
    seen = "; ".join(dict.fromkeys(f"{what}: {code}" for what, code, _ in report.failures)) or "no probe answered"
    codes = {code for _, code, _ in report.failures}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    where = (f"the regions {settings.primary_region} and {settings.recovery_region} (PRIMARY_REGION, "
             "RECOVERY_REGION of the stage)"
             + (f" and AWS_ENDPOINT_URL={endpoint} (unset it to reach AWS itself)" if endpoint else ""))
    fixes = [
        "check the AWS credentials (AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN; "
        "an expired session needs a new login) and that they may read this stage's resources",
        f"check the network path to {where}",
    ]
    if codes & {"Unreachable"} and not codes & _CREDENTIAL_CODES:
        fixes.reverse()  # nothing answered at all: where comes before who
    return f"jams-dr status could not read anything from AWS ({seen}). Fix: {'; '.join(fixes)}."


@click.command()
@_stage_option
@click.option("--json", "as_json", is_flag=True, help="Print the state as one JSON object (for scripts).")
def status(stage: str, as_json: bool) -> None:
    """Watcher decision, missed beats, the recovery point in use and its age against the RPO target,
    approvals, the last drill's RTO and RPO, notifications, executions, leases.

    Exit 0 when it read something and the recovery point is within the RPO target (a probe that failed says
    so in its row), 1 when the recovery point in use is older than the RPO target, 3 when every probe failed.
    """
    settings = settings_for(stage)
    clients = get_factory()
    report = collect_status(settings, clients, stage)
    if not report.read_anything:
        # A table of nothing but "unavailable" rows hides the one thing to fix: say it in one line.
        print_error(nothing_read_message(settings, report))
        raise SystemExit(EXIT_AWS)
    if as_json:
        console.print_json(data={
            "stage": stage, "primary_region": settings.primary_region, "recovery_region": settings.recovery_region,
            **report.facts, "rpo_exceeded": report.rpo_exceeded,
            "unreadable": [{"what": what, "error": code} for what, code, _ in report.failures],
            "rows": dict(report.rows)})
        raise SystemExit(EXIT_MISMATCH if report.rpo_exceeded else EXIT_OK)
    table = Table(title=f"jams-dr {stage}: {settings.primary_region} -> {settings.recovery_region}",
                  show_header=False)
    table.add_column("what")
    table.add_column("state")
    for label, value in report.rows:
        # Text, not markup: "[recovery: running at verify]" or a subject in brackets must print as is.
        table.add_row(Text(label), Text(value))
    console.print(table)
    if report.rpo_exceeded:
        point = report.facts["recovery_point"]
        age, target = fmt_seconds(point["age_seconds"]), fmt_seconds(point["target_seconds"])
        print_error(f"the recovery point in use ({point['source']} {point['id']}) is {age} old, over the RPO "
                    f"target of {target}: see docs/monitoring.md (the rpo-breached alarm) for what to check")
        raise SystemExit(EXIT_MISMATCH)


def collect_status(settings: Settings, clients: ClientFactory, stage: str | None = None) -> StatusReport:
    from chalicelib.snapshots.tick import recovery_point  # noqa: PLC0415
    from chalicelib.workflow.ledger import Ledger  # noqa: PLC0415

    clock = SystemClock()
    now = clock.now()
    report = StatusReport()
    rows = report.rows
    rows.extend(_watch_rows(settings, clients, report))
    point = report.probe(lambda: recovery_point(settings, clients), "recovery point")
    report.facts["recovery_point"] = None
    if isinstance(point, str):
        rows.append(("recovery point", point))
    else:
        for label, copy in (("pinned copy", point.pinned), ("newest copy", point.newest)):
            if copy is None:
                rows.append((label, "none"))
                continue
            age = copy.age_seconds(now)
            verdict = "OK" if age <= settings.rpo_target_seconds else "OVER TARGET"
            rows.append((label, f"{copy.snapshot_id} ({copy.status}), age {fmt_seconds(age)} vs RPO target "
                                f"{fmt_seconds(settings.rpo_target_seconds)}: {verdict}"))
        rows.append(("standby stack", f"{settings.standby_stack_name}: {point.standby_status or 'missing'}"))
        if point.pinned is not None:
            report.facts["recovery_point"] = _point_fact(settings, "snapshot", point.pinned.snapshot_id,
                                                         point.pinned.created_at, now)
    if settings.recovery_source == "pitr":
        rows.append(_replicated_backup_row(settings, clients, report, now))
    rows.extend(_heartbeat_rows(settings, clients, clock, report))
    ledger = Ledger(settings, clients, clock)
    # One scan of the ledger serves the running executions, the approvals and the last drill.
    executions = report.probe(ledger.list_executions, "ledger")
    if isinstance(executions, str):
        rows.append(("executions", executions))
        rows.append(("awaiting approval", executions))
        report.facts["awaiting_approval"] = None
    else:
        active = [e for e in executions if e.active]
        rows.append(("executions", ", ".join(f"{e.execution_id} [{e.kind}: {e.status} at {e.state}]"
                                             for e in active) or "none running"))
        rows.extend(_approval_rows(active, stage))
        report.facts["awaiting_approval"] = [e.execution_id for e in active if e.status == "awaiting-approval"]
    rows.append(_last_drill_row(executions, report))
    for kind in ("recovery", "drill"):
        lease = report.probe(lambda k=kind: ledger.get_lease(k), "lease")  # type: ignore[misc]
        if isinstance(lease, str) or lease is None:
            rows.append((f"{kind} lease", lease or "free (never taken)"))
        else:
            holder = f"held by {lease.holder} since {isoformat(lease.acquired_at)}" if lease.holder else "free"
            rows.append((f"{kind} lease", f"{holder}, epoch {lease.epoch}"))
    rows.append(_notification_row(settings, clients, report))
    return report


def _watch_rows(settings: Settings, clients: ClientFactory, report: StatusReport) -> list[tuple[str, str]]:
    from chalicelib.detection.store import read_watch_state  # noqa: PLC0415

    watch = report.probe(lambda: read_watch_state(settings, clients), "watch state")
    report.facts["decision"] = None if isinstance(watch, str) or watch is None else watch.decision
    if isinstance(watch, str):
        return [("watcher decision", watch), ("open incident", watch)]
    if watch is None:
        return [("watcher decision", "no check recorded yet: is heartbeat_watcher deployed (chalice deploy)?"),
                ("open incident", "none")]
    since = isoformat(watch.decided_at) or isoformat(watch.watch_started_at)
    rows = [("watcher decision", f"{watch.decision} since {since}: {watch.reason or 'no reason recorded'} "
                                 f"(last check {isoformat(watch.checked_at) or 'never'})")]
    incident = watch.incident
    if incident is None:
        rows.append(("open incident", "none"))
        return rows
    text = (f"{incident.incident_id}: failure {isoformat(incident.failure_at) or 'unknown'}, detected "
            f"{isoformat(incident.detected_at)}, decided {isoformat(incident.decided_at)}; execution "
            f"{watch.execution_id or 'not started'}")
    if watch.start_error:
        text += f"; starting it FAILED: {watch.start_error} (the watcher retries it)"
    rows.append(("open incident", text))
    return rows


def _approval_rows(active: list[Any], stage: str | None) -> list[tuple[str, str]]:
    parked = [e for e in active if e.status == "awaiting-approval"]
    if not parked:
        return [("awaiting approval", "none")]
    stage_arg = f"--stage {stage}" if stage else "--stage <stage>"
    return [("awaiting approval", f"{e.execution_id} ({e.kind}, since {isoformat(e.created_at)}): approve with "
                                  f"jams-dr recover --approve {e.execution_id} {stage_arg}")
            for e in parked]


def _notification_row(settings: Settings, clients: ClientFactory, report: StatusReport) -> tuple[str, str]:
    from chalicelib.outbox import pending_notifications  # noqa: PLC0415

    if not settings.topic_arn:
        return ("pending notifications", "not configured (TOPIC_ARN empty): notifications are only logged")
    pending = report.probe(lambda: pending_notifications(settings, clients), "notification outbox")
    if isinstance(pending, str):
        return ("pending notifications", pending)
    if not pending:
        return ("pending notifications", "none: SNS accepted every notification")
    oldest = pending[0]
    errors = [m for m in pending if m.last_error]
    latest = max(errors, key=lambda m: m.last_attempt_at or m.created_at) if errors else None
    return ("pending notifications",
            f"{len(pending)} waiting for SNS, oldest {isoformat(oldest.created_at)} ({oldest.kind}: "
            f"{oldest.subject}, {oldest.attempts} attempt(s)); last error: "
            f"{latest.last_error if latest else 'none yet'}; the watcher and the sweeper re-send them")


def _heartbeat_rows(
    settings: Settings, clients: ClientFactory, clock: SystemClock, report: StatusReport
) -> list[tuple[str, str]]:
    from chalicelib.detection.heartbeats import count_missed_beats  # noqa: PLC0415

    counts = report.probe(lambda: count_missed_beats(settings, clients, clock), "heartbeats")
    report.facts["missed_beats"] = None
    if isinstance(counts, str):
        return [("heartbeats", counts)]
    report.facts["missed_beats"] = {"primary": getattr(counts, "primary", None),
                                    "failover": getattr(counts, "failover", None),
                                    "threshold": settings.missed_beat_threshold}
    if getattr(counts, "unreachable", False):
        error = str(getattr(counts, "error", "") or "")
        report.failed("heartbeats", "Unreachable" if "Unreachable" in error else "Unreadable", error)
    rows = []
    for scheduler in ("primary", "failover"):
        missed = getattr(counts, scheduler, None)
        rows.append((f"{scheduler} scheduler", f"{missed} missed beat(s) of {settings.missed_beat_threshold}"
                     if missed is not None else "unknown"))
    if getattr(counts, "unreachable", False):
        rows.append(("primary region API", "UNREACHABLE"))
    return rows


def _point_fact(settings: Settings, source: str, identifier: str, point_in_time: datetime,
                now: datetime) -> dict[str, Any]:
    age = max((now - point_in_time).total_seconds(), 0.0)
    return {"source": source, "id": identifier, "point_in_time": isoformat(point_in_time), "age_seconds": age,
            "target_seconds": settings.rpo_target_seconds, "over_target": age > settings.rpo_target_seconds}


def _replicated_backup_row(settings: Settings, clients: ClientFactory, report: StatusReport,
                           now: datetime) -> tuple[str, str]:
    """RECOVERY_SOURCE=pitr: the replicated backups are the point in use while they are usable (a recovery's
    preflight falls back to the pinned copy otherwise, and so does this row)."""
    from chalicelib.snapshots.pitr import find_replicated_backup, unusable_reason  # noqa: PLC0415

    found = report.probe(lambda: find_replicated_backup(settings, clients, settings.db_instance_id),
                         "replicated backups")
    if isinstance(found, str):
        return ("replicated backups", found)
    backup, why_none = found
    pinned = report.facts.get("recovery_point")
    pinned_at = parse_iso(pinned["point_in_time"]) if pinned else None
    problem = why_none if backup is None else unusable_reason(backup, pinned_at)
    if backup is None or problem or backup.latest is None:
        return ("replicated backups", f"not usable: {problem or 'no restorable time yet'}; a recovery restores "
                                      "the pinned copy")
    fact = _point_fact(settings, "pitr", backup.arn, backup.latest, now)
    report.facts["recovery_point"] = fact
    verdict = "OVER TARGET" if fact["over_target"] else "OK"
    return ("replicated backups", f"{backup.arn} ({backup.status}), latest restorable {isoformat(backup.latest)}, "
                                  f"lag {fmt_seconds(fact['age_seconds'])} vs RPO target "
                                  f"{fmt_seconds(settings.rpo_target_seconds)}: {verdict}")


def _last_drill_row(executions: list[Any] | str, report: StatusReport) -> tuple[str, str]:
    """The newest finished drill of the ledger's executions (newest first), with its measured RTO and RPO
    (chalicelib.report); ``executions`` is the probe's "unavailable" text when the ledger could not be read."""
    from chalicelib.report import as_plain, build_report  # noqa: PLC0415

    if isinstance(executions, str):
        report.facts["last_drill"] = None
        return ("last drill", executions)
    drill = next((e for e in executions if e.kind == "drill" and e.status in ("succeeded", "failed")), None)
    if drill is None:
        report.facts["last_drill"] = None
        return ("last drill", "none recorded in the ledger: run one (jams-dr drill --aws --stage <stage>)")
    built = build_report(as_plain(drill.item))
    fact = {"execution_id": drill.execution_id, "outcome": built.get("outcome"), "at": isoformat(drill.updated_at),
            "rto_seconds": built.get("rto_seconds"), "rpo_seconds": built.get("rpo_seconds")}
    report.facts["last_drill"] = fact
    return ("last drill", f"{drill.execution_id} {fact['outcome']} on {fact['at']}: RTO "
                          f"{fmt_seconds(fact['rto_seconds'])}, RPO {fmt_seconds(fact['rpo_seconds'])}")


def _invoke(settings: Settings, stage: str, handler: str, payload: dict[str, Any]) -> dict[str, Any]:
    client = get_factory().client("lambda", settings.recovery_region)
    answer = client.invoke(FunctionName=function_name(stage, handler), InvocationType="RequestResponse",
                           Payload=json.dumps(payload).encode())
    body = json.loads(answer["Payload"].read() or b"{}")
    if answer.get("FunctionError"):
        return {"ok": False, "error": f"{handler} failed: {body.get('errorMessage', body)}"}
    return dict(body)


def _finish(answer: dict[str, Any]) -> None:
    if answer.get("ok"):
        console.print_json(data=answer)
        raise SystemExit(EXIT_OK)
    err_console.print(f"[red]refused:[/red] {answer.get('error')}")
    raise SystemExit(EXIT_BAD_INPUT if answer.get("bad_input") else EXIT_MISMATCH)


def _run_locally(settings: Settings, execution_id: str) -> None:
    from chalicelib.report import build_report  # noqa: PLC0415
    from chalicelib.workflow.runners import InProcessRunner  # noqa: PLC0415

    execution = InProcessRunner(settings, get_factory(), SystemClock()).run(execution_id)
    report = build_report(execution.item)
    console.print_json(data=report)
    raise SystemExit(EXIT_OK if execution.status in ("succeeded", "awaiting-approval") else EXIT_MISMATCH)


@click.command()
@_stage_option
@click.option("--approve", "approve_id", metavar="EXECUTION_ID", help="Approve a recovery parked for approval.")
@click.option("--retry", "retry_id", metavar="EXECUTION_ID", help="Retry a failed recovery from its failed step.")
@click.option("--rollback", "rollback_id", metavar="EXECUTION_ID",
              help="Undo a failed recovery: delete its half-built stack, release the lease.")
@click.option("--reason", default="", help="Why (recorded in the ledger and the notification).")
@click.option("--local-runner", is_flag=True, help="Run the chain in this process instead of the Lambda chain.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True,
              help="Fence the old primary even if its schedulers still beat (without it, a new recovery stands "
                   "down when they do).")
def recover(stage: str, approve_id: str | None, retry_id: str | None, rollback_id: str | None, reason: str,
            local_runner: bool, yes: bool, force: bool) -> None:
    """Start a recovery of the region, or approve / retry / roll back one."""
    from chalicelib.workflow import starter  # noqa: PLC0415

    chosen = [name for name, value in (("--approve", approve_id), ("--retry", retry_id),
                                       ("--rollback", rollback_id)) if value]
    if len(chosen) > 1:
        fail_input(f"use one of {', '.join(chosen)} at a time")
    settings = settings_for(stage)
    if not chosen and not reason:
        fail_input("a new recovery needs --reason TEXT (it goes to the ledger and the on-call notification)")
    if chosen and force:
        fail_input(f"--force applies to a new recovery only, not to {chosen[0]}")
    if not chosen and not yes:
        click.confirm(f"Rebuild JAMS in {settings.recovery_region} and fence {settings.primary_region}?", abort=True)
    clients, clock = get_factory(), SystemClock()
    launcher = starter.no_launch if local_runner else None
    try:
        if not local_runner:
            handler, payload = (
                ("approve_recovery", {"execution_id": approve_id}) if approve_id else
                ("retry_execution", {"execution_id": retry_id}) if retry_id else
                ("rollback_execution", {"execution_id": rollback_id}) if rollback_id else
                ("start_recovery", {"reason": reason, **({"force": True} if force else {})})
            )
            _finish(_invoke(settings, stage, handler, payload))
        assert launcher is not None
        if approve_id:
            started = starter.approve(settings, clients, clock, approve_id, launcher=launcher)
        elif retry_id:
            started = starter.retry(settings, clients, clock, retry_id, launcher=launcher)
        elif rollback_id:
            started = starter.rollback(settings, clients, clock, rollback_id, launcher=launcher)
        else:
            started = starter.start_recovery(settings, clients, clock, reason=reason, force=force, launcher=launcher)
    except starter.StartError as exc:
        err_console.print(f"[red]refused:[/red] {exc}")
        raise SystemExit(EXIT_MISMATCH) from None
    if started.joined:
        err_console.print(f"recovery {started.execution_id} is already {started.status}: this start joined it, "
                          "nothing new was created")
    _run_locally(settings, started.execution_id)


@click.command()
@_stage_option
@click.option("--reason", default="primary region healthy again", show_default=True)
@click.option("--local-runner", is_flag=True, help="Run the chain in this process instead of the Lambda chain.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def failback(stage: str, reason: str, local_runner: bool, yes: bool) -> None:
    """Move JAMS back to the primary region once it is healthy."""
    from chalicelib.workflow import starter  # noqa: PLC0415

    settings = settings_for(stage)
    if not yes:
        click.confirm(f"Rebuild JAMS in {settings.primary_region} from {settings.recovery_region}'s database?",
                      abort=True)
    if not local_runner:
        _finish(_invoke(settings, stage, "start_failback", {"reason": reason}))
    try:
        started = starter.start_failback(settings, get_factory(), SystemClock(), reason=reason,
                                         launcher=starter.no_launch)
    except starter.StartError as exc:
        err_console.print(f"[red]refused:[/red] {exc}")
        raise SystemExit(EXIT_MISMATCH) from None
    _run_locally(settings, started.execution_id)


@click.command()
@_stage_option
@click.option("--write-config", is_flag=True, help="Write the support stack's outputs into the stage's config.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=Path(".chalice/config.json"),
              show_default=True)
@click.option("--yes", is_flag=True, help="Execute every change set without asking (needed without a terminal).")
def bootstrap(stage: str, write_config: bool, config_path: Path, yes: bool) -> None:
    """Create or update the support, event forwarding, monitoring and standby stacks through change sets
    (each shown, and confirmed unless --yes); upload the app template."""
    settings = settings_for(stage)
    try:
        env = bootstrap_stage(settings, get_factory(), echo=console.print, function_prefix=function_name(stage, ""),
                              review=approve_shown if yes else confirm_shown)
    except NoTerminal:
        fail_input("stdin is not a terminal, so nobody can confirm the change set above (deleted, nothing "
                   "changed): use --yes to execute change sets without asking")
    except DeployError as exc:
        err_console.print(f"[bold red]bootstrap stopped:[/bold red] {exc}", highlight=False)
        raise SystemExit(EXIT_MISMATCH) from None
    table = Table(title=f"environment_variables for stage {stage}")
    table.add_column("variable")
    table.add_column("value")
    for key, value in env.items():
        table.add_row(key, value)
    console.print(table)
    if write_config:
        config = json.loads(config_path.read_text())
        config["stages"][stage].setdefault("environment_variables", {}).update(env)
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        # The policies name the deployed resources (ledger table, topic, bucket, CloudFormation role):
        # regenerated from the config just written, or the functions would deploy with stale ones.
        from jamsdr.iam import run as write_policies  # noqa: PLC0415

        if write_policies("write", config_path, out=console.print) != 0:
            raise SystemExit(EXIT_AWS)
        console.print(f"updated {config_path} and its IAM policies; now: chalice deploy --stage {stage}")


class NoTerminal(Exception):
    """A change set needs a confirmation and nobody can give it (stdin is not a terminal)."""


def _interactive() -> bool:
    return sys.stdin.isatty()


def show_change_set(review: ChangeSetReview) -> None:
    """The change set as a table: what executing it adds, modifies (replacing or not) and removes."""
    console.print(f"{review.stack} ({review.region}): {review.kind} change set {review.change_set}", soft_wrap=True)
    table = Table()
    for column in ("action", "logical id", "type", "replacement"):
        table.add_column(column)
    for change in review.changes:
        table.add_row(change.action, change.logical_id, change.resource_type, change.replacement or "-")
    for key, current, new in review.parameters:
        table.add_row("parameter", key, f"{current!r} -> {new!r}", "-")
    console.print(table)


def approve_shown(review: ChangeSetReview) -> bool:
    """--yes: show the change set, execute it."""
    show_change_set(review)
    return True


def confirm_shown(review: ChangeSetReview) -> bool:
    """Show the change set and ask; without a terminal, refuse rather than wait for an answer."""
    show_change_set(review)
    if not _interactive():
        raise NoTerminal(review.stack)
    return click.confirm(f"Execute this change set on {review.stack} in {review.region}?", default=False)


_OUTCOMES = {"created": "created", "updated": "updated", "unchanged": "up to date",
             "declined": "change set declined and deleted: nothing changed"}


def _deploy(clients: ClientFactory, echo: Callable[[str], None], review: Review, region: str, name: str,
            template: str, parameters: dict[str, str], *, keep: tuple[str, ...] = ()) -> dict[str, str]:
    done = deploy(clients, region, name, template, parameters, review=review, keep=keep)
    echo(f"{name}: {_OUTCOMES[done.outcome]}")
    if done.outcome == "declined" and not done.outputs:
        raise DeployError(f"{name} in {region} does not exist and its creation was declined; the next stacks "
                          "need it: bootstrap stops here")
    return done.outputs


def bootstrap_stage(settings: Settings, clients: ClientFactory, echo: Callable[[str], None], *,
                    function_prefix: str, review: Review = approve_all) -> dict[str, str]:
    """Create or update what the app needs before `chalice deploy`, each stack through a change set that
    ``review`` sees (and may decline) before it runs; a stack with nothing to change is left alone."""
    env = settings.environment
    echo(f"support stack {env}-dr-support in {settings.recovery_region}")
    support = _deploy(clients, echo, review, settings.recovery_region, f"{env}-dr-support", "dr-support.yaml",
                      {"EnvironmentName": env, "RpoTargetSeconds": str(settings.rpo_target_seconds)})
    echo(f"event forwarding {env}-event-forwarding in {settings.primary_region}")
    _deploy(clients, echo, review, settings.primary_region, f"{env}-event-forwarding", "event-forwarding.yaml",
            {"EnvironmentName": env, "RecoveryRegion": settings.recovery_region})
    # Until `chalice deploy` the scheduled functions do not exist and their not-running alarms fire:
    # true (nothing watches yet), and they clear once the functions run (docs/monitoring.md).
    echo(f"monitoring {env}-dr-monitoring in {settings.recovery_region} (alarms on {function_prefix}*)")
    _deploy(clients, echo, review, settings.recovery_region, f"{env}-dr-monitoring", "jams-dr-monitoring.yaml",
            {"EnvironmentName": env, "FunctionNamePrefix": function_prefix, "TopicArn": support["TopicArn"]})
    # The standby network mirrors the primary one (same CIDRs), so the app template fits both.
    primary_network = describe_stack(clients.client("cloudformation", settings.primary_region),
                                     settings.network_stack_name)
    network_params = {k: v for k, v in parameters_of(primary_network or {}).items() if k != "DBSnapshotIdentifier"}
    network_params.setdefault("EnvironmentName", env)
    echo(f"standby stack {settings.standby_stack_name} in {settings.recovery_region}")
    # The pin belongs to the snapshot pipeline: a new standby stack starts unpinned, an existing one keeps
    # its pin (a changed DBSnapshotIdentifier would restore another database and delete the current one).
    standby = _deploy(clients, echo, review, settings.recovery_region, settings.standby_stack_name,
                      "jams-network.yaml", {**network_params, PIN_PARAMETER: ""}, keep=(PIN_PARAMETER,))
    clients.client("s3", settings.recovery_region).put_object(
        Bucket=support["ArtifactBucketName"], Key=APP_TEMPLATE_KEY, Body=(TEMPLATES / "jams-app.yaml").read_bytes(),
        ServerSideEncryption="AES256",
    )
    echo(f"app template -> s3://{support['ArtifactBucketName']}/{APP_TEMPLATE_KEY}")
    if settings.hosted_zone_id and settings.dns_zone_name:
        # The one moment jams-dr uses Route 53's control plane: a recovery then moves jams.<zone> with
        # a metric in this region only (docs/traffic.md).
        echo(f"traffic {traffic.traffic_stack_name(env)} in {settings.recovery_region} "
             f"(failover pair {traffic.stable_name(settings.dns_zone_name)})")
        deploy_traffic_stack(clients, environment=env, primary_region=settings.primary_region,
                             recovery_region=settings.recovery_region, hosted_zone_id=settings.hosted_zone_id,
                             dns_zone_name=settings.dns_zone_name, standby_outputs=standby,
                             artifact_bucket=support["ArtifactBucketName"], review=review)
    else:
        echo("no HOSTED_ZONE_ID/DNS_ZONE_NAME: no traffic stack; a recovery will not switch traffic")
    mapping = dict(settings.option_group_map)
    if standby.get("OptionGroupName") and primary_network is not None:
        primary_group = {o["OutputKey"]: o["OutputValue"] for o in primary_network.get("Outputs", [])}.get(
            "OptionGroupName")
        if primary_group:
            mapping.setdefault(primary_group, standby["OptionGroupName"])
    return {
        "COPY_KMS_KEY_ID": support["CopyKeyArn"],
        "LEDGER_TABLE": support["LedgerTableName"],
        "TOPIC_ARN": support["TopicArn"],
        "ARTIFACT_BUCKET": support["ArtifactBucketName"],
        "CFN_ROLE_ARN": support["CloudFormationRoleArn"],
        "SCHEDULER_INSTANCE_PROFILE": support["SchedulerInstanceProfileName"],
        "OPTION_GROUP_MAP": json.dumps(mapping, sort_keys=True),
    }
