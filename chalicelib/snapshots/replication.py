"""Cross-region replication of the database's automated backups (docs/aws-facts.md, "Cross-region
automated backup replication").

RDS replicates snapshots and transaction logs to the recovery region, so a recovery can restore to
the latest restorable time (an RPO of minutes) instead of the last snapshot copy (RECOVERY_SOURCE=pitr,
docs/pitr.md). moto 5.2 does not implement the API; the embedded AWS does (jamsdr/pitr_fidelity.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chalicelib.aws import ClientFactory
from chalicelib.errors import AwsError
from chalicelib.observability import logger
from chalicelib.rds import describe_instance, start_backup_replication
from chalicelib.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient

# Replicated automated backups keep 1..35 days (RDS limit).
_MAX_BACKUP_RETENTION_DAYS = 35


def primary_instance(rds: RDSClient, db_instance_id: str) -> dict[str, Any]:
    """The pipeline's database in the primary region (the backup replication and the copy request read
    it), or the AwsError that says how to name it."""
    instance = describe_instance(rds, db_instance_id)
    if instance is None:
        raise AwsError(
            f"database {db_instance_id!r} does not exist in the primary region; set DB_INSTANCE_ID "
            "to the JAMS database's DBInstanceIdentifier (or leave it empty to read the app stack)",
            code="DBInstanceNotFound",
        )
    return instance


def ensure_backup_replication(settings: Settings, clients: ClientFactory, db_instance_id: str) -> str:
    """Replicate the database's automated backups to the recovery region, once (docs/aws-facts.md,
    "Cross-region automated backup replication").

    The instance's DBInstanceAutomatedBackupsReplications says whether it already replicates to the
    recovery region, so repeated ticks start it once; an already-running replication is success.
    """
    instance = primary_instance(clients.client("rds", settings.primary_region), db_instance_id)
    for replication in instance.get("DBInstanceAutomatedBackupsReplications", []):
        arn = str(replication.get("DBInstanceAutomatedBackupsArn", ""))
        if f":{settings.recovery_region}:" in arn:
            return f"replicating to {settings.recovery_region}"
    request: dict[str, Any] = {
        "SourceDBInstanceArn": instance["DBInstanceArn"],
        "BackupRetentionPeriod": min(max(settings.retain_days, 1), _MAX_BACKUP_RETENTION_DAYS),
        "SourceRegion": settings.primary_region,
    }
    if instance.get("StorageEncrypted"):
        if not settings.copy_kms_key:
            raise AwsError(
                f"database {db_instance_id} is encrypted and COPY_KMS_KEY_ID is empty: set it to a KMS key of "
                f"{settings.recovery_region} (the dr-support stack's CopyKeyArn) or BACKUP_REPLICATION=false",
                code="CopyKmsKeyMissing",
            )
        request["KmsKeyId"] = settings.copy_kms_key
    if not start_backup_replication(clients.client("rds", settings.recovery_region), request):
        # Two ticks racing: the second start finds the replication the first one made.
        return f"replicating to {settings.recovery_region}"
    logger.info("automated backup replication started",
                extra={"db_instance_id": db_instance_id, "region": settings.recovery_region})
    return f"replication to {settings.recovery_region} started"
