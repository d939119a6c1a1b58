"""Faults at every call site of the recovery chain, and crashes right after each of its AWS calls.

A flow run is one region recovery from the pinned snapshot, driven as production drives it: the
engine's runner (a Lambda invocation), resumed by the sweeper once a dead runner's claim expires, or by
the operator's retry (``retry_execution``) when the execution ended failed. Every case ends checked
from AWS and the ledger:
- never duplicated: one application stack, one execution, the lease epoch bumped once;
- never lost: the pinned snapshot still there and available, no snapshot deleted;
- complete: the execution succeeded, its stack is up, the old primary fenced with the epoch (a pending
  fence enforced by the sweeper), traffic switched, the report written.

To fit the suite's time budget the crash cases run as one walk (crash after the first call of each
site in turn, each crash resumed by the sweeper before the next) and the persistent faults as another
(each site fails persistently in turn, the execution fails or its runner dies, then is resumed before
the next site is armed); transient faults of a kind are all injected into one run, since retries
absorb them independently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest

from chalicelib import traffic
from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock
from chalicelib.detection.heartbeats import publish_heartbeat
from chalicelib.detection.incident import Incident
from chalicelib.notify import Notifier
from chalicelib.settings import Settings
from chalicelib.snapshots.tick import run_tick
from chalicelib.stacks import describe_stack, outputs_of, parameters_of
from chalicelib.tags import TAG_EPOCH, TAG_EXECUTION, TAG_FENCED_BY
from chalicelib.workflow.engine import DEFAULT_CLAIM_SECONDS, Progress
from chalicelib.workflow.ledger import Ledger
from chalicelib.workflow.records import Execution
from chalicelib.workflow.runners import InProcessRunner, sweep
from chalicelib.workflow.starter import no_launch, retry, start_incident_recovery
from chalicelib.workflow.steps.common import scheduler_instances
from jamsdr.embedded import World
from jamsdr.traffic_emulation import Resolver
from tests.faults.conftest import record
from tests.faults.harness import (
    TRANSPORT_KINDS,
    Case,
    Crash,
    Injector,
    Kind,
    Outcome,
    Plan,
    Site,
    Tally,
)
from tests.faults.world import our_snapshots, restore

FLOW = "chain"
# Resuming a failed or dead execution takes one segment (retry or sweep); a few more mean it is stuck.
MAX_SEGMENTS = 10
# A clean recovery makes about 60 calls; a step retried to exhaustion a few dozen more.
SEGMENT_CALL_BUDGET = 1500
FAILURES_PER_EXECUTION = 8


@dataclass
class Run:
    """One recovery execution and what happened to it, segment by segment."""

    execution_id: str
    epoch_before: int
    snapshots_before: set[str]
    segments: list[str] = field(default_factory=list)  # how each runner invocation ended


class ChainFlow:
    def __init__(self, world: World, injector: Injector, plain: ClientFactory) -> None:
        self.world = world
        self.settings: Settings = world.settings
        self.injector = injector
        self.plain = plain
        self.clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))
        self.count = 0

    # -- driving --------------------------------------------------------------------------

    def _beat(self, progress: Progress) -> None:
        """The recovered schedulers beat once their hosts are up, as JAMS would (the world's doing)."""
        if progress.kind == "state-started" and progress.state == "verify":
            for role in ("primary", "failover"):
                publish_heartbeat(self.plain, self.settings.recovery_region, self.settings.environment, role,
                                  self.clock)

    def launch(self, execution_id: str) -> bool:
        """One runner invocation (the Lambda chain's ``advance_execution``), under fault recording."""
        clients = self.injector.factory()
        notifier = Notifier(self.settings, clients, self.clock)
        runner = InProcessRunner(self.settings, clients, self.clock, notifier, on_progress=self._beat)
        with self.injector.recording(FLOW):
            runner.run(execution_id)
        return True

    def segment(self, run: Run, invoke: Callable[[], Any]) -> str:
        """Run ``invoke``; how it ended: ``ok``, ``crash`` (the Lambda died) or ``error`` (it raised)."""
        self.injector.call_budget = SEGMENT_CALL_BUDGET
        try:
            invoke()
        except Crash:
            run.segments.append("crash")
            return "crash"
        except Exception as exc:  # an invocation that failed: the sweeper takes over
            run.segments.append(f"error {type(exc).__name__}")
            return "error"
        run.segments.append("ok")
        return "ok"

    def ledger(self) -> Ledger:
        return Ledger(self.settings, self.plain, self.clock)

    def start(self) -> Run:
        """A fresh world (snapshots kept), then a new recovery execution (created, not yet run)."""
        restore(self.world, self.plain, snapshots=False)
        self.count += 1
        self.clock.advance(3600)
        now = self.clock.now()
        incident = Incident(incident_id=f"fault{self.count}", decision="region-recovery", reason="faults",
                            failure_at=now - timedelta(minutes=6), detected_at=now - timedelta(minutes=3),
                            decided_at=now - timedelta(minutes=2))
        lease = self.ledger().get_lease("recovery")
        started = start_incident_recovery(self.settings, self.plain, self.clock, incident, await_approval=False,
                                          launcher=no_launch)
        return Run(started.execution_id, lease.epoch if lease else 0,
                   set(our_snapshots(self.plain, self.settings.recovery_region)))

    def resume_once(self, run: Run) -> None:
        """One resumption as production does it: the operator's retry of a failed execution, or the
        sweeper relaunching a running one whose runner died (once the dead runner's claim expired)."""
        execution = self.ledger().load(run.execution_id)
        if execution.status == "failed":
            retry(self.settings, self.plain, self.clock, run.execution_id, requested_by="fault-suite",
                  launcher=self.launch)
        elif execution.status == "running":
            self.clock.advance(DEFAULT_CLAIM_SECONDS + 1)
            sweep(self.settings, self.plain, self.clock, self.launch)

    def resume(self, run: Run) -> None:
        """Resume until the execution succeeded, then sweep once more (it enforces a pending fence)."""
        for _ in range(MAX_SEGMENTS):
            if self.ledger().load(run.execution_id).status == "succeeded":
                sweep(self.settings, self.plain, self.clock, lambda _id: False)
                return
            self.segment(run, lambda: self.resume_once(run))
        raise AssertionError(f"{run.execution_id} did not end after {MAX_SEGMENTS} segments: {run.segments}")

    # -- checking -------------------------------------------------------------------------

    def duplicates(self, run: Run) -> list[tuple[Outcome, str]]:
        """What must never happen at any moment: two stacks, two executions, the epoch bumped twice."""
        s = self.settings
        found: list[tuple[Outcome, str]] = []
        cfn = self.plain.client("cloudformation", s.recovery_region)
        stacks = [x for x in cfn.describe_stacks()["Stacks"]
                  if x["StackName"] == s.app_stack_name and x["StackStatus"] != "DELETE_COMPLETE"]
        if len(stacks) > 1:
            found.append((Outcome.DUPLICATED, f"{len(stacks)} stacks named {s.app_stack_name}"))
        executions = self.ledger().list_executions()
        if len(executions) > 1:
            found.append((Outcome.DUPLICATED, f"executions {[e.execution_id for e in executions]}"))
        lease = self.ledger().get_lease("recovery")
        if lease is not None and lease.epoch > run.epoch_before + 1:
            found.append((Outcome.DUPLICATED, f"lease epoch {run.epoch_before} -> {lease.epoch}"))
        snapshots = set(our_snapshots(self.plain, s.recovery_region))
        if not run.snapshots_before <= snapshots:
            found.append((Outcome.LOST, f"snapshots deleted: {sorted(run.snapshots_before - snapshots)}"))
        return found

    def verdict(self, run: Run) -> list[tuple[Outcome, str]]:
        """The end state of a complete recovery, from AWS and the ledger."""
        s = self.settings
        problems = self.duplicates(run)
        execution = self.ledger().load(run.execution_id)
        if execution.status != "succeeded":
            return [*problems, (Outcome.UNEXPECTED, f"execution {execution.status}: {execution.error}")]
        stack = describe_stack(self.plain.client("cloudformation", s.recovery_region), s.app_stack_name)
        if stack is None or stack["StackStatus"] != "CREATE_COMPLETE":
            return [*problems, (Outcome.LOST, f"application stack {stack and stack['StackStatus']}")]
        if {t["Key"]: t["Value"] for t in stack.get("Tags", [])}.get(TAG_EXECUTION) != run.execution_id:
            problems.append((Outcome.UNEXPECTED, "the stack is not tagged with the execution"))
        standby = describe_stack(self.plain.client("cloudformation", s.recovery_region), s.standby_stack_name)
        pinned = parameters_of(standby or {}).get("DBSnapshotIdentifier", "")
        copies = our_snapshots(self.plain, s.recovery_region)
        if not pinned or copies.get(pinned, {}).get("Status") != "available":
            problems.append((Outcome.LOST, f"the pinned snapshot {pinned!r} is not available"))
        lease = self.ledger().get_lease("recovery")
        epoch = execution.data.get("epoch")
        if lease is None or lease.holder != run.execution_id or lease.epoch != run.epoch_before + 1 != epoch:
            problems.append((Outcome.UNEXPECTED, f"lease {lease}, execution epoch {epoch}"))
        problems += self._fenced(run.execution_id, epoch)
        name = f"jams.{(s.dns_zone_name or '').rstrip('.')}."
        answer = Resolver(self.plain, s.hosted_zone_id or "", region=s.recovery_region).answer(name)
        traffic_stack = describe_stack(self.plain.client("cloudformation", s.recovery_region),
                                       traffic.traffic_stack_name(s.environment))
        if answer != outputs_of(traffic_stack or {}).get("SecondaryValue"):
            problems.append((Outcome.UNEXPECTED, f"{name} -> {answer}, not the recovery endpoint"))
        if not isinstance(execution.item.get("report"), Mapping):
            problems.append((Outcome.UNEXPECTED, "no report"))
        return problems

    def _fenced(self, execution_id: str, epoch: Any) -> list[tuple[Outcome, str]]:
        s = self.settings
        if self.ledger().get_fence() is not None:
            return [(Outcome.UNEXPECTED, "a pending fence was never enforced")]
        ec2 = self.plain.client("ec2", s.primary_region)
        for instance in scheduler_instances(ec2, s.environment, states=("pending", "running", "stopping",
                                                                         "stopped")):
            tags = {t["Key"]: t.get("Value", "") for t in instance.get("Tags", [])}
            if instance["State"]["Name"] not in ("stopping", "stopped") or tags.get(TAG_FENCED_BY) != execution_id \
                    or tags.get(TAG_EPOCH) != str(epoch):
                return [(Outcome.UNEXPECTED, f"old scheduler {instance['InstanceId']} not fenced: "
                                             f"{instance['State']['Name']} {tags.get(TAG_EPOCH)}")]
        return []


def ended_cleanly(execution: Execution) -> bool:
    return execution.status == "succeeded" and not execution.item.get("previous_failures")


# ------------------------------------------------------------------------------------------ cases


NOT_REACHED = "the fault was never injected (site not reached)"


def _not_reached(site: Site, kind: Kind, mode: str) -> Case:
    return Case(FLOW, site, kind, mode, Outcome.UNEXPECTED, NOT_REACHED)


def _with_verdict(cases: list[Case], verdict: list[tuple[Outcome, str]]) -> list[Case]:
    """A run that did not end complete taints every case injected into it."""
    if not verdict:
        return cases
    outcome, detail = verdict[0]
    return [Case(c.flow, c.site, c.kind, c.mode, outcome, detail) for c in cases]


def discover(flow: ChainFlow) -> list[Site]:
    flow.injector.reset_counts()
    run = flow.start()
    assert flow.segment(run, lambda: flow.launch(run.execution_id)) == "ok"
    assert ended_cleanly(flow.ledger().load(run.execution_id))
    flow.resume(run)
    assert flow.verdict(run) == []
    sites = flow.injector.sites(FLOW)
    flow.injector.reset_counts()
    operations = {(s.service, s.operation, s.region) for s in sites}
    assert {("cloudformation", "CreateStack", "recovery"), ("dynamodb", "UpdateItem", "recovery"),
            ("ec2", "StopInstances", "primary"), ("cloudwatch", "PutMetricData", "recovery"),
            ("rds", "DescribeDBSnapshots", "recovery")} <= operations, operations
    return sites


def transient_case(flow: ChainFlow, kind: Kind, sites: list[Site]) -> list[Case]:
    """Every site fails its first attempt once, in one run: botocore's retries must absorb each."""
    run = flow.start()
    with flow.injector.armed(Plan(kind, frozenset(sites))):
        how = flow.segment(run, lambda: flow.launch(run.execution_id))
    first = flow.ledger().load(run.execution_id)
    faulted = {site for (site, _kind) in flow.injector.faulted}
    flow.injector.faulted.clear()
    outcome, detail = Outcome.COMPLETED, "absorbed by botocore's retries"
    if how != "ok" or not ended_cleanly(first):
        outcome, detail = Outcome.UNEXPECTED, f"not absorbed: {how}, {first.status} {first.error}"
    flow.resume(run)
    cases = [Case(FLOW, site, kind, "transient", outcome, detail) if site in faulted
             else _not_reached(site, kind, "transient") for site in sites]
    return _with_verdict(cases, flow.verdict(run))


# A crash changes the path the resumption takes (a message the crashed run already published is cleaned up
# by the next flush, not by its own send; a terminal write followed by a crash leaves the slot's release to
# the next start), so some sites are only reached by a run that did not crash before them: later passes
# walk the sites an earlier pass did not reach, each with a new execution.
CRASH_PASSES = 3


def crash_walk(flow: ChainFlow, sites: list[Site]) -> list[Case]:
    cases: list[Case] = []
    remaining = list(sites)
    for _pass in range(CRASH_PASSES):
        found = _crash_pass(flow, remaining)
        reached = [c for c in found if c.detail != NOT_REACHED]
        cases += reached
        remaining = [c.site for c in found if c.detail == NOT_REACHED]
        if not remaining or not reached:
            break
    return cases + [_not_reached(site, Kind.CRASH, "crash") for site in remaining]


def _crash_pass(flow: ChainFlow, sites: list[Site]) -> list[Case]:
    """Crash once AWS answered the first call of each site, in turn; the sweeper resumes each crash (a
    resumption that fails the execution is the crash's case failing)."""
    run = flow.start()
    cases: list[Case] = []
    invoke: Callable[[], Any] = partial(flow.launch, run.execution_id)
    with flow.injector.armed(Plan(Kind.CRASH, frozenset(sites))):
        for _ in range(len(sites) + MAX_SEGMENTS):
            how = flow.segment(run, invoke)
            execution = flow.ledger().load(run.execution_id)
            if (execution.status == "failed" or execution.data.get("failed")) and cases:
                # A crash must never fail the execution: the resumption of the previous one did.
                last = cases[-1]
                cases[-1] = Case(FLOW, last.site, Kind.CRASH, "crash", Outcome.UNEXPECTED,
                                 f"resumed into a failure: {execution.data.get('error')}"[:300])
                return cases
            if how == "crash":
                problems = flow.duplicates(run)
                outcome, detail = problems[0] if problems else (Outcome.RESUMED, "resumed by the sweeper")
                cases.append(Case(FLOW, flow.injector.crashed[-1], Kind.CRASH, "crash", outcome, detail))
            if execution.status == "succeeded":
                break
            invoke = partial(flow.resume_once, run)
    flow.resume(run)
    crashed = set(flow.injector.crashed)
    cases += [_not_reached(site, Kind.CRASH, "crash") for site in sites if site not in crashed]
    return _with_verdict(cases, flow.verdict(run))


def persistent_walk(flow: ChainFlow, sites: list[Site]) -> list[Case]:
    """Each site in turn fails on every attempt (the kind rotating by site) until its step gives up or
    its runner dies; disarmed, the next segment resumes it as production would (retry, sweeper), with
    the next site armed. A fault the chain tolerates (a pending fence) lets the execution finish: the
    walk goes on with a new execution."""
    cases: list[Case] = []
    queue = list(enumerate(sites))
    requeued: set[int] = set()
    run = flow.start()
    first_case = 0
    invoke: Callable[[], Any] = partial(flow.launch, run.execution_id)
    while queue:
        index, site = queue.pop(0)
        kind = TRANSPORT_KINDS[index % len(TRANSPORT_KINDS)]
        with flow.injector.armed(Plan(kind, frozenset({site}), persistent=True)):
            how = flow.segment(run, invoke)
        hit = any(s == site for (s, _k) in flow.injector.faulted)
        flow.injector.faulted.clear()
        execution = flow.ledger().load(run.execution_id)
        problems = flow.duplicates(run)
        if not hit and execution.status == "succeeded" and index not in requeued:
            requeued.add(index)  # the execution ended before reaching it: try it on the next one
            queue.insert(0, (index, site))
        elif not hit:
            cases.append(_not_reached(site, kind, "persistent"))
        elif problems:
            cases.append(Case(FLOW, site, kind, "persistent", *problems[0]))
        elif how == "ok" and execution.status == "succeeded":
            notes = [str(h.get("note", "")) for h in execution.history if h.get("name") == site.phase]
            cases.append(Case(FLOW, site, kind, "persistent", Outcome.COMPLETED,
                              f"tolerated: {notes[-1] if notes else ''}"[:200]))
        else:
            cases.append(Case(FLOW, site, kind, "persistent", Outcome.RESUMED,
                              f"{how}; {execution.status} at {execution.failed_state or execution.state}"))
        # Each failure and retry adds ~3 KB of history to the execution's ledger item, and moto's
        # DynamoDB slows down with the item's size: a new execution every few failures keeps it fast.
        if execution.status == "succeeded" or len(cases) - first_case >= FAILURES_PER_EXECUTION:
            flow.resume(run)
            cases[first_case:] = _with_verdict(cases[first_case:], flow.verdict(run))
            if not queue:
                return cases
            run, first_case = flow.start(), len(cases)
            invoke = partial(flow.launch, run.execution_id)
        else:
            invoke = partial(flow.resume_once, run)
    flow.resume(run)
    cases[first_case:] = _with_verdict(cases[first_case:], flow.verdict(run))
    return cases


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture
def flow(fault_world: World, injector: Injector, plain: ClientFactory) -> ChainFlow:
    restore(fault_world, plain)
    made = ChainFlow(fault_world, injector, plain)
    result = run_tick(made.settings, plain, made.clock)  # the recovery point the chain restores
    assert result.pinned, result.to_dict()
    return made


def test_every_chain_call_site_absorbs_transient_faults(
    request: pytest.FixtureRequest, flow: ChainFlow, injector: Injector
) -> None:
    sites = discover(flow)
    tally = Tally(FLOW)
    for kind in TRANSPORT_KINDS:
        tally.extend(transient_case(flow, kind, sites))
    record(request, tally)
    assert injector.problems == []
    assert tally.bad() == []
    assert tally.missing(sites, TRANSPORT_KINDS) == []
    assert len(sites) >= 30


def test_a_crash_after_every_chain_call_resumes_without_repeating_it(
    request: pytest.FixtureRequest, flow: ChainFlow, injector: Injector
) -> None:
    sites = discover(flow)
    tally = Tally(FLOW)
    tally.extend(crash_walk(flow, sites))
    record(request, tally)
    assert tally.bad() == []
    assert tally.missing(sites, [Kind.CRASH]) == []


def test_persistent_faults_at_every_chain_call_site_fail_cleanly_and_resume(
    request: pytest.FixtureRequest, flow: ChainFlow, injector: Injector
) -> None:
    sites = discover(flow)
    tally = Tally(FLOW)
    tally.extend(persistent_walk(flow, sites))
    record(request, tally)
    assert injector.problems == []
    assert tally.bad() == []
    assert {c.site for c in tally.cases} >= set(sites)
    assert sum(c.outcome is Outcome.RESUMED for c in tally.cases) > len(sites) // 2
