"""The pure transition of the watch state: one observation and the events in, the next state out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from chalicelib.clock import isoformat, parse_iso
from chalicelib.detection.decision import Signals, Verdict, action_for, decide
from chalicelib.detection.heartbeats import METRIC_NAME, NAMESPACE, SCHEDULERS, HeartbeatCopy, missed_since
from chalicelib.detection.incident import Incident
from chalicelib.detection.observe import Observation, Probe
from chalicelib.detection.state import WatchState
from chalicelib.settings import Settings

if TYPE_CHECKING:
    # The event models need pydantic: imported by the event handlers only, so the one-minute watcher's
    # cold start does not pay for it.
    from chalicelib.detection.events import HealthSignal, RdsSignal


HEALTH_FLAG_TTL = timedelta(hours=4)  # refreshed by every update of the event; a closed event clears it


DB_FLAG_TTL = timedelta(hours=24)  # an unavailable database stays evidence until an event or describe says otherwise


@dataclass(frozen=True)
class EventInput:
    """What an event adds to a check."""

    health: HealthSignal | None = None
    rds: RdsSignal | None = None


def _until(flag: Mapping[str, Any] | None, now: datetime) -> Mapping[str, Any] | None:
    if flag is None:
        return None
    return flag if parse_iso(str(flag["until"])) > now else None


def _apply_events(state: WatchState, inputs: EventInput, now: datetime) -> WatchState:
    health = _until(state.health, now)
    signal = inputs.health
    if signal is not None and signal.relevant:
        same = health is not None and health.get("event_arn") == signal.event_arn
        if signal.open:
            health = {
                "event_arn": signal.event_arn, "communication_id": signal.communication_id,
                "service": signal.service, "event_type_code": signal.event_type_code,
                "since": str(health["since"]) if same and health else isoformat(now),
                "until": isoformat(now + HEALTH_FLAG_TTL),
            }
        elif same:
            health = None
    database = _until(state.database, now)
    multi_az = state.multi_az
    rds = inputs.rds
    if rds is not None:
        if rds.effect == "unavailable":
            database = {"event_id": rds.event_id, "message": rds.message, "at": isoformat(now),
                        "until": isoformat(now + DB_FLAG_TTL)}
        elif rds.effect in ("available", "multi-az-completed"):
            database = None
        if rds.effect in ("multi-az-started", "multi-az-completed"):
            multi_az = {"event_id": rds.event_id, "message": rds.message, "at": isoformat(now)}
    return replace(state, health=None if health is None else dict(health),
                   database=None if database is None else dict(database), multi_az=multi_az)


def _estimate_failure(state: WatchState) -> datetime | None:
    """End of the last interval with a beat from any scheduler, else the first unanswered check."""
    beats = [b for b in (state.primary_last_beat, state.failover_last_beat) if b is not None]
    failure = max(beats) if beats else state.unreachable_since
    detected = state.both_silent_at
    if failure is not None and detected is not None and failure > detected:
        return detected
    return failure


def evolve(
    state: WatchState, obs: Observation, inputs: EventInput, settings: Settings
) -> tuple[WatchState, Verdict]:
    """The next state from one observation (pure; the caller writes it conditionally)."""
    now = obs.at
    interval = settings.heartbeat_interval_seconds
    threshold = settings.missed_beat_threshold
    new = _apply_events(state, inputs, now)
    stale = state.checked_at is not None and now < state.checked_at
    if not stale:
        new = _count(new, obs, interval, threshold)
    database_unavailable = new.database is not None
    probed = None if obs.probe is None else obs.probe.database_unavailable
    if not stale and probed is not None:
        database_unavailable = probed
        if not probed:
            new = replace(new, database=None)
    signals = Signals(
        primary_missed=new.primary_missed, failover_missed=new.failover_missed,
        region_answers=new.region_answers, unreachable_checks=new.unreachable_checks,
        health_event=new.health is not None, database_unavailable=database_unavailable,
        primary_streak=new.primary_streak, heartbeats_readable=new.heartbeats_readable,
    )
    verdict = decide(signals, threshold=threshold, previous=state.decision)
    new = replace(new, version=state.version + 1, last_reason=verdict.reason)
    if verdict.decision == state.decision:
        return new, verdict
    new = replace(new, decision=verdict.decision, decided_at=now, reason=verdict.reason)
    if state.decision == "region-recovery" and state.incident is not None:
        new = replace(new, incident=None, execution_id=None, start_pending=False, start_claim_until=None,
                      start_error=None, last_incident={**state.incident.to_dict(), "ended_at": isoformat(now),
                                                       "execution_id": state.execution_id})
    if verdict.decision == "region-recovery":
        incident = Incident(
            incident_id=f"{settings.environment}-{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}Z",
            decision="region-recovery", reason=verdict.reason, failure_at=_estimate_failure(new),
            detected_at=new.both_silent_at or now, decided_at=now,
        )
        starts = action_for("region-recovery", settings.failover_mode) != "notify"
        new = replace(new, incident=incident, execution_id=None, start_pending=starts,
                      start_claim_until=now + start_claim(settings) if starts else None, start_error=None)
    return new, verdict


def _count(state: WatchState, obs: Observation, interval: int, threshold: int) -> WatchState:
    now = obs.at
    counts: dict[str, Any] = {"checked_at": now}
    fed = set(state.fed_regions)
    fed.update(c.region for c in obs.readable if _has_beats(c))
    counts["fed_regions"] = sorted(fed)
    usable = _usable(obs, fed)
    counts["heartbeats_readable"] = bool(usable)
    if usable:
        for scheduler in SCHEDULERS:
            beats = [c.reading.of(scheduler) for c in usable if c.reading is not None]
            known = getattr(state, f"{scheduler}_last_beat")
            last = max((b for b in (known, *(x.last_beat_end for x in beats)) if b is not None), default=None)
            # A beat in either region's copy means the scheduler lives: the fewest missed beats count.
            counts[f"{scheduler}_missed"] = min(
                max(x.missed, missed_since(last, now, interval, obs.grace_seconds))
                if x.saturated and last is not None else x.missed
                for x in beats
            )
            counts[f"{scheduler}_last_beat"] = last
        # An incident ends when the primary scheduler beats steadily IN ITS OWN REGION's copy: beats in the
        # recovery region's copy may come from the recovered JAMS (same metric and dimensions).
        own = obs.copies[0].reading if obs.copies and obs.copies[0] in usable else None
        counts["primary_streak"] = own.primary.streak if own is not None else 0
        primary_silent = counts["primary_missed"] >= threshold
        both_silent = primary_silent and counts["failover_missed"] >= threshold
        counts.update(
            primary_silent_at=(state.primary_silent_at or now) if primary_silent else None,
            both_silent_at=(state.both_silent_at or now) if both_silent else None,
        )
    # Otherwise the counts stay as the last readable check left them: unknown is not silence.
    counts.update(_reachability(state, obs.probe, now, interval))
    counts["heartbeat_trouble"] = _trouble(state, obs, now, blind=not usable)
    counts["partition"] = _partition(state, obs, threshold, now)
    return replace(state, **counts)


def _has_beats(copy: HeartbeatCopy) -> bool:
    return copy.reading is not None and any(not copy.reading.of(s).saturated for s in SCHEDULERS)


def _usable(obs: Observation, fed: set[str]) -> tuple[HeartbeatCopy, ...]:
    """The copies whose silence means something: readable, and fed by the publishers at least once.

    A copy that never received a beat (publishers that do not beat into that region yet) says nothing;
    only when no copy was ever fed is silence everywhere taken as it is (no publisher set up at all).
    """
    readable = obs.readable
    return tuple(c for c in readable if c.region in fed) if fed else readable


def _reachability(state: WatchState, probe: Probe | None, now: datetime, interval: int) -> dict[str, Any]:
    """Only the independent probe says whether the primary region answers (see ``Probe``)."""
    if probe is None or probe.answered:
        return {"region_answers": True, "unreachable_checks": 0, "unreachable_since": None,
                "last_unreachable_at": None}
    # Count this unanswered check, unless another check counted one moments ago (duplicate triggers).
    spaced = state.last_unreachable_at is None or (now - state.last_unreachable_at).total_seconds() >= interval / 2
    return {
        "region_answers": False,
        "unreachable_checks": state.unreachable_checks + (1 if spaced else 0),
        "unreachable_since": state.unreachable_since or now,
        "last_unreachable_at": now if spaced else state.last_unreachable_at,
    }


def _trouble(state: WatchState, obs: Observation, now: datetime, *, blind: bool) -> dict[str, Any] | None:
    """The episode in which a copy of the heartbeats cannot be read (None once every copy reads again)."""
    if not obs.unreadable and not blind:
        return None
    tried = [f"GetMetricData {NAMESPACE}/{METRIC_NAME} in {c.region}: "
             + (f"failed ({c.error})" if not c.readable else "read" + ("" if _has_beats(c) else ", no beat ever"))
             for c in obs.copies]
    since = str(state.heartbeat_trouble["since"]) if state.heartbeat_trouble else isoformat(now)
    return {"since": since, "tried": tried, "blind": blind}


def _partition(state: WatchState, obs: Observation, threshold: int, now: datetime) -> dict[str, Any] | None:
    """Schedulers beating in the primary region's copy whose beats do not arrive in the recovery region's."""
    primary_copy = obs.copies[0].reading if obs.copies else None
    recovery_copy = obs.copies[1].reading if len(obs.copies) > 1 else None
    if primary_copy is None or recovery_copy is None:
        return state.partition if obs.unreadable else None  # not known either way: the episode goes on
    cut = [s for s in SCHEDULERS
           if primary_copy.of(s).missed < threshold <= recovery_copy.of(s).missed]
    if not cut:
        return None
    since = str(state.partition["since"]) if state.partition else isoformat(now)
    return {"since": since, "schedulers": cut, "region": obs.copies[1].region}


# The starter is idempotent per incident (one execution ``rec-<incident_id>``, created conditionally), so
# the start claim only spares a concurrent check the work while a start is under way. It must stay
# shorter than one watcher period: a check that died between the decision and the start is then resumed
# by the next check, not after a Lambda's 15-minute maximum.
START_CLAIM_MAX_SECONDS = 30.0


def start_claim(settings: Settings) -> timedelta:
    """How long a check that took a start holds it: half a heartbeat interval, at most 30 s (see above)."""
    return timedelta(seconds=min(START_CLAIM_MAX_SECONDS, settings.heartbeat_interval_seconds / 2))
