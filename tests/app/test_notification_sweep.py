"""The sweeper's Lambda function re-sends what SNS refused (chalice.test.Client, stage dev's wiring).

A notification refused by SNS stays pending in the ledger's outbox; the next ``execution_sweeper`` run
sends it, once, and says so in its answer, next to the executions it relaunched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from chalice.test import Client

from app import app
from chalicelib.aws import ClientFactory, set_factory
from chalicelib.clock import SystemClock
from chalicelib.notify import Notifier
from chalicelib.outbox import pending_notifications
from chalicelib.settings import Settings
from chalicelib.workflow import registry
from chalicelib.workflow.ledger import Ledger
from chalicelib.workflow.model import Done, State, Workflow
from jamsdr.inbox import Inbox
from tests.conftest import RECOVERY

PROJECT = Path(__file__).resolve().parents[2]
TABLE = "jams-dev-sweep-ledger"


@pytest.fixture
def factory(embedded: Any) -> ClientFactory:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing"
    )
    made = ClientFactory(session=session, endpoint_url=embedded.endpoint, max_attempts=2)
    set_factory(made)  # the embedded fixture puts its own factory back afterwards

    class Accepted:
        status_code = 202

    made.register_hook("before-call.lambda.Invoke", lambda **_: (Accepted(), {"StatusCode": 202}))
    return made


@pytest.fixture
def settings(factory: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> Settings:
    factory.client("dynamodb", RECOVERY).create_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    topic = factory.client("sns", RECOVERY).create_topic(Name="jams-dev-notifications")["TopicArn"]
    # What stage dev's environment_variables give the handlers, plus the support stack's outputs.
    monkeypatch.setenv("LEDGER_TABLE", TABLE)
    monkeypatch.setenv("TOPIC_ARN", topic)
    return Settings.defaults(environment="jams-dev", ledger_table=TABLE, topic_arn=topic)


@pytest.fixture
def client() -> Iterator[Client]:
    with Client(app, stage_name="dev", project_dir=str(PROJECT)) as made:
        yield made


def _sweep(client: Client) -> dict[str, Any]:
    event = client.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={},
                                            resources=[], region=RECOVERY)
    answer = client.lambda_.invoke("execution_sweeper", event).payload
    assert isinstance(answer, dict)
    return answer


def test_the_sweeper_resends_a_refused_notification_once_and_still_relaunches_executions(
    client: Client, factory: ClientFactory, settings: Settings
) -> None:
    inbox = Inbox.subscribe(factory, RECOVERY, str(settings.topic_arn))
    refused = {"left": 1}

    def sns_down(**_: Any) -> Any:
        if refused["left"]:
            refused["left"] -= 1
            return (SimpleNamespace(status_code=503, headers={}),
                    {"Error": {"Code": "ServiceUnavailable", "Message": "injected"}})
        return None

    factory.register_hook("before-call.sns.Publish", sns_down)
    clock = SystemClock()
    notifier = Notifier(settings, factory, clock)
    assert notifier.notify("jams-dr rec-inc1 FAILED at verify", "retry it", kind="failed",
                           key="rec-inc1#failed", execution_id="rec-inc1") is False
    assert [m.key for m in pending_notifications(settings, factory)] == ["rec-inc1#failed"]
    Ledger(settings, factory, clock).create("drill-stalled", kind="drill", workflow="drill", state="a",
                                            status="running")

    with registry.overridden({"drill": Workflow("drill", (State("a", lambda ctx: Done()),))}):
        first = _sweep(client)
        second = _sweep(client)

    assert first["ok"] is True and first["launched"] == ["drill-stalled"]
    assert first["notifications"]["sent"] == ["rec-inc1#failed"]
    assert first["notifications"]["pending"] == [] and first["notifications"]["error"] is None
    assert second["notifications"]["sent"] == []
    assert [(m["kind"], m["subject"]) for m in inbox.received()] == [("failed", "jams-dr rec-inc1 FAILED at verify")]
    assert pending_notifications(settings, factory) == []


def test_a_sweep_whose_outbox_fails_still_relaunches_and_reports_the_error(
    client: Client, factory: ClientFactory, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SystemClock()
    Ledger(settings, factory, clock).create("drill-stalled", kind="drill", workflow="drill", state="a",
                                            status="running")

    def index_unreadable(params: dict[str, Any], **_: Any) -> Any:
        if "outbox#" in json.loads(params["body"] or b"{}").get("Key", {}).get("pk", {}).get("S", ""):
            return (SimpleNamespace(status_code=400, headers={}),
                    {"Error": {"Code": "AccessDeniedException", "Message": "not allowed (injected)"}})
        return None

    factory.register_hook("before-call.dynamodb.GetItem", index_unreadable)
    with registry.overridden({"drill": Workflow("drill", (State("a", lambda ctx: Done()),))}):
        answer = _sweep(client)

    assert answer["ok"] is True and answer["launched"] == ["drill-stalled"]
    assert "AccessDeniedException" in answer["notifications"]["error"]
