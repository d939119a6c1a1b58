"""The report of a drill, recovery or failback (CONTRACT in design.md), computed from the ledger item.

``build_report`` is pure: it reads the execution item (incident, history, data) and never calls AWS, so
the CLI, the report step and tests compute the same figures from the same record.

Times:
- recovery: failure/detected/decided come from the incident detection recorded (a manual recovery
  without one has no known failure time: failure_at, RTO and detection are null);
- drill: the incident if one was injected, else the drill's start for all three;
- failback: the planned interruption, i.e. the moment the recovery region's schedulers were stopped
  (``data["quiesced_at"]``), else the failback's start, for all three.
recovered_at is the end of the state that made the environment usable again: ``switch_traffic`` for a
recovery or failback, ``verify`` for a drill (a drill switches nothing) and for a recovery or failback
whose switch was skipped (no hosted zone: ``traffic.switched`` false). RTO = recovered_at - failure_at,
RPO = failure_at - the ORIGINAL creation time of the snapshot restored, or, when the database was
restored to a point in time from the replicated automated backups (RECOVERY_SOURCE=pitr, docs/pitr.md),
failure_at - the restore time actually used (``recovery_source.restore_time``); detection = detected_at -
failure_at. A snapshot taken after the failure (a failback's, taken once writes had stopped) loses no
data, so RPO is never negative.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from chalicelib.clock import isoformat, parse_iso
from chalicelib.dynamo_values import from_dynamo

CONTRACT_KEYS: tuple[str, ...] = (
    "kind", "execution_id", "outcome", "decision", "primary_region", "recovery_region",
    "failure_at", "detected_at", "decided_at", "recovered_at",
    "detection_seconds", "rto_seconds", "rpo_seconds", "snapshot", "stack", "steps", "notifications",
    "isolation", "traffic", "recovery_source", "restored_from",
)
SNAPSHOT_KEYS: tuple[str, ...] = ("id", "arn", "created_at")
NOTIFICATION_KEYS: tuple[str, ...] = ("at", "kind", "subject")
STACK_KEYS: tuple[str, ...] = ("name", "region", "status")
STEP_KEYS: tuple[str, ...] = ("name", "started_at", "ended_at", "outcome", "attempts")
# What the database was restored from: "requested" and "used" are "snapshot" or "pitr"; restore_time and
# automated_backups_arn are set when "used" is "pitr"; reason says why a requested pitr was not used.
RECOVERY_SOURCE_KEYS: tuple[str, ...] = ("requested", "used", "restore_time", "automated_backups_arn", "reason")

# The state whose successful end is "recovered" per kind.
RECOVERED_BY: dict[str, str] = {"recovery": "switch_traffic", "failback": "switch_traffic", "drill": "verify"}
# Decision reported when the execution carries no incident.
DEFAULT_DECISION: dict[str, str] = {
    "recovery": "region-recovery", "drill": "healthy", "failback": "healthy",
}
_EXECUTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_KEY_FORBIDDEN = re.compile(r":")  # the one character of execution ids (starter.EXECUTION_ID) keys avoid


def report_key(execution_id: str) -> str:
    """S3 key of an execution's report.json in the artifact bucket.

    Execution ids may hold ':' (an operator's incident id), which S3 lists among the key characters that
    "might require special handling" (S3 User Guide, "Naming Amazon S3 objects"): it becomes '-', with a
    digest of the id so that two ids differing only there keep two reports. Anything else is refused.
    """
    safe = _KEY_FORBIDDEN.sub("-", execution_id)
    if safe != execution_id:
        safe = f"{safe[:180]}-{hashlib.sha256(execution_id.encode()).hexdigest()[:12]}"
    if not _EXECUTION_ID.match(safe):
        raise ValueError(
            f"execution id {execution_id!r} cannot name a report: use letters, digits, '.', '_' and '-'"
        )
    return f"reports/{safe}/report.json"


def build_report(
    execution_item: Mapping[str, Any], notifications: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The CONTRACT report of one execution item (as the ledger stores it).

    ``notifications`` are what reached the topic, as a subscriber received them (a drill's inbox): the
    ledger does not know what subscribers got, so without them the list is empty.
    """
    kind = str(execution_item.get("kind", ""))
    data: Mapping[str, Any] = execution_item.get("data") or {}
    incident: Mapping[str, Any] = execution_item.get("incident") or {}
    history = [h for h in execution_item.get("history") or [] if isinstance(h, Mapping)]

    failure_at, detected_at, decided_at = _incident_times(kind, execution_item, incident, data, history)
    recovered_at = _recovered_at(kind, history, data)
    snapshot = _subset(data.get("snapshot"), SNAPSHOT_KEYS)
    stack = _subset(data.get("stack"), STACK_KEYS)
    source = _recovery_source(data)
    # The restored point: the restore time of a point-in-time restore, else the pinned snapshot's data.
    restored_point = (source or {}).get("restore_time") if (source or {}).get("used") == "pitr" else None

    return {
        "kind": kind,
        "execution_id": str(execution_item.get("execution_id") or _id_from_pk(execution_item)),
        "outcome": _outcome(execution_item, data),
        "decision": str(incident.get("decision") or DEFAULT_DECISION.get(kind, "healthy")),
        "primary_region": data.get("primary_region"),
        "recovery_region": data.get("recovery_region"),
        "failure_at": failure_at,
        "detected_at": detected_at,
        "decided_at": decided_at,
        "recovered_at": recovered_at,
        "detection_seconds": _seconds_between(failure_at, detected_at),
        "rto_seconds": _seconds_between(failure_at, recovered_at),
        "rpo_seconds": _rpo(failure_at, restored_point or snapshot.get("created_at")),
        "snapshot": snapshot,
        "stack": stack,
        "steps": [_step(h) for h in history],
        "notifications": report_notifications(notifications or []),
        "isolation": _isolation(data),
        "traffic": _traffic(data),
        "recovery_source": source,
        "restored_from": _restored_from(data),
    }


def _recovery_source(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"requested", "used", "restore_time", "automated_backups_arn", "reason"}`` as preflight and
    create_app_stack recorded it, or None when the execution chose no source (a failback, which restores
    its own snapshot, or a failure before preflight). ``snapshot`` stays the pinned snapshot: the fallback
    that was checked, and what a snapshot restore used."""
    source = data.get("recovery_source")
    if not isinstance(source, Mapping):
        return None
    out = _subset(source, RECOVERY_SOURCE_KEYS)
    out["restore_time"] = _iso(source.get("restore_time"))
    return out


def _restored_from(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """What RDS says the database was restored from, as verify read it and checked it against the chosen
    recovery point: ``{"proven": true, "kind", "source", "restored_to", "event_at", "message", "expected"}``,
    or ``{"proven": false, "expected", "reason"}`` (RDS's event never came); None before verify."""
    restored = data.get("restored_from")
    return dict(restored) if isinstance(restored, Mapping) else None


def _isolation(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """A drill's isolation as its verify_isolation step read it back from AWS (``verified`` true), or
    None: not a drill, or a drill that ended before the check passed (a violation fails the drill and
    its message names the resource)."""
    isolation = data.get("isolation")
    return dict(isolation) if isinstance(isolation, Mapping) else None


def _traffic(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """What switch_traffic did to the stable name: ``{"switched": true, "name", "to", "value", "alarm",
    "alarm_state", "region"}``, or ``{"switched": false, "reason"}`` (no hosted zone: nothing was switched);
    None when the execution never reached the switch (a drill, or a failure before it)."""
    traffic = data.get("traffic")
    return dict(traffic) if isinstance(traffic, Mapping) else None


def report_notifications(received: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[{"at", "kind", "subject"}]`` in time order (CONTRACT), whatever else the entries carry."""
    rows = [{"at": _iso(n.get("at")), "kind": str(n.get("kind") or "notice"), "subject": str(n.get("subject") or "")}
            for n in received if isinstance(n, Mapping)]
    return sorted(rows, key=lambda n: n["at"] or "")


def _outcome(item: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    status = item.get("status")
    if data.get("stood_down"):
        return "not-started"  # the primary beat again before anything was fenced or created
    if status in ("failed", "cancelled") or data.get("failed"):
        return "failed"
    if status in ("running", "succeeded"):
        # The report step runs as the last state of a running execution: not failed = succeeded.
        return "succeeded"
    return "not-started"


def _incident_times(
    kind: str,
    item: Mapping[str, Any],
    incident: Mapping[str, Any],
    data: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
) -> tuple[str | None, str | None, str | None]:
    if incident and kind != "failback":
        return (_iso(incident.get("failure_at")), _iso(incident.get("detected_at")),
                _iso(incident.get("decided_at")))
    start = _iso(item.get("created_at")) or (_iso(history[0].get("started_at")) if history else None)
    if kind == "failback":
        moment = _iso(data.get("quiesced_at")) or start
        return moment, moment, moment
    if kind == "drill":
        return start, start, start
    # A recovery started by hand without an incident: when it was decided is known, the failure is not.
    return None, start, start


def _recovered_at(kind: str, history: Sequence[Mapping[str, Any]], data: Mapping[str, Any]) -> str | None:
    if data.get("failed"):
        return None
    state = RECOVERED_BY.get(kind)
    ended = [h for h in history if h.get("name") == state and h.get("outcome") == "succeeded"]
    if not ended and state == "switch_traffic" and any(
            h.get("name") == state and h.get("outcome") == "skipped" and h.get("attempts") for h in history):
        # No hosted zone: nothing was switched, so the switch is no part of the RTO; the environment was
        # usable once verified (a switch skipped because an earlier state failed has attempts 0 and the
        # execution is failed, handled above).
        state = "verify"
        ended = [h for h in history if h.get("name") == state and h.get("outcome") == "succeeded"]
    return _iso(ended[-1].get("ended_at")) if ended else None


def _rpo(failure_at: str | None, created_at: Any) -> float | None:
    seconds = _seconds_between(_iso(created_at), failure_at)
    return None if seconds is None else max(seconds, 0.0)


def _step(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": str(entry.get("name", "")),
        "started_at": _iso(entry.get("started_at")),
        "ended_at": _iso(entry.get("ended_at")),
        "outcome": str(entry.get("outcome", "")),
        "attempts": int(entry.get("attempts") or 1),
    }


def _subset(value: Any, keys: Sequence[str]) -> dict[str, Any]:
    source = value if isinstance(value, Mapping) else {}
    out: dict[str, Any] = {}
    for key in keys:
        raw = source.get(key)
        out[key] = _iso(raw) if key == "created_at" else (None if raw in (None, "") else str(raw))
    return out


def _iso(value: Any) -> str | None:
    """Normalise a timestamp to the report's format (UTC, ms, Z); None stays None."""
    if value in (None, ""):
        return None
    return isoformat(parse_iso(str(value)))


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    return round((parse_iso(end) - parse_iso(start)).total_seconds(), 3)


def _id_from_pk(item: Mapping[str, Any]) -> str:
    pk = str(item.get("pk", ""))
    return pk.removeprefix("exec#")


def as_plain(value: Any) -> Any:
    """DynamoDB numbers (Decimal) to int/float, recursively, so a report serialises as JSON."""
    return from_dynamo(value)
