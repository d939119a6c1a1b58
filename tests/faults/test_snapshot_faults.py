"""Faults at every call site of the recovery-point pipeline (snapshot -> copy -> pin -> prune).

A flow run is one interval of the steady state with ``retain_count=1``: the tick that takes the
slot's snapshot, copies it, pins the copy and prunes the previous source, then the tick five minutes
later that prunes the copy the new pin freed (a previous pin is spared while its replacement's update
could still roll back). With one snapshot kept, only the pin protects a copy the standby stack still
names: a prune that forgot it would delete the recovery point. A case injects one fault into the run,
lets the pipeline's own later ticks converge, and checks from AWS itself:
- never lost: the copy the standby stack pins exists and is available; the cases run twice, the second
  time with the pin frozen (an application stack restored from it exists in the recovery region, as
  after a recovery), when only the pin keeps that copy from being pruned;
- never duplicated: one source per interval slot, one copy per source;
- complete: the slot's source and its copy exist, the copy is pinned, older ones are pruned.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock, parse_iso
from chalicelib.settings import Settings
from chalicelib.snapshots.points import TickResult
from chalicelib.snapshots.rules import copy_snapshot_id, slot_start, source_snapshot_id
from chalicelib.snapshots.tick import run_tick
from chalicelib.stacks import describe_stack, parameters_of
from chalicelib.tags import TAG_KIND, TAG_SOURCE_ID, TAG_TAKEN_AT
from jamsdr.embedded import World
from tests.faults.conftest import record
from tests.faults.harness import TRANSPORT_KINDS, Case, Injector, Outcome, Plan, Site, Tally
from tests.faults.world import our_snapshots, restore

FLOW = "snapshot"
FOLLOW_UP = 300.0
MAX_CONVERGE_TICKS = 3
RETAIN = 1


class SnapshotFlow:
    def __init__(self, world: World, injector: Injector, plain: ClientFactory) -> None:
        self.settings: Settings = dataclasses.replace(world.settings, retain_count=RETAIN, retain_days=0)
        self.clock = FakeClock(datetime.now(UTC).replace(minute=1, second=0, microsecond=0))
        self.injector = injector
        self.plain = plain
        self.frozen: str | None = None  # the pinned copy, while an application stack restored from it exists

    def tick(self) -> TickResult:
        clients = self.injector.factory()
        with self.injector.recording(FLOW):
            return run_tick(self.settings, clients, self.clock)

    def next_slot(self) -> list[TickResult]:
        """One flow run: the tick at which the next snapshot is due (a late snapshot moves it later),
        then its follow-up five minutes later."""
        minutes = self.settings.snapshot_interval_minutes
        primary = our_snapshots(self.plain, self.settings.primary_region)
        newest = max((parse_iso(s["tags"][TAG_TAKEN_AT]) for s in primary.values() if TAG_TAKEN_AT in s["tags"]),
                     default=self.clock.now())
        due = max(slot_start(self.clock.now(), minutes) + timedelta(minutes=minutes, seconds=60),
                  newest + timedelta(minutes=minutes))
        if due - slot_start(due, minutes) > timedelta(minutes=minutes / 2):
            # Late in its slot: the run and its convergence would spill into the next one. Start there.
            due = slot_start(due, minutes) + timedelta(minutes=minutes, seconds=60)
        self.clock.advance(max((due - self.clock.now()).total_seconds(), 0.0))
        first = self.tick()
        self.clock.advance(FOLLOW_UP)
        return [first, self.tick()]

    def slot_ids(self) -> tuple[str, str]:
        minutes = self.settings.snapshot_interval_minutes
        source = source_snapshot_id(self.settings.environment, slot_start(self.clock.now(), minutes))
        return source, copy_snapshot_id(source)

    def expected(self) -> tuple[set[str], set[str], str]:
        """After a run: this slot's source and its copy, pinned (or next to the frozen pin); nothing older."""
        source, copy = self.slot_ids()
        if self.frozen:
            return {source}, {copy, self.frozen}, self.frozen
        return {source}, {copy}, copy

    def freeze(self) -> None:
        """An application stack in the recovery region, as a recovery leaves it: the pin may not move."""
        _, _, pin = self.observe()[0]
        self.frozen = pin
        self.plain.client("cloudformation", self.settings.recovery_region).create_stack(
            StackName=self.settings.app_stack_name,
            TemplateBody='{"Resources": {"Marker": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}}')

    def observe(self) -> tuple[tuple[set[str], set[str], str], list[tuple[Outcome, str]]]:
        """The shape (sources, copies, pin) and what is wrong with it: lost or duplicated."""
        s = self.settings
        primary = our_snapshots(self.plain, s.primary_region)
        recovery = our_snapshots(self.plain, s.recovery_region)
        stack = describe_stack(self.plain.client("cloudformation", s.recovery_region), s.standby_stack_name)
        assert stack is not None
        pin = parameters_of(stack).get("DBSnapshotIdentifier", "")
        found: list[tuple[Outcome, str]] = []
        if pin and (pin not in recovery or recovery[pin]["Status"] != "available"):
            found.append((Outcome.LOST, f"the pinned copy {pin} is gone from {s.recovery_region}"))
        slots = Counter(
            slot_start(parse_iso(snap["tags"][TAG_TAKEN_AT]), s.snapshot_interval_minutes)
            for snap in primary.values() if TAG_TAKEN_AT in snap["tags"])
        found += [(Outcome.DUPLICATED, f"{n} source snapshots for slot {slot}") for slot, n in slots.items() if n > 1]
        sources = Counter(snap["tags"].get(TAG_SOURCE_ID) for snap in recovery.values()
                          if snap["tags"].get(TAG_KIND) == "copy")
        found += [(Outcome.DUPLICATED, f"{n} copies of {src}") for src, n in sources.items() if n > 1]
        return (set(primary), set(recovery), pin), found

    def converge(self) -> tuple[tuple[set[str], set[str], str], list[tuple[Outcome, str]]]:
        """The pipeline's own resumption: ticks five minutes apart until the interval's work is done."""
        shape, problems = self.observe()
        for _ in range(MAX_CONVERGE_TICKS):
            if problems or shape == self.expected():
                break
            self.clock.advance(FOLLOW_UP)
            self.tick()
            shape, problems = self.observe()
        return shape, problems


def complete(run: list[TickResult], source: str, copy: str, frozen: str | None) -> bool:
    """The run did the interval's taking, copying and pinning by itself (retries absorbed any fault)."""
    first, second = run
    return (all(r.ok and r.primary_reachable for r in run) and first.taken == [source]
            and first.copied == [copy] and first.pinned == (None if frozen else copy)
            and second.taken == second.copied == [])


def run_case(flow: SnapshotFlow, plan: Plan, mode: str) -> list[Case]:
    """One flow run under ``plan``; a case per site the plan faulted (its one site when persistent)."""
    with flow.injector.armed(plan):
        run = flow.next_slot()
    source, copy = flow.slot_ids()
    expected = flow.expected()
    hit = sorted(plan.sites or ()) if plan.persistent else sorted(plan.spent)
    faulted = {site for (site, _kind) in flow.injector.faulted}
    flow.injector.faulted.clear()
    detail = "; ".join(e for r in run for e in r.errors + r.waiting)[:300]
    shape, problems = flow.observe()  # right after the faulted run: the work done, nothing lost
    outcome = Outcome.COMPLETED if complete(run, source, copy, flow.frozen) and shape == expected \
        else Outcome.RESUMED
    if not problems:
        shape, problems = flow.converge()
        if not problems and shape != expected:
            problems = [(Outcome.UNEXPECTED, f"not converged: {shape} != {expected}")]
    if problems:
        outcome, detail = problems[0]
    elif mode == "transient" and outcome is not Outcome.COMPLETED:
        outcome, detail = Outcome.UNEXPECTED, f"retries did not absorb a transient fault: {detail}"
    mode = f"{mode}, pin frozen" if flow.frozen else mode
    return [Case(FLOW, site, plan.kind, mode, outcome if site in faulted else Outcome.UNEXPECTED,
                 detail if site in faulted else "the fault was never injected (site not reached)")
            for site in hit]


@pytest.fixture
def flow(fault_world: World, injector: Injector, plain: ClientFactory) -> SnapshotFlow:
    restore(fault_world, plain)
    made = SnapshotFlow(fault_world, injector, plain)
    for _ in range(2):  # from nothing to the steady state
        made.next_slot()
        made.converge()
    return made


def discover(flow: SnapshotFlow) -> list[Site]:
    flow.injector.reset_counts()
    run = flow.next_slot()
    assert complete(run, *flow.slot_ids(), flow.frozen), [r.to_dict() for r in run]
    shape, problems = flow.converge()
    assert problems == [] and shape == flow.expected(), (shape, problems)
    sites = flow.injector.sites(FLOW)
    flow.injector.reset_counts()
    return sites


def all_cases(flow: SnapshotFlow, sites: list[Site], offset: int) -> list[Case]:
    """Transient faults of every kind at every site, and one persistent fault per site: its kind
    rotates with the site's index and ``offset``, so the two runs (pin moving, pin frozen) give most
    sites two different persistent kinds. The tick treats throttling and 5xx alike (an AWS error);
    a dead endpoint in the primary region is "primary unreachable": the tick goes on in the recovery
    region."""
    cases: list[Case] = []
    for kind in TRANSPORT_KINDS:
        cases += run_case(flow, Plan(kind, frozenset(sites)), "transient")
    for index, site in enumerate(sites):
        kind = TRANSPORT_KINDS[(index + offset) % len(TRANSPORT_KINDS)]
        cases += run_case(flow, Plan(kind, frozenset({site}), persistent=True), "persistent")
    return cases


def test_every_snapshot_call_site_under_every_fault(
    request: pytest.FixtureRequest, flow: SnapshotFlow, injector: Injector
) -> None:
    tally = Tally(FLOW)
    sites = discover(flow)
    tally.extend(all_cases(flow, sites, 0))
    flow.freeze()
    flow.next_slot()  # one copy beside the frozen pin: from the next interval on, each prunes one
    flow.converge()
    frozen_sites = discover(flow)
    tally.extend(all_cases(flow, frozen_sites, 1))
    record(request, tally)
    assert injector.problems == []
    assert tally.bad() == []
    assert tally.missing(sites + frozen_sites, TRANSPORT_KINDS) == []
    assert sum(c.outcome is Outcome.RESUMED for c in tally.cases) > 0
    operations = {(s.service, s.operation, s.region) for s in sites}
    assert {("rds", "CreateDBSnapshot", "primary"), ("rds", "CopyDBSnapshot", "recovery"),
            ("rds", "DeleteDBSnapshot", "primary"), ("rds", "DeleteDBSnapshot", "recovery"),
            ("cloudformation", "UpdateStack", "recovery"), ("dynamodb", "GetItem", "recovery")} <= operations
    assert ("rds", "DeleteDBSnapshot", "recovery") in {(s.service, s.operation, s.region) for s in frozen_sites}
