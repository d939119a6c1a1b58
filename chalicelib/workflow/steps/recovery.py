"""The steps of the recovery chain (shared with the drill and the failback, which differ by target).

Each step is a small idempotent function over a StepContext: it reads AWS, acts once, and returns
``Done`` (new data for the execution) or ``NotReady`` (check again later). A step the engine re-runs
after a crash finds its own work done (stack tagged with the execution id, lease already ours,
instances already stopped) and answers Done.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib import traffic
from chalicelib.aws import error_code
from chalicelib.clock import isoformat, parse_iso
from chalicelib.detection.heartbeats import newest_beat
from chalicelib.observability import logger
from chalicelib.rds import describe_instance, describe_snapshot, restore_events, snapshot_name
from chalicelib.report import as_plain, build_report, report_key
from chalicelib.snapshots.pitr import find_replicated_backup, read_replicated_backup, restore_time, unusable_reason
from chalicelib.stacks import (
    STANDBY_SETTLING,
    STANDBY_USABLE,
    TERMINAL_BAD,
    TERMINAL_OK,
    as_parameters,
    describe_stack,
    outputs_of,
    parameters_of,
)
from chalicelib.tags import TAG_ENVIRONMENT, TAG_EXECUTION, TAG_KIND, TAG_MANAGED_BY
from chalicelib.workflow.ledger import LeaseHeld
from chalicelib.workflow.model import Done, NotReady, StepContext, StepError, StepResult
from chalicelib.workflow.steps.common import (
    STACK_CAPABILITIES,
    Target,
    app_parameter_overrides,
    app_parameters,
    app_template_body,
    check_images,
    client_request_token,
    created_by,
    failure_reason,
    ledger_of,
    now_iso,
    original_created_at,
    owner_id,
    snapshot_record,
    snapshot_tags,
    stack_record,
    stack_role,
    target_of,
    template_parameters,
    template_source,
)

if TYPE_CHECKING:
    from mypy_boto3_cloudformation.type_defs import TagTypeDef

STACK_POLL_SECONDS = 60.0
VERIFY_POLL_SECONDS = 30.0
# The switch alarm's period is 10 s (templates/jams-dr-traffic.yaml): poll about that often.
SWITCH_POLL_SECONDS = 5.0
# JAMS needs its service started on restored hosts and the agents registered: half an hour is
# generous; past it the verification fails with what was missing.
VERIFY_DEADLINE_SECONDS = 1800.0
# How long a recovery (or failback) waits for RDS's restore event once the rest is verified: events are
# best effort, and a missing one must not hold a recovered JAMS back. Past it, verify succeeds with the
# restore marked unproven in its output (a drill waits until its deadline: its point is the proof).
RESTORE_EVENT_GRACE_SECONDS = 300.0
# DB instance states that end by themselves (a fresh restore passes through several).
DB_SETTLING = frozenset({
    "creating", "backing-up", "modifying", "configuring-enhanced-monitoring", "configuring-log-exports",
    "configuring-iam-database-auth", "rebooting", "upgrading", "maintenance", "storage-optimization",
    "renaming", "resetting-master-credentials", "starting",
})


# ------------------------------------------------------------------------------- preflight


def preflight(ctx: StepContext) -> StepResult:
    """Everything a recovery (or drill) needs is in place in the recovery region; changes nothing."""
    settings = ctx.settings
    target = target_of(ctx)
    cfn = ctx.clients.client("cloudformation", settings.recovery_region)

    standby = describe_stack(cfn, settings.standby_stack_name)
    if standby is None:
        raise StepError(
            f"standby stack {settings.standby_stack_name} does not exist in {settings.recovery_region}: "
            "deploy it (`jams-dr bootstrap`) before a recovery can run", code="PreflightFailed")
    status = str(standby["StackStatus"])
    if status in STANDBY_SETTLING:
        return NotReady(30.0, note=f"standby stack is {status} (a pin in progress)")
    if status not in STANDBY_USABLE:
        raise StepError(
            f"standby stack {settings.standby_stack_name} is {status}, not *_COMPLETE: repair it in "
            f"{settings.recovery_region} first", code="PreflightFailed")

    pinned = parameters_of(standby).get("DBSnapshotIdentifier", "")
    if not pinned:
        raise StepError(
            "no recovery point pinned: the standby stack's DBSnapshotIdentifier is empty; let the "
            "snapshot pipeline copy and pin one (snapshot_tick), then retry", code="NoPinnedSnapshot")
    rds = ctx.clients.client("rds", settings.recovery_region)
    snapshot = describe_snapshot(rds, pinned)
    if snapshot is None:
        raise StepError(
            f"the pinned snapshot {pinned} does not exist in {settings.recovery_region}: it was deleted "
            "or never copied; let the snapshot pipeline pin a new copy, then retry",
            code="PinnedSnapshotMissing")
    if snapshot.get("Status") != "available":
        raise StepError(
            f"the pinned snapshot {pinned} is {snapshot.get('Status')}, not available", code="PinnedSnapshotNotReady")

    body = app_template_body(settings, ctx.clients)
    declared = template_parameters(cfn, settings, body)
    overrides = app_parameter_overrides(settings, ctx.clients, target.region, declared)
    images = check_images(ctx.clients, target.region, declared, overrides)
    source, source_note = _recovery_source(ctx, snapshot, declared)

    existing = describe_stack(cfn, target.stack_name)
    if existing is not None and not created_by(existing, ctx.execution_id):
        what = "a drill stack" if target.mode == "drill" else "an application stack"
        raise StepError(
            f"{what} {target.stack_name} already exists in {target.region} "
            f"({existing['StackStatus']}) and was not created by {ctx.execution_id}; it is left "
            "untouched: delete or roll back that stack first", code="StackExists")

    return Done(
        {
            "primary_region": settings.primary_region,
            "recovery_region": settings.recovery_region,
            "snapshot": snapshot_record(snapshot),
            "restore_snapshot": pinned,
            **source,
            "stack": stack_record(target.stack_name, target.region, None),
        },
        note=f"pinned {pinned} available; standby {status}; template valid; "
             f"image(s) {', '.join(sorted(set(images.values()))) or 'none'} available in {target.region}"
             + source_note,
    )


# The parameters of a point-in-time restore (templates/jams-app.yaml).
PITR_PARAMETERS = ("SourceDBInstanceAutomatedBackupsArn", "RestoreTime")


def _recovery_source(
    ctx: StepContext, snapshot: Mapping[str, Any], declared: Mapping[str, Any]
) -> tuple[dict[str, Any], str]:
    """What the restore uses (RECOVERY_SOURCE, docs/pitr.md): the pinned snapshot, or in pitr mode the
    replicated automated backups when they are usable, else still the pinned snapshot, saying why.

    The pinned snapshot was checked above either way: it is the fallback.
    """
    settings = ctx.settings
    record: dict[str, Any] = {"requested": settings.recovery_source, "used": "snapshot", "restore_time": None,
                              "automated_backups_arn": None, "reason": None}
    if settings.recovery_source != "pitr":
        return {"recovery_source": record, "restore_backups_arn": None}, ""
    backup, reason = find_replicated_backup(settings, ctx.clients, settings.db_instance_id or None)
    if backup is not None:
        reason = unusable_reason(backup, original_created_at(snapshot, snapshot_tags(snapshot))) or ""
    if backup is not None and not reason and not set(PITR_PARAMETERS) <= set(declared):
        reason = (f"the application template in s3://{settings.artifact_bucket} has no {PITR_PARAMETERS[0]} "
                  "parameter: upload templates/jams-app.yaml")
    if backup is None or backup.latest is None or reason:
        record["reason"] = reason
        logger.warning("point-in-time restore not used: restoring the pinned snapshot", extra={"reason": reason})
        return ({"recovery_source": record, "restore_backups_arn": None},
                f"; pitr NOT used, the pinned snapshot is restored instead: {reason}")
    record.update(used="pitr", automated_backups_arn=backup.arn)
    return ({"recovery_source": record, "restore_backups_arn": backup.arn},
            f"; pitr: {backup.arn}, latest restorable time {restore_time(backup.latest)}")


# ------------------------------------------------------------------------------- lease


def take_lease(ctx: StepContext) -> StepResult:
    """The lease admits one recovery at a time; its epoch is the fencing token."""
    ledger = ledger_of(ctx)
    previous = ctx.data.get("lease_previous_holder")
    if previous:
        # Failback takes over from the completed recovery that still holds the lease.
        ledger.release_lease(str(previous), ctx.kind)
    try:
        lease = ledger.take_lease(ctx.execution_id, ctx.kind)
    except LeaseHeld as exc:
        raise StepError(str(exc), code="LeaseHeld") from exc
    return Done({"epoch": lease.epoch, "lease": lease.name, "lease_held": True},
                note=f"{lease.name} epoch {lease.epoch}")


def release_lease(ctx: StepContext) -> StepResult:
    holder = owner_id(ctx)
    released = ledger_of(ctx).release_lease(holder, ctx.kind)
    note = "lease released" if released else f"lease not held by {holder}: nothing to release"
    return Done({"lease_held": False}, note=note)


# ------------------------------------------------------------------------------- stack


def create_app_stack(ctx: StepContext) -> StepResult:
    """Create the application stack on its network stack, restoring the chosen snapshot."""
    settings = ctx.settings
    target = target_of(ctx)
    cfn = ctx.clients.client("cloudformation", target.region)

    existing = describe_stack(cfn, target.stack_name)
    if existing is not None:
        return _existing_stack(ctx, target, existing)

    network = describe_stack(cfn, target.network_stack)
    if network is None:
        raise StepError(f"network stack {target.network_stack} does not exist in {target.region}",
                        code="NetworkStackMissing")
    restore = str(ctx.data.get("restore_snapshot") or "")
    if not restore:
        raise StepError("no snapshot to restore recorded by an earlier step", code="NoPinnedSnapshot")
    body = app_template_body(settings, ctx.clients)
    names = template_parameters(cfn, settings, body, validate=False)
    source = _restore_point(ctx)
    fell_back = bool(source.pop("fell_back", False))
    explicit = {"Mode": target.mode, "DBSnapshotIdentifier": restore, "EnvironmentName": settings.environment,
                "SchedulerInstanceProfileName": settings.scheduler_instance_profile_name,
                "SourceDBInstanceAutomatedBackupsArn": "", "RestoreTime": ""}
    if source.get("restore_time"):
        # The two restore sources are exclusive (the template's rule OneRestoreSource).
        explicit.update(DBSnapshotIdentifier="", SourceDBInstanceAutomatedBackupsArn=str(source["restore_backups_arn"]),
                        RestoreTime=str(source["restore_time"]))
    # Regional records only where Route 53's control plane is not what the recovery may be recovering
    # from: in the recovery region the stable name already points at the traffic stack's endpoint.
    if (target.mode == "active" and target.region != settings.recovery_region
            and settings.hosted_zone_id and settings.dns_zone_name):
        explicit.update(HostedZoneId=settings.hosted_zone_id, DnsZoneName=settings.dns_zone_name.rstrip("."))
    overrides = app_parameter_overrides(settings, ctx.clients, target.region, names)
    parameters = app_parameters(names, network, explicit, overrides)
    tags: list[TagTypeDef] = [
        {"Key": TAG_MANAGED_BY, "Value": "jams-dr"},
        {"Key": TAG_ENVIRONMENT, "Value": settings.environment},
        {"Key": TAG_EXECUTION, "Value": ctx.execution_id},
        {"Key": TAG_KIND, "Value": ctx.kind},
    ]
    try:
        answer = cfn.create_stack(
            StackName=target.stack_name,
            **template_source(settings, body),
            Parameters=as_parameters(parameters),
            Capabilities=STACK_CAPABILITIES,
            # Keep a failed stack as evidence; the rollback (or the drill's teardown) deletes it.
            OnFailure="DO_NOTHING",
            Tags=tags,
            ClientRequestToken=client_request_token(ctx.execution_id, "create"),
            **stack_role(settings),
        )
    except ClientError as exc:
        if error_code(exc) != "AlreadyExistsException":
            raise
        raced = describe_stack(cfn, target.stack_name)
        if raced is None:
            raise
        return _existing_stack(ctx, target, raced)
    what = (f"point in time {source['restore_time']} of {source['restore_backups_arn']}" if source.get("restore_time")
            else f"snapshot {restore}")
    logger.info("application stack requested", extra={
        "stack": target.stack_name, "region": target.region, "mode": target.mode, "restore": what})
    return Done(
        {"stack": stack_record(target.stack_name, target.region, "CREATE_IN_PROGRESS"),
         "stack_id": answer.get("StackId"), "stack_requested_at": now_iso(ctx.clock),
         "stack_parameters": parameters, **source},
        note=f"{target.stack_name} requested in {target.region} (Mode={target.mode}, {what})"
             + (f"; {source['recovery_source']['reason']}" if fell_back else ""),
    )


def _restore_point(ctx: StepContext) -> dict[str, Any]:
    """The point-in-time restore preflight chose, pinned to the latest restorable time read NOW ({} for a
    snapshot restore).

    The time is passed to CloudFormation explicitly (RestoreTime) rather than UseLatestRestorableTime, so
    the execution records exactly which point was restored and the report's RPO is measured from it.
    Should the backups have gone since preflight, the pinned snapshot is restored, and the record says so.
    """
    arn = str(ctx.data.get("restore_backups_arn") or "")
    record = dict(ctx.data.get("recovery_source") or {})
    if not arn:
        return {}
    backup = read_replicated_backup(ctx.clients, ctx.settings.recovery_region, arn)
    reason = "they no longer exist" if backup is None else unusable_reason(backup, None)
    if backup is None or backup.latest is None or reason:
        record.update(used="snapshot", automated_backups_arn=None,
                      reason=f"replicated backups {arn} unusable when the stack was created: {reason}")
        return {"recovery_source": record, "restore_backups_arn": None, "restore_time": None, "fell_back": True}
    at = restore_time(backup.latest)
    record.update(used="pitr", restore_time=at, automated_backups_arn=arn)
    return {"recovery_source": record, "restore_backups_arn": arn, "restore_time": at}


def _existing_stack(ctx: StepContext, target: Target, stack: Mapping[str, Any]) -> StepResult:
    if not created_by(stack, ctx.execution_id):
        raise StepError(
            f"stack {target.stack_name} already exists in {target.region} and was not created by "
            f"{ctx.execution_id}; it is left untouched", code="StackExists")
    found: dict[str, Any] = {}
    restored_to = parameters_of(stack).get("RestoreTime")
    if restored_to and not ctx.data.get("restore_time"):
        # The create's ledger write was lost: the stack itself says which point it restores.
        record = {**dict(ctx.data.get("recovery_source") or {}), "used": "pitr", "restore_time": restored_to,
                  "automated_backups_arn": parameters_of(stack).get("SourceDBInstanceAutomatedBackupsArn")}
        found = {"restore_time": restored_to, "recovery_source": record}
    return Done(
        {"stack": stack_record(target.stack_name, target.region, str(stack["StackStatus"])),
         "stack_id": stack.get("StackId"),
         "stack_requested_at": ctx.data.get("stack_requested_at") or now_iso(ctx.clock), **found},
        note="stack already created by this execution",
    )


def wait_for_stack(ctx: StepContext) -> StepResult:
    """Poll the stack: hours are normal for a SQL Server restore (no default waiter limits here)."""
    target = target_of(ctx)
    cfn = ctx.clients.client("cloudformation", target.region)
    stack = describe_stack(cfn, target.stack_name)
    if stack is None:
        raise StepError(f"stack {target.stack_name} disappeared from {target.region}", code="StackFailed")
    status = str(stack["StackStatus"])
    record = stack_record(target.stack_name, target.region, status)
    if status in TERMINAL_OK:
        outputs = outputs_of(stack)
        return Done({"stack": record, "stack_outputs": outputs}, note=status)
    if status in TERMINAL_BAD or not status.endswith("_IN_PROGRESS"):
        reason = failure_reason(cfn, target.stack_name)
        raise StepError(f"stack {target.stack_name} in {target.region} is {status}: {reason}",
                        code="StackFailed")
    # At most once per heartbeat interval: production's 60 s keeps 60 s, a drill that compresses the
    # heartbeat to 1 s sees its (compressed) restore finish within a second.
    poll = min(STACK_POLL_SECONDS, float(ctx.settings.heartbeat_interval_seconds))
    return NotReady(poll, note=status, output={"stack": record})


# ------------------------------------------------------------------------------- verify


def verify(ctx: StepContext) -> StepResult:
    """Stack complete, database available, agents healthy behind the load balancer, JAMS beating.

    Heartbeats are required only where JAMS serves: a drill's schedulers have no egress to reach
    CloudWatch (Mode=drill), and must not publish under the production Environment dimension anyway.
    """
    target = target_of(ctx)
    cfn = ctx.clients.client("cloudformation", target.region)
    stack = describe_stack(cfn, target.stack_name)
    if stack is None or stack["StackStatus"] not in TERMINAL_OK:
        status = None if stack is None else stack["StackStatus"]
        raise StepError(f"stack {target.stack_name} is {status}, not complete", code="VerificationFailed")
    outputs = outputs_of(stack)
    waiting: list[str] = []
    found: dict[str, Any] = {"stack": stack_record(target.stack_name, target.region, str(stack["StackStatus"]))}

    db_id = outputs.get("DatabaseInstanceId", "")
    db_status = _database_status(ctx, target, db_id)
    found["database"] = {"id": db_id, "status": db_status}
    if db_status in DB_SETTLING:
        waiting.append(f"database {db_id} is {db_status}")
    elif db_status != "available":
        raise StepError(f"database {db_id} is {db_status}", code="VerificationFailed")
    elapsed = (ctx.clock.now() - ctx.state_started_at).total_seconds()
    found["restored_from"] = _restored_from(ctx, target, db_id)
    if not found["restored_from"]["proven"] and (
            target.mode == "drill" or elapsed < RESTORE_EVENT_GRACE_SECONDS):
        waiting.append(str(found["restored_from"]["reason"]))

    healthy, states = _target_health(ctx, target, outputs.get("AgentTargetGroupArn", ""))
    found["targets"] = {"healthy": healthy, "states": states}
    if healthy == 0 or states.get("initial"):
        waiting.append(f"agent targets {states or 'none registered'}")

    if target.mode == "active":
        beat = _last_heartbeat(ctx, target)
        found["heartbeat_at"] = beat
        if beat is None:
            waiting.append(f"no JAMS heartbeat yet from {target.region}")

    if not waiting:
        restored = found["restored_from"]
        proof = (f"restored from {restored['source']}" if restored["proven"]
                 else f"restore UNPROVEN ({restored['reason']})")
        return Done({**found, "verified_at": now_iso(ctx.clock)},
                    note=f"database available, {proof}, {healthy} healthy agent(s)"
                         + (", heartbeats arriving" if target.mode == "active" else ""))
    if elapsed >= VERIFY_DEADLINE_SECONDS:
        raise StepError(f"not verified after {elapsed:.0f} s: " + "; ".join(waiting), code="VerificationFailed")
    # Heartbeats come once per interval: polling slower than that only adds to the RTO.
    poll = min(VERIFY_POLL_SECONDS, float(ctx.settings.heartbeat_interval_seconds))
    return NotReady(poll, note="; ".join(waiting), output=found)


def _database_status(ctx: StepContext, target: Target, db_id: str) -> str:
    if not db_id:
        raise StepError(f"stack {target.stack_name} has no DatabaseInstanceId output", code="VerificationFailed")
    instance = describe_instance(ctx.clients.client("rds", target.region), db_id)
    if instance is None:
        raise StepError(f"database {db_id} does not exist in {target.region}", code="VerificationFailed")
    return str(instance.get("DBInstanceStatus", "unknown"))


def _restored_from(ctx: StepContext, target: Target, db_id: str) -> dict[str, Any]:
    """The database's restore as RDS recorded it, checked against the recovery point the chain chose
    (``restore_snapshot``, or ``restore_time`` of ``restore_backups_arn`` for a point-in-time restore).

    A restore from anything else fails verification: the environment would serve the wrong data. RDS
    emits its events best effort (chalicelib/rds.py), so an event not (yet) there is no proof either way:
    ``proven`` false with the reason, which verify waits on for a while (a drill, whose point is the
    proof, until its deadline).
    """
    data = ctx.data
    # create_app_stack records restore_time exactly when it asked for a point-in-time restore.
    wanted_time = str(data.get("restore_time") or "")
    pitr = bool(wanted_time)
    wanted = (f"point in time {wanted_time} of {data.get('restore_backups_arn')}" if pitr
              else snapshot_name(str(data.get("restore_snapshot") or "")).lower())
    since = parse_iso(str(data["stack_requested_at"])) if data.get("stack_requested_at") else ctx.started_at
    events = restore_events(ctx.clients.client("rds", target.region), db_id, since=since, now=ctx.clock.now())
    if not events:
        return {"proven": False, "expected": wanted,
                "reason": f"no RDS restore event for database {db_id} yet (expected {wanted})"}
    event = events[-1]
    restored_to = isoformat(event.restored_to) if event.restored_to is not None else None
    if pitr:
        # RDS writes the time to the second or finer; the request named it to the second.
        matches = event.restored_to is not None and abs(
            (event.restored_to - parse_iso(wanted_time)).total_seconds()) < 1.0
    else:
        matches = event.restored_to is None and event.source.lower() == wanted
    if not matches:
        raise StepError(
            f"database {db_id} in {target.region} was restored from {event.kind} {event.source}"
            + (f" to {restored_to}" if restored_to else "")
            + f", not from the recovery point the chain chose ({wanted}); RDS event: {event.message!r}",
            code="VerificationFailed")
    return {"proven": True, "kind": event.kind, "source": event.source, "restored_to": restored_to,
            "event_at": isoformat(event.at), "message": event.message, "expected": wanted}


def _target_health(ctx: StepContext, target: Target, group_arn: str) -> tuple[int, dict[str, int]]:
    """Healthy targets of the agent pool. moto reports a registered, running instance as healthy and
    registers an Auto Scaling group's instances in its TargetGroupARNs, so the count is real there."""
    if not group_arn:
        raise StepError(f"stack {target.stack_name} has no AgentTargetGroupArn output", code="VerificationFailed")
    elbv2 = ctx.clients.client("elbv2", target.region)
    descriptions = elbv2.describe_target_health(TargetGroupArn=group_arn).get("TargetHealthDescriptions", [])
    states: dict[str, int] = {}
    for description in descriptions:
        state = str(description.get("TargetHealth", {}).get("State", "unknown"))
        states[state] = states.get(state, 0) + 1
    return states.get("healthy", 0), states


def _last_heartbeat(ctx: StepContext, target: Target) -> str | None:
    """Newest heartbeat (CONTRACT metric) from either scheduler in the target region, since the
    stack was requested and within the last few intervals; None when none arrived."""
    settings = ctx.settings
    now = ctx.clock.now()
    interval = settings.heartbeat_interval_seconds
    start = now - timedelta(seconds=max(5 * interval, 300))
    requested = ctx.data.get("stack_requested_at")
    if requested:
        start = max(start, parse_iso(str(requested)))
    newest = newest_beat(ctx.clients, target.region, settings.environment, interval, start, now)
    return isoformat(newest) if newest is not None else None


# ------------------------------------------------------------------------------- traffic


def switch_traffic(ctx: StepContext) -> StepResult:
    """Move the stable name jams.<zone> to the target region with data-plane calls only (docs/traffic.md).

    The failover pair, its health check and the alarm it follows were made at bootstrap (the traffic
    stack). The switch publishes ``PrimaryServes`` (0: the recovery region serves, 1: the primary does, a
    failback's target) in the recovery region, then waits until the alarm there is in the matching state:
    Route 53's health checkers read that alarm and its DNS answers follow, with no Route 53 API call
    (whose control plane is in us-east-1, a region this recovery may be recovering from).
    """
    settings = ctx.settings
    target = target_of(ctx)
    if target.mode == "drill":
        return Done(note="drill: traffic untouched")
    if not (settings.hosted_zone_id and settings.dns_zone_name):
        reason = ("no HOSTED_ZONE_ID/DNS_ZONE_NAME configured: traffic was not switched; point JAMS clients "
                  f"at the stack's EndpointDnsName output in {target.region}")
        # The point of no return is passed all the same: later failures must not undo the serving side.
        return Done({"traffic": {"switched": False, "reason": reason}, "traffic_switched": True},
                    note=reason, skipped=True)
    serves = traffic.PRIMARY_SERVES if target.region == settings.primary_region else traffic.RECOVERY_SERVES
    expected = traffic.ALARM_STATE_FOR[serves]
    region = settings.recovery_region
    alarm = traffic.switch_alarm_name(settings.environment)
    cloudwatch = ctx.clients.client("cloudwatch", region)
    # Published on every poll: the same value again changes nothing (Minimum), and a datum the alarm
    # evaluated before it was visible is not lost.
    cloudwatch.put_metric_data(Namespace=traffic.NAMESPACE,
                               MetricData=[traffic.metric_datum(settings.environment, serves)])
    found = cloudwatch.describe_alarms(AlarmNames=[alarm], AlarmTypes=["MetricAlarm"]).get("MetricAlarms", [])
    if not found:
        raise StepError(f"alarm {alarm} does not exist in {region}: the traffic stack "
                        f"{traffic.traffic_stack_name(settings.environment)} is missing; run `jams-dr bootstrap` "
                        "with HOSTED_ZONE_ID and DNS_ZONE_NAME set", code="SwitchFailed")
    state = str(found[0].get("StateValue", "INSUFFICIENT_DATA"))
    to = "PRIMARY" if serves == traffic.PRIMARY_SERVES else "SECONDARY"
    name = traffic.stable_name(settings.dns_zone_name)
    record = {"switched": True, "name": name, "to": to, "region": target.region,
              "alarm": alarm, "alarm_region": region, "alarm_state": state, "metric_value": serves,
              "published_at": ctx.data.get("traffic_published_at") or now_iso(ctx.clock)}
    if state != expected:
        return NotReady(SWITCH_POLL_SECONDS, note=f"{name}: {alarm} is {state}, waiting for {expected}",
                        output={"traffic_published_at": record["published_at"]})
    return Done({"traffic": record, "traffic_switched": True},
                note=f"{name} -> {to} ({target.region}): {alarm} {state} in {region}, no Route 53 call")


# ------------------------------------------------------------------------------- notify, report


def notify_done(ctx: StepContext) -> StepResult:
    """Tell the on-call what happened. A failure is announced once, by the engine, when the execution
    ends (with the retry/rollback commands); this step then records what was left behind instead."""
    aftermath = _aftermath(ctx)
    if ctx.data.get("failed"):
        return Done({"aftermath": aftermath}, note="failure notified when the execution ends")
    if ctx.data.get("stood_down"):
        return _notify_stood_down(ctx)
    execution = ledger_of(ctx).load(ctx.execution_id)
    start = execution.incident.get("failure_at") if execution.incident else None
    since = parse_iso(str(start)) if start else ctx.started_at
    elapsed = (ctx.clock.now() - since).total_seconds()
    stack = ctx.data.get("stack") or {}
    what = f"rollback of {ctx.data['rollback_of']}" if ctx.data.get("rollback_of") else ctx.kind
    lines = [
        f"{what} {ctx.execution_id} succeeded: {stack.get('name')} in {stack.get('region')} "
        f"is {stack.get('status')}.",
        f"Elapsed since {'the failure' if start else 'the start'}: {elapsed:.0f} s.",
        *aftermath,
        *_next_steps(ctx),
    ]
    delivery = ctx.notifier.deliver(f"jams-dr {what} {ctx.execution_id} succeeded", "\n".join(lines),
                                    kind="succeeded", key=f"{ctx.execution_id}#succeeded",
                                    execution_id=ctx.execution_id)
    if delivery.sent:
        return Done({"aftermath": aftermath, "notified_at": now_iso(ctx.clock)}, note="notified")
    # The execution did succeed: never fail it for the message. Record honestly where the message is.
    if delivery.queued:
        return Done({"aftermath": aftermath, "notified_at": None, "notification_queued": True},
                    note="succeeded; notification queued, SNS refused for now; re-sent by the watcher/sweeper")
    return Done({"aftermath": aftermath, "notified_at": None},
                note="succeeded, but the notification was NOT delivered (SNS and the ledger's outbox failed; "
                     "see the log)")


def _notify_stood_down(ctx: StepContext) -> StepResult:
    """The recovery was no longer needed: say so, and that nothing changed (fence_primary stood it down)."""
    reason = str(ctx.data["stood_down"])
    lines = [f"recovery {ctx.execution_id} stood down: {reason}.",
             "Nothing was fenced, created or switched; its lease is released.",
             "If the region must be recovered anyway (the schedulers beat but JAMS does not serve): "
             "jams-dr recover --force --reason TEXT",
             "Status: jams-dr status"]
    delivery = ctx.notifier.deliver(f"jams-dr recovery {ctx.execution_id} stood down: primary healthy again",
                                    "\n".join(lines), kind="notice", key=f"{ctx.execution_id}#stood-down",
                                    execution_id=ctx.execution_id)
    note = "stood down; notified" if delivery.sent else "stood down; notification queued for the watcher/sweeper"
    return Done({"notified_at": now_iso(ctx.clock) if delivery.sent else None}, note=note)


def _aftermath(ctx: StepContext) -> list[str]:
    data = ctx.data
    lines: list[str] = []
    stack = data.get("stack") or {}
    if stack.get("name") and stack.get("status") and stack.get("status") != "DELETE_COMPLETE":
        lines.append(f"Stack {stack['name']} in {stack.get('region')}: {stack['status']}.")
    if data.get("lease_held"):
        lines.append(f"Lease {data.get('lease')} (epoch {data.get('epoch')}) is held by {ctx.execution_id}.")
    if data.get("fence_pending"):
        lines.append("The old primary could not be fenced: the fence is pending and is enforced when "
                     f"{ctx.settings.primary_region} answers again.")
    elif data.get("stopped_instances"):
        lines.append(f"Old schedulers stopped and quarantined: {', '.join(data['stopped_instances'])}.")
    switched = data.get("traffic")
    if isinstance(switched, Mapping):
        if switched.get("switched"):
            lines.append(f"{switched.get('name')} answers its {switched.get('to')} record ({switched.get('region')}): "
                         f"alarm {switched.get('alarm')} is {switched.get('alarm_state')}.")
        else:
            lines.append(f"Traffic NOT switched: {switched.get('reason')}.")
    return lines


def _next_steps(ctx: StepContext) -> list[str]:
    if ctx.data.get("rollback_of"):
        return ["Next: nothing serves JAMS from the recovery region; start JAMS in the primary region when "
                "it answers, or start a new recovery (`jams-dr recover`)."]
    if ctx.kind == "recovery":
        return ["Next: check JAMS jobs and agents; when the primary region is healthy again run "
                "`jams-dr failback`."]
    if ctx.kind == "failback":
        db_id = (ctx.data.get("stack_outputs") or {}).get("DatabaseInstanceId")
        return [f"Next: the primary database is now {db_id}: if DB_INSTANCE_ID is set, set it to that id so "
                "the snapshot pipeline follows it; the recovery stack's final snapshot is kept as the last "
                "recovery point."]
    return ["Nothing of the drill is left running."]


def write_report(ctx: StepContext) -> StepResult:
    """Build the report (CONTRACT), store it in S3 and hand it to the engine for the ledger."""
    settings = ctx.settings
    execution = ledger_of(ctx).load(ctx.execution_id)
    item = dict(execution.item)
    data = dict(execution.data)
    data.setdefault("primary_region", settings.primary_region)
    data.setdefault("recovery_region", settings.recovery_region)
    item["data"] = data
    report = build_report(as_plain(item))
    output: dict[str, Any] = {"report": report}
    if settings.artifact_bucket:
        key = report_key(ctx.execution_id)
        ctx.clients.client("s3", settings.recovery_region).put_object(
            Bucket=settings.artifact_bucket, Key=key, ContentType="application/json",
            ServerSideEncryption="AES256", Body=json.dumps(report, indent=2).encode("utf-8"),
        )
        output["report_uri"] = f"s3://{settings.artifact_bucket}/{key}"
    return Done(output, note=f"{report['outcome']}: RTO {report['rto_seconds']} s, RPO {report['rpo_seconds']} s")
