"""The scenario's `monitoring` failure and `faults` list (CONTRACT: scenario file): good scenarios parse,
every bad field of a fault is named with what is expected, and the CLI exits 2 before building anything."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jamsdr import scenario as scenario_module
from jamsdr.scenario import MAX_FAULTS, Scenario, ScenarioError, ScenarioFault, parse_scenario

PUBLISH = {"service": "sns", "region": "primary", "operation": "Publish", "error": "throttle", "count": 1}


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data, "s.json")
    return caught.value.problems


# ----------------------------------------------------------------------------------------- good


@pytest.mark.parametrize("mode", ["auto", "approve", "notify"])
def test_monitoring_expects_healthy_and_nothing_started(mode: str) -> None:
    scenario = parse_scenario({"failure": "monitoring", "failover_mode": mode})
    assert (scenario.expected_decision, scenario.expected_outcome) == ("healthy", "not-started")


def test_faults_parse_into_a_frozen_tuple_and_round_trip() -> None:
    faults = [
        PUBLISH,
        {"service": "cloudwatch", "region": "recovery", "operation": "GetMetricData", "error": "5xx", "count": 100},
        {"service": "dynamodb", "region": "primary", "operation": "UpdateItem", "error": "connection", "count": 3},
    ]
    scenario = parse_scenario({"faults": faults})

    assert scenario.faults == (
        ScenarioFault("sns", "primary", "Publish", "throttle", 1),
        ScenarioFault("cloudwatch", "recovery", "GetMetricData", "5xx", 100),
        ScenarioFault("dynamodb", "primary", "UpdateItem", "connection", 3),
    )
    assert scenario.to_dict()["faults"] == faults
    assert parse_scenario(json.loads(json.dumps(scenario.to_dict()))) == scenario
    hash(scenario)  # frozen all the way down
    with pytest.raises(dataclasses.FrozenInstanceError):
        scenario.faults[0].count = 2  # type: ignore[misc]


def test_faults_do_not_change_the_expectation() -> None:
    plain, faulted = parse_scenario({}), parse_scenario({"faults": [PUBLISH]})
    assert (plain.expected_decision, plain.expected_outcome) == (faulted.expected_decision, faulted.expected_outcome)


def test_the_default_loses_one_invoke_and_neither_it_nor_no_faults_needs_a_service_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def must_not_load(*_: Any) -> Any:
        raise AssertionError("botocore's models were loaded for a scenario without faults of its own")

    monkeypatch.setattr(scenario_module, "_boto3_services", must_not_load)
    monkeypatch.setattr(scenario_module, "_operations_of", must_not_load)

    # The default scenario loses the first Lambda Invoke after the failure (the sweeper recovers it).
    lost_invoke = ScenarioFault("lambda", "recovery", "Invoke", "5xx", 1)
    assert parse_scenario({}).faults == (lost_invoke,) == Scenario().faults
    assert parse_scenario({}).to_dict()["faults"] == [
        {"service": "lambda", "region": "recovery", "operation": "Invoke", "error": "5xx", "count": 1}]
    # [] turns it off.
    assert parse_scenario({"faults": []}).faults == ()
    assert parse_scenario({"faults": []}).to_dict()["faults"] == []


def test_twenty_faults_are_allowed() -> None:
    assert len(parse_scenario({"faults": [PUBLISH] * MAX_FAULTS}).faults) == MAX_FAULTS


# ----------------------------------------------------------------------------------------- bad

BAD_ENTRIES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown service": ({"service": "snss"}, "faults[0].service: 'snss' is not a boto3 service name"),
    "service in capitals": ({"service": "SNS"}, "(did you mean sns?)"),
    "service not a string": ({"service": 3}, "faults[0].service: 3 is not a boto3 service name"),
    "unknown operation": ({"operation": "Publsh"}, "faults[0].operation: 'Publsh' is not an operation of sns"),
    "snake_case operation": ({"operation": "publish"}, "(did you mean Publish?)"),
    "operation of another service": ({"operation": "GetMetricData"},
                                     "faults[0].operation: 'GetMetricData' is not an operation of sns"),
    "operation not a string": ({"operation": None}, "faults[0].operation: None must be an API operation name"),
    "empty operation": ({"operation": ""}, "faults[0].operation: '' must be an API operation name"),
    "unknown region": ({"region": "us-east-1"}, "faults[0].region: 'us-east-1' must be one of primary, recovery"),
    "unknown error": ({"error": "timeout"}, "faults[0].error: 'timeout' must be one of throttle, 5xx, connection"),
    "count zero": ({"count": 0}, "faults[0].count: 0 must be an integer from 1 to 100"),
    "count too big": ({"count": 101}, "faults[0].count: 101 must be an integer from 1 to 100"),
    "count boolean": ({"count": True}, "faults[0].count: True must be an integer from 1 to 100"),
    "count float": ({"count": 1.0}, "faults[0].count: 1.0 must be an integer from 1 to 100"),
    "unknown key": ({"delay": 3}, "faults[0].delay: unknown field; expected one of count, error, operation"),
}


@pytest.mark.parametrize(("change", "message"), BAD_ENTRIES.values(), ids=list(BAD_ENTRIES))
def test_a_bad_fault_field_is_named_alone(change: dict[str, Any], message: str) -> None:
    problems = problems_of({"faults": [{**PUBLISH, **change}]})
    assert len(problems) == 1, problems
    assert message in problems[0]


@pytest.mark.parametrize("key", sorted(PUBLISH))
def test_every_fault_key_is_required(key: str) -> None:
    problems = problems_of({"faults": [{k: v for k, v in PUBLISH.items() if k != key}]})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"faults[0].{key}: missing; expected ")


def test_every_problem_of_every_fault_is_named_at_once_with_its_index() -> None:
    problems = problems_of({
        "failure": "monitoring",
        "faults": [
            PUBLISH,
            {"service": "sns", "region": "east", "operation": "Publsh", "error": "5xx", "count": 0},
            "sns Publish",
            {"service": "nope", "operation": "Nope", "region": "primary", "error": "throttle"},
        ],
    })
    prefixes = sorted(p.split(":")[0] for p in problems)
    assert prefixes == ["faults[1].count", "faults[1].operation", "faults[1].region", "faults[2]",
                        "faults[3].count", "faults[3].service"]


@pytest.mark.parametrize("value", [{}, "sns", None, 3, {"service": "sns"}])
def test_faults_must_be_a_list(value: Any) -> None:
    assert problems_of({"faults": value}) == [
        f"faults: {value!r} must be a list of at most 20 objects with service, region, operation, error, count"]


def test_at_most_twenty_faults() -> None:
    assert problems_of({"faults": [PUBLISH] * (MAX_FAULTS + 1)}) == ["faults: 21 entries; at most 20"]


def test_a_bad_fault_is_reported_with_the_other_bad_fields() -> None:
    problems = problems_of({"failure": "meteor", "faults": [{**PUBLISH, "error": "slow"}]})
    assert [p.split(":")[0] for p in problems] == ["failure", "faults[0].error"]


# ----------------------------------------------------------------------------------------- the CLI

CLI_CASES: dict[str, tuple[Any, str]] = {
    "unknown operation": ([{**PUBLISH, "operation": "Publsh"}], "faults[0].operation: 'Publsh' is not an operation"),
    "unknown service": ([{**PUBLISH, "service": "pubsub"}], "faults[0].service: 'pubsub' is not a boto3 service"),
    "bad count": ([PUBLISH, {**PUBLISH, "count": 500}], "faults[1].count: 500 must be an integer from 1 to 100"),
    "not a list": ({"sns": "Publish"}, "faults: {'sns': 'Publish'} must be a list"),
}


@pytest.mark.parametrize(("faults", "message"), CLI_CASES.values(), ids=list(CLI_CASES))
def test_drill_with_bad_faults_exits_2_naming_the_field_and_builds_nothing(
    faults: Any, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jamsdr import cli, drill

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the embedded drill started on a bad scenario")

    monkeypatch.setattr(drill, "run_embedded_drill", must_not_run)
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps({"failure": "monitoring", "faults": faults}), encoding="utf-8")

    result = CliRunner().invoke(cli.main, ["drill", "--scenario", str(path), "--report-dir", str(tmp_path / "r")])

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())  # rich wraps long lines
    assert not (tmp_path / "r").exists()


def test_drill_with_good_faults_passes_them_to_the_drill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jamsdr import cli, drill

    received: list[Scenario] = []

    def stop_here(scenario: Scenario, *args: Any, **kwargs: Any) -> Any:
        received.append(scenario)
        raise SystemExit(0)

    monkeypatch.setattr(drill, "run_embedded_drill", stop_here)
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps({"failure": "monitoring", "faults": [PUBLISH]}), encoding="utf-8")

    CliRunner().invoke(cli.main, ["drill", "--scenario", str(path), "--report-dir", str(tmp_path / "r")])

    assert [s.faults for s in received] == [(ScenarioFault(**PUBLISH),)]
    assert received[0].failure == "monitoring"
