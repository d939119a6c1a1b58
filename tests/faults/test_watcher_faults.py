"""Faults at every call site of the watcher: heartbeat check, Health event, decision, recovery start.

A flow run is the incident as the watcher meets it: both schedulers stopped beating five minutes ago,
the scheduled check decides ``scheduler-outage``, then an AWS Health event for EC2 in the primary
region turns it into ``region-recovery``, which starts the recovery (FAILOVER_MODE=auto) and tells the
on-call. A case injects one fault into that run; then the world carries on as in production:
EventBridge delivers an event whose handler failed again, and the one-minute schedule keeps checking.
Checked from the ledger: exactly one recovery execution for the incident, recorded in the watch state.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock
from chalicelib.detection.state import WatchState
from chalicelib.detection.triggers import handle_health_event
from chalicelib.detection.watcher import run_watcher
from chalicelib.keys import watch_key
from chalicelib.settings import Settings
from chalicelib.workflow.starter import no_launch, recovery_starter
from chalicelib.workflow.steps.fence import enforce_pending_fence
from jamsdr.embedded import World
from tests.faults.conftest import record
from tests.faults.harness import TRANSPORT_KINDS, Case, Injector, Kind, Outcome, Plan, Site, Tally
from tests.faults.world import clear_ledger, restore

FLOW = "watcher"
WATCH_ENVIRONMENT = "jams-watch-faults"
HEALTH_EVENT = Path(__file__).resolve().parents[1] / "fixtures" / "events" / "health_ec2_issue_primary.json"
SILENT_FOR = timedelta(minutes=5)
# One scheduled check a minute: a start left pending is taken over by the next one (its claim is shorter).
RESUME_SCHEDULE = (60.0, 60.0, 60.0, 60.0)


class WatcherFlow:
    def __init__(self, world: World, injector: Injector, plain: ClientFactory) -> None:
        # Its own environment (the heartbeat metric's Environment dimension, the watch and ledger keys): the
        # package's world is shared with the chain flow, whose recovered schedulers beat into the recovery
        # region's copy under the world's environment, which the watcher reads too.
        self.settings: Settings = dataclasses.replace(world.settings, failover_mode="auto",
                                                      environment=WATCH_ENVIRONMENT)
        self.clock = FakeClock(datetime.now(UTC).replace(second=30, microsecond=0))
        self.injector = injector
        self.plain = plain
        self.event: dict[str, Any] = json.loads(HEALTH_EVENT.read_text())
        self.failed_events = 0

    def _guard(self, call: Any) -> dict[str, Any] | None:
        """One invocation; an exception is the Lambda failing (EventBridge/the schedule try again)."""
        try:
            with self.injector.recording(FLOW):
                return dict(call())
        except Exception:  # the invocation failed; the outcome is judged from the ledger
            return None

    def check(self) -> dict[str, Any] | None:
        clients = self.injector.factory()
        starter = recovery_starter(self.settings, clients, self.clock, launcher=no_launch)
        return self._guard(lambda: run_watcher(self.settings, clients, self.clock, starter,
                                               fence_enforcer=enforce_pending_fence).to_dict())

    def health(self) -> dict[str, Any] | None:
        clients = self.injector.factory()
        starter = recovery_starter(self.settings, clients, self.clock, launcher=no_launch)
        return self._guard(lambda: handle_health_event(self.settings, clients, self.clock, starter, self.event,
                                                       fence_enforcer=enforce_pending_fence))

    def begin(self) -> None:
        """A new incident: fresh ledger, and heartbeats that stopped ``SILENT_FOR`` ago."""
        clear_ledger(self.plain, self.settings)
        self.clock.advance(3600)
        last = self.clock.now() - SILENT_FOR
        beats = [
            {"MetricName": "Heartbeat", "Value": 1.0, "Unit": "Count", "Timestamp": last - timedelta(minutes=k),
             "Dimensions": [{"Name": "Environment", "Value": self.settings.environment},
                            {"Name": "Scheduler", "Value": scheduler}]}
            for k in range(5) for scheduler in ("primary", "failover")
        ]
        self.plain.client("cloudwatch", self.settings.primary_region).put_metric_data(
            Namespace="JAMS", MetricData=beats)

    def incident(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The scheduled check, then the Health event (the run's two invocations)."""
        first = self.check()
        self.clock.advance(10)
        second = self.health()
        return first, second

    def resume(self, health_failed: bool) -> None:
        """What production does next: EventBridge redelivers a failed event, the schedule checks every
        minute, and a start left pending is taken over by the next check (its claim, start_claim(), is shorter)."""
        if health_failed:
            self.clock.advance(20)
            self.health()
        for wait in RESUME_SCHEDULE:
            if not self.violations(final=True):
                return
            self.clock.advance(wait)
            self.check()

    def state(self) -> WatchState | None:
        item = self.plain.client("dynamodb", self.settings.recovery_region).get_item(
            TableName=self.settings.ledger_table_name, Key={"pk": {"S": watch_key(self.settings.environment)}},
            ConsistentRead=True).get("Item")
        return None if item is None else WatchState.from_item(item)

    def executions(self) -> list[str]:
        ddb = self.plain.client("dynamodb", self.settings.recovery_region)
        items = ddb.scan(TableName=self.settings.ledger_table_name, ConsistentRead=True)["Items"]
        return sorted(i["pk"]["S"].removeprefix("exec#") for i in items if i["pk"]["S"].startswith("exec#"))

    def violations(self, *, final: bool) -> list[tuple[Outcome, str]]:
        executions = self.executions()
        if len(executions) > 1:
            return [(Outcome.DUPLICATED, f"{len(executions)} recovery executions: {executions}")]
        state = self.state()
        if not final:
            return []
        if state is None or state.decision != "region-recovery" or state.incident is None:
            return [(Outcome.UNEXPECTED, f"no region-recovery decision: {state and state.decision}")]
        wanted = f"rec-{state.incident.incident_id}"
        if executions != [wanted]:
            return [(Outcome.LOST, f"incident {state.incident.incident_id} has executions {executions}")]
        if state.execution_id != wanted or state.start_pending:
            return [(Outcome.UNEXPECTED, f"start not recorded: {state.execution_id}, pending {state.start_pending}")]
        return []


def completed(first: dict[str, Any] | None, second: dict[str, Any] | None) -> bool:
    return (first is not None and first["decision"] == "scheduler-outage" and first["notified"]
            and second is not None and second.get("decision") == "region-recovery" and second["changed"]
            and bool(second["execution_id"]) and second["notified"])


def run_case(flow: WatcherFlow, plan: Plan, mode: str) -> list[Case]:
    flow.begin()
    with flow.injector.armed(plan):
        first, second = flow.incident()
    hit = sorted(plan.sites or ()) if plan.persistent else sorted(plan.spent)
    faulted = {site for (site, _kind) in flow.injector.faulted}
    flow.injector.faulted.clear()
    outcome = Outcome.COMPLETED if completed(first, second) else Outcome.RESUMED
    detail = f"check: {first and first['decision']}, health: {second and second.get('decision')}"
    problems = flow.violations(final=False)
    if not problems:
        flow.resume(health_failed=second is None)
        problems = flow.violations(final=True)
    if problems:
        outcome, detail = problems[0]
    elif mode == "transient" and outcome is not Outcome.COMPLETED:
        outcome, detail = Outcome.UNEXPECTED, f"retries did not absorb a transient fault: {detail}"
    return [Case(FLOW, site, plan.kind, mode, outcome if site in faulted else Outcome.UNEXPECTED,
                 detail if site in faulted else "the fault was never injected (site not reached)")
            for site in hit]


@pytest.fixture
def flow(fault_world: World, injector: Injector, plain: ClientFactory) -> WatcherFlow:
    restore(fault_world, plain)
    return WatcherFlow(fault_world, injector, plain)


def discover(flow: WatcherFlow) -> list[Site]:
    flow.injector.reset_counts()
    flow.begin()
    first, second = flow.incident()
    assert completed(first, second), (first, second)
    assert flow.violations(final=True) == []
    sites = flow.injector.sites(FLOW)
    flow.injector.reset_counts()
    operations = {(s.service, s.operation, s.region) for s in sites}
    assert {("cloudwatch", "GetMetricData", "primary"), ("dynamodb", "PutItem", "recovery"),
            ("dynamodb", "GetItem", "recovery"), ("sns", "Publish", "recovery")} <= operations, operations
    return sites


def test_every_watcher_call_site_under_every_fault(
    request: pytest.FixtureRequest, flow: WatcherFlow, injector: Injector
) -> None:
    sites = discover(flow)
    tally = Tally(FLOW)
    for kind in TRANSPORT_KINDS:
        tally.extend(run_case(flow, Plan(kind, frozenset(sites)), "transient"))
    for index, site in enumerate(sites):
        # Two persistent kinds per site keep the run short and still take every path: an AWS error
        # (throttling, or 5xx on alternate sites) and a dead endpoint. A 5xx of the primary's metric API
        # counts as "unanswered", like a dead endpoint (chalicelib.aws.region_unanswered).
        for kind in (TRANSPORT_KINDS[index % 2], Kind.CONNECTION):
            tally.extend(run_case(flow, Plan(kind, frozenset({site}), persistent=True), "persistent"))
    record(request, tally)
    assert injector.problems == []
    assert tally.bad() == []
    assert tally.missing(sites, TRANSPORT_KINDS) == []
    assert len(sites) >= 8
