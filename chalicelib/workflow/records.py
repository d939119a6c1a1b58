"""The ledger's records as read from the table: an execution, its claim and transitions, the lease and
the fence, and the statuses an execution moves through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from chalicelib.clock import parse_iso
from chalicelib.errors import Refused
from chalicelib.table import opt_str, opt_time
from chalicelib.workflow.model import KINDS, Kind


@dataclass(frozen=True)
class Claim:
    owner: str
    expires_at: datetime

    def live(self, now: datetime) -> bool:
        return self.expires_at > now


@dataclass(frozen=True)
class Execution:
    """One execution as stored; ``item`` is the whole item as plain Python (for reports and the CLI)."""

    execution_id: str
    kind: Kind
    workflow: str
    status: Status
    state: str
    seq: int
    attempt: int
    history: list[dict[str, Any]]
    data: dict[str, Any]
    incident: dict[str, Any] | None
    environment: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    state_started_at: datetime | None
    next_check_at: datetime | None
    claim: Claim | None
    failed_state: str | None
    error: str | None
    item: dict[str, Any] = field(repr=False)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Execution:
        claim_raw = item.get("claim")
        claim = (
            Claim(owner=str(claim_raw["owner"]), expires_at=parse_iso(str(claim_raw["expires_at"])))
            if isinstance(claim_raw, Mapping)
            else None
        )
        kind = str(item["kind"])
        status = str(item["status"])
        if kind not in KINDS or status not in STATUSES:
            raise LedgerError(f"ledger item {item.get('pk')!r} has kind {kind!r} / status {status!r}")
        return cls(
            execution_id=str(item["execution_id"]),
            kind=kind,
            workflow=str(item.get("workflow", kind)),
            status=status,
            state=str(item["state"]),
            seq=int(item.get("seq", 0)),
            attempt=int(item.get("attempt", 1)),
            history=[dict(h) for h in item.get("history", [])],
            data=dict(item.get("data", {})),
            incident=dict(item["incident"]) if isinstance(item.get("incident"), Mapping) else None,
            environment=str(item.get("environment", "")),
            created_at=parse_iso(str(item["created_at"])),
            updated_at=parse_iso(str(item["updated_at"])),
            started_at=opt_time(item.get("started_at")),
            state_started_at=opt_time(item.get("state_started_at")),
            next_check_at=opt_time(item.get("next_check_at")),
            claim=claim,
            failed_state=opt_str(item.get("failed_state")),
            error=opt_str(item.get("error")),
            item=dict(item),
        )


@dataclass(frozen=True)
class Lease:
    name: str
    epoch: int
    holder: str | None
    kind: str | None
    acquired_at: datetime | None


@dataclass(frozen=True)
class Fence:
    execution_id: str
    epoch: int
    region: str
    instance_ids: tuple[str, ...]
    recorded_at: datetime


@dataclass(frozen=True)
class Transition:
    """What one step changed. ``history`` entries are appended; ``None`` fields stay as they are."""

    state: str
    status: Status
    attempt: int
    state_started_at: datetime
    next_check_at: datetime | None
    data: Mapping[str, Any]
    history: Sequence[Mapping[str, Any]] = ()
    failed_state: str | None = None
    error: str | None = None
    note: str | None = None
    report: Mapping[str, Any] | None = None
    keep_claim: bool = True


Status = Literal["awaiting-approval", "running", "succeeded", "failed", "cancelled"]


STATUSES: tuple[Status, ...] = ("awaiting-approval", "running", "succeeded", "failed", "cancelled")


ACTIVE_STATUSES: tuple[Status, ...] = ("running", "awaiting-approval")


TERMINAL_STATUSES: tuple[Status, ...] = ("succeeded", "failed", "cancelled")


class LedgerError(Refused, RuntimeError):
    """A ledger condition was not met; the message says what and what to do."""
