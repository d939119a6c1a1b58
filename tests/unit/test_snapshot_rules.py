"""The pure rules of the recovery-point pipeline: names, due-ness, copy choice, retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.snapshots.rules import (
    Retention,
    Snap,
    copy_candidate,
    copy_snapshot_id,
    copy_tags,
    is_default_option_group,
    matches_pin,
    protected_sources,
    prune_plan,
    slot_start,
    snap_from_description,
    snapshot_due,
    source_snapshot_id,
    source_tags,
)
from chalicelib.tags import TAG_ENVIRONMENT, TAG_MANAGED_BY

NOW = datetime(2026, 3, 10, 12, 7, 30, tzinfo=UTC)


def src(n: int, *, hours_ago: float, status: str = "available") -> Snap:
    return Snap(
        snapshot_id=f"jams-dr-{n:04d}",
        arn=f"arn:aws:rds:us-east-1:123456789012:snapshot:jams-dr-{n:04d}",
        region="us-east-1",
        kind="source",
        status=status,
        created=NOW - timedelta(hours=hours_ago),
    )


def cpy(source: Snap, *, status: str = "available") -> Snap:
    return Snap(
        snapshot_id=copy_snapshot_id(source.snapshot_id),
        arn=f"arn:aws:rds:us-west-2:123456789012:snapshot:{copy_snapshot_id(source.snapshot_id)}",
        region="us-west-2",
        kind="copy",
        status=status,
        created=source.created,
        source_id=source.snapshot_id,
        source_arn=source.arn,
    )


# --- names ----------------------------------------------------------------------------------------


def test_slot_ids_are_the_same_for_every_tick_in_one_interval() -> None:
    early = slot_start(datetime(2026, 3, 10, 12, 0, 1, tzinfo=UTC), 60)
    late = slot_start(datetime(2026, 3, 10, 12, 59, 59, tzinfo=UTC), 60)
    assert early == late == datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    assert source_snapshot_id("jams", early) == "jams-dr-202603101200"
    assert slot_start(datetime(2026, 3, 10, 13, 0, tzinfo=UTC), 60) != early
    assert source_snapshot_id("jams", slot_start(NOW, 5)) == "jams-dr-202603101205"


def test_copy_id_is_derived_from_the_source_id() -> None:
    assert copy_snapshot_id("Jams-dr-202603101200") == "jams-dr-202603101200-copy"


def test_default_option_groups_need_no_mapping() -> None:
    assert is_default_option_group("default:sqlserver-se-15-00")
    assert is_default_option_group(None)
    assert not is_default_option_group("jams-network-sqlserver")


def test_tags_round_trip_through_a_description() -> None:
    taken = NOW - timedelta(minutes=3)
    desc = {
        "DBSnapshotIdentifier": "jams-dr-1",
        "DBSnapshotArn": "arn:aws:rds:us-east-1:1:snapshot:jams-dr-1",
        "Status": "available",
        "Encrypted": True,
        "SnapshotCreateTime": datetime(2030, 1, 1, tzinfo=UTC),  # RDS's clock: ours wins
        "TagList": source_tags("jams", taken),
    }
    source = snap_from_description(desc, "us-east-1", "jams")
    assert source is not None and source.kind == "source" and source.encrypted
    assert source.created == taken
    copy_desc = {
        "DBSnapshotIdentifier": "jams-dr-1-copy",
        "DBSnapshotArn": "arn:aws:rds:us-west-2:1:snapshot:jams-dr-1-copy",
        "Status": "pending",
        "TagList": copy_tags("jams", source, NOW),
    }
    copy = snap_from_description(copy_desc, "us-west-2", "jams")
    assert copy is not None and copy.kind == "copy" and copy.in_progress
    assert copy.created == taken and copy.source_arn == source.arn and copy.copy_started == NOW


@pytest.mark.parametrize(
    "tags",
    [
        [],
        [{"Key": TAG_MANAGED_BY, "Value": "someone-else"}, {"Key": TAG_ENVIRONMENT, "Value": "jams"}],
        [{"Key": TAG_MANAGED_BY, "Value": "jams-dr"}, {"Key": TAG_ENVIRONMENT, "Value": "other-env"}],
        [{"Key": TAG_MANAGED_BY, "Value": "jams-dr"}],
        # A drill's or recovery's final snapshot: the application stack's tags, copied to it by RDS.
        [{"Key": TAG_MANAGED_BY, "Value": "jams-dr"}, {"Key": TAG_ENVIRONMENT, "Value": "jams"},
         {"Key": "jams-dr:kind", "Value": "drill"}],
        [{"Key": TAG_MANAGED_BY, "Value": "jams-dr"}, {"Key": TAG_ENVIRONMENT, "Value": "jams"},
         {"Key": "jams-dr:kind", "Value": "recovery"}],
        [{"Key": TAG_MANAGED_BY, "Value": "jams-dr"}, {"Key": TAG_ENVIRONMENT, "Value": "jams"}],
    ],
)
def test_snapshots_without_our_tags_for_this_environment_are_not_ours(tags: list[dict[str, str]]) -> None:
    desc = {"DBSnapshotIdentifier": "x", "Status": "available", "TagList": tags}
    assert snap_from_description(desc, "us-east-1", "jams") is None


# --- due ------------------------------------------------------------------------------------------


def test_first_snapshot_is_due() -> None:
    assert snapshot_due([], NOW, 60).due


def test_due_only_after_the_interval() -> None:
    assert not snapshot_due([src(1, hours_ago=0.5)], NOW, 60).due
    assert snapshot_due([src(1, hours_ago=1.0)], NOW, 60).due


def test_never_due_while_ours_is_creating() -> None:
    due = snapshot_due([src(1, hours_ago=5, status="creating")], NOW, 60)
    assert not due.due and "creating" in due.reason


def test_a_failed_snapshot_does_not_postpone_the_next() -> None:
    assert snapshot_due([src(1, hours_ago=2), src(2, hours_ago=0.1, status="failed")], NOW, 60).due


# --- copy -----------------------------------------------------------------------------------------


def test_the_newest_available_source_without_a_copy_is_copied() -> None:
    old, new = src(1, hours_ago=2), src(2, hours_ago=1)
    assert copy_candidate([old, new], []).source == new
    assert copy_candidate([old, new], [cpy(new)]).source is None


def test_copies_run_one_after_another() -> None:
    old, new = src(1, hours_ago=2), src(2, hours_ago=1)
    decision = copy_candidate([old, new], [cpy(old, status="copying")])
    assert decision.source is None and "copying" in decision.reason


def test_a_source_still_creating_is_not_copied() -> None:
    done, creating = src(1, hours_ago=2), src(2, hours_ago=0.1, status="creating")
    assert copy_candidate([done, creating], [cpy(done)]).source is None


def test_copy_found_by_deterministic_id_without_tags() -> None:
    source = src(1, hours_ago=1)
    untagged = Snap(snapshot_id=copy_snapshot_id(source.snapshot_id), arn="a", region="us-west-2", kind="copy",
                    status="available", created=source.created)
    assert copy_candidate([source], [untagged]).source is None


# --- pin ------------------------------------------------------------------------------------------


def test_pin_matches_by_id_or_arn() -> None:
    copy = cpy(src(1, hours_ago=1))
    assert matches_pin(copy, copy.snapshot_id)
    assert matches_pin(copy, copy.snapshot_id.upper())
    assert matches_pin(copy, copy.arn)
    assert not matches_pin(copy, "")
    assert not matches_pin(copy, None)
    assert not matches_pin(copy, "jams-dr-9999-copy")


# --- protection of sources ------------------------------------------------------------------------


def test_sources_with_a_copy_in_progress_or_next_in_line_are_protected() -> None:
    s1, s2, s3, s4 = (src(i, hours_ago=h) for i, h in ((1, 40), (2, 30), (3, 20), (4, 10)))
    copies = [cpy(s1), cpy(s3, status="copying")]
    keep = protected_sources([s1, s2, s3, s4], copies)
    assert set(keep) == {s3.snapshot_id, s4.snapshot_id}
    assert "copying" in keep[s3.snapshot_id]
    assert "not started" in keep[s4.snapshot_id]


# --- retention ------------------------------------------------------------------------------------


def ids(snaps: list[Snap]) -> set[str]:
    return {s.snapshot_id for s in snaps}


def test_keep_count_and_age() -> None:
    snaps = [src(i, hours_ago=24 * i) for i in range(1, 11)]  # 1..10 days old
    plan = prune_plan(snaps, NOW, Retention(retain_count=3, retain_days=5))
    # newest three kept by count; younger than five days kept by age (days 1..4)
    assert ids(plan.delete) == {s.snapshot_id for s in snaps[4:]}


def test_aggressive_retention_keeps_only_the_newest_and_protected() -> None:
    snaps = [src(i, hours_ago=i) for i in range(1, 8)]
    plan = prune_plan(snaps, NOW, Retention(retain_count=1, retain_days=0), {snaps[5].snapshot_id: "pinned"})
    assert ids(plan.delete) == ids(snaps) - {snaps[0].snapshot_id, snaps[5].snapshot_id}
    assert plan.keep[snaps[5].snapshot_id] == "pinned"


def test_never_deletes_what_is_not_available() -> None:
    snaps = [src(1, hours_ago=1), src(2, hours_ago=500, status="creating"), src(3, hours_ago=600, status="failed")]
    plan = prune_plan(snaps, NOW, Retention(retain_count=1, retain_days=0))
    assert plan.delete == []


def test_protected_ids_are_case_insensitive() -> None:
    snaps = [src(1, hours_ago=1), src(2, hours_ago=2)]
    plan = prune_plan(snaps, NOW, Retention(retain_count=1, retain_days=0), {"JAMS-DR-0002": "pinned"})
    assert plan.delete == []


snap_lists = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=24 * 60),
        st.sampled_from(["available", "available", "available", "creating", "copying", "failed"]),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    snap_lists,
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=0, max_value=30),
    st.data(),
)
def test_retention_invariants(specs: list[tuple[int, str]], count: int, days: int, data: st.DataObject) -> None:
    snaps = [src(i, hours_ago=h, status=status) for i, (h, status) in enumerate(specs)]
    protected = {s.snapshot_id: "p" for s in data.draw(st.lists(st.sampled_from(snaps), max_size=3) if snaps
                                                        else st.just([]))}
    plan = prune_plan(snaps, NOW, Retention(count, days), protected)
    deleted = ids(plan.delete)
    available = sorted((s for s in snaps if s.available), key=lambda s: (s.created, s.snapshot_id), reverse=True)
    assert all(s.available for s in plan.delete)
    assert not deleted & set(protected)
    assert not deleted & ids(available[:count])
    assert all(s.created <= NOW - timedelta(days=days) for s in plan.delete)
    assert deleted.isdisjoint(plan.keep)
    assert deleted | set(plan.keep) == ids(snaps)


# --- pure helpers of the AWS layer ----------------------------------------------------------------


def test_pin_parameters_pass_every_value_back_explicitly() -> None:
    from chalicelib.stacks import pin_parameters

    stack = {
        "StackName": "jams-standby",
        "Parameters": [
            {"ParameterKey": "EnvironmentName", "ParameterValue": "jams"},
            {"ParameterKey": "DBSnapshotIdentifier", "ParameterValue": ""},
            {"ParameterKey": "DBEngine", "ParameterValue": "sqlserver-se"},
            {"ParameterKey": "Secret", "ParameterValue": "****"},
        ],
    }
    assert pin_parameters(stack, "jams-dr-1-copy") == [
        {"ParameterKey": "EnvironmentName", "ParameterValue": "jams"},
        {"ParameterKey": "DBSnapshotIdentifier", "ParameterValue": "jams-dr-1-copy"},
        {"ParameterKey": "DBEngine", "ParameterValue": "sqlserver-se"},
        # NoEcho values come back masked: passing the mask would overwrite the secret
        {"ParameterKey": "Secret", "UsePreviousValue": True},
    ]


def test_pin_parameters_refuse_a_stack_without_the_pin() -> None:
    from chalicelib.stacks import pin_parameters

    with pytest.raises(Exception, match="STANDBY_STACK_NAME") as caught:
        pin_parameters({"StackName": "jams-network", "Parameters": []}, "x")
    # by name: tests/unit/test_aws.py reloads chalicelib.aws, which makes a second AwsError class
    assert type(caught.value).__name__ == "AwsError"
    assert getattr(caught.value, "code", None) == "StandbyStackInvalid"


@pytest.mark.parametrize(
    ("code", "message", "limited"),
    [
        ("SnapshotQuotaExceeded", "would exceed the maximum number of snapshots", True),
        ("InvalidParameterCombination", "Cannot copy more than 5 snapshots across regions", True),
        ("InvalidParameterValue", "Cannot copy more than 20 snapshots across regions simultaneously", True),
        ("DBSnapshotAlreadyExists", "already exists", False),
        ("KMSKeyNotAccessibleFault", "key is disabled", False),
    ],
)
def test_copy_limit_errors(code: str, message: str, limited: bool) -> None:
    from botocore.exceptions import ClientError

    from chalicelib.rds import is_copy_limit

    exc = ClientError({"Error": {"Code": code, "Message": message}}, "CopyDBSnapshot")
    assert is_copy_limit(exc) is limited


@pytest.mark.parametrize(
    ("item", "holder"),
    [
        (None, None),
        ({"pk": {"S": "lease#jams"}, "epoch": {"N": "4"}}, None),
        ({"pk": {"S": "lease#jams"}, "holder": {"NULL": True}}, None),
        ({"pk": {"S": "lease#jams"}, "holder": {"S": "recovery-1"}}, "recovery-1"),
        ({"pk": {"S": "lease#jams"}, "holder": {"S": ""}}, "unknown holder"),
        ({"pk": {"S": "lease#jams"}, "holder": {"BOOL": True}}, "unknown holder"),
        ({"pk": {"S": "lease#jams"}, "holder": {"N": "7"}}, "7"),
    ],
)
def test_lease_holder(item: dict[str, Any] | None, holder: str | None) -> None:
    from chalicelib.snapshots.publish import lease_holder
    from chalicelib.table import LedgerTable, deserialize_item

    class Table(LedgerTable):
        """The item as DynamoDB stores it, read through the gateway's own item format."""

        def __init__(self) -> None:
            pass

        def get(self, key: str) -> dict[str, Any] | None:
            assert key == "lease#jams"
            return None if item is None else deserialize_item(item)

    assert lease_holder(Table(), "jams") == holder
