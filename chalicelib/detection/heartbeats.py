"""The heartbeat CONTRACT: publishing a beat, and counting missed beats from the metric.

Namespace ``JAMS``, metric ``Heartbeat``, unit Count, value 1 per beat, dimensions exactly
``Environment`` and ``Scheduler`` (``primary`` | ``failover``).

Counting is done on the metric itself (GetMetricData), not with a CloudWatch alarm: an alarm cannot
watch another region's metric, and with "breaching" fill it needs about five periods, not three
(cross-region alarms: https://github.com/aws/aws-cdk/issues/30483; real datapoints in the evaluation
range win over the fill: CloudWatch User Guide, "Using Amazon CloudWatch alarms", missing data).
Time is cut into intervals of ``heartbeat_interval_seconds`` aligned on the epoch;
a scheduler has *missed* an interval when that interval holds no datapoint for its exact dimensions.
``missed`` counts such intervals back from the last complete interval; a beat in the interval still
running resets it to 0 (the scheduler is alive now). An interval is complete a short grace after its
end, so a beat sent in its last second and not yet ingested is not taken for a miss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args

from chalicelib.aws import ClientFactory, error_code
from chalicelib.clock import Clock
from chalicelib.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.type_defs import DimensionTypeDef, MetricDataQueryTypeDef

NAMESPACE = "JAMS"
METRIC_NAME = "Heartbeat"
Scheduler = Literal["primary", "failover"]
SCHEDULERS: tuple[Scheduler, ...] = get_args(Scheduler)

# Periods GetMetricData accepts below one minute (high-resolution metrics); from 60 s on, any multiple of 60.
_SUB_MINUTE_PERIODS = (30, 10, 5, 1)
# A 5xx after botocore's retries, or these codes, mean the region's API is failing as a whole.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def dimensions(environment: str, scheduler: str) -> list[DimensionTypeDef]:
    """The exact dimension set of the CONTRACT; any other combination is another metric."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if not environment:
        raise ValueError("environment is empty; use the stage's ENVIRONMENT_NAME, e.g. jams-prod")
    return [{"Name": "Environment", "Value": environment}, {"Name": "Scheduler", "Value": scheduler}]


def high_resolution(interval_seconds: float) -> bool:
    """Intervals that are not whole minutes need 1-second storage to be counted per interval."""
    return interval_seconds < 60 or interval_seconds % 60 != 0


def publish_heartbeat(
    clients: ClientFactory,
    region: str,
    environment: str,
    scheduler: str,
    clock: Clock,
    *,
    interval_seconds: float = 60,
) -> datetime:
    """Publish one beat (value 1, unit Count) stamped with the clock's now; returns that time."""
    dims = dimensions(environment, scheduler)
    now = clock.now()
    clients.client("cloudwatch", region).put_metric_data(
        Namespace=NAMESPACE,
        MetricData=[
            {
                "MetricName": METRIC_NAME,
                "Dimensions": dims,
                "Timestamp": now,
                "Value": 1.0,
                "Unit": "Count",
                "StorageResolution": 1 if high_resolution(interval_seconds) else 60,
            }
        ],
    )
    return now


def query_period(interval_seconds: int) -> int:
    """The largest GetMetricData period that divides the interval (so periods nest in intervals)."""
    if interval_seconds % 60 == 0:
        return interval_seconds
    return next(p for p in _SUB_MINUTE_PERIODS if interval_seconds % p == 0)


def default_grace(interval_seconds: float) -> float:
    """How long after its end an interval counts as complete: ingestion delay, bounded."""
    return min(5.0, interval_seconds * 0.1)


@dataclass(frozen=True)
class Window:
    """The intervals examined at one check: ``count`` complete ones, then the one still running."""

    interval: int
    start: datetime
    count: int

    @property
    def complete_end(self) -> datetime:
        return self.start + timedelta(seconds=self.interval * self.count)

    def index_of(self, moment: datetime) -> int:
        return math.floor((moment - self.start).total_seconds() / self.interval)

    def end_of(self, index: int) -> datetime:
        return self.start + timedelta(seconds=self.interval * (index + 1))


def window_at(now: datetime, interval_seconds: int, lookback: int, grace_seconds: float) -> Window:
    """Intervals aligned on the epoch; the last complete one ended at least ``grace`` ago."""
    elapsed = (now - _EPOCH).total_seconds() - grace_seconds
    complete_end = _EPOCH + timedelta(seconds=math.floor(elapsed / interval_seconds) * interval_seconds)
    return Window(interval_seconds, complete_end - timedelta(seconds=interval_seconds * lookback), lookback)


@dataclass(frozen=True)
class SchedulerBeats:
    """One scheduler at one check."""

    scheduler: str
    missed: int  # consecutive complete intervals without a datapoint, back from the last complete one
    streak: int  # consecutive complete intervals WITH a datapoint, back from the last complete one
    last_beat_end: datetime | None  # end of the latest interval holding a datapoint (None: none in window)
    saturated: bool  # no datapoint in the whole window: ``missed`` is a lower bound

    def to_dict(self) -> dict[str, Any]:
        return {
            "missed": self.missed,
            "streak": self.streak,
            "last_beat_end": None if self.last_beat_end is None else self.last_beat_end.isoformat(),
            "saturated": self.saturated,
        }


def count_beats(scheduler: str, window: Window, beat_times: list[datetime]) -> SchedulerBeats:
    """Pure counting over the window from the timestamps of non-empty periods."""
    indexes = {window.index_of(t) for t in beat_times}
    indexes = {i for i in indexes if i >= 0}
    if not indexes:
        return SchedulerBeats(scheduler, window.count, 0, None, saturated=True)
    latest = max(indexes)
    missed = 0 if latest >= window.count else window.count - 1 - latest
    streak = 0
    i = window.count - 1
    while i >= 0 and i in indexes:
        streak += 1
        i -= 1
    return SchedulerBeats(scheduler, missed, streak, window.end_of(latest), saturated=False)


def missed_since(last_beat_end: datetime, now: datetime, interval_seconds: int, grace_seconds: float) -> int:
    """Complete intervals elapsed since a known last beat: the count when the metric cannot be read."""
    window = window_at(now, interval_seconds, 0, grace_seconds)
    return max(0, math.floor((window.complete_end - last_beat_end).total_seconds() / interval_seconds))


@dataclass(frozen=True)
class HeartbeatReading:
    at: datetime
    window: Window
    primary: SchedulerBeats
    failover: SchedulerBeats

    def of(self, scheduler: str) -> SchedulerBeats:
        return self.primary if scheduler == "primary" else self.failover


def read_heartbeats(
    clients: ClientFactory,
    region: str,
    environment: str,
    interval_seconds: int,
    clock: Clock,
    *,
    lookback: int,
    grace_seconds: float | None = None,
) -> HeartbeatReading:
    """GetMetricData for both schedulers (exact dimensions) in ``region``; AWS errors propagate."""
    now = clock.now()
    grace = default_grace(interval_seconds) if grace_seconds is None else grace_seconds
    window = window_at(now, interval_seconds, lookback, grace)
    period = query_period(interval_seconds)
    # End after now (rounded up to the period) so the interval still running is included.
    end = window.complete_end + timedelta(seconds=interval_seconds)
    end = max(end, now.replace(microsecond=0) + timedelta(seconds=1))
    times: dict[str, list[datetime]] = {s: [] for s in SCHEDULERS}
    for scheduler, stamp in _beats(clients, region, environment, period, window.start, end):
        times[scheduler].append(stamp)
    return HeartbeatReading(
        at=now,
        window=window,
        primary=count_beats("primary", window, times["primary"]),
        failover=count_beats("failover", window, times["failover"]),
    )


def _beats(
    clients: ClientFactory, region: str, environment: str, period: int, start: datetime, end: datetime
) -> list[tuple[Scheduler, datetime]]:
    """(scheduler, period start) of every period in [start, end) holding a beat of the CONTRACT metric
    (exact dimensions) in ``region``. The one GetMetricData query of the heartbeats; AWS errors propagate."""
    queries: list[MetricDataQueryTypeDef] = [
        {
            "Id": scheduler,
            "MetricStat": {
                "Metric": {
                    "Namespace": NAMESPACE,
                    "MetricName": METRIC_NAME,
                    "Dimensions": dimensions(environment, scheduler),
                },
                "Period": period,
                "Stat": "SampleCount",
            },
            "ReturnData": True,
        }
        for scheduler in SCHEDULERS
    ]
    found: list[tuple[Scheduler, datetime]] = []
    paginator = clients.client("cloudwatch", region).get_paginator("get_metric_data")
    for page in paginator.paginate(MetricDataQueries=queries, StartTime=start, EndTime=end,
                                   ScanBy="TimestampAscending"):
        for result in page.get("MetricDataResults", []):
            scheduler = next((s for s in SCHEDULERS if s == result.get("Id")), None)
            if scheduler is None:
                continue
            for stamp, value in zip(result.get("Timestamps", []), result.get("Values", []), strict=False):
                if value and value > 0:
                    found.append((scheduler, stamp.astimezone(UTC)))
    return found


def newest_beat(
    clients: ClientFactory, region: str, environment: str, interval_seconds: int, start: datetime, now: datetime
) -> datetime | None:
    """The newest period since ``start`` in which either scheduler beat in ``region`` (None: no beat)."""
    period = query_period(interval_seconds)
    stamps = [stamp for _, stamp in _beats(clients, region, environment, period, start,
                                          now + timedelta(seconds=period))]
    return max(stamps, default=None)


@dataclass(frozen=True)
class HeartbeatCopy:
    """One region's copy of the metric at one check: a reading, or why it could not be read.

    Unreadable is unknown, never silence: the caller must not count missed beats from it.
    """

    region: str
    reading: HeartbeatReading | None
    error: str | None = None  # the AWS error code (``Unreachable`` for a refused connection)

    @property
    def readable(self) -> bool:
        return self.reading is not None


def read_copy(
    clients: ClientFactory, region: str, environment: str, interval_seconds: int, clock: Clock, *,
    lookback: int, grace_seconds: float | None = None,
) -> HeartbeatCopy:
    """``read_heartbeats`` in ``region``, any failure kept as the copy's error (logged by the caller)."""
    try:
        reading = read_heartbeats(clients, region, environment, interval_seconds, clock, lookback=lookback,
                                  grace_seconds=grace_seconds)
    except Exception as exc:  # unknown, not silence: whatever failed, the copy says nothing about the beats
        return HeartbeatCopy(region, None, error_code(exc))
    return HeartbeatCopy(region, reading)


def copy_regions(settings: Settings) -> tuple[str, str]:
    """Where the publishers beat (heartbeat CONTRACT): the primary region, and the recovery region so that
    silence stays observable when the primary region's monitoring is down."""
    return settings.primary_region, settings.recovery_region


def read_copies(
    settings: Settings, clients: ClientFactory, clock: Clock, *, lookback: int, grace_seconds: float | None = None,
) -> tuple[HeartbeatCopy, ...]:
    """Both copies of the stage's heartbeats, primary region first."""
    return tuple(
        read_copy(clients, region, settings.environment, settings.heartbeat_interval_seconds, clock,
                  lookback=lookback, grace_seconds=grace_seconds)
        for region in copy_regions(settings)
    )


def merge_missed(copies: tuple[HeartbeatCopy, ...], scheduler: str) -> int | None:
    """Missed beats of ``scheduler`` over the readable copies (a beat in either counts); None: none readable."""
    counts = [c.reading.of(scheduler).missed for c in copies if c.reading is not None]
    return min(counts) if counts else None


@dataclass(frozen=True)
class MissedBeats:
    """Missed beats per scheduler now, for operators (`jams-dr status`); None when unknown."""

    primary: int | None
    failover: int | None
    unreachable: bool = False  # no copy of the metric could be read
    error: str | None = None
    copies: tuple[HeartbeatCopy, ...] = ()


def count_missed_beats(settings: Settings, clients: ClientFactory, clock: Clock) -> MissedBeats:
    """One read of both copies of the heartbeats with the stage's interval and threshold."""
    copies = read_copies(settings, clients, clock, lookback=settings.missed_beat_threshold + 3)
    if not any(c.readable for c in copies):
        errors = "; ".join(f"{c.region}: {c.error}" for c in copies)
        return MissedBeats(None, None, unreachable=True, error=errors, copies=copies)
    return MissedBeats(merge_missed(copies, "primary"), merge_missed(copies, "failover"), copies=copies)
