"""What the watcher tells the on-call: the text of a decision change and of a retried start."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chalicelib.clock import isoformat
from chalicelib.detection.decision import Action, action_for
from chalicelib.detection.heartbeats import SCHEDULERS
from chalicelib.detection.state import WatchState
from chalicelib.settings import Settings

if TYPE_CHECKING:
    # The event models need pydantic: imported by the event handlers only, so the one-minute watcher's
    # cold start does not pay for it.
    pass


_NEXT = {
    "healthy": "Nothing to do.",
    "jams-failover": (
        "JAMS failed over in-region by itself: the failover scheduler runs the jobs. Find out why the primary "
        "scheduler stopped (host, service, AZ) and bring it back; jams-dr rebuilds nothing."
    ),
    "scheduler-outage": (
        "Restart the JAMS scheduler service on both scheduler hosts; do NOT rebuild the region: its APIs and "
        "the database answer. If the heartbeats were never set up, run `jams-dr heartbeat` on each host."
    ),
}


def stage_arg(stage: str | None) -> str:
    return f"--stage {stage}" if stage else "--stage <stage>"


def _seen(state: WatchState, settings: Settings) -> list[str]:
    interval = settings.heartbeat_interval_seconds
    lines = []
    for scheduler in SCHEDULERS:
        missed = getattr(state, f"{scheduler}_missed")
        last = getattr(state, f"{scheduler}_last_beat")
        lines.append(f"- {scheduler} scheduler: {missed} missed heartbeat(s) of {interval} s "
                     f"(last beat by {isoformat(last) or 'never seen'})")
    if state.heartbeat_trouble:
        lines += [f"- heartbeats: {t}" for t in state.heartbeat_trouble["tried"]]
    if state.partition:
        lines.append(f"- heartbeats of {', '.join(state.partition['schedulers'])} do not reach "
                     f"{state.partition['region']} (since {state.partition['since']})")
    if state.region_answers:
        lines.append(f"- primary region {settings.primary_region}: API answers")
    else:
        lines.append(f"- primary region {settings.primary_region}: API did not answer {state.unreachable_checks} "
                     f"check(s) in a row (since {isoformat(state.unreachable_since)})")
    if state.health:
        lines.append(f"- AWS Health: {state.health['service']} {state.health['event_type_code']} open in "
                     f"{settings.primary_region} ({state.health['event_arn']})")
    if state.database:
        lines.append(f"- database: unavailable per {state.database['event_id']} {state.database.get('message', '')}")
    if state.multi_az:
        lines.append(f"- RDS Multi-AZ: {state.multi_az['event_id']} at {state.multi_az['at']} "
                     "(an AZ problem RDS handles by itself)")
    return lines


def compose_change(
    settings: Settings, previous: WatchState, state: WatchState, action: Action, stage: str | None
) -> tuple[str, str]:
    """The on-call message for a decision change: seen, decided, next, commands."""
    env, decision, st = settings.environment, state.decision, stage_arg(stage)
    lines = [f"jams-dr {env}: decision changed from {previous.decision} to {decision} at "
             f"{isoformat(state.decided_at)}.", "", "What was seen:", *_seen(state, settings), "",
             f"What was decided: {decision} - {state.reason}."]
    if state.incident is not None:
        inc = state.incident
        lines.append(f"Incident {inc.incident_id}: estimated failure at {isoformat(inc.failure_at) or 'unknown'}, "
                     f"detected at {isoformat(inc.detected_at)}.")
    lines += ["", "What happens next:"]
    if decision == "region-recovery":
        lines += _recovery_next(settings, state, action, st)
    elif previous.decision == "region-recovery":
        ended = previous.incident.incident_id if previous.incident else "the incident"
        lines += [f"The primary scheduler in {settings.primary_region} beats steadily again: {ended} is closed.",
                  f"If a recovery ran, JAMS now runs in {settings.recovery_region}: make sure the old schedulers "
                  f"stay fenced and plan the failback: jams-dr failback {st}",
                  f"Status: jams-dr status {st}"]
    else:
        lines.append(_NEXT[decision])
        lines.append(f"Status: jams-dr status {st}")
    subject = f"jams-dr {env}: {decision.upper()}" + (
        f" ({action.replace('-', ' ')})" if decision == "region-recovery" else "")
    return subject, "\n".join(lines)


def _recovery_next(settings: Settings, state: WatchState, action: Action, st: str) -> list[str]:
    recovery, eid = settings.recovery_region, state.execution_id
    if eid and state.incident is not None and eid != f"rec-{state.incident.incident_id}":
        return [f"Recovery execution {eid} was already active (started before this decision, e.g. by an operator): "
                "this incident joins it; no second recovery is started.",
                f"Follow it: jams-dr status {st}"]
    if state.start_error:
        return [f"Starting the recovery FAILED: {state.start_error}.",
                "The watcher retries it at its next check. To start it by hand now: "
                f"jams-dr recover {st}", f"Status: jams-dr status {st}"]
    if action == "start-recovery":
        return [f"FAILOVER_MODE=auto: recovery execution {eid} is rebuilding JAMS in {recovery} from the pinned "
                "snapshot (fence the old primary, create the application stack, verify, switch DNS).",
                f"Follow it: jams-dr status {st}",
                f"To stop: a running recovery is not cancelled; if it fails it keeps the lease, then roll it back "
                f"with jams-dr recover --rollback {eid} {st}"]
    if action == "request-approval":
        return [f"FAILOVER_MODE=approve: recovery execution {eid} is prepared and WAITS FOR YOUR APPROVAL.",
                f"To approve: jams-dr recover --approve {eid} {st}",
                f"To stop: do nothing; the execution stays awaiting approval. Status: jams-dr status {st}"]
    return ["FAILOVER_MODE=notify: nothing is started automatically.",
            f"To recover the region: jams-dr recover {st}",
            f"To stop: do nothing. Status: jams-dr status {st}"]


def compose_start_retried(settings: Settings, state: WatchState, stage: str | None) -> tuple[str, str]:
    action = action_for("region-recovery", settings.failover_mode)
    lines = [f"jams-dr {settings.environment}: the recovery start of incident "
             f"{state.incident.incident_id if state.incident else '?'} did not complete at the decision (it failed or "
             "its check stopped); a later check has now started it.", "",
             "What happens next:", *_recovery_next(settings, state, action, stage_arg(stage))]
    return f"jams-dr {settings.environment}: REGION-RECOVERY started", "\n".join(lines)
