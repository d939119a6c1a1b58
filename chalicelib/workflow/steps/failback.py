"""Failback: move JAMS from the recovery region back to the healthy primary region.

Order (each step idempotent):
  preflight_failback -> take_lease (taking over from the completed recovery) -> enforce_fence (no old
  primary may run) -> quiesce_recovery (stop the recovery region's schedulers, so no job writes after
  the snapshot: the failback loses no data; this is the planned interruption the report measures) ->
  snapshot_recovery_db -> wait_recovery_snapshot -> copy_to_primary -> wait_primary_copy ->
  retire_old_primary (delete the old primary application stack; DeletionPolicy Snapshot keeps its
  final snapshot) -> create_app_stack / wait_for_stack / verify / switch_traffic (shared steps, target
  = primary) -> retire_recovery_stack (its final snapshot is the last recovery point) -> release_lease.
On failure before traffic is switched back, ``resume_recovery`` starts the recovery region's
schedulers again, so a failed failback leaves JAMS serving where it was.

Copy key: no setting names a KMS key of the PRIMARY region, so copies back are always encrypted with
the primary region's AWS-managed key ``alias/aws/rds`` (fine for a same-account restore; it cannot be
shared cross-account). The option group is the inverse of OPTION_GROUP_MAP (recovery -> primary),
else the primary network stack's OptionGroupName output.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from chalicelib.aws import error_code, region_unanswered
from chalicelib.observability import logger
from chalicelib.rds import copy_request, copy_snapshot, create_snapshot, describe_snapshot, unprotect_instance
from chalicelib.stacks import TERMINAL_OK, describe_stack, outputs_of, parameters_of
from chalicelib.tags import (
    TAG_ENVIRONMENT,
    TAG_EPOCH,
    TAG_EXECUTION,
    TAG_FENCED_BY,
    TAG_KIND,
    TAG_ROLE,
    TAG_SOURCE_ARN,
    TAG_SOURCE_CREATED,
)
from chalicelib.workflow.model import Done, NotReady, StepContext, StepError, StepResult
from chalicelib.workflow.steps.common import (
    DELETE_POLL_SECONDS,
    app_parameter_overrides,
    app_template_body,
    check_images,
    created_by,
    instance_state,
    ledger_of,
    now_iso,
    snapshot_record,
    stack_database_id,
    stack_record,
    stack_resources,
    stack_role,
    template_parameters,
)
from chalicelib.workflow.steps.fence import delete_quarantine_groups

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_rds.type_defs import TagTypeDef

PRIMARY_COPY_KEY = "alias/aws/rds"
SNAPSHOT_POLL_SECONDS = 60.0
INSTANCE_POLL_SECONDS = 15.0


def failback_snapshot_id(environment: str, execution_id: str) -> str:
    """Deterministic, valid RDS identifier for this failback's snapshot (same in both regions)."""
    suffix = re.sub(r"[^a-z0-9]+", "-", execution_id.lower()).strip("-")
    return re.sub(r"-+", "-", f"{environment}-failback-{suffix}")[:255].rstrip("-")


# ------------------------------------------------------------------------------- preflight


def preflight_failback(ctx: StepContext) -> StepResult:
    """Primary answers, a recovered stack serves in the recovery region, the lease is free or held
    by a completed recovery, the template is valid. Changes nothing."""
    settings = ctx.settings
    primary_cfn = ctx.clients.client("cloudformation", settings.primary_region)
    try:
        network = describe_stack(primary_cfn, settings.network_stack_name)
    except Exception as exc:
        if region_unanswered(exc):
            raise StepError(f"{settings.primary_region} does not answer ({error_code(exc)}): fail back once "
                            "the primary region is healthy", code="PrimaryUnavailable") from exc
        raise
    if network is None or network["StackStatus"] not in TERMINAL_OK:
        status = None if network is None else network["StackStatus"]
        raise StepError(f"primary network stack {settings.network_stack_name} is {status}: the failback "
                        "builds on it; restore it first", code="PreflightFailed")

    recovery_cfn = ctx.clients.client("cloudformation", settings.recovery_region)
    recovered = describe_stack(recovery_cfn, settings.app_stack_name)
    if recovered is None or recovered["StackStatus"] not in TERMINAL_OK:
        status = None if recovered is None else recovered["StackStatus"]
        raise StepError(f"no recovered application stack {settings.app_stack_name} in "
                        f"{settings.recovery_region} ({status}): nothing to fail back", code="PreflightFailed")
    db_id = outputs_of(recovered).get("DatabaseInstanceId")
    if not db_id:
        raise StepError(f"{settings.app_stack_name} in {settings.recovery_region} has no DatabaseInstanceId",
                        code="PreflightFailed")

    previous = _lease_holder_to_take_over(ctx)
    declared = template_parameters(primary_cfn, settings, app_template_body(settings, ctx.clients))
    overrides = app_parameter_overrides(settings, ctx.clients, settings.primary_region, declared)
    check_images(ctx.clients, settings.primary_region, declared, overrides)
    old_primary = describe_stack(primary_cfn, settings.app_stack_name)
    return Done(
        {
            "primary_region": settings.primary_region,
            "recovery_region": settings.recovery_region,
            "recovery_stack": stack_record(settings.app_stack_name, settings.recovery_region,
                                           str(recovered["StackStatus"])),
            "recovery_db_instance_id": db_id,
            "recovery_option_group": parameters_of(recovered).get("OptionGroupName"),
            "lease_previous_holder": previous,
            "old_primary_stack": None if old_primary is None else str(old_primary["StackStatus"]),
            "stack": stack_record(settings.app_stack_name, settings.primary_region, None),
        },
        note=f"primary answers; {settings.app_stack_name} serves in {settings.recovery_region}",
    )


def _lease_holder_to_take_over(ctx: StepContext) -> str | None:
    ledger = ledger_of(ctx)
    lease = ledger.get_lease(ctx.kind)
    if lease is None or lease.holder is None or lease.holder == ctx.execution_id:
        return None
    holder = ledger.get(lease.holder)
    if holder is not None and holder.kind == "recovery" and holder.status == "succeeded":
        return lease.holder
    status = "unknown" if holder is None else f"{holder.kind} {holder.status}"
    raise StepError(f"the lease is held by {lease.holder} ({status}), not by a completed recovery: finish, "
                    "retry or roll back that execution first", code="LeaseHeld")


# ------------------------------------------------------------------------------- quiesce


def quiesce_recovery(ctx: StepContext) -> StepResult:
    """Stop the recovery region's schedulers (tagged with the epoch): writes stop before the snapshot."""
    settings = ctx.settings
    region = settings.recovery_region
    ids = _recovery_schedulers(ctx)
    ec2 = ctx.clients.client("ec2", region)
    instances = _describe(ec2, ids)
    live = [i for i, state in instances.items() if state in ("pending", "running")]
    if ids:
        ec2.create_tags(Resources=ids, Tags=[{"Key": TAG_FENCED_BY, "Value": ctx.execution_id},
                                             {"Key": TAG_EPOCH, "Value": str(ctx.data.get("epoch", 0))}])
    if live:
        ec2.stop_instances(InstanceIds=live)
    output: dict[str, Any] = {"quiesced_instances": ids,
                              "quiesced_at": ctx.data.get("quiesced_at") or now_iso(ctx.clock)}
    not_stopped = [i for i, state in _describe(ec2, ids).items() if state != "stopped"]
    if not_stopped:
        return NotReady(INSTANCE_POLL_SECONDS, note=f"waiting for {not_stopped} to stop", output=output)
    return Done(output, note=f"recovery schedulers stopped: {ids}")


def resume_recovery(ctx: StepContext) -> StepResult:
    """After a failed failback that had not switched traffic: start the recovery schedulers again."""
    if not ctx.data.get("failed") or ctx.data.get("traffic_switched"):
        return Done(note="nothing to resume")
    ids = [str(i) for i in ctx.data.get("quiesced_instances") or []]
    if not ids:
        return Done(note="no recovery scheduler was stopped")
    ec2 = ctx.clients.client("ec2", ctx.settings.recovery_region)
    stopped = [i for i, state in _describe(ec2, ids).items() if state == "stopped"]
    if stopped:
        ec2.start_instances(InstanceIds=stopped)
    return Done({"resumed_instances": stopped},
                note=f"failback failed before the switch: recovery schedulers started again {stopped}")


def _recovery_schedulers(ctx: StepContext) -> list[str]:
    """Schedulers of the recovered stack only (not a drill's): stack resources with a scheduler role."""
    settings = ctx.settings
    cfn = ctx.clients.client("cloudformation", settings.recovery_region)
    ids = stack_resources(cfn, settings.app_stack_name, "AWS::EC2::Instance")
    if not ids:
        return []
    ec2 = ctx.clients.client("ec2", settings.recovery_region)
    found: list[str] = []
    for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=ids):
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                tags = {t["Key"]: t.get("Value", "") for t in instance.get("Tags", [])}
                if tags.get(TAG_ROLE) in ("primary", "failover"):
                    found.append(str(instance["InstanceId"]))
    return sorted(found)


def _describe(ec2: EC2Client, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    states: dict[str, str] = {}
    for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=ids):
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                states[str(instance["InstanceId"])] = instance_state(instance)
    return states


# ------------------------------------------------------------------------------- snapshot + copy


def snapshot_recovery_db(ctx: StepContext) -> StepResult:
    """A manual snapshot of the recovery database, once writes stopped (deterministic id).

    Tagged with the environment and kind but NOT managed-by=jams-dr: the snapshot pipeline's pruning
    selects by that tag and must never remove a failback's snapshot.
    """
    settings = ctx.settings
    rds = ctx.clients.client("rds", settings.recovery_region)
    snapshot_id = failback_snapshot_id(settings.environment, ctx.execution_id)
    db_id = str(ctx.data["recovery_db_instance_id"])
    tags: list[TagTypeDef] = [{"Key": TAG_ENVIRONMENT, "Value": settings.environment},
            {"Key": TAG_KIND, "Value": "failback"},
            {"Key": TAG_EXECUTION, "Value": ctx.execution_id}]
    if create_snapshot(rds, db_id, snapshot_id, tags) is None:  # it exists: ours only if of this database
        existing = describe_snapshot(rds, snapshot_id)
        if existing is None or existing.get("DBInstanceIdentifier") != db_id:
            raise StepError(f"snapshot {snapshot_id} exists but is not of {db_id}", code="SnapshotConflict")
    return Done({"failback_snapshot_id": snapshot_id}, note=f"{snapshot_id} of {db_id} requested")


def wait_recovery_snapshot(ctx: StepContext) -> StepResult:
    rds = ctx.clients.client("rds", ctx.settings.recovery_region)
    return _wait_snapshot(rds, str(ctx.data["failback_snapshot_id"]), ctx.settings.recovery_region,
                          key="failback_source")


def copy_to_primary(ctx: StepContext) -> StepResult:
    """Copy the failback snapshot into the primary region (client in the DESTINATION region)."""
    settings = ctx.settings
    source = ctx.data["failback_source"]
    snapshot_id = str(ctx.data["failback_snapshot_id"])
    recovery_rds = ctx.clients.client("rds", settings.recovery_region)
    described = describe_snapshot(recovery_rds, snapshot_id)
    if described is None:
        raise StepError(f"failback snapshot {snapshot_id} vanished from {settings.recovery_region}",
                        code="SnapshotMissing")
    # The snapshot names its instance's option group; the recovered stack's parameter says the same
    # (and is all moto, which ignores OptionGroupName on instances made by CloudFormation, offers).
    recovery_group = str(described.get("OptionGroupName") or ctx.data.get("recovery_option_group") or "")
    option_group = _primary_option_group(ctx, recovery_group)
    request = copy_request(
        source_arn=str(source["arn"]),
        target_id=snapshot_id,
        source_region=settings.recovery_region,
        # Always encrypted (an unencrypted source becomes an encrypted copy): copies are never plain.
        kms_key_id=PRIMARY_COPY_KEY,
        copy_source_tags=False,
        tags=[{"Key": TAG_ENVIRONMENT, "Value": settings.environment},
              {"Key": TAG_KIND, "Value": "failback-copy"},
              {"Key": TAG_EXECUTION, "Value": ctx.execution_id},
              {"Key": TAG_SOURCE_ARN, "Value": str(source["arn"])},
              {"Key": TAG_SOURCE_CREATED, "Value": str(source.get("created_at") or "")}],
        option_group=option_group or None,
    )
    # None: the copy exists already (this step ran before).
    copy_snapshot(ctx.clients.client("rds", settings.primary_region), request)
    logger.info("failback copy requested", extra={"snapshot": snapshot_id, "option_group": option_group})
    return Done({"failback_copy_id": snapshot_id, "failback_option_group": option_group},
                note=f"copy of {snapshot_id} to {settings.primary_region} requested")


def _primary_option_group(ctx: StepContext, recovery_group: str) -> str | None:
    if not recovery_group or recovery_group.startswith("default:"):
        return None
    settings = ctx.settings
    inverse = {v: k for k, v in settings.option_group_map.items()}
    if recovery_group in inverse:
        return inverse[recovery_group]
    if settings.option_group_map:
        raise StepError(
            f"option group {recovery_group} of the recovery database has no primary-region counterpart in "
            f'OPTION_GROUP_MAP; add "<primary group>": "{recovery_group}" to it', code="OptionGroupUnmapped")
    network = describe_stack(ctx.clients.client("cloudformation", settings.primary_region),
                             settings.network_stack_name)
    group = outputs_of(network).get("OptionGroupName") if network else None
    if not group:
        raise StepError("no primary option group: set OPTION_GROUP_MAP or give the primary network stack an "
                        "OptionGroupName output", code="OptionGroupUnmapped")
    return group


def wait_primary_copy(ctx: StepContext) -> StepResult:
    rds = ctx.clients.client("rds", ctx.settings.primary_region)
    result = _wait_snapshot(rds, str(ctx.data["failback_copy_id"]), ctx.settings.primary_region,
                            key="snapshot")
    if isinstance(result, Done):
        return Done({**result.output, "restore_snapshot": str(ctx.data["failback_copy_id"])}, note=result.note)
    return result


def _wait_snapshot(rds: RDSClient, snapshot_id: str, region: str, *, key: str) -> StepResult:
    snapshot = describe_snapshot(rds, snapshot_id)
    if snapshot is None:
        raise StepError(f"snapshot {snapshot_id} does not exist in {region}", code="SnapshotMissing")
    status = str(snapshot.get("Status"))
    if status == "available":
        return Done({key: snapshot_record(snapshot)}, note=f"{snapshot_id} available in {region}")
    if status in ("creating", "copying", "pending"):
        progress = snapshot.get("PercentProgress")
        return NotReady(SNAPSHOT_POLL_SECONDS, note=f"{snapshot_id} {status} {progress or 0}%")
    raise StepError(f"snapshot {snapshot_id} in {region} is {status}", code="SnapshotFailed")


# ------------------------------------------------------------------------------- stacks


def retire_old_primary(ctx: StepContext) -> StepResult:
    """Delete the old primary application stack (its DeletionPolicy keeps a final snapshot).

    Never a stack this failback created (a re-run after a later state must not delete the new one).
    """
    settings = ctx.settings
    cfn = ctx.clients.client("cloudformation", settings.primary_region)
    stack = describe_stack(cfn, settings.app_stack_name)
    if stack is not None and created_by(stack, ctx.execution_id):
        return Done(note="the primary stack is already the one this failback built")
    if stack is not None:
        status = str(stack["StackStatus"])
        if status == "DELETE_IN_PROGRESS":
            return NotReady(DELETE_POLL_SECONDS, note=status)
        unprotect_instance(ctx.clients.client("rds", settings.primary_region), stack_database_id(cfn, stack))
        cfn.delete_stack(StackName=str(stack["StackId"]), **stack_role(settings))
        logger.info("old primary stack deletion requested", extra={"stack": settings.app_stack_name})
        # Small stacks can be gone at once: look again right away rather than after a full poll period.
        again = 0.0 if describe_stack(cfn, settings.app_stack_name) is None else DELETE_POLL_SECONDS
        return NotReady(again, note=f"deleting old {settings.app_stack_name} (was {status})")
    deleted = delete_quarantine_groups(settings, ctx.clients, settings.primary_region)
    return Done({"old_primary_stack": "DELETE_COMPLETE", "quarantine_groups_deleted": deleted},
                note=f"old {settings.app_stack_name} deleted from {settings.primary_region}")


def retire_recovery_stack(ctx: StepContext) -> StepResult:
    """Delete the recovery region's application stack; its final snapshot is the last recovery point.

    Only once traffic points back at the primary: before that this stack is what serves JAMS.
    """
    settings = ctx.settings
    if not ctx.data.get("traffic_switched"):
        raise StepError("traffic was not switched back to the primary: the recovery stack still serves "
                        "and is kept", code="SwitchFailed")
    cfn = ctx.clients.client("cloudformation", settings.recovery_region)
    stack = describe_stack(cfn, settings.app_stack_name)
    if stack is None:
        return Done({"recovery_stack": stack_record(settings.app_stack_name, settings.recovery_region,
                                                    "DELETE_COMPLETE")},
                    note=f"{settings.app_stack_name} deleted from {settings.recovery_region}; its final "
                         "snapshot is kept as the last recovery point")
    status = str(stack["StackStatus"])
    record = {"recovery_stack": stack_record(settings.app_stack_name, settings.recovery_region, status)}
    if status != "DELETE_IN_PROGRESS":
        unprotect_instance(ctx.clients.client("rds", settings.recovery_region), stack_database_id(cfn, stack))
        cfn.delete_stack(StackName=str(stack["StackId"]), **stack_role(settings))
        logger.info("recovery stack deletion requested", extra={"stack": settings.app_stack_name})
        if describe_stack(cfn, settings.app_stack_name) is None:  # gone at once: no need to wait a period
            return NotReady(0.0, note=f"{settings.app_stack_name} deleted", output=record)
    return NotReady(DELETE_POLL_SECONDS, output=record,
                    note=f"deleting {settings.app_stack_name} in {settings.recovery_region} (was {status})")
