"""The recovery chain end to end: recovery, drill, failback and their failures, against the embedded
two-region AWS (moto server), driven by the engine's InProcessRunner on a FakeClock.

Where moto is lenient the tests make AWS behave like AWS with botocore hooks: a stack that fails
(moto never fails stacks), the final snapshot a stack deletion leaves (moto ignores DeletionPolicy).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock, isoformat, parse_iso
from chalicelib.detection.heartbeats import publish_heartbeat
from chalicelib.detection.incident import Incident
from chalicelib.keys import APP_PARAMETERS_KEY
from chalicelib.notify import Notifier
from chalicelib.report import CONTRACT_KEYS, report_key
from chalicelib.settings import Settings
from chalicelib.stacks import as_parameters, describe_stack, outputs_of, parameters_of
from chalicelib.tags import TAG_EPOCH, TAG_EXECUTION, TAG_FENCED_BY, TAG_STACK_ID
from chalicelib.workflow.engine import Progress
from chalicelib.workflow.ledger import Ledger
from chalicelib.workflow.model import Done, StepContext
from chalicelib.workflow.records import Execution
from chalicelib.workflow.runners import InProcessRunner
from chalicelib.workflow.starter import (
    no_launch,
    rollback,
    start_drill,
    start_failback,
    start_incident_recovery,
)
from chalicelib.workflow.steps.fence import enforce_pending_fence, quarantine_group_name
from chalicelib.workflow.steps.recovery import create_app_stack
from jamsdr.embedded import EmbeddedAws, World, build_world
from jamsdr.traffic_emulation import Resolver

RECOVERY_STATES = ["preflight", "take_lease", "fence_primary", "create_app_stack", "wait_for_stack", "verify",
                   "switch_traffic", "notify", "write_report"]
DRILL_STATES = ["preflight", "take_lease", "create_app_stack", "wait_for_stack", "verify", "verify_isolation",
                "teardown", "release_lease", "notify", "write_report"]
FAILBACK_STATES = ["preflight", "take_lease", "enforce_fence", "quiesce_recovery", "snapshot_recovery_db",
                   "wait_recovery_snapshot", "copy_to_primary", "wait_primary_copy", "retire_old_primary",
                   "create_app_stack", "wait_for_stack", "verify", "switch_traffic", "retire_recovery_stack",
                   "release_lease", "resume_recovery", "notify", "write_report"]
PINNED_SOURCE = "jams-dr-202601010000"
PINNED_COPY = "jams-dr-202601010000-copy"


@dataclass
class Env:
    aws: EmbeddedAws
    world: World
    clients: ClientFactory
    clock: FakeClock
    notifier: Notifier
    pinned_source_created: datetime
    beating: set[str] = field(default_factory=lambda: {"us-west-2", "us-east-1"})

    @property
    def s(self) -> Settings:
        return self.world.settings

    def cfn(self, region: str) -> Any:
        return self.clients.client("cloudformation", region)

    def rds(self, region: str) -> Any:
        return self.clients.client("rds", region)

    def ec2(self, region: str) -> Any:
        return self.clients.client("ec2", region)

    def ledger(self) -> Ledger:
        return Ledger(self.s, self.clients, self.clock)

    def run(self, execution_id: str) -> Execution:
        """Run to the end; the recovered schedulers "beat" in the region being verified, as JAMS would
        once its hosts are up (only in regions listed in ``beating``)."""

        def on_progress(progress: Progress) -> None:
            if progress.kind == "state-started" and progress.state == "verify":
                region = self.s.primary_region if execution_id.startswith("fb-") else self.s.recovery_region
                if region in self.beating:
                    for role in ("primary", "failover"):
                        publish_heartbeat(self.clients, region, self.s.environment, role, self.clock)

        runner = InProcessRunner(self.s, self.clients, self.clock, self.notifier, on_progress=on_progress)
        return runner.run(execution_id)

    def recover(self, incident_id: str = "inc1") -> Execution:
        now = self.clock.now()
        incident = Incident(incident_id=incident_id, decision="region-recovery", reason="us-east-1 silent",
                            failure_at=now - timedelta(minutes=6), detected_at=now - timedelta(minutes=3),
                            decided_at=now - timedelta(minutes=2))
        started = start_incident_recovery(self.s, self.clients, self.clock, incident, await_approval=False,
                                          launcher=no_launch)
        return self.run(started.execution_id)

    def app_stack(self, region: str, name: str | None = None) -> dict[str, Any] | None:
        return describe_stack(self.cfn(region), name or self.s.app_stack_name)

    def cname(self) -> str | None:
        """What Route 53 answers for the stable name (failover pair + health check, jamsdr.traffic_emulation)."""
        resolver = Resolver(self.clients, self.s.hosted_zone_id, region=self.s.recovery_region)
        return resolver.answer(f"jams.{self.s.dns_zone_name}.")

    @property
    def unswitched(self) -> str:
        """The stable name's answer while the primary serves (PRIMARY of the failover pair)."""
        return self.world.traffic["PrimaryValue"]

    def snapshots(self, region: str) -> dict[str, dict[str, Any]]:
        found = self.rds(region).describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
        return {s["DBSnapshotIdentifier"]: s for s in found}

    def instance(self, region: str, instance_id: str) -> dict[str, Any]:
        reservations = self.ec2(region).describe_instances(InstanceIds=[instance_id])["Reservations"]
        return dict(reservations[0]["Instances"][0])


def _tags(resource: dict[str, Any], key: str = "Tags") -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get(key, [])}


def _groups(instance: dict[str, Any]) -> list[str]:
    groups = [g["GroupId"] for g in instance.get("SecurityGroups", [])]
    return groups or [g["GroupId"] for n in instance.get("NetworkInterfaces", []) for g in n.get("Groups", [])]


def pin_recovery_point(clients: ClientFactory, s: Settings) -> datetime:
    """What the snapshot pipeline does: snapshot in the primary, encrypted copy to the recovery region
    (destination client, SourceRegion, KmsKeyId, mapped option group), pin it on the standby stack."""
    source = clients.client("rds", s.primary_region).create_db_snapshot(
        DBSnapshotIdentifier=PINNED_SOURCE, DBInstanceIdentifier=s.db_instance_id,
        Tags=[{"Key": "managed-by", "Value": "jams-dr"}, {"Key": "jams-dr:environment", "Value": s.environment},
              {"Key": "jams-dr:kind", "Value": "source"}],
    )["DBSnapshot"]
    clients.client("rds", s.recovery_region).copy_db_snapshot(
        SourceDBSnapshotIdentifier=source["DBSnapshotArn"], TargetDBSnapshotIdentifier=PINNED_COPY,
        SourceRegion=s.primary_region, KmsKeyId=s.copy_kms_key,
        OptionGroupName=next(iter(s.option_group_map.values())), CopyTags=True,
        Tags=[{"Key": "managed-by", "Value": "jams-dr"}, {"Key": "jams-dr:environment", "Value": s.environment},
              {"Key": "jams-dr:kind", "Value": "copy"},
              {"Key": "jams-dr:source-created", "Value": isoformat(source["SnapshotCreateTime"]) or ""}],
    )
    cfn = clients.client("cloudformation", s.recovery_region)
    standby = describe_stack(cfn, s.standby_stack_name)
    assert standby is not None
    parameters = {**parameters_of(standby), "DBSnapshotIdentifier": PINNED_COPY}
    cfn.update_stack(StackName=s.standby_stack_name, UsePreviousTemplate=True,
                     Parameters=as_parameters(parameters), Capabilities=["CAPABILITY_NAMED_IAM"])
    created = source["SnapshotCreateTime"]
    assert isinstance(created, datetime)
    return created


@pytest.fixture
def env(embedded: EmbeddedAws, clients: ClientFactory) -> Env:
    world = build_world(clients, Settings.defaults())
    s = world.settings
    # moto 5.2.5 makes every ELBv2 load balancer an application one and rejects TCP listeners: the
    # deployment's parameters file chooses HTTP in both regions, as the embedded world does.
    clients.client("s3", s.recovery_region).put_object(
        Bucket=s.artifact_bucket, Key=APP_PARAMETERS_KEY,
        Body=json.dumps({"default": {"AgentLoadBalancerType": "application"}}).encode())
    created = pin_recovery_point(clients, s)
    # moto stamps snapshots with the real time: the fake clock starts near it so the reports' RPOs
    # (fake-clock failure time minus moto's snapshot time) stay meaningful. Nothing may CHOOSE by
    # comparing the two: the drill tests below move this clock an hour either way to prove it.
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))
    notifier = Notifier(s, clients, clock)
    return Env(embedded, world, clients, clock, notifier, created)


class _Hooks:
    """botocore hooks on every client of the factory, switchable: the factory (shared by the whole
    session) cannot unregister, so the ``hooks`` fixture switches them all off after each test.

    ``before-parameter-build`` handlers get the API parameters as ``params``; ``after-call`` handlers
    get the parsed answer as ``parsed`` and may change it (the caller sees the change).
    """

    def __init__(self, clients: ClientFactory) -> None:
        self.active: dict[str, Callable[..., Any]] = {}
        self._registered: set[str] = set()
        self._clients = clients

    def on(self, event: str, handler: Callable[..., Any]) -> None:
        self.active[event] = handler
        if event not in self._registered:
            self._registered.add(event)
            self._clients.register_hook(event, lambda **kw: self._dispatch(event, **kw))

    def off(self, event: str) -> None:
        self.active.pop(event, None)

    def _dispatch(self, event: str, **kwargs: Any) -> Any:
        handler = self.active.get(event)
        return None if handler is None else handler(**kwargs)


@pytest.fixture
def hooks(clients: ClientFactory) -> Iterator[_Hooks]:
    switch = _Hooks(clients)
    yield switch
    switch.active.clear()


def _names(execution: Execution) -> list[str]:
    return [h["name"] for h in execution.history]


def _assert_times_consistent(execution: Execution, report: dict[str, Any]) -> None:
    previous_end = None
    for step in execution.history:
        start, end = parse_iso(step["started_at"]), parse_iso(step["ended_at"])
        assert start <= end
        if previous_end is not None:
            assert previous_end <= start
        previous_end = end
    assert tuple(report) == CONTRACT_KEYS
    failure = parse_iso(report["failure_at"])
    detected, decided = parse_iso(report["detected_at"]), parse_iso(report["decided_at"])
    assert failure <= detected <= decided
    assert decided <= parse_iso(report["steps"][0]["started_at"]) or execution.kind != "recovery"
    if report["recovered_at"]:
        recovered = parse_iso(report["recovered_at"])
        assert report["rto_seconds"] == pytest.approx((recovered - failure).total_seconds(), abs=0.001)
    assert report["detection_seconds"] == pytest.approx((detected - failure).total_seconds(), abs=0.001)
    created = parse_iso(report["snapshot"]["created_at"])
    assert report["rpo_seconds"] == pytest.approx(max(0.0, (failure - created).total_seconds()), abs=0.001)


# ------------------------------------------------------------------------------- recovery


def test_full_recovery(env: Env) -> None:
    s = env.s
    primary_ids = [env.world.app["PrimarySchedulerInstanceId"], env.world.app["FailoverSchedulerInstanceId"]]
    groups_before = {i: _groups(env.instance(s.primary_region, i)) for i in primary_ids}

    execution = env.recover("inc1")

    assert execution.status == "succeeded", execution.error
    assert _names(execution) == RECOVERY_STATES
    assert all(h["outcome"] == "succeeded" for h in execution.history)

    # The application stack in the recovery region, on the standby network, from the pinned copy.
    stack = env.app_stack(s.recovery_region)
    assert stack is not None and stack["StackStatus"] == "CREATE_COMPLETE"
    parameters = parameters_of(stack)
    assert parameters["Mode"] == "active"
    assert parameters["DBSnapshotIdentifier"] == PINNED_COPY
    assert parameters["EnvironmentName"] == s.environment
    assert parameters["VpcId"] == env.world.standby["VpcId"] != env.world.network["VpcId"]
    # No regional records in the recovery region: they would need Route 53's control plane (docs/traffic.md).
    assert parameters["HostedZoneId"] == ""
    assert parameters["AgentLoadBalancerType"] == "application"  # from the parameters file
    assert _tags(stack)[TAG_EXECUTION] == execution.execution_id

    # Traffic: the stable name answers the failover pair's SECONDARY, the recovery endpoint.
    assert env.cname() == env.world.traffic["SecondaryValue"]
    assert execution.data["traffic"]["switched"] is True and execution.data["traffic"]["to"] == "SECONDARY"

    # Fencing: both old schedulers stopped, tagged with the epoch, quarantined.
    epoch = execution.data["epoch"]
    assert epoch >= 1
    for instance_id in primary_ids:
        instance = env.instance(s.primary_region, instance_id)
        assert instance["State"]["Name"] == "stopped"
        tags = _tags(instance)
        assert tags[TAG_FENCED_BY] == execution.execution_id and tags[TAG_EPOCH] == str(epoch)
        groups = [g["GroupName"] for g in instance["SecurityGroups"]]
        assert groups == [quarantine_group_name(s.environment)]
        # Kept for an operator who wants the host back (moto attaches only the VPC's default group).
        assert tags["jams-dr:original-groups"] == ",".join(groups_before[instance_id])
    assert sorted(execution.data["stopped_instances"]) == sorted(primary_ids)

    # The lease stays with the recovery until a failback takes it over.
    lease = env.ledger().get_lease("recovery")
    assert lease is not None and lease.holder == execution.execution_id and lease.epoch == epoch

    # The report: in the ledger and in S3, consistent with the incident and the history.
    report = execution.item["report"]
    assert report["kind"] == "recovery" and report["outcome"] == "succeeded"
    assert report["decision"] == "region-recovery"
    assert report["execution_id"] == "rec-inc1"
    assert (report["primary_region"], report["recovery_region"]) == (s.primary_region, s.recovery_region)
    assert report["snapshot"]["id"] == PINNED_COPY
    assert report["snapshot"]["created_at"] == isoformat(env.pinned_source_created)
    assert report["stack"] == {"name": s.app_stack_name, "region": s.recovery_region, "status": "CREATE_COMPLETE"}
    assert [step["name"] for step in report["steps"]] == RECOVERY_STATES[:-1]
    switch = next(h for h in execution.history if h["name"] == "switch_traffic")
    assert report["recovered_at"] == switch["ended_at"]
    assert report["failure_at"] == execution.incident["failure_at"]  # type: ignore[index]
    _assert_times_consistent(execution, report)
    body = env.clients.client("s3", s.recovery_region).get_object(
        Bucket=s.artifact_bucket, Key=report_key(execution.execution_id))["Body"].read()
    assert json.loads(body) == report
    assert any("succeeded" in subject for subject, _ in env.notifier.sent)


def test_region_down_leaves_a_pending_fence_enforced_when_it_returns(env: Env) -> None:
    s = env.s
    primary_ids = sorted([env.world.app["PrimarySchedulerInstanceId"], env.world.app["FailoverSchedulerInstanceId"]])
    env.aws.take_region_down(s.primary_region)

    execution = env.recover("inc-down")

    assert execution.status == "succeeded", execution.error
    assert execution.data["fence_pending"] is True
    fence = env.ledger().get_fence()
    assert fence is not None and fence.execution_id == execution.execution_id
    assert fence.epoch == execution.data["epoch"] and fence.region == s.primary_region
    # While the region is down, enforcing changes nothing and keeps the item.
    assert enforce_pending_fence(s, env.clients, env.clock) == []
    assert env.ledger().get_fence() is not None

    env.aws.bring_region_up(s.primary_region)
    for instance_id in primary_ids:  # the old primary came back running: split brain unless fenced
        assert env.instance(s.primary_region, instance_id)["State"]["Name"] == "running"

    stopped = enforce_pending_fence(s, env.clients, env.clock)

    assert sorted(stopped) == primary_ids
    assert env.ledger().get_fence() is None
    for instance_id in primary_ids:
        instance = env.instance(s.primary_region, instance_id)
        assert instance["State"]["Name"] == "stopped"
        assert _tags(instance)[TAG_EPOCH] == str(execution.data["epoch"])
        assert [g["GroupName"] for g in instance["SecurityGroups"]] == [quarantine_group_name(s.environment)]
    # Enforced once: a second call finds nothing to do.
    assert enforce_pending_fence(s, env.clients, env.clock) == []


# ------------------------------------------------------------------------------- drill


def _simulate_final_snapshot(
    env: Env, hooks: _Hooks, stack_name: str, made: dict[str, dict[str, Any]],
    meanwhile: Callable[[str], None] | None = None,
) -> None:
    """moto ignores DeletionPolicy: Snapshot. Make the final snapshot CloudFormation would make: it
    deletes the instance with a FinalDBSnapshotIdentifier (DeleteDBInstance takes no tags), so with
    CopyTagsToSnapshot the snapshot carries the instance's tags, the template's jams-dr:stack-id among
    them. The tags are passed explicitly, as AWS would copy them, so the test does not depend on moto
    copying them itself (moto 5.2.5 does). ``made`` gets each snapshot with its tags under ``tags``;
    ``meanwhile(db_id)`` runs first, while the database still exists."""

    def before_delete(params: dict[str, Any], **_: Any) -> None:
        if stack_name not in str(params.get("StackName")):
            return
        stack = describe_stack(env.cfn(env.s.recovery_region), stack_name)
        assert stack is not None
        db_id = outputs_of(stack)["DatabaseInstanceId"]
        if meanwhile is not None:
            meanwhile(db_id)
        rds = env.rds(env.s.recovery_region)
        instance = rds.describe_db_instances(DBInstanceIdentifier=db_id)["DBInstances"][0]
        copied = instance.get("TagList", []) if instance.get("CopyTagsToSnapshot") else []
        snapshot_id = f"{stack_name}-database-final"
        snapshot = rds.create_db_snapshot(DBSnapshotIdentifier=snapshot_id, DBInstanceIdentifier=db_id,
                                          **({"Tags": copied} if copied else {}))["DBSnapshot"]
        made[snapshot_id] = {**snapshot, "tags": _tags(snapshot, "TagList")}

    hooks.on("before-parameter-build.cloudformation.DeleteStack", before_delete)


def test_full_drill_leaves_nothing_behind(env: Env, hooks: _Hooks) -> None:
    s = env.s
    drill_stack = s.drill_stack_name("abc12345")
    final: dict[str, dict[str, Any]] = {}
    _simulate_final_snapshot(env, hooks, drill_stack, final)
    # A snapshot that must survive even though it is recent: the production database's.
    env.rds(s.primary_region).create_db_snapshot(DBSnapshotIdentifier="prod-manual",
                                                 DBInstanceIdentifier=s.db_instance_id)
    before = {
        (region, name): describe_stack(env.cfn(region), name)
        for region, name in [(s.primary_region, s.app_stack_name), (s.primary_region, s.network_stack_name),
                             (s.recovery_region, s.standby_stack_name)]
    }
    snapshots_before = {r: set(env.snapshots(r)) for r in (s.primary_region, s.recovery_region)}
    primary_ids = [env.world.app["PrimarySchedulerInstanceId"], env.world.app["FailoverSchedulerInstanceId"]]

    started = start_drill(s, env.clients, env.clock, "abc12345", launcher=no_launch)
    execution = env.run(started.execution_id)

    assert execution.status == "succeeded", execution.error
    assert _names(execution) == DRILL_STATES
    stack_parameters = execution.data["stack_parameters"]
    assert stack_parameters["Mode"] == "drill" and stack_parameters["DBSnapshotIdentifier"] == PINNED_COPY
    assert "HostedZoneId" not in stack_parameters  # a drill changes no DNS
    # Nothing of the drill is left: no stack, no final snapshot, no lease. The final snapshot was
    # found by identity (its database and the stack id the template tags it with), not by its time.
    assert env.app_stack(s.recovery_region, drill_stack) is None
    assert final and not set(final) & set(env.snapshots(s.recovery_region))
    assert sorted(execution.data["deleted_snapshots"]) == sorted(final)
    assert all(f["tags"][TAG_STACK_ID] == execution.data["stack_id"] for f in final.values())
    assert execution.data["owned_stack_id"] == execution.data["stack_id"]
    drill_lease = env.ledger().get_lease("drill")
    assert drill_lease is not None and drill_lease.holder is None
    # Production untouched: stacks, snapshots (the pinned copy too), schedulers, DNS, recovery lease.
    for (region, name), stack in before.items():
        after = describe_stack(env.cfn(region), name)
        assert after is not None and stack is not None
        assert (after["StackStatus"], parameters_of(after)) == (stack["StackStatus"], parameters_of(stack))
    for region, names in snapshots_before.items():
        assert names <= set(env.snapshots(region))
    assert PINNED_COPY in env.snapshots(s.recovery_region)
    for instance_id in primary_ids:
        assert env.instance(s.primary_region, instance_id)["State"]["Name"] == "running"
    assert env.cname() == env.unswitched
    assert env.ledger().get_lease("recovery") is None
    assert env.app_stack(s.recovery_region) is None

    report = execution.item["report"]
    assert report["kind"] == "drill" and report["outcome"] == "succeeded" and report["decision"] == "healthy"
    verify = next(h for h in execution.history if h["name"] == "verify")
    assert report["recovered_at"] == verify["ended_at"]
    assert report["failure_at"] == isoformat(execution.created_at)
    assert report["stack"] == {"name": drill_stack, "region": s.recovery_region, "status": "DELETE_COMPLETE"}
    _assert_times_consistent(execution, report)


def test_drill_failure_still_tears_everything_down(env: Env, hooks: _Hooks) -> None:
    """A drill whose agents never become healthy fails verification, then is torn down all the same."""
    s = env.s
    drill_stack = s.drill_stack_name("feed0001")
    final: dict[str, dict[str, Any]] = {}
    _simulate_final_snapshot(env, hooks, drill_stack, final)

    def no_healthy_targets(parsed: dict[str, Any], **_: Any) -> None:
        for description in parsed.get("TargetHealthDescriptions", []):
            description["TargetHealth"] = {"State": "unhealthy", "Reason": "Target.FailedHealthChecks"}

    hooks.on("after-call.elastic-load-balancing-v2.DescribeTargetHealth", no_healthy_targets)

    execution = env.run(start_drill(s, env.clients, env.clock, "feed0001", launcher=no_launch).execution_id)

    assert execution.status == "failed"
    assert execution.failed_state == "verify" and "VerificationFailed" in (execution.error or "")
    outcomes = {h["name"]: h["outcome"] for h in execution.history}
    assert outcomes["verify"] == "failed" and outcomes["teardown"] == "succeeded"
    assert env.app_stack(s.recovery_region, drill_stack) is None
    assert final and not set(final) & set(env.snapshots(s.recovery_region))
    lease = env.ledger().get_lease("drill")
    assert lease is not None and lease.holder is None
    assert execution.item["report"]["outcome"] == "failed"


def test_drill_deletes_its_final_snapshot_even_if_older_than_its_start(env: Env, hooks: _Hooks) -> None:
    """The test clock runs an hour ahead of moto's timestamps: by that clock the final snapshot was
    taken an hour before the drill started. It is the drill's own (its database, its stack's id): gone."""
    s = env.s
    env.clock.advance(3600)
    drill_stack = s.drill_stack_name("ahead001")
    final: dict[str, dict[str, Any]] = {}
    _simulate_final_snapshot(env, hooks, drill_stack, final)

    execution = env.run(start_drill(s, env.clients, env.clock, "ahead001", launcher=no_launch).execution_id)

    assert execution.status == "succeeded", execution.error
    assert final
    started = execution.started_at or execution.created_at
    assert all(f["SnapshotCreateTime"] < started for f in final.values())  # "older" than the drill
    assert not set(final) & set(env.snapshots(s.recovery_region))
    assert sorted(execution.data["deleted_snapshots"]) == sorted(final)
    assert env.app_stack(s.recovery_region, drill_stack) is None


def test_drill_keeps_recent_snapshots_that_are_not_its_own(env: Env, hooks: _Hooks) -> None:
    """The test clock runs an hour behind moto's: every snapshot below is "newer" than the drill's
    start. Only the drill's final snapshot goes; recent snapshots of its database that its stack did
    not make, and a same-named snapshot of another instance carrying the drill's tag, all stay."""
    s = env.s
    env.clock.advance(-3600)
    drill_stack = s.drill_stack_name("keep0001")
    rds = env.rds(s.recovery_region)
    kept: list[str] = []

    def meanwhile(db_id: str) -> None:
        stack = env.app_stack(s.recovery_region, drill_stack)
        assert stack is not None
        account = stack["StackId"].split(":")[4]
        # Someone else's snapshot of the drill's database: their tags, not the stack's.
        evidence = f"{drill_stack}-database-evidence"
        arn = rds.create_db_snapshot(DBSnapshotIdentifier=evidence, DBInstanceIdentifier=db_id)["DBSnapshot"][
            "DBSnapshotArn"]
        rds.remove_tags_from_resource(ResourceName=arn, TagKeys=[TAG_STACK_ID])
        rds.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": "purpose", "Value": "drill evidence"}])
        # A snapshot of the drill's database tagged with another stack's id (an earlier stack of the name).
        earlier = f"{drill_stack}-database-earlier"
        arn = rds.create_db_snapshot(DBSnapshotIdentifier=earlier, DBInstanceIdentifier=db_id)["DBSnapshot"][
            "DBSnapshotArn"]
        rds.add_tags_to_resource(ResourceName=arn, Tags=[{
            "Key": TAG_STACK_ID,
            "Value": f"arn:aws:cloudformation:{s.recovery_region}:{account}:stack/{drill_stack}/"
                     "00000000-0000-0000-0000-000000000000"}])
        # Another instance, named like the drill's, whose snapshot even carries the drill stack's id.
        twin = f"{drill_stack}-database-twin"
        rds.create_db_instance(DBInstanceIdentifier=twin, DBInstanceClass="db.m5.large", Engine="sqlserver-se",
                               AllocatedStorage=20, MasterUsername="admin", MasterUserPassword="not-a-secret-1",
                               Tags=[{"Key": TAG_STACK_ID, "Value": stack["StackId"]}], CopyTagsToSnapshot=True)
        rds.create_db_snapshot(DBSnapshotIdentifier=f"{twin}-final", DBInstanceIdentifier=twin)
        kept.extend([evidence, earlier, f"{twin}-final"])

    final: dict[str, dict[str, Any]] = {}
    _simulate_final_snapshot(env, hooks, drill_stack, final, meanwhile)

    execution = env.run(start_drill(s, env.clients, env.clock, "keep0001", launcher=no_launch).execution_id)

    assert execution.status == "succeeded", execution.error
    started = execution.started_at or execution.created_at
    remaining = env.snapshots(s.recovery_region)
    assert len(kept) == 3 and set(kept) <= set(remaining)
    assert all(remaining[name]["SnapshotCreateTime"] > started for name in kept)  # all "recent"
    assert final and not set(final) & set(remaining)
    assert sorted(execution.data["deleted_snapshots"]) == sorted(final)
    teardown = next(h for h in execution.history if h["name"] == "teardown")
    assert "not this drill's to delete" in teardown["note"]
    assert f"{drill_stack}-database-evidence" in teardown["note"]
    assert PINNED_COPY in remaining


# ------------------------------------------------------------------------------- failback


def _delete_routes_with_their_stack(env: Env, hooks: _Hooks) -> None:
    """moto 5.2.5 leaves an application stack's NAT routes (AWS::EC2::Route) in the network stack's
    route tables when the stack is deleted; CloudFormation removes them. Do what AWS does."""

    def after_delete(**_: Any) -> None:
        ec2 = env.ec2(env.s.primary_region)
        for key in ("PrivateRouteTable1Id", "PrivateRouteTable2Id"):
            table = ec2.describe_route_tables(RouteTableIds=[env.world.network[key]])["RouteTables"][0]
            if any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in table["Routes"]):
                ec2.delete_route(RouteTableId=table["RouteTableId"], DestinationCidrBlock="0.0.0.0/0")

    hooks.on("after-call.cloudformation.DeleteStack", after_delete)



def test_failback_after_recovery(env: Env, hooks: _Hooks) -> None:
    s = env.s
    copies: list[dict[str, Any]] = []
    hooks.on("before-parameter-build.rds.CopyDBSnapshot", lambda params, **_: copies.append(dict(params)))
    old_primary = env.app_stack(s.primary_region)
    assert old_primary is not None
    recovery = env.recover("inc-fb")
    assert recovery.status == "succeeded", recovery.error
    recovery_stack = env.app_stack(s.recovery_region)
    assert recovery_stack is not None
    recovery_schedulers = [outputs_of(recovery_stack)["PrimarySchedulerInstanceId"],
                           outputs_of(recovery_stack)["FailoverSchedulerInstanceId"]]
    stopped_before_snapshot: list[bool] = []

    def before_snapshot(params: dict[str, Any], **_: Any) -> None:
        if "failback" in str(params.get("DBSnapshotIdentifier")):
            stopped_before_snapshot.append(all(
                env.instance(s.recovery_region, i)["State"]["Name"] == "stopped" for i in recovery_schedulers))

    hooks.on("before-parameter-build.rds.CreateDBSnapshot", before_snapshot)
    _delete_routes_with_their_stack(env, hooks)

    started = start_failback(s, env.clients, env.clock, reason="us-east-1 healthy again", launcher=no_launch)
    execution = env.run(started.execution_id)

    assert execution.status == "succeeded", execution.error
    assert _names(execution) == FAILBACK_STATES
    assert stopped_before_snapshot == [True]  # writes stopped before the snapshot: no data lost
    # Copied back with a client in the primary, from the recovery region, re-encrypted, mapped group.
    copy = next(c for c in copies if "failback" in c["TargetDBSnapshotIdentifier"])
    assert copy["SourceRegion"] == s.recovery_region
    assert copy["KmsKeyId"] == "alias/aws/rds"
    assert copy["OptionGroupName"] == next(iter(s.option_group_map))
    assert copy["SourceDBSnapshotIdentifier"].startswith(f"arn:aws:rds:{s.recovery_region}:")
    # The new primary stack: a new stack, restored from the copy, in the primary network.
    new_primary = env.app_stack(s.primary_region)
    assert new_primary is not None and new_primary["StackId"] != old_primary["StackId"]
    assert _tags(new_primary)[TAG_EXECUTION] == execution.execution_id
    new_parameters = parameters_of(new_primary)
    assert new_parameters["DBSnapshotIdentifier"] == copy["TargetDBSnapshotIdentifier"]
    assert new_parameters["Mode"] == "active" and new_parameters["VpcId"] == env.world.network["VpcId"]
    assert copy["TargetDBSnapshotIdentifier"] in env.snapshots(s.primary_region)
    # Traffic back on the primary; the recovery stack gone; the lease free.
    assert env.cname() == outputs_of(new_primary)["EndpointDnsName"]
    assert env.cname().startswith(f"jams.{s.primary_region}.")  # type: ignore[union-attr]
    assert env.app_stack(s.recovery_region) is None
    lease = env.ledger().get_lease("failback")
    assert lease is not None and lease.holder is None and lease.epoch == recovery.data["epoch"] + 1
    # The old primary's quarantine group went with its instances.
    groups = env.ec2(s.primary_region).describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [quarantine_group_name(s.environment)]}])["SecurityGroups"]
    assert groups == []

    report = execution.item["report"]
    assert report["kind"] == "failback" and report["outcome"] == "succeeded"
    assert report["failure_at"] == execution.data["quiesced_at"]
    # Nothing written was lost: the snapshot was requested only once both schedulers had stopped, which
    # the hook above saw (stopped_before_snapshot). That is checked by order of events, not by times:
    # the report's RPO subtracts moto's wall-clock SnapshotCreateTime from quiesced_at on the fake clock,
    # two clocks that need not agree (0.0 held only while the fake clock had not overtaken moto's).
    # _assert_times_consistent checks the RPO against its definition whatever the clocks say.
    assert report["rpo_seconds"] is not None and report["rpo_seconds"] >= 0.0
    assert report["snapshot"]["id"] == copy["TargetDBSnapshotIdentifier"]
    assert report["stack"]["region"] == s.primary_region
    _assert_times_consistent(execution, report)


def test_failed_failback_resumes_the_recovery_region(env: Env, hooks: _Hooks) -> None:
    """The copy back fails for good: JAMS keeps serving from the recovery region, nothing deleted."""
    s = env.s
    recovery = env.recover("inc-fb-fail")
    assert recovery.status == "succeeded", recovery.error
    recovery_stack = env.app_stack(s.recovery_region)
    old_primary = env.app_stack(s.primary_region)
    assert recovery_stack is not None and old_primary is not None
    schedulers = [outputs_of(recovery_stack)["PrimarySchedulerInstanceId"],
                  outputs_of(recovery_stack)["FailoverSchedulerInstanceId"]]
    endpoint = env.cname()

    def refuse_copy(**_: Any) -> Any:
        return (SimpleNamespace(status_code=400, headers={}),
                {"Error": {"Code": "KMSKeyNotAccessibleFault", "Message": "key alias/aws/rds is disabled"}})

    hooks.on("before-call.rds.CopyDBSnapshot", refuse_copy)

    execution = env.run(start_failback(s, env.clients, env.clock, launcher=no_launch).execution_id)

    assert execution.status == "failed"
    assert execution.failed_state == "copy_to_primary" and "KMSKeyNotAccessibleFault" in (execution.error or "")
    assert execution.data["quiesced_instances"] == sorted(schedulers)
    assert sorted(execution.data["resumed_instances"]) == sorted(schedulers)
    for instance_id in schedulers:
        assert env.instance(s.recovery_region, instance_id)["State"]["Name"] == "running"
    # Nothing deleted, traffic where it was, the lease kept by the failback for a retry.
    after = env.app_stack(s.recovery_region)
    assert after is not None and after["StackId"] == recovery_stack["StackId"]
    primary_after = env.app_stack(s.primary_region)
    assert primary_after is not None and primary_after["StackId"] == old_primary["StackId"]
    assert env.cname() == endpoint
    lease = env.ledger().get_lease("failback")
    assert lease is not None and lease.holder == execution.execution_id
    assert execution.item["report"]["outcome"] == "failed"


# ------------------------------------------------------------------------------- failures


def test_stack_failure_keeps_evidence_and_lease_then_rollback_cleans_up(env: Env, hooks: _Hooks) -> None:
    s = env.s

    def failed_stack(parsed: dict[str, Any], **_: Any) -> None:
        for stack in parsed.get("Stacks", []):
            if stack["StackName"] == s.app_stack_name and f":{s.recovery_region}:" in stack["StackId"]:
                stack["StackStatus"] = "ROLLBACK_COMPLETE"

    def failure_event(parsed: dict[str, Any], **_: Any) -> None:
        parsed.setdefault("StackEvents", []).append({
            "StackId": "x", "EventId": "e1", "StackName": s.app_stack_name, "LogicalResourceId": "Database",
            "ResourceStatus": "CREATE_FAILED", "Timestamp": datetime.now(UTC),
            "ResourceStatusReason": "DB snapshot encrypted with a key that is not accessible"})

    hooks.on("after-call.cloudformation.DescribeStacks", failed_stack)
    hooks.on("after-call.cloudformation.DescribeStackEvents", failure_event)

    execution = env.recover("inc-stack")

    assert execution.status == "failed"
    assert execution.failed_state == "wait_for_stack"
    assert "StackFailed" in (execution.error or "") and "key that is not accessible" in (execution.error or "")
    outcomes = {h["name"]: h["outcome"] for h in execution.history}
    assert outcomes["wait_for_stack"] == "failed"
    assert outcomes["verify"] == outcomes["switch_traffic"] == "skipped"
    assert outcomes["notify"] == outcomes["write_report"] == "succeeded"
    # Documented aftermath: the stack is kept (evidence), the lease kept, DNS untouched, the operator told.
    hooks.off("after-call.cloudformation.DescribeStacks")
    assert env.app_stack(s.recovery_region) is not None
    lease = env.ledger().get_lease("recovery")
    assert lease is not None and lease.holder == execution.execution_id
    assert env.cname() == env.unswitched
    failure_mail = [body for subject, body in env.notifier.sent if "FAILED" in subject]
    assert failure_mail and f"--rollback {execution.execution_id}" in failure_mail[-1]
    report = execution.item["report"]
    assert report["outcome"] == "failed" and report["recovered_at"] is None

    # The documented way out: the rollback deletes the half-built stack and frees the lease.
    started = rollback(s, env.clients, env.clock, execution.execution_id, launcher=no_launch)
    undone = env.run(started.execution_id)

    assert undone.status == "succeeded", undone.error
    assert env.app_stack(s.recovery_region) is None
    lease = env.ledger().get_lease("recovery")
    assert lease is not None and lease.holder is None
    assert env.ledger().load(execution.execution_id).status == "cancelled"
    # The primary's production stack was never touched.
    assert env.app_stack(s.primary_region) is not None


def test_verification_failure_without_heartbeats(env: Env) -> None:
    s = env.s
    env.beating.clear()  # the recovered schedulers never beat (JAMS service not starting)

    execution = env.recover("inc-verify")

    assert execution.status == "failed"
    assert execution.failed_state == "verify"
    assert "VerificationFailed" in (execution.error or "") and "heartbeat" in (execution.error or "")
    # It waited the whole deadline on the fake clock, polling, before giving up.
    verify = next(h for h in execution.history if h["name"] == "verify")
    waited = (parse_iso(verify["ended_at"]) - parse_iso(verify["started_at"])).total_seconds()
    assert waited >= 1800
    # Aftermath as documented: stack kept, lease kept, traffic not switched.
    stack = env.app_stack(s.recovery_region)
    assert stack is not None and stack["StackStatus"] == "CREATE_COMPLETE"
    lease = env.ledger().get_lease("recovery")
    assert lease is not None and lease.holder == execution.execution_id
    assert env.cname() == env.unswitched
    assert execution.item["report"]["outcome"] == "failed"


def test_lease_already_held_changes_nothing(env: Env) -> None:
    s = env.s
    held = env.ledger().take_lease("rec-earlier", "recovery")
    primary_ids = [env.world.app["PrimarySchedulerInstanceId"], env.world.app["FailoverSchedulerInstanceId"]]

    execution = env.recover("inc-second")

    assert execution.status == "failed"
    assert execution.failed_state == "take_lease" and "LeaseHeld" in (execution.error or "")
    assert "rec-earlier" in (execution.error or "")
    lease = env.ledger().get_lease("recovery")
    assert lease is not None and (lease.holder, lease.epoch) == ("rec-earlier", held.epoch)
    assert env.app_stack(s.recovery_region) is None
    for instance_id in primary_ids:  # no fencing by an execution without the lease
        assert env.instance(s.primary_region, instance_id)["State"]["Name"] == "running"
    assert env.cname() == env.unswitched
    assert execution.item["report"]["outcome"] == "failed"


def test_missing_pinned_copy_fails_preflight_and_changes_nothing(env: Env) -> None:
    s = env.s
    env.rds(s.recovery_region).delete_db_snapshot(DBSnapshotIdentifier=PINNED_COPY)

    execution = env.recover("inc-nocopy")

    assert execution.status == "failed"
    assert execution.failed_state == "preflight"
    assert "PinnedSnapshotMissing" in (execution.error or "") and PINNED_COPY in (execution.error or "")
    assert env.app_stack(s.recovery_region) is None
    assert env.ledger().get_lease("recovery") is None
    assert env.ledger().get_fence() is None
    for instance_id in (env.world.app["PrimarySchedulerInstanceId"], env.world.app["FailoverSchedulerInstanceId"]):
        assert env.instance(s.primary_region, instance_id)["State"]["Name"] == "running"
    assert env.cname() == env.unswitched
    report = execution.item["report"]
    assert report["outcome"] == "failed" and report["snapshot"]["id"] is None


def test_create_app_stack_is_idempotent_and_never_adopts_a_foreign_stack(env: Env) -> None:
    s = env.s
    now = env.clock.now()

    def context(execution_id: str) -> StepContext:
        return StepContext(execution_id=execution_id, kind="recovery", settings=s, clients=env.clients,
                           clock=env.clock, notifier=env.notifier, data={"restore_snapshot": PINNED_COPY},
                           attempt=1, state_started_at=now, started_at=now)

    first = create_app_stack(context("rec-a"))
    again = create_app_stack(context("rec-a"))  # the engine re-runs a step whose ledger write was lost

    assert isinstance(first, Done) and isinstance(again, Done)
    assert again.note == "stack already created by this execution"
    stacks = env.cfn(s.recovery_region).describe_stacks()["Stacks"]
    assert [x["StackName"] for x in stacks].count(s.app_stack_name) == 1
    with pytest.raises(Exception, match="not created by rec-b"):
        create_app_stack(context("rec-b"))


def test_drill_never_tears_down_a_stack_it_did_not_create(env: Env) -> None:
    s = env.s
    foreign = s.drill_stack_name("dead0001")
    env.cfn(s.recovery_region).create_stack(
        StackName=foreign, TemplateBody=json.dumps({"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}}))

    execution = env.run(start_drill(s, env.clients, env.clock, "dead0001", launcher=no_launch).execution_id)

    assert execution.status == "failed"
    assert execution.failed_state == "preflight" and "StackExists" in (execution.error or "")
    teardown = next(h for h in execution.history if h["name"] == "teardown")
    assert teardown["outcome"] == "succeeded" and "left untouched" in teardown["note"]
    survivor = env.app_stack(s.recovery_region, foreign)
    assert survivor is not None and survivor["StackStatus"] == "CREATE_COMPLETE"
    assert {h["name"]: h["outcome"] for h in execution.history}["take_lease"] == "skipped"
    lease = env.ledger().get_lease("drill")
    assert lease is None or lease.holder is None
