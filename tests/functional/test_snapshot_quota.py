"""The RDS manual-snapshot quota: the embedded AWS keeps it as RDS does, the tick warns before it is full and
deletes nothing it does not manage, a full quota makes it wait, and the settings refuse a retention that
cannot fit (docs/retention.md).

The embedded AWS reads its quota from MOTO_RDS_SNAPSHOT_LIMIT at each call (jamsdr/quota_fidelity.py): the
tests lower it, so a region fills with a few snapshots instead of a hundred.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock
from chalicelib.keys import notice_key
from chalicelib.settings import Settings, SettingsError
from jamsdr.embedded import World
from jamsdr.quota_fidelity import LIMIT_VARIABLE
from tests.conftest import PRIMARY, RECOVERY
from tests.functional import test_snapshots as snapshots
from tests.functional.test_snapshots import HOUR, Hook, calls, metric_values, ours, tick

# The snapshot pipeline's fixtures (one built two-region world for the module, restored before each test).
base_world = snapshots.base_world
clients = snapshots.clients
world = snapshots.world
hooks = snapshots.hooks
clock = snapshots.clock
_clean_metrics = snapshots._clean_metrics

QUOTA_NOTICE = notice_key("snapshot-quota", "jams")
WARNING = "manual snapshot quota needs attention"


def quota_of(clients: ClientFactory, region: str) -> dict[str, Any]:
    answer = clients.client("rds", region).describe_account_attributes()
    (quota,) = [q for q in answer["AccountQuotas"] if q["AccountQuotaName"] == "ManualSnapshots"]
    return dict(quota)


def make_foreign(clients: ClientFactory, world: World, region: str, names: list[str]) -> None:
    """Manual snapshots jams-dr does not manage: an operator's (primary), another tool's copies (recovery)."""
    primary = clients.client("rds", PRIMARY)
    for name in names:
        if region == PRIMARY:
            primary.create_db_snapshot(DBInstanceIdentifier=world.settings.db_instance_id, DBSnapshotIdentifier=name)
        else:
            seed = f"{name}-seed"
            answer = primary.create_db_snapshot(DBInstanceIdentifier=world.settings.db_instance_id,
                                                DBSnapshotIdentifier=seed)
            clients.client("rds", RECOVERY).copy_db_snapshot(
                SourceDBSnapshotIdentifier=answer["DBSnapshot"]["DBSnapshotArn"], TargetDBSnapshotIdentifier=name,
                SourceRegion=PRIMARY, KmsKeyId=world.settings.copy_kms_key)
            primary.delete_db_snapshot(DBSnapshotIdentifier=seed)


def existing(clients: ClientFactory, region: str) -> set[str]:
    rds = clients.client("rds", region)
    return {s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]}


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and r.getMessage() == WARNING]


# --- the embedded AWS keeps the quota as RDS does ---------------------------------------------------


def test_describe_account_attributes_counts_manual_snapshots_against_the_limit_rds_refuses_on(
    world: World, clients: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RDS API reference, DescribeAccountAttributes / AccountQuota: ManualSnapshots, Used and Max per region;
    RDS User Guide, "Quotas and constraints": manual snapshots only (automated ones do not count); beyond it
    CreateDBSnapshot fails with SnapshotQuotaExceeded. Plain moto 5.2.5 has no DescribeAccountAttributes."""
    rds = clients.client("rds", PRIMARY)
    assert rds.describe_db_snapshots(SnapshotType="automated")["DBSnapshots"], "moto keeps an automated snapshot"
    assert quota_of(clients, PRIMARY) == {"AccountQuotaName": "ManualSnapshots", "Used": 0, "Max": 100}
    monkeypatch.setenv(LIMIT_VARIABLE, "3")
    make_foreign(clients, world, PRIMARY, ["ops-1", "ops-2", "ops-3"])
    assert quota_of(clients, PRIMARY) == {"AccountQuotaName": "ManualSnapshots", "Used": 3, "Max": 3}
    assert quota_of(clients, RECOVERY)["Used"] == 0  # per region
    with pytest.raises(ClientError) as refused:
        make_foreign(clients, world, PRIMARY, ["ops-4"])
    assert refused.value.response["Error"]["Code"] == "SnapshotQuotaExceeded"
    rds.delete_db_snapshot(DBSnapshotIdentifier="ops-1")
    make_foreign(clients, world, PRIMARY, ["ops-4"])  # room again: exactly at Used < Max
    assert quota_of(clients, PRIMARY)["Used"] == 3


# --- the tick -------------------------------------------------------------------------------------


def test_the_tick_warns_before_the_quota_is_full_waits_when_it_is_and_deletes_nothing_it_does_not_manage(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    # A quota of 20 per region; jams-dr keeps at most 2 + 3 = 5 (docs/retention.md); the warning is at 16.
    monkeypatch.setenv(LIMIT_VARIABLE, "20")
    settings = dataclasses.replace(world.settings, retain_count=2, retain_days=0, manual_snapshot_quota=20)
    foreign = [f"ops-before-upgrade-{n}" for n in range(14)]
    make_foreign(clients, world, PRIMARY, foreign)
    creates = calls(hooks, "before-call.rds.CreateDBSnapshot")
    deletes = calls(hooks, "before-call.rds.DeleteDBSnapshot")
    published = calls(hooks, "before-call.sns.Publish")
    ledger = clients.client("dynamodb", RECOVERY)

    # 14 foreign + ours growing to the 2 kept: 14, 15, then 16 = the warning level, still 4 below the quota
    used_seen = []
    results = []
    for _ in range(4):
        used_seen.append(quota_of(clients, PRIMARY)["Used"])
        results.append(tick(settings, clients, clock))
        clock.advance(HOUR)
    assert used_seen == [14, 15, 16, 16]
    assert all(r.errors == [] for r in results) and all(r.taken for r in results)
    assert metric_values("ManualSnapshotQuotaHeadroom") == [6.0, 5.0, 4.0, 4.0]
    assert metric_values("ManualSnapshotQuotaUsedPercent") == [70.0, 75.0, 80.0, 80.0]
    assert len(published) == 1, "one notice per episode"
    message = published[0]["Message"]
    assert f"{PRIMARY}: 16 of 20 manual snapshots used (2 jams-dr's, 14 not)" in message
    assert "deletes nothing it does not manage" in message
    assert "Item" in ledger.get_item(TableName=settings.ledger_table_name, Key={"pk": {"S": QUOTA_NOTICE}})
    logged = warnings_logged(caplog)
    assert len(logged) == 2, "logged at every tick of the episode"
    assert logged[0].__dict__["regions"][PRIMARY] == {"used": 16, "max": 20, "ours": 2}

    # Someone else fills the quota: the tick takes nothing (no failing CreateDBSnapshot, no error), tick
    # after tick, and still deletes nothing to make room.
    make_foreign(clients, world, PRIMARY, ["ops-extra-1", "ops-extra-2", "ops-extra-3", "ops-extra-4"])
    before = len(creates)
    for _ in range(3):
        full = tick(settings, clients, clock)
        clock.advance(HOUR)
        assert full.errors == [] and full.taken == []
        assert any("quota of us-east-1 is full (20 of 20, 18 not jams-dr's)" in w for w in full.waiting), full.waiting
    assert len(creates) == before
    assert metric_values("ManualSnapshotQuotaHeadroom")[-3:] == [0.0, 0.0, 0.0]
    assert len(published) == 1
    deleted = {d["DBSnapshotIdentifier"] for d in deletes}
    assert deleted and all(re.fullmatch(r"jams-dr-\d{12}(-copy)?", name) for name in deleted), deleted  # ours only
    assert set(foreign) <= existing(clients, PRIMARY)

    # The foreign snapshots are cleared: snapshots resume and the episode closes.
    for name in [*foreign[:8], "ops-extra-1", "ops-extra-2"]:
        clients.client("rds", PRIMARY).delete_db_snapshot(DBSnapshotIdentifier=name)
    resumed = tick(settings, clients, clock)
    assert resumed.errors == [] and len(resumed.taken) == 1
    assert "Item" not in ledger.get_item(TableName=settings.ledger_table_name, Key={"pk": {"S": QUOTA_NOTICE}})
    assert len(ours(clients, PRIMARY)) == 2


def test_a_full_recovery_region_holds_the_copy_and_the_rest_of_the_tick_goes_on(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LIMIT_VARIABLE, "6")
    settings = dataclasses.replace(world.settings, retain_count=1, retain_days=0, manual_snapshot_quota=6)
    make_foreign(clients, world, RECOVERY, [f"other-tool-{n}" for n in range(6)])
    copies = calls(hooks, "before-call.rds.CopyDBSnapshot")
    deletes = calls(hooks, "before-call.rds.DeleteDBSnapshot")
    published = calls(hooks, "before-call.sns.Publish")
    results = []
    for _ in range(2):
        results.append(tick(settings, clients, clock))
        clock.advance(HOUR)
    assert copies == [] and deletes == [d for d in deletes if d["region"] == PRIMARY]
    for result in results:
        assert result.errors == [] and len(result.taken) == 1 and result.copied == []
        assert any("not started: the manual-snapshot quota of us-west-2 is full" in w for w in result.waiting)
    assert len(published) == 1 and "us-west-2: 6 of 6 manual snapshots used" in published[0]["Message"]
    assert len(existing(clients, RECOVERY)) == 6 and not ours(clients, RECOVERY)
    # the source waiting for its copy is kept: retain_count=1 and the newest is the copy candidate
    assert len(ours(clients, PRIMARY)) == 1


def test_an_account_quota_below_the_configured_one_is_reported(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    published = calls(hooks, "before-call.sns.Publish")
    settings = dataclasses.replace(world.settings, manual_snapshot_quota=300)
    result = tick(settings, clients, clock)
    assert result.errors == [] and result.taken
    assert len(published) == 1
    assert "the account's quota is 100, below MANUAL_SNAPSHOT_QUOTA=300" in published[0]["Message"]


# --- the settings ---------------------------------------------------------------------------------


def test_the_settings_refuse_a_retention_that_cannot_fit_and_accept_it_with_a_raised_quota() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.defaults(retain_days=7)  # the hourly snapshots kept 7 days: 168 of a quota of 100
    (problem,) = refused.value.problems
    assert problem.startswith("RETAIN_DAYS='7': ")
    for part in ("171 manual snapshots per region", "60 of MANUAL_SNAPSHOT_QUOTA=100", "RETAIN_DAYS to at most 2",
                 "SNAPSHOT_INTERVAL_MINUTES to at least 177", "quota in both regions (Service Quotas) to at least 285"):
        assert part in problem, part
    assert Settings.defaults(retain_days=7, manual_snapshot_quota=285).retain_days == 7
    assert Settings.defaults(retain_days=7, snapshot_interval_minutes=177).retain_days == 7
    with pytest.raises(SettingsError, match=r"RETAIN_COUNT='60'.*RETAIN_COUNT to at most 57"):
        Settings.defaults(retain_count=60)
