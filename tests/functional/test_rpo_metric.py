"""The RPO metric measures the pinned recovery point; stuck pinning is published and alarmed (issue 16).

RecoveryPointAgeSeconds is the age of the copy the standby stack's DBSnapshotIdentifier names (what the
recovery chain's preflight restores), not of the newest copy. PinBehindSeconds says how far that pin is
behind the newest available copy. Both are read here as the tick writes them for CloudWatch: the EMF
records on stdout whose only dimension set is {Environment}, the one the support stack's alarms name.

moto never evaluates alarms (and CloudFormation under moto skips them), so the alarms are checked on the
template: their metric, dimensions, periods and missing-data rule against what the tick emits and how
often app.py runs it, plus a small model of CloudWatch's M-out-of-N evaluation for the "one late tick"
case (CloudWatch User Guide, "Evaluating an alarm" and "Configuring how CloudWatch alarms treat missing
data").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock
from chalicelib.observability import NAMESPACE
from chalicelib.settings import Settings
from chalicelib.snapshots.rules import copy_snapshot_id
from chalicelib.snapshots.tick import TickResult, run_tick
from jamsdr.embedded import World
from tests.functional import test_snapshots as snapshots
from tests.functional.test_monitoring_template import scheduled_intervals
from tests.functional.test_snapshots import HOUR, Hook, calls, make_recovery_app_stack, set_lease, standby_pin
from tests.functional.test_templates import load

# The snapshot pipeline's fixtures (one built two-region world for the module, restored before each test).
base_world = snapshots.base_world
clients = snapshots.clients
world = snapshots.world
hooks = snapshots.hooks
clock = snapshots.clock
_clean_metrics = snapshots._clean_metrics

TICK = 300.0  # snapshot_tick's schedule (asserted against app.py below)
RPO = "RecoveryPointAgeSeconds"
BEHIND = "PinBehindSeconds"


def alarm_records(out: str, name: str) -> list[dict[str, Any]]:
    """The EMF records of ``name`` whose only dimension set is {Environment} (what the alarms match)."""
    found = []
    for line in out.splitlines():
        if not (line.startswith("{") and '"_aws"' in line):
            continue
        record = json.loads(line)
        directive = record["_aws"]["CloudWatchMetrics"][0]
        if directive["Dimensions"] == [["Environment"]] and name in record:
            assert directive["Namespace"] == NAMESPACE and "service" not in record
            found.append(record)
    return found


class Ticks:
    """Runs ticks and collects, per tick, the value each alarm's metric got under {Environment}."""

    def __init__(self, settings: Settings, clients: ClientFactory, clock: FakeClock,
                 capsys: pytest.CaptureFixture[str]) -> None:
        self.settings, self.clients, self.clock, self.capsys = settings, clients, clock, capsys
        self.rpo: list[float | None] = []
        self.behind: list[float | None] = []
        self.results: list[TickResult] = []

    def run(self) -> TickResult:
        self.capsys.readouterr()
        result = run_tick(self.settings, self.clients, self.clock)
        out = self.capsys.readouterr().out
        for series, name in ((self.rpo, RPO), (self.behind, BEHIND)):
            records = alarm_records(out, name)
            assert len(records) <= 1, records
            assert all(r["Environment"] == self.settings.environment for r in records)
            series.append(float(records[0][name]) if records else None)
        self.results.append(result)
        return result


@pytest.fixture
def ticks(world: World, clients: ClientFactory, clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> Ticks:
    return Ticks(world.settings, clients, clock, capsys)


def standby_status(settings: Settings, status: str) -> Hook:
    """DescribeStacks answers ``status`` for the standby stack (moto cannot leave a stack stuck)."""

    def rewrite(parsed: dict[str, Any], **_: Any) -> None:
        for stack in parsed.get("Stacks", []):
            if stack["StackName"] == settings.standby_stack_name:
                stack["StackStatus"] = status

    return rewrite


# --- the metric ---------------------------------------------------------------------------------


def test_once_pinned_the_rpo_is_the_pinned_copy_age_and_the_pin_is_not_behind(
    ticks: Ticks, world: World, clients: ClientFactory, clock: FakeClock
) -> None:
    for _ in range(14):  # 09:00 .. 10:05: two copies, each pinned in the tick that saw it available
        ticks.run()
        clock.advance(TICK)
    assert all(r.errors == [] for r in ticks.results)
    expected = [(i * TICK) % HOUR for i in range(14)]  # the pinned copy's age, back to 0 at 10:00
    assert ticks.rpo == expected
    assert ticks.behind == [0.0] * 14
    last = ticks.results[-1]
    assert last.pinned_copy == last.newest_copy == copy_snapshot_id("jams-dr-202601051000") == last.pin
    assert last.rpo_seconds == 300.0 and last.pin_behind_seconds == 0.0
    assert standby_pin(clients, world.settings)["parameter"] == last.pinned_copy


@pytest.mark.parametrize(
    ("status", "why"),
    [
        # StandbyStackNotUpdatable: a failed rollback waits for continue-update-rollback
        ("UPDATE_ROLLBACK_FAILED", "is UPDATE_ROLLBACK_FAILED; repair it"),
        ("UPDATE_IN_PROGRESS", "pin pending"),  # an update that never finishes
    ],
)
def test_stuck_pinning_the_rpo_grows_with_the_pinned_copy_and_the_pin_behind_metric_is_published(
    ticks: Ticks, world: World, clients: ClientFactory, clock: FakeClock,
    hooks: Callable[[str, Hook], None], status: str, why: str,
) -> None:
    settings = world.settings
    first = copy_snapshot_id("jams-dr-202601050900")
    assert ticks.run().pinned == first
    hooks("after-call.cloudformation.DescribeStacks", standby_status(settings, status))
    updates = calls(hooks, "before-call.cloudformation.UpdateStack")

    for _ in range(18):  # 09:05 .. 10:30: the 10:00 copy arrives and can never be pinned
        clock.advance(TICK)
        ticks.run()

    stuck = ticks.results[1:]
    assert updates == [] and all(r.pinned is None for r in stuck)
    assert {r.pinned_copy for r in stuck} == {first}
    # From 10:00 there is a newer copy and each tick says why it cannot pin it.
    assert all(any(why in line for line in [*r.errors, *r.waiting]) for r in ticks.results[12:])
    # The RPO is the age of what a recovery would restore, the 09:00 copy: it grows every tick ...
    assert ticks.rpo == [i * TICK for i in range(19)]
    # ... while the newest copy, which no recovery would use, is young.
    newest = stuck[-1]
    assert newest.newest_copy == copy_snapshot_id("jams-dr-202601051000")
    assert newest.rpo_seconds == 90 * 60.0
    # The pin is behind by one copy (an hour of data) from 10:00 on, every tick, under {Environment}.
    assert ticks.behind == [0.0] * 12 + [HOUR] * 7
    assert newest.pin_behind_seconds == HOUR
    assert standby_pin(clients, settings)["parameter"] == first


def test_a_pin_held_by_a_recovery_is_not_stuck(
    ticks: Ticks, world: World, clients: ClientFactory, clock: FakeClock
) -> None:
    """A recovery lease, then the application stack it restored, hold the pin on purpose: the RPO keeps
    telling the pinned copy's age, and the pin-stuck metric stays 0 (no page for an intended state)."""
    settings = world.settings
    ticks.run()
    set_lease(clients, settings, "recovery-7")
    clock.advance(HOUR)
    held = ticks.run()
    assert held.copied and held.pinned is None and held.pin_held and "recovery-7" in held.pin_held
    make_recovery_app_stack(clients, settings)
    set_lease(clients, settings, None)
    clock.advance(HOUR)
    restored = ticks.run()
    assert restored.pin_held and "application stack" in restored.pin_held
    assert ticks.rpo == [0.0, HOUR, 2 * HOUR]
    assert ticks.behind == [0.0, 0.0, 0.0]
    assert restored.newest_copy == copy_snapshot_id("jams-dr-202601051100") != restored.pinned_copy


def test_nothing_pinned_publishes_no_age_and_the_whole_newest_copy_as_behind(
    ticks: Ticks, world: World, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    """A standby stack that cannot take the first pin: a recovery would stop at its preflight
    (NoPinnedSnapshot), so no RPO value is true; the RPO alarm reads the silence as a breach."""
    hooks("after-call.cloudformation.DescribeStacks", standby_status(world.settings, "UPDATE_ROLLBACK_FAILED"))
    for _ in range(3):
        ticks.run()
        clock.advance(TICK)
    assert ticks.rpo == [None, None, None]
    assert ticks.behind == [0.0, TICK, 2 * TICK]  # the unpinned newest copy's age
    assert all(r.pinned_copy is None and r.rpo_seconds is None for r in ticks.results)
    assert all(any("RecoveryPointAgeSeconds not published" in w for w in r.waiting) for r in ticks.results)


# --- the alarms ---------------------------------------------------------------------------------


def support_alarms() -> dict[str, dict[str, Any]]:
    resources = load("dr-support.yaml")["Resources"]
    return {r["Properties"]["MetricName"]: r["Properties"] for r in resources.values()
            if r["Type"] == "AWS::CloudWatch::Alarm"}


def test_each_tick_metric_has_its_alarm_on_the_dimensions_the_tick_writes(
    ticks: Ticks, world: World, clock: FakeClock
) -> None:
    ticks.run()
    alarms = support_alarms()
    assert set(alarms) == {RPO, BEHIND}
    for name, alarm in alarms.items():
        assert alarm["Namespace"] == NAMESPACE
        # A CloudWatch alarm matches exactly its dimensions; the tick writes {Environment} alone.
        assert alarm["Dimensions"] == [{"Name": "Environment", "Value": {"Ref": "EnvironmentName"}}], name
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert alarm["AlarmActions"] == alarm["OKActions"] == [{"Ref": "NotificationTopic"}]
    assert ticks.rpo == [0.0] and ticks.behind == [0.0]


def test_alarm_periods_fit_the_tick_schedule() -> None:
    interval = scheduled_intervals()["snapshot_tick"]
    assert interval == TICK
    alarms = support_alarms()
    rpo, behind = alarms[RPO], alarms[BEHIND]
    for alarm in (rpo, behind):
        # No period shorter than the schedule: a period without a tick would be normal, not news.
        assert alarm["Period"] >= interval
        # Several periods, M out of N with M > 1: one late tick (one empty or odd period) never pages.
        assert 1 < alarm["DatapointsToAlarm"] <= alarm["EvaluationPeriods"]
    # RPO: silence is a breach (pipeline stopped, nothing restorable pinned), the worst tick counts.
    assert (rpo["Statistic"], rpo["TreatMissingData"]) == ("Maximum", "breaching")
    assert rpo["Threshold"] == {"Ref": "RpoTargetSeconds"}
    # Pin stuck: every tick of a period behind; no datum is not this alarm's news (the RPO alarm's).
    assert (behind["Statistic"], behind["TreatMissingData"], behind["Threshold"]) == ("Minimum", "notBreaching", 0)


def evaluate(alarm: dict[str, Any], periods: Sequence[float | None], threshold: float) -> bool:
    """Whether the newest N periods put the alarm in ALARM: M of N breaching, an empty period counted as
    TreatMissingData says. A model of the User Guide's rule for a window with its datapoints, not of
    CloudWatch's wider look-back when data is missing."""
    n, m = alarm["EvaluationPeriods"], alarm.get("DatapointsToAlarm", alarm["EvaluationPeriods"])
    missing_breaches = {"breaching": True, "notBreaching": False}[alarm["TreatMissingData"]]
    window = periods[-n:]
    breaching = sum(missing_breaches if v is None else v > threshold for v in window)
    return breaching >= m


def test_one_late_tick_does_not_page_the_rpo_alarm_but_silence_and_a_real_breach_do() -> None:
    rpo = support_alarms()[RPO]
    target = 7200.0
    late = [600.0, 900.0, None, 1500.0]  # the 10:10 tick ran at 10:15:01: one empty period
    assert not evaluate(rpo, late, target)
    assert evaluate({**rpo, "EvaluationPeriods": 1, "DatapointsToAlarm": 1}, late[:3], target)  # the old alarm
    assert evaluate(rpo, [600.0, None, None, None], target)  # the pipeline stopped
    assert evaluate(rpo, [7300.0, 7600.0, 7900.0], target)  # the pinned copy is over target


def test_the_pin_stuck_alarm_fires_on_the_series_a_stuck_pin_publishes(
    ticks: Ticks, world: World, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    behind = support_alarms()[BEHIND]
    ticks.run()
    hooks("after-call.cloudformation.DescribeStacks", standby_status(world.settings, "UPDATE_ROLLBACK_FAILED"))
    for _ in range(15):  # one tick per 300 s period, 09:05 .. 10:15
        clock.advance(TICK)
        ticks.run()
    series = ticks.behind
    assert series[12:] == [HOUR] * 4  # 10:00 .. 10:15
    fired = [i for i in range(1, len(series) + 1) if evaluate(behind, series[:i], 0.0)]
    assert fired and fired[0] == 15  # the third period behind: 10:10, before any RPO page
    # One late tick among stuck periods does not reset it (3 of 4, missing not breaching).
    assert evaluate(behind, [HOUR, None, HOUR, HOUR], 0.0)
    # A single busy tick (the stack was updating when a copy arrived) does not page.
    assert not evaluate(behind, [0.0, HOUR, 0.0, 0.0], 0.0)
