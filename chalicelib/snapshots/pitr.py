"""The point-in-time recovery tier (docs/pitr.md): the primary database's automated backups, replicated
to the recovery region, as a recovery point.

RDS replicates the snapshots and transaction logs of the primary database to the recovery region
(RDS User Guide, "Replicating automated backups to another AWS Region"). The newest point a restore can
reach is the replicated backup's ``RestoreWindow.LatestTime`` (DBInstanceAutomatedBackup, RDS API
reference): it trails the primary by the log shipping (about five minutes) and stops moving when the
primary region is lost. Everything here reads the recovery region only, so it answers in a disaster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chalicelib.aws import ClientFactory
from chalicelib.rds import describe_replicated_backup, replicated_backups
from chalicelib.settings import Settings

# Statuses of a replicated backup that still receives the source's logs (DescribeDBInstanceAutomatedBackups:
# "replicating" while replication runs, "active" for a current instance's own backups).
USABLE_STATUSES = frozenset({"replicating", "active"})


@dataclass(frozen=True)
class ReplicatedBackup:
    """What the tier decides on, from one DBInstanceAutomatedBackup description."""

    arn: str
    status: str
    earliest: datetime | None
    latest: datetime | None
    encrypted: bool
    kms_key_id: str

    @classmethod
    def of(cls, description: Mapping[str, Any]) -> ReplicatedBackup:
        window = description.get("RestoreWindow") or {}
        earliest, latest = window.get("EarliestTime"), window.get("LatestTime")
        return cls(
            arn=str(description.get("DBInstanceAutomatedBackupsArn", "")),
            status=str(description.get("Status", "")),
            earliest=earliest if isinstance(earliest, datetime) else None,
            latest=latest if isinstance(latest, datetime) else None,
            encrypted=bool(description.get("Encrypted")),
            kms_key_id=str(description.get("KmsKeyId") or ""),
        )


def find_replicated_backup(
    settings: Settings, clients: ClientFactory, db_instance_id: str | None
) -> tuple[ReplicatedBackup | None, str]:
    """The replicated backup of the primary database in the recovery region, or None and why not.

    Without ``db_instance_id`` (DB_INSTANCE_ID empty and the primary region unreadable) the one backup
    replicated from the primary region is taken; several are ambiguous.
    """
    rds = clients.client("rds", settings.recovery_region)
    found = [ReplicatedBackup.of(b) for b in replicated_backups(
        rds, source_region=settings.primary_region, db_instance_id=db_instance_id)]
    what = f"database {db_instance_id}" if db_instance_id else "the primary database"
    if not found:
        return None, (f"no automated backups of {what} are replicated from {settings.primary_region} to "
                      f"{settings.recovery_region} (BACKUP_REPLICATION=true starts it at the next snapshot tick)")
    if not db_instance_id and len(found) > 1:
        return None, (f"{len(found)} replicated backups from {settings.primary_region} in "
                      f"{settings.recovery_region}: set DB_INSTANCE_ID to choose the JAMS database's")
    # A stopped replication leaves a retained backup beside a live one: the live one, with the newest point.
    best = max(found, key=lambda b: (b.status in USABLE_STATUSES, b.latest or datetime.min.replace(tzinfo=UTC)))
    return best, ""


def read_replicated_backup(clients: ClientFactory, region: str, arn: str) -> ReplicatedBackup | None:
    described = describe_replicated_backup(clients.client("rds", region), arn)
    return ReplicatedBackup.of(described) if described is not None else None


def unusable_reason(backup: ReplicatedBackup, pinned_created: datetime | None) -> str | None:
    """Why a restore from ``backup`` would be worse than the pinned snapshot, or None when it is usable."""
    if backup.status not in USABLE_STATUSES:
        return f"replicated backups {backup.arn} are {backup.status or 'of unknown status'}, not replicating"
    if backup.latest is None:
        return f"replicated backups {backup.arn} have no restorable time yet (the first backup is still replicating)"
    if backup.encrypted and not backup.kms_key_id:
        return f"replicated backups {backup.arn} are encrypted but name no KMS key of the recovery region"
    if pinned_created is not None and backup.latest < pinned_created:
        return (f"their latest restorable time {restore_time(backup.latest)} is older than the pinned snapshot "
                f"({restore_time(pinned_created)}): the snapshot is the newer recovery point")
    return None


def restore_time(moment: datetime) -> str:
    """A CloudFormation ``RestoreTime``: UTC, whole seconds, ``Z``; truncated, so never after ``moment``."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
