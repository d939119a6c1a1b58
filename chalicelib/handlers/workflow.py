"""The recovery chain's Lambda functions: the chain itself, its sweeper, and the manual entry points.

Manual entry points (``chalice invoke -n start_drill --stage prod``) validate their payload first and
answer ``{"ok": false, "error": ...}`` naming the field and the fix before anything is created;
good input answers ``{"ok": true, "execution_id": ...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from chalice.app import Blueprint, CloudWatchEvent, Rate

from chalicelib.aws import get_factory
from chalicelib.clock import current_clock, isoformat
from chalicelib.errors import Refused
from chalicelib.observability import logger
from chalicelib.settings import Settings, get_settings

if TYPE_CHECKING:
    from chalicelib.aws import ClientFactory
    from chalicelib.clock import Clock
    from chalicelib.workflow.engine import Launcher

# Every function of the app imports app.py: the engine, the ledger and the payload models (pydantic)
# are imported inside the handlers, so the one-minute watcher's cold start does not pay for them.
# The payload models and parse_payload live in chalicelib/handlers/payloads.py.

bp = Blueprint(__name__)



# ---------------------------------------------------------------------------------------- wiring


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    clients: ClientFactory
    clock: Clock
    launcher: Launcher


def _runtime(context: Any) -> Runtime:
    from chalicelib.workflow import starter  # noqa: PLC0415 - lazy: see above

    settings = get_settings()
    clients = get_factory()
    name = starter.advance_function_name(getattr(context, "function_name", None),
                                         configured=settings.advance_function_name)
    return Runtime(settings, clients, current_clock(),
                   starter.lambda_launcher(clients, settings.recovery_region, name))


def _run(function: str, context: Any, action: Callable[[Runtime], dict[str, Any]]) -> dict[str, Any]:
    """Refusals (bad state, bad settings) become the ok=false answer; anything else is a Lambda error."""
    try:
        return {"ok": True, **action(_runtime(context))}
    except Refused as exc:
        logger.warning("request refused", extra={"function": function, "error": str(exc)})
        return {"ok": False, "error": f"{function}: {exc}"}


# ---------------------------------------------------------------------------------------- the chain


@bp.lambda_function(name="advance_execution")
def advance_execution(event: Any, context: Any) -> dict[str, Any]:
    from chalicelib.handlers.payloads import ExecutionPayload, parse_payload  # noqa: PLC0415 - lazy
    from chalicelib.notify import Notifier  # noqa: PLC0415
    from chalicelib.workflow.engine import new_owner  # noqa: PLC0415
    from chalicelib.workflow.runners import lambda_slice  # noqa: PLC0415

    parsed = parse_payload(ExecutionPayload, event, "advance_execution")
    if isinstance(parsed, dict):
        return parsed

    def run(rt: Runtime) -> dict[str, Any]:
        sliced = lambda_slice(
            parsed.execution_id, settings=rt.settings, clients=rt.clients, clock=rt.clock,
            notifier=Notifier(rt.settings, rt.clients, rt.clock),
            owner=f"lambda:{getattr(context, 'aws_request_id', '') or new_owner()}",
            remaining_ms=context.get_remaining_time_in_millis(),
            margin_seconds=float(rt.settings.advance_margin_seconds),
            launcher=rt.launcher,
        )
        result = sliced.result
        return {"execution_id": result.execution_id, "outcome": result.outcome, "status": result.status,
                "state": result.state, "next_check_at": isoformat(result.next_check_at),
                "steps_run": result.steps_run, "relaunched": sliced.relaunched}

    return _run("advance_execution", context, run)


@bp.schedule(Rate(5, unit=Rate.MINUTES), name="execution_sweeper")
def execution_sweeper(event: CloudWatchEvent) -> dict[str, Any]:
    from chalicelib.workflow.runners import sweep  # noqa: PLC0415 - lazy: see above

    def run(rt: Runtime) -> dict[str, Any]:
        result = sweep(rt.settings, rt.clients, rt.clock, rt.launcher)
        return {"launched": result.launched, "skipped": result.skipped, "fenced": result.fenced,
                "fence_error": result.fence_error, "notifications": result.notifications.to_dict()}

    return _run("execution_sweeper", event.context, run)


# ---------------------------------------------------------------------------------------- manual


def _manual(function: str, event: Any, context: Any,
            action: Callable[[Runtime, Any, ModuleType], Any]) -> dict[str, Any]:
    """A manual entry point: the payload validated against its model (``payloads.MANUAL_PAYLOADS``; a
    refusal names the field and the fix, before anything is read or created), then
    ``action(runtime, payload, starter)``'s Started."""
    from chalicelib.handlers import payloads  # noqa: PLC0415 - lazy: see above
    from chalicelib.workflow import starter  # noqa: PLC0415

    parsed = payloads.parse_payload(payloads.MANUAL_PAYLOADS[function], event, function)
    if isinstance(parsed, dict):
        return parsed
    return _run(function, context, lambda rt: action(rt, parsed, starter).as_dict())


@bp.lambda_function(name="start_drill")
def start_drill(event: Any, context: Any) -> dict[str, Any]:
    return _manual("start_drill", event, context, lambda rt, p, starter: starter.start_drill(
        rt.settings, rt.clients, rt.clock, p.drill_id, launcher=rt.launcher))


@bp.lambda_function(name="start_recovery")
def start_recovery(event: Any, context: Any) -> dict[str, Any]:
    return _manual("start_recovery", event, context, lambda rt, p, starter: (
        starter.start_recovery(rt.settings, rt.clients, rt.clock, reason=p.reason, incident_id=p.incident_id,
                               requested_by="chalice-invoke", force=p.force, launcher=rt.launcher)))


@bp.lambda_function(name="approve_recovery")
def approve_recovery(event: Any, context: Any) -> dict[str, Any]:
    return _manual("approve_recovery", event, context, lambda rt, p, starter: starter.approve(
        rt.settings, rt.clients, rt.clock, p.execution_id, approved_by="chalice-invoke", launcher=rt.launcher))


@bp.lambda_function(name="start_failback")
def start_failback(event: Any, context: Any) -> dict[str, Any]:
    return _manual("start_failback", event, context, lambda rt, p, starter: (
        starter.start_failback(rt.settings, rt.clients, rt.clock, reason=p.reason, launcher=rt.launcher)))


@bp.lambda_function(name="retry_execution")
def retry_execution(event: Any, context: Any) -> dict[str, Any]:
    return _manual("retry_execution", event, context, lambda rt, p, starter: starter.retry(
        rt.settings, rt.clients, rt.clock, p.execution_id, requested_by="chalice-invoke", launcher=rt.launcher))


@bp.lambda_function(name="rollback_execution")
def rollback_execution(event: Any, context: Any) -> dict[str, Any]:
    return _manual("rollback_execution", event, context, lambda rt, p, starter: (
        starter.rollback(rt.settings, rt.clients, rt.clock, p.execution_id, requested_by="chalice-invoke",
                         launcher=rt.launcher)))
