"""Fencing the old primary: the recovered environment must be the only JAMS that runs jobs.

JAMS lets an old primary "regain control" when it returns (JAMS High Availability,
https://www.jamsscheduler.com/product/features/high-availability/): two live schedulers would
run every job twice. So the recovery stops the old schedulers when their region answers, and when it
does not, records a pending fence (ledger item ``fence#<env>``) that the sweeper, the watcher and the
failback enforce before anything else once the region is back.

A fence is two things, so that one failing does not undo the other:
- the schedulers are tagged with the execution and its lease epoch (the fencing token) and stopped;
- network fencing: each scheduler is moved into an empty quarantine security group (no ingress, no
  egress), so even a scheduler someone starts again reaches neither the agents nor the database.
  The shared security groups of the network stack are left alone on purpose: the failback builds the
  new primary on the same network stack and needs them intact. The original groups are kept in the
  tag ``jams-dr:original-groups`` for an operator who wants the old host back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib.aws import ClientFactory, error_code, region_unanswered
from chalicelib.clock import Clock
from chalicelib.detection.heartbeats import SCHEDULERS, copy_regions, merge_missed, read_copy
from chalicelib.observability import logger
from chalicelib.settings import Settings
from chalicelib.tags import TAG_ENVIRONMENT, TAG_EPOCH, TAG_FENCED_BY, TAG_ORIGINAL_GROUPS
from chalicelib.workflow.ledger import Ledger
from chalicelib.workflow.model import Done, StepContext, StepError, StepResult
from chalicelib.workflow.steps.common import instance_state, ledger_of, scheduler_instances

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

LIVE_STATES = ("pending", "running")
FENCEABLE_STATES = ("pending", "running", "stopping", "stopped")


def quarantine_group_name(environment: str) -> str:
    return f"jams-dr-fence-{environment}"


@dataclass
class FenceResult:
    stopped: list[str] = field(default_factory=list)
    fenced: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)


def fence_schedulers(
    settings: Settings, clients: ClientFactory, *, region: str, fenced_by: str, epoch: int,
    quarantine: bool = True,
) -> FenceResult:
    """Tag, quarantine and stop every scheduler of the environment in ``region`` (idempotent)."""
    ec2 = clients.client("ec2", region)
    instances = scheduler_instances(ec2, settings.environment, states=FENCEABLE_STATES)
    result = FenceResult(fenced=sorted(str(i["InstanceId"]) for i in instances))
    if not instances:
        return result
    _tag_fence(ec2, instances, fenced_by, epoch)
    if quarantine:
        result.quarantined = _quarantine(ec2, instances, settings.environment)
    live = sorted(str(i["InstanceId"]) for i in instances if instance_state(i) in LIVE_STATES)
    if live:
        ec2.stop_instances(InstanceIds=live)
        logger.info("schedulers stopped", extra={"region": region, "instances": live, "epoch": epoch})
    result.stopped = live
    return result


def fence_primary(ctx: StepContext) -> StepResult:
    """Stop the old primary's schedulers; if its region does not answer, leave a pending fence.

    Never a scheduler whose heartbeats are current while its region answers, whatever started the chain
    (a late approval, a duplicate trigger, an operator's mistake): the recovery is no longer needed, so it
    stands down before anything changed and frees its lease. Only an operator's ``--force`` fences anyway.
    """
    epoch = int(ctx.data["epoch"])
    settings = ctx.settings
    if not ctx.data.get("force"):
        alive = current_schedulers(ctx)
        if alive:
            return _stand_down(ctx, alive)
    try:
        result = fence_schedulers(settings, ctx.clients, region=settings.primary_region,
                                  fenced_by=ctx.execution_id, epoch=epoch)
    except Exception as exc:
        if not region_unanswered(exc):
            raise
        ledger_of(ctx).put_fence(ctx.execution_id, epoch, settings.primary_region, ())
        logger.warning("primary unreachable: fence pending",
                       extra={"execution_id": ctx.execution_id, "error": error_code(exc)})
        return Done(
            {"fence_pending": True, "fenced_instances": [], "stopped_instances": []},
            note=f"{settings.primary_region} does not answer ({error_code(exc)}): fence recorded as "
                 "pending, enforced when the region returns",
        )
    return Done(
        {"fence_pending": False, "fenced_instances": result.fenced, "stopped_instances": result.stopped},
        note=f"stopped {len(result.stopped)}, quarantined {len(result.quarantined)} of "
             f"{len(result.fenced)} scheduler(s) in {settings.primary_region}",
    )


def current_schedulers(ctx: StepContext) -> list[str]:
    """Schedulers of the primary region beating now, if that region answers; else [].

    Read in the primary region's copy of the heartbeats; the recovery region's copy only when that one
    cannot be read: the recovery region's copy also holds the beats of a JAMS recovered there earlier
    (same metric and dimensions), which must not pass for the old primary's.
    """
    settings = ctx.settings
    primary, recovery = copy_regions(settings)
    evidence = read_copy(ctx.clients, primary, settings.environment, settings.heartbeat_interval_seconds, ctx.clock,
                         lookback=settings.missed_beat_threshold + 3)
    if not evidence.readable:  # read the recovery region's copy only when it is needed
        evidence = read_copy(ctx.clients, recovery, settings.environment, settings.heartbeat_interval_seconds,
                             ctx.clock, lookback=settings.missed_beat_threshold + 3)
    beating: list[str] = [s for s in SCHEDULERS
                          if (missed := merge_missed((evidence,), s)) is not None
                          and missed < settings.missed_beat_threshold]
    if not beating:
        return []
    try:
        # The same EC2 read a fence starts with: if it does not answer, the fence is pending anyway.
        scheduler_instances(ctx.clients.client("ec2", settings.primary_region), settings.environment,
                            states=FENCEABLE_STATES)
    except Exception as exc:
        if region_unanswered(exc):
            return []
        raise
    return beating


def _stand_down(ctx: StepContext, alive: list[str]) -> StepResult:
    released = ledger_of(ctx).release_lease(ctx.execution_id, ctx.kind)
    reason = (f"primary healthy again: the {' and '.join(alive)} scheduler(s) in {ctx.settings.primary_region} beat "
              "and the region answers")
    logger.warning("recovery stands down", extra={"execution_id": ctx.execution_id, "alive": alive})
    return Done(
        {"stood_down": reason, "fence_pending": False, "fenced_instances": [], "stopped_instances": [],
         "lease_held": not released},
        note=f"{reason}; nothing was fenced or created, lease released. To recover anyway: jams-dr recover --force",
        goto="notify",
    )


def enforce_pending_fence(settings: Settings, clients: ClientFactory, clock: Clock) -> list[str]:
    """Enforce the pending fence, if any, once the primary answers; returns the instance ids stopped.

    Called first by the sweeper, the watcher and the failback. Stops every running scheduler of the
    environment in the fenced region, quarantines them all, then clears the item (only the item of
    that epoch: a newer fence recorded meanwhile stays). A region still down leaves the item.
    """
    ledger = Ledger(settings, clients, clock)
    fence = ledger.get_fence()
    if fence is None:
        return []
    try:
        result = fence_schedulers(settings, clients, region=fence.region, fenced_by=fence.execution_id,
                                  epoch=fence.epoch)
    except Exception as exc:
        if not region_unanswered(exc):
            raise
        logger.info("pending fence waits for its region",
                    extra={"region": fence.region, "error": error_code(exc), "epoch": fence.epoch})
        return []
    ledger.clear_fence(fence.epoch)
    logger.info("pending fence enforced", extra={
        "region": fence.region, "execution_id": fence.execution_id, "epoch": fence.epoch,
        "stopped": result.stopped, "quarantined": result.quarantined})
    return result.stopped


def enforce_fence(ctx: StepContext) -> StepResult:
    """Failback: no old primary may run when the new one starts. Pending fence first, then all."""
    settings = ctx.settings
    try:
        stopped = enforce_pending_fence(settings, ctx.clients, ctx.clock)
        result = fence_schedulers(settings, ctx.clients, region=settings.primary_region,
                                  fenced_by=ctx.execution_id, epoch=int(ctx.data["epoch"]))
    except Exception as exc:
        if region_unanswered(exc):
            raise StepError(f"{settings.primary_region} does not answer ({error_code(exc)}): a failback "
                            "needs the primary region healthy", code="Unreachable") from exc
        raise
    if ledger_of(ctx).get_fence() is not None:
        raise StepError("the pending fence of the old primary could not be enforced: its region does not "
                        "answer yet", code="Unreachable")
    return Done({"fenced_instances": result.fenced,
                 "stopped_instances": sorted({*stopped, *result.stopped})},
                note=f"old primary fenced: {len(result.fenced)} scheduler(s)")


# ------------------------------------------------------------------------------- plumbing


def _tag_fence(ec2: EC2Client, instances: Iterable[dict[str, Any]], fenced_by: str, epoch: int) -> None:
    """Tag with the fencing token, never lowering the epoch a newer execution wrote."""
    to_tag = []
    for instance in instances:
        tags = {t["Key"]: t.get("Value", "") for t in instance.get("Tags", [])}
        try:
            current = int(tags.get(TAG_EPOCH, "0"))
        except ValueError:
            current = 0
        if current <= epoch:
            to_tag.append(str(instance["InstanceId"]))
    if to_tag:
        ec2.create_tags(Resources=to_tag, Tags=[{"Key": TAG_FENCED_BY, "Value": fenced_by},
                                                 {"Key": TAG_EPOCH, "Value": str(epoch)}])


def _quarantine(ec2: EC2Client, instances: Iterable[dict[str, Any]], environment: str) -> list[str]:
    by_vpc: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for instance in instances:
        if instance.get("VpcId"):
            by_vpc[str(instance["VpcId"])].append(instance)
    moved: list[str] = []
    for vpc_id, members in by_vpc.items():
        group = _quarantine_group(ec2, vpc_id, environment)
        for instance in members:
            instance_id = str(instance["InstanceId"])
            groups = _groups_of(instance)
            if groups == [group]:
                continue
            tags = {t["Key"] for t in instance.get("Tags", [])}
            if TAG_ORIGINAL_GROUPS not in tags and groups:
                ec2.create_tags(Resources=[instance_id],
                                Tags=[{"Key": TAG_ORIGINAL_GROUPS, "Value": ",".join(groups)}])
            ec2.modify_instance_attribute(InstanceId=instance_id, Groups=[group])
            moved.append(instance_id)
    return moved


def _groups_of(instance: dict[str, Any]) -> list[str]:
    """The instance's security groups (its own list, else its network interfaces')."""
    groups = [str(g["GroupId"]) for g in instance.get("SecurityGroups", [])]
    if not groups:
        for interface in instance.get("NetworkInterfaces", []):
            groups.extend(str(g["GroupId"]) for g in interface.get("Groups", []) if g["GroupId"] not in groups)
    return groups


def _quarantine_group(ec2: EC2Client, vpc_id: str, environment: str) -> str:
    """The environment's empty security group in ``vpc_id`` (created once; no ingress, no egress)."""
    name = quarantine_group_name(environment)
    group = _find_group(ec2, vpc_id, name)
    if group is None:
        try:
            created = ec2.create_security_group(
                GroupName=name, VpcId=vpc_id,
                Description=f"jams-dr fence of {environment}: no traffic in or out",
                TagSpecifications=[{"ResourceType": "security-group", "Tags": [
                    {"Key": "managed-by", "Value": "jams-dr"},
                    {"Key": TAG_ENVIRONMENT, "Value": environment}]}],
            )
            # A new group allows all egress by default.
            group = {"GroupId": created["GroupId"],
                     "IpPermissionsEgress": [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}
        except ClientError as exc:
            if error_code(exc) != "InvalidGroup.Duplicate":
                raise
            group = _find_group(ec2, vpc_id, name)
            if group is None:
                raise
    # Closed whenever found open, not only right after creating it: a run that died between creating
    # the group and revoking its default egress left it open, and its re-run finds it (fault suite).
    if group.get("IpPermissionsEgress"):
        try:
            ec2.revoke_security_group_egress(GroupId=group["GroupId"], IpPermissions=group["IpPermissionsEgress"])
        except ClientError as exc:
            if error_code(exc) != "InvalidPermission.NotFound":
                raise
    return str(group["GroupId"])


def _find_group(ec2: EC2Client, vpc_id: str, name: str) -> dict[str, Any] | None:
    answer = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}]
    )
    groups = answer.get("SecurityGroups", [])
    return dict(groups[0]) if groups else None


def delete_quarantine_groups(settings: Settings, clients: ClientFactory, region: str) -> list[str]:
    """Remove the quarantine groups of ``region`` once no instance uses them (failback cleanup)."""
    ec2 = clients.client("ec2", region)
    answer = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [quarantine_group_name(settings.environment)]}]
    )
    deleted: list[str] = []
    for group in answer.get("SecurityGroups", []):
        try:
            ec2.delete_security_group(GroupId=group["GroupId"])
            deleted.append(str(group["GroupId"]))
        except ClientError as exc:
            if error_code(exc) == "InvalidGroup.NotFound":
                continue
            # Still attached (an instance not yet terminated): leave it for the next run, say so.
            logger.warning("quarantine group kept", extra={"group": group["GroupId"], "error": error_code(exc)})
    return deleted
