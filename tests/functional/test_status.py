"""`jams-dr status` against the embedded AWS, through the CLI (click's runner, a stage's config.json).

It must show what the on-call needs at 3 a.m.: the watcher's decision, the open incident, what waits for
approval with the exact command, and the notifications SNS has not accepted yet; and exit 3 with the
fix when it can read nothing at all (credentials, region, endpoint).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from chalicelib.aws import ClientFactory, closed_loopback_endpoint, set_factory
from chalicelib.clock import FakeClock, isoformat
from chalicelib.detection.incident import Incident
from chalicelib.detection.state import WatchState
from chalicelib.notify import Notifier
from chalicelib.settings import Settings
from chalicelib.workflow.ledger import Ledger
from jamsdr import operate
from jamsdr.cli import main
from jamsdr.cliutil import EXIT_AWS
from tests.conftest import PRIMARY, RECOVERY

STAGE = "ops"
ENV = "jams-st"
TABLE = "jams-st-dr-ledger"
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clients: ClientFactory) -> Settings:
    """A project whose stage ``ops`` names the embedded world's table and topic; the CLI runs from it."""
    ddb = clients.client("dynamodb", RECOVERY)
    ddb.create_table(TableName=TABLE, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
    topic = clients.client("sns", RECOVERY).create_topic(Name=f"{ENV}-notifications")["TopicArn"]
    env = {"ENVIRONMENT_NAME": ENV, "LEDGER_TABLE": TABLE, "TOPIC_ARN": topic, "FAILOVER_MODE": "approve"}
    config = {"version": "2.0", "app_name": "jams-dr",
              "environment_variables": {"PRIMARY_REGION": PRIMARY, "RECOVERY_REGION": RECOVERY},
              "stages": {STAGE: {"environment_variables": env}}}
    (tmp_path / ".chalice").mkdir()
    (tmp_path / ".chalice" / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    # Wide consoles: the assertions read whole rows, not rich's wrapping of them.
    monkeypatch.setattr(operate, "console", Console(width=500))
    monkeypatch.setattr(operate, "err_console", Console(width=500, stderr=True))
    return Settings.defaults(environment=ENV, ledger_table=TABLE, topic_arn=topic, failover_mode="approve")


def status(*args: str) -> Result:
    return CliRunner().invoke(main, ["status", "--stage", STAGE, *args], catch_exceptions=False)


def table_rows(result: Result) -> dict[str, str]:
    """The status table's rows, label -> state."""
    return {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in result.stdout.splitlines() if line.count("│") >= 3}


def an_incident_awaiting_approval(settings: Settings, clients: ClientFactory) -> Incident:
    failure, detected, decided = NOW - timedelta(minutes=9), NOW - timedelta(minutes=5), NOW - timedelta(minutes=4)
    incident = Incident(incident_id="inc-st", decision="region-recovery", reason="us-east-1 does not answer",
                        failure_at=failure, detected_at=detected, decided_at=decided)
    state = WatchState(environment=ENV, watch_started_at=NOW - timedelta(hours=2), version=7,
                       decision="region-recovery", decided_at=decided, reason="us-east-1 does not answer",
                       checked_at=NOW - timedelta(seconds=30), incident=incident, execution_id="rec-inc-st")
    clients.client("dynamodb", RECOVERY).put_item(TableName=TABLE, Item=state.to_item())
    Ledger(settings, clients, FakeClock(decided)).create(
        "rec-inc-st", kind="recovery", workflow="recovery", state="preflight", status="awaiting-approval",
        incident=incident.to_dict())
    return incident


def test_status_shows_the_decision_the_incident_the_approval_command_and_pending_notifications(
    project: Settings, clients: ClientFactory
) -> None:
    incident = an_incident_awaiting_approval(project, clients)
    refused = {"left": 1}

    def sns_refuses_once(**_: Any) -> Any:
        if refused["left"]:
            refused["left"] -= 1
            return (SimpleNamespace(status_code=500, headers={}),
                    {"Error": {"Code": "InternalError", "Message": "injected"}})
        return None

    clients.register_hook("before-call.sns.Publish", sns_refuses_once)
    try:
        Notifier(project, clients, FakeClock(NOW)).notify(
            "jams-dr jams-st: REGION-RECOVERY (request approval)", "approve", kind="approval-request",
            key="rec-inc-st#approval-request", execution_id="rec-inc-st")
    finally:
        clients.unregister_hook("before-call.sns.Publish", sns_refuses_once)

    result = status()

    assert result.exit_code == 0, result.output
    rows = table_rows(result)
    assert rows["watcher decision"] == (
        f"region-recovery since {isoformat(incident.decided_at)}: us-east-1 does not answer "
        f"(last check {isoformat(NOW - timedelta(seconds=30))})")
    assert rows["open incident"] == (
        f"inc-st: failure {isoformat(incident.failure_at)}, detected {isoformat(incident.detected_at)}, decided "
        f"{isoformat(incident.decided_at)}; execution rec-inc-st")
    assert rows["awaiting approval"] == (
        f"rec-inc-st (recovery, since {isoformat(incident.decided_at)}): approve with "
        f"jams-dr recover --approve rec-inc-st --stage {STAGE}")
    assert rows["pending notifications"].startswith(
        f"1 waiting for SNS, oldest {isoformat(NOW)} (approval-request: jams-dr jams-st: REGION-RECOVERY (request "
        "approval), 1 attempt(s)); last error: InternalError")
    # The rows it always had are still there (no copy pinned in this world, no standby stack).
    assert (rows["pinned copy"], rows["newest copy"]) == ("none", "none")
    assert rows["standby stack"] == "jams-st-standby: missing"
    assert rows["executions"] == "rec-inc-st [recovery: awaiting-approval at preflight]"
    assert (rows["recovery lease"], rows["drill lease"]) == ("free (never taken)", "free (never taken)")


def test_status_before_any_check_says_so_and_nothing_is_pending(project: Settings) -> None:
    result = status()

    assert result.exit_code == 0, result.output
    rows = table_rows(result)
    assert rows["watcher decision"].startswith("no check recorded yet")
    assert (rows["open incident"], rows["awaiting approval"]) == ("none", "none")
    assert rows["pending notifications"] == "none: SNS accepted every notification"


def test_a_start_that_failed_is_shown_with_its_error(project: Settings, clients: ClientFactory) -> None:
    incident = Incident(incident_id="inc-f", decision="region-recovery", reason="down", failure_at=None,
                        detected_at=NOW, decided_at=NOW)
    state = WatchState(environment=ENV, watch_started_at=NOW, decision="region-recovery", decided_at=NOW,
                       reason="down", checked_at=NOW, incident=incident, start_pending=True,
                       start_error="AccessDeniedException: not allowed")
    clients.client("dynamodb", RECOVERY).put_item(TableName=TABLE, Item=state.to_item())

    result = status()

    assert result.exit_code == 0, result.output
    assert ("inc-f: failure unknown, detected" in result.stdout
            and "execution not started; starting it FAILED: AccessDeniedException: not allowed (the watcher retries "
                "it)" in result.stdout)


def test_status_reading_only_the_recovery_region_still_exits_0(
    project: Settings, embedded: Any, clients: ClientFactory
) -> None:
    an_incident_awaiting_approval(project, clients)
    embedded.take_region_down(PRIMARY)

    result = status()

    assert result.exit_code == 0, result.output
    assert "jams-dr recover --approve rec-inc-st --stage ops" in result.stdout


def test_status_exits_3_naming_what_failed_and_the_fix_when_nothing_answers(project: Settings) -> None:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing"
    )
    set_factory(ClientFactory(session=session, endpoint_url=closed_loopback_endpoint(), max_attempts=1,
                              connect_timeout=1.0))

    result = status()

    assert result.exit_code == EXIT_AWS == 3
    message = " ".join(result.stderr.split())
    assert message.startswith("error: jams-dr status could not read anything from AWS (")
    for probe in ("watch state: Unreachable", "recovery point: Unreachable", "heartbeats: Unreachable",
                  "ledger: Unreachable", "lease: Unreachable", "notification outbox: Unreachable"):
        assert probe in message
    assert "check the network path to the regions us-east-1 and us-west-2" in message
    assert "AWS_ENDPOINT_URL=" in message  # the embedded AWS sets it: the likely culprit is named
    assert "check the AWS credentials" in message
