"""What detection hands to the recovery chain: the incident and its measured times.

Shared by detection (which creates it on a decision transition) and the workflow (which records it in
the execution and reports failure/detection/decision times from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from chalicelib.clock import isoformat, parse_iso

Decision = Literal["healthy", "jams-failover", "scheduler-outage", "region-recovery"]
DECISIONS: tuple[Decision, ...] = ("healthy", "jams-failover", "scheduler-outage", "region-recovery")


@dataclass(frozen=True)
class Incident:
    incident_id: str
    decision: Decision
    reason: str
    failure_at: datetime | None
    detected_at: datetime
    decided_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "decision": self.decision,
            "reason": self.reason,
            "failure_at": isoformat(self.failure_at),
            "detected_at": isoformat(self.detected_at),
            "decided_at": isoformat(self.decided_at),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Incident:
        decision = data["decision"]
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        failure = data.get("failure_at")
        return cls(
            incident_id=str(data["incident_id"]),
            decision=decision,
            reason=str(data.get("reason", "")),
            failure_at=parse_iso(failure) if failure else None,
            detected_at=parse_iso(data["detected_at"]),
            decided_at=parse_iso(data["decided_at"]),
        )


class RecoveryStarter(Protocol):
    """Starts (or, with await_approval, parks for approval) one recovery for an incident.

    Idempotent per incident_id: a second call for the same incident returns the same execution id and
    starts nothing new. Returns the execution id.
    """

    def __call__(self, incident: Incident, *, await_approval: bool) -> str: ...
