"""Every Chalice function driven along its real paths in one embedded world, with each AWS call
recorded and attributed to the function that made it (see iam_calls.Recorder).

Operator entry points and the sweeper go through chalice.test.Client (stage dev, the handlers'
own wiring). The functions whose behaviour depends on time (the snapshot tick, the detection
checks, the chain's slices) run their logic functions on a FakeClock with the same wiring their
handlers use (detection: the recovery starter with the Lambda launcher and the pending-fence
enforcer; advance_execution: ``lambda_slice`` with the Lambda launcher), because their handlers use
the system clock and would really sleep through the chain's waits.

moto is made to behave like AWS where a path needs it (botocore hooks, not recorded): Lambda
invokes are accepted with 202 (moto runs no code), a drill's deletion leaves the final snapshot CloudFormation would make, the
restored schedulers beat once their stack is requested, and chosen calls fail (a copy refused, a
stack failed) to reach the failure paths: retry, resume, rollback.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.aws import ClientFactory, set_factory
from chalicelib.clock import FakeClock
from chalicelib.detection.heartbeats import publish_heartbeat
from chalicelib.detection.incident import Incident
from chalicelib.detection.triggers import handle_alarm_event, handle_health_event, handle_rds_event
from chalicelib.detection.watcher import run_watcher
from chalicelib.notify import Notifier
from chalicelib.settings import SETTINGS, Settings, reset_settings
from chalicelib.snapshots.tick import run_tick
from chalicelib.stacks import describe_stack, outputs_of
from chalicelib.workflow.ledger import Ledger
from chalicelib.workflow.records import Execution
from chalicelib.workflow.runners import lambda_slice
from chalicelib.workflow.starter import lambda_launcher, no_launch, recovery_starter, start_incident_recovery
from chalicelib.workflow.steps.fence import enforce_pending_fence, quarantine_group_name
from jamsdr.embedded import EmbeddedAws, World, build_world
from tests.security.iam_calls import Recorder

PROJECT = Path(__file__).resolve().parents[2]
FIXTURES = PROJECT / "tests" / "fixtures" / "events"
STAGE = "dev"
ENVIRONMENT = "jams-dev"  # ENVIRONMENT_NAME of stage dev
ADVANCE = "jams-dr-dev-advance_execution"  # ADVANCE_FUNCTION_NAME of stage dev
DETECTION = ("heartbeat_watcher", "health_event", "alarm_event", "rds_event")


def variant(settings: Settings, **changes: Any) -> Settings:
    """The same settings with some values changed (validated like a stage's)."""
    return Settings.defaults(**{**{k: getattr(settings, k) for k in SETTINGS}, **changes})


class _Accepted:
    status_code = 202
    headers: dict[str, str] = {}


@dataclass
class Hooks:
    """Switchable botocore hooks on the shared factory (unregistered at the end)."""

    clients: ClientFactory
    active: dict[str, Callable[..., Any]] = field(default_factory=dict)
    registered: list[tuple[str, Callable[..., Any]]] = field(default_factory=list)

    def on(self, event: str, handler: Callable[..., Any]) -> None:
        if event not in {name for name, _ in self.registered}:
            def dispatch(_key: str = event, **kwargs: Any) -> Any:
                chosen = self.active.get(_key)
                return None if chosen is None else chosen(**kwargs)

            self.registered.append((event, dispatch))
            self.clients.register_hook(event, dispatch)
        self.active[event] = handler

    def off(self, event: str) -> None:
        self.active.pop(event, None)

    def close(self) -> None:
        for event, handler in self.registered:
            self.clients.unregister_hook(event, handler)
        self.registered.clear()
        self.active.clear()


@dataclass
class Drive:
    aws: EmbeddedAws
    clients: ClientFactory
    world: World
    recorder: Recorder
    hooks: Hooks
    clock: FakeClock
    stack_requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    unprotected: set[str] = field(default_factory=set)
    fresh_stacks: set[str] = field(default_factory=set)
    template_answers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    failing_stack: tuple[str, str] | None = None

    @property
    def s(self) -> Settings:
        return self.world.settings

    # -- plumbing -------------------------------------------------------------------------------

    def invoke(self, function: str, payload: Any) -> dict[str, Any]:
        """One invocation through Chalice's test client (stage dev), recorded as ``function``."""
        reset_settings()
        set_factory(self.clients)
        # The handlers run on the system clock: keep the fake one from lagging behind it, so the
        # executions they create do not look hours old to the chain.
        behind = (datetime.now(UTC) - self.clock.now()).total_seconds()
        if behind > 0:
            self.clock.advance(behind)
        with Client(app, stage_name=STAGE, project_dir=str(PROJECT)) as client, self.recorder.running(function):
            answer = client.lambda_.invoke(function, payload).payload
        assert isinstance(answer, dict), answer
        return answer

    def run_chain(self, execution_id: str, settings: Settings | None = None) -> Execution:
        """advance_execution's slices, as the chain runs them, until the execution ends."""
        s = settings or self.s
        for _ in range(200):
            with self.recorder.running("advance_execution"):
                sliced = lambda_slice(
                    execution_id, settings=s, clients=self.clients, clock=self.clock,
                    notifier=Notifier(s, self.clients, self.clock),
                    # Short slices: a stack's 60 s poll outlasts one, so the chain hands over to
                    # itself (lambda:InvokeFunction) as it does in Lambda during a long restore.
                    owner=f"lambda:{uuid.uuid4().hex}", remaining_ms=110_000, margin_seconds=55.0,
                    launcher=lambda_launcher(self.clients, s.recovery_region, ADVANCE))
            if sliced.result.outcome in ("ended", "awaiting-approval"):
                break
            if sliced.result.next_check_at is not None and sliced.result.next_check_at > self.clock.now():
                self.clock.advance((sliced.result.next_check_at - self.clock.now()).total_seconds())
        with self.recorder.paused():
            return Ledger(s, self.clients, self.clock).load(execution_id)

    def ledger_items(self) -> list[dict[str, Any]]:
        with self.recorder.paused():
            ddb = self.clients.client("dynamodb", self.s.recovery_region)
            return list(ddb.scan(TableName=self.s.ledger_table_name)["Items"])

    def forget(self, *prefixes: str) -> None:
        """Delete ledger items (test set-up between scenarios)."""
        with self.recorder.paused():
            ddb = self.clients.client("dynamodb", self.s.recovery_region)
            for item in self.ledger_items():
                if item["pk"]["S"].startswith(prefixes):
                    ddb.delete_item(TableName=self.s.ledger_table_name, Key={"pk": item["pk"]})

    @contextmanager
    def primary_down(self) -> Iterator[None]:
        self.aws.take_region_down(self.s.primary_region)
        try:
            yield
        finally:
            self.aws.bring_region_up(self.s.primary_region)

    def event(self, name: str, **detail: Any) -> dict[str, Any]:
        """A fixture event made unique (EventBridge delivers each real event once, with its own ids)."""
        raw = json.loads((FIXTURES / f"{name}.json").read_text())
        raw["id"] = str(uuid.uuid4())
        raw["detail"].update(detail)
        return dict(raw)

    # -- moto made to behave like AWS (never recorded) ------------------------------------------

    def install_hooks(self) -> None:
        self.clients.register_hook("before-parameter-build", self.recorder.hook)
        self.hooks.on("before-call.lambda.Invoke", lambda **_: (_Accepted(), {"StatusCode": 202}))
        self.hooks.on("before-parameter-build.cloudformation.DeleteStack", self._final_snapshot)
        self.hooks.on("after-call.cloudformation.CreateStack", self._schedulers_beat)
        self.hooks.on("after-call.cloudformation.DeleteStack", self._routes_go_with_their_stack)
        self.hooks.on("after-call.rds.DescribeDBInstances", self._serving_databases_are_protected)
        self.hooks.on("after-call.cloudformation.DescribeStacks", self._stacks_take_time)
        self.hooks.on("before-parameter-build.rds.ModifyDBInstance", self._unprotected)
        self.hooks.on("after-call.route53.ChangeResourceRecordSets", self._dns_change_pending)
        for operation in ("ValidateTemplate", "GetTemplateSummary"):
            self.hooks.on(f"before-call.cloudformation.{operation}", self._known_template)
            self.hooks.on(f"after-call.cloudformation.{operation}", self._remember_template)
        for operation in ("CreateStack", "UpdateStack", "DeleteStack"):
            self.hooks.on(f"before-call.cloudformation.{operation}", self._stack_request)

    def remove_hooks(self) -> None:
        self.clients.unregister_hook("before-parameter-build", self.recorder.hook)
        self.hooks.close()

    def _stack_request(self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        """The request as serialized for the wire (moto ignores RoleARN: only the request proves it)."""
        body = params.get("body")
        self.stack_requests.append((str(model.name), str(context.get("client_region")),
                                    dict(body) if isinstance(body, dict) else {}))

    @staticmethod
    def _template_key(model: Any, params: dict[str, Any]) -> tuple[str, str]:
        body = params.get("body")
        source = body.get("TemplateBody") or body.get("TemplateURL") if isinstance(body, dict) else None
        return str(model.name), str(source)

    def _known_template(self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
        """Speed only: moto takes seconds to parse the application template, so the same question
        about the same template is answered from moto's first answer (the request is recorded all the
        same, before this hook)."""
        key = self._template_key(model, params)
        context["iam_test_template_key"] = key
        known = self.template_answers.get(key)
        return None if known is None else (SimpleNamespace(status_code=200, headers={}), copy.deepcopy(known))

    def _remember_template(self, context: dict[str, Any], parsed: dict[str, Any], **_: Any) -> None:
        key = context.get("iam_test_template_key")
        if key is not None and "Error" not in parsed:
            self.template_answers.setdefault(key, copy.deepcopy(parsed))

    def _final_snapshot(self, params: dict[str, Any], **_: Any) -> None:
        """moto ignores DeletionPolicy Snapshot: make the drill's final snapshot CloudFormation would."""
        name = str(params.get("StackName", ""))
        if f":stack/{self.s.environment}-drill-" not in name:
            return
        with self.recorder.paused():
            region = self.s.recovery_region
            stack = describe_stack(self.clients.client("cloudformation", region), name)
            db_id = outputs_of(stack).get("DatabaseInstanceId") if stack else None
            if db_id:
                stack_name = str(stack["StackName"]) if stack else "drill"
                rds = self.clients.client("rds", region)
                # With CopyTagsToSnapshot the final snapshot carries the instance's tags (the teardown
                # finds it by them): given explicitly rather than left to the emulator.
                [instance] = rds.describe_db_instances(DBInstanceIdentifier=db_id)["DBInstances"]
                tags = instance.get("TagList", []) if instance.get("CopyTagsToSnapshot") else []
                rds.create_db_snapshot(
                    DBSnapshotIdentifier=f"{stack_name}-snapshot-database-{uuid.uuid4().hex[:8]}",
                    DBInstanceIdentifier=db_id, Tags=tags)

    def _routes_go_with_their_stack(self, context: dict[str, Any], **_: Any) -> None:
        """moto 5.2.5 leaves an application stack's NAT routes in the network stack's route tables when
        the stack is deleted; CloudFormation removes them (as in test_recovery_chain)."""
        region = str(context["client_region"])
        network = self.world.network if region == self.s.primary_region else self.world.standby
        with self.recorder.paused():
            ec2 = self.clients.client("ec2", region)
            for key in ("PrivateRouteTable1Id", "PrivateRouteTable2Id"):
                table = ec2.describe_route_tables(RouteTableIds=[network[key]])["RouteTables"][0]
                if any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in table["Routes"]):
                    ec2.delete_route(RouteTableId=table["RouteTableId"], DestinationCidrBlock="0.0.0.0/0")

    def _serving_databases_are_protected(self, parsed: dict[str, Any], **_: Any) -> None:
        """jams-app.yaml sets DeletionProtection on Mode=active databases; moto ignores it there."""
        prefix = f"{self.s.app_stack_name.lower()}-"
        for instance in parsed.get("DBInstances", []):
            identifier = str(instance.get("DBInstanceIdentifier", ""))
            if identifier.startswith(prefix) and identifier not in self.unprotected:
                instance["DeletionProtection"] = True

    def _unprotected(self, params: dict[str, Any], **_: Any) -> None:
        if params.get("DeletionProtection") is False:
            self.unprotected.add(str(params["DBInstanceIdentifier"]))

    def _dns_change_pending(self, parsed: dict[str, Any], **_: Any) -> None:
        """Route 53 answers PENDING first (moto: INSYNC at once); the switch then follows GetChange."""
        parsed.setdefault("ChangeInfo", {})["Status"] = "PENDING"

    def _stacks_take_time(self, parsed: dict[str, Any], **_: Any) -> None:
        """A new stack is CREATE_IN_PROGRESS when first looked at (moto completes it at once);
        ``failing_stack`` (region, name) makes one look ROLLBACK_COMPLETE (moto never fails)."""
        for stack in parsed.get("Stacks", []):
            stack_id = str(stack.get("StackId", ""))
            if stack_id in self.fresh_stacks and stack.get("StackStatus") == "CREATE_COMPLETE":
                self.fresh_stacks.discard(stack_id)
                stack["StackStatus"] = "CREATE_IN_PROGRESS"
            if self.failing_stack and stack["StackName"] == self.failing_stack[1] \
                    and f":{self.failing_stack[0]}:" in stack_id and stack.get("StackStatus") != "DELETE_COMPLETE":
                stack["StackStatus"] = "ROLLBACK_COMPLETE"

    def _schedulers_beat(self, context: dict[str, Any], parsed: dict[str, Any], **_: Any) -> None:
        """JAMS starts on the restored hosts: its schedulers beat in the stack's region."""
        self.fresh_stacks.add(str(parsed.get("StackId", "")))
        with self.recorder.paused():
            for role in ("primary", "failover"):
                publish_heartbeat(self.clients, str(context["client_region"]), self.s.environment, role, self.clock)

    # -- the scenarios --------------------------------------------------------------------------

    def snapshot_ticks(self) -> None:
        """Take, copy (encrypted: KmsKeyId, option group, tags), pin, prune; a copy refused for quota
        (notice once); DB_INSTANCE_ID empty (read from the app stack); backup replication on."""
        s = variant(self.s, retain_count=1, retain_days=0, snapshot_interval_minutes=60)
        clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))

        def tick(settings: Settings) -> None:
            with self.recorder.running("snapshot_tick"):
                run_tick(settings, self.clients, clock)
            clock.advance(3600)

        for _ in range(3):
            tick(s)
        refused = {"n": 0}

        def quota(**_: Any) -> Any:
            refused["n"] += 1
            return (SimpleNamespace(status_code=400, headers={}),
                    {"Error": {"Code": "SnapshotQuotaExceeded", "Message": "Cannot copy more than 20 snapshots"}})

        self.hooks.on("before-call.rds.CopyDBSnapshot", quota)
        tick(s)
        self.hooks.off("before-call.rds.CopyDBSnapshot")
        assert refused["n"] >= 1, "the quota path was not reached"
        tick(variant(s, db_instance_id=None))
        # Replication on, and the pitr tier's RPO metric (the replicated backups' lag, docs/pitr.md).
        tick(variant(s, backup_replication=True, recovery_source="pitr"))
        for _ in range(2):
            tick(s)

    def _arm_fence(self, settings: Settings) -> None:
        """A pending fence of the primary, and the primary's schedulers running, unfenced."""
        ids = self._unfence_primary(settings)
        with self.recorder.paused():
            Ledger(settings, self.clients, self.clock).put_fence("rec-earlier", 1, settings.primary_region, ids)

    def _unfence_primary(self, settings: Settings) -> list[str]:
        """The primary's schedulers running in their own security group, no quarantine group."""
        with self.recorder.paused():
            ec2 = self.clients.client("ec2", settings.primary_region)
            ids = [self.world.app["PrimarySchedulerInstanceId"], self.world.app["FailoverSchedulerInstanceId"]]
            for instance_id in ids:
                ec2.modify_instance_attribute(InstanceId=instance_id, Groups=[self.world.network[
                    "SchedulerSecurityGroupId"]])
            ec2.start_instances(InstanceIds=ids)
            groups = ec2.describe_security_groups(Filters=[
                {"Name": "group-name", "Values": [quarantine_group_name(settings.environment)]}])["SecurityGroups"]
            for group in groups:
                ec2.delete_security_group(GroupId=group["GroupId"])
        return ids

    def detection(self) -> None:
        """Each detection function: pending fence enforced, database probed (DB_INSTANCE_ID empty: the
        app stack's output), a scheduler outage notified, then the primary unreachable: region
        recovery started (auto) through the Lambda launcher, notified."""
        s = variant(self.s, db_instance_id=None, failover_mode="auto")
        interval = s.heartbeat_interval_seconds
        self.clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(days=1))
        starter = recovery_starter(s, self.clients, self.clock, lambda_launcher(self.clients, s.recovery_region,
                                                                                 ADVANCE))
        wiring: dict[str, Any] = {"stage": STAGE, "fence_enforcer": enforce_pending_fence}
        db_id = str(self.world.app["DatabaseInstanceId"])

        def check(function: str) -> dict[str, Any]:
            self.clock.advance(interval)
            with self.recorder.running(function):
                if function == "heartbeat_watcher":
                    return run_watcher(s, self.clients, self.clock, starter, **wiring).to_dict()
                if function == "alarm_event":
                    return handle_alarm_event(s, self.clients, self.clock, starter, self.event("alarm_ok_to_alarm"),
                                              **wiring)
                if function == "rds_event":
                    return handle_rds_event(s, self.clients, self.clock, starter, self.event(
                        "rds_instance_failed", SourceIdentifier=db_id), **wiring)
                return handle_health_event(s, self.clients, self.clock, starter, self.event(
                    "health_ec2_issue_primary", communicationId=f"iam-{uuid.uuid4().hex}"), **wiring)

        for function in DETECTION:
            self.forget("watch#", "health#", "exec#rec-", "fence#")
            self._arm_fence(s)
            first = check(function)
            assert first.get("decision") in ("scheduler-outage", "region-recovery"), first
            results = [first]
            with self.primary_down():
                # Unreachable for the threshold's checks AND both silent that long: region recovery.
                for _ in range(9):
                    if results[-1].get("execution_id"):
                        break
                    results.append(check(function))
            assert results[-1].get("execution_id"), (function, results)
        self.forget("watch#", "health#", "exec#rec-", "fence#")

    def chain_and_operators(self) -> dict[str, Execution]:
        s = self.s
        self.clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
        done: dict[str, Execution] = {}

        # A drill, to the end: isolated stack, teardown, its final snapshot deleted.
        started = self.invoke("start_drill", {"drill_id": "iam"})
        assert started["ok"] and started["launched"], started
        # RECOVERY_SOURCE=pitr: preflight and create_app_stack read the backups the ticks replicated.
        done["drill"] = self.run_chain(started["execution_id"], variant(s, backup_replication=True,
                                                                        recovery_source="pitr"))
        assert done["drill"].status == "succeeded", done["drill"].error
        # (Its preflight reads them whatever it then decides: here the ticks' clock is hours ahead of moto's.)
        assert done["drill"].data["recovery_source"]["requested"] == "pitr"

        # A drill nobody drives (its launch "lost"): the sweeper relaunches it below.
        assert self.invoke("start_drill", {"drill_id": "stalled"})["ok"]

        # A recovery while the primary does not answer: fence pending, stack with the service role,
        # verification, DNS switch, report. SNS refuses its notifications: they wait in the outbox.
        self._unfence_primary(s)
        self.hooks.on("before-call.sns.Publish", lambda **_: (
            SimpleNamespace(status_code=503, headers={}),
            {"Error": {"Code": "ServiceUnavailable", "Message": "SNS is having a bad day"}}))
        with self.primary_down():
            started = self.invoke("start_recovery", {"reason": "us-east-1 unreachable", "incident_id": "iam-1"})
            assert started["ok"], started
            done["recovery"] = self.run_chain(started["execution_id"])
            assert done["recovery"].status == "succeeded", done["recovery"].error
        self.hooks.off("before-call.sns.Publish")

        # The primary is back: the sweeper enforces the pending fence, relaunches the stalled drill and
        # sends the recovery's notifications SNS refused (the outbox).
        swept = self.invoke("execution_sweeper", {"version": "0", "id": str(uuid.uuid4()),
                                                   "detail-type": "Scheduled Event", "source": "aws.events",
                                                   "account": "123456789012", "time": "2026-01-01T00:00:00Z",
                                                   "region": s.recovery_region, "resources": [], "detail": {}})
        assert swept["ok"] and swept["fenced"] and "drill-stalled" in swept["launched"], swept
        recovery_id = done["recovery"].execution_id
        assert swept["notifications"]["sent"] == [f"{recovery_id}#started", f"{recovery_id}#succeeded"], swept
        self.forget("exec#drill-stalled")

        # A failback whose copy back is refused (resume the recovery schedulers), then retried.
        def refuse_copy(**_: Any) -> Any:
            return (SimpleNamespace(status_code=400, headers={}),
                    {"Error": {"Code": "KMSKeyNotAccessibleFault", "Message": "key alias/aws/rds is disabled"}})

        self._unfence_primary(s)  # the failback fences (quarantines) the old primary itself
        started = self.invoke("start_failback", {"reason": "primary healthy again"})
        assert started["ok"], started
        self.hooks.on("before-call.rds.CopyDBSnapshot", refuse_copy)
        failed = self.run_chain(started["execution_id"])
        self.hooks.off("before-call.rds.CopyDBSnapshot")
        assert failed.status == "failed" and failed.data.get("resumed_instances"), failed.error
        assert self.invoke("retry_execution", {"execution_id": failed.execution_id})["ok"]
        done["failback"] = self.run_chain(failed.execution_id)
        assert done["failback"].status == "succeeded", done["failback"].error

        # A recovery whose stack fails, retried (fails again), then rolled back.
        # (The primary does not answer: the fence stays pending, and the rollback withdraws it.)
        self.failing_stack = (s.recovery_region, s.app_stack_name)
        with self.primary_down():
            started = self.invoke("start_recovery", {"reason": "drill of a failure", "incident_id": "iam-2"})
            failed = self.run_chain(started["execution_id"])
            assert failed.status == "failed", failed.status
            assert self.invoke("retry_execution", {"execution_id": failed.execution_id})["ok"]
            failed = self.run_chain(failed.execution_id)
            assert failed.status == "failed", failed.status
        self.failing_stack = None
        rolled = self.invoke("rollback_execution", {"execution_id": failed.execution_id})
        assert rolled["ok"], rolled
        done["rollback"] = self.run_chain(rolled["execution_id"])
        assert done["rollback"].status == "succeeded", done["rollback"].error

        # A recovery parked for approval (FAILOVER_MODE=approve), approved by the operator.
        with self.recorder.paused():
            incident = Incident(incident_id="iam-3", decision="region-recovery", reason="approve me",
                                failure_at=None, detected_at=self.clock.now(), decided_at=self.clock.now())
            start_incident_recovery(s, self.clients, self.clock, incident, await_approval=True, launcher=no_launch)
        approved = self.invoke("approve_recovery", {"execution_id": "rec-iam-3"})
        assert approved["ok"] and approved["launched"], approved
        return done


@dataclass
class Recording:
    world: World
    recorder: Recorder
    outcomes: dict[str, Execution]
    stack_requests: list[tuple[str, str, dict[str, Any]]]


def record_everything(aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch) -> Recording:
    """Build the world (stage dev's environment), drive every function, return what each called."""
    assert aws.clients is not None
    clients = aws.clients
    world = build_world(clients, Settings.defaults(environment=ENVIRONMENT))
    # What `jams-dr bootstrap --write-config` gives the stage: the handlers read these.
    for key, value in world.settings.as_env().items():
        monkeypatch.setenv(key, value)
    drive = Drive(aws, clients, world, Recorder(), Hooks(clients), FakeClock(datetime.now(UTC)))
    drive.install_hooks()
    try:
        drive.snapshot_ticks()
        drive.detection()
        outcomes = drive.chain_and_operators()
    finally:
        drive.remove_hooks()
    return Recording(world, drive.recorder, outcomes, drive.stack_requests)
