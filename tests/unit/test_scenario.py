from __future__ import annotations

import json
from pathlib import Path

import pytest

from jamsdr.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

CONTRACT_EXAMPLE = {
    "primary_region": "us-east-1", "recovery_region": "us-west-2",
    "vpc_cidr": "10.0.0.0/16",
    "database": {"engine": "sqlserver-se", "encrypted": True, "option_group": "jams-tde"},
    "existing_snapshots": 0,
    "snapshot_cycles": 3,
    "heartbeat_seconds": 1,
    "failover_mode": "auto",
    "failure": "region",
}


def test_defaults_are_the_contract_example() -> None:
    assert parse_scenario(CONTRACT_EXAMPLE) == Scenario()
    assert parse_scenario({}) == Scenario()
    assert load_scenario(None) == Scenario()


@pytest.mark.parametrize(
    ("failure", "mode", "decision", "outcome"),
    [
        ("none", "auto", "healthy", "succeeded"),
        ("region", "auto", "region-recovery", "succeeded"),
        ("region", "approve", "region-recovery", "succeeded"),
        ("region", "notify", "region-recovery", "not-started"),
        ("az", "auto", "jams-failover", "not-started"),
        ("scheduler", "auto", "scheduler-outage", "not-started"),
        ("monitoring", "auto", "healthy", "not-started"),
    ],
)
def test_expectations_follow_the_decision_table(failure: str, mode: str, decision: str, outcome: str) -> None:
    scenario = parse_scenario({"failure": failure, "failover_mode": mode})
    assert (scenario.expected_decision, scenario.expected_outcome) == (decision, outcome)


def test_every_bad_field_is_named_at_once() -> None:
    bad = {
        "failure": "meteor", "heartbeat_seconds": 0, "color": "red", "vpc_cidr": "10.0.0.0/8",
        "database": {"engine": "postgres", "encrypted": "yes", "size": 3},
        "recovery_region": "us-east-1",
    }
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(bad, "s.json")
    text = str(caught.value)
    for fragment in ("failure: 'meteor'", "heartbeat_seconds: 0", "color: unknown field", "vpc_cidr",
                     "database.engine", "database.encrypted", "database.size: unknown field",
                     "recovery_region: 'us-east-1' must differ"):
        assert fragment in text, fragment
    assert len(caught.value.problems) == 8


@pytest.mark.parametrize("value", [True, 1.5, "3", -1, 21])
def test_snapshot_cycles_must_be_a_small_integer(value: object) -> None:
    with pytest.raises(ScenarioError, match="snapshot_cycles"):
        parse_scenario({"snapshot_cycles": value})


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{\"failure\": ")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        load_scenario(broken)
    array = tmp_path / "array.json"
    array.write_text(json.dumps([1]))
    with pytest.raises(ScenarioError, match="JSON object"):
        load_scenario(array)
