"""The event triggers of detection: AWS Health, CloudWatch alarm and RDS events fed into the watch state."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from chalicelib.aws import ClientFactory
from chalicelib.clock import Clock, isoformat
from chalicelib.detection.incident import RecoveryStarter
from chalicelib.detection.store import WatchStore
from chalicelib.detection.transition import EventInput
from chalicelib.detection.watcher import FenceEnforcer, run_watcher
from chalicelib.observability import logger
from chalicelib.settings import Settings

if TYPE_CHECKING:
    # The event models need pydantic: imported by the event handlers only, so the one-minute watcher's
    # cold start does not pay for it.
    from chalicelib.detection.events import EventError


HEALTH_PREFIX = "health#"


HEALTH_MARKER_TTL = timedelta(days=14)


def health_marker_key(environment: str, event_arn: str, communication_id: str) -> str:
    return f"{HEALTH_PREFIX}{environment}#{event_arn}#{communication_id}"


def _rejected(exc: EventError) -> dict[str, Any]:
    logger.warning("event rejected", extra={"kind": exc.kind, "problems": exc.problems})
    return {"accepted": False, "reason": str(exc)}


def handle_health_event(
    settings: Settings, clients: ClientFactory, clock: Clock, starter: RecoveryStarter, event: Any, *,
    stage: str | None = None, fence_enforcer: FenceEnforcer | None = None,
) -> dict[str, Any]:
    from chalicelib.detection.events import EventError, classify_health, parse_health_event  # noqa: PLC0415 - see top

    try:
        parsed = parse_health_event(event)
    except EventError as exc:
        return _rejected(exc)
    signal = classify_health(parsed, settings.primary_region)
    logger.info("health event", extra={"reason": signal.reason, "event_arn": signal.event_arn,
                                       "communication_id": signal.communication_id})
    if not signal.relevant:
        return {"accepted": True, "relevant": False, "duplicate": False, "reason": signal.reason}
    store = WatchStore(settings, clients)
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
    from chalicelib.detection.events import EventError, classify_alarm, parse_alarm_event  # noqa: PLC0415 - see top

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
    from chalicelib.detection.events import EventError, classify_rds, parse_rds_event  # noqa: PLC0415 - see top

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
