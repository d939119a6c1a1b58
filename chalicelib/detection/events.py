"""Typed EventBridge events that detection listens to, and what each one means for the decision.

Models follow the documented shapes (AWS Health EventBridge schema, CloudWatch alarm state change,
RDS DB instance event); unknown fields are ignored (AWS adds fields), missing or mistyped required
ones raise ``EventError`` naming each field, so a malformed event is rejected before it can influence
anything. The classifiers are pure: they say whether an event concerns this environment's primary
region and what it changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from chalicelib.errors import Refused

# Regional Health issues that corroborate a region failure for JAMS (schedulers on EC2, SQL Server on
# RDS); AWS posts large regional outages as MULTIPLE_SERVICES.
REGIONAL_SERVICES = frozenset({"EC2", "RDS", "MULTIPLE_SERVICES"})
HEALTH_SCOPES = frozenset({"PUBLIC", "ACCOUNT_SPECIFIC"})

# RDS event ids (RDS user guide, "Amazon RDS event categories and event messages").
RDS_MULTI_AZ_STARTED = frozenset({"RDS-EVENT-0013"})  # Multi-AZ failover started
RDS_MULTI_AZ_COMPLETED = frozenset({"RDS-EVENT-0015", "RDS-EVENT-0049"})  # Multi-AZ failover completed
RDS_UNAVAILABLE = frozenset(
    {
        "RDS-EVENT-0004",  # DB instance shutdown
        "RDS-EVENT-0031",  # failed: incompatible configuration or underlying storage issue
        "RDS-EVENT-0035",  # invalid parameters
        "RDS-EVENT-0036",  # incompatible network
        "RDS-EVENT-0221",  # storage-full threshold reached, database shut down
    }
)
RDS_AVAILABLE = frozenset({"RDS-EVENT-0006", "RDS-EVENT-0088"})  # restarted / started


class EventError(Refused, ValueError):
    """An event does not have the shape of its type; the message lists every bad field."""

    def __init__(self, kind: str, problems: list[str]) -> None:
        self.kind = kind
        self.problems = problems
        super().__init__(
            f"malformed {kind} event: " + "; ".join(problems)
            + ". It was rejected and changed nothing; check the EventBridge rule's pattern and input transformer"
        )


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Envelope(_Model):
    version: str
    id: str = Field(min_length=1)
    detail_type: str = Field(alias="detail-type")
    source: str
    account: str
    time: datetime
    region: str = Field(min_length=1)
    resources: list[str] = Field(default_factory=list)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


# ------------------------------------------------------------------------------------------ Health


class HealthDescription(_Model):
    language: str = "en_US"
    latest_description: str = Field(default="", alias="latestDescription")


# eventArn and communicationId form the dedupe marker's DynamoDB key (at most 2048 bytes): bounded to
# the Health API's documented 1600 for eventArn, and printable ASCII, so a forged event cannot make it fail.
_PRINTABLE_ASCII = r"^[!-~]+$"


class HealthDetail(_Model):
    model_config = ConfigDict(alias_generator=to_camel, extra="ignore", populate_by_name=True, frozen=True)

    event_arn: str = Field(min_length=1, max_length=1600, pattern=_PRINTABLE_ASCII)
    service: str = Field(min_length=1)
    event_type_code: str = Field(min_length=1)
    event_type_category: str = Field(min_length=1)
    communication_id: str = Field(min_length=1, max_length=256, pattern=_PRINTABLE_ASCII)
    event_scope_code: str | None = None
    event_region: str | None = None
    status_code: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    last_updated_time: str | None = None
    event_description: list[HealthDescription] = Field(default_factory=list)


class HealthEvent(Envelope):
    source: Literal["aws.health"]
    detail_type: Literal["AWS Health Event"] = Field(alias="detail-type")
    detail: HealthDetail

    @property
    def description(self) -> str:
        return next((d.latest_description for d in self.detail.event_description if d.latest_description), "")


@dataclass(frozen=True)
class HealthSignal:
    relevant: bool
    open: bool  # relevant and open: raise the flag; relevant and closed: lower it
    reason: str
    event_arn: str
    communication_id: str
    service: str
    event_type_code: str


def classify_health(event: HealthEvent, primary_region: str) -> HealthSignal:
    """Relevant: an issue for EC2/RDS whose AFFECTED region (detail.eventRegion) is the primary."""
    d = event.detail
    what = f"{d.service} {d.event_type_code} ({d.event_type_category}, {d.event_scope_code or 'no scope'})"
    problem = None
    if d.event_region != primary_region:
        problem = f"it affects {d.event_region or 'no region'}, not the primary region {primary_region}"
    elif d.service not in REGIONAL_SERVICES:
        problem = f"service {d.service} is not one JAMS depends on ({', '.join(sorted(REGIONAL_SERVICES))})"
    elif d.event_type_category != "issue":
        problem = f"category {d.event_type_category} is not an issue"
    elif d.event_scope_code is not None and d.event_scope_code not in HEALTH_SCOPES:
        problem = f"scope {d.event_scope_code} is neither PUBLIC nor ACCOUNT_SPECIFIC"
    is_open = (d.status_code or "open") != "closed"
    if problem:
        reason = f"Health event {what} ignored: {problem}"
    else:
        reason = f"Health event {what} in {primary_region} is {'open' if is_open else 'closed'}"
    return HealthSignal(
        relevant=problem is None, open=problem is None and is_open, reason=reason, event_arn=d.event_arn,
        communication_id=d.communication_id, service=d.service, event_type_code=d.event_type_code,
    )


# ------------------------------------------------------------------------------------------ Alarms

AlarmStateValue = Literal["OK", "ALARM", "INSUFFICIENT_DATA"]


class AlarmState(_Model):
    value: AlarmStateValue
    reason: str = ""
    timestamp: datetime | None = None


class AlarmDetail(_Model):
    alarm_name: str = Field(alias="alarmName", min_length=1)
    state: AlarmState
    previous_state: AlarmState = Field(alias="previousState")


class AlarmEvent(Envelope):
    source: Literal["aws.cloudwatch"]
    detail_type: Literal["CloudWatch Alarm State Change"] = Field(alias="detail-type")
    detail: AlarmDetail


@dataclass(frozen=True)
class AlarmSignal:
    trigger: bool
    reason: str
    alarm_name: str


def classify_alarm(event: AlarmEvent, primary_region: str) -> AlarmSignal:
    """Only OK -> ALARM in the primary region triggers a check (new alarms start INSUFFICIENT_DATA)."""
    d = event.detail
    change = f"alarm {d.alarm_name} {d.previous_state.value} -> {d.state.value}"
    if event.region != primary_region:
        return AlarmSignal(False, f"{change} ignored: it is in {event.region}, not {primary_region}", d.alarm_name)
    if (d.previous_state.value, d.state.value) != ("OK", "ALARM"):
        return AlarmSignal(False, f"{change} ignored: only OK -> ALARM triggers a check", d.alarm_name)
    return AlarmSignal(True, f"{change} in {primary_region}: checking heartbeats now", d.alarm_name)


# ------------------------------------------------------------------------------------------ RDS


class RdsDetail(_Model):
    event_id: str = Field(alias="EventID", pattern=r"^RDS-EVENT-\d{4}$")
    source_identifier: str = Field(alias="SourceIdentifier", min_length=1)
    source_type: str = Field(alias="SourceType")
    event_categories: list[str] = Field(default_factory=list, alias="EventCategories")
    source_arn: str | None = Field(default=None, alias="SourceArn")
    date: datetime | None = Field(default=None, alias="Date")
    message: str = Field(default="", alias="Message")


class RdsEvent(Envelope):
    source: Literal["aws.rds"]
    detail_type: Literal["RDS DB Instance Event"] = Field(alias="detail-type")
    detail: RdsDetail


RdsEffect = Literal["unavailable", "available", "multi-az-started", "multi-az-completed", "ignored"]


@dataclass(frozen=True)
class RdsSignal:
    effect: RdsEffect
    reason: str
    event_id: str
    db_instance: str
    message: str


def _rds_effect(event_id: str, categories: list[str]) -> tuple[RdsEffect, str]:
    if event_id in RDS_MULTI_AZ_STARTED:
        return "multi-az-started", "Multi-AZ failover started: an AZ problem RDS is handling, not the region"
    if event_id in RDS_MULTI_AZ_COMPLETED:
        return "multi-az-completed", "Multi-AZ failover completed: the database is available again"
    if event_id in RDS_UNAVAILABLE or "failure" in categories:
        return "unavailable", "the database is unavailable"
    if event_id in RDS_AVAILABLE:
        return "available", "the database is available"
    return "ignored", "ignored, not an availability event"


def names_instance(detail: RdsDetail, db_instance_id: str) -> bool:
    """Whether an RDS event is about ``db_instance_id``.

    The documented events name the instance in several forms: SourceIdentifier ``<id>`` or ``rds:<id>``,
    SourceArn ``arn:...:db:<id>`` (RDS User Guide, "Amazon RDS event examples" for EventBridge); either
    naming ours is enough. RDS keeps instance identifiers in lowercase whatever case they were created
    with (CreateDBInstance, DBInstanceIdentifier), so a settings value in another case is the same instance.
    """
    wanted = db_instance_id.lower()
    named = {detail.source_identifier.removeprefix("rds:").lower()}
    arn = (detail.source_arn or "").rsplit(":db:", 1)
    if len(arn) == 2:
        named.add(arn[1].lower())
    return wanted in named


def classify_rds(event: RdsEvent, primary_region: str, db_instance_id: str | None) -> RdsSignal:
    d = event.detail
    effect: RdsEffect
    if event.region != primary_region:
        effect, why = "ignored", f"ignored, it is in {event.region}, not the primary region {primary_region}"
    elif d.source_type != "DB_INSTANCE":
        effect, why = "ignored", f"ignored, source type {d.source_type} is not DB_INSTANCE"
    elif db_instance_id and not names_instance(d, db_instance_id):
        effect, why = "ignored", f"ignored, the JAMS database is {db_instance_id}"
    else:
        effect, why = _rds_effect(d.event_id, d.event_categories)
    what = f"{d.event_id} for {d.source_identifier} ({d.message or 'no message'})"
    return RdsSignal(effect, f"RDS {what}: {why}", d.event_id, d.source_identifier, d.message)


# ------------------------------------------------------------------------------------------ parsing

M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], kind: str, raw: Any) -> M:
    if not isinstance(raw, Mapping):
        raise EventError(kind, [f"the event is a {type(raw).__name__}, not a JSON object"])
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(event)"
            problems.append(f"{where}: {error['msg']}")
        raise EventError(kind, problems) from None


def parse_health_event(raw: Any) -> HealthEvent:
    return _parse(HealthEvent, "AWS Health", raw)


def parse_alarm_event(raw: Any) -> AlarmEvent:
    return _parse(AlarmEvent, "CloudWatch alarm state change", raw)


def parse_rds_event(raw: Any) -> RdsEvent:
    return _parse(RdsEvent, "RDS DB instance", raw)
