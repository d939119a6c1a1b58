"""The point-in-time recovery tier (RECOVERY_SOURCE=pitr, docs/pitr.md) in the embedded two-region AWS.

- the embedded AWS's cross-region automated backup replication (jamsdr/pitr_fidelity.py): each test of
  it states the RDS behaviour and its source, and fails on plain moto 5.2.5, which has no
  StartDBInstanceAutomatedBackupsReplication and no replicated backup in DescribeDBInstanceAutomatedBackups;
- a recovery restores the replicated backups at an explicit RestoreTime, and its report measures the RPO
  from that time;
- preflight falls back to the pinned snapshot, and says so, when the replicated backups are missing or
  older than the pinned snapshot;
- the RPO metric in pitr mode is the replicated backups' lag.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock, isoformat, parse_iso
from chalicelib.detection.incident import Incident
from chalicelib.keys import APP_PARAMETERS_KEY
from chalicelib.notify import Notifier
from chalicelib.report import CONTRACT_KEYS
from chalicelib.settings import Settings
from chalicelib.snapshots.replication import ensure_backup_replication
from chalicelib.snapshots.tick import run_tick
from chalicelib.workflow.engine import Progress
from chalicelib.workflow.records import Execution
from chalicelib.workflow.runners import InProcessRunner
from chalicelib.workflow.starter import no_launch, start_drill, start_incident_recovery
from jamsdr import pitr_fidelity
from jamsdr.embedded import EmbeddedAws, build_world
from tests.functional.test_recovery_chain import Env, pin_recovery_point

FIVE_MINUTES = 300


def _boundary(moment: datetime) -> datetime:
    """The latest five-minute boundary at or before ``moment`` (RDS ships logs about every 5 minutes)."""
    seconds = int(moment.timestamp())
    return datetime.fromtimestamp(seconds - seconds % FIVE_MINUTES, tz=UTC)


class _Requests:
    """The parameters of every request of one operation (botocore before-parameter-build hook)."""

    def __init__(self, clients: ClientFactory, event: str) -> None:
        self.seen: list[dict[str, Any]] = []
        self._clients, self._event = clients, event
        clients.register_hook(event, self._record)

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        self.seen.append(dict(params))

    def close(self) -> None:
        self._clients.unregister_hook(self._event, self._record)


@pytest.fixture
def create_stack_requests(clients: ClientFactory) -> Iterator[_Requests]:
    requests = _Requests(clients, "before-parameter-build.cloudformation.CreateStack")
    yield requests
    requests.close()


@pytest.fixture
def pitr_clock() -> Iterator[FakeClock]:
    """The clock of the test AND of the embedded replication (its log-shipping boundaries)."""
    # moto stamps snapshots with the real time: start just after it, so the pinned copy is older.
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))
    pitr_fidelity.set_clock(clock.now)
    yield clock
    pitr_fidelity.set_clock(None)


@pytest.fixture
def env(embedded: EmbeddedAws, clients: ClientFactory, pitr_clock: FakeClock) -> Env:
    world = build_world(clients, Settings.defaults(backup_replication=True, recovery_source="pitr"))
    s = world.settings
    assert (s.recovery_source, s.backup_replication) == ("pitr", True)
    clients.client("s3", s.recovery_region).put_object(
        Bucket=s.artifact_bucket, Key=APP_PARAMETERS_KEY,
        Body=json.dumps({"default": {"AgentLoadBalancerType": "application"}}).encode())
    created = pin_recovery_point(clients, s)
    return Env(embedded, world, clients, pitr_clock, Notifier(s, clients, pitr_clock), created)


def _replicate(env: Env) -> str:
    """What snapshot_tick does with BACKUP_REPLICATION=true (chalicelib/snapshots/replication.py)."""
    s = env.s
    assert s.db_instance_id is not None
    ensure_backup_replication(s, env.clients, s.db_instance_id)
    backups = env.rds(s.recovery_region).describe_db_instance_automated_backups(
        Filters=[{"Name": "db-instance-id", "Values": [s.db_instance_id]}])["DBInstanceAutomatedBackups"]
    assert len(backups) == 1
    return str(backups[0]["DBInstanceAutomatedBackupsArn"])


def _recover_after_region_loss(env: Env, *, down_at: datetime) -> Execution:
    """The primary region is lost at ``down_at`` (the clock's now): detected a minute later, decided two."""
    env.aws.take_region_down(env.s.primary_region)
    env.clock.advance(180)
    incident = Incident(incident_id="inc-pitr", decision="region-recovery", reason="us-east-1 silent",
                        failure_at=down_at, detected_at=down_at + timedelta(minutes=1),
                        decided_at=down_at + timedelta(minutes=2))
    started = start_incident_recovery(env.s, env.clients, env.clock, incident, await_approval=False,
                                      launcher=no_launch)
    return env.run(started.execution_id)


# ------------------------------------------------------------------------------- embedded AWS fidelity


def _source_instance(clients: ClientFactory, *, encrypted: bool, name: str = "jams-db") -> dict[str, Any]:
    rds = clients.client("rds", "us-east-1")
    return dict(rds.create_db_instance(
        DBInstanceIdentifier=name, Engine="sqlserver-se", DBInstanceClass="db.m5.xlarge", AllocatedStorage=200,
        MasterUsername="jamsadmin", MasterUserPassword="not-a-secret-1", StorageEncrypted=encrypted,
        BackupRetentionPeriod=7)["DBInstance"])


def test_replication_creates_the_replicated_backup_in_the_destination_region(
    clients: ClientFactory, pitr_clock: FakeClock
) -> None:
    """RDS API reference, StartDBInstanceAutomatedBackupsReplication (called in the destination region;
    KmsKeyId: a key of the destination region) and DBInstanceAutomatedBackup (DBInstanceAutomatedBackupsArn
    arn:aws:rds:<region>:<account>:auto-backup:ab-..., Status, KmsKeyId, RestoreWindow); DBInstance,
    DBInstanceAutomatedBackupsReplications; DescribeDBInstanceAutomatedBackups (by ARN, by the
    db-instance-id filter). plain moto: StartDBInstanceAutomatedBackupsReplication is not implemented."""
    source = _source_instance(clients, encrypted=True)
    key = clients.client("kms", "us-west-2").create_key()["KeyMetadata"]["Arn"]
    recovery = clients.client("rds", "us-west-2")

    answer = recovery.start_db_instance_automated_backups_replication(
        SourceDBInstanceArn=source["DBInstanceArn"], KmsKeyId=key, BackupRetentionPeriod=7, SourceRegion="us-east-1",
    )["DBInstanceAutomatedBackup"]

    arn = answer["DBInstanceAutomatedBackupsArn"]
    assert arn.startswith("arn:aws:rds:us-west-2:123456789012:auto-backup:ab-")
    assert answer["Status"] == "replicating"
    assert answer["KmsKeyId"] == key and answer["Encrypted"] is True
    assert answer["Region"] == "us-east-1" and answer["DBInstanceArn"] == source["DBInstanceArn"]
    assert answer["RestoreWindow"]["EarliestTime"] == pitr_clock.now()
    listed = clients.client("rds", "us-east-1").describe_db_instances(
        DBInstanceIdentifier="jams-db")["DBInstances"][0]["DBInstanceAutomatedBackupsReplications"]
    assert listed == [{"DBInstanceAutomatedBackupsArn": arn}]
    by_arn = recovery.describe_db_instance_automated_backups(DBInstanceAutomatedBackupsArn=arn)
    by_id = recovery.describe_db_instance_automated_backups(Filters=[{"Name": "db-instance-id", "Values": ["jams-db"]}])
    assert [b["DBInstanceAutomatedBackupsArn"] for b in by_arn["DBInstanceAutomatedBackups"]] == [arn]
    assert [b["DBInstanceAutomatedBackupsArn"] for b in by_id["DBInstanceAutomatedBackups"]] == [arn]
    # Replicated TO us-west-2: the source region holds none of them.
    primary = clients.client("rds", "us-east-1").describe_db_instance_automated_backups()
    assert all(not b.get("DBInstanceAutomatedBackupsArn") for b in primary["DBInstanceAutomatedBackups"])


@pytest.mark.usefixtures("embedded", "pitr_clock")
def test_replication_refusals_as_rds_answers_them(clients: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """RDS API reference, StartDBInstanceAutomatedBackupsReplication (errors DBInstanceNotFound,
    KMSKeyNotAccessibleFault, InvalidDBInstanceAutomatedBackupState, DBInstanceAutomatedBackupQuotaExceeded; an encrypted source's backups need a
    KmsKeyId of the destination region) and
    DescribeDBInstanceAutomatedBackups (DBInstanceAutomatedBackupNotFound)."""
    source = _source_instance(clients, encrypted=True)
    recovery = clients.client("rds", "us-west-2")

    def code(call: Callable[[], Any]) -> str:
        with pytest.raises(ClientError) as raised:
            call()
        return str(raised.value.response["Error"]["Code"])

    assert code(lambda: recovery.start_db_instance_automated_backups_replication(
        SourceDBInstanceArn=source["DBInstanceArn"], SourceRegion="us-east-1")) == "KMSKeyNotAccessibleFault"
    assert code(lambda: recovery.start_db_instance_automated_backups_replication(
        SourceDBInstanceArn=source["DBInstanceArn"].replace(":jams-db", ":nothing"), KmsKeyId="k",
        SourceRegion="us-east-1")) == "DBInstanceNotFound"
    assert code(lambda: recovery.describe_db_instance_automated_backups(
        DBInstanceAutomatedBackupsArn="arn:aws:rds:us-west-2:123456789012:auto-backup:ab-none")) == (
        "DBInstanceAutomatedBackupNotFound")
    recovery.start_db_instance_automated_backups_replication(
        SourceDBInstanceArn=source["DBInstanceArn"], KmsKeyId="k", SourceRegion="us-east-1")
    again = code(lambda: recovery.start_db_instance_automated_backups_replication(
        SourceDBInstanceArn=source["DBInstanceArn"], KmsKeyId="k", SourceRegion="us-east-1"))
    # The API reference documents no code for a second replication of one source to one region; the embedded
    # AWS answers the operation's documented InvalidDBInstanceAutomatedBackupState.
    assert again == "InvalidDBInstanceAutomatedBackupState"
    # "up to 20 backups to each destination AWS Region for each AWS account" (User Guide): the limit lowered
    # to the one replication made above.
    monkeypatch.setattr(pitr_fidelity, "REPLICATED_BACKUPS_PER_REGION", 1)
    other = _source_instance(clients, encrypted=False, name="jams-db-2")
    assert code(lambda: recovery.start_db_instance_automated_backups_replication(
        SourceDBInstanceArn=other["DBInstanceArn"], SourceRegion="us-east-1")) == "DBInstanceAutomatedBackupQuotaExceeded"


def test_latest_restorable_time_trails_by_log_shipping_and_stops_with_the_source_region(
    embedded: EmbeddedAws, clients: ClientFactory, pitr_clock: FakeClock
) -> None:
    """RDS User Guide, "Restoring a DB instance to a specified time" (transaction logs uploaded every five
    minutes: the latest restorable time is typically within the last five minutes) and "Replicating automated
    backups to another AWS Region" (the destination holds what was replicated; nothing arrives from a
    source region that is down). plain moto: no replicated backup, no RestoreWindow at all."""
    source = _source_instance(clients, encrypted=False)
    recovery = clients.client("rds", "us-west-2")
    arn = recovery.start_db_instance_automated_backups_replication(
        SourceDBInstanceArn=source["DBInstanceArn"], SourceRegion="us-east-1",
    )["DBInstanceAutomatedBackup"]["DBInstanceAutomatedBackupsArn"]
    started = pitr_clock.now()

    def window() -> dict[str, datetime]:
        described = recovery.describe_db_instance_automated_backups(DBInstanceAutomatedBackupsArn=arn)
        return dict(described["DBInstanceAutomatedBackups"][0]["RestoreWindow"])

    assert window() == {"EarliestTime": started, "LatestTime": started}  # the first backup, nothing shipped yet
    pitr_clock.advance(17 * 60)
    assert window()["LatestTime"] == max(started, _boundary(pitr_clock.now()))
    down = pitr_clock.now()
    embedded.take_region_down("us-east-1")
    pitr_clock.advance(31 * 60)
    assert window()["LatestTime"] == max(started, _boundary(down))  # frozen while the source region is down
    embedded.bring_region_up("us-east-1")
    assert window()["LatestTime"] == _boundary(pitr_clock.now())


# ------------------------------------------------------------------------------- recovery


def test_pitr_recovery_restores_the_replicated_backups_and_measures_rpo_from_the_restore_time(
    env: Env, create_stack_requests: _Requests
) -> None:
    s = env.s
    arn = _replicate(env)
    env.clock.advance(23 * 60)  # the primary keeps writing; logs ship every five minutes
    down_at = env.clock.now()

    execution = _recover_after_region_loss(env, down_at=down_at)

    assert execution.status == "succeeded", execution.error
    restored_to = _boundary(down_at)  # the last logs shipped before the region was lost
    expected_time = isoformat(restored_to)
    # The request: the point-in-time source and an explicit RestoreTime, no snapshot.
    [request] = [r for r in create_stack_requests.seen if r["StackName"] == s.app_stack_name]
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in request["Parameters"]}
    assert parameters["SourceDBInstanceAutomatedBackupsArn"] == arn
    assert parameters["RestoreTime"] == restored_to.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert parameters["DBSnapshotIdentifier"] == ""
    preflight = next(h for h in execution.history if h["name"] == "preflight")
    assert f"pitr: {arn}" in preflight["note"]

    report = execution.item["report"]
    assert tuple(report) == CONTRACT_KEYS
    assert report["recovery_source"] == {"requested": "pitr", "used": "pitr", "restore_time": expected_time,
                                         "automated_backups_arn": arn, "reason": None}
    assert report["rpo_seconds"] == (down_at - restored_to).total_seconds()
    pinned_rpo = (down_at - env.pinned_source_created).total_seconds()
    assert report["rpo_seconds"] < pinned_rpo  # minutes, where the pinned copy is older
    assert report["snapshot"]["id"] == "jams-dr-202601010000-copy"  # the checked fallback
    # The database itself was restored from the backups (jamsdr/rds_fidelity.py records the restore).
    db_id = execution.data["stack_outputs"]["DatabaseInstanceId"]
    events = env.rds(s.recovery_region).describe_events(SourceType="db-instance", SourceIdentifier=db_id)["Events"]
    assert any(e["Message"].startswith(f"Restored from DB instance {s.db_instance_id} to ")
               and restored_to.strftime("%Y-%m-%d %H:%M:%S") in e["Message"] for e in events)


def test_pitr_falls_back_to_the_pinned_snapshot_when_nothing_is_replicated(
    env: Env, create_stack_requests: _Requests
) -> None:
    down_at = env.clock.now()

    execution = _recover_after_region_loss(env, down_at=down_at)

    assert execution.status == "succeeded", execution.error
    [request] = [r for r in create_stack_requests.seen if r["StackName"] == env.s.app_stack_name]
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in request["Parameters"]}
    assert parameters["DBSnapshotIdentifier"] == "jams-dr-202601010000-copy"
    assert parameters["SourceDBInstanceAutomatedBackupsArn"] == "" and parameters["RestoreTime"] == ""
    preflight = next(h for h in execution.history if h["name"] == "preflight")
    assert "pitr NOT used, the pinned snapshot is restored instead: no automated backups" in preflight["note"]
    report = execution.item["report"]
    assert report["recovery_source"]["requested"] == "pitr"
    assert report["recovery_source"]["used"] == "snapshot"
    assert "no automated backups of database" in report["recovery_source"]["reason"]
    assert report["rpo_seconds"] == max(0.0, (down_at - parse_iso(report["snapshot"]["created_at"])).total_seconds())


def test_pitr_falls_back_when_the_backups_are_older_than_the_pinned_snapshot(
    env: Env, create_stack_requests: _Requests
) -> None:
    """The replication stalled an hour before the pinned snapshot was taken (no log arrived since): the
    snapshot is the newer point, and preflight says so."""
    primary = env.s.primary_region
    pitr_fidelity.set_clock(lambda: env.pinned_source_created - timedelta(hours=1))
    _replicate(env)
    pitr_fidelity.source_region_down(primary)  # the stall (the region itself keeps answering)
    pitr_fidelity.set_clock(env.clock.now)
    try:
        execution = start_drill(env.s, env.clients, env.clock, launcher=no_launch)
        done = env.run(execution.execution_id)
    finally:
        pitr_fidelity.source_region_up(primary)

    assert done.status == "succeeded", done.error
    [request] = create_stack_requests.seen
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in request["Parameters"]}
    assert parameters["DBSnapshotIdentifier"] == "jams-dr-202601010000-copy"
    assert parameters["SourceDBInstanceAutomatedBackupsArn"] == ""
    source = done.item["report"]["recovery_source"]
    assert source["used"] == "snapshot" and "the snapshot is the newer recovery point" in source["reason"]


def test_pitr_drill_restores_the_replicated_backups(env: Env, create_stack_requests: _Requests) -> None:
    arn = _replicate(env)
    env.clock.advance(11 * 60)
    started = start_drill(env.s, env.clients, env.clock, launcher=no_launch)

    done = env.run(started.execution_id)

    assert done.status == "succeeded", done.error
    [request] = create_stack_requests.seen
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in request["Parameters"]}
    assert parameters["Mode"] == "drill"
    assert parameters["SourceDBInstanceAutomatedBackupsArn"] == arn
    source = done.item["report"]["recovery_source"]
    assert source["used"] == "pitr" and source["restore_time"] == isoformat(parse_iso(parameters["RestoreTime"]))


# ------------------------------------------------------------------------------- RPO metric


def test_rpo_metric_in_pitr_mode_is_the_replicated_backups_lag(env: Env) -> None:
    s = env.s
    result = run_tick(s, env.clients, env.clock)  # starts the replication (BACKUP_REPLICATION=true)
    assert result.replication and "started" in result.replication
    env.clock.advance(13 * 60)

    result = run_tick(s, env.clients, env.clock)

    lag = (env.clock.now() - _boundary(env.clock.now())).total_seconds()
    assert result.rpo_seconds == lag  # < 5 minutes, where a snapshot copy is at least an interval old
    assert lag < FIVE_MINUTES


def test_rpo_metric_falls_back_to_the_pinned_copy_without_replicated_backups(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = env.s
    # Replication not started (e.g. refused): the tick still measures the pinned copy.
    monkeypatch.setattr("chalicelib.snapshots.tick.ensure_backup_replication", lambda *_: "not started (test)")
    env.clock.advance(13 * 60)

    result = run_tick(s, env.clients, env.clock)

    pinned = result.pinned_copy
    assert pinned is not None
    assert result.rpo_seconds is not None and result.rpo_seconds > FIVE_MINUTES


def test_backups_gone_after_preflight_restore_the_pinned_snapshot_and_say_so(
    env: Env, create_stack_requests: _Requests
) -> None:
    """create_app_stack reads the backups again for its RestoreTime: gone since preflight (replication
    stopped and the backups deleted), it restores the pinned snapshot, and the record says why."""
    from moto.rds.models import rds_backends  # the embedded AWS's own state, as a disaster would leave it

    _replicate(env)
    env.clock.advance(11 * 60)

    def delete_backups(progress: Progress) -> None:
        if progress.kind == "state-started" and progress.state == "create_app_stack":
            rds_backends["123456789012"][env.s.recovery_region].__dict__[pitr_fidelity._STATE].clear()

    started = start_drill(env.s, env.clients, env.clock, launcher=no_launch)
    done = InProcessRunner(env.s, env.clients, env.clock, env.notifier, on_progress=delete_backups).run(
        started.execution_id)

    assert done.status == "succeeded", done.error
    [request] = create_stack_requests.seen
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in request["Parameters"]}
    assert parameters["DBSnapshotIdentifier"] == "jams-dr-202601010000-copy"
    assert parameters["SourceDBInstanceAutomatedBackupsArn"] == "" and parameters["RestoreTime"] == ""
    create = next(h for h in done.history if h["name"] == "create_app_stack")
    assert "unusable when the stack was created: they no longer exist" in create["note"]
    source = done.item["report"]["recovery_source"]
    assert (source["used"], source["restore_time"]) == ("snapshot", None)
    assert "they no longer exist" in source["reason"]
