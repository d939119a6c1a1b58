"""The scenario's pydantic validation keeps the hand validation's listing: the same lines, in the same order,
also where pydantic on its own would say less (a key that is not valid Unicode, regions compared while
invalid, an operation of an unknown service) or differently (a string that is not valid Unicode)."""

from __future__ import annotations

from typing import Any

import pytest

from jamsdr.scenario import ScenarioError, parse_scenario

PUBLISH = {"service": "sns", "region": "primary", "operation": "Publish", "error": "throttle", "count": 1}
TOP = ("unknown field; expected one of database, dns, existing_snapshots, failback, failover_mode, failure, faults, "
       "heartbeat_seconds, primary_region, recovery_region, recovery_source, snapshot_cycles, vpc_cidr")
DATABASE = "unknown field; expected one of encrypted, engine, option_group"
FAULT = "unknown field; expected one of count, error, operation, region, service"
FAILURE = "'meteor' must be one of none, region, az, scheduler, monitoring"


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data, "s.json")
    return caught.value.problems


def test_unknown_fields_first_as_written_then_missing_then_the_fields_in_order() -> None:
    assert problems_of({
        "faults": [{"count": 0, "zz": 1, "region": "east"}], "database": {"encrypted": 1, "size": 3},
        "failure": "meteor", "b": 1, "primary_region": "x", "recovery_region": "x", "a": 2,
    }) == [
        f"b: {TOP}",
        f"a: {TOP}",
        "primary_region: 'x' is not an AWS region name such as us-east-1",
        "recovery_region: 'x' is not an AWS region name such as us-east-1",
        "recovery_region: 'x' must differ from primary_region",
        f"failure: {FAILURE}",
        f"database.size: {DATABASE}",
        "database.encrypted: 1 must be true or false",
        f"faults[0].zz: {FAULT}",
        "faults[0].service: missing; expected a boto3 service name such as sns",
        "faults[0].operation: missing; expected an API operation name such as Publish",
        "faults[0].error: missing; expected throttle, 5xx, connection",
        "faults[0].region: 'east' must be one of primary, recovery",
        "faults[0].count: 0 must be an integer from 1 to 100",
    ]


def test_keys_that_are_not_valid_unicode_are_named_with_the_other_problems() -> None:
    assert problems_of({
        "\ud800": 1, "failure": "meteor", "database": {"\udfff": 2, "engine": "x"},
        "faults": [{**PUBLISH, "\ud800": 0}],
    }) == [
        f"\ud800: {TOP}",
        f"failure: {FAILURE}",
        f"database.\udfff: {DATABASE}",
        "database.engine: 'x' must be one of sqlserver-se, sqlserver-ee, sqlserver-web, sqlserver-ex",
        f"faults[0].\ud800: {FAULT}",
    ]


def test_keys_that_are_not_strings_are_unknown_fields() -> None:
    assert problems_of({0: 1, "failure": "az", None: 2}) == [f"0: {TOP}", f"None: {TOP}"]


def test_an_operation_is_not_judged_without_a_known_service() -> None:
    assert problems_of({"faults": [{**PUBLISH, "service": "nope", "operation": None},
                                   {"region": "primary", "operation": ""}]}) == [
        "faults[0].service: 'nope' is not a boto3 service name such as sns, cloudwatch, dynamodb",
        "faults[1].service: missing; expected a boto3 service name such as sns",
        "faults[1].error: missing; expected throttle, 5xx, connection",
        "faults[1].count: missing; expected an integer from 1 to 100",
        "faults[1].operation: '' must be an API operation name such as Publish",
    ]


def test_an_operation_that_is_not_valid_unicode_is_still_judged_against_the_service() -> None:
    assert problems_of({"faults": [{**PUBLISH, "operation": "Publish\ud800"}]}) == [
        "faults[0].operation: 'Publish\\ud800' is not an operation of sns; expected an API operation name of sns "
        "(did you mean Publish?)"]


def test_too_many_faults_is_one_line_and_the_entries_are_not_checked() -> None:
    assert problems_of({"faults": [{}] * 21}) == ["faults: 21 entries; at most 20"]


def test_valid_fields_can_still_clash() -> None:
    assert problems_of({"primary_region": "us-west-2"}) == ["recovery_region: 'us-west-2' must differ from primary_region"]


@pytest.mark.parametrize(("data", "line"), [
    ({"heartbeat_seconds": "1"}, "heartbeat_seconds: '1' must be an integer from 1 to 60"),
    ({"database": {"encrypted": "true"}}, "database.encrypted: 'true' must be true or false"),
    ({"faults": (PUBLISH,)}, "faults: ({"),
    ({"database": {"option_group": "jams-tde\n"}}, "database.option_group: 'jams-tde\\n' must be an option group"),
])
def test_nothing_is_coerced(data: dict[str, Any], line: str) -> None:
    problems = problems_of(data)
    assert len(problems) == 1 and problems[0].startswith(line), problems


# ------------------------------------------------------------------ AWS's own rules (issue 18, item 3)


def test_a_well_formed_region_botocore_does_not_know_is_refused_with_the_nearest_known_one() -> None:
    import botocore

    problems = problems_of({"primary_region": "zz-fake-9", "recovery_region": "us-wast-2"})
    assert [line.split(";")[0] for line in problems] == [
        f"primary_region: 'zz-fake-9' is not a region botocore {botocore.__version__} knows for autoscaling, "
        "cloudformation, cloudwatch, dynamodb, ec2, elbv2, events, kms, lambda, rds, s3, sns, sqs, ssm",
        f"recovery_region: 'us-wast-2' is not a region botocore {botocore.__version__} knows for autoscaling, "
        "cloudformation, cloudwatch, dynamodb, ec2, elbv2, events, kms, lambda, rds, s3, sns, sqs, ssm "
        "(did you mean us-west-2?)",
    ]
    assert all(line.endswith("use one such as us-east-1, or upgrade botocore if the region is newer than it")
               for line in problems)


@pytest.mark.parametrize(("primary", "recovery", "partitions"), [
    ("us-east-1", "us-gov-west-1", ("aws-us-gov", "aws")),
    ("cn-north-1", "cn-northwest-1", None),
    ("us-gov-east-1", "us-gov-west-1", None),
    ("cn-north-1", "eu-west-1", ("aws", "aws-cn")),
])
def test_both_regions_must_be_in_one_partition(primary: str, recovery: str, partitions: tuple[str, str] | None) -> None:
    data = {"primary_region": primary, "recovery_region": recovery}
    if partitions is None:
        assert parse_scenario(data).recovery_region == recovery
        return
    assert problems_of(data) == [
        f"recovery_region: {recovery!r} is in the partition {partitions[0]}, primary_region {primary!r} in "
        f"{partitions[1]}; both regions must be in one partition (credentials and snapshot copies do not cross "
        "partitions)"]


def test_existing_snapshots_leave_room_in_the_quota_for_the_drills_own() -> None:
    assert parse_scenario({"existing_snapshots": 97}).existing_snapshots == 97  # + 3 cycles = 100, the quota
    assert parse_scenario({"existing_snapshots": 99, "snapshot_cycles": 1}).existing_snapshots == 99
    assert problems_of({"existing_snapshots": 98}) == [
        "existing_snapshots: 98 with the drill's own 3 (3 of snapshot_cycles) would make 101 manual snapshots in "
        "the primary region, over the RDS quota of 100 per region; at most 97 here"]
    assert parse_scenario({"existing_snapshots": 96, "failback": True}).failback is True
    assert problems_of({"existing_snapshots": 97, "snapshot_cycles": 3, "failback": True}) == [
        "existing_snapshots: 97 with the drill's own 4 (3 of snapshot_cycles and 1 of the failback) would make 101 "
        "manual snapshots in the primary region, over the RDS quota of 100 per region; at most 96 here"]
    # Out of its own range: one line, no sum with a value that is itself wrong.
    assert problems_of({"existing_snapshots": 100, "snapshot_cycles": 21}) == [
        "existing_snapshots: 100 must be an integer from 0 to 99",
        "snapshot_cycles: 21 must be an integer from 1 to 20",
    ]


OPTION_GROUP_RULE = ("must be an option group name as RDS allows: 1 to 255 letters, digits or hyphens, the first a "
                     "letter, no two hyphens in a row, not ending with a hyphen")


@pytest.mark.parametrize("name", ["", "9tde", "-tde", "jams--tde", "jams-tde-", "tde_1", "jams tde", "a" * 256,
                                  "jams-tdé", "default:sqlserver-se-15-00"])
def test_option_group_names_rds_refuses_are_refused(name: str) -> None:
    assert problems_of({"database": {"option_group": name}}) == [f"database.option_group: {name!r} {OPTION_GROUP_RULE}"]


@pytest.mark.parametrize(("name", "stored"), [("x", "x"), ("JAMS-TDE", "jams-tde"), ("a-1-b2", "a-1-b2"),
                                              ("A" * 255, "a" * 255)])
def test_option_group_names_rds_accepts_are_kept_as_rds_stores_them(name: str, stored: str) -> None:
    assert parse_scenario({"database": {"option_group": name}}).database.option_group == stored
