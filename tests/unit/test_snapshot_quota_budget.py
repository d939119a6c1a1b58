"""The snapshot budget (chalicelib/retention.py) against the real pruning rules.

A small model of the tick's order (take, copy, pin, prune copies, prune sources: chalicelib/snapshots/tick.py)
drives the real rules (snapshot_due, copy_candidate, protected_sources, prune_plan, newest_available) every
five minutes for days, with snapshots that take time to create and copies that take longer, and counts the
pipeline's snapshots in each region at every point of every tick. The highest count must equal the budget
when the transient cases happen, and never exceed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.retention import (
    DEFAULT_MANUAL_SNAPSHOT_QUOTA,
    Budget,
    fit_problem,
    share_of,
    snapshot_budget,
    warn_level,
    window_count,
)
from chalicelib.settings import Settings
from chalicelib.snapshots.quota import QuotaUse, quota_warnings
from chalicelib.snapshots.rules import (
    Retention,
    Snap,
    copy_candidate,
    copy_snapshot_id,
    newest_available,
    protected_sources,
    prune_plan,
    snapshot_due,
)

START = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
TICK = timedelta(minutes=5)  # the schedule of snapshot_tick (chalicelib/handlers/snapshots.py)


@dataclass
class Pipeline:
    """The pipeline's snapshots in both regions, advanced as the tick advances them."""

    interval: int
    retention: Retention
    create_ticks: int = 1  # how long a source stays "creating"
    copy_ticks: int = 1  # how long a copy stays "copying"
    sources: list[Snap] = field(default_factory=list)
    copies: list[Snap] = field(default_factory=list)
    ready_at: dict[str, datetime] = field(default_factory=dict)
    pin: str = ""
    frozen: bool = False  # a lease or an application stack in the recovery region freezes the pin
    peak: dict[str, int] = field(default_factory=lambda: {"source": 0, "copy": 0})

    def _count(self) -> None:
        self.peak["source"] = max(self.peak["source"], len(self.sources))
        self.peak["copy"] = max(self.peak["copy"], len(self.copies))

    def _finish(self, now: datetime) -> None:
        """RDS makes snapshots available between ticks."""
        for snaps in (self.sources, self.copies):
            for i, snap in enumerate(snaps):
                if not snap.available and self.ready_at[snap.snapshot_id] <= now:
                    snaps[i] = replace(snap, status="available")

    def tick(self, now: datetime) -> None:
        self._finish(now)
        self._count()
        if snapshot_due(self.sources, now, self.interval).due:
            sid = f"jams-dr-{now:%Y%m%d%H%M}"
            self.sources.append(Snap(sid, f"arn:{sid}", "us-east-1", "source", "creating", now))
            self.ready_at[sid] = now + self.create_ticks * TICK
            self._count()
        decision = copy_candidate(self.sources, self.copies)
        if decision.source is not None:
            source = decision.source
            cid = copy_snapshot_id(source.snapshot_id)
            self.copies.append(Snap(cid, f"arn:{cid}", "us-west-2", "copy", "copying", source.created,
                                    source_id=source.snapshot_id, source_arn=source.arn))
            self.ready_at[cid] = now + self.copy_ticks * TICK
            self._count()
        pins = [self.pin]
        latest = newest_available(self.copies)
        if latest is not None and latest.snapshot_id != self.pin and not self.frozen:
            pins = [self.pin, latest.snapshot_id]  # the update is in flight: both are spared this tick
            self.pin = latest.snapshot_id
        protected = {p: "pinned" for p in pins if p}
        if latest is not None:
            protected.setdefault(latest.snapshot_id, "newest available copy")
        doomed = prune_plan(self.copies, now, self.retention, protected).delete
        self.copies = [c for c in self.copies if c not in doomed]
        doomed = prune_plan(self.sources, now, self.retention, protected_sources(self.sources, self.copies)).delete
        self.sources = [s for s in self.sources if s not in doomed]
        self._count()

    def run(self, days: float, *, freeze_after: float | None = None) -> None:
        now = START
        while now < START + timedelta(days=days):
            if freeze_after is not None and now >= START + timedelta(days=freeze_after):
                self.frozen = True
            self.tick(now)
            now += TICK


def test_the_default_settings_keep_fifty_one_snapshots_per_region_at_most() -> None:
    defaults = Settings.from_env({})
    budget = snapshot_budget(defaults.snapshot_interval_minutes, defaults.retain_count, defaults.retain_days)
    assert budget == Budget(retained=48, in_flight=1, finished=1, held=1) and budget.total == 51
    assert budget.total <= share_of(DEFAULT_MANUAL_SNAPSHOT_QUOTA) == 60
    # the numbers: hourly for 7 days is 168 snapshots, over the whole default quota
    assert window_count(60, 7) == 168 and snapshot_budget(60, 7, 7).total == 171


@pytest.mark.parametrize(
    ("interval", "retain_count", "retain_days", "create_ticks", "copy_ticks", "freeze_after"),
    [
        # hourly; a source takes an hour to create, a copy 2.5 hours; the pin frozen from 07:12 (a drill)
        (60, 1, 0, 12, 30, 0.3),
        # a snapshot every tick, each made within the next tick
        (5, 1, 0, 1, 2, None),
    ],
)
def test_the_highest_count_of_a_long_run_is_the_budget(
    interval: int, retain_count: int, retain_days: int, create_ticks: int, copy_ticks: int,
    freeze_after: float | None,
) -> None:
    budget = snapshot_budget(interval, retain_count, retain_days)
    pipeline = Pipeline(interval, Retention(retain_count, retain_days), create_ticks, copy_ticks)
    pipeline.run(days=1.5, freeze_after=freeze_after)
    assert max(pipeline.peak.values()) == budget.total, (pipeline.peak, budget)
    assert min(pipeline.peak.values()) >= budget.retained + 2


def test_the_defaults_stay_under_their_budget_with_quick_and_slow_copies() -> None:
    budget = snapshot_budget(60, 7, 2)
    for create_ticks, copy_ticks in ((1, 1), (12, 30)):
        pipeline = Pipeline(60, Retention(7, 2), create_ticks, copy_ticks)
        pipeline.run(days=2.5)
        assert budget.retained < max(pipeline.peak.values()) <= budget.total, pipeline.peak
        # after the last prune: what the retention keeps, plus what is in flight or held
        assert budget.retained <= len(pipeline.sources) <= budget.total


@settings(max_examples=30, deadline=None)
@given(
    interval=st.sampled_from([5, 10, 15, 45, 60, 240]),
    retain_count=st.integers(1, 6),
    retain_days=st.integers(0, 1),
    create_ticks=st.integers(1, 14),
    copy_ticks=st.integers(1, 40),
    freeze_after=st.one_of(st.none(), st.floats(0.1, 1.0)),
)
def test_no_run_exceeds_the_budget(
    interval: int, retain_count: int, retain_days: int, create_ticks: int, copy_ticks: int,
    freeze_after: float | None,
) -> None:
    budget = snapshot_budget(interval, retain_count, retain_days)
    pipeline = Pipeline(interval, Retention(retain_count, retain_days), create_ticks, copy_ticks)
    pipeline.run(days=retain_days + 0.6 if interval >= 15 else 0.4, freeze_after=freeze_after)
    assert max(pipeline.peak.values()) <= budget.total, (pipeline.peak, budget)


def test_fit_problem_names_the_variable_the_numbers_and_every_fix() -> None:
    assert fit_problem(60, 7, 2, 100) is None
    name, problem = fit_problem(60, 7, 7, 100) or ("", "")
    assert name == "RETAIN_DAYS"
    for part in ("171 manual snapshots", "60 of MANUAL_SNAPSHOT_QUOTA=100", "RETAIN_DAYS to at most 2",
                 "SNAPSHOT_INTERVAL_MINUTES to at least 177", "to at least 285"):
        assert part in problem, part
    # each fix it names fits
    assert fit_problem(60, 7, 2, 100) is None and fit_problem(177, 7, 7, 100) is None
    assert fit_problem(176, 7, 7, 100) is not None
    assert fit_problem(60, 7, 7, 285) is None and fit_problem(60, 7, 7, 284) is not None
    name, problem = fit_problem(60, 60, 0, 100) or ("", "")
    assert name == "RETAIN_COUNT" and "RETAIN_COUNT to at most 57" in problem
    assert fit_problem(60, 57, 0, 100) is None


def test_warnings_come_before_the_quota_is_full() -> None:
    budget = snapshot_budget(60, 2, 0)  # 5
    assert warn_level(100) == 80 and warn_level(20) == 16 and warn_level(1) == 0
    clear = QuotaUse("us-east-1", used=15, max=20, ours=3)
    assert quota_warnings(clear, budget, 20) == []
    near = QuotaUse("us-east-1", used=16, max=20, ours=3)
    (warning,) = quota_warnings(near, budget, 20)
    assert "16 of 20" in warning and "13 not" in warning and "warning level of 16" in warning
    # 16 foreign + jams-dr's 5 would not fit, although only 16 are used now
    crowded = QuotaUse("us-east-1", used=16, max=20, ours=0)
    assert any("21 would exceed the quota of 20" in w for w in quota_warnings(crowded, budget, 20))
    full = QuotaUse("us-west-2", used=20, max=20, ours=4)
    assert any("the quota is full" in w for w in quota_warnings(full, budget, 20))
    lower = QuotaUse("us-west-2", used=1, max=100, ours=1)
    assert any("below MANUAL_SNAPSHOT_QUOTA=200" in w for w in quota_warnings(lower, budget, 200))
