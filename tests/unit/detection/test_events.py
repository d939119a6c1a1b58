"""The EventBridge events detection listens to (chalicelib/detection/events.py): parsing and meaning."""

from __future__ import annotations

import pytest

from chalicelib.detection.events import (
    EventError,
    classify_alarm,
    classify_health,
    classify_rds,
    parse_alarm_event,
    parse_health_event,
    parse_rds_event,
)
from tests.unit.detection.support import PRIMARY, fixture


def test_health_event_for_the_primary_region_is_relevant() -> None:
    event = parse_health_event(fixture("health_ec2_issue_primary"))
    assert event.region == "us-west-2"  # delivered there...
    signal = classify_health(event, PRIMARY)  # ...but about us-east-1 (detail.eventRegion)
    assert signal.relevant and signal.open
    assert signal.service == "EC2"
    assert "investigating" in event.description


def test_health_event_for_another_region_is_ignored() -> None:
    signal = classify_health(parse_health_event(fixture("health_ec2_issue_other_region")), PRIMARY)
    assert not signal.relevant and not signal.open
    assert "eu-west-1" in signal.reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"service": "S3"}, "not one JAMS depends on"),
        ({"eventTypeCategory": "scheduledChange"}, "not an issue"),
        ({"eventScopeCode": "NONE"}, "neither PUBLIC nor ACCOUNT_SPECIFIC"),
    ],
)
def test_health_events_that_do_not_concern_jams_are_ignored(change: dict[str, str], reason: str) -> None:
    raw = fixture("health_ec2_issue_primary")
    raw["detail"].update(change)
    signal = classify_health(parse_health_event(raw), PRIMARY)
    assert not signal.relevant
    assert reason in signal.reason


def test_closed_health_event_lowers_the_flag() -> None:
    raw = fixture("health_ec2_issue_primary")
    raw["detail"]["statusCode"] = "closed"
    signal = classify_health(parse_health_event(raw), PRIMARY)
    assert signal.relevant and not signal.open


def test_malformed_health_event_names_the_missing_fields() -> None:
    with pytest.raises(EventError) as caught:
        parse_health_event(fixture("health_malformed"))
    message = str(caught.value)
    assert "detail.eventArn" in message and "detail.communicationId" in message
    with pytest.raises(EventError, match="not a JSON object"):
        parse_health_event(["not", "an", "event"])
    wrong_source = fixture("health_ec2_issue_primary") | {"source": "aws.ec2"}
    with pytest.raises(EventError, match="source"):
        parse_health_event(wrong_source)


def test_alarm_ok_to_alarm_triggers_a_check() -> None:
    signal = classify_alarm(parse_alarm_event(fixture("alarm_ok_to_alarm")), PRIMARY)
    assert signal.trigger
    assert signal.alarm_name == "jams-agents-unhealthy"


def test_alarm_insufficient_data_to_alarm_takes_no_action() -> None:
    signal = classify_alarm(parse_alarm_event(fixture("alarm_insufficient_to_alarm")), PRIMARY)
    assert not signal.trigger
    assert "only OK -> ALARM" in signal.reason


def test_alarm_back_to_ok_and_other_regions_take_no_action() -> None:
    raw = fixture("alarm_ok_to_alarm")
    raw["detail"]["previousState"]["value"], raw["detail"]["state"]["value"] = "ALARM", "OK"
    assert not classify_alarm(parse_alarm_event(raw), PRIMARY).trigger
    other = fixture("alarm_ok_to_alarm") | {"region": "eu-west-1"}
    assert not classify_alarm(parse_alarm_event(other), PRIMARY).trigger
    bad = fixture("alarm_ok_to_alarm")
    bad["detail"]["state"]["value"] = "BROKEN"
    with pytest.raises(EventError, match=r"detail\.state\.value"):
        parse_alarm_event(bad)


def test_rds_multi_az_failover_is_an_az_problem_not_unavailability() -> None:
    signal = classify_rds(parse_rds_event(fixture("rds_multi_az_failover_started")), PRIMARY, "jams-db")
    assert signal.effect == "multi-az-started"
    completed = fixture("rds_multi_az_failover_started")
    completed["detail"]["EventID"] = "RDS-EVENT-0015"
    assert classify_rds(parse_rds_event(completed), PRIMARY, "jams-db").effect == "multi-az-completed"


def test_rds_failure_is_unavailability_of_our_database_only() -> None:
    event = parse_rds_event(fixture("rds_instance_failed"))
    assert classify_rds(event, PRIMARY, "jams-db").effect == "unavailable"
    assert classify_rds(event, PRIMARY, "another-db").effect == "ignored"
    assert classify_rds(event, "eu-west-1", "jams-db").effect == "ignored"


@pytest.mark.parametrize(("identifier", "arn"), [
    ("jams-db", "arn:aws:rds:us-east-1:123456789012:db:jams-db"),
    ("rds:jams-db", "arn:aws:rds:us-east-1:123456789012:db:jams-db"),  # the form of AWS's own examples
    ("rds:jams-db", None),
    ("JAMS-DB", None),  # RDS stores identifiers in lowercase
    ("something-else", "arn:aws:rds:us-east-1:123456789012:db:jams-db"),  # the ARN names the instance
])
def test_rds_events_name_our_database_in_every_documented_form(identifier: str, arn: str | None) -> None:
    raw = fixture("rds_instance_failed")
    raw["detail"]["SourceIdentifier"] = identifier
    if arn is None:
        raw["detail"].pop("SourceArn", None)
    else:
        raw["detail"]["SourceArn"] = arn
    assert classify_rds(parse_rds_event(raw), PRIMARY, "Jams-DB").effect == "unavailable"
    assert classify_rds(parse_rds_event(raw), PRIMARY, "jams-db-2").effect == "ignored"


def test_malformed_rds_event_is_rejected() -> None:
    with pytest.raises(EventError) as caught:
        parse_rds_event(fixture("rds_malformed"))
    assert "detail.EventID" in str(caught.value) and "detail.SourceIdentifier" in str(caught.value)


