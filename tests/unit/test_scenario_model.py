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
