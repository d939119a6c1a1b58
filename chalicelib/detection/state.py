"""The watch state: what the watcher keeps between checks (one ledger item per environment, versioned)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chalicelib.clock import isoformat, parse_iso
from chalicelib.detection.incident import Decision, Incident
from chalicelib.keys import watch_key
from chalicelib.table import deserialize_item, serialize_item

if TYPE_CHECKING:
    # The event models need pydantic: imported by the event handlers only, so the one-minute watcher's
    # cold start does not pay for it.
    pass


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
