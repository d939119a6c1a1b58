"""What the pipeline reports: the recovery points in the recovery region and one tick's outcome.

``recovery_point`` reads (never writes) the pinned copy and the newest available copy: the status
command and the recovery chain's preflight use it to know what a recovery would restore from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from chalicelib.aws import ClientFactory
from chalicelib.clock import isoformat
from chalicelib.rds import list_snapshots
from chalicelib.settings import Settings
from chalicelib.snapshots.rules import Snap, matches_pin, newest_available
from chalicelib.stacks import PIN_PARAMETER, describe_stack, parameters_of


@dataclass(frozen=True)
class RecoveryPoint:
    """A copy in the recovery region a recovery could restore from."""

    snapshot_id: str
    arn: str
    region: str
    status: str
    created_at: datetime
    source_arn: str | None
    pinned: bool

    @property
    def source_created_at(self) -> datetime:
        """The point in time of the data: the source snapshot's creation (the RPO's reference)."""
        return self.created_at

    def age_seconds(self, now: datetime) -> float:
        return max((now - self.created_at).total_seconds(), 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The report's ``snapshot`` object (id, arn, created_at) plus status and origin."""
        return {
            "id": self.snapshot_id,
            "arn": self.arn,
            "created_at": isoformat(self.created_at),
            "region": self.region,
            "status": self.status,
            "source_arn": self.source_arn,
            "pinned": self.pinned,
        }


def _point(snap: Snap, pinned_value: str | None) -> RecoveryPoint:
    return RecoveryPoint(
        snapshot_id=snap.snapshot_id,
        arn=snap.arn,
        region=snap.region,
        status=snap.status,
        created_at=snap.created,
        source_arn=snap.source_arn,
        pinned=matches_pin(snap, pinned_value),
    )


@dataclass(frozen=True)
class RecoveryPointInfo:
    """The pinned copy (what the standby stack restores) and the newest available copy."""

    pinned_value: str | None
    pinned: RecoveryPoint | None
    newest: RecoveryPoint | None
    standby_status: str | None

    # The pinned copy's fields, for callers that only need "what a recovery restores from".
    @property
    def snapshot_id(self) -> str | None:
        return None if self.pinned is None else self.pinned.snapshot_id

    @property
    def arn(self) -> str | None:
        return None if self.pinned is None else self.pinned.arn

    @property
    def source_created_at(self) -> datetime | None:
        return None if self.pinned is None else self.pinned.created_at

    @property
    def status(self) -> str | None:
        return None if self.pinned is None else self.pinned.status

    @property
    def pinned_missing(self) -> bool:
        """The standby stack names a snapshot that is not one of our copies in the region."""
        return bool(self.pinned_value) and self.pinned is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pinned_value": self.pinned_value,
            "pinned": None if self.pinned is None else self.pinned.to_dict(),
            "newest": None if self.newest is None else self.newest.to_dict(),
            "standby_status": self.standby_status,
            "pinned_missing": self.pinned_missing,
        }


@dataclass
class TickResult:
    """What one tick did and what it is waiting for (tests, the drill and the handler use it)."""

    environment: str
    at: datetime
    primary_reachable: bool = True
    taken: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    pinned: str | None = None
    pin: str | None = None
    pruned: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    newest_copy: str | None = None
    # The copy the standby stack names (what a recovery restores), and the RPO it gives: its age.
    pinned_copy: str | None = None
    rpo_seconds: float | None = None
    # How far the pinned copy's data is behind the newest available copy's (0: the pin is current).
    pin_behind_seconds: float | None = None
    # Why the pin was kept back on purpose this tick (a recovery lease, a restored application stack).
    pin_held: str | None = None
    replication: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = isoformat(self.at)
        data["ok"] = self.ok
        return data


def recovery_point(settings: Settings, clients: ClientFactory) -> RecoveryPointInfo:
    """The pinned copy and the newest available copy in the recovery region (reads only)."""
    region = settings.recovery_region
    copies = list_snapshots(clients.client("rds", region), region, settings.environment)
    stack = describe_stack(clients.client("cloudformation", region), settings.standby_stack_name)
    pinned_value = parameters_of(stack).get(PIN_PARAMETER) if stack else None
    pinned = next((c for c in copies if matches_pin(c, pinned_value)), None)
    latest = newest_available(copies)
    return RecoveryPointInfo(
        pinned_value=pinned_value or None,
        pinned=None if pinned is None else _point(pinned, pinned_value),
        newest=None if latest is None else _point(latest, pinned_value),
        standby_status=None if stack is None else str(stack.get("StackStatus")),
    )
