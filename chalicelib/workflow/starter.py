"""Starting, approving, retrying and rolling back executions; launchers that get them running.

Every start is a conditional creation in the ledger, so a duplicated trigger (EventBridge and
schedules deliver at least once, an operator presses twice) finds the execution already there and
starts nothing. Input is checked before anything is written. A launcher gets a running execution
driven: the Lambda chain (asynchronous invoke of ``advance_execution``), the in-process runner (CLI,
drills, tests) or nothing (the caller runs it; the sweeper would pick it up within minutes).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.aws import ClientFactory, error_code
from chalicelib.clock import Clock, isoformat
from chalicelib.detection.incident import Incident, RecoveryStarter
from chalicelib.errors import Refused
from chalicelib.notify import Notifier
from chalicelib.observability import logger
from chalicelib.settings import Settings
from chalicelib.workflow.engine import Launcher, ProgressCallback, WorkflowLookup
from chalicelib.workflow.ledger import (
    SLOT_KINDS,
    ExecutionExists,
    ExecutionNotFound,
    LeaseHeld,
    Ledger,
    SlotHeld,
    StatusConflict,
)
from chalicelib.workflow.model import Kind, Workflow
from chalicelib.workflow.records import Execution, Status
from chalicelib.workflow.registry import UnknownWorkflow, workflow_for
from chalicelib.workflow.runners import InProcessRunner

DRILL_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
INCIDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
EXECUTION_ID = re.compile(r"^(?:rec|drill|fb|rb)-[A-Za-z0-9._:-]{1,200}$")
ADVANCE_HANDLER = "advance_execution"


class StartError(Refused, ValueError):
    """A start, approval, retry or rollback was refused; nothing was created. The message says why
    (and ``__cause__`` is the ledger's exception when the ledger refused)."""


@dataclass(frozen=True)
class Started:
    execution_id: str
    created: bool
    status: Status
    launched: bool
    joined: bool = False  # an active execution of the same kind was already running: this start joined it

    def as_dict(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id, "created": self.created, "status": self.status,
                "launched": self.launched, "joined": self.joined}


# ---------------------------------------------------------------------------------------- launchers


def no_launch(execution_id: str) -> bool:
    """The caller runs the execution itself (or the sweeper will)."""
    logger.info("execution not launched", extra={"execution_id": execution_id})
    return False


def lambda_launcher(clients: ClientFactory, region: str, function_name: str) -> Launcher:
    """Invoke ``function_name`` asynchronously with {"execution_id": id}.

    A failed invoke is logged with its error code and reported as not launched; the execution is
    already in the ledger without a claim, so the sweeper resumes it on its next run.
    """

    def launch(execution_id: str) -> bool:
        try:
            clients.client("lambda", region).invoke(
                FunctionName=function_name,
                InvocationType="Event",
                Payload=json.dumps({"execution_id": execution_id}).encode(),
            )
        except (ClientError, BotoCoreError) as exc:
            logger.error(
                "launch failed; the sweeper will resume the execution",
                extra={"execution_id": execution_id, "function": function_name, "error": error_code(exc)},
            )
            return False
        logger.info("execution launched", extra={"execution_id": execution_id, "function": function_name})
        return True

    return launch


def inprocess_launcher(
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    notifier: Notifier | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    workflows: WorkflowLookup | None = None,
) -> Launcher:
    """Run the execution to its end (or to an approval) right here, synchronously."""
    runner = InProcessRunner(settings, clients, clock, notifier, on_progress=on_progress,
                             workflows=workflows)

    def launch(execution_id: str) -> bool:
        runner.run(execution_id)
        return True

    return launch


def advance_function_name(current_function: str | None = None, env: Mapping[str, str] | None = None,
                          *, configured: str | None = None) -> str:
    """Name of the chain's Lambda: ``configured`` (the ADVANCE_FUNCTION_NAME setting), else derived from
    this function's name (the Lambda runtime's AWS_LAMBDA_FUNCTION_NAME).

    Chalice names functions ``<app>-<stage>-<handler>`` and our handler names hold no dashes, so the
    prefix of any of our functions plus ``advance_execution`` is the chain's function.
    """
    source = os.environ if env is None else env
    if configured:
        return configured
    current = current_function or source.get("AWS_LAMBDA_FUNCTION_NAME", "")
    if "-" in current:
        return f"{current.rsplit('-', 1)[0]}-{ADVANCE_HANDLER}"
    return ADVANCE_HANDLER


def default_launcher(settings: Settings, clients: ClientFactory) -> Launcher:
    """Inside Lambda: the chain. Elsewhere (no function name known): no launch, with a warning."""
    if not (settings.advance_function_name or os.environ.get("AWS_LAMBDA_FUNCTION_NAME")):
        logger.warning("no Lambda to launch executions with; run them in-process or wait for the sweeper")
        return no_launch
    return lambda_launcher(clients, settings.recovery_region,
                           advance_function_name(configured=settings.advance_function_name))


# ---------------------------------------------------------------------------------------- starts


def _check_incident_id(incident_id: str) -> None:
    if not INCIDENT_ID.match(incident_id):
        raise StartError(
            f"incident_id {incident_id!r} is not usable in an execution id; use letters, digits "
            "and . _ : - (at most 128 characters)"
        )


def recovery_execution_id(incident_id: str) -> str:
    return f"rec-{incident_id}"


def recovery_starter(
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    launcher: Launcher | None = None,
    *,
    workflows: WorkflowLookup | None = None,
) -> RecoveryStarter:
    """The RecoveryStarter detection calls: one execution ``rec-<incident_id>`` per incident."""

    def start(incident: Incident, *, await_approval: bool) -> str:
        return start_incident_recovery(
            settings, clients, clock, incident, await_approval=await_approval,
            launcher=launcher, workflows=workflows,
        ).execution_id

    return start


def start_incident_recovery(
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    incident: Incident,
    *,
    await_approval: bool,
    launcher: Launcher | None = None,
    workflows: WorkflowLookup | None = None,
) -> Started:
    """The incident's recovery ``rec-<incident_id>``; joins a recovery that is already active instead."""
    _check_incident_id(incident.incident_id)
    status: Status = "awaiting-approval" if await_approval else "running"
    return _create_and_launch(
        settings, clients, clock, execution_id=recovery_execution_id(incident.incident_id), kind="recovery",
        status=status, launcher=launcher, workflows=workflows, incident=incident.to_dict(),
        data={"reason": incident.reason}, exclusive=True,
    )


def start_recovery(
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    *,
    reason: str,
    incident_id: str | None = None,
    requested_by: str = "operator",
    force: bool = False,
    launcher: Launcher | None = None,
    workflows: WorkflowLookup | None = None,
) -> Started:
    """An operator's recovery (no detection).

    A start while a recovery is active joins it (``joined``: nothing new is created, whoever pressed
    twice); refused while the lease is held by anyone else. ``force`` fences the old primary even if
    its schedulers beat (otherwise the recovery stands down when they do).
    """
    logger.info("manual recovery requested", extra={"requested_by": requested_by, "reason": reason,
                                                     "force": force})
    now = clock.now()
    chosen = incident_id or f"manual-{now.strftime('%Y%m%dT%H%M%SZ')}"
    _check_incident_id(chosen)
    execution_id = recovery_execution_id(chosen)
    ledger = Ledger(settings, clients, clock)
    existing = ledger.get(execution_id)
    if existing is not None:
        return Started(existing.execution_id, False, existing.status, False)
    active = ledger.slot_holder()
    if active is not None and active.active and active.kind == "recovery":
        logger.info("manual recovery joins the active one", extra={"execution_id": active.execution_id})
        return Started(active.execution_id, False, active.status, False, joined=True)
    lease = ledger.get_lease("recovery")
    if lease is not None and lease.holder:
        raise StartError(
            f"the recovery lease of {settings.environment} is held by {lease.holder} (epoch {lease.epoch}); "
            f"a second recovery is refused. Look at it with `jams-dr status`, then retry or roll it back "
            f"(`jams-dr recover --retry {lease.holder}` / `--rollback {lease.holder}`)"
        )
    incident = Incident(incident_id=chosen, decision="region-recovery", reason=reason, failure_at=None,
                        detected_at=now, decided_at=now)
    data: dict[str, Any] = {"reason": reason, "requested_by": requested_by}
    if force:
        data["force"] = True
    return _create_and_launch(
        settings, clients, clock, execution_id=execution_id, kind="recovery", status="running",
        launcher=launcher, workflows=workflows, incident=incident.to_dict(), data=data, exclusive=True,
    )


def start_drill(
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    drill_id: str | None = None,
    *,
    launcher: Launcher | None = None,
    workflows: WorkflowLookup | None = None,
) -> Started:
    """A drill ``drill-<id>`` in the isolated stack ``<env>-drill-<id>`` (id: 8 hex chars unless given)."""
    chosen = drill_id if drill_id is not None else uuid.uuid4().hex[:8]
    if not DRILL_ID.match(chosen):
        raise StartError(
            f"drill_id {chosen!r} is not valid; use 1-32 lowercase letters, digits and dashes "
            "(not at either end), or leave it out for a random one"
        )
    return _create_and_launch(
        settings, clients, clock, execution_id=f"drill-{chosen}", kind="drill", status="running",
        launcher=launcher, workflows=workflows,
        data={"drill_id": chosen, "stack_name": settings.drill_stack_name(chosen)},
    )


def start_failback(
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    *,
    reason: str = "",
    launcher: Launcher | None = None,
    workflows: WorkflowLookup | None = None,
) -> Started:
    """The failback ``fb-<timestamp>``; refused while another failback or a recovery is active.

    Created together with the environment's active slot (one transaction), so of two failbacks pressed at
    once exactly one is created and the other is refused.
    """
    ledger = Ledger(settings, clients, clock)
    active = ledger.slot_holder()
    if active is not None and active.active:
        raise StartError(_busy(active, "a failback"))
    lease = ledger.get_lease("failback")
    if lease is not None and lease.holder:
        holder = ledger.get(lease.holder)
        if holder is None or holder.kind != "recovery" or holder.status != "succeeded":
            state = "unknown" if holder is None else f"{holder.kind} {holder.status}"
            raise StartError(
                f"the lease of {settings.environment} is held by {lease.holder} ({state}); failback needs "
                "it free or held by a succeeded recovery. Retry or roll that execution back first"
            )
    now = clock.now()
    started = _create_and_launch(settings, clients, clock, execution_id=f"fb-{now.strftime('%Y%m%dT%H%M%SZ')}",
                                 kind="failback", status="running", launcher=launcher, workflows=workflows,
                                 data={"reason": reason}, exclusive=True, joins=False)
    if not started.created and started.status in ("running", "awaiting-approval"):
        raise StartError(f"failback {started.execution_id} is {started.status}; wait for it to end before "
                         "another failback (`jams-dr status`)")
    return started


def approve(
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    execution_id: str,
    *,
    approved_by: str = "operator",
    launcher: Launcher | None = None,
) -> Started:
    """awaiting-approval -> running (once), then launch it."""
    with _refused():
        execution = Ledger(settings, clients, clock).approve(execution_id, approved_by=approved_by)
    logger.info("execution approved", extra={"execution_id": execution_id, "approved_by": approved_by})
    launch = launcher or default_launcher(settings, clients)
    return Started(execution_id, False, execution.status, launch(execution_id))


def retry(
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    execution_id: str,
    *,
    requested_by: str = "operator",
    launcher: Launcher | None = None,
) -> Started:
    """failed -> running again from the state that failed, then launch it."""
    ledger = Ledger(settings, clients, clock)
    with _refused():
        failed = ledger.load(execution_id)
        exclusive = failed.kind in SLOT_KINDS and failed.workflow == failed.kind  # not a rollback
        if exclusive and failed.status == "failed":
            _take_slot(ledger, failed)
        try:
            execution = ledger.reopen(failed, requested_by=requested_by)
        except StatusConflict:
            if exclusive:
                ledger.release_slot(execution_id)
            raise
    logger.info("execution retried", extra={"execution_id": execution_id, "state": execution.state})
    launch = launcher or default_launcher(settings, clients)
    return Started(execution_id, False, execution.status, launch(execution_id))


def rollback_execution_id(execution_id: str) -> str:
    return f"rb-{execution_id}"


def rollback(
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    execution_id: str,
    *,
    requested_by: str = "operator",
    launcher: Launcher | None = None,
    workflows: WorkflowLookup | None = None,
) -> Started:
    """Clean up a failed recovery with the rollback workflow, as execution ``rb-<id>``.

    The failed recovery is cancelled in the same transaction that creates the rollback, so it can no
    longer be retried while its stack is being deleted. The rollback's data starts as the recovery's
    (stack name, epoch, ...) plus ``rollback_of`` (the lease holder to release).
    """
    ledger = Ledger(settings, clients, clock)
    with _refused():
        original = ledger.load(execution_id)
    rollback_id = rollback_execution_id(execution_id)
    existing = ledger.get(rollback_id)
    if existing is not None:
        return Started(rollback_id, False, existing.status, False)
    if original.kind != "recovery" or original.workflow != "recovery":
        raise StartError(
            f"{execution_id} is a {original.workflow} execution; only a failed recovery can be rolled back"
        )
    if original.status != "failed":
        raise StartError(
            f"{execution_id} is {original.status}; only a failed recovery can be rolled back "
            + ("(wait for it to end)" if original.active else "")
        )
    try:
        workflow = (workflows or workflow_for)("rollback")
    except UnknownWorkflow as exc:
        raise StartError(
            f"no rollback workflow is available ({exc}); roll back by hand: delete the stack "
            f"{settings.app_stack_name} in {settings.recovery_region} (aws cloudformation delete-stack), "
            f"then free the lease lease#{settings.environment} held by {execution_id} in table "
            f"{settings.ledger_table_name}"
        ) from exc
    data = {k: v for k, v in original.data.items() if k not in ("failed", "failed_state", "error")}
    data.update(rollback_of=execution_id, requested_by=requested_by, requested_at=isoformat(clock.now()))
    try:
        with _refused():
            ledger.create_replacing(original, rollback_id, kind=workflow.kind, workflow="rollback",
                                    state=workflow.first, data=data)
    except ExecutionExists as exc:
        return Started(rollback_id, False, exc.existing.status, False)
    logger.info("rollback started", extra={"execution_id": rollback_id, "rollback_of": execution_id})
    launch = launcher or default_launcher(settings, clients)
    return Started(rollback_id, True, "running", launch(rollback_id))


# A start meets a slot held by an execution that ended without freeing it at most once per attempt.
SLOT_ATTEMPTS = 3


def _busy(active: Execution, wanted: str) -> str:
    return (f"{active.kind} {active.execution_id} is {active.status}: one recovery or failback at a time, so "
            f"{wanted} is refused; wait for it to end (`jams-dr status`)")


def _take_slot(ledger: Ledger, execution: Execution) -> None:
    """Make ``execution`` the active one again (a retry); StartError while another is active."""
    for _attempt in range(SLOT_ATTEMPTS):
        try:
            ledger.take_slot(execution.execution_id, execution.kind)
            return
        except SlotHeld as held:
            holder = _active_holder(ledger, held)
            if holder is not None:
                raise StartError(_busy(holder, f"retrying {execution.execution_id}")) from held
    raise StartError(f"the active slot of {ledger.environment} kept changing; try again")


def _active_holder(ledger: Ledger, held: SlotHeld) -> Execution | None:
    """The execution holding the slot if it is still active; one that ended (or is gone) without freeing
    the slot is cleared from it, and None says: try again."""
    holder = ledger.get(held.holder) if held.holder else None
    if holder is not None and holder.active:
        return holder
    ledger.release_slot(held.holder)
    return None


@contextmanager
def _refused() -> Iterator[None]:
    """The ledger's refusals (unknown id, wrong status) as the StartError callers handle."""
    try:
        yield
    except (ExecutionNotFound, StatusConflict, LeaseHeld) as exc:
        raise StartError(str(exc)) from exc


def _create_and_launch(
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    *,
    execution_id: str,
    kind: Kind,
    status: Status,
    launcher: Launcher | None = None,
    workflows: WorkflowLookup | None,
    incident: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    exclusive: bool = False,
    joins: bool = True,
) -> Started:
    """Create (once) and launch. ``exclusive``: also become the environment's one active recovery or failback;
    an active one of the same kind is joined (``joins``) or refused, one that ended is cleared."""
    workflow: Workflow = (workflows or workflow_for)(kind)
    ledger = Ledger(settings, clients, clock)
    for _attempt in range(SLOT_ATTEMPTS):
        try:
            ledger.create(execution_id, kind=kind, workflow=kind, state=workflow.first, status=status,
                          incident=incident, data=data, exclusive=exclusive)
            break
        except ExecutionExists as exc:
            logger.info("execution already exists", extra={"execution_id": execution_id,
                                                           "status": exc.existing.status})
            return Started(execution_id, False, exc.existing.status, False)
        except SlotHeld as held:
            holder = _active_holder(ledger, held)
            if holder is None:
                continue
            if joins and holder.kind == kind:
                logger.info("start joins the active execution", extra={
                    "execution_id": execution_id, "joined": holder.execution_id})
                return Started(holder.execution_id, False, holder.status, False, joined=True)
            raise StartError(_busy(holder, f"{kind} {execution_id}")) from held
    else:
        raise StartError(f"the active slot of {settings.environment} kept changing; try again")
    launch = launcher or default_launcher(settings, clients)
    launched = launch(execution_id) if status == "running" else False
    return Started(execution_id, True, status, launched)
