"""The runners: an execution advanced in-process (drills, the CLI), or as a chain of Lambda invocations
that the sweeper resumes when a hop is lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from chalicelib.aws import ClientFactory, error_code
from chalicelib.clock import Clock, isoformat
from chalicelib.notify import Notifier
from chalicelib.observability import logger
from chalicelib.outbox import FlushResult, flush_outbox
from chalicelib.settings import Settings
from chalicelib.workflow.engine import (
    BUSY_POLL_SECONDS,
    DEFAULT_CLAIM_SECONDS,
    SELF_INVOKE_MAX_WAIT_SECONDS,
    SWEEP_LOOKAHEAD_SECONDS,
    AdvanceResult,
    Launcher,
    ProgressCallback,
    WorkflowLookup,
    advance,
    new_owner,
)
from chalicelib.workflow.ledger import Ledger
from chalicelib.workflow.model import Workflow
from chalicelib.workflow.records import Execution

if TYPE_CHECKING:
    from chalicelib.detection.watcher import FenceEnforcer


def _default_lookup(name: str) -> Workflow:
    from chalicelib.workflow.registry import workflow_for  # noqa: PLC0415 - definitions import steps

    return workflow_for(name)


class InProcessRunner:
    """Runs executions to their end in this process (CLI, drills, tests)."""

    def __init__(
        self,
        settings: Settings,
        clients: ClientFactory,
        clock: Clock,
        notifier: Notifier | None = None,
        *,
        owner: str | None = None,
        on_progress: ProgressCallback | None = None,
        workflows: WorkflowLookup | None = None,
        claim_seconds: float = DEFAULT_CLAIM_SECONDS,
        busy_poll_seconds: float = BUSY_POLL_SECONDS,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.clock = clock
        self.notifier = notifier or Notifier(settings, clients, clock)
        self.owner = owner or new_owner("inprocess")
        self.on_progress = on_progress
        self.workflows = workflows or _default_lookup
        self.claim_seconds = claim_seconds
        self.busy_poll_seconds = busy_poll_seconds

    def run(self, execution_id: str, workflow: Workflow | None = None) -> Execution:
        """Advance until succeeded/failed/cancelled or awaiting approval; returns the final record."""
        ledger = Ledger(self.settings, self.clients, self.clock)
        chosen = workflow or self.workflows(ledger.load(execution_id).workflow)
        while True:
            result = advance(
                execution_id, workflow=chosen, settings=self.settings, clients=self.clients,
                clock=self.clock, notifier=self.notifier, owner=self.owner, deadline=None,
                on_progress=self.on_progress, claim_seconds=self.claim_seconds,
            )
            if result.outcome in ("ended", "awaiting-approval"):
                return ledger.load(execution_id)
            if result.outcome == "busy":
                # Someone else drives it (or died holding it): look again after a while; once their
                # claim expires we take over.
                self.clock.sleep(self.busy_poll_seconds)


@dataclass(frozen=True)
class SliceResult:
    result: AdvanceResult
    relaunched: bool


def lambda_slice(
    execution_id: str,
    *,
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    notifier: Notifier,
    owner: str,
    remaining_ms: int,
    margin_seconds: float,
    launcher: Launcher,
    workflows: WorkflowLookup | None = None,
) -> SliceResult:
    """One invocation of the Lambda chain: advance within the remaining time, then hand over.

    The claim lasts until the invocation's hard end plus a little, so a Lambda killed mid-step is
    resumed by the sweeper soon after, never while it might still be running.
    """
    now = clock.now()
    remaining = max(remaining_ms, 0) / 1000.0
    # A margin larger than half the invocation would leave no time to work: cap it (and say so).
    margin = min(margin_seconds, remaining / 2)
    if margin < margin_seconds:
        logger.warning("lambda timeout shorter than twice the margin",
                       extra={"remaining_seconds": remaining, "margin_seconds": margin_seconds})
    deadline = now + timedelta(seconds=remaining - margin)
    execution = Ledger(settings, clients, clock).load(execution_id)
    workflow = (workflows or _default_lookup)(execution.workflow)
    result = advance(
        execution_id, workflow=workflow, settings=settings, clients=clients, clock=clock,
        notifier=notifier, owner=owner, deadline=deadline, claim_seconds=margin + 30.0,
    )
    relaunched = False
    if result.outcome == "resume":
        wait = 0.0 if result.next_check_at is None else (result.next_check_at - clock.now()).total_seconds()
        if wait <= SELF_INVOKE_MAX_WAIT_SECONDS:
            relaunched = launcher(execution_id)
        else:
            logger.info("next check left to the sweeper", extra={
                "execution_id": execution_id, "next_check_at": isoformat(result.next_check_at)})
    return SliceResult(result, relaunched)


@dataclass(frozen=True)
class SweepResult:
    launched: list[str]
    skipped: list[str]
    fenced: list[str]
    fence_error: str | None
    # The outbox flush of this sweep: what was re-sent, what still waits for SNS, or why it failed.
    notifications: FlushResult = field(default_factory=FlushResult)


def sweep(
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    launcher: Launcher,
    *,
    fence_enforcer: FenceEnforcer | None = None,
    lookahead_seconds: float = SWEEP_LOOKAHEAD_SECONDS,
) -> SweepResult:
    """Enforce a pending fence first, then relaunch running executions that nobody drives, then re-send
    the notifications SNS has not accepted yet (the outbox).

    An execution needs a runner when it is running, no live claim is on it (its last invocation
    ended or died) and its next check falls before the next sweep. Neither the fence nor the outbox can
    keep the stalled executions from resuming: their failures are logged and reported.
    """
    fenced: list[str] = []
    fence_error: str | None = None
    try:
        enforcer = fence_enforcer if fence_enforcer is not None else _pending_fence_enforcer()
        fenced = [str(i) for i in (enforcer(settings, clients, clock) or [])]
    except Exception as exc:  # fencing must not keep stalled recoveries from resuming
        fence_error = f"{error_code(exc)}: {exc}"
        logger.error("pending fence not enforced", extra={"error": error_code(exc), "detail": str(exc)})
    now = clock.now()
    horizon = now + timedelta(seconds=lookahead_seconds)
    launched: list[str] = []
    skipped: list[str] = []
    for execution in Ledger(settings, clients, clock).list_active():
        if execution.status != "running":
            continue
        if execution.claim is not None and execution.claim.live(now):
            skipped.append(execution.execution_id)
            continue
        if execution.next_check_at is not None and execution.next_check_at > horizon:
            skipped.append(execution.execution_id)
            continue
        logger.info("sweeper resumes execution", extra={"execution_id": execution.execution_id})
        if launcher(execution.execution_id):
            launched.append(execution.execution_id)
    try:
        flushed = flush_outbox(settings, clients, clock)
    except Exception as exc:  # a broken outbox must not fail the sweep that relaunched executions
        logger.error("outbox not flushed by the sweeper", extra={"error": error_code(exc), "detail": str(exc)})
        flushed = FlushResult(error=f"{error_code(exc)}: {exc}")
    return SweepResult(launched, skipped, fenced, fence_error, flushed)


def _pending_fence_enforcer() -> FenceEnforcer:
    """The steps' ``enforce_pending_fence``."""
    # Imported on first use, not for a cycle (there is none): the steps are heavy and only the sweep
    # needs them, so the engine's importers (starter, the workflow handlers) do not pay for them.
    from chalicelib.workflow.steps.fence import enforce_pending_fence  # noqa: PLC0415

    return enforce_pending_fence
