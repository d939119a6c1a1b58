"""Detection's Lambda functions through chalice.test.Client (stage dev: ENVIRONMENT_NAME=jams-dev,
FAILOVER_MODE=notify), with real event shapes from tests/fixtures/events, against the embedded AWS.

Heartbeats use the contract's 60 s interval and real time: a "beating" fleet is a beat per scheduler in
each of the last minutes (published with past timestamps), a silent one is no beat at all. Every
notification is read back from an SQS queue subscribed to the stage's SNS topic, so the assertions are
on what the person on call receives.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock, SystemClock
from chalicelib.detection.heartbeats import publish_heartbeat
from chalicelib.handlers.detection import _stage
from chalicelib.keys import watch_key
from chalicelib.settings import Settings
from jamsdr.embedded import World, build_world
from tests.conftest import PRIMARY, RECOVERY

PROJECT = Path(__file__).resolve().parents[2]
FIXTURES = PROJECT / "tests" / "fixtures" / "events"


def event(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture
def world(clients: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> World:
    built = build_world(clients, Settings.defaults(environment="jams-dev", failover_mode="notify"))
    for key, value in built.settings.as_env().items():
        monkeypatch.setenv(key, value)
    return built


@pytest.fixture
def inbox(clients: ClientFactory, world: World) -> Any:
    """Messages published to the stage's topic, as the on-call person gets them."""
    sqs = clients.client("sqs", RECOVERY)
    url = sqs.create_queue(QueueName="on-call")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert world.settings.topic_arn
    clients.client("sns", RECOVERY).subscribe(TopicArn=world.settings.topic_arn, Protocol="sqs", Endpoint=arn)

    def read() -> list[dict[str, str]]:
        out = []
        while True:
            answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
            messages = answer.get("Messages", [])
            if not messages:
                return out
            for message in messages:
                body = json.loads(message["Body"])
                out.append({"subject": body.get("Subject", ""), "message": body["Message"]})
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    return read


@pytest.fixture
def client(world: World) -> Any:
    with Client(app, stage_name="dev", project_dir=str(PROJECT)) as made:
        yield made


def beat_recent_minutes(clients: ClientFactory, environment: str, minutes: int = 7) -> None:
    now = SystemClock().now()
    for k in range(minutes):
        at = FakeClock(now - timedelta(minutes=k))
        for scheduler in ("primary", "failover"):
            for region in (PRIMARY, RECOVERY):  # both copies, as the heartbeat CONTRACT publishes
                publish_heartbeat(clients, region, environment, scheduler, at)


def watch_item(clients: ClientFactory, world: World) -> dict[str, Any] | None:
    answer = clients.client("dynamodb", RECOVERY).get_item(
        TableName=world.settings.ledger_table_name, Key={"pk": {"S": watch_key("jams-dev")}}, ConsistentRead=True)
    item: dict[str, Any] | None = answer.get("Item")
    return item


def test_watcher_with_both_schedulers_beating_is_healthy_and_silent(
    client: Any, clients: ClientFactory, world: World, inbox: Any
) -> None:
    beat_recent_minutes(clients, "jams-dev")
    result = client.lambda_.invoke("heartbeat_watcher", event("schedule_tick")).payload
    assert result["decision"] == "healthy" and not result["changed"]
    assert result["counts"]["primary_missed"] == 0 and result["counts"]["failover_missed"] == 0
    assert inbox() == []
    item = watch_item(clients, world)
    assert item is not None and item["decision"] == {"S": "healthy"} and item["version"] == {"N": "1"}


def test_watcher_with_both_schedulers_silent_and_region_answering_is_a_scheduler_outage(
    client: Any, clients: ClientFactory, inbox: Any
) -> None:
    first = client.lambda_.invoke("heartbeat_watcher", event("schedule_tick")).payload
    assert first["decision"] == "scheduler-outage" and first["changed"]
    again = client.lambda_.invoke("heartbeat_watcher", event("schedule_tick")).payload
    assert again["decision"] == "scheduler-outage" and not again["changed"]
    messages = inbox()
    assert len(messages) == 1  # one message per decision change, not per check
    assert "SCHEDULER-OUTAGE" in messages[0]["subject"]
    body = messages[0]["message"]
    assert "Restart the JAMS scheduler service" in body and "do NOT rebuild" in body
    assert "API answers" in body


def test_health_event_for_the_primary_region_with_silent_schedulers_is_a_region_recovery(
    client: Any, clients: ClientFactory, world: World, inbox: Any
) -> None:
    client.lambda_.invoke("heartbeat_watcher", event("schedule_tick"))
    inbox()  # the scheduler-outage message
    result = client.lambda_.invoke("health_event", event("health_ec2_issue_primary")).payload
    assert result["accepted"] and result["relevant"] and not result["duplicate"]
    assert result["decision"] == "region-recovery" and result["changed"]
    assert result["incident"]["incident_id"].startswith("jams-dev-")
    assert result["execution_id"] is None  # FAILOVER_MODE=notify: nothing started
    [message] = inbox()
    body = message["message"]
    assert "REGION-RECOVERY" in message["subject"]
    assert "AWS Health: EC2 AWS_EC2_OPERATIONAL_ISSUE open in us-east-1" in body
    assert "FAILOVER_MODE=notify: nothing is started automatically." in body
    assert "jams-dr recover --stage" in body
    # The dedupe marker has a TTL.
    marker = clients.client("dynamodb", RECOVERY).scan(TableName=world.settings.ledger_table_name)["Items"]
    markers = [i for i in marker if i["pk"]["S"].startswith("health#jams-dev#")]
    assert len(markers) == 1 and "expires_at" in markers[0]


def test_duplicate_health_event_is_processed_once(client: Any, clients: ClientFactory, inbox: Any) -> None:
    first = client.lambda_.invoke("health_event", event("health_ec2_issue_primary")).payload
    second = client.lambda_.invoke("health_event", event("health_ec2_issue_primary")).payload
    assert not first["duplicate"] and second["duplicate"]
    assert "already received" in second["reason"]
    assert "decision" not in second  # no second evaluation
    subjects = [m["subject"] for m in inbox()]
    assert sum("REGION-RECOVERY" in s for s in subjects) == 1


def test_health_event_for_another_region_changes_nothing(
    client: Any, clients: ClientFactory, world: World, inbox: Any
) -> None:
    result = client.lambda_.invoke("health_event", event("health_ec2_issue_other_region")).payload
    assert result == {"accepted": True, "relevant": False, "duplicate": False, "reason": result["reason"]}
    assert "eu-west-1" in result["reason"]
    assert watch_item(clients, world) is None
    assert inbox() == []


def test_malformed_health_event_is_rejected_with_a_reason(client: Any, clients: ClientFactory, world: World) -> None:
    result = client.lambda_.invoke("health_event", event("health_malformed")).payload
    assert result["accepted"] is False
    assert "detail.eventArn" in result["reason"] and "changed nothing" in result["reason"]
    assert watch_item(clients, world) is None


def test_alarm_insufficient_data_to_alarm_takes_no_action(client: Any, clients: ClientFactory, world: World) -> None:
    result = client.lambda_.invoke("alarm_event", event("alarm_insufficient_to_alarm")).payload
    assert result["accepted"] and not result["relevant"]
    assert watch_item(clients, world) is None


def test_alarm_ok_to_alarm_runs_a_check(client: Any, clients: ClientFactory, world: World, inbox: Any) -> None:
    beat_recent_minutes(clients, "jams-dev")
    result = client.lambda_.invoke("alarm_event", event("alarm_ok_to_alarm")).payload
    assert result["accepted"] and result["relevant"]
    assert result["decision"] == "healthy"
    assert watch_item(clients, world) is not None
    assert inbox() == []


def test_rds_multi_az_failover_is_recorded_but_decides_nothing(
    client: Any, clients: ClientFactory, world: World
) -> None:
    beat_recent_minutes(clients, "jams-dev")
    raw = event("rds_multi_az_failover_started")
    raw["detail"]["SourceIdentifier"] = world.settings.db_instance_id
    result = client.lambda_.invoke("rds_event", raw).payload
    assert result["effect"] == "multi-az-started" and result["decision"] == "healthy"
    item = watch_item(clients, world)
    assert item is not None and item["multi_az"]["M"]["event_id"] == {"S": "RDS-EVENT-0013"}


def test_rds_failure_of_another_database_is_ignored(client: Any, clients: ClientFactory, world: World) -> None:
    result = client.lambda_.invoke("rds_event", event("rds_instance_failed")).payload  # SourceIdentifier jams-db
    assert result["accepted"] and not result["relevant"] and result["effect"] == "ignored"
    assert watch_item(clients, world) is None


def test_malformed_rds_event_is_rejected(client: Any) -> None:
    result = client.lambda_.invoke("rds_event", event("rds_malformed")).payload
    assert result["accepted"] is False and "detail.EventID" in result["reason"]


def test_stage_comes_from_the_function_name() -> None:
    def named(name: str) -> Any:
        return SimpleNamespace(context=SimpleNamespace(function_name=name))

    assert _stage(named("jams-dr-prod-heartbeat_watcher"), "heartbeat_watcher") == "prod"
    assert _stage(named("jams-dr-eu-dr-health_event"), "health_event") == "eu-dr"
    assert _stage(named("health_event"), "health_event") is None
