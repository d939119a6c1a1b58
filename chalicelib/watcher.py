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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib.aws import ClientFactory, error_code, region_unanswered
from chalicelib.clock import Clock, isoformat, parse_iso
from chalicelib.detection import Action, Signals, Verdict, action_for, decide
from chalicelib.errors import AwsFailure
from chalicelib.heartbeats import (
    METRIC_NAME,
    NAMESPACE,
    SCHEDULERS,
    HeartbeatCopy,
    default_grace,
    merge_missed,
    missed_since,
    read_copies,
)
from chalicelib.incident import Decision, Incident, RecoveryStarter
from chalicelib.keys import watch_key
from chalicelib.notify import NotificationKind, Notifier
from chalicelib.observability import logger
from chalicelib.outbox import flush_outbox
from chalicelib.settings import Settings
from chalicelib.stacks import stack_outputs
from chalicelib.table import LedgerTable, deserialize_item, serialize_item, serialize_value

if TYPE_CHECKING:
    # The event models need pydantic: imported by the event handlers only, so the one-minute watcher's
    # cold start does not pay for it.
    from chalicelib.events import EventError, HealthSignal, RdsSignal

HEALTH_PREFIX = "health#"
HEALTH_FLAG_TTL = timedelta(hours=4)  # refreshed by every update of the event; a closed event clears it
DB_FLAG_TTL = timedelta(hours=24)  # an unavailable database stays evidence until an event or describe says otherwise
HEALTH_MARKER_TTL = timedelta(days=14)
# The starter is idempotent per incident (one execution ``rec-<incident_id>``, created conditionally), so
# the start claim only spares a concurrent check the work while a start is under way. It must stay
# shorter than one watcher period: a check that died between the decision and the start is then resumed
# by the next check, not after a Lambda's 15-minute maximum.
START_CLAIM_MAX_SECONDS = 30.0
MAX_WRITE_ATTEMPTS = 30
LOOKBACK_EXTRA = 3  # intervals read beyond the threshold, so counts and last beats survive a late check
# Statuses in which the database cannot serve JAMS (stopped/stopping are an operator's choice, not a failure).
DB_UNAVAILABLE_STATUSES = frozenset(
    {
        "failed", "inaccessible-encryption-credentials", "inaccessible-encryption-credentials-recoverable",
        "incompatible-network", "incompatible-option-group", "incompatible-parameters",
        "incompatible-restore", "restore-error", "storage-full",
    }
)

FenceEnforcer = Callable[[Settings, ClientFactory, Clock], Any]



class WatchConflict(AwsFailure, RuntimeError):
    """The state kept changing under us for every attempt (should not happen; retried next minute)."""


def start_claim(settings: Settings) -> timedelta:
    """How long a check that took a start holds it: half a heartbeat interval, at most 30 s (see above)."""
    return timedelta(seconds=min(START_CLAIM_MAX_SECONDS, settings.heartbeat_interval_seconds / 2))


def health_marker_key(environment: str, event_arn: str, communication_id: str) -> str:
    return f"{HEALTH_PREFIX}{environment}#{event_arn}#{communication_id}"


# ------------------------------------------------------------------------------------------ state


@dataclass(frozen=True)
class WatchState:
    environment: str
    watch_started_at: datetime
    version: int = 0
    decision: Decision = "healthy"
    decided_at: datetime | None = None
    reason: str = ""  # why the current decision was taken
    last_reason: str = ""  # what the latest check saw
    checked_at: datetime | None = None
    primary_missed: int = 0
    failover_missed: int = 0
    primary_streak: int = 0
    primary_last_beat: datetime | None = None
    failover_last_beat: datetime | None = None
    region_answers: bool = True  # per the independent probe (Probe), never the heartbeat read itself
    heartbeats_readable: bool = True  # a fed copy of the heartbeats could be read at the last check
    fed_regions: list[str] = field(default_factory=list)  # regions whose copy has received a beat
    heartbeat_trouble: dict[str, Any] | None = None  # since, tried, blind: a copy cannot be read
    partition: dict[str, Any] | None = None  # since, schedulers, region: beats not reaching the recovery copy
    unreachable_checks: int = 0
    unreachable_since: datetime | None = None
    last_unreachable_at: datetime | None = None
    primary_silent_at: datetime | None = None
    both_silent_at: datetime | None = None
    health: dict[str, Any] | None = None  # event_arn, communication_id, service, event_type_code, since, until
    database: dict[str, Any] | None = None  # event_id, message, at, until
    multi_az: dict[str, Any] | None = None  # latest Multi-AZ failover event: event_id, message, at
    incident: Incident | None = None
    execution_id: str | None = None
    start_pending: bool = False
    start_claim_until: datetime | None = None
    start_error: str | None = None
    last_incident: dict[str, Any] | None = None

    _TIMES = (
        "watch_started_at", "decided_at", "checked_at", "primary_last_beat", "failover_last_beat",
        "unreachable_since", "last_unreachable_at", "primary_silent_at", "both_silent_at", "start_claim_until",
    )

    def to_item(self) -> dict[str, Any]:
        """The item in DynamoDB's typed form."""
        return serialize_item(self.to_plain())

    def to_plain(self) -> dict[str, Any]:
        """The item as plain Python (chalicelib/table.py writes it)."""
        plain: dict[str, Any] = {"pk": watch_key(self.environment)}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, datetime):
                value = isoformat(value)
            elif isinstance(value, Incident):
                value = {k: v for k, v in value.to_dict().items() if v is not None}
            plain[name] = value
        if self.incident is not None:
            plain["incident_id"] = self.incident.incident_id
        return plain

    @classmethod
    def from_item(cls, raw: Mapping[str, Any]) -> WatchState:
        """From DynamoDB's typed form."""
        return cls.from_plain(deserialize_item(raw))

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> WatchState:
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name not in plain:
                continue
            value = plain[name]
            if name in cls._TIMES:
                value = parse_iso(value)
            elif name == "incident":
                value = Incident.from_dict(value)
            values[name] = value
        return cls(**values)

    def counts(self) -> dict[str, Any]:
        return {
            "primary_missed": self.primary_missed,
            "failover_missed": self.failover_missed,
            "primary_streak": self.primary_streak,
            "unreachable_checks": self.unreachable_checks,
            "region_answers": self.region_answers,
            "heartbeats_readable": self.heartbeats_readable,
            "health_event": self.health is not None,
            "database_flag": self.database is not None,
        }


class _Store:
    """The watch state and the Health markers in the ledger table."""

    def __init__(self, settings: Settings, clients: ClientFactory) -> None:
        self._table = LedgerTable(settings, clients)

    def load(self, environment: str) -> WatchState | None:
        try:
            item = self._table.get(watch_key(environment))
        except ClientError as exc:
            raise self._table.failure(exc, "reading the watch state") from exc
        return None if item is None else WatchState.from_plain(item)

    def save(self, state: WatchState, expected_version: int | None) -> bool:
        """Write ``state`` if the stored version is still ``expected_version`` (None: no item yet)."""
        if expected_version is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            condition = {
                "ConditionExpression": "#v = :v",
                "ExpressionAttributeNames": {"#v": "version"},
                "ExpressionAttributeValues": {":v": serialize_value(expected_version)},
            }
        try:
            return self._table.put_if(state.to_plain(), condition)
        except ClientError as exc:
            raise self._table.failure(exc, "writing the watch state") from exc

    def put_marker(self, key: str, expires_at: datetime, attributes: Mapping[str, str]) -> bool:
        try:
            return self._table.put_new({"pk": key, "expires_at": int(expires_at.timestamp()), **attributes})
        except ClientError as exc:
            raise self._table.failure(exc, "recording a Health event") from exc

    def delete_marker(self, key: str) -> None:
        try:
            self._table.delete(key)
        except ClientError as exc:
            logger.error("could not release a Health event marker", extra={"key": key, "error": error_code(exc)})


def read_watch_state(settings: Settings, clients: ClientFactory) -> WatchState | None:
    """The watcher's current state (decision, incident, start) for operators; None before the first check."""
    return _Store(settings, clients).load(settings.environment)


# ------------------------------------------------------------------------------------------ observing


@dataclass(frozen=True)
class Probe:
    """The primary region's API asked through RDS (and CloudFormation), never through CloudWatch.

    This is the corroboration "the primary region does not answer": it must not come from the API that
    failed to show the heartbeats, or one CloudWatch outage would be both the silence and its proof.
    """

    answered: bool
    error: str | None = None  # the AWS error code when it did not answer
    database_unavailable: bool | None = None  # None: unknown
    database_status: str | None = None


@dataclass(frozen=True)
class Observation:
    at: datetime
    grace_seconds: float
    copies: tuple[HeartbeatCopy, ...]  # the heartbeat metric per region, primary region first
    probe: Probe | None = None  # None: not needed (the primary scheduler beats in a readable copy)

    @property
    def readable(self) -> tuple[HeartbeatCopy, ...]:
        return tuple(c for c in self.copies if c.readable)

    @property
    def unreadable(self) -> tuple[HeartbeatCopy, ...]:
        return tuple(c for c in self.copies if not c.readable)


def observe(
    settings: Settings, clients: ClientFactory, clock: Clock, *, grace_seconds: float | None = None
) -> Observation:
    """Read both copies of the heartbeats; probe the primary region when its copy or its primary is silent."""
    interval = settings.heartbeat_interval_seconds
    grace = default_grace(interval) if grace_seconds is None else grace_seconds
    at = clock.now()
    copies = read_copies(settings, clients, clock, lookback=settings.missed_beat_threshold + LOOKBACK_EXTRA,
                         grace_seconds=grace)
    for copy in copies:
        if not copy.readable:
            logger.warning("heartbeats unreadable", extra={"region": copy.region, "error": copy.error})
    primary_copy = copies[0]
    primary_missed = merge_missed(copies, "primary")
    if primary_copy.readable and primary_missed is not None and primary_missed < settings.missed_beat_threshold:
        return Observation(at, grace, copies)
    return Observation(at, grace, copies, _probe_primary(settings, clients))


def _probe_primary(settings: Settings, clients: ClientFactory) -> Probe:
    region = settings.primary_region
    try:
        db_id = settings.db_instance_id or stack_outputs(
            clients.client("cloudformation", region), settings.app_stack_name).get("DatabaseInstanceId")
        if not db_id:
            logger.error("no database to probe: set DB_INSTANCE_ID", extra={"stack": settings.app_stack_name})
            return Probe(answered=True)
        answer = clients.client("rds", region).describe_db_instances(DBInstanceIdentifier=db_id)
    except Exception as exc:
        if region_unanswered(exc):
            logger.warning("primary region did not answer", extra={"region": region, "error": error_code(exc)})
            return Probe(answered=False, error=error_code(exc))
        # It answered, with a refusal. Unknown, not unavailable: a wrong DB_INSTANCE_ID must never turn an
        # outage into a region recovery.
        logger.error("database status unknown", extra={"region": region, "error": error_code(exc)})
        return Probe(answered=True, error=error_code(exc))
    instances = answer.get("DBInstances", [])
    status = str(instances[0].get("DBInstanceStatus", "unknown")) if instances else "missing"
    return Probe(answered=True, database_unavailable=status in DB_UNAVAILABLE_STATUSES, database_status=status)


# ------------------------------------------------------------------------------------------ evolving


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
    store = _Store(settings, clients)
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
    settings: Settings, store: _Store, starter: RecoveryStarter, state: WatchState,
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
    store: _Store, settings: Settings, state: WatchState, change: Callable[[WatchState], WatchState]
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
    settings: Settings, clients: ClientFactory, clock: Clock, store: _Store, starter: RecoveryStarter,
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


def _stage_arg(stage: str | None) -> str:
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
    env, decision, st = settings.environment, state.decision, _stage_arg(stage)
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
             "What happens next:", *_recovery_next(settings, state, action, _stage_arg(stage))]
    return f"jams-dr {settings.environment}: REGION-RECOVERY started", "\n".join(lines)


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
    env, st = settings.environment, _stage_arg(stage)
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


def _rejected(exc: EventError) -> dict[str, Any]:
    logger.warning("event rejected", extra={"kind": exc.kind, "problems": exc.problems})
    return {"accepted": False, "reason": str(exc)}


def handle_health_event(
    settings: Settings, clients: ClientFactory, clock: Clock, starter: RecoveryStarter, event: Any, *,
    stage: str | None = None, fence_enforcer: FenceEnforcer | None = None,
) -> dict[str, Any]:
    from chalicelib.events import EventError, classify_health, parse_health_event  # noqa: PLC0415 - see top

    try:
        parsed = parse_health_event(event)
    except EventError as exc:
        return _rejected(exc)
    signal = classify_health(parsed, settings.primary_region)
    logger.info("health event", extra={"reason": signal.reason, "event_arn": signal.event_arn,
                                       "communication_id": signal.communication_id})
    if not signal.relevant:
        return {"accepted": True, "relevant": False, "duplicate": False, "reason": signal.reason}
    store = _Store(settings, clients)
    key = health_marker_key(settings.environment, signal.event_arn, signal.communication_id)
    now = clock.now()
    if not store.put_marker(key, now + HEALTH_MARKER_TTL, {"received_at": isoformat(now) or ""}):
        return {"accepted": True, "relevant": True, "duplicate": True,
                "reason": f"{signal.reason}; already received (same eventArn and communicationId)"}
    try:
        result = run_watcher(settings, clients, clock, starter, stage=stage, inputs=EventInput(health=signal),
                             trigger="health", fence_enforcer=fence_enforcer)
    except Exception:
        store.delete_marker(key)  # let EventBridge's retry process it again
        raise
    return {"accepted": True, "relevant": True, "duplicate": False, "reason": signal.reason, **result.to_dict()}


def handle_alarm_event(
    settings: Settings, clients: ClientFactory, clock: Clock, starter: RecoveryStarter, event: Any, *,
    stage: str | None = None, fence_enforcer: FenceEnforcer | None = None,
) -> dict[str, Any]:
    from chalicelib.events import EventError, classify_alarm, parse_alarm_event  # noqa: PLC0415 - see top

    try:
        parsed = parse_alarm_event(event)
    except EventError as exc:
        return _rejected(exc)
    signal = classify_alarm(parsed, settings.primary_region)
    logger.info("alarm event", extra={"reason": signal.reason, "alarm": signal.alarm_name})
    if not signal.trigger:
        return {"accepted": True, "relevant": False, "reason": signal.reason}
    result = run_watcher(settings, clients, clock, starter, stage=stage, trigger="alarm",
                         fence_enforcer=fence_enforcer)
    return {"accepted": True, "relevant": True, "reason": signal.reason, **result.to_dict()}


def handle_rds_event(
    settings: Settings, clients: ClientFactory, clock: Clock, starter: RecoveryStarter, event: Any, *,
    stage: str | None = None, fence_enforcer: FenceEnforcer | None = None,
) -> dict[str, Any]:
    from chalicelib.events import EventError, classify_rds, parse_rds_event  # noqa: PLC0415 - see top

    try:
        parsed = parse_rds_event(event)
    except EventError as exc:
        return _rejected(exc)
    signal = classify_rds(parsed, settings.primary_region, settings.db_instance_id)
    logger.info("rds event", extra={"reason": signal.reason, "event_id": signal.event_id})
    if signal.effect == "ignored":
        return {"accepted": True, "relevant": False, "reason": signal.reason, "effect": signal.effect}
    result = run_watcher(settings, clients, clock, starter, stage=stage, inputs=EventInput(rds=signal),
                         trigger="rds", fence_enforcer=fence_enforcer)
    return {"accepted": True, "relevant": True, "reason": signal.reason, "effect": signal.effect,
            **result.to_dict()}

