"""The RDS gateway: every RDS call of the snapshot pipeline and of the recovery, drill and failback steps.

Thin functions over an RDS client (the caller picks the region). One convention for what is absent or
already there, so no caller matches RDS error codes itself:

- a describe answers None when the instance or snapshot does not exist (DBInstanceNotFound,
  DBSnapshotNotFound);
- a delete answers False when the snapshot was already gone;
- a create or copy answers None when the snapshot already exists (a concurrent tick or a re-run step
  made it);

every other error goes through with its AWS code. What an absent instance or snapshot means is each
caller's decision: a step raises its StepError, the pipeline its AwsError, with their own codes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib import retention
from chalicelib.aws import error_code
from chalicelib.snapshots.quota import MANUAL_SNAPSHOTS_QUOTA_NAME, QuotaReading
from chalicelib.snapshots.rules import Snap, snap_from_description

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_rds.type_defs import TagTypeDef

PAGE_SIZE = 100
# Manual DB snapshots per region and account, by default. Defined with jams-dr's budget against it in
# chalicelib/retention.py (pure, so the settings, a foundation module, validate with it);
# manual_snapshot_quota below reads the account's real quota and usage.
DEFAULT_MANUAL_SNAPSHOT_QUOTA = retention.DEFAULT_MANUAL_SNAPSHOT_QUOTA
# The codes RDS answers with (botocore names the exceptions ...Fault; both spellings are matched).
INSTANCE_NOT_FOUND = frozenset({"DBInstanceNotFound", "DBInstanceNotFoundFault"})
SNAPSHOT_NOT_FOUND = frozenset({"DBSnapshotNotFound", "DBSnapshotNotFoundFault"})
SNAPSHOT_EXISTS = frozenset({"DBSnapshotAlreadyExists", "DBSnapshotAlreadyExistsFault"})
BACKUP_NOT_FOUND = frozenset({"DBInstanceAutomatedBackupNotFound", "DBInstanceAutomatedBackupNotFoundFault"})

_COPY_LIMIT_CODES = frozenset(
    {"SnapshotQuotaExceeded", "SnapshotQuotaExceededFault", "QuotaExceeded", "LimitExceeded", "LimitExceededException"}
)
_COPY_LIMIT_MESSAGE = re.compile(r"cannot copy more than \d+ snapshots|quota|too many .*copies", re.IGNORECASE)
_ARN_SNAPSHOT = re.compile(r"^arn:aws[a-z-]*:rds:(?P<region>[a-z0-9-]+):\d{12}:snapshot:(?P<name>.+)$")


def is_copy_limit(exc: BaseException) -> bool:
    """The destination has too many copies in flight or the snapshot quota is reached (docs/aws-facts.md,
    "Cross-region snapshot copy: limits and queueing")."""
    if not isinstance(exc, ClientError):
        return False
    if error_code(exc) in _COPY_LIMIT_CODES:
        return True
    message = str(exc.response.get("Error", {}).get("Message", ""))
    return bool(_COPY_LIMIT_MESSAGE.search(message))


def already_exists(exc: BaseException) -> bool:
    return error_code(exc) in SNAPSHOT_EXISTS


# --- DB instances ---------------------------------------------------------------------------------


def describe_instance(rds: RDSClient, db_instance_id: str) -> dict[str, Any] | None:
    """The instance, or None when it does not exist."""
    try:
        instances = rds.describe_db_instances(DBInstanceIdentifier=db_instance_id)["DBInstances"]
    except ClientError as exc:
        if error_code(exc) in INSTANCE_NOT_FOUND:
            return None
        raise
    return dict(instances[0]) if instances else None


def instance_option_group(instance: Mapping[str, Any]) -> str | None:
    for membership in instance.get("OptionGroupMemberships", []):
        name = membership.get("OptionGroupName")
        if name:
            return str(name)
    return None


def unprotect_instance(rds: RDSClient, db_instance_id: str | None) -> bool:
    """Turn off DeletionProtection (on for Mode=active databases) so its stack can be deleted.

    The stack's DeletionPolicy Snapshot still keeps a final snapshot. True when changed; False when
    there is no such instance or it was not protected.
    """
    if not db_instance_id:
        return False
    instance = describe_instance(rds, db_instance_id)
    if instance is None or not instance.get("DeletionProtection"):
        return False
    rds.modify_db_instance(DBInstanceIdentifier=db_instance_id, DeletionProtection=False, ApplyImmediately=True)
    return True


def start_backup_replication(rds: RDSClient, request: Mapping[str, Any]) -> bool:
    """StartDBInstanceAutomatedBackupsReplication (client in the recovery region); False when the
    replication already exists (two ticks racing)."""
    try:
        rds.start_db_instance_automated_backups_replication(**request)
    except ClientError as exc:
        if "AlreadyExists" in error_code(exc):
            return False
        raise
    return True


# --- replicated automated backups (the point-in-time tier, docs/pitr.md) -----------------------------


def replicated_backups(
    rds: RDSClient, *, source_region: str, db_instance_id: str | None = None
) -> list[dict[str, Any]]:
    """The automated backups in the client's region replicated from ``source_region`` (of
    ``db_instance_id`` when given), page by page. Read in the recovery region only: it answers while the
    source region is down (DescribeDBInstanceAutomatedBackups, filter ``db-instance-id``)."""
    args: dict[str, Any] = {"PaginationConfig": {"PageSize": PAGE_SIZE}}
    if db_instance_id:
        args["Filters"] = [{"Name": "db-instance-id", "Values": [db_instance_id]}]
    found: list[dict[str, Any]] = []
    for page in rds.get_paginator("describe_db_instance_automated_backups").paginate(**args):
        for backup in page.get("DBInstanceAutomatedBackups", []):
            if backup.get("DBInstanceAutomatedBackupsArn") and backup.get("Region") == source_region:
                found.append(dict(backup))
    return found


def describe_replicated_backup(rds: RDSClient, arn: str) -> dict[str, Any] | None:
    """The replicated automated backup ``arn``, or None when it does not exist (any more)."""
    try:
        found = rds.describe_db_instance_automated_backups(DBInstanceAutomatedBackupsArn=arn)
    except ClientError as exc:
        if error_code(exc) in BACKUP_NOT_FOUND:
            return None
        raise
    backups = found.get("DBInstanceAutomatedBackups", [])
    return dict(backups[0]) if backups else None


# --- the account ----------------------------------------------------------------------------------


def manual_snapshot_quota(rds: RDSClient) -> QuotaReading | None:
    """The region's ManualSnapshots quota: manual snapshots used (whoever made them) and the quota, from
    DescribeAccountAttributes (RDS API reference, DescribeAccountAttributes / AccountQuota); None when the
    answer does not list it."""
    for entry in rds.describe_account_attributes().get("AccountQuotas", []):
        if entry.get("AccountQuotaName") == MANUAL_SNAPSHOTS_QUOTA_NAME:
            return QuotaReading(used=int(entry.get("Used", 0)), max=int(entry.get("Max", 0)))
    return None


# --- snapshots ------------------------------------------------------------------------------------


def snapshot_name(identifier: str) -> str:
    """Snapshot identifier from an identifier or an ARN."""
    match = _ARN_SNAPSHOT.match(identifier)
    return match.group("name") if match else identifier


def describe_snapshot(rds: RDSClient, identifier: str) -> dict[str, Any] | None:
    """The snapshot named by an identifier or an ARN, or None when it does not exist."""
    try:
        found = rds.describe_db_snapshots(DBSnapshotIdentifier=snapshot_name(identifier))["DBSnapshots"]
    except ClientError as exc:
        if error_code(exc) in SNAPSHOT_NOT_FOUND:
            return None
        raise
    return dict(found[0]) if found else None


def manual_snapshots(
    rds: RDSClient, *, db_instance_id: str | None = None, page_size: int | None = PAGE_SIZE
) -> Iterator[dict[str, Any]]:
    """Every manual snapshot (of ``db_instance_id`` when given), page by page; each description carries
    its TagList, so no call per snapshot. ``page_size`` None: RDS's default page."""
    args: dict[str, Any] = {"SnapshotType": "manual"}
    if page_size is not None:
        args["PaginationConfig"] = {"PageSize": page_size}
    if db_instance_id:
        args["DBInstanceIdentifier"] = db_instance_id
    for page in rds.get_paginator("describe_db_snapshots").paginate(**args):
        for desc in page.get("DBSnapshots", []):
            yield dict(desc)


def list_snapshots(
    rds: RDSClient, region: str, environment: str, *, db_instance_id: str | None = None
) -> list[Snap]:
    """The pipeline's manual snapshots in ``region`` (tags decide; DescribeDBSnapshots returns the TagList).

    One call per page of 100, never one per snapshot: the tags come with the listing.
    """
    found: list[Snap] = []
    for desc in manual_snapshots(rds, db_instance_id=db_instance_id):
        snap = snap_from_description(desc, region, environment)
        if snap is not None:
            found.append(snap)
    return found


def create_snapshot(
    rds: RDSClient, db_instance_id: str, snapshot_id: str, tags: Sequence[TagTypeDef]
) -> dict[str, Any] | None:
    """CreateDBSnapshot's answer, or None when ``snapshot_id`` already exists."""
    try:
        answer = rds.create_db_snapshot(
            DBInstanceIdentifier=db_instance_id, DBSnapshotIdentifier=snapshot_id, Tags=tags
        )
    except ClientError as exc:
        if already_exists(exc):
            return None
        raise
    return dict(answer)


def tag_snapshot(rds: RDSClient, arn: str, tags: Sequence[TagTypeDef]) -> None:
    rds.add_tags_to_resource(ResourceName=arn, Tags=tags)


def delete_snapshot(rds: RDSClient, snapshot_id: str) -> bool:
    """Delete; False when it was already gone (a concurrent tick got there first)."""
    try:
        rds.delete_db_snapshot(DBSnapshotIdentifier=snapshot_id)
    except ClientError as exc:
        if error_code(exc) in SNAPSHOT_NOT_FOUND:
            return False
        raise
    return True


# --- the cross-region copy ------------------------------------------------------------------------


def copy_request(
    *,
    source_arn: str,
    target_id: str,
    source_region: str,
    kms_key_id: str,
    copy_source_tags: bool,
    tags: Sequence[TagTypeDef],
    option_group: str | None = None,
) -> dict[str, Any]:
    """CopyDBSnapshot arguments for a copy into the region of the client that will send them
    (docs/aws-facts.md, "Cross-region snapshot copy: the request").

    The pipeline (primary -> recovery) and the failback (recovery -> primary) differ only in what they
    pass: the key, whether the source's tags are copied (CopyTags), the copy's tags and the option group
    (None: the request names none).
    """
    request: dict[str, Any] = {
        "SourceDBSnapshotIdentifier": source_arn,
        "TargetDBSnapshotIdentifier": target_id,
        # boto3 turns SourceRegion into the presigned URL an encrypted cross-region copy needs.
        "SourceRegion": source_region,
        "CopyTags": copy_source_tags,
        "Tags": list(tags),
        # Always a key: a KmsKeyId on an unencrypted source encrypts the copy (RDS allows it), so a copy
        # never sits in the destination region in the clear.
        "KmsKeyId": kms_key_id,
    }
    if option_group is not None:
        request["OptionGroupName"] = option_group
    return request


def copy_snapshot(rds: RDSClient, request: Mapping[str, Any]) -> dict[str, Any] | None:
    """Send a ``copy_request`` with a client in the DESTINATION region: CopyDBSnapshot's answer, or None
    when the target snapshot already exists. Any other refusal (a copy limit: ``is_copy_limit``) goes
    through."""
    try:
        answer = rds.copy_db_snapshot(**request)
    except ClientError as exc:
        if already_exists(exc):
            return None
        raise
    return dict(answer)


# --- how an instance was restored -----------------------------------------------------------------

# DB instance events of the restoration category (RDS User Guide, "Amazon RDS event categories and event
# messages"): RDS-EVENT-0043 "Restored from snapshot <name>" and RDS-EVENT-0019 "Restored from DB instance
# <source> to <time>", the time in UTC as "2022-11-14 15:12:00.05". RDS emits events on a best-effort
# basis (User Guide, "Monitoring Amazon RDS events"): one may be missing, never invented.
_RESTORED_FROM_SNAPSHOT = re.compile(r"^Restored from snapshot (?P<source>\S+?)\.?$")
_RESTORED_TO_TIME = re.compile(
    r"^Restored from DB instance (?P<source>\S+) to (?P<time>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?)Z?\.?$")
# DescribeEvents answers the past hour unless told otherwise, and keeps 14 days (RDS API reference,
# DescribeEvents: Duration "Default: 60"; events are kept 14 days).
EVENTS_KEPT = timedelta(days=14)
# Lambda's clock and RDS's may disagree by a little; an event stamped just before the stack request is ours.
_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class RestoreEvent:
    """One restoration event of an instance: from a snapshot (``restored_to`` None) or to a point in time."""

    source: str  # the snapshot's name, or the DB instance whose backups were restored
    restored_to: datetime | None
    at: datetime | None
    message: str

    @property
    def kind(self) -> str:
        return "snapshot" if self.restored_to is None else "point-in-time"


def parse_restore_event(event: Mapping[str, Any]) -> RestoreEvent | None:
    """A DescribeEvents entry as a RestoreEvent, or None when it is not a restoration."""
    message = str(event.get("Message", "")).strip()
    at = event.get("Date") if isinstance(event.get("Date"), datetime) else None
    snapshot = _RESTORED_FROM_SNAPSHOT.match(message)
    if snapshot:
        return RestoreEvent(snapshot_name(snapshot.group("source")), None, at, message)
    pitr = _RESTORED_TO_TIME.match(message)
    if pitr:
        moment = datetime.fromisoformat(pitr.group("time").replace(" ", "T")).replace(tzinfo=UTC)
        return RestoreEvent(pitr.group("source"), moment, at, message)
    return None


def restore_events(rds: RDSClient, db_instance_id: str, *, since: datetime, now: datetime) -> list[RestoreEvent]:
    """The restoration events of ``db_instance_id`` since ``since`` (bounded to the 14 days RDS keeps
    before ``now``), oldest first. Without a StartTime DescribeEvents would answer only the last hour,
    and a SQL Server restore takes hours."""
    start = max(since - _CLOCK_SKEW, now - EVENTS_KEPT + _CLOCK_SKEW)
    found: list[RestoreEvent] = []
    pages = rds.get_paginator("describe_events").paginate(
        SourceType="db-instance", SourceIdentifier=db_instance_id, StartTime=start)
    for page in pages:
        for event in page.get("Events", []):
            parsed = parse_restore_event(event)
            if parsed is not None:
                found.append(parsed)
    return found
