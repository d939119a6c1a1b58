"""Cross-region automated backup replication, which moto 5.2.5 lacks, in the embedded AWS.

The point-in-time recovery tier (docs/pitr.md) restores from the primary database's automated backups
replicated to the recovery region. moto has no StartDBInstanceAutomatedBackupsReplication at all, and
its DescribeDBInstanceAutomatedBackups answers only backups grouped from its own automated snapshots
(never a replicated one, never a restorable window). What this module makes the embedded AWS do, as RDS
does:

- ``StartDBInstanceAutomatedBackupsReplication``, called in the DESTINATION region with
  ``SourceDBInstanceArn`` (and boto3's presigned URL from ``SourceRegion``), creates a replicated
  automated backup there: ``DBInstanceAutomatedBackupsArn`` ``arn:aws:rds:<dest>:<acct>:auto-backup:ab-...``,
  ``Status`` ``replicating``, ``KmsKeyId`` the destination key named in the request, a ``RestoreWindow``
  (RDS API reference, StartDBInstanceAutomatedBackupsReplication and DBInstanceAutomatedBackup; RDS User
  Guide, "Replicating automated backups to another AWS Region"). An encrypted source needs ``KmsKeyId``
  (a key of the destination region); a source that does not exist is ``DBInstanceNotFound``; a second
  replication of the same source to the same region is refused (``InvalidDBInstanceAutomatedBackupState``,
  the operation's documented state error: no code is documented for this case); at most 20 replicated backups per
  destination region (``DBInstanceAutomatedBackupQuotaExceeded``).
- The source instance's ``DBInstanceAutomatedBackupsReplications`` lists the replication (RDS API
  reference, DBInstance).
- ``DescribeDBInstanceAutomatedBackups`` in the destination region answers the replicated backup, by
  ``DBInstanceAutomatedBackupsArn`` (an unknown ARN is ``DBInstanceAutomatedBackupNotFound``), by
  ``DBInstanceIdentifier``/``DbiResourceId``, and by the ``db-instance-id``, ``dbi-resource-id`` and
  ``status`` filters (RDS API reference, DescribeDBInstanceAutomatedBackups).
- ``RestoreWindow.LatestTime`` trails "now": RDS ships the transaction logs to the destination about every
  five minutes (User Guide, "Replicating automated backups": "RDS ... replicates ... transaction logs ...
  to the destination Region"; "Restoring to a specified time": logs are uploaded every five minutes).
  Deterministic model: the latest five-minute boundary of the clock, never before ``EarliestTime`` (the
  moment the replication started). While the SOURCE region is down nothing more arrives, so the window
  stops at the boundary before the region went down (``source_region_down``, called by
  ``EmbeddedAws.take_region_down``).

The clock is the real time unless a test sets another (``set_clock``): moto stamps everything else with
the real time too. State lives on moto's RDS backend of the destination region, so moto's reset forgets it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

# The cadence at which RDS ships transaction logs to the replicated backup (User Guide, "Restoring a DB
# instance to a specified time": "RDS uploads transaction logs for DB instances to Amazon S3 every 5 minutes").
LOG_SHIPPING_INTERVAL = timedelta(minutes=5)
# "You can replicate up to 20 backups to each destination AWS Region for each AWS account" (User Guide,
# "Replicating automated backups to another AWS Region", limitations).
REPLICATED_BACKUPS_PER_REGION = 20
REPLICATING = "replicating"
_STATE = "_jamsdr_replicated_backups"  # attribute on moto's RDS backend of the destination region

_installed = False
_lock = threading.Lock()
_clock: Callable[[], datetime] | None = None
_shipping: timedelta = LOG_SHIPPING_INTERVAL
_down_since: dict[str, datetime] = {}


def install() -> None:
    """Patch moto's RDS in this process (idempotent)."""
    global _installed  # noqa: PLW0603 - one patch per process, like moto's own backends
    with _lock:
        if _installed:
            return
        _responses()
        _instance_replications()
        _installed = True


def set_clock(now: Callable[[], datetime] | None) -> None:
    """The time the replication model reads (None: the real time)."""
    global _clock  # noqa: PLW0603 - process-wide, like the moto server it configures
    _clock = now


def set_log_shipping(interval: timedelta | None) -> None:
    """How often logs arrive (None: RDS's five minutes). A drill compresses it, as it compresses the
    snapshot cycles, so that it need not wait minutes of real time for a shipment."""
    global _shipping  # noqa: PLW0603 - process-wide, like the moto server it configures
    _shipping = interval or LOG_SHIPPING_INTERVAL


def next_shipment() -> datetime:
    """When the next logs arrive (the next boundary after now)."""
    return _boundary(_now()) + _shipping


def source_region_down(region: str) -> None:
    """``region`` stopped answering: replicated backups of its instances receive no more logs."""
    _down_since.setdefault(region, _now())


def source_region_up(region: str) -> None:
    _down_since.pop(region, None)


def _now() -> datetime:
    return (_clock or (lambda: datetime.now(UTC)))()


def _boundary(moment: datetime) -> datetime:
    """The latest log-shipping boundary at or before ``moment``."""
    step = max(int(_shipping.total_seconds()), 1)
    seconds = int(moment.timestamp())
    return datetime.fromtimestamp(seconds - seconds % step, tz=UTC)


def latest_restorable_time(earliest: datetime, source_region: str) -> datetime:
    """What RDS has received of the source's logs: the last boundary before now, or before the source
    region went down; never before the replication's first backup."""
    until = _down_since.get(source_region) or _now()
    return max(earliest, _boundary(until))


def _error(code: str, message: str) -> Exception:
    from moto.rds.exceptions import RDSClientError  # noqa: PLC0415 - the embedded AWS only

    return RDSClientError(code, message)


def _backups(backend: Any) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] | None = backend.__dict__.get(_STATE)
    if state is None:
        state = backend.__dict__[_STATE] = {}
    return state


def _described(record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored replicated backup as DescribeDBInstanceAutomatedBackups answers it, window computed now."""
    described = {k: v for k, v in record.items() if not k.startswith("_")}
    described["RestoreWindow"] = {
        "EarliestTime": record["_earliest"],
        "LatestTime": latest_restorable_time(record["_earliest"], str(record["Region"])),
    }
    return described


def _source_instance(account_id: str, source_arn: str) -> Any:
    from moto.rds.models import rds_backends  # noqa: PLC0415 - the embedded AWS only

    parts = source_arn.split(":")
    if len(parts) < 7 or parts[2] != "rds" or parts[5] != "db":
        raise _error("InvalidParameterValue", f"SourceDBInstanceArn {source_arn} is not a DB instance ARN")
    region, identifier = parts[3], parts[6]
    database = rds_backends[account_id][region].databases.get(identifier)
    if database is None:
        raise _error("DBInstanceNotFound", f"DBInstance {source_arn} not found.")
    return database


def _start(response: Any) -> Any:
    from moto.core.responses import ActionResult  # noqa: PLC0415 - the embedded AWS only
    from moto.moto_api._internal import mock_random  # noqa: PLC0415

    params = response.params
    source_arn = str(params.get("SourceDBInstanceArn") or "")
    database = _source_instance(response.current_account, source_arn)
    destination = response.backend
    if database.region == destination.region_name:
        raise _error("InvalidParameterValue",
                     "The destination Region of the replicated backups must differ from the source's")
    kms_key_id = str(params.get("KmsKeyId") or "")
    if database.storage_encrypted and not kms_key_id:
        # An encrypted source's backups are re-encrypted with a key of the destination region, which only
        # the caller can name (API reference, StartDBInstanceAutomatedBackupsReplication, KmsKeyId).
        raise _error("KMSKeyNotAccessibleFault",
                     f"{source_arn} is encrypted: KmsKeyId must name a KMS key of {destination.region_name}")
    backups = _backups(destination)
    if any(b["DBInstanceArn"] == source_arn for b in backups.values()):
        # No code is documented for this case: the operation's InvalidDBInstanceAutomatedBackupState.
        raise _error("InvalidDBInstanceAutomatedBackupState",
                     f"Automated backups of {source_arn} are already replicated to {destination.region_name}")
    if len(backups) >= REPLICATED_BACKUPS_PER_REGION:
        raise _error("DBInstanceAutomatedBackupQuotaExceeded",
                     f"{destination.region_name} already holds {REPLICATED_BACKUPS_PER_REGION} replicated backups")
    arn = (f"arn:{destination.partition}:rds:{destination.region_name}:{destination.account_id}:auto-backup:"
           f"ab-{mock_random.get_random_string(26, lower_case=True)}")
    started = _now()
    record: dict[str, Any] = {
        "DBInstanceArn": source_arn,
        "DbiResourceId": str(database.dbi_resource_id),
        "Region": str(database.region),
        "DBInstanceIdentifier": str(database.db_instance_identifier),
        "Status": REPLICATING,
        "AllocatedStorage": int(database.allocated_storage or 0),
        "Port": int(database.port or 1433),
        "InstanceCreateTime": database.created,
        "MasterUsername": database.master_username,
        "Engine": str(database.engine),
        "EngineVersion": str(database.engine_version),
        "LicenseModel": str(database.license_model or "license-included"),
        "Encrypted": bool(database.storage_encrypted),
        "StorageType": str(database.storage_type or "gp2"),
        "KmsKeyId": kms_key_id or None,
        "BackupRetentionPeriod": int(params.get("BackupRetentionPeriod") or 7),
        "DBInstanceAutomatedBackupsArn": arn,
        "_earliest": started,
    }
    backups[arn] = record
    return ActionResult({"DBInstanceAutomatedBackup": _described(record)})


def _matches(record: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    identifier = str(params.get("DBInstanceIdentifier") or "").lower()
    if identifier and identifier != str(record["DBInstanceIdentifier"]).lower():
        return False
    resource = str(params.get("DbiResourceId") or "").lower()
    if resource and resource != str(record["DbiResourceId"]).lower():
        return False
    for flt in params.get("Filters") or []:
        values = {str(v).lower() for v in flt.get("Values") or []}
        name = flt.get("Name")
        if name == "db-instance-id":
            names = {str(record["DBInstanceIdentifier"]).lower(), str(record["DBInstanceArn"]).lower()}
        elif name == "dbi-resource-id":
            names = {str(record["DbiResourceId"]).lower()}
        elif name == "status":
            names = {str(record["Status"]).lower()}
        else:
            continue
        if not values & names:
            return False
    return True


def _describe(response: Any, original: Callable[[Any], Any]) -> Any:
    from moto.core.responses import ActionResult  # noqa: PLC0415 - the embedded AWS only

    params = response.params
    replicated = _backups(response.backend)
    arn = str(params.get("DBInstanceAutomatedBackupsArn") or "")
    if arn:
        record = replicated.get(arn)
        if record is None:
            raise _error("DBInstanceAutomatedBackupNotFound", f"Automated backup {arn} not found.")
        return ActionResult({"DBInstanceAutomatedBackups": [_described(record)]})
    found: list[Any] = [_described(r) for r in replicated.values() if _matches(r, params)]
    # moto's own (its automated snapshots grouped per instance) first, as it answers them.
    local = getattr(original(response), "result", None) or {}
    return ActionResult({"DBInstanceAutomatedBackups": [*local.get("DBInstanceAutomatedBackups", []), *found]})


def _responses() -> None:
    from moto.rds.responses import RDSResponse  # noqa: PLC0415 - the embedded AWS only

    original = RDSResponse.describe_db_instance_automated_backups

    def describe(self: Any) -> Any:
        return _describe(self, original)

    def start(self: Any) -> Any:
        return _start(self)

    RDSResponse.describe_db_instance_automated_backups = describe  # type: ignore[method-assign]
    RDSResponse.start_db_instance_automated_backups_replication = start  # type: ignore[attr-defined]


def replications_of(account_id: str, source_arn: str) -> list[dict[str, str]]:
    """Every replicated backup of ``source_arn`` in the account's regions (what the source lists)."""
    from moto.rds.models import rds_backends  # noqa: PLC0415 - the embedded AWS only

    found: list[dict[str, str]] = []
    regions: Iterable[Any] = list(rds_backends[account_id].values())
    for backend in regions:
        for arn, record in _backups(backend).items():
            if record["DBInstanceArn"] == source_arn and record["Status"] == REPLICATING:
                found.append({"DBInstanceAutomatedBackupsArn": arn})
    return found


def _instance_replications() -> None:
    from moto.rds.models import DBInstance  # noqa: PLC0415 - the embedded AWS only

    def replications(self: Any) -> list[dict[str, str]]:
        return replications_of(self.account_id, self.arn)

    DBInstance.db_instance_automated_backups_replications = property(replications)  # type: ignore[attr-defined]
