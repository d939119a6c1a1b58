"""The chain's Lambda functions through chalice.test.Client (stage dev of .chalice/config.json).

moto cannot run Lambda code, so the chain's asynchronous self-invocations are captured with botocore
hooks on a ClientFactory made for each test (installed with set_factory) and answered with 202.
Workflows are synthetic (registry.overridden): these tests are about the handlers, not the steps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client

from app import app
from chalicelib.aws import ClientFactory, set_factory
from chalicelib.clock import SystemClock
from chalicelib.detection.incident import Incident
from chalicelib.settings import Settings
from chalicelib.workflow import registry, starter
from chalicelib.workflow.ledger import Ledger
from chalicelib.workflow.model import Done, NotReady, State, StepContext, Workflow
from chalicelib.workflow.records import Status
from tests.conftest import RECOVERY

PROJECT = Path(__file__).resolve().parents[2]
TABLE = "jams-dev-test-ledger"
ADVANCE = "jams-dr-dev-advance_execution"  # ADVANCE_FUNCTION_NAME of stage dev


@pytest.fixture
def factory(embedded: Any) -> ClientFactory:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing"
    )
    made = ClientFactory(session=session, endpoint_url=embedded.endpoint, max_attempts=2)
    set_factory(made)  # the embedded fixture puts its own factory back afterwards
    return made


@pytest.fixture
def invokes(factory: ClientFactory) -> list[dict[str, Any]]:
    """Every lambda Invoke the handlers make: parameters kept, answered 202 without reaching moto."""
    calls: list[dict[str, Any]] = []

    class Accepted:
        status_code = 202

    factory.register_hook("before-parameter-build.lambda.Invoke",
                          lambda params, **_: calls.append(dict(params)))
    factory.register_hook("before-call.lambda.Invoke", lambda **_: (Accepted(), {"StatusCode": 202}))
    return calls


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("LEDGER_TABLE", TABLE)
    # What stage dev's environment_variables give the handlers.
    return Settings.defaults(environment="jams-dev", ledger_table=TABLE, failover_mode="notify")


@pytest.fixture
def ledger(factory: ClientFactory, settings: Settings) -> Ledger:
    factory.client("dynamodb", RECOVERY).create_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return Ledger(settings, factory, SystemClock())


def _wait_then_done(seconds: float) -> Workflow:
    polls: list[int] = []

    def wait(ctx: StepContext) -> Done | NotReady:
        polls.append(1)
        return NotReady(seconds, note="CREATE_IN_PROGRESS")

    return Workflow("drill", (State("a", lambda ctx: Done(output={"a": True})), State("wait", wait),
                              State("c", lambda ctx: Done())))


SIMPLE = Workflow("drill", (State("a", lambda ctx: Done()),))


@pytest.fixture
def workflows() -> Iterator[None]:
    with registry.overridden({
        "drill": SIMPLE,
        "recovery": Workflow("recovery", (State("a", lambda ctx: Done()),)),
        "failback": Workflow("failback", (State("a", lambda ctx: Done()),)),
    }):
        yield


@pytest.fixture
def client() -> Iterator[Client]:
    with Client(app, stage_name="dev", project_dir=str(PROJECT)) as made:
        yield made


def _items(factory: ClientFactory) -> list[dict[str, Any]]:
    return factory.client("dynamodb", RECOVERY).scan(TableName=TABLE)["Items"]


def _invoke(client: Client, name: str, payload: Any) -> dict[str, Any]:
    answer = client.lambda_.invoke(name, payload).payload
    assert isinstance(answer, dict)
    return answer


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("function", "payload", "expected"),
    [
        ("start_drill", {"drill_id": "Game Day"}, ["field 'drill_id'", "lowercase letters"]),
        ("start_drill", {"drill_id": "abc", "force": True},
         ["field 'force' is not accepted", "allowed: drill_id"]),
        ("start_drill", "abc", ["must be a JSON object"]),
        ("start_recovery", {}, ["field 'reason': Field required", "say why"]),
        ("start_recovery", {"reason": "us-east-1 down", "incident_id": "two words"}, ["field 'incident_id'"]),
        ("start_recovery", {"reason": "us-east-1 down", "mode": "auto"}, ["field 'mode' is not accepted"]),
        ("approve_recovery", {}, ["field 'execution_id': Field required", "jams-dr status"]),
        ("approve_recovery", {"execution_id": "i-123"}, ["field 'execution_id'", "pattern"]),
        ("retry_execution", {"execution_id": 5}, ["field 'execution_id'", "valid string"]),
        ("rollback_execution", {"execution_id": "rec-1", "now": True}, ["field 'now' is not accepted"]),
        ("start_failback", {"reason": ["x"]}, ["field 'reason'"]),
        ("advance_execution", {"id": "rec-1"}, ["field 'execution_id': Field required"]),
    ],
)
def test_bad_input_is_refused_with_the_field_and_the_fix_and_creates_nothing(
    function: str, payload: Any, expected: list[str],
    client: Client, factory: ClientFactory, ledger: Ledger, invokes: list[dict[str, Any]], workflows: None,
) -> None:
    answer = _invoke(client, function, payload)

    assert answer["ok"] is False
    assert answer["error"].startswith(f"{function}: bad input, nothing was started")
    for fragment in expected:
        assert fragment in answer["error"]
    assert _items(factory) == []
    assert invokes == []


def test_bad_settings_are_refused_with_the_fix(
    client: Client, factory: ClientFactory, ledger: Ledger, invokes: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch, workflows: None,
) -> None:
    monkeypatch.setenv("HEARTBEAT_INTERVAL_SECONDS", "often")
    answer = _invoke(client, "start_drill", {})

    assert answer["ok"] is False
    assert "HEARTBEAT_INTERVAL_SECONDS='often'" in answer["error"]
    assert _items(factory) == []


# ---------------------------------------------------------------------------------------- starts


def test_start_drill_creates_and_launches_the_chain(
    client: Client, ledger: Ledger, invokes: list[dict[str, Any]], workflows: None
) -> None:
    answer = _invoke(client, "start_drill", {"drill_id": "game-day"})

    assert answer == {"ok": True, "execution_id": "drill-game-day", "created": True, "status": "running",
                      "launched": True, "joined": False}
    [call] = invokes
    assert (call["FunctionName"], call["InvocationType"]) == (ADVANCE, "Event")
    assert json.loads(call["Payload"]) == {"execution_id": "drill-game-day"}
    stored = ledger.load("drill-game-day")
    assert (stored.environment, stored.data["stack_name"]) == ("jams-dev", "jams-dev-drill-game-day")


def test_start_recovery_is_idempotent_per_incident(
    client: Client, ledger: Ledger, invokes: list[dict[str, Any]], workflows: None
) -> None:
    payload = {"reason": "us-east-1 unreachable", "incident_id": "inc-1"}
    first = _invoke(client, "start_recovery", payload)
    second = _invoke(client, "start_recovery", payload)

    assert (first["ok"], first["execution_id"], first["created"]) == (True, "rec-inc-1", True)
    assert (second["ok"], second["execution_id"], second["created"]) == (True, "rec-inc-1", False)
    assert len(invokes) == 1
    stored = ledger.load("rec-inc-1")
    assert stored.incident is not None and stored.incident["reason"] == "us-east-1 unreachable"


def test_approve_recovery(
    client: Client, settings: Settings, factory: ClientFactory, ledger: Ledger,
    invokes: list[dict[str, Any]], workflows: None,
) -> None:
    clock = SystemClock()
    now = clock.now()
    parked = starter.recovery_starter(settings, factory, clock, starter.no_launch)(
        Incident("inc-7", "region-recovery", "both schedulers silent", now, now, now), await_approval=True)
    assert ledger.load(parked).status == "awaiting-approval"

    approved = _invoke(client, "approve_recovery", {"execution_id": parked})
    twice = _invoke(client, "approve_recovery", {"execution_id": parked})
    unknown = _invoke(client, "approve_recovery", {"execution_id": "rec-nope"})

    assert (approved["ok"], approved["status"], approved["launched"]) == (True, "running", True)
    assert [json.loads(c["Payload"]) for c in invokes] == [{"execution_id": "rec-inc-7"}]
    assert twice["ok"] is False and "is running, not awaiting-approval" in twice["error"]
    assert unknown["ok"] is False and "no execution 'rec-nope'" in unknown["error"]


@pytest.mark.parametrize("status", ["running", "awaiting-approval"])
def test_start_failback_is_refused_while_a_recovery_runs(
    client: Client, settings: Settings, factory: ClientFactory, ledger: Ledger,
    invokes: list[dict[str, Any]], workflows: None, status: Status,
) -> None:
    # As the starters create it: together with the environment's active slot.
    ledger.create("rec-inc-1", kind="recovery", workflow="recovery", state="a", status=status, exclusive=True)
    refused = _invoke(client, "start_failback", {"reason": "primary healthy"})
    assert refused["ok"] is False and f"recovery rec-inc-1 is {status}" in refused["error"]
    assert invokes == []
    assert [e.execution_id for e in ledger.list_executions()] == ["rec-inc-1"]


def test_start_failback(client: Client, ledger: Ledger, invokes: list[dict[str, Any]], workflows: None) -> None:
    answer = _invoke(client, "start_failback", {"reason": "primary healthy again"})

    assert answer["ok"] is True and answer["execution_id"].startswith("fb-")
    assert ledger.load(answer["execution_id"]).data == {"reason": "primary healthy again"}
    assert len(invokes) == 1


def test_retry_and_rollback_of_unknown_executions_are_refused(
    client: Client, ledger: Ledger, invokes: list[dict[str, Any]], workflows: None
) -> None:
    retry = _invoke(client, "retry_execution", {"execution_id": "rec-gone"})
    rollback = _invoke(client, "rollback_execution", {"execution_id": "rec-gone"})

    assert retry["ok"] is False and "no execution 'rec-gone'" in retry["error"]
    assert rollback["ok"] is False and "no execution 'rec-gone'" in rollback["error"]
    assert invokes == []


# ---------------------------------------------------------------------------------------- the chain


def test_advance_execution_works_then_invokes_itself_for_the_next_slice(
    client: Client, ledger: Ledger, invokes: list[dict[str, Any]]
) -> None:
    flow = _wait_then_done(30)
    ledger.create("drill-chain", kind="drill", workflow="drill", state="a", status="running")
    with registry.overridden({"drill": flow}):
        answer = _invoke(client, "advance_execution", {"execution_id": "drill-chain"})

    # chalice's test context gives 3 s: the 30 s wait cannot fit, the next slice is invoked.
    assert (answer["ok"], answer["outcome"], answer["relaunched"]) == (True, "resume", True)
    [call] = invokes
    assert (call["FunctionName"], call["InvocationType"]) == (ADVANCE, "Event")
    assert json.loads(call["Payload"]) == {"execution_id": "drill-chain"}
    stored = ledger.load("drill-chain")
    assert stored.history[0]["name"] == "a"
    assert stored.claim is None


def test_advance_execution_leaves_a_far_wait_to_the_sweeper(
    client: Client, ledger: Ledger, invokes: list[dict[str, Any]]
) -> None:
    ledger.create("drill-slow", kind="drill", workflow="drill", state="a", status="running")
    with registry.overridden({"drill": _wait_then_done(3600)}):
        first = _invoke(client, "advance_execution", {"execution_id": "drill-slow"})
        second = _invoke(client, "advance_execution", {"execution_id": "drill-slow"})

    assert (first["outcome"], first["relaunched"]) == ("resume", False)
    # A duplicate invocation before the check is due changes nothing and invokes nothing.
    assert (second["outcome"], second["steps_run"], second["relaunched"]) == ("resume", 0, False)
    assert invokes == []


def test_advance_execution_of_an_unknown_execution_is_refused(
    client: Client, ledger: Ledger, invokes: list[dict[str, Any]]
) -> None:
    answer = _invoke(client, "advance_execution", {"execution_id": "drill-none"})
    assert answer["ok"] is False and "no execution 'drill-none'" in answer["error"]


def test_execution_sweeper_relaunches_a_stalled_execution(
    client: Client, ledger: Ledger, invokes: list[dict[str, Any]], workflows: None
) -> None:
    ledger.create("drill-stalled", kind="drill", workflow="drill", state="a", status="running")
    ledger.create("rec-parked", kind="recovery", workflow="recovery", state="a", status="awaiting-approval")
    event = client.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={},
                                            resources=[], region=RECOVERY)

    answer = _invoke(client, "execution_sweeper", event)

    assert answer["ok"] is True
    assert answer["launched"] == ["drill-stalled"]
    assert answer["fence_error"] is None
    assert [json.loads(c["Payload"]) for c in invokes] == [{"execution_id": "drill-stalled"}]
