from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib.settings import SETTINGS, Settings, SettingsError, markdown_table


def test_defaults_are_valid_and_documented_values() -> None:
    settings = Settings.from_env({})
    assert settings.primary_region == "us-east-1"
    assert settings.recovery_region == "us-west-2"
    assert settings.missed_beat_threshold == 3
    assert settings.failover_mode == "auto"
    assert settings.heartbeat_interval_seconds == 60
    assert settings.standby_stack_name == "jams-standby"
    assert settings.drill_stack_name("abc") == "jams-drill-abc"


def test_three_bad_values_are_reported_together() -> None:
    env = {"PRIMARY_REGION": "mars-1", "MISSED_BEAT_THRESHOLD": "zero", "FAILOVER_MODE": "yolo"}
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert len(caught.value.problems) == 3
    assert "PRIMARY_REGION='mars-1'" in message and "us-east-1" in message
    assert "MISSED_BEAT_THRESHOLD='zero'" in message and "not an integer" in message
    assert "FAILOVER_MODE='yolo'" in message and "auto, approve or notify" in message
    assert ".chalice/config.json" in message


def test_regions_must_differ() -> None:
    with pytest.raises(SettingsError, match="must differ from PRIMARY_REGION"):
        Settings.from_env({"PRIMARY_REGION": "eu-west-1", "RECOVERY_REGION": "eu-west-1"})


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("OPTION_GROUP_MAP", "{not json", "not JSON"),
        ("OPTION_GROUP_MAP", '["a"]', "JSON object"),
        ("RETAIN_COUNT", "0", "out of range"),
        ("COPY_KMS_KEY_ID", "my-key", "KMS key"),
        ("TOPIC_ARN", "arn:aws:sqs:us-west-2:123456789012:q", "SNS topic ARN"),
        ("ENVIRONMENT_NAME", "JAMS_Prod", "lowercase"),
        ("BACKUP_REPLICATION", "maybe", "boolean"),
    ],
)
def test_each_bad_value_names_variable_and_fix(variable: str, value: str, reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.problems[0].startswith(f"{variable}={value!r}")
    assert reason in str(caught.value)


def test_dns_zone_name_required_with_zone_id() -> None:
    with pytest.raises(SettingsError, match="DNS_ZONE_NAME"):
        Settings.from_env({"HOSTED_ZONE_ID": "Z123ABC"})


def test_as_env_round_trips() -> None:
    settings = Settings.defaults(
        option_group_map={"jams-tde": "jams-tde-dr"}, copy_kms_key="alias/jams-dr-copies",
        failover_mode="approve", backup_replication=True,
    )
    assert Settings.from_env(settings.as_env()) == settings


def test_unknown_override_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown setting"):
        Settings.defaults(no_such_setting=1)


def test_readme_lists_every_setting_with_its_default() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert markdown_table() in readme, "README settings table is stale: paste chalicelib.settings.markdown_table()"
    for spec in SETTINGS.values():
        assert f"`{spec.env}`" in readme
