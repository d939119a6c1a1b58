"""The watcher: observes the primary region, keeps just enough state to act on transitions only.

What it reads: both copies of the heartbeat metric (the publishers beat into the primary and the
recovery region), so silence stays observable when the primary's monitoring is down. A beat in either
copy means the scheduler lives; a copy that cannot be read is unknown, never silence, and a copy that
never received a beat says nothing. Whether the primary region answers is probed through RDS and
CloudFormation, never through the CloudWatch read that failed, so one failing API is never both the
symptom and its corroboration. Unreadable copies and partitions (beats in the primary's copy that do
not arrive in the recovery region's) are told to the on-call once per episode.

State lives in the ledger table (recovery region), one item ``watch#<env>`` with a ``version``;
every write is conditional on the version read, so of N concurrent invocations (schedule, events,
retries) each write lands on the state the previous one left, and exactly one of them performs a
given transition. The transition is written FIRST; only its winner calls the recovery starter and
sends the notification. A starter that fails leaves ``start_pending`` with a claim that a later check
takes over (again by a conditional write) once it expires, so a crash never loses the recovery and a
slow start is never doubled (the starter is idempotent per incident, so the claim is short).

Health events are deduplicated on eventArn + communicationId with a marker item
``health#<env>#<arn>#<communicationId>`` (conditional put, TTL ``expires_at``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chalicelib.aws import ClientFactory, error_code
from chalicelib.clock import Clock, isoformat
from chalicelib.detection.decision import Action, action_for
from chalicelib.detection.incident import Decision, Incident, RecoveryStarter
from chalicelib.detection.messages import compose_change, compose_start_retried, stage_arg
from chalicelib.detection.observe import observe
from chalicelib.detection.state import WatchState
from chalicelib.detection.store import MAX_WRITE_ATTEMPTS, WatchConflict, WatchStore
from chalicelib.detection.transition import EventInput, evolve, start_claim
from chalicelib.notify import NotificationKind, Notifier
from chalicelib.observability import logger
from chalicelib.outbox import flush_outbox
from chalicelib.settings import Settings

if TYPE_CHECKING:
    # The event models need pydantic: imported by the event handlers only, so the one-minute watcher's
    # cold start does not pay for it.
    pass


FenceEnforcer = Callable[[Settings, ClientFactory, Clock], Any]


# ------------------------------------------------------------------------------------------ state


# ------------------------------------------------------------------------------------------ observing


# ------------------------------------------------------------------------------------------ evolving


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class WatchResult:
    decision: Decision
    previous: Decision
    changed: bool
    reason: str
    incident: Incident | None
    execution_id: str | None
    counts: dict[str, Any] = field(default_factory=dict)
    action: Action | None = None
    held: bool = False
    notified: bool = False
    start_error: str | None = None
    decided_at: datetime | None = None  # when the current decision was taken
    detected_at: datetime | None = None  # when its missed-beat threshold was first crossed

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision, "previous": self.previous, "changed": self.changed, "reason": self.reason,
            "decided_at": isoformat(self.decided_at), "detected_at": isoformat(self.detected_at),
            "incident": None if self.incident is None else self.incident.to_dict(),
            "execution_id": self.execution_id, "counts": self.counts, "action": self.action,
            "held": self.held, "notified": self.notified, "start_error": self.start_error,
        }


def run_watcher(
    settings: Settings,
    clients: ClientFactory,
    clock: Clock,
    starter: RecoveryStarter,
    *,
    stage: str | None = None,
    inputs: EventInput | None = None,
    trigger: str = "schedule",
    fence_enforcer: FenceEnforcer | None = None,
    grace_seconds: float | None = None,
) -> WatchResult:
    """One check: observe, write the next state conditionally, act if this check won a transition."""
    if fence_enforcer is not None:
        try:
            fence_enforcer(settings, clients, clock)
        except Exception as exc:  # fencing belongs to the recovery; its failure must not blind detection
            logger.error("pending fence not enforced", extra={"error": error_code(exc), "detail": str(exc)})
    obs = observe(settings, clients, clock, grace_seconds=grace_seconds)
    store = WatchStore(settings, clients)
    inputs = inputs or EventInput()
    for _attempt in range(MAX_WRITE_ATTEMPTS):
        stored = store.load(settings.environment)
        current = stored or WatchState(environment=settings.environment, watch_started_at=obs.at)
        new, verdict = evolve(current, obs, inputs, settings)
        if store.save(new, None if stored is None else stored.version):
            break
    else:
        raise WatchConflict(
            f"the watch state of {settings.environment} changed under {MAX_WRITE_ATTEMPTS} attempts in a row; "
            "the next check retries"
        )
    changed = new.decision != current.decision
    logger.info("watch check", extra={"trigger": trigger, "decision": new.decision, "changed": changed,
                                      "held": verdict.held, **new.counts()})
    action: Action | None = None
    notified = False
    if changed:
        action = action_for(new.decision, settings.failover_mode)
        logger.warning("decision changed", extra={"previous": current.decision, "decision": new.decision,
                                                  "action": action, "reason": verdict.reason})
        if new.start_pending:
            new = _start(settings, store, starter, new, action, obs.at)
        notified = _notify_change(settings, clients, clock, current, new, action, stage)
    _notify_evidence(settings, clients, clock, current, new, stage)
    if not changed and new.start_pending and new.incident is not None and (
        new.start_claim_until is None or obs.at >= new.start_claim_until
    ):
        new = _retry_start(settings, clients, clock, store, starter, new, obs.at, stage)
    # Notifications SNS refused earlier (a decision, an approval request) go out again: every check, after
    # its own work, so a slow SNS never delays detection.
    flush_outbox(settings, clients, clock)
    return WatchResult(
        decision=new.decision, previous=current.decision, changed=changed, reason=verdict.reason,
        incident=new.incident, execution_id=new.execution_id, counts=new.counts(), action=action,
        held=verdict.held, notified=notified, start_error=new.start_error, decided_at=new.decided_at,
        detected_at=_detected_at(new),
    )


def _detected_at(state: WatchState) -> datetime | None:
    if state.incident is not None:
        return state.incident.detected_at
    if state.decision == "jams-failover":
        return state.primary_silent_at
    if state.decision == "scheduler-outage":
        return state.both_silent_at
    return None


def _start(
    settings: Settings, store: WatchStore, starter: RecoveryStarter, state: WatchState,
    action: Action, now: datetime,
) -> WatchState:
    """Call the starter (we hold the transition and its claim), then record its answer."""
    assert state.incident is not None
    incident = state.incident
    try:
        execution_id = starter(incident, await_approval=settings.failover_mode == "approve")
    except Exception as exc:
        message = f"{error_code(exc)}: {exc}"
        logger.exception("starting the recovery failed", extra={"incident_id": incident.incident_id,
                                                               "error": error_code(exc), "action": action})
        retry_at = now + start_claim(settings)
        failed = _record(store, settings, state, lambda s: replace(s, start_error=message, start_claim_until=retry_at))
        return failed or replace(state, start_error=message, start_claim_until=retry_at)
    logger.info("recovery started", extra={"incident_id": incident.incident_id, "execution_id": execution_id,
                                          "await_approval": settings.failover_mode == "approve"})
    recorded = _record(store, settings, state, lambda s: replace(
        s, execution_id=execution_id, start_pending=False, start_claim_until=None, start_error=None))
    return recorded or replace(state, execution_id=execution_id, start_pending=False, start_claim_until=None)


def _record(
    store: WatchStore, settings: Settings, state: WatchState, change: Callable[[WatchState], WatchState]
) -> WatchState | None:
    """Apply ``change`` to the stored state of the same incident (retrying version conflicts)."""
    assert state.incident is not None
    for _attempt in range(MAX_WRITE_ATTEMPTS):
        stored = store.load(settings.environment)
        if stored is None or stored.incident is None or stored.incident.incident_id != state.incident.incident_id:
            logger.warning("incident changed before its start was recorded",
                           extra={"incident_id": state.incident.incident_id})
            return None
        updated = replace(change(stored), version=stored.version + 1)
        if store.save(updated, stored.version):
            return updated
    logger.error("could not record the recovery start", extra={"incident_id": state.incident.incident_id})
    return None


def _retry_start(
    settings: Settings, clients: ClientFactory, clock: Clock, store: WatchStore, starter: RecoveryStarter,
    state: WatchState, now: datetime, stage: str | None,
) -> WatchState:
    """A start whose claim expired without an execution id: claim it again (conditionally) and retry."""
    claimed = replace(state, version=state.version + 1, start_claim_until=now + start_claim(settings))
    if not store.save(claimed, state.version):
        return state  # another check holds it now
    action = action_for("region-recovery", settings.failover_mode)
    logger.warning("retrying the recovery start", extra={"incident_id": state.incident and state.incident.incident_id})
    after = _start(settings, store, starter, claimed, action, now)
    if after.execution_id and after.incident is not None:
        subject, body = compose_start_retried(settings, after, stage)
        _notifier(settings, clients, clock).notify(
            subject, body, kind="approval-request" if action == "request-approval" else "notice",
            key=f"{after.incident.incident_id}#start-resumed", decision=after.decision,
            execution_id=after.execution_id)
    return after


# ------------------------------------------------------------------------------------------ messages


def _notify_change(
    settings: Settings, clients: ClientFactory, clock: Clock, previous: WatchState, state: WatchState,
    action: Action, stage: str | None,
) -> bool:
    subject, body = compose_change(settings, previous, state, action, stage)
    kind: NotificationKind = "approval-request" if action == "request-approval" and state.execution_id else "decision"
    return _notifier(settings, clients, clock).notify(
        subject, body, kind=kind, key=f"decision#{settings.environment}#{isoformat(state.decided_at)}#{state.decision}",
        decision=state.decision, previous=previous.decision, action=action,
        incident_id=state.incident.incident_id if state.incident else None, execution_id=state.execution_id,
    )


def _notifier(settings: Settings, clients: ClientFactory, clock: Clock) -> Notifier:
    return Notifier(settings, clients, clock)


def _notify_evidence(
    settings: Settings, clients: ClientFactory, clock: Clock, previous: WatchState, state: WatchState,
    stage: str | None,
) -> None:
    """Tell the on-call once per episode what detection cannot see: unreadable heartbeats, a partition.

    Called by the check that wrote the change (writes are conditional), and keyed by the episode's start,
    so a duplicate check sends nothing twice.
    """
    env, st = settings.environment, stage_arg(stage)
    trouble, before = state.heartbeat_trouble, previous.heartbeat_trouble
    if trouble and (not before or (trouble.get("blind") and not before.get("blind"))):
        blind = bool(trouble.get("blind"))
        lines = [f"jams-dr {env}: the scheduler heartbeats cannot be read "
                 + ("in ANY region: detection is blind, nothing will be decided" if blind else "everywhere")
                 + f" (since {trouble['since']}).", "", "What was tried:", *(f"- {t}" for t in trouble["tried"]), ""]
        if blind:
            lines.append(f"The last decision ({state.decision}) is kept until a copy can be read again. Watch JAMS "
                         "directly; if the region is lost, start the recovery by hand: "
                         f"jams-dr recover {st}")
        else:
            lines.append("Detection goes on with the copy that can be read; a region loss is still decided on "
                         "silence there plus an unanswering primary region (probed through RDS, not CloudWatch).")
        lines += ["If an error above is AccessDenied, the watcher's role needs cloudwatch:GetMetricData in that "
                  "region; a copy with no beat ever needs the publishers to beat there too (jams-dr heartbeat "
                  "publishes into both regions).", f"Status: jams-dr status {st}"]
        _notifier(settings, clients, clock).notify(
            f"jams-dr {env}: heartbeats unreadable" + (" everywhere" if blind else ""), "\n".join(lines),
            kind="notice", key=f"heartbeats-unreadable#{env}#{trouble['since']}" + ("#blind" if blind else ""))
    elif before and not trouble:
        _notifier(settings, clients, clock).notify(
            f"jams-dr {env}: heartbeats readable again",
            f"jams-dr {env}: every copy of the heartbeats can be read again (trouble since {before['since']}). "
            f"Decision: {state.decision}. Status: jams-dr status {st}",
            kind="notice", key=f"heartbeats-readable#{env}#{before['since']}")
    cut = state.partition
    if cut and not previous.partition:
        _notifier(settings, clients, clock).notify(
            f"jams-dr {env}: heartbeats do not reach {cut['region']}",
            f"jams-dr {env}: the {', '.join(cut['schedulers'])} scheduler(s) beat in {settings.primary_region}'s "
            f"copy of the heartbeats, but none of their beats arrive in {cut['region']} (since {cut['since']}).\n"
            "This is a partition (or a publisher that beats into one region only), not a region loss: nothing is "
            f"recovered. Check the hosts' route to CloudWatch in {cut['region']} and that `jams-dr heartbeat` "
            f"runs with the recovery region set. Status: jams-dr status {st}",
            kind="notice", key=f"partition#{env}#{cut['since']}")


# ------------------------------------------------------------------------------------------ events


