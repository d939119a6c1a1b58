"""Fuzzed EventBridge events (Health, alarm state change, RDS instance event, the watcher's schedule).

Real fixtures from tests/fixtures/events are mutated (values replaced by junk, keys deleted, unknown keys
added). Whatever arrives, detection answers with a clear rejection, an explicit "not relevant", or one
ordinary check; it never raises an unexpected error, never starts a recovery, and writes nothing but
its own watch state and Health dedupe markers. Both schedulers beat throughout, so no event alone may
lead to a recovery (the decision table needs both schedulers silent).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from chalice.test import Client
from hypothesis import event, given
from hypothesis import strategies as st

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock, SystemClock
from chalicelib.detection.events import (
    EventError,
    classify_alarm,
    classify_health,
    classify_rds,
    parse_alarm_event,
    parse_health_event,
    parse_rds_event,
)
from chalicelib.detection.heartbeats import publish_heartbeat
from chalicelib.detection.incident import Incident
from chalicelib.detection.triggers import handle_alarm_event, handle_health_event, handle_rds_event
from chalicelib.settings import Settings
from tests.conftest import PRIMARY
from tests.fuzz.conftest import DEV_ENVIRONMENT, DEV_LEDGER, PROJECT
from tests.fuzz.junk import (
    Call,
    fuzz_settings,
    huge_strings,
    json_values,
    mutated,
    non_objects,
    parent_of,
    paths,
    recording,
    value_at,
)

FIXTURES = PROJECT / "tests" / "fixtures" / "events"
# chalice builds its CloudWatchEvent from these keys before any jams-dr code runs; EventBridge always
# sends them, so the handler-level fuzz keeps them (their values are still fuzzed).
ENVELOPE = frozenset({"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"})
FUZZ_ENVIRONMENT = "jams-fuzz"  # the auto-mode test's own environment (its own watch state)
REQUIRED_ENVELOPE = [("version",), ("id",), ("detail-type",), ("source",), ("account",), ("time",), ("region",),
                     ("detail",)]


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return loaded


class Kind:
    def __init__(self, handler: str, fixtures: list[str], parse: Callable[[Any], Any],
                 classify: Callable[[Any], Any], required: list[tuple[str, ...]]) -> None:
        self.handler = handler
        self.fixtures = [fixture(name) for name in fixtures]
        self.parse = parse
        self.classify = classify
        self.required = REQUIRED_ENVELOPE + required


KINDS = {
    "health": Kind(
        "health_event", ["health_ec2_issue_primary", "health_ec2_issue_other_region"], parse_health_event,
        lambda e: classify_health(e, PRIMARY),
        [("detail", k) for k in ("eventArn", "service", "eventTypeCode", "eventTypeCategory", "communicationId")]),
    "alarm": Kind(
        "alarm_event", ["alarm_ok_to_alarm", "alarm_insufficient_to_alarm"], parse_alarm_event,
        lambda e: classify_alarm(e, PRIMARY),
        [("detail", "alarmName"), ("detail", "state"), ("detail", "state", "value"), ("detail", "previousState"),
         ("detail", "previousState", "value")]),
    "rds": Kind(
        "rds_event", ["rds_instance_failed", "rds_multi_az_failover_started"], parse_rds_event,
        lambda e: classify_rds(e, PRIMARY, None),
        [("detail", "EventID"), ("detail", "SourceIdentifier"), ("detail", "SourceType")]),
}


@st.composite
def mangled(draw: st.DrawFn, kind: str, *, keep: frozenset[str] = frozenset()) -> Any:
    base = draw(st.sampled_from(KINDS[kind].fixtures))
    if not keep and draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(non_objects(), json_values()))
    doc, _ = draw(mutated(base, keep=keep))
    return doc


def absent_required(kind: str, doc: Any) -> list[str]:
    """Required fields that are missing or null while their parent object is there."""
    out = []
    for path in KINDS[kind].required:
        node = doc
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(path[-1]) is None:
            out.append(".".join(path))
    return out


# ------------------------------------------------------------------------------------------ parsing


@fuzz_settings(150)
@given(data=st.data(), kind=st.sampled_from(sorted(KINDS)))
def test_a_mangled_event_is_parsed_or_rejected_with_every_bad_field_named(data: st.DataObject, kind: str) -> None:
    raw = data.draw(mangled(kind), label="event")
    spec = KINDS[kind]
    missing = absent_required(kind, raw) if isinstance(raw, dict) else []

    try:
        parsed = spec.parse(raw)
    except EventError as exc:
        parsed = exc
    if not isinstance(parsed, EventError):
        event("parsed")
        assert missing == [], f"accepted an event without {missing}"
        signal = spec.classify(parsed)  # classification never raises on anything the parser let through
        assert isinstance(signal.reason, str) and signal.reason
        return
    event("rejected")
    assert str(parsed).startswith("malformed ") and "It was rejected and changed nothing" in str(parsed)
    if not isinstance(raw, dict):
        assert parsed.problems == [f"the event is a {type(raw).__name__}, not a JSON object"]
        return
    assert parsed.problems and all(": " in p for p in parsed.problems)  # each problem is "<field>: <what>"
    for field in missing:
        assert any(p.startswith(f"{field}: ") for p in parsed.problems), (field, parsed.problems)


# ------------------------------------------------------------------------------------------ handlers


def allowed_write(call: Call, environment: str) -> bool:
    """Detection's own bookkeeping: the watch state and the Health dedupe markers in the ledger."""
    if (call.service, call.operation) not in {("dynamodb", "PutItem"), ("dynamodb", "DeleteItem")}:
        return False
    key = (call.params.get("Item") or call.params.get("Key") or {}).get("pk", {}).get("S", "")
    return call.params.get("TableName") == DEV_LEDGER and key.startswith(
        (f"watch#{environment}", f"health#{environment}#"))


def assert_only_bookkeeping(answer: dict[str, Any], calls: list[Call], environment: str) -> None:
    if answer.get("accepted") is False:
        event("rejected")
        assert answer["reason"].startswith("malformed ") and "changed nothing" in answer["reason"]
        assert calls == [], [str(c) for c in calls]  # rejected before any AWS call
        return
    if answer.get("relevant") is False:
        event("not relevant")
        assert answer["reason"]
        assert calls == [], [str(c) for c in calls]  # decided from the event alone
        return
    bad = [(str(c), c.params.get("TableName"), c.params.get("Item", c.params.get("Key", {})).get("pk"))
           for c in calls if c.mutating and not allowed_write(c, environment)]
    assert bad == []
    if answer.get("duplicate") is True:
        event("duplicate")
        assert "already received" in answer["reason"]
        return
    event("checked")
    assert answer["decision"] == "healthy", answer  # both schedulers beat: no event alone is a disaster
    assert answer["execution_id"] is None and answer["incident"] is None


def beat_recent_minutes(clients: ClientFactory, environment: str, minutes: int) -> None:
    """A beat per scheduler in each of the last minutes (the real clock: the handlers use it)."""
    now = SystemClock().now()
    for k in range(minutes):
        for scheduler in ("primary", "failover"):
            publish_heartbeat(clients, PRIMARY, environment, scheduler, FakeClock(now - timedelta(minutes=k)))


class Beating:
    """Both schedulers of both test environments beat for as long as the module runs, however slow."""

    def __init__(self, clients: ClientFactory) -> None:
        self.clients = clients
        self._last = SystemClock().now()
        for environment in (DEV_ENVIRONMENT, FUZZ_ENVIRONMENT):
            beat_recent_minutes(clients, environment, minutes=8)

    def __call__(self) -> ClientFactory:
        """The factory, after a fresh beat if the last one is getting old (before any recording)."""
        if SystemClock().now() - self._last > timedelta(seconds=30):
            self._last = SystemClock().now()
            for environment in (DEV_ENVIRONMENT, FUZZ_ENVIRONMENT):
                beat_recent_minutes(self.clients, environment, minutes=1)
        return self.clients


@pytest.fixture(scope="module")
def beating(fuzz_clients: ClientFactory, dev_ledger: str) -> Beating:
    return Beating(fuzz_clients)


@fuzz_settings(60)
@given(data=st.data(), kind=st.sampled_from([*sorted(KINDS), "schedule"]))
def test_mangled_events_through_the_handlers_are_rejected_ignored_or_checked_and_start_nothing(
    data: st.DataObject, kind: str, dev_client: Client, beating: Beating
) -> None:
    if kind == "schedule":
        raw, _ = data.draw(mutated(fixture("schedule_tick"), keep=ENVELOPE), label="event")
        handler = "heartbeat_watcher"
    else:
        raw = data.draw(mangled(kind, keep=ENVELOPE), label="event")
        handler = KINDS[kind].handler

    with recording(beating()) as recorder:
        answer = dev_client.lambda_.invoke(handler, raw).payload

    assert isinstance(answer, dict)
    json.dumps(answer)  # Lambda must be able to serialize the answer
    assert_only_bookkeeping(answer, recorder.calls, DEV_ENVIRONMENT)


# With FAILOVER_MODE=auto (stage dev uses notify), the recovery starter itself must never be called;
# the whole event is fuzzed here, envelope and non-objects included (the handlers' logic, no chalice).
HANDLERS = {"health": handle_health_event, "alarm": handle_alarm_event, "rds": handle_rds_event}
AUTO = Settings.defaults(environment=FUZZ_ENVIRONMENT, failover_mode="auto", ledger_table=DEV_LEDGER)


class StarterSpy:
    """The recovery starter the watcher calls on a region-recovery transition: records, starts nothing."""

    def __init__(self) -> None:
        self.started: list[Incident] = []

    def __call__(self, incident: Incident, *, await_approval: bool) -> str:
        self.started.append(incident)
        return f"rec-{incident.incident_id}"


@fuzz_settings(60)
@given(data=st.data(), kind=st.sampled_from(sorted(KINDS)))
def test_in_auto_mode_no_mangled_event_reaches_the_recovery_starter(
    data: st.DataObject, kind: str, beating: Beating
) -> None:
    raw = data.draw(mangled(kind), label="event")
    starter = StarterSpy()

    clients = beating()
    with recording(clients) as recorder:
        answer = HANDLERS[kind](AUTO, clients, SystemClock(), starter, raw)

    assert starter.started == []
    json.dumps(answer)
    assert_only_bookkeeping(answer, recorder.calls, FUZZ_ENVIRONMENT)


RELEVANT = {"health": "health_ec2_issue_primary", "alarm": "alarm_ok_to_alarm", "rds": "rds_instance_failed"}
# Every string of each relevant fixture: hypothesis' sampled_from favours early choices, and the one
# field that matters (the Health eventArn, a DynamoDB key) must not be left to chance.
STRETCHABLE = [
    (kind, path) for kind, name in sorted(RELEVANT.items())
    for path in sorted((p for p in paths(fixture(name)) if isinstance(value_at(fixture(name), p), str)), key=repr)
]


@pytest.mark.parametrize(("kind", "path"), STRETCHABLE, ids=[f"{k}:{'.'.join(map(str, p))}" for k, p in STRETCHABLE])
@fuzz_settings(3)
@given(tail=huge_strings())
def test_an_oversized_field_in_a_relevant_event_is_rejected_or_checked_never_an_error(
    kind: str, path: tuple[Any, ...], tail: str, beating: Beating
) -> None:
    raw = fixture(RELEVANT[kind])
    parent_of(raw, path)[path[-1]] += tail  # a plausible value, far too long (real fields are bounded)
    starter = StarterSpy()

    clients = beating()
    with recording(clients) as recorder:
        answer = HANDLERS[kind](AUTO, clients, SystemClock(), starter, raw)

    assert starter.started == []
    assert_only_bookkeeping(answer, recorder.calls, FUZZ_ENVIRONMENT)
