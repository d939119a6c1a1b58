"""Runners: advance one execution through its workflow, in-process or as a chain of Lambda invocations.

``advance`` is the single interpreter of a ``Workflow``. It claims the execution in the ledger (one
runner at a time), runs the current state's action, and records the outcome with a write conditional
on the execution's ``seq`` and on still holding the claim. A duplicated or concurrent invocation
therefore finds the claim taken and leaves; a runner that died mid-step leaves a claim that expires,
after which another runner re-runs that step (steps are idempotent for exactly this case).

Waits ("not ready, check again in N s", retry backoff) are slept through the injected clock while they
fit before the caller's deadline; otherwise ``advance`` returns ``resume`` with the time of the next
check, and the caller (the Lambda chain, the sweeper) arranges the next invocation.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from chalicelib.aws import ClientFactory, error_code
from chalicelib.clock import Clock, isoformat
from chalicelib.notify import Notifier
from chalicelib.observability import logger
from chalicelib.settings import Settings
from chalicelib.workflow.ledger import ClaimLost, Ledger
from chalicelib.workflow.model import NO_RETRY, Done, NotReady, State, StepContext, StepError, Workflow
from chalicelib.workflow.records import Execution, Status, Transition

if TYPE_CHECKING:
    pass

# A claim outlives the longest step: Lambda's 15-minute ceiling (the in-process default too).
DEFAULT_CLAIM_SECONDS = 900.0
# How long an idle in-process runner waits before looking again at an execution someone else holds.
BUSY_POLL_SECONDS = 5.0
# A Lambda slice re-invokes itself when the next check is at most this far off; farther checks are
# left to the sweeper (which runs every 5 minutes and launches what falls due before its next run).
SELF_INVOKE_MAX_WAIT_SECONDS = 300.0
SWEEP_LOOKAHEAD_SECONDS = 300.0
STATE_TIMEOUT = "StateTimeout"

Outcome = Literal["ended", "awaiting-approval", "resume", "busy"]
ProgressKind = Literal["state-started", "state-ended", "waiting", "retrying", "state-failed",
                       "execution-ended"]


@dataclass(frozen=True)
class Progress:
    """One thing the CLI's live view can show."""

    execution_id: str
    kind: ProgressKind
    state: str
    attempt: int
    note: str
    at: datetime


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class AdvanceResult:
    """``ended``: succeeded/failed/cancelled; ``resume``: call again at ``next_check_at``;
    ``busy``: another runner holds the execution (a duplicate invocation: do nothing)."""

    execution_id: str
    outcome: Outcome
    status: Status | None
    state: str | None
    next_check_at: datetime | None
    steps_run: int
    execution: Execution | None = field(default=None, repr=False)


def new_owner(prefix: str = "runner") -> str:
    """A claim owner id unique to this process and call (host, pid, random)."""
    return f"{prefix}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def advance(
    execution_id: str,
    *,
    workflow: Workflow,
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    notifier: Notifier,
    owner: str,
    deadline: datetime | None,
    on_progress: ProgressCallback | None = None,
    max_steps: int | None = None,
    claim_seconds: float = DEFAULT_CLAIM_SECONDS,
) -> AdvanceResult:
    """Run states of one execution until it ends, awaits approval, or the deadline is near.

    ``deadline`` None runs to the end (in-process). ``max_steps`` stops after that many step runs
    (returns ``resume``). Exceptions that are not ``Exception`` (a crash, a Lambda being killed) are
    not caught: the claim stays until it expires and the step is re-run by whoever resumes.
    """
    ledger = Ledger(settings, clients, clock)
    runner = _Runner(execution_id, workflow=workflow, settings=settings, clients=clients, clock=clock,
                     notifier=notifier, owner=owner, ledger=ledger, on_progress=on_progress,
                     claim_seconds=claim_seconds)
    return runner.run(deadline, max_steps)


class _Runner:
    def __init__(
        self,
        execution_id: str,
        *,
        workflow: Workflow,
        settings: Settings,
        clients: ClientFactory,
        clock: Clock,
        notifier: Notifier,
        owner: str,
        ledger: Ledger,
        on_progress: ProgressCallback | None,
        claim_seconds: float,
    ) -> None:
        self.execution_id = execution_id
        self.workflow = workflow
        self.settings = settings
        self.clients = clients
        self.clock = clock
        self.notifier = notifier
        self.owner = owner
        self.ledger = ledger
        self.on_progress = on_progress
        self.claim_seconds = claim_seconds

    def run(self, deadline: datetime | None, max_steps: int | None) -> AdvanceResult:
        steps_run = 0
        while True:
            try:
                turn = self._turn(deadline, max_steps, steps_run)
            except ClaimLost as lost:
                return self._not_ours(lost, steps_run)
            if isinstance(turn, AdvanceResult):
                return turn
            steps_run += turn

    def _turn(self, deadline: datetime | None, max_steps: int | None, steps_run: int) -> AdvanceResult | int:
        """Claim, then wait (0 steps run), run one step (1), or say why to stop."""
        now = self.clock.now()
        execution = self.ledger.claim(self.execution_id, self.owner, self._claim_until(now, deadline))
        due = execution.next_check_at
        if max_steps is not None and steps_run >= max_steps:
            return self._pause(execution, due or now, steps_run)
        if due is not None and due > now:
            if deadline is not None and due > deadline:
                return self._pause(execution, due, steps_run)
            # Keep the claim over the wait, so the sweeper does not start a second runner.
            self.ledger.claim(self.execution_id, self.owner, self._claim_until(due, deadline))
            self._progress(execution, "waiting", execution.attempt, str(execution.item.get("last_note", "")))
            self.clock.sleep((due - now).total_seconds())
            return 0
        if deadline is not None and now >= deadline:
            return self._pause(execution, now, steps_run)
        execution = self._step(execution)
        if execution.status != "running":
            return self._result(execution, steps_run + 1)
        return 1

    # -- one state --------------------------------------------------------------------------

    def _step(self, execution: Execution) -> Execution:
        now = self.clock.now()
        state_started = execution.state_started_at or now
        try:
            state = self.workflow.state(execution.state)
        except KeyError:
            # The ledger names a state this deployment does not define (the definition changed under a
            # running execution): fail it clearly rather than crash on every resumption.
            names = ", ".join(s.name for s in self.workflow.states)
            message = (f"UnknownState: state {execution.state!r} is not in the deployed {self.workflow.kind} "
                       f"workflow ({names}); deploy the version that started it, then retry")
            unknown = State(execution.state, _unknown_state, retry=NO_RETRY)
            return self._exhausted(execution, unknown, state_started, message=message, data=execution.data)
        context = StepContext(
            execution_id=execution.execution_id,
            kind=execution.kind,
            settings=self.settings,
            clients=self.clients,
            clock=self.clock,
            notifier=self.notifier,
            data=MappingProxyType(dict(execution.data)),
            attempt=execution.attempt,
            state_started_at=state_started,
            started_at=execution.started_at or execution.created_at,
        )
        self._progress(execution, "state-started", execution.attempt, "")
        self._announce_start(execution, state)
        try:
            result = state.action(context)
        except Exception as exc:  # every step error is judged by its retry policy; crashes propagate
            return self._failed_attempt(execution, state, state_started, exc)
        output = dict(result.output)
        report = output.pop("report", None)
        data = {**execution.data, **output}
        if isinstance(result, NotReady):
            return self._not_ready(execution, state, state_started, result=result, data=data, report=report)
        if not isinstance(result, Done):
            raise TypeError(f"state {state.name} returned {type(result).__name__}, not Done or NotReady")
        return self._done(execution, state, state_started, note=result.note, data=data, report=report,
                          goto=result.goto, skipped=result.skipped)

    def _done(
        self,
        execution: Execution,
        state: State,
        state_started: datetime,
        *,
        note: str,
        data: dict[str, Any],
        report: Any,
        goto: str | None = None,
        skipped: bool = False,
    ) -> Execution:
        now = self.clock.now()
        entry = _history(state.name, started=state_started, ended=now,
                         outcome="skipped" if skipped else "succeeded",
                         attempts=execution.attempt, note=note)
        following = self.workflow.next_after(state.name, goto)
        status: Status = "running"
        if following is None:
            # A recovery that stood down (its primary beats again) changed nothing: cancelled, not succeeded.
            status = "failed" if data.get("failed") else "cancelled" if data.get("stood_down") else "succeeded"
        updated = self.ledger.transition(execution, self.owner, Transition(
            state=following or state.name,
            status=status,
            attempt=1,
            state_started_at=now,
            next_check_at=None if following is None else now,
            data=data,
            history=[entry],
            note=note,
            report=report if isinstance(report, Mapping) else None,
        ))
        self._progress(execution, "state-ended", execution.attempt, note)
        self._ended(updated)
        return updated

    def _not_ready(
        self,
        execution: Execution,
        state: State,
        state_started: datetime,
        *,
        result: NotReady,
        data: dict[str, Any],
        report: Any,
    ) -> Execution:
        now = self.clock.now()
        wake = now + timedelta(seconds=max(result.check_again_seconds, 0.0))
        if state.timeout_seconds is not None:
            timeout_at = state_started + timedelta(seconds=state.timeout_seconds)
            if now >= timeout_at:
                message = (f"{STATE_TIMEOUT}: {state.name} still not ready after "
                           f"{state.timeout_seconds:.0f} s: {result.note}".rstrip(": "))
                return self._exhausted(execution, state, state_started, message=message, data=data)
            # Poll one last time exactly at the limit rather than overshooting it.
            wake = min(wake, timeout_at)
        updated = self.ledger.transition(execution, self.owner, Transition(
            state=state.name,
            status="running",
            attempt=execution.attempt,
            state_started_at=state_started,
            next_check_at=wake,
            data=data,
            note=result.note,
            report=report if isinstance(report, Mapping) else None,
        ))
        self._progress(execution, "waiting", execution.attempt,
                       f"{result.note} (next check {isoformat(wake)})".strip())
        return updated

    def _failed_attempt(
        self, execution: Execution, state: State, state_started: datetime, exc: Exception
    ) -> Execution:
        name = error_code(exc)
        message = f"{name}: {exc}"
        logger.warning(
            "step failed",
            extra={"execution_id": execution.execution_id, "state": state.name, "attempt": execution.attempt,
                   "error": name, "detail": str(exc)},
        )
        if state.retry.matches(name) and execution.attempt < state.retry.max_attempts:
            now = self.clock.now()
            delay = state.retry.delay_before(execution.attempt + 1)
            updated = self.ledger.transition(execution, self.owner, Transition(
                state=state.name,
                status="running",
                attempt=execution.attempt + 1,
                state_started_at=state_started,
                next_check_at=now + timedelta(seconds=delay),
                data=execution.data,
                note=f"attempt {execution.attempt} failed, retrying in {delay:.0f} s: {message}",
            ))
            self._progress(execution, "retrying", execution.attempt, message)
            return updated
        return self._exhausted(execution, state, state_started, message=message, data=execution.data)

    def _exhausted(
        self,
        execution: Execution,
        state: State,
        state_started: datetime,
        *,
        message: str,
        data: Mapping[str, Any],
    ) -> Execution:
        """The state failed for good: go to its catch target (marking the execution failed) or stop."""
        now = self.clock.now()
        entries = [_history(state.name, started=state_started, ended=now, outcome="failed",
                            attempts=execution.attempt, note=message)]
        first_failure = not data.get("failed")
        new_data = {**data, "failed": True}
        if first_failure:
            new_data.update(failed_state=state.name, error=message)
        self._progress(execution, "state-failed", execution.attempt, message)
        if state.catch is not None:
            names = [s.name for s in self.workflow.states]
            skipped = names[names.index(state.name) + 1 : names.index(state.catch)]
            entries.extend(_history(n, started=now, ended=now, outcome="skipped", attempts=0,
                                    note=f"skipped: {state.name} failed")
                           for n in skipped)
            change = Transition(state=state.catch, status="running", attempt=1, state_started_at=now,
                                next_check_at=now, data=new_data, history=entries, note=message)
        else:
            change = Transition(state=state.name, status="failed", attempt=execution.attempt,
                                state_started_at=state_started, next_check_at=None, data=new_data,
                                history=entries, note=message)
        # The first failure is the one the operator must fix: later ones are in the history.
        if first_failure:
            change = replace(change, failed_state=state.name, error=message)
        updated = self.ledger.transition(execution, self.owner, change)
        self._ended(updated)
        return updated

    # -- bookkeeping ------------------------------------------------------------------------

    def _ended(self, execution: Execution) -> None:
        if execution.status == "running":
            return
        self._progress(execution, "execution-ended", execution.attempt, execution.status)
        logger.info("execution ended", extra={"execution_id": execution.execution_id,
                                              "status": execution.status})
        if execution.status == "failed":
            # One failure notification per failed run: a retried execution that fails again is news.
            retries = len(execution.item.get("previous_failures") or [])
            self.notifier.notify(
                f"jams-dr {execution.kind} {execution.execution_id} FAILED at {execution.failed_state}",
                failure_message(execution),
                kind="failed",
                key=f"{execution.execution_id}#failed" + (f"#{retries}" if retries else ""),
                execution_id=execution.execution_id,
            )

    def _announce_start(self, execution: Execution, state: State) -> None:
        """The "started" notification, when the first state first runs (after an approval, if any).

        The key makes it once per execution whatever happens (a re-run step after a crash, a duplicated
        invocation); the condition only spares the outbox a read on every poll and retry of that state.
        """
        first_run = (state.name == self.workflow.first and execution.attempt == 1 and not execution.history
                     and "last_note" not in execution.item)
        if not first_run:
            return
        what = (f"rollback of {execution.data['rollback_of']}" if execution.data.get("rollback_of")
                else execution.kind)
        lines = [f"jams-dr {what} {execution.execution_id} started ({execution.workflow} workflow, "
                 f"environment {self.settings.environment}).",
                 f"Rebuilding in {self.settings.recovery_region}; primary region {self.settings.primary_region}."
                 if execution.kind == "recovery" else
                 f"Regions: {self.settings.primary_region} -> {self.settings.recovery_region}.",
                 f"First state: {state.name}. Follow it: jams-dr status --stage <stage>"]
        incident = execution.incident or {}
        self.notifier.notify(
            f"jams-dr {what} {execution.execution_id} started", "\n".join(lines),
            kind="started", key=f"{execution.execution_id}#started", execution_id=execution.execution_id,
            incident_id=incident.get("incident_id"),
        )

    def _claim_until(self, moment: datetime, deadline: datetime | None) -> datetime:
        base = moment if deadline is None else max(moment, deadline)
        return base + timedelta(seconds=self.claim_seconds)

    def _pause(self, execution: Execution, next_check: datetime, steps_run: int) -> AdvanceResult:
        self.ledger.release_claim(self.execution_id, self.owner)
        return AdvanceResult(self.execution_id, "resume", execution.status, execution.state, next_check,
                             steps_run, execution)

    def _not_ours(self, lost: ClaimLost, steps_run: int) -> AdvanceResult:
        current = lost.current
        if current is None:
            raise lost
        if current.status != "running":
            return self._result(current, steps_run)
        logger.info("execution held by another runner", extra={"execution_id": self.execution_id,
                                                                "detail": str(lost)})
        return AdvanceResult(self.execution_id, "busy", current.status, current.state,
                             current.next_check_at, steps_run, current)

    def _result(self, execution: Execution, steps_run: int) -> AdvanceResult:
        outcome: Outcome = "awaiting-approval" if execution.status == "awaiting-approval" else "ended"
        if execution.status == "running":
            outcome = "resume"
        return AdvanceResult(execution.execution_id, outcome, execution.status, execution.state,
                             execution.next_check_at, steps_run, execution)

    def _progress(self, execution: Execution, kind: ProgressKind, attempt: int, note: str) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(Progress(execution.execution_id, kind, execution.state, attempt, note,
                                      self.clock.now()))
        except Exception as exc:  # a broken live view must not stop a recovery
            logger.warning("progress callback failed", extra={"error": error_code(exc)})


def _unknown_state(ctx: StepContext) -> Done:
    raise StepError(f"state of {ctx.execution_id} is not defined", code="UnknownState")


def _history(
    name: str, *, started: datetime, ended: datetime, outcome: str, attempts: int, note: str
) -> dict[str, Any]:
    return {"name": name, "started_at": isoformat(started), "ended_at": isoformat(ended),
            "outcome": outcome, "attempts": attempts, "note": note}


# States before which a recovery has created nothing in AWS (the stack is created by create_app_stack).
_BEFORE_STACK = ("preflight", "take_lease", "fence_primary")


def _recovery_failure_lines(execution: Execution) -> list[str]:
    """Say only what this execution owns: a lease it took, a stack it created, nothing at all."""
    data, eid = execution.data, execution.execution_id
    holds_lease = bool(data.get("lease_held"))
    built = execution.failed_state not in _BEFORE_STACK
    if not holds_lease and not built:
        return [
            "This execution holds no lease and created nothing in AWS: there is nothing to roll back.",
            "If another execution holds the lease, that one is the recovery to follow: jams-dr status",
            f"Retry this one from that state (after fixing the cause): jams-dr recover --retry {eid}",
        ]
    owned = []
    if holds_lease:
        owned.append(f"the lease ({data.get('lease')}, epoch {data.get('epoch')})")
    if built:
        stack = data.get("stack") or {}
        owned.append(f"the stack {stack.get('name', 'it created')} in {stack.get('region', 'the recovery region')}")
    return [
        f"It keeps {' and '.join(owned)}, so no second recovery starts on top of it.",
        f"Retry from that state (after fixing the cause): jams-dr recover --retry {eid}",
        f"Or undo it (delete what it built, withdraw its fence, free the lease): jams-dr recover --rollback {eid}",
    ]


def failure_message(execution: Execution) -> str:
    """What the operator reads: what failed, and the one command to retry or roll back."""
    lines = [
        f"{execution.workflow} {execution.execution_id} failed at state {execution.failed_state}: "
        f"{execution.error}",
    ]
    if execution.workflow == "recovery":
        lines += _recovery_failure_lines(execution)
    elif execution.workflow == "drill":
        lines += [
            "The drill's failure path tears its stack down; the history shows whether that worked.",
            f"Retry from that state: jams-dr recover --retry {execution.execution_id}, or start a new "
            "drill: jams-dr drill",
        ]
    else:
        lines.append(f"Retry from that state: jams-dr recover --retry {execution.execution_id}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- runners


WorkflowLookup = Callable[[str], Workflow]
Launcher = Callable[[str], bool]


