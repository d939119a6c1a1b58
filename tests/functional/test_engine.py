"""The engine against a moto ledger table in the recovery region, with synthetic counting workflows.

Each test gets its own ClientFactory on the embedded server (so hooks registered here never leak into
other tests) and a FakeClock (no test really sleeps).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock, isoformat
from chalicelib.detection.incident import Incident
from chalicelib.notify import Notifier
from chalicelib.settings import Settings
from chalicelib.workflow import starter
from chalicelib.workflow.engine import AdvanceResult, Progress, advance
from chalicelib.workflow.ledger import ClaimLost, ExecutionExists, ExecutionNotFound, LeaseHeld, Ledger, StatusConflict
from chalicelib.workflow.model import (
    NO_RETRY,
    Done,
    NotReady,
    RetryPolicy,
    State,
    StepContext,
    StepError,
    Workflow,
)
from chalicelib.workflow.records import Execution, Transition
from chalicelib.workflow.registry import UnknownWorkflow
from chalicelib.workflow.runners import InProcessRunner, lambda_slice, sweep
from tests.conftest import RECOVERY

TABLE = "jams-test-dr-ledger"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Crash(BaseException):
    """The process dies here (not an Exception: the engine must not catch it)."""


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def factory(embedded: Any) -> ClientFactory:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing"
    )
    # Concurrent conditional writes stay atomic as in DynamoDB: EmbeddedAws serializes DynamoDB requests.
    return ClientFactory(session=session, endpoint_url=embedded.endpoint, max_attempts=2)


@pytest.fixture
def settings() -> Settings:
    return Settings.defaults(environment="jams-test", ledger_table=TABLE)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def table(factory: ClientFactory) -> str:
    """The ledger schema of the dr-support template: hash key pk (S), TTL on expires_at."""
    ddb = factory.client("dynamodb", RECOVERY)
    ddb.create_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.update_time_to_live(
        TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
    return TABLE


@pytest.fixture
def ledger(settings: Settings, factory: ClientFactory, clock: FakeClock, table: str) -> Ledger:
    return Ledger(settings, factory, clock)


@pytest.fixture
def notifier(settings: Settings, factory: ClientFactory, clock: FakeClock) -> Notifier:
    return Notifier(settings, factory, clock)  # no TOPIC_ARN: notifications are only logged (and kept)


class Steps:
    """Counting steps: how often each ran, and the (idempotent) effects they left."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.effects: set[str] = set()
        self._lock = threading.Lock()

    def record(self, ctx: StepContext, name: str) -> None:
        with self._lock:
            self.calls[name] += 1
            self.effects.add(f"{ctx.execution_id}:{name}")

    def done(self, name: str) -> Callable[[StepContext], Done]:
        def action(ctx: StepContext) -> Done:
            self.record(ctx, name)
            return Done(output={f"{name}_done": True}, note=f"{name} ok")

        return action

    def crash_once_after_effect(self, name: str) -> Callable[[StepContext], Done]:
        crashed = threading.Event()

        def action(ctx: StepContext) -> Done:
            self.record(ctx, name)
            if not crashed.is_set():
                crashed.set()
                raise Crash(f"killed inside {name} after its side effect")
            return Done(output={f"{name}_done": True}, note=f"{name} ok")

        return action


NAMES = ("a", "b", "c")


def linear(steps: Steps, names: tuple[str, ...] = NAMES, kind: Any = "drill") -> Workflow:
    return Workflow(kind, tuple(State(n, steps.done(n), retry=NO_RETRY) for n in names))


def create(ledger: Ledger, workflow: Workflow, execution_id: str = "drill-t1", **kwargs: Any) -> Execution:
    return ledger.create(execution_id, kind=workflow.kind, workflow=workflow.kind, state=workflow.first,
                         status=kwargs.pop("status", "running"), **kwargs)


def run(
    execution_id: str,
    workflow: Workflow,
    settings: Settings,
    factory: ClientFactory,
    clock: FakeClock,
    notifier: Notifier,
    owner: str = "runner-1",
    **kwargs: Any,
) -> AdvanceResult:
    return advance(execution_id, workflow=workflow, settings=settings, clients=factory, clock=clock,
                   notifier=notifier, owner=owner, deadline=kwargs.pop("deadline", None), **kwargs)


def all_items(factory: ClientFactory) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in factory.client("dynamodb", RECOVERY).get_paginator("scan").paginate(TableName=TABLE):
        items.extend(page["Items"])
    return items


def summary(execution: Execution) -> dict[str, Any]:
    """What must be the same whatever crashes happened on the way."""
    return {
        "status": execution.status,
        "state": execution.state,
        "history": [(h["name"], h["outcome"]) for h in execution.history],
        "data": execution.data,
    }


# ---------------------------------------------------------------------------------------- basics


def test_runs_to_success_and_records_every_transition(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    steps = Steps()
    flow = linear(steps)
    create(ledger, flow, data={"drill_id": "t1"})

    result = run("drill-t1", flow, settings, factory, clock, notifier)

    assert (result.outcome, result.status, result.steps_run) == ("ended", "succeeded", 3)
    final = ledger.load("drill-t1")
    assert final.status == "succeeded"
    assert final.seq == 3
    assert [(h["name"], h["outcome"], h["attempts"]) for h in final.history] == [
        ("a", "succeeded", 1), ("b", "succeeded", 1), ("c", "succeeded", 1)]
    assert final.history[0]["started_at"] == isoformat(T0)
    assert final.data == {"drill_id": "t1", "a_done": True, "b_done": True, "c_done": True}
    assert final.claim is None
    assert final.item["expires_at"] > int(T0.timestamp())
    assert steps.calls == Counter({"a": 1, "b": 1, "c": 1})
    # Only the start is announced by the engine; a success is the notify step's, a failure the engine's.
    assert [(m.kind, m.key) for m in notifier.messages] == [("started", "drill-t1#started")]


def test_a_duplicate_invocation_after_the_end_runs_nothing(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    steps = Steps()
    flow = linear(steps)
    create(ledger, flow)
    run("drill-t1", flow, settings, factory, clock, notifier)

    again = run("drill-t1", flow, settings, factory, clock, notifier, owner="duplicate")

    assert (again.outcome, again.status, again.steps_run) == ("ended", "succeeded", 0)
    assert steps.calls == Counter({"a": 1, "b": 1, "c": 1})


def test_step_outputs_of_every_json_type_round_trip_through_the_ledger(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    value = {"float": 12.5, "int": 7, "neg": -3, "text": "x", "empty": "", "none": None, "flag": False,
             "list": [1, 2.25, "three", {"four": 4}], "nested": {"deep": {"er": [True]}},
             "when": T0}

    def produce(ctx: StepContext) -> Done:
        return Done(output={"value": value})

    flow = Workflow("drill", (State("produce", produce),))
    create(ledger, flow)
    run("drill-t1", flow, settings, factory, clock, notifier)

    stored = ledger.load("drill-t1").data["value"]
    assert stored == {**value, "when": isoformat(T0)}


def test_a_report_in_the_output_is_stored_as_the_report_attribute(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    def write_report(ctx: StepContext) -> Done:
        return Done(output={"report": {"outcome": "succeeded", "rto_seconds": 61.5}, "report_key": "k"})

    flow = Workflow("drill", (State("write_report", write_report),))
    create(ledger, flow)
    run("drill-t1", flow, settings, factory, clock, notifier)

    final = ledger.load("drill-t1")
    assert final.item["report"] == {"outcome": "succeeded", "rto_seconds": 61.5}
    assert final.data == {"report_key": "k"}


def test_progress_is_reported_per_state_and_a_broken_view_does_not_stop_the_run(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    seen: list[Progress] = []

    def view(event: Progress) -> None:
        seen.append(event)
        raise RuntimeError("terminal went away")

    steps = Steps()
    flow = linear(steps)
    create(ledger, flow)
    result = run("drill-t1", flow, settings, factory, clock, notifier, on_progress=view)

    assert result.status == "succeeded"
    assert [(p.kind, p.state) for p in seen] == [
        ("state-started", "a"), ("state-ended", "a"), ("state-started", "b"), ("state-ended", "b"),
        ("state-started", "c"), ("state-ended", "c"), ("execution-ended", "c")]


# ---------------------------------------------------------------------------------------- exactly once


def test_every_step_invoked_twice_concurrently_runs_once(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    """A second invocation arrives while each step is running: it must leave without running it."""
    steps = Steps()
    inside = threading.Event()
    release = threading.Event()

    def blocking(name: str) -> Callable[[StepContext], Done]:
        def action(ctx: StepContext) -> Done:
            steps.record(ctx, name)
            inside.set()
            assert release.wait(10), "test did not release the step"
            return Done(output={f"{name}_done": True})

        return action

    flow = Workflow("drill", tuple(State(n, blocking(n)) for n in NAMES))
    create(ledger, flow)
    duplicates: list[AdvanceResult] = []
    for _ in NAMES:
        inside.clear()
        release.clear()
        first: list[AdvanceResult] = []

        def invoke_first(into: list[AdvanceResult] = first) -> None:
            into.append(run("drill-t1", flow, settings, factory, clock, notifier, owner="first", max_steps=1))

        thread = threading.Thread(target=invoke_first)
        thread.start()
        assert inside.wait(10)
        duplicates.append(run("drill-t1", flow, settings, factory, clock, notifier, owner="second",
                              max_steps=1))
        release.set()
        thread.join(10)
        assert first and first[0].steps_run == 1

    assert [d.outcome for d in duplicates] == ["busy", "busy", "busy"]
    assert all(d.steps_run == 0 for d in duplicates)
    assert steps.calls == Counter({"a": 1, "b": 1, "c": 1})
    final = ledger.load("drill-t1")
    assert final.status == "succeeded"
    assert [h["name"] for h in final.history] == list(NAMES)


def test_many_concurrent_runners_run_each_step_once(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    steps = Steps()
    flow = linear(steps, names=("a", "b", "c", "d", "e"))
    create(ledger, flow)
    barrier = threading.Barrier(8)
    results: list[AdvanceResult] = []
    lock = threading.Lock()

    def invoke(index: int) -> None:
        barrier.wait()
        result = run("drill-t1", flow, settings, factory, clock, notifier, owner=f"runner-{index}")
        with lock:
            results.append(result)

    threads = [threading.Thread(target=invoke, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(results) == 8
    assert sum(r.steps_run for r in results) == 5
    assert steps.calls == Counter({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1})
    assert [h["name"] for h in ledger.load("drill-t1").history] == ["a", "b", "c", "d", "e"]


def test_a_stale_runner_cannot_record_over_the_runner_that_took_over(
    ledger: Ledger, clock: FakeClock
) -> None:
    flow = linear(Steps())
    create(ledger, flow)
    stale = ledger.claim("drill-t1", "stale", T0 + timedelta(seconds=60))
    clock.advance(61)
    fresh = ledger.claim("drill-t1", "fresh", clock.now() + timedelta(seconds=60))
    change = Transition(state="b", status="running", attempt=1, state_started_at=clock.now(),
                        next_check_at=clock.now(), data={})

    with pytest.raises(ClaimLost, match="fresh holds it"):
        ledger.transition(stale, "stale", change)
    assert ledger.transition(fresh, "fresh", change).state == "b"
    with pytest.raises(ClaimLost, match="moved on"):  # same owner, old seq: a replayed write
        ledger.transition(fresh, "fresh", change)


# ---------------------------------------------------------------------------------------- crashes


@pytest.mark.parametrize("crash_at", NAMES)
def test_a_crash_inside_a_step_after_its_effect_resumes_to_the_same_end_state(
    crash_at: str,
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier,
) -> None:
    clean_steps = Steps()
    clean_flow = linear(clean_steps)
    create(ledger, clean_flow, "drill-clean")
    run("drill-clean", clean_flow, settings, factory, clock, notifier)
    clean = ledger.load("drill-clean")

    steps = Steps()
    flow = Workflow("drill", tuple(
        State(n, steps.crash_once_after_effect(n) if n == crash_at else steps.done(n), retry=NO_RETRY)
        for n in NAMES))
    create(ledger, flow, "drill-crash")
    with pytest.raises(Crash):
        run("drill-crash", flow, settings, factory, clock, notifier, owner="dead-lambda")

    # Until the dead runner's claim expires nobody else may run the step it was in.
    assert run("drill-crash", flow, settings, factory, clock, notifier, owner="next").outcome == "busy"
    clock.advance(901)
    resumed = run("drill-crash", flow, settings, factory, clock, notifier, owner="next")

    assert resumed.status == "succeeded"
    assert summary(ledger.load("drill-crash")) == summary(clean)
    assert {e.split(":")[1] for e in steps.effects} == {e.split(":")[1] for e in clean_steps.effects}
    assert steps.calls == Counter({n: 2 if n == crash_at else 1 for n in NAMES})


@pytest.mark.parametrize("crash_on_write", [1, 2, 3])
def test_a_kill_between_the_effect_and_the_ledger_write_resumes_to_the_same_end_state(
    crash_on_write: int,
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier,
) -> None:
    clean_steps = Steps()
    clean_flow = linear(clean_steps)
    create(ledger, clean_flow, "drill-clean")
    run("drill-clean", clean_flow, settings, factory, clock, notifier)
    clean = ledger.load("drill-clean")

    writes = Counter[str]()

    def kill_on_nth_transition(params: dict[str, Any], **_: Any) -> None:
        names = set(params.get("ExpressionAttributeNames", {}).values())
        if params["Key"]["pk"]["S"] == "exec#drill-crash" and "history" in names:
            writes["transitions"] += 1
            if writes["transitions"] == crash_on_write:
                raise Crash("killed between the step's effect and its ledger write")

    factory.register_hook("before-parameter-build.dynamodb.UpdateItem", kill_on_nth_transition)
    steps = Steps()
    flow = linear(steps)
    create(ledger, flow, "drill-crash")
    with pytest.raises(Crash):
        run("drill-crash", flow, settings, factory, clock, notifier, owner="dead-lambda")
    clock.advance(901)
    resumed = run("drill-crash", flow, settings, factory, clock, notifier, owner="next")

    assert resumed.status == "succeeded"
    assert summary(ledger.load("drill-crash")) == summary(clean)
    crashed_step = NAMES[crash_on_write - 1]
    assert steps.calls == Counter({n: 2 if n == crashed_step else 1 for n in NAMES})


# ---------------------------------------------------------------------------------------- failures


def test_retries_exhausted_take_the_catch_path_and_end_failed(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    steps = Steps()

    def flaky(ctx: StepContext) -> Done:
        steps.record(ctx, "flaky")
        raise StepError(f"boom on attempt {ctx.attempt}", code="Boom")

    flow = Workflow("recovery", (
        State("a", steps.done("a")),
        State("flaky", flaky, retry=RetryPolicy(errors=("Boom",), max_attempts=3, interval_seconds=2,
                                                backoff_rate=2), catch="cleanup"),
        State("b", steps.done("b")),
        State("cleanup", steps.done("cleanup")),
        State("report", steps.done("report")),
    ))
    create(ledger, flow, "rec-inc1")

    result = run("rec-inc1", flow, settings, factory, clock, notifier)

    assert (result.outcome, result.status) == ("ended", "failed")
    assert clock.slept == [2.0, 4.0]
    assert steps.calls == Counter({"a": 1, "flaky": 3, "cleanup": 1, "report": 1})
    final = ledger.load("rec-inc1")
    assert [(h["name"], h["outcome"], h["attempts"]) for h in final.history] == [
        ("a", "succeeded", 1), ("flaky", "failed", 3), ("b", "skipped", 0),
        ("cleanup", "succeeded", 1), ("report", "succeeded", 1)]
    assert final.failed_state == "flaky"
    assert final.error == "Boom: boom on attempt 3"
    assert final.data["failed"] is True
    assert final.data["failed_state"] == "flaky"
    [(subject, body)] = [(m.subject, m.body) for m in notifier.messages if m.kind == "failed"]
    assert [m.kind for m in notifier.messages] == ["started", "failed"]
    assert "rec-inc1 FAILED at flaky" in subject
    assert "jams-dr recover --retry rec-inc1" in body
    assert "jams-dr recover --rollback rec-inc1" in body


def test_an_error_the_policy_does_not_name_is_not_retried(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    calls = Counter[str]()

    def fatal(ctx: StepContext) -> Done:
        calls["fatal"] += 1
        raise StepError("the pinned copy is missing", code="PinnedCopyMissing")

    flow = Workflow("drill", (
        State("fatal", fatal, retry=RetryPolicy(errors=("Throttling",), max_attempts=5), catch="teardown"),
        State("teardown", lambda ctx: Done()),
    ))
    create(ledger, flow)
    result = run("drill-t1", flow, settings, factory, clock, notifier)

    assert result.status == "failed"
    assert calls["fatal"] == 1
    assert clock.slept == []
    assert ledger.load("drill-t1").error == "PinnedCopyMissing: the pinned copy is missing"


def test_a_failure_without_catch_ends_the_execution_at_once(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    steps = Steps()

    def broken(ctx: StepContext) -> Done:
        raise KeyError("DatabaseInstanceId")

    flow = Workflow("drill", (State("a", steps.done("a")), State("broken", broken),
                              State("c", steps.done("c"))))
    create(ledger, flow)
    result = run("drill-t1", flow, settings, factory, clock, notifier)

    final = ledger.load("drill-t1")
    assert (result.status, final.state, final.failed_state) == ("failed", "broken", "broken")
    assert final.error == "KeyError: 'DatabaseInstanceId'"
    assert steps.calls == Counter({"a": 1})
    assert [(h["name"], h["outcome"]) for h in final.history] == [("a", "succeeded"), ("broken", "failed")]
    assert [m.kind for m in notifier.messages] == ["started", "failed"]


def test_not_ready_waits_on_the_clock_without_counting_attempts(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    polls = Counter[str]()

    def wait_for_stack(ctx: StepContext) -> Done | NotReady:
        polls["wait"] += 1
        if polls["wait"] < 3:
            return NotReady(60, note="CREATE_IN_PROGRESS", output={"polls": polls["wait"]})
        return Done(note="CREATE_COMPLETE")

    flow = Workflow("drill", (State("wait_for_stack", wait_for_stack, timeout_seconds=3600),))
    create(ledger, flow)
    result = run("drill-t1", flow, settings, factory, clock, notifier)

    assert result.status == "succeeded"
    assert clock.slept == [60.0, 60.0]
    [entry] = ledger.load("drill-t1").history
    assert entry["attempts"] == 1
    assert entry["started_at"] == isoformat(T0)
    assert entry["ended_at"] == isoformat(T0 + timedelta(seconds=120))
    assert ledger.load("drill-t1").data["polls"] == 2


def test_a_not_ready_state_past_its_timeout_fails_with_state_timeout(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    def never_ready(ctx: StepContext) -> NotReady:
        return NotReady(120, note="still CREATE_IN_PROGRESS")

    flow = Workflow("drill", (
        State("wait_for_stack", never_ready, timeout_seconds=300, catch="teardown"),
        State("verify", lambda ctx: Done()),
        State("teardown", lambda ctx: Done(note="deleted")),
    ))
    create(ledger, flow)
    result = run("drill-t1", flow, settings, factory, clock, notifier)

    final = ledger.load("drill-t1")
    assert result.status == "failed"
    # Polls at 0, 120 and 240 s, then once more exactly at the 300 s limit.
    assert clock.slept == [120.0, 120.0, 60.0]
    assert final.failed_state == "wait_for_stack"
    assert final.error is not None and final.error.startswith("StateTimeout: wait_for_stack")
    assert [(h["name"], h["outcome"]) for h in final.history] == [
        ("wait_for_stack", "failed"), ("verify", "skipped"), ("teardown", "succeeded")]


def test_a_state_the_deployed_workflow_does_not_define_fails_the_execution_clearly(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    old = Workflow("drill", (State("a", lambda ctx: Done()), State("renamed", lambda ctx: Done())))
    new = Workflow("drill", (State("a", lambda ctx: Done()), State("b", lambda ctx: Done())))
    create(ledger, old)
    run("drill-t1", old, settings, factory, clock, notifier, max_steps=1)

    result = run("drill-t1", new, settings, factory, clock, notifier)

    final = ledger.load("drill-t1")
    assert (result.status, final.failed_state) == ("failed", "renamed")
    assert final.error is not None and final.error.startswith("UnknownState: state 'renamed' is not in")


# ---------------------------------------------------------------------------------------- the Lambda chain


def test_lambda_slice_waits_within_its_time_then_invokes_itself(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    polls = Counter[str]()

    def wait(ctx: StepContext) -> Done | NotReady:
        polls["wait"] += 1
        return Done() if polls["wait"] >= 3 else NotReady(40)

    steps = Steps()
    flow = Workflow("drill", (State("a", steps.done("a")), State("wait", wait), State("c", steps.done("c"))))
    create(ledger, flow)
    launched: list[str] = []

    def launcher(execution_id: str) -> bool:
        launched.append(execution_id)
        return True

    def invocation(owner: str) -> Any:
        # 120 s left, 60 s margin: 60 s to work in, so one 40 s wait fits and the second does not.
        return lambda_slice("drill-t1", settings=settings, clients=factory, clock=clock, notifier=notifier,
                            owner=owner, remaining_ms=120_000, margin_seconds=60, launcher=launcher,
                            workflows=lambda name: flow)

    first = invocation("lambda-1")
    assert (first.result.outcome, first.relaunched) == ("resume", True)
    assert launched == ["drill-t1"]
    assert polls["wait"] == 2
    assert ledger.load("drill-t1").claim is None  # released for the next invocation

    second = invocation("lambda-2")
    assert (second.result.outcome, second.result.status, second.relaunched) == ("ended", "succeeded", False)
    assert launched == ["drill-t1"]
    assert steps.calls == Counter({"a": 1, "c": 1})


def test_lambda_slice_leaves_a_far_check_to_the_sweeper(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    flow = Workflow("drill", (State("wait", lambda ctx: NotReady(3600)),))
    create(ledger, flow)
    launched: list[str] = []
    sliced = lambda_slice("drill-t1", settings=settings, clients=factory, clock=clock, notifier=notifier,
                          owner="lambda-1", remaining_ms=900_000, margin_seconds=60,
                          launcher=lambda i: launched.append(i) is None, workflows=lambda name: flow)

    assert (sliced.result.outcome, sliced.relaunched) == ("resume", False)
    assert sliced.result.next_check_at == T0 + timedelta(seconds=3600)
    assert launched == []


def test_lambda_launcher_invokes_the_chain_asynchronously(factory: ClientFactory) -> None:
    calls: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        calls.append(dict(params))

    def fake_invoke(**_: Any) -> tuple[Any, dict[str, Any]]:
        class Http:
            status_code = 202

        return Http(), {"StatusCode": 202}

    factory.register_hook("before-parameter-build.lambda.Invoke", capture)
    factory.register_hook("before-call.lambda.Invoke", fake_invoke)
    launch = starter.lambda_launcher(factory, RECOVERY, "jams-dr-prod-advance_execution")

    assert launch("rec-inc1") is True
    [call] = calls
    assert call["FunctionName"] == "jams-dr-prod-advance_execution"
    assert call["InvocationType"] == "Event"
    assert json.loads(call["Payload"]) == {"execution_id": "rec-inc1"}


def test_a_failed_launch_is_reported_not_raised(embedded: Any, factory: ClientFactory) -> None:
    # moto has no such function: the invoke fails; the sweeper will pick the execution up.
    launch = starter.lambda_launcher(factory, RECOVERY, "jams-dr-prod-advance_execution")
    assert launch("rec-inc1") is False


def test_advance_function_name_comes_from_env_or_this_function() -> None:
    assert starter.advance_function_name("x", {}, configured="custom") == "custom"
    assert starter.advance_function_name("jams-dr-prod-start_drill", {}) == "jams-dr-prod-advance_execution"
    assert starter.advance_function_name(None, {"AWS_LAMBDA_FUNCTION_NAME": "jams-dr-dev-execution_sweeper"}) \
        == "jams-dr-dev-advance_execution"
    assert starter.advance_function_name("start_drill", {}) == "advance_execution"


# ---------------------------------------------------------------------------------------- sweeper


def test_sweeper_resumes_a_lost_invocation_after_its_claim_expires(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    steps = Steps()
    flow = Workflow("drill", (State("a", steps.done("a")), State("b", steps.crash_once_after_effect("b")),
                              State("c", steps.done("c"))))
    create(ledger, flow, "drill-lost")
    # Other executions the sweeper must leave alone: parked for approval, waiting far ahead.
    create(ledger, Workflow("recovery", (State("x", steps.done("x")),)), "rec-parked",
           status="awaiting-approval")
    far = Workflow("drill", (State("w", lambda ctx: NotReady(7200)),))
    create(ledger, far, "drill-far")
    run("drill-far", far, settings, factory, clock, notifier, max_steps=1)

    with pytest.raises(Crash):  # the Lambda died inside b
        run("drill-lost", flow, settings, factory, clock, notifier, owner="lambda-dead",
            deadline=T0 + timedelta(seconds=840), claim_seconds=90)
    order: list[str] = []

    def launcher(execution_id: str) -> bool:
        order.append(f"launch {execution_id}")
        lambda_slice(execution_id, settings=settings, clients=factory, clock=clock, notifier=notifier,
                     owner="lambda-sweeper", remaining_ms=900_000, margin_seconds=60,
                     launcher=lambda i: False, workflows=lambda name: flow)
        return True

    def enforcer(*_: Any) -> list[str]:
        order.append("fence")
        return []

    early = sweep(settings, factory, clock, launcher, fence_enforcer=enforcer)
    assert early.launched == []
    assert "drill-lost" in early.skipped  # its invocation may still be alive

    clock.advance(840 + 90 + 1)
    late = sweep(settings, factory, clock, launcher, fence_enforcer=enforcer)

    assert late.launched == ["drill-lost"]
    assert order == ["fence", "fence", "launch drill-lost"]
    assert ledger.load("drill-lost").status == "succeeded"
    assert ledger.load("rec-parked").status == "awaiting-approval"
    assert steps.calls == Counter({"a": 1, "b": 2, "c": 1})


def test_sweeper_still_resumes_when_the_fence_cannot_be_enforced(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock
) -> None:
    create(ledger, linear(Steps()))
    launched: list[str] = []

    def enforcer(*_: Any) -> list[str]:
        raise ConnectionError("us-east-1 still down")

    result = sweep(settings, factory, clock, lambda i: launched.append(i) is None, fence_enforcer=enforcer)

    assert launched == ["drill-t1"]
    assert result.fence_error is not None and "us-east-1 still down" in result.fence_error


# ---------------------------------------------------------------------------------------- lease


def test_lease_admits_one_holder_and_bumps_the_epoch_per_take(ledger: Ledger) -> None:
    first = ledger.take_lease("rec-inc1", "recovery")
    assert (first.holder, first.epoch) == ("rec-inc1", 1)
    assert ledger.take_lease("rec-inc1", "recovery").epoch == 1  # a re-run step: same epoch

    with pytest.raises(LeaseHeld, match="rec-inc1 holds it") as held:
        ledger.take_lease("rec-inc2", "recovery")
    assert "jams-dr recover --rollback rec-inc1" in str(held.value)
    # A drill has its own lease: never blocked by, never blocking, a recovery.
    assert ledger.take_lease("drill-x", "drill").epoch == 1

    assert ledger.release_lease("rec-inc2", "recovery") is False
    assert ledger.release_lease("rec-inc1", "recovery") is True
    second = ledger.take_lease("fb-1", "failback")
    assert (second.holder, second.epoch) == ("fb-1", 2)


def test_concurrent_lease_takes_have_one_winner(ledger: Ledger) -> None:
    barrier = threading.Barrier(10)
    winners: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def take(index: int) -> None:
        barrier.wait()
        try:
            ledger.take_lease(f"rec-{index}", "recovery")
        except LeaseHeld:
            with lock:
                refused.append(f"rec-{index}")
        else:
            with lock:
                winners.append(f"rec-{index}")

    threads = [threading.Thread(target=take, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(winners) == 1
    assert len(refused) == 9
    lease = ledger.get_lease("recovery")
    assert lease is not None and (lease.holder, lease.epoch) == (winners[0], 1)


def test_a_second_recovery_is_refused_while_the_lease_is_held(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    def take_lease(ctx: StepContext) -> Done:
        lease = Ledger(ctx.settings, ctx.clients, ctx.clock).take_lease(ctx.execution_id, ctx.kind)
        return Done(output={"epoch": lease.epoch})

    flow = Workflow("recovery", (State("take_lease", take_lease), State("work", lambda ctx: Done())))
    workflows = {"recovery": flow}.__getitem__
    starter.start_incident_recovery(settings, factory, clock, _incident("inc1"), await_approval=False,
                                    launcher=starter.no_launch, workflows=workflows)
    run("rec-inc1", flow, settings, factory, clock, notifier)

    # A manual start is refused before anything is written ...
    before = len(all_items(factory))
    with pytest.raises(starter.StartError, match="held by rec-inc1"):
        starter.start_recovery(settings, factory, clock, reason="second try", incident_id="inc2",
                               launcher=starter.no_launch, workflows=workflows)
    assert len(all_items(factory)) == before
    # ... and one started by detection fails at take_lease without touching anything.
    starter.start_incident_recovery(settings, factory, clock, _incident("inc3"), await_approval=False,
                                    launcher=starter.no_launch, workflows=workflows)
    result = run("rec-inc3", flow, settings, factory, clock, notifier)
    third = ledger.load("rec-inc3")
    assert (result.status, third.failed_state) == ("failed", "take_lease")
    assert third.error is not None and "LeaseHeld" in third.error and "rec-inc1 holds it" in third.error
    lease = ledger.get_lease("recovery")
    assert lease is not None and (lease.holder, lease.epoch) == ("rec-inc1", 1)


# ---------------------------------------------------------------------------------------- starts


def _incident(incident_id: str) -> Incident:
    return Incident(incident_id=incident_id, decision="region-recovery", reason="both schedulers silent",
                    failure_at=T0 - timedelta(minutes=5), detected_at=T0 - timedelta(minutes=2), decided_at=T0)


def test_ten_concurrent_starts_for_one_incident_make_one_execution(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock
) -> None:
    flow = linear(Steps(), kind="recovery")
    launched: list[str] = []
    lock = threading.Lock()

    def launcher(execution_id: str) -> bool:
        with lock:
            launched.append(execution_id)
        return True

    start = starter.recovery_starter(settings, factory, clock, launcher, workflows=lambda name: flow)
    barrier = threading.Barrier(10)
    ids: list[str] = []

    def trigger() -> None:
        barrier.wait()
        execution_id = start(_incident("inc-42"), await_approval=False)
        with lock:
            ids.append(execution_id)

    threads = [threading.Thread(target=trigger) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert ids == ["rec-inc-42"] * 10
    assert launched == ["rec-inc-42"]
    # Besides the execution, only the environment's active slot, which it holds.
    items = {i["pk"]["S"]: i for i in all_items(factory)}
    assert sorted(items) == ["active#jams-test", "exec#rec-inc-42"]
    assert items["active#jams-test"]["holder"] == {"S": "rec-inc-42"}
    stored = ledger.load("rec-inc-42")
    assert stored.incident is not None and stored.incident["failure_at"] == isoformat(T0 - timedelta(minutes=5))


def test_approve_flow(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    steps = Steps()
    flow = linear(steps, kind="recovery")
    runner = InProcessRunner(settings, factory, clock, notifier, workflows=lambda name: flow)
    launched: list[str] = []

    def launcher(execution_id: str) -> bool:
        launched.append(execution_id)
        runner.run(execution_id)
        return True

    start = starter.recovery_starter(settings, factory, clock, launcher, workflows=lambda name: flow)
    execution_id = start(_incident("inc7"), await_approval=True)

    assert execution_id == "rec-inc7"
    assert launched == []
    parked = runner.run(execution_id)  # a stray runner must not start it before approval
    assert parked.status == "awaiting-approval"
    assert steps.calls == Counter()

    clock.advance(600)
    approved = starter.approve(settings, factory, clock, execution_id, approved_by="on-call",
                               launcher=launcher)

    assert (approved.status, approved.launched) == ("running", True)
    final = ledger.load(execution_id)
    assert final.status == "succeeded"
    assert final.item["approved_by"] == "on-call"
    assert final.started_at == T0 + timedelta(seconds=600)
    assert steps.calls == Counter({"a": 1, "b": 1, "c": 1})
    with pytest.raises(starter.StartError, match="is succeeded, not awaiting-approval") as twice:
        starter.approve(settings, factory, clock, execution_id, launcher=launcher)
    assert isinstance(twice.value.__cause__, StatusConflict)
    with pytest.raises(starter.StartError, match="no execution 'rec-nope'") as unknown:
        starter.approve(settings, factory, clock, "rec-nope", launcher=launcher)
    assert isinstance(unknown.value.__cause__, ExecutionNotFound)
    assert launched == [execution_id]


def test_retry_reruns_a_failed_execution_from_the_failed_state(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    steps = Steps()
    broken = threading.Event()
    broken.set()

    def flaky(ctx: StepContext) -> Done:
        steps.record(ctx, "flaky")
        if broken.is_set():
            raise StepError("stack ROLLBACK_COMPLETE", code="StackFailed")
        return Done()

    flow = Workflow("drill", (State("a", steps.done("a")), State("flaky", flaky, retry=NO_RETRY),
                              State("c", steps.done("c"))))
    create(ledger, flow)
    run("drill-t1", flow, settings, factory, clock, notifier)
    assert ledger.load("drill-t1").status == "failed"

    broken.clear()
    runner = InProcessRunner(settings, factory, clock, notifier, workflows=lambda name: flow)
    started = starter.retry(settings, factory, clock, "drill-t1", launcher=lambda i: runner.run(i) is not None)

    final = ledger.load("drill-t1")
    assert (started.status, final.status) == ("running", "succeeded")
    assert steps.calls == Counter({"a": 1, "flaky": 2, "c": 1})
    assert final.failed_state is None and final.error is None
    assert final.data.get("failed") is False
    assert final.item["previous_failures"][0]["state"] == "flaky"
    assert [(h["name"], h["outcome"]) for h in final.history] == [
        ("a", "succeeded"), ("flaky", "failed"), ("flaky", "succeeded"), ("c", "succeeded")]
    with pytest.raises(starter.StartError, match="only a failed execution can be retried"):
        starter.retry(settings, factory, clock, "drill-t1", launcher=starter.no_launch)


def test_rollback_replaces_a_failed_recovery_once(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    def fail(ctx: StepContext) -> Done:
        raise StepError("stack CREATE_FAILED", code="StackFailed")

    recovery = Workflow("recovery", (State("create", lambda ctx: Done(output={"stack_name": "jams-test-app",
                                                                              "epoch": 3})),
                                     State("wait", fail, retry=NO_RETRY)))
    cleanup = Workflow("recovery", (State("delete_stack", lambda ctx: Done()),
                                    State("release_lease", lambda ctx: Done())))
    workflows = {"recovery": recovery, "rollback": cleanup}.__getitem__
    starter.start_incident_recovery(settings, factory, clock, _incident("inc9"), await_approval=False,
                                    launcher=starter.no_launch, workflows=workflows)
    run("rec-inc9", recovery, settings, factory, clock, notifier)

    started = starter.rollback(settings, factory, clock, "rec-inc9", launcher=starter.no_launch,
                               workflows=workflows)

    assert (started.execution_id, started.created, started.status) == ("rb-rec-inc9", True, "running")
    rollback = ledger.load("rb-rec-inc9")
    assert (rollback.workflow, rollback.kind, rollback.state) == ("rollback", "recovery", "delete_stack")
    assert rollback.data == {"reason": "both schedulers silent", "stack_name": "jams-test-app", "epoch": 3,
                             "rollback_of": "rec-inc9",
                             "requested_by": "operator", "requested_at": isoformat(T0)}
    assert rollback.incident is not None and rollback.incident["incident_id"] == "inc9"
    original = ledger.load("rec-inc9")
    assert (original.status, original.item["replaced_by"]) == ("cancelled", "rb-rec-inc9")
    again = starter.rollback(settings, factory, clock, "rec-inc9", launcher=starter.no_launch,
                             workflows=workflows)
    assert (again.execution_id, again.created) == ("rb-rec-inc9", False)
    with pytest.raises(starter.StartError, match="is cancelled"):  # no retry once rolled back
        starter.retry(settings, factory, clock, "rec-inc9", launcher=starter.no_launch)
    result = run("rb-rec-inc9", cleanup, settings, factory, clock, notifier)
    assert result.status == "succeeded"


def test_rollback_is_refused_for_anything_but_a_failed_recovery(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    flow = Workflow("recovery", (State("a", lambda ctx: Done()),))

    def no_rollback(name: str) -> Workflow:
        if name == "rollback":
            raise UnknownWorkflow("workflow 'rollback' is not defined")
        return flow

    starter.start_incident_recovery(settings, factory, clock, _incident("ok1"), await_approval=False,
                                    launcher=starter.no_launch, workflows=no_rollback)
    with pytest.raises(starter.StartError, match="is running; only a failed recovery"):
        starter.rollback(settings, factory, clock, "rec-ok1", launcher=starter.no_launch, workflows=no_rollback)
    drill = create(ledger, linear(Steps()))
    with pytest.raises(starter.StartError, match="is a drill execution"):
        starter.rollback(settings, factory, clock, drill.execution_id, launcher=starter.no_launch)

    def fail(ctx: StepContext) -> Done:
        raise StepError("stack CREATE_FAILED")

    failing = Workflow("recovery", (State("a", fail),))
    run("rec-ok1", flow, settings, factory, clock, notifier)  # ended: the next recovery is not joined to it
    starter.start_incident_recovery(settings, factory, clock, _incident("bad1"), await_approval=False,
                                    launcher=starter.no_launch, workflows=lambda name: failing)
    run("rec-bad1", failing, settings, factory, clock, notifier)
    with pytest.raises(starter.StartError, match="roll back by hand: delete the stack jams-test-app"):
        starter.rollback(settings, factory, clock, "rec-bad1", launcher=starter.no_launch, workflows=no_rollback)
    assert ledger.get("rb-rec-bad1") is None
    assert ledger.load("rec-bad1").status == "failed"


def test_drill_and_failback_starts(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock, notifier: Notifier
) -> None:
    flows = {"drill": linear(Steps()), "failback": linear(Steps(), kind="failback"),
             "recovery": linear(Steps(), kind="recovery")}
    drill = starter.start_drill(settings, factory, clock, launcher=starter.no_launch, workflows=flows.__getitem__)
    assert drill.created and drill.execution_id.startswith("drill-") and len(drill.execution_id) == 14
    stored = ledger.load(drill.execution_id)
    drill_id = drill.execution_id.removeprefix("drill-")
    assert stored.data == {"drill_id": drill_id, "stack_name": f"jams-test-drill-{drill_id}"}
    named = starter.start_drill(settings, factory, clock, "game-day-1", launcher=starter.no_launch,
                                workflows=flows.__getitem__)
    again = starter.start_drill(settings, factory, clock, "game-day-1", launcher=starter.no_launch,
                                workflows=flows.__getitem__)
    assert (named.execution_id, named.created, again.created) == ("drill-game-day-1", True, False)

    failback = starter.start_failback(settings, factory, clock, reason="primary healthy",
                                      launcher=starter.no_launch, workflows=flows.__getitem__)
    assert failback.execution_id == "fb-20260301T120000Z"
    with pytest.raises(starter.StartError, match="failback fb-20260301T120000Z is running"):
        starter.start_failback(settings, factory, clock, launcher=starter.no_launch, workflows=flows.__getitem__)


def test_bad_manual_input_creates_nothing(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock
) -> None:
    flows = {"drill": linear(Steps()), "recovery": linear(Steps(), kind="recovery")}.__getitem__
    with pytest.raises(starter.StartError, match="drill_id 'Game Day' is not valid"):
        starter.start_drill(settings, factory, clock, "Game Day", launcher=starter.no_launch, workflows=flows)
    with pytest.raises(starter.StartError, match="incident_id 'two words'"):
        starter.start_incident_recovery(settings, factory, clock, _incident("two words"), await_approval=False,
                                        launcher=starter.no_launch, workflows=flows)
    with pytest.raises(starter.StartError, match="no execution 'drill-nothing'"):
        starter.retry(settings, factory, clock, "drill-nothing", launcher=starter.no_launch)
    with pytest.raises(UnknownWorkflow, match="known workflows"):
        starter.start_drill(settings, factory, clock, "x1", launcher=starter.no_launch,
                            workflows=_unknown)

    assert all_items(factory) == []


def _unknown(name: str) -> Workflow:
    from chalicelib.workflow.registry import workflow_for

    return workflow_for(f"no-such-{name}")


def test_creating_an_existing_execution_reports_it(ledger: Ledger) -> None:
    flow = linear(Steps())
    create(ledger, flow)
    with pytest.raises(ExecutionExists, match="'drill-t1' already exists") as exists:
        create(ledger, flow)
    assert exists.value.existing.status == "running"


def test_pending_fence_keeps_the_newest_epoch(ledger: Ledger) -> None:
    assert ledger.get_fence() is None
    assert ledger.put_fence("rec-inc1", 2, "us-east-1", ["i-2", "i-1"]) is True
    assert ledger.put_fence("rec-old", 1, "us-east-1", ["i-9"]) is False
    fence = ledger.get_fence()
    assert fence is not None
    assert (fence.execution_id, fence.epoch, fence.instance_ids) == ("rec-inc1", 2, ("i-1", "i-2"))
    assert ledger.clear_fence(1) is False
    assert ledger.clear_fence(2) is True
    assert ledger.get_fence() is None


def test_list_active_pages_and_filters_by_environment_and_status(
    ledger: Ledger, settings: Settings, factory: ClientFactory, clock: FakeClock
) -> None:
    flow = linear(Steps())
    for index in range(40):
        create(ledger, flow, f"drill-{index:02d}", data={"padding": "x" * 30_000})
        clock.advance(1)
    other = Ledger(Settings.defaults(environment="other-env", ledger_table=TABLE), factory, clock)
    other.create("drill-other", kind="drill", workflow="drill", state="a", status="running")
    ledger.take_lease("drill-00", "drill")  # not an execution: never listed

    pages: list[int] = []
    factory.register_hook("after-call.dynamodb.Scan",
                          lambda parsed, **_: pages.append(len(parsed.get("Items", []))))
    active = ledger.list_active()

    assert len(pages) > 1  # 40 items of 30 kB exceed one 1 MB scan page
    assert [e.execution_id for e in active] == [f"drill-{i:02d}" for i in reversed(range(40))]
