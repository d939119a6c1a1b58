"""The recovery-point pipeline against moto with two regions (the embedded AWS).

moto makes every snapshot available at once, accepts bad copies and ignores paging; where that
matters the tests assert the request itself (botocore hooks), rewrite the parsed response in an
after-call hook (the dict the client returns is the one the hook receives), or use botocore's Stubber.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from chalicelib.aws import ClientFactory, set_factory
from chalicelib.clock import FakeClock, isoformat
from chalicelib.keys import lease_key, notice_key
from chalicelib.observability import metrics
from chalicelib.rds import list_snapshots
from chalicelib.settings import Settings
from chalicelib.snapshots.rules import copy_snapshot_id, source_tags
from chalicelib.snapshots.tick import TickResult, ensure_backup_replication, recovery_point, run_tick
from chalicelib.stacks import describe_stack, outputs_of, parameters_of, update_pin
from jamsdr.embedded import EmbeddedAws, World, build_world
from tests.conftest import PRIMARY, RECOVERY

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
HOUR = 3600.0


class Killed(BaseException):
    """The Lambda died here (not an Exception: the tick must not be able to catch it)."""


Hook = Callable[..., Any]


def _unregister(factory: ClientFactory, added: list[tuple[str, Hook]]) -> None:
    # ClientFactory has no unregister_hook: undo register_hook by hand (tests only).
    for event, handler in added:
        factory._hooks.remove((event, handler))
        for client in list(factory._clients.values()):
            client.meta.events.unregister(event, handler)


class Realism:
    """What real RDS reports and moto does not, switched on for the whole module.

    The JAMS database is StorageEncrypted, but moto reports its snapshots as unencrypted when the
    instance has no explicit KmsKeyId (CloudFormation left it to the default key), so the sources of
    our database are reported encrypted, as RDS does.
    """

    def __init__(self) -> None:
        self.encrypted = True

    def __call__(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if not self.encrypted or context.get("client_region") != PRIMARY:
            return
        for snapshot in [*parsed.get("DBSnapshots", []), parsed.get("DBSnapshot") or {}]:
            if snapshot.get("DBSnapshotArn"):
                snapshot["Encrypted"] = True
                snapshot.setdefault("KmsKeyId", f"arn:aws:kms:{PRIMARY}:123456789012:key/primary-rds")


REALISM = Realism()


@pytest.fixture(scope="module")
def base_world(moto_server: EmbeddedAws) -> Iterator[World]:
    """One world for the module (build_world takes seconds); each test starts from it cleaned."""
    factory = moto_server.clients
    assert factory is not None
    moto_server.reset()
    for region in (PRIMARY, RECOVERY):
        moto_server.bring_region_up(region)
    set_factory(factory)
    world = build_world(factory, Settings.defaults())
    # moto's CloudFormation ignores the instance's OptionGroupName; RDS would use the network stack's.
    factory.client("rds", PRIMARY).modify_db_instance(
        DBInstanceIdentifier=world.settings.db_instance_id, OptionGroupName=world.network["OptionGroupName"],
        ApplyImmediately=True,
    )
    added: list[tuple[str, Hook]] = [
        ("after-call.rds.DescribeDBSnapshots", REALISM), ("after-call.rds.CreateDBSnapshot", REALISM)
    ]
    for event, handler in added:
        factory.register_hook(event, handler)
    yield world
    _unregister(factory, added)


def _restore(world: World, factory: ClientFactory) -> None:
    """Back to the freshly built world: no snapshots, nothing pinned, empty ledger, no recovery app."""
    settings = world.settings
    for region in (PRIMARY, RECOVERY):
        rds = factory.client("rds", region)
        for snapshot in rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]:
            rds.delete_db_snapshot(DBSnapshotIdentifier=snapshot["DBSnapshotIdentifier"])
    cfn = factory.client("cloudformation", RECOVERY)
    if describe_stack(cfn, settings.app_stack_name) is not None:
        cfn.delete_stack(StackName=settings.app_stack_name)
    standby = describe_stack(cfn, settings.standby_stack_name)
    assert standby is not None
    if parameters_of(standby).get("DBSnapshotIdentifier"):
        update_pin(cfn, standby, "")
    ddb = factory.client("dynamodb", RECOVERY)
    for item in ddb.scan(TableName=settings.ledger_table_name).get("Items", []):
        ddb.delete_item(TableName=settings.ledger_table_name, Key={"pk": item["pk"]})
    REALISM.encrypted = True


@pytest.fixture
def clients(base_world: World, moto_server: EmbeddedAws) -> Iterator[ClientFactory]:
    """The embedded AWS's factory with both regions up and the module's world restored."""
    factory = moto_server.clients
    assert factory is not None
    for region in (PRIMARY, RECOVERY):
        moto_server.bring_region_up(region)
    set_factory(factory)
    _restore(base_world, factory)
    yield factory
    for region in (PRIMARY, RECOVERY):
        moto_server.bring_region_up(region)


@pytest.fixture
def embedded(moto_server: EmbeddedAws, clients: ClientFactory) -> EmbeddedAws:
    return moto_server


@pytest.fixture
def world(base_world: World, clients: ClientFactory) -> World:
    return base_world


@pytest.fixture
def hooks(clients: ClientFactory) -> Iterator[Callable[[str, Hook], None]]:
    """Register botocore hooks on every client for this test only."""
    added: list[tuple[str, Hook]] = []

    def add(event: str, handler: Hook) -> None:
        clients.register_hook(event, handler)
        added.append((event, handler))

    yield add
    _unregister(clients, added)


@pytest.fixture(autouse=True)
def _clean_metrics() -> Iterator[None]:
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def metric_values(name: str) -> list[float]:
    entry = metrics.metric_set.get(name)
    if not entry:
        return []
    value = entry["Value"]
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


def ours(clients: ClientFactory, region: str, env: str = "jams") -> dict[str, Any]:
    return {s.snapshot_id: s for s in list_snapshots(clients.client("rds", region), region, env)}


def standby_pin(clients: ClientFactory, settings: Settings) -> dict[str, str]:
    stack = describe_stack(clients.client("cloudformation", RECOVERY), settings.standby_stack_name)
    assert stack is not None
    outputs = outputs_of(stack)
    ssm = clients.client("ssm", RECOVERY)
    try:
        published = ssm.get_parameter(Name=outputs["PinnedSnapshotParameterName"])["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        published = None  # the pipeline writes it once a pin has settled
    return {
        "parameter": parameters_of(stack)["DBSnapshotIdentifier"],
        "output": outputs["PinnedSnapshotIdentifier"],
        "ssm": published,
        "status": stack["StackStatus"],
    }


def calls(hooks: Callable[[str, Hook], None], event: str) -> list[dict[str, Any]]:
    """Record the wire request (before-call params) of every call matching ``event``."""
    seen: list[dict[str, Any]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        seen.append({"operation": model.name, **params.get("body", {}), "region": params["context"]["client_region"]})

    hooks(event, record)
    return seen


def tick(settings: Settings, clients: ClientFactory, clock: FakeClock) -> TickResult:
    return run_tick(settings, clients, clock)


def set_lease(clients: ClientFactory, settings: Settings, holder: str | None, kind: str = "recovery") -> None:
    item: dict[str, Any] = {"pk": {"S": lease_key(settings.environment, kind)}, "epoch": {"N": "3"}}
    if holder is not None:
        item["holder"] = {"S": holder}
    clients.client("dynamodb", RECOVERY).put_item(TableName=settings.ledger_table_name, Item=item)


def make_recovery_app_stack(clients: ClientFactory, settings: Settings) -> None:
    """Stands in for the application stack a recovery restored in the recovery region."""
    clients.client("cloudformation", RECOVERY).create_stack(
        StackName=settings.app_stack_name,
        TemplateBody='{"Resources": {"Marker": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}}',
    )


# --- the full cycle -------------------------------------------------------------------------------


def test_full_cycle_from_nothing_to_a_pinned_copy(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    settings = world.settings
    assert standby_pin(clients, settings)["output"] == "none"
    assert standby_pin(clients, settings)["ssm"] is None
    copy_requests = calls(hooks, "before-call.rds.CopyDBSnapshot")
    pin_requests = calls(hooks, "before-call.cloudformation.UpdateStack")

    result = tick(settings, clients, clock)

    source_id = "jams-dr-202601050900"
    copy_id = copy_snapshot_id(source_id)
    assert result.errors == []
    assert result.taken == [source_id]
    assert result.copied == [copy_id]
    assert result.pinned == copy_id
    assert set(ours(clients, PRIMARY)) == {source_id}
    assert set(ours(clients, RECOVERY)) == {copy_id}
    pin = standby_pin(clients, settings)
    assert pin == {"parameter": copy_id, "output": copy_id, "ssm": copy_id, "status": "UPDATE_COMPLETE"}
    # No RoleARN: CloudFormation would keep using a role for every later operation on the standby stack;
    # the pin needs none, as no network resource depends on the pin (test_first_deployment.py).
    assert len(pin_requests) == 1 and "RoleARN" not in pin_requests[0], pin_requests

    # the copy request itself: destination client, source ARN, presigned for the source region, tags
    assert len(copy_requests) == 1
    request = copy_requests[0]
    assert request["region"] == RECOVERY
    assert request["SourceDBSnapshotIdentifier"] == f"arn:aws:rds:{PRIMARY}:123456789012:snapshot:{source_id}"
    assert request["CopyTags"] == "true"
    assert "%2Fus-east-1%2Frds%2Faws4_request" in request["PreSignedUrl"]
    assert "DestinationRegion=us-west-2" in request["PreSignedUrl"]
    tags = {request[f"Tags.Tag.{i}.Key"]: request[f"Tags.Tag.{i}.Value"] for i in range(1, 8)
            if f"Tags.Tag.{i}.Key" in request}
    assert tags["managed-by"] == "jams-dr"
    assert tags["jams-dr:environment"] == "jams"
    assert tags["jams-dr:kind"] == "copy"
    assert tags["jams-dr:source-arn"] == request["SourceDBSnapshotIdentifier"]
    assert tags["jams-dr:source-created"] == isoformat(START)

    # what the status command and the recovery chain see
    info = recovery_point(settings, clients)
    assert info.pinned is not None and info.pinned.snapshot_id == copy_id and info.pinned.status == "available"
    assert info.pinned.created_at == START and info.pinned.region == RECOVERY
    assert info.newest == info.pinned and not info.pinned_missing
    assert info.pinned.to_dict()["created_at"] == isoformat(START)
    assert (info.snapshot_id, info.arn, info.source_created_at, info.status) == (
        copy_id, info.pinned.arn, START, "available")

    # the RPO metric, under exactly the dimension set the support stack's alarm watches
    assert metric_values("RecoveryPointAgeSeconds") == [0.0]
    assert metric_values("SnapshotPipelineFailures") == [0.0]
    assert metric_values("CopyDurationSeconds") == [0.0]

    # a second tick in the same interval changes nothing
    clock.advance(300)
    again = tick(settings, clients, clock)
    assert (again.taken, again.copied, again.pinned, again.pruned, again.errors) == ([], [], None, [], [])
    assert again.rpo_seconds == 300.0
    assert len(copy_requests) == 1


def test_each_interval_moves_the_pin_to_the_newest_copy(
    world: World, clients: ClientFactory, clock: FakeClock
) -> None:
    settings = dataclasses.replace(world.settings, retain_count=2, retain_days=0)
    for _ in range(4):
        result = tick(settings, clients, clock)
        assert result.errors == []
        clock.advance(HOUR)
    newest = copy_snapshot_id("jams-dr-202601051200")
    assert standby_pin(clients, settings)["parameter"] == newest
    assert set(ours(clients, RECOVERY)) == {newest, copy_snapshot_id("jams-dr-202601051100")}
    assert set(ours(clients, PRIMARY)) == {"jams-dr-202601051200", "jams-dr-202601051100"}


# --- interrupted ticks and concurrent ticks -------------------------------------------------------


@pytest.mark.parametrize(
    "operation", ["CreateDBSnapshot", "AddTagsToResource", "CopyDBSnapshot", "UpdateStack", "DeleteDBSnapshot"]
)
def test_a_tick_killed_after_any_stage_is_completed_by_the_next(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None], operation: str
) -> None:
    settings = dataclasses.replace(world.settings, retain_count=1, retain_days=0)
    if operation == "DeleteDBSnapshot":
        tick(settings, clients, clock)  # something to prune in the next interval
        clock.advance(HOUR)
    killed = {"done": False}

    def die_once(**_: Any) -> None:
        if not killed["done"]:
            killed["done"] = True
            raise Killed(operation)

    hooks(f"after-call.*.{operation}", die_once)
    with pytest.raises(Killed):
        tick(settings, clients, clock)
    clock.advance(60)
    result = tick(settings, clients, clock)

    assert result.errors == []
    newest_source = "jams-dr-202601051000" if operation == "DeleteDBSnapshot" else "jams-dr-202601050900"
    assert set(ours(clients, PRIMARY)) == {newest_source}
    assert set(ours(clients, RECOVERY)) == {copy_snapshot_id(newest_source)}
    assert standby_pin(clients, settings)["parameter"] == copy_snapshot_id(newest_source)
    assert not tick(settings, clients, clock).taken


def meet(barrier: threading.Barrier) -> Hook:
    def wait(**_: Any) -> None:  # a before-call hook that returns a value replaces the response
        barrier.wait()

    return wait


def test_two_ticks_at_once_make_one_snapshot_and_one_copy(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    settings = world.settings
    creates = calls(hooks, "before-call.rds.CreateDBSnapshot")
    copies = calls(hooks, "before-call.rds.CopyDBSnapshot")
    # Both ticks list first, then both ask for the snapshot; for the copy both must have seen the source.
    at_create = threading.Barrier(2, timeout=20)
    hooks("before-call.rds.CreateDBSnapshot", meet(at_create))
    results: list[TickResult] = []

    def run() -> None:
        results.append(tick(settings, clients, clock))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(results) == 2 and all(r.errors == [] for r in results)
    assert len(creates) == 2  # both asked, RDS kept one
    assert sorted(len(r.taken) for r in results) == [0, 1]
    assert any("concurrent tick" in w for r in results for w in r.waiting)
    assert len(ours(clients, PRIMARY)) == 1
    assert len(ours(clients, RECOVERY)) == 1
    assert len(copies) == 1


def test_two_ticks_racing_to_copy_make_one_copy(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    settings = world.settings
    blocked = {"on": True}

    def limit(model: Any, **_: Any) -> None:
        if blocked["on"]:
            raise ClientError({"Error": {"Code": "SnapshotQuotaExceeded", "Message": "quota"}}, model.name)

    hooks("before-call.rds.CopyDBSnapshot", limit)
    tick(settings, clients, clock)  # the source exists, its copy was refused
    assert len(ours(clients, PRIMARY)) == 1 and not ours(clients, RECOVERY)
    blocked["on"] = False
    at_copy = threading.Barrier(2, timeout=20)
    hooks("before-call.rds.CopyDBSnapshot", meet(at_copy))
    copies = calls(hooks, "before-call.rds.CopyDBSnapshot")
    results: list[TickResult] = []
    clock.advance(60)
    threads = [threading.Thread(target=lambda: results.append(tick(settings, clients, clock))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(results) == 2 and all(r.errors == [] for r in results), [r.errors for r in results]
    assert len(copies) == 2
    assert sorted(len(r.copied) for r in results) == [0, 1]
    assert set(ours(clients, RECOVERY)) == {copy_snapshot_id("jams-dr-202601050900")}
    assert standby_pin(clients, settings)["parameter"] == copy_snapshot_id("jams-dr-202601050900")


# --- the copy request -----------------------------------------------------------------------------


def test_encrypted_source_is_copied_with_the_destination_key(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    settings = world.settings
    assert settings.copy_kms_key and f":{RECOVERY}:" in settings.copy_kms_key
    requests = calls(hooks, "before-call.rds.CopyDBSnapshot")
    api_params: list[dict[str, Any]] = []
    hooks("before-parameter-build.rds.CopyDBSnapshot", lambda params, **_: api_params.append(dict(params)))

    result = tick(settings, clients, clock)

    assert result.errors == [] and result.copied
    source = ours(clients, PRIMARY)["jams-dr-202601050900"]
    assert source.encrypted
    assert requests[0]["KmsKeyId"] == settings.copy_kms_key
    assert api_params[0]["SourceRegion"] == PRIMARY
    assert api_params[0]["KmsKeyId"] == settings.copy_kms_key
    copy = clients.client("rds", RECOVERY).describe_db_snapshots(
        DBSnapshotIdentifier=copy_snapshot_id(source.snapshot_id))["DBSnapshots"][0]
    assert copy["Encrypted"] and copy["KmsKeyId"] == settings.copy_kms_key


def test_encrypted_source_without_a_key_is_not_copied_and_notified_once(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    settings = dataclasses.replace(world.settings, copy_kms_key=None)
    copies = calls(hooks, "before-call.rds.CopyDBSnapshot")
    published = calls(hooks, "before-call.sns.Publish")

    first = tick(settings, clients, clock)
    clock.advance(600)
    second = tick(settings, clients, clock)

    assert copies == []
    for result in (first, second):
        assert any("COPY_KMS_KEY_ID" in e and "encrypted" in e for e in result.errors)
        assert result.pinned is None
    assert metric_values("SnapshotPipelineFailures") == [1.0, 1.0]
    assert len(published) == 1 and "COPY_KMS_KEY_ID" in published[0]["Message"]
    assert standby_pin(clients, settings)["output"] == "none"

    # configured again: the copy goes out and the episode closes
    fixed = tick(world.settings, clients, clock)
    assert fixed.copied and fixed.errors == []
    item = clients.client("dynamodb", RECOVERY).get_item(
        TableName=settings.ledger_table_name, Key={"pk": {"S": notice_key("copy-config", "jams")}})
    assert "Item" not in item


def test_unencrypted_source_is_copied_encrypted(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    REALISM.encrypted = False  # moto's own answer for this database: not encrypted
    requests = calls(hooks, "before-call.rds.CopyDBSnapshot")
    result = tick(world.settings, clients, clock)
    assert result.errors == [] and result.copied
    assert requests[0]["KmsKeyId"] == world.settings.copy_kms_key


def test_unencrypted_source_without_a_copy_key_uses_the_rds_managed_key(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    REALISM.encrypted = False
    requests = calls(hooks, "before-call.rds.CopyDBSnapshot")
    result = tick(dataclasses.replace(world.settings, copy_kms_key=None), clients, clock)
    assert result.errors == [] and result.copied
    assert requests[0]["KmsKeyId"] == "alias/aws/rds"


def test_option_group_is_mapped_to_the_recovery_region(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    settings = world.settings
    primary_group = world.network["OptionGroupName"]
    requests = calls(hooks, "before-call.rds.CopyDBSnapshot")

    result = tick(settings, clients, clock)

    assert result.errors == []
    assert requests[0]["OptionGroupName"] == settings.option_group_map[primary_group]
    assert requests[0]["OptionGroupName"] == world.standby["OptionGroupName"]


def with_option_group(group: str) -> Hook:
    """Real RDS reports OptionGroupName on each snapshot (moto leaves it off)."""

    def rewrite(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if context.get("client_region") == PRIMARY:
            for snapshot in [*parsed.get("DBSnapshots", []), parsed.get("DBSnapshot") or {}]:
                snapshot["OptionGroupName"] = group

    return rewrite


def test_option_group_reported_on_the_snapshot_wins(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    settings = dataclasses.replace(world.settings, option_group_map={"jams-tde-2019": "jams-standby-tde"})
    for event in ("after-call.rds.DescribeDBSnapshots", "after-call.rds.CreateDBSnapshot"):
        hooks(event, with_option_group("jams-tde-2019"))
    instance_reads = calls(hooks, "before-call.rds.DescribeDBInstances")
    requests = calls(hooks, "before-call.rds.CopyDBSnapshot")
    result = tick(settings, clients, clock)
    assert result.errors == []
    assert requests[0]["OptionGroupName"] == "jams-standby-tde"
    assert instance_reads == []


def test_default_option_group_is_not_passed(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    for event in ("after-call.rds.DescribeDBSnapshots", "after-call.rds.CreateDBSnapshot"):
        hooks(event, with_option_group("default:sqlserver-se-15-00"))
    requests = calls(hooks, "before-call.rds.CopyDBSnapshot")
    result = tick(dataclasses.replace(world.settings, option_group_map={}), clients, clock)
    assert result.errors == [] and "OptionGroupName" not in requests[0]


def test_missing_option_group_mapping_is_a_clear_error(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    primary_group = world.network["OptionGroupName"]
    settings = dataclasses.replace(world.settings, option_group_map={"some-other-group": "x"})
    copies = calls(hooks, "before-call.rds.CopyDBSnapshot")
    published = calls(hooks, "before-call.sns.Publish")

    result = tick(settings, clients, clock)
    tick(settings, clients, clock)

    assert copies == []
    (error,) = [e for e in result.errors if "option group" in e]
    assert primary_group in error and "OPTION_GROUP_MAP" in error
    assert len(published) == 1
    assert not ours(clients, RECOVERY)


def test_empty_option_group_map_falls_back_to_the_standby_group(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    requests = calls(hooks, "before-call.rds.CopyDBSnapshot")
    result = tick(dataclasses.replace(world.settings, option_group_map={}), clients, clock)
    assert result.errors == []
    assert requests[0]["OptionGroupName"] == world.standby["OptionGroupName"]


# --- copy limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("SnapshotQuotaExceeded", "The request cannot be processed because it would exceed the maximum number"),
        ("InvalidParameterCombination", "Cannot copy more than 5 snapshots across regions"),
    ],
)
def test_copy_limit_waits_notifies_once_and_deletes_nothing(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None],
    code: str, message: str,
) -> None:
    settings = world.settings
    limited = {"on": True}

    def limit(model: Any, **_: Any) -> None:
        if limited["on"]:
            raise ClientError({"Error": {"Code": code, "Message": message}}, model.name)

    hooks("before-call.rds.CopyDBSnapshot", limit)
    deletes = calls(hooks, "before-call.rds.DeleteDBSnapshot")
    published = calls(hooks, "before-call.sns.Publish")
    ledger = clients.client("dynamodb", RECOVERY)
    key = {"pk": {"S": notice_key("copy-limit", "jams")}}

    results = []
    for _ in range(3):
        results.append(tick(settings, clients, clock))
        clock.advance(HOUR)

    assert all(any("copy limit" in w for w in r.waiting) for r in results)
    assert metric_values("SnapshotPipelineFailures") == [1.0, 1.0, 1.0]
    assert len(published) == 1 and "deletes nothing" in published[0]["Message"]
    assert deletes == []
    assert len(ours(clients, PRIMARY)) == 3 and not ours(clients, RECOVERY)
    assert "Item" in ledger.get_item(TableName=settings.ledger_table_name, Key=key)

    # the limit lifts: the newest source (12:00, taken now) is copied, the episode closes; a new
    # episode notifies again
    limited["on"] = False
    recovered = tick(settings, clients, clock)
    assert recovered.copied == [copy_snapshot_id("jams-dr-202601051200")] and recovered.errors == []
    assert "Item" not in ledger.get_item(TableName=settings.ledger_table_name, Key=key)
    limited["on"] = True
    clock.advance(HOUR)
    tick(settings, clients, clock)
    assert len(published) == 2


# --- pinning --------------------------------------------------------------------------------------


def test_no_pin_while_the_lease_is_held(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    settings = world.settings
    updates = calls(hooks, "before-call.cloudformation.UpdateStack")
    set_lease(clients, settings, "recovery-7f3a")
    held = tick(settings, clients, clock)
    assert held.copied and held.pinned is None
    assert any("lease" in w and "recovery-7f3a" in w for w in held.waiting)
    assert updates == [] and standby_pin(clients, settings)["output"] == "none"

    set_lease(clients, settings, None)  # the item stays, the holder is gone: free
    free = tick(settings, clients, clock)
    assert free.pinned == copy_snapshot_id("jams-dr-202601050900")


def test_no_pin_while_an_application_stack_lives_in_the_recovery_region(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    settings = world.settings
    tick(settings, clients, clock)
    first = copy_snapshot_id("jams-dr-202601050900")
    make_recovery_app_stack(clients, settings)
    updates = calls(hooks, "before-call.cloudformation.UpdateStack")
    clock.advance(HOUR)
    result = tick(settings, clients, clock)
    assert result.copied and result.pinned is None
    assert any("application stack" in w for w in result.waiting)
    assert updates == [] and standby_pin(clients, settings)["parameter"] == first


def test_the_previous_pin_survives_the_tick_that_moves_the_pin(
    world: World, clients: ClientFactory, clock: FakeClock
) -> None:
    settings = dataclasses.replace(world.settings, retain_count=1, retain_days=0)
    tick(settings, clients, clock)
    clock.advance(HOUR)
    moved = tick(settings, clients, clock)
    first, second = copy_snapshot_id("jams-dr-202601050900"), copy_snapshot_id("jams-dr-202601051000")
    assert moved.pinned == second
    assert set(ours(clients, RECOVERY)) == {first, second}
    clock.advance(300)
    settled = tick(settings, clients, clock)
    assert settled.pruned == [first]


def test_nothing_moves_or_is_pruned_while_the_standby_stack_is_changing(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    settings = dataclasses.replace(world.settings, retain_count=1, retain_days=0)
    tick(settings, clients, clock)
    clock.advance(HOUR)
    tick(settings, clients, clock)
    clock.advance(HOUR)

    def updating(parsed: dict[str, Any], **_: Any) -> None:
        for stack in parsed.get("Stacks", []):
            if stack["StackName"] == settings.standby_stack_name:
                stack["StackStatus"] = "UPDATE_ROLLBACK_IN_PROGRESS"

    hooks("after-call.cloudformation.DescribeStacks", updating)
    updates = calls(hooks, "before-call.cloudformation.UpdateStack")
    result = tick(settings, clients, clock)
    assert result.copied and result.pinned is None and updates == []
    assert any("pin pending" in w for w in result.waiting)
    assert not any(p.endswith("-copy") for p in result.pruned)
    assert len(ours(clients, RECOVERY)) == 3


def test_a_concurrent_stack_update_means_pin_pending(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    def busy(model: Any, **_: Any) -> None:
        raise ClientError({"Error": {"Code": "ValidationError", "Message": (
            "Stack:arn:aws:cloudformation:us-west-2:123456789012:stack/jams-standby/x is in "
            "UPDATE_IN_PROGRESS state and can not be updated.")}}, model.name)

    hooks("before-call.cloudformation.UpdateStack", busy)
    result = tick(world.settings, clients, clock)
    assert result.errors == [] and result.pinned is None
    assert any("pin pending" in w for w in result.waiting)


def test_a_copy_that_is_not_available_is_never_pinned_nor_its_source_pruned(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    settings = dataclasses.replace(world.settings, retain_count=1, retain_days=0)
    tick(settings, clients, clock)
    first_copy = copy_snapshot_id("jams-dr-202601050900")
    second = "jams-dr-202601051000"

    def still_copying(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        for snapshot in parsed.get("DBSnapshots", []):
            if snapshot["DBSnapshotIdentifier"] == copy_snapshot_id(second):
                snapshot["Status"] = "copying"

    def copying_answer(parsed: dict[str, Any], **_: Any) -> None:
        parsed["DBSnapshot"]["Status"] = "pending"

    hooks("after-call.rds.DescribeDBSnapshots", still_copying)
    hooks("after-call.rds.CopyDBSnapshot", copying_answer)
    for _ in range(2):
        clock.advance(HOUR)
        result = tick(settings, clients, clock)
        assert result.pinned is None
    assert standby_pin(clients, settings)["parameter"] == first_copy
    assert second in ours(clients, PRIMARY)  # its copy is in progress
    assert "jams-dr-202601051100" in ours(clients, PRIMARY)  # taken, not copied: copies run one at a time
    assert set(ours(clients, RECOVERY)) == {first_copy, copy_snapshot_id(second)}
    assert any("still copying" in w for w in result.waiting)


def test_a_creating_source_is_neither_copied_nor_followed_by_another(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    def creating(parsed: dict[str, Any], **_: Any) -> None:
        for snapshot in parsed.get("DBSnapshots", []) or [parsed.get("DBSnapshot", {})]:
            if snapshot.get("DBSnapshotIdentifier", "").startswith("jams-dr-2026") and not snapshot[
                "DBSnapshotIdentifier"].endswith("-copy"):
                snapshot["Status"] = "creating"

    hooks("after-call.rds.DescribeDBSnapshots", creating)
    hooks("after-call.rds.CreateDBSnapshot", creating)
    first = tick(world.settings, clients, clock)
    clock.advance(3 * HOUR)
    later = tick(world.settings, clients, clock)
    assert first.taken and not first.copied
    assert later.taken == [] and later.copied == []
    assert any("still creating" in w for w in later.waiting)


def test_a_failed_copy_is_removed_and_made_again(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    failing = {"on": True}

    def failed(parsed: dict[str, Any], **_: Any) -> None:
        for snapshot in parsed.get("DBSnapshots", []):
            if failing["on"] and snapshot["DBSnapshotIdentifier"].endswith("-copy"):
                snapshot["Status"] = "failed"

    hooks("after-call.rds.CopyDBSnapshot", lambda parsed, **_: parsed["DBSnapshot"].update(Status="pending"))
    hooks("after-call.rds.DescribeDBSnapshots", failed)
    tick(world.settings, clients, clock)
    clock.advance(300)
    result = tick(world.settings, clients, clock)
    copy_id = copy_snapshot_id("jams-dr-202601050900")
    assert any("failed" in e for e in result.errors)
    assert copy_id in result.pruned and result.copied == [copy_id]
    failing["on"] = False
    clock.advance(300)
    done = tick(world.settings, clients, clock)
    assert done.pinned == copy_id


# --- pruning --------------------------------------------------------------------------------------


def test_pinned_and_newest_copies_survive_aggressive_retention(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    gentle = world.settings
    for _ in range(3):  # 09:00, 10:00, 11:00 -> pinned 11:00
        tick(gentle, clients, clock)
        clock.advance(HOUR)
    pinned = copy_snapshot_id("jams-dr-202601051100")
    assert standby_pin(clients, gentle)["parameter"] == pinned
    make_recovery_app_stack(clients, gentle)  # the pin is frozen from now on
    for _ in range(3):  # 12:00, 13:00, 14:00 copied, not pinned
        tick(gentle, clients, clock)
        clock.advance(HOUR)

    aggressive = dataclasses.replace(gentle, retain_count=1, retain_days=0)
    result = tick(aggressive, clients, clock)  # 15:00

    newest = copy_snapshot_id("jams-dr-202601051500")
    assert result.errors == []
    assert set(ours(clients, RECOVERY)) == {pinned, newest}
    assert set(ours(clients, PRIMARY)) == {"jams-dr-202601051500"}
    assert standby_pin(clients, aggressive)["parameter"] == pinned
    # copies 09, 10, 12, 13, 14 (11 pinned, 15 newest), then sources 09..14
    assert metric_values("SnapshotsPruned") == [5.0, 6.0]
    assert recovery_point(aggressive, clients).pinned is not None


def test_only_our_snapshots_for_this_environment_are_pruned(
    world: World, clients: ClientFactory, clock: FakeClock
) -> None:
    rds = clients.client("rds", PRIMARY)
    db = world.settings.db_instance_id
    rds.create_db_snapshot(DBInstanceIdentifier=db, DBSnapshotIdentifier="operator-manual")
    rds.create_db_snapshot(DBInstanceIdentifier=db, DBSnapshotIdentifier="other-env-dr-1",
                           Tags=source_tags("other", START - timedelta(days=30)))
    settings = dataclasses.replace(world.settings, retain_count=1, retain_days=0)
    for _ in range(3):
        tick(settings, clients, clock)
        clock.advance(HOUR)
    names = {s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]}
    assert {"operator-manual", "other-env-dr-1", "jams-dr-202601051100"} == names


@pytest.mark.parametrize("kind", ["recovery", "drill"])
def test_no_copies_are_pruned_while_a_lease_is_held(
    world: World, clients: ClientFactory, clock: FakeClock, kind: str
) -> None:
    settings = dataclasses.replace(world.settings, retain_count=1, retain_days=0)
    for _ in range(2):
        tick(settings, clients, clock)
        clock.advance(HOUR)
    set_lease(clients, settings, f"{kind}-42", kind)
    held = [tick(settings, clients, clock), tick(settings, clients, clock)]
    # 09:00 (prunable), 10:00 (pinned), 11:00 (new): nothing removed while the lease is held
    assert len(ours(clients, RECOVERY)) == 3
    assert all(not any(p.endswith("-copy") for p in r.pruned) for r in held)
    assert any(f"lease is held by {kind}-42" in w for w in held[-1].waiting)
    # a drill does not freeze the pin (it restores into its own stack); a recovery does
    expected_pin = "jams-dr-202601051100" if kind == "drill" else "jams-dr-202601051000"
    assert standby_pin(clients, settings)["parameter"] == copy_snapshot_id(expected_pin)
    set_lease(clients, settings, None, kind)
    freed = tick(settings, clients, clock)
    assert copy_snapshot_id("jams-dr-202601050900") in freed.pruned


def test_pagination_of_300_snapshots_with_stubber(
    world: World, clients: ClientFactory, clock: FakeClock
) -> None:
    """moto ignores MaxRecords/Marker: the primary RDS client is stubbed with three pages of 100."""
    settings = world.settings
    tick(settings, clients, clock)  # the real newest source, copied and pinned
    rds = clients.client("rds", PRIMARY)
    real = rds.describe_db_snapshots(DBSnapshotIdentifier="jams-dr-202601050900")["DBSnapshots"][0]
    old = [
        {**real, "DBSnapshotIdentifier": f"jams-dr-old-{i:03d}",
         "DBSnapshotArn": f"arn:aws:rds:{PRIMARY}:123456789012:snapshot:jams-dr-old-{i:03d}",
         "TagList": source_tags("jams", START - timedelta(days=30, hours=i))}
        for i in range(299)
    ]
    listing = [real, *old]
    expected = {"SnapshotType": "manual", "DBInstanceIdentifier": settings.db_instance_id, "MaxRecords": 100}
    clock.advance(600)
    with Stubber(rds) as stub:
        stub.add_response("describe_db_snapshots", {"DBSnapshots": listing[:100], "Marker": "m-2"}, expected)
        stub.add_response("describe_db_snapshots", {"DBSnapshots": listing[100:200], "Marker": "m-3"},
                          {**expected, "Marker": "m-2"})
        stub.add_response("describe_db_snapshots", {"DBSnapshots": listing[200:]}, {**expected, "Marker": "m-3"})
        # the tick reads the region's manual-snapshot quota (docs/retention.md): a raised one, with room
        stub.add_response("describe_account_attributes", {"AccountQuotas": [
            {"AccountQuotaName": "ManualSnapshots", "Used": 300, "Max": 1000}]}, {})
        # retention 7 / 2 days: the real one and the six newest old ones stay, 293 go, newest first
        for snap in old[6:]:
            stub.add_response("delete_db_snapshot", {"DBSnapshot": {}},
                              {"DBSnapshotIdentifier": snap["DBSnapshotIdentifier"]})
        result = tick(settings, clients, clock)
        stub.assert_no_pending_responses()
    assert result.errors == []
    assert len(result.pruned) == 293
    assert metric_values("SnapshotsPruned") == [293.0]


# --- a region that does not answer ----------------------------------------------------------------


def test_unreachable_primary_still_pins_prunes_and_measures(
    world: World, embedded: EmbeddedAws, clients: ClientFactory, clock: FakeClock
) -> None:
    settings = dataclasses.replace(world.settings, retain_count=1, retain_days=0)
    tick(settings, clients, clock)
    clock.advance(HOUR)
    set_lease(clients, settings, "drill-1")
    tick(settings, clients, clock)  # second copy made, pin frozen on the first
    set_lease(clients, settings, None)
    embedded.take_region_down(PRIMARY)
    clock.advance(HOUR)

    result = tick(settings, clients, clock)

    newest, older = copy_snapshot_id("jams-dr-202601051000"), copy_snapshot_id("jams-dr-202601050900")
    assert not result.primary_reachable
    assert result.errors == []
    assert any("unreachable" in w for w in result.waiting)
    assert result.taken == [] and result.copied == []
    assert result.pinned == newest
    assert result.pruned == []  # the previous pin is spared while the update may still roll back
    assert result.rpo_seconds == HOUR
    assert metric_values("RecoveryPointAgeSeconds")[-1] == HOUR
    clock.advance(300)
    later = tick(settings, clients, clock)
    assert later.pruned == [older] and later.errors == []


def test_unreachable_recovery_region_is_an_error_not_a_crash(
    world: World, embedded: EmbeddedAws, clients: ClientFactory, clock: FakeClock
) -> None:
    embedded.take_region_down(RECOVERY)
    result = tick(world.settings, clients, clock)
    assert result.taken and not result.copied and result.errors
    assert result.primary_reachable


def test_db_instance_id_is_read_from_the_app_stack_when_unset(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    creates = calls(hooks, "before-call.rds.CreateDBSnapshot")
    result = tick(dataclasses.replace(world.settings, db_instance_id=None), clients, clock)
    assert result.errors == [] and result.taken
    assert creates[0]["DBInstanceIdentifier"] == world.app["DatabaseInstanceId"]


def test_missing_standby_stack_is_a_clear_error(world: World, clients: ClientFactory, clock: FakeClock) -> None:
    result = tick(dataclasses.replace(world.settings, standby_stack="no-such-standby"), clients, clock)
    assert any("no-such-standby" in e and "STANDBY_STACK_NAME" in e for e in result.errors)
    assert len(ours(clients, RECOVERY)) == 1  # copies went on; nothing was pruned without knowing the pin


# --- cross-region automated backups (moto lacks the API: Stubber) ---------------------------------


def test_backup_replication_is_started_once_with_the_right_request(clients: ClientFactory) -> None:
    settings = Settings.defaults(
        copy_kms_key="arn:aws:kms:us-west-2:123456789012:key/11111111-2222-3333-4444-555555555555",
        backup_replication=True,
    )
    source_arn = "arn:aws:rds:us-east-1:123456789012:db:jams-db"
    primary, recovery = clients.client("rds", PRIMARY), clients.client("rds", RECOVERY)
    with Stubber(primary) as p_stub, Stubber(recovery) as r_stub:
        p_stub.add_response("describe_db_instances",
                            {"DBInstances": [{"DBInstanceArn": source_arn, "StorageEncrypted": True}]},
                            {"DBInstanceIdentifier": "jams-db"})
        r_stub.add_response(
            "start_db_instance_automated_backups_replication", {},
            {"SourceDBInstanceArn": source_arn, "KmsKeyId": settings.copy_kms_key, "BackupRetentionPeriod": 2,
             "SourceRegion": PRIMARY},
        )
        assert "started" in ensure_backup_replication(settings, clients, "jams-db")
        p_stub.add_response(
            "describe_db_instances",
            {"DBInstances": [{"DBInstanceArn": source_arn, "StorageEncrypted": True,
                              "DBInstanceAutomatedBackupsReplications": [
                                  {"DBInstanceAutomatedBackupsArn":
                                   "arn:aws:rds:us-west-2:123456789012:auto-backup:ab-xyz"}]}]},
            {"DBInstanceIdentifier": "jams-db"},
        )
        assert ensure_backup_replication(settings, clients, "jams-db") == "replicating to us-west-2"
        p_stub.assert_no_pending_responses()
        r_stub.assert_no_pending_responses()


def test_the_tick_starts_backup_replication_once(
    world: World, clients: ClientFactory, clock: FakeClock, hooks: Callable[[str, Hook], None]
) -> None:
    """moto lacks the API: a before-call hook answers it (and records the request); AWS state decides."""
    settings = dataclasses.replace(world.settings, backup_replication=True)
    started: list[dict[str, Any]] = []
    replicating = {"on": False}

    class Ok:
        status_code = 200
        headers: dict[str, str] = {}

    def answer(params: dict[str, Any], **_: Any) -> Any:
        started.append(params["body"])
        replicating["on"] = True
        return Ok(), {"DBInstanceAutomatedBackup": {}}

    def replications(parsed: dict[str, Any], **_: Any) -> None:
        if replicating["on"]:
            for instance in parsed.get("DBInstances", []):
                instance["DBInstanceAutomatedBackupsReplications"] = [
                    {"DBInstanceAutomatedBackupsArn": f"arn:aws:rds:{RECOVERY}:123456789012:auto-backup:ab-1"}]

    hooks("before-call.rds.StartDBInstanceAutomatedBackupsReplication", answer)
    hooks("after-call.rds.DescribeDBInstances", replications)
    first = tick(settings, clients, clock)
    clock.advance(300)
    second = tick(settings, clients, clock)
    assert first.errors == [] and second.errors == []
    assert first.replication == f"replication to {RECOVERY} started"
    assert second.replication == f"replicating to {RECOVERY}"
    assert len(started) == 1
    request = started[0]
    assert request["SourceDBInstanceArn"].endswith(f":db:{settings.db_instance_id}")
    assert request["KmsKeyId"] == settings.copy_kms_key
    assert str(request["BackupRetentionPeriod"]) == "2"  # RETAIN_DAYS' default
    assert "%2Fus-east-1%2Frds%2Faws4_request" in request["PreSignedUrl"]


def test_backup_replication_of_an_encrypted_database_needs_the_key(clients: ClientFactory) -> None:
    settings = Settings.defaults(backup_replication=True)
    primary = clients.client("rds", PRIMARY)
    with Stubber(primary) as stub:
        stub.add_response("describe_db_instances",
                          {"DBInstances": [{"DBInstanceArn": "arn:aws:rds:us-east-1:1:db:x", "StorageEncrypted": True}]})
        with pytest.raises(Exception, match="COPY_KMS_KEY_ID"):
            ensure_backup_replication(settings, clients, "x")
