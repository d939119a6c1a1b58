"""The notification outbox against moto: SNS refusing, recovering, concurrent flushers, crashes, the engine's
notifications, and what a subscriber receives (jamsdr.inbox).

SNS failures are injected with a ``before-call.sns.Publish`` hook that answers an error for the first N
calls (each call is one attempt: the hook short-circuits botocore's retries). What reached the topic is
counted by SQS subscribers: an SNS message that was not published never arrives, a duplicate arrives twice.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock
from chalicelib.notify import NOTIFICATION_KINDS, Notifier
from chalicelib.outbox import (
    CLAIM_SECONDS,
    FlushResult,
    Outbox,
    flush_outbox,
    index_key,
    message_key,
    pending_notifications,
)
from chalicelib.settings import Settings
from chalicelib.workflow.engine import advance
from chalicelib.workflow.ledger import Ledger
from chalicelib.workflow.model import NO_RETRY, Done, RetryPolicy, State, StepContext, StepError, Workflow
from chalicelib.workflow.steps.recovery import notify_done
from jamsdr.inbox import Inbox
from tests.conftest import RECOVERY

TABLE = "jams-ob-dr-ledger"
ENV = "jams-ob"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Crash(BaseException):
    """The process dies here (not an Exception: nothing may catch it)."""


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def factory(embedded: Any) -> ClientFactory:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing"
    )
    return ClientFactory(session=session, endpoint_url=embedded.endpoint, max_attempts=2)


@pytest.fixture
def topic(factory: ClientFactory) -> str:
    ddb = factory.client("dynamodb", RECOVERY)
    ddb.create_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.update_time_to_live(TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"})
    return str(factory.client("sns", RECOVERY).create_topic(Name=f"{ENV}-notifications")["TopicArn"])


@pytest.fixture
def settings(topic: str) -> Settings:
    return Settings.defaults(environment=ENV, ledger_table=TABLE, topic_arn=topic)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def inbox(factory: ClientFactory, topic: str) -> Inbox:
    return Inbox.subscribe(factory, RECOVERY, topic)


class SnsOutage:
    """Publish answers ``code`` (HTTP ``status``) to the next ``calls`` calls, then SNS works again."""

    def __init__(self, factory: ClientFactory, calls: int = 0, code: str = "InternalError", status: int = 500,
                 only: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.left = calls
        self.code, self.status, self.only = code, status, only
        self.refused = 0
        self.accepted = 0
        self._lock = threading.Lock()
        factory.register_hook("before-call.sns.Publish", self._before)
        factory.register_hook("after-call.sns.Publish", self._after)

    def _before(self, params: dict[str, Any], **_: Any) -> Any:
        with self._lock:
            wanted = self.only is None or self.only(params)
            if not wanted or self.left <= 0:
                return None
            self.left -= 1
            self.refused += 1
        return (SimpleNamespace(status_code=self.status, headers={}),
                {"Error": {"Code": self.code, "Message": "SNS refused (injected)"},
                 "ResponseMetadata": {"HTTPStatusCode": self.status}})

    def _after(self, parsed: dict[str, Any], **_: Any) -> None:
        if "Error" not in parsed:
            with self._lock:
                self.accepted += 1


def subjects(inbox: Inbox) -> list[str]:
    return [m["subject"] for m in inbox.received()]


def ledger_item(factory: ClientFactory, key: str) -> dict[str, Any]:
    return dict(factory.client("dynamodb", RECOVERY).get_item(
        TableName=TABLE, Key={"pk": {"S": key}}, ConsistentRead=True).get("Item") or {})


def index_keys(factory: ClientFactory) -> set[str]:
    item = ledger_item(factory, index_key(ENV))
    return set(item.get("pending", {}).get("SS", []))


# ---------------------------------------------------------------------------------------- the outbox


def test_a_refused_notification_stays_pending_and_a_later_flush_sends_it_exactly_once(
    settings: Settings, factory: ClientFactory, clock: FakeClock, inbox: Inbox
) -> None:
    outage = SnsOutage(factory, calls=1)
    notifier = Notifier(settings, factory, clock)

    sent = notifier.notify("jams-dr jams-ob: REGION-RECOVERY (request approval)", "approve it",
                           kind="approval-request", key="rec-inc1#approval-request", execution_id="rec-inc1")

    assert sent is False
    assert inbox.received() == []
    [pending] = pending_notifications(settings, factory)
    assert (pending.key, pending.kind, pending.status, pending.attempts) == (
        "rec-inc1#approval-request", "approval-request", "pending", 1)
    assert pending.last_error is not None and pending.last_error.startswith("InternalError")
    assert pending.execution_id == "rec-inc1"
    assert index_keys(factory) == {"rec-inc1#approval-request"}

    flushed = flush_outbox(settings, factory, clock)

    assert flushed.sent == ["rec-inc1#approval-request"] and flushed.pending == [] and flushed.error is None
    assert subjects(inbox) == ["jams-dr jams-ob: REGION-RECOVERY (request approval)"]
    stored = ledger_item(factory, message_key(ENV, "rec-inc1#approval-request"))
    assert stored["status"]["S"] == "sent" and stored["attempts"]["N"] == "2"
    assert int(stored["expires_at"]["N"]) > int(T0.timestamp())  # TTL: sent messages go away after days
    assert "claim_until" not in stored
    assert index_keys(factory) == set()
    assert pending_notifications(settings, factory) == []

    # Nothing more to send: a second flush, and the same notification again (a duplicated invocation).
    assert flush_outbox(settings, factory, clock).sent == []
    assert notifier.notify("jams-dr jams-ob: REGION-RECOVERY (request approval)", "approve it",
                           kind="approval-request", key="rec-inc1#approval-request") is True
    assert outage.accepted == 1
    assert subjects(inbox) == ["jams-dr jams-ob: REGION-RECOVERY (request approval)"]


def test_attempts_and_the_last_error_are_kept_while_sns_refuses(
    settings: Settings, factory: ClientFactory, clock: FakeClock, inbox: Inbox
) -> None:
    SnsOutage(factory, calls=3, code="AuthorizationError", status=403)
    notifier = Notifier(settings, factory, clock)
    assert notifier.notify("decision", "body", kind="decision", key="decision#1") is False
    clock.advance(60)
    assert flush_outbox(settings, factory, clock).sent == []
    clock.advance(60)
    still = flush_outbox(settings, factory, clock)

    [message] = still.pending
    assert (message.attempts, message.status) == (3, "pending")
    assert message.last_error is not None and message.last_error.startswith("AuthorizationError")
    assert still.to_dict()["pending"][0]["attempts"] == 3
    clock.advance(60)
    assert flush_outbox(settings, factory, clock).sent == ["decision#1"]
    assert subjects(inbox) == ["decision"]


def test_sns_down_stops_the_flush_at_the_first_message_and_the_rest_wait_their_turn(
    settings: Settings, factory: ClientFactory, clock: FakeClock, inbox: Inbox
) -> None:
    """A 5xx (or a dead endpoint) would be the same for every message: one try per flush, oldest first."""
    outage = SnsOutage(factory, calls=100)
    notifier = Notifier(settings, factory, clock)
    for index in range(3):
        notifier.notify(f"message {index}", "body", kind="notice", key=f"notice#{index}")
        clock.advance(1)
    refused_before = outage.refused

    result = flush_outbox(settings, factory, clock)

    assert outage.refused == refused_before + 1
    assert [m.key for m in result.pending] == ["notice#0", "notice#1", "notice#2"]
    assert [m.attempts for m in result.pending] == [2, 1, 1]
    outage.left = 0
    assert flush_outbox(settings, factory, clock).sent == ["notice#0", "notice#1", "notice#2"]
    assert subjects(inbox) == ["message 0", "message 1", "message 2"]


def test_a_message_sns_refuses_does_not_hold_back_the_others(
    settings: Settings, factory: ClientFactory, clock: FakeClock, inbox: Inbox
) -> None:
    SnsOutage(factory, calls=100, code="InvalidParameter", status=400,
              only=lambda request: request["body"].get("Subject") == "bad one")
    notifier = Notifier(settings, factory, clock)
    notifier.notify("bad one", "body", kind="notice", key="a-bad")
    clock.advance(1)
    SnsOutage(factory, calls=1)  # the good one is refused once too, so both are pending
    notifier.notify("good one", "body", kind="notice", key="b-good")

    result = flush_outbox(settings, factory, clock)

    assert result.sent == ["b-good"]
    assert [m.key for m in result.pending] == ["a-bad"]
    assert subjects(inbox) == ["good one"]


def test_two_concurrent_flushers_publish_each_message_once(
    settings: Settings, factory: ClientFactory, clock: FakeClock, inbox: Inbox
) -> None:
    outage = SnsOutage(factory, calls=4)
    notifier = Notifier(settings, factory, clock)
    keys = [f"rec-{index}#started" for index in range(4)]
    for key in keys:
        assert notifier.notify(f"started {key}", "body", kind="started", key=key) is False
    assert outage.refused == 4
    barrier = threading.Barrier(2)
    results: list[FlushResult] = []

    def flusher() -> None:
        barrier.wait()
        results.append(flush_outbox(settings, factory, clock))

    threads = [threading.Thread(target=flusher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(results) == 2 and all(r.error is None for r in results)
    assert sorted(k for r in results for k in r.sent) == sorted(keys)  # each by exactly one flusher
    assert outage.accepted == 4
    assert Counter(subjects(inbox)) == Counter(f"started {key}" for key in keys)


def test_a_crash_between_publish_and_mark_sent_sends_again_after_the_claim_expires(
    settings: Settings, factory: ClientFactory, clock: FakeClock, inbox: Inbox
) -> None:
    """At-least-once, as documented: never lost, and a duplicate only after a crash at the worst moment."""
    crashes = {"left": 1}

    def die_after_publish(**_: Any) -> None:
        if crashes["left"]:
            crashes["left"] -= 1
            raise Crash("killed after SNS accepted the message")

    factory.register_hook("after-call.sns.Publish", die_after_publish)
    notifier = Notifier(settings, factory, clock)
    with pytest.raises(Crash):
        notifier.notify("failed", "body", kind="failed", key="rec-x#failed")

    busy = flush_outbox(settings, factory, clock)  # the dead sender's claim is still live
    assert busy.busy == ["rec-x#failed"] and busy.sent == []
    clock.advance(CLAIM_SECONDS + 1)
    assert flush_outbox(settings, factory, clock).sent == ["rec-x#failed"]
    assert subjects(inbox) == ["failed", "failed"]
    assert flush_outbox(settings, factory, clock).sent == []


def test_a_pending_key_notified_again_is_sent_by_that_call_once(
    settings: Settings, factory: ClientFactory, clock: FakeClock, inbox: Inbox
) -> None:
    SnsOutage(factory, calls=1)
    notifier = Notifier(settings, factory, clock)
    assert notifier.notify("first words", "body 1", kind="decision", key="decision#7") is False
    # A re-run sends the stored message (the first words), not a second one.
    assert notifier.notify("other words", "body 2", kind="decision", key="decision#7") is True
    assert notifier.notify("other words", "body 2", kind="decision", key="decision#7") is True
    assert subjects(inbox) == ["first words"]
    assert [m.subject for m in notifier.messages] == ["first words"]


def test_every_kind_and_its_attributes_reach_a_subscriber_in_order(
    settings: Settings, factory: ClientFactory, clock: FakeClock, topic: str, inbox: Inbox
) -> None:
    sqs = factory.client("sqs", RECOVERY)
    raw_url = sqs.create_queue(QueueName="raw-subscriber")["QueueUrl"]
    raw_arn = sqs.get_queue_attributes(QueueUrl=raw_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    factory.client("sns", RECOVERY).subscribe(TopicArn=topic, Protocol="sqs", Endpoint=raw_arn)
    notifier = Notifier(settings, factory, clock)

    for kind in NOTIFICATION_KINDS:
        assert notifier.notify(f"subject\nof {kind} \u00e9", "body", kind=kind, key=f"key-{kind}") is True

    received = inbox.received()
    assert [m["kind"] for m in received] == list(NOTIFICATION_KINDS)
    assert [m["subject"] for m in received] == [f"subject of {k} ?" for k in NOTIFICATION_KINDS]
    assert all(m["at"] and m["at"].endswith("Z") for m in received)
    assert inbox.received() == received  # cumulative, each message once
    envelopes = [json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=raw_url, MaxNumberOfMessages=10)[
        "Messages"]]
    attributes = {e["MessageAttributes"]["key"]["Value"]: e["MessageAttributes"]["kind"]["Value"] for e in envelopes}
    assert attributes == {f"key-{kind}": kind for kind in NOTIFICATION_KINDS}


def test_without_a_topic_notifications_are_only_logged_and_nothing_is_stored(
    factory: ClientFactory, clock: FakeClock, topic: str
) -> None:
    settings = Settings.defaults(environment=ENV, ledger_table=TABLE)
    notifier = Notifier(settings, factory, clock)

    assert notifier.notify("logged", "body", kind="notice", key="k") is True
    assert flush_outbox(settings, factory, clock) == FlushResult()
    assert factory.client("dynamodb", RECOVERY).scan(TableName=TABLE)["Items"] == []
    assert notifier.sent == [("logged", "body")]


def test_a_ledger_that_cannot_be_read_is_reported_by_the_flush_not_raised(
    factory: ClientFactory, clock: FakeClock, topic: str
) -> None:
    settings = Settings.defaults(environment=ENV, ledger_table="jams-ob-missing-ledger", topic_arn=topic)

    result = flush_outbox(settings, factory, clock)

    assert result.error is not None and "jams-ob-missing-ledger does not exist" in result.error
    assert "jams-dr bootstrap" in result.error


def test_the_outbox_items_carry_what_the_on_call_needs(
    settings: Settings, factory: ClientFactory, clock: FakeClock
) -> None:
    SnsOutage(factory, calls=1)
    Notifier(settings, factory, clock).notify("s", "b", kind="failed", key="rec-1#failed", execution_id="rec-1",
                                              incident_id="inc-1", ignored=None)
    message = Outbox(settings, factory, clock).get("rec-1#failed")
    assert message is not None
    assert (message.kind, message.execution_id, message.incident_id, dict(message.context)) == (
        "failed", "rec-1", "inc-1", {"execution_id": "rec-1", "incident_id": "inc-1"})
    assert message.created_at == T0 and message.claim_until is None


# ---------------------------------------------------------------------------------------- the engine


@pytest.fixture
def ledger(settings: Settings, factory: ClientFactory, clock: FakeClock) -> Ledger:
    return Ledger(settings, factory, clock)


def _run(execution_id: str, flow: Workflow, settings: Settings, factory: ClientFactory, clock: FakeClock,
         notifier: Notifier, owner: str = "runner-1") -> Any:
    return advance(execution_id, workflow=flow, settings=settings, clients=factory, clock=clock,
                   notifier=notifier, owner=owner, deadline=None)


def test_started_failed_and_succeeded_are_queued_while_sns_fails_and_delivered_by_a_later_flush(
    settings: Settings, factory: ClientFactory, clock: FakeClock, inbox: Inbox, ledger: Ledger
) -> None:
    outage = SnsOutage(factory, calls=1000)
    notifier = Notifier(settings, factory, clock)

    def broken(ctx: StepContext) -> Done:
        raise StepError("stack CREATE_FAILED")

    failing = Workflow("recovery", (State("a", broken, retry=NO_RETRY),))
    ledger.create("rec-inc9", kind="recovery", workflow="recovery", state="a", status="running",
                  incident={"incident_id": "inc9"})
    assert _run("rec-inc9", failing, settings, factory, clock, notifier).status == "failed"
    clock.advance(1)
    fine = Workflow("drill", (State("a", lambda ctx: Done()), State("notify", notify_done)))
    ledger.create("drill-ok", kind="drill", workflow="drill", state="a", status="running")
    assert _run("drill-ok", fine, settings, factory, clock, notifier).status == "succeeded"

    done = ledger.load("drill-ok")
    assert done.history[-1]["note"] == ("succeeded; notification queued, SNS refused for now; re-sent by the "
                                        "watcher/sweeper")
    assert done.data["notification_queued"] is True and done.data["notified_at"] is None
    assert [m.key for m in pending_notifications(settings, factory)] == [
        "rec-inc9#started", "rec-inc9#failed", "drill-ok#started", "drill-ok#succeeded"]
    assert inbox.received() == []

    outage.left = 0
    assert flush_outbox(settings, factory, clock).sent == [
        "rec-inc9#started", "rec-inc9#failed", "drill-ok#started", "drill-ok#succeeded"]
    assert [(m["kind"], m["subject"]) for m in inbox.received()] == [
        ("started", "jams-dr recovery rec-inc9 started"),
        ("failed", "jams-dr recovery rec-inc9 FAILED at a"),
        ("started", "jams-dr drill drill-ok started"),
        ("succeeded", "jams-dr drill drill-ok succeeded"),
    ]


def test_a_retried_execution_that_fails_again_is_notified_again(
    settings: Settings, factory: ClientFactory, clock: FakeClock, inbox: Inbox, ledger: Ledger
) -> None:
    notifier = Notifier(settings, factory, clock)

    def broken(ctx: StepContext) -> Done:
        raise StepError("still broken")

    flow = Workflow("recovery", (State("a", lambda ctx: Done()), State("b", broken, retry=NO_RETRY)))
    ledger.create("rec-r1", kind="recovery", workflow="recovery", state="a", status="running")
    _run("rec-r1", flow, settings, factory, clock, notifier)
    ledger.reopen(ledger.load("rec-r1"), requested_by="operator")
    _run("rec-r1", flow, settings, factory, clock, notifier)

    assert [m["kind"] for m in inbox.received()] == ["started", "failed", "failed"]
    assert {m.key for m in notifier.messages if m.kind == "failed"} == {"rec-r1#failed", "rec-r1#failed#1"}


def test_started_is_sent_once_through_retries_a_crash_and_a_duplicate_invocation(
    settings: Settings, factory: ClientFactory, clock: FakeClock, inbox: Inbox, ledger: Ledger
) -> None:
    runs = Counter[str]()

    def flaky_then_crash(ctx: StepContext) -> Done:
        runs["first"] += 1
        if runs["first"] == 1:
            raise StepError("throttled", code="Throttling")
        if runs["first"] == 2:
            raise Crash("killed inside the first state")
        return Done()

    flow = Workflow("failback", (
        State("first", flaky_then_crash, retry=RetryPolicy(errors=("Throttling",), max_attempts=3,
                                                           interval_seconds=1)),
        State("second", lambda ctx: Done()),
    ))
    ledger.create("fb-1", kind="failback", workflow="failback", state="first", status="running")
    notifier = Notifier(settings, factory, clock)
    with pytest.raises(Crash):
        _run("fb-1", flow, settings, factory, clock, notifier, owner="dead-lambda")
    clock.advance(1000)  # the dead runner's claim expires
    results: list[Any] = []
    barrier = threading.Barrier(2)

    def duplicate(owner: str) -> None:
        barrier.wait()
        results.append(_run("fb-1", flow, settings, factory, clock, Notifier(settings, factory, clock), owner))

    threads = [threading.Thread(target=duplicate, args=(f"lambda-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert ledger.load("fb-1").status == "succeeded"
    assert [m["kind"] for m in inbox.received()] == ["started"]


def test_a_queue_write_that_committed_but_raised_is_sent_once_not_twice(
    settings: Settings, factory: ClientFactory, clock: FakeClock, inbox: Inbox
) -> None:
    """The enqueue transaction commits, then its answer is lost (a read timeout after botocore's retries):
    the message IS queued, so the notifier sends it through the outbox, never also directly."""
    outage = SnsOutage(factory)  # counts accepted publishes only

    def answer_lost(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        if "Error" not in parsed:
            raise ReadTimeoutError(endpoint_url="http://ledger")

    factory.register_hook("after-call.dynamodb.TransactWriteItems", answer_lost)
    try:
        delivery = Notifier(settings, factory, clock).deliver(
            "jams-dr jams-ob: decision", "body", kind="decision", key="decision#lost-answer")
    finally:
        factory.unregister_hook("after-call.dynamodb.TransactWriteItems", answer_lost)
    assert delivery.sent and delivery.queued
    assert flush_outbox(settings, factory, clock).sent == []
    assert outage.accepted == 1 and subjects(inbox) == ["jams-dr jams-ob: decision"]


def test_a_message_whose_mark_sent_failed_stays_indexed_for_the_next_flush(
    settings: Settings, factory: ClientFactory, clock: FakeClock
) -> None:
    """SNS took it, but recording that failed: the message is still pending, so it must stay in the index
    (else no flush and no `jams-dr status` would ever see it again)."""
    calls = {"n": 0}

    def mark_sent_fails(params: dict[str, Any], **_: Any) -> None:
        if ":sent" in json.dumps(params.get("ExpressionAttributeValues", {})) and calls["n"] == 0:
            calls["n"] += 1
            raise EndpointConnectionError(endpoint_url="http://ledger")

    factory.register_hook("before-parameter-build.dynamodb.UpdateItem", mark_sent_fails)
    try:
        Notifier(settings, factory, clock).notify("jams-dr jams-ob: notice", "body", kind="notice",
                                                  key="notice#mark-failed")
    finally:
        factory.unregister_hook("before-parameter-build.dynamodb.UpdateItem", mark_sent_fails)
    assert calls["n"] == 1  # the mark-sent write really failed
    assert index_keys(factory) == {"notice#mark-failed"}
    assert [m.key for m in pending_notifications(settings, factory)] == ["notice#mark-failed"]
