"""Payloads of the manual entry points and the chain (pydantic models) and their validation.

A module of its own so that pydantic loads only when a workflow function is invoked, not in the
cold start of every function of the app (they all import app.py).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib.observability import logger
from chalicelib.workflow import starter


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ExecutionPayload(_Payload):
    execution_id: str = Field(
        pattern=starter.EXECUTION_ID.pattern,
        description='give the id shown by `jams-dr status`, e.g. {"execution_id": "rec-20260101T0000Z"}',
    )


class StartDrillPayload(_Payload):
    drill_id: str | None = Field(
        default=None,
        pattern=starter.DRILL_ID.pattern,
        description="use 1-32 lowercase letters, digits and dashes, or leave drill_id out for a random id",
    )


class StartRecoveryPayload(_Payload):
    reason: str = Field(
        min_length=3, max_length=500,
        description='say why, e.g. {"reason": "us-east-1 outage, approved by on-call"}',
    )
    incident_id: str | None = Field(
        default=None,
        pattern=starter.INCIDENT_ID.pattern,
        description="use letters, digits and . _ : - (at most 128), or leave incident_id out",
    )
    force: bool = Field(
        default=False, strict=True,
        description="true fences the old primary even if its schedulers beat (else the recovery stands down)",
    )


class StartFailbackPayload(_Payload):
    reason: str = Field(default="", max_length=500, description="say why in at most 500 characters")


# The payload of each manual entry point, by function name (handlers/workflow.py imports this module only
# inside the handlers, to keep pydantic off the watcher's cold start).
MANUAL_PAYLOADS: dict[str, type[_Payload]] = {
    "start_drill": StartDrillPayload,
    "start_recovery": StartRecoveryPayload,
    "approve_recovery": ExecutionPayload,
    "start_failback": StartFailbackPayload,
    "retry_execution": ExecutionPayload,
    "rollback_execution": ExecutionPayload,
}

P = TypeVar("P", bound=_Payload)


def parse_payload(model: type[P], payload: Any, function: str) -> P | dict[str, Any]:
    """The validated payload, or the ``{"ok": false, "error": ...}`` answer naming field and fix."""
    fields = model.model_fields
    problems = []
    if isinstance(payload, dict):
        # A key with a lone surrogate (json.loads makes one from "\\ud800") cannot be echoed, and pydantic
        # would report only it: set such keys aside so every other problem is named too.
        unreadable = [key for key in payload if isinstance(key, str) and _not_text(key)]
        if unreadable:
            problems.append(f"a field name is not valid Unicode text; use only {sorted(fields) or 'no fields'}")
            payload = {k: v for k, v in payload.items() if k not in unreadable}
    try:
        parsed = model.model_validate({} if payload is None else payload)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            if not error["loc"] and error["type"] == "string_unicode":  # a key with a lone surrogate
                problems.append(f"a field name is not valid Unicode text; use only {sorted(fields) or 'no fields'}")
            elif not error["loc"]:  # the payload itself (a field named "" has a location too)
                problems.append(f"the payload must be a JSON object with fields {sorted(fields) or 'none'}")
            elif error["type"] == "extra_forbidden":
                allowed = ", ".join(sorted(fields)) or "none"
                problems.append(f"field {where!r} is not accepted; remove it (allowed: {allowed})")
            else:
                fix = fields[where].description if where in fields else None
                problems.append(f"field {where!r}: {error['msg']}" + (f"; {fix}" if fix else ""))
    else:
        if not problems:
            return parsed
    message = f"{function}: bad input, nothing was started: " + " | ".join(problems)
    logger.warning("bad input refused", extra={"function": function, "error": message})
    return {"ok": False, "error": message}


def _not_text(key: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in key)
