"""Detection triggers: the one-minute heartbeat watcher and the Health, alarm and RDS events.

Every Lambda function of the app imports app.py, so this module imports only what registering the
handlers needs; the watcher and its dependencies load on the first call of a detection function
(benchmarks/cold_start.py measures both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chalice.app import Blueprint, CloudWatchEvent, Rate

from chalicelib.aws import get_factory
from chalicelib.clock import current_clock
from chalicelib.observability import logger
from chalicelib.settings import Settings, get_settings

if TYPE_CHECKING:
    from chalicelib.detection.incident import Incident, RecoveryStarter
    from chalicelib.detection.watcher import FenceEnforcer

bp = Blueprint(__name__)

APP_NAME = "jams-dr"


def _recovery_starter() -> RecoveryStarter:
    # Lazy: the workflow package is only needed on a region-recovery transition.
    from chalicelib.workflow.starter import recovery_starter  # noqa: PLC0415

    return recovery_starter(get_settings(), get_factory(), current_clock())


def _start(incident: Incident, *, await_approval: bool) -> str:
    return _recovery_starter()(incident, await_approval=await_approval)


def _fence_enforcer() -> FenceEnforcer | None:
    """The recovery's pending-fence enforcement, run before each check (absent: nothing to enforce)."""
    try:
        # Imported on first call, not for a cycle (there is none): see the module docstring.
        from chalicelib.workflow.steps.fence import enforce_pending_fence  # noqa: PLC0415
    except ModuleNotFoundError:
        logger.warning("no chalicelib.workflow.steps.fence: pending fences are not enforced by the watcher")
        return None
    return enforce_pending_fence


def _stage(event: CloudWatchEvent, handler: str) -> str | None:
    """Chalice names functions <app>-<stage>-<handler>; the stage goes into the operator's commands."""
    name = str(getattr(event.context, "function_name", "") or "")
    prefix, suffix = f"{APP_NAME}-", f"-{handler}"
    if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
        return name[len(prefix):-len(suffix)]
    return None


def _wiring(event: CloudWatchEvent, handler: str) -> dict[str, Any]:
    settings: Settings = get_settings()
    return {"settings": settings, "clients": get_factory(), "clock": current_clock(), "starter": _start,
            "stage": _stage(event, handler), "fence_enforcer": _fence_enforcer()}


@bp.schedule(Rate(1, unit=Rate.MINUTES), name="heartbeat_watcher")
def heartbeat_watcher(event: CloudWatchEvent) -> dict[str, Any]:
    from chalicelib.detection.watcher import run_watcher  # noqa: PLC0415 - lazy: see the module docstring

    return run_watcher(**_wiring(event, "heartbeat_watcher")).to_dict()


@bp.on_cw_event({"source": ["aws.health"], "detail-type": ["AWS Health Event"]}, name="health_event")
def health_event(event: CloudWatchEvent) -> dict[str, Any]:
    from chalicelib.detection.triggers import handle_health_event  # noqa: PLC0415 - lazy: see the module docstring

    return handle_health_event(event=event.to_dict(), **_wiring(event, "health_event"))


@bp.on_cw_event({"source": ["aws.cloudwatch"], "detail-type": ["CloudWatch Alarm State Change"]}, name="alarm_event")
def alarm_event(event: CloudWatchEvent) -> dict[str, Any]:
    from chalicelib.detection.triggers import handle_alarm_event  # noqa: PLC0415 - lazy: see the module docstring

    return handle_alarm_event(event=event.to_dict(), **_wiring(event, "alarm_event"))


@bp.on_cw_event({"source": ["aws.rds"], "detail-type": ["RDS DB Instance Event"]}, name="rds_event")
def rds_event(event: CloudWatchEvent) -> dict[str, Any]:
    from chalicelib.detection.triggers import handle_rds_event  # noqa: PLC0415 - lazy: see the module docstring

    return handle_rds_event(event=event.to_dict(), **_wiring(event, "rds_event"))
