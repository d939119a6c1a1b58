"""Observing the primary region: both heartbeat copies, and a probe of whether the region answers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from chalicelib.aws import ClientFactory, error_code, region_unanswered
from chalicelib.clock import Clock
from chalicelib.detection.heartbeats import HeartbeatCopy, default_grace, merge_missed, read_copies
from chalicelib.observability import logger
from chalicelib.settings import Settings
from chalicelib.stacks import stack_outputs

if TYPE_CHECKING:
    # The event models need pydantic: imported by the event handlers only, so the one-minute watcher's
    # cold start does not pay for it.
    pass


LOOKBACK_EXTRA = 3  # intervals read beyond the threshold, so counts and last beats survive a late check


# Statuses in which the database cannot serve JAMS (stopped/stopping are an operator's choice, not a failure).
DB_UNAVAILABLE_STATUSES = frozenset(
    {
        "failed", "inaccessible-encryption-credentials", "inaccessible-encryption-credentials-recoverable",
        "incompatible-network", "incompatible-option-group", "incompatible-parameters",
        "incompatible-restore", "restore-error", "storage-full",
    }
)


@dataclass(frozen=True)
class Probe:
    """The primary region's API asked through RDS (and CloudFormation), never through CloudWatch.

    This is the corroboration "the primary region does not answer": it must not come from the API that
    failed to show the heartbeats, or one CloudWatch outage would be both the silence and its proof.
    """

    answered: bool
    error: str | None = None  # the AWS error code when it did not answer
    database_unavailable: bool | None = None  # None: unknown
    database_status: str | None = None


@dataclass(frozen=True)
class Observation:
    at: datetime
    grace_seconds: float
    copies: tuple[HeartbeatCopy, ...]  # the heartbeat metric per region, primary region first
    probe: Probe | None = None  # None: not needed (the primary scheduler beats in a readable copy)

    @property
    def readable(self) -> tuple[HeartbeatCopy, ...]:
        return tuple(c for c in self.copies if c.readable)

    @property
    def unreadable(self) -> tuple[HeartbeatCopy, ...]:
        return tuple(c for c in self.copies if not c.readable)


def observe(
    settings: Settings, clients: ClientFactory, clock: Clock, *, grace_seconds: float | None = None
) -> Observation:
    """Read both copies of the heartbeats; probe the primary region when its copy or its primary is silent."""
    interval = settings.heartbeat_interval_seconds
    grace = default_grace(interval) if grace_seconds is None else grace_seconds
    at = clock.now()
    copies = read_copies(settings, clients, clock, lookback=settings.missed_beat_threshold + LOOKBACK_EXTRA,
                         grace_seconds=grace)
    for copy in copies:
        if not copy.readable:
            logger.warning("heartbeats unreadable", extra={"region": copy.region, "error": copy.error})
    primary_copy = copies[0]
    primary_missed = merge_missed(copies, "primary")
    if primary_copy.readable and primary_missed is not None and primary_missed < settings.missed_beat_threshold:
        return Observation(at, grace, copies)
    return Observation(at, grace, copies, _probe_primary(settings, clients))


def _probe_primary(settings: Settings, clients: ClientFactory) -> Probe:
    region = settings.primary_region
    try:
        db_id = settings.db_instance_id or stack_outputs(
            clients.client("cloudformation", region), settings.app_stack_name).get("DatabaseInstanceId")
        if not db_id:
            logger.error("no database to probe: set DB_INSTANCE_ID", extra={"stack": settings.app_stack_name})
            return Probe(answered=True)
        answer = clients.client("rds", region).describe_db_instances(DBInstanceIdentifier=db_id)
    except Exception as exc:
        if region_unanswered(exc):
            logger.warning("primary region did not answer", extra={"region": region, "error": error_code(exc)})
            return Probe(answered=False, error=error_code(exc))
        # It answered, with a refusal. Unknown, not unavailable: a wrong DB_INSTANCE_ID must never turn an
        # outage into a region recovery.
        logger.error("database status unknown", extra={"region": region, "error": error_code(exc)})
        return Probe(answered=True, error=error_code(exc))
    instances = answer.get("DBInstances", [])
    status = str(instances[0].get("DBInstanceStatus", "unknown")) if instances else "missing"
    return Probe(answered=True, database_unavailable=status in DB_UNAVAILABLE_STATUSES, database_status=status)
