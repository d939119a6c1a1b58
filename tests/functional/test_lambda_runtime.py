"""The embedded Lambda runtime (jamsdr/lambda_runtime.py) against the embedded AWS.

One world for the module: the drill's world (jamsdr/embedded.py build_world), ``chalice package`` of the
drill stage, deployed once. Tests that need another compression of time set ``time_scale`` for their
duration (``_scaled``). Waits poll for what must happen, up to a deadline; where a test asserts that
something does NOT happen, it waits for a later event that must come after it (a sentinel) rather than for
a fixed time, except where noted.

AWS behaviour (sources):
- async retries: "If the function returns an error, Lambda attempts to run it two more times, with a
  one-minute wait between the first two attempts, and two minutes between the second and third"
  (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html);
- sync Invoke of a function error: X-Amz-Function-Error "Unhandled"; async Invoke: 202; a throttled
  Invoke: TooManyRequestsException, HTTP 429 (https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html);
- reserved concurrency (https://docs.aws.amazon.com/lambda/latest/dg/configuration-concurrency.html);
- a disabled rule delivers nothing (https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_DisableRule.html).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib.aws import ClientFactory, set_factory
from chalicelib.clock import SystemClock
from chalicelib.settings import Settings
from jamsdr import chalice_package as cp
from jamsdr import lambda_runtime as lr
from jamsdr.drill import drill_settings
from jamsdr.embedded import EmbeddedAws, build_world
from jamsdr.iam_enforcement import Enforcer
from jamsdr.scenario import Scenario

pytestmark = [
    pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning:aws_lambda_powertools.*"),
]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"
STAGE = "drill"
HANDLERS = {"advance_execution", "start_drill", "start_recovery", "approve_recovery", "start_failback",
            "retry_execution", "rollback_execution", "heartbeat_watcher", "health_event", "alarm_event",
            "rds_event", "snapshot_tick", "execution_sweeper"}
SCHEDULES = {"heartbeat_watcher": "rate(1 minute)", "snapshot_tick": "rate(5 minutes)",
             "execution_sweeper": "rate(5 minutes)"}
PATTERNS = {
    "health_event": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
    "alarm_event": {"source": ["aws.cloudwatch"], "detail-type": ["CloudWatch Alarm State Change"]},
    "rds_event": {"source": ["aws.rds"], "detail-type": ["RDS DB Instance Event"]},
}
# Real seconds per production second outside the tests that set their own: a 900 s timeout lasts 9 s,
# far above any handler's run here, so no test times out by accident.
DEFAULT_SCALE = 0.01
ADMIN_KEY = "testing"  # jamsdr/embedded.py's session credentials


@dataclasses.dataclass
class World:
    aws: EmbeddedAws
    clients: ClientFactory
    settings: Settings
    pkg: cp.Package
    specs: list[cp.FunctionSpec]
    rt: lr.EmbeddedLambda
    enforcer: Enforcer
    # Invoke events (InvocationType=Event) sent by these tests: every DUPLICATE_EVERY-th is delivered twice.
    invoke_events: int = 0

    def name(self, handler: str) -> str:
        return f"jams-dr-{STAGE}-{handler}"

    def spec(self, handler: str) -> cp.FunctionSpec:
        return next(s for s in self.specs if s.handler == handler)

    def client(self, service: str, region: str | None = None) -> Any:
        return self.clients.client(service, region or self.settings.recovery_region)

    def invoke(self, handler: str, payload: Any, *, factory: ClientFactory | None = None) -> dict[str, Any]:
        lam = (factory or self.clients).client("lambda", self.settings.recovery_region)
        answer: dict[str, Any] = dict(lam.invoke(FunctionName=self.name(handler),
                                                  Payload=json.dumps(payload).encode()))
        answer["Body"] = json.loads(answer["Payload"].read() or b"null")
        return answer

    def invoke_async(self, handler: str, payload: Any) -> dict[str, Any]:
        answer: dict[str, Any] = self.client("lambda").invoke(
            FunctionName=self.name(handler), InvocationType="Event", Payload=json.dumps(payload).encode())
        self.invoke_events += 1
        return answer

    def next_event_is_duplicated(self) -> bool:
        return (self.invoke_events + 1) % lr.DUPLICATE_EVERY == 0

    def since(self, mark: int, handler: str | None = None) -> list[lr.Invocation]:
        found = list(self.rt.invocations[mark:])
        return [i for i in found if handler is None or i.function == handler]

    def scheduled_event(self, handler: str) -> dict[str, Any]:
        return self.rt.scheduled_event(self.name(handler))


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def finished(invocations: list[lr.Invocation]) -> list[lr.Invocation]:
    return [i for i in invocations if i.outcome != "running"]


def fixture_event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return loaded


def put_event(world: World, region: str, event: dict[str, Any]) -> None:
    answer = world.client("events", region).put_events(Entries=[{
        "Source": event["source"], "DetailType": event["detail-type"], "Resources": event.get("resources", []),
        "Detail": json.dumps(event["detail"])}])
    assert answer["FailedEntryCount"] == 0, answer


@contextlib.contextmanager
def _scaled(world: World, time_scale: float) -> Iterator[None]:
    previous = world.rt.time_scale
    world.rt.time_scale = time_scale
    try:
        yield
    finally:
        world.rt.time_scale = previous


@contextlib.contextmanager
def _hook(clients: ClientFactory, event_name: str, handler: Any) -> Iterator[None]:
    clients.register_hook(event_name, handler)
    try:
        yield
    finally:
        clients.unregister_hook(event_name, handler)


@pytest.fixture(scope="module")
def world(moto_server: EmbeddedAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    aws = moto_server
    aws.reset()
    for region in ("us-east-1", "us-west-2"):
        aws.bring_region_up(region)
    assert aws.clients is not None
    set_factory(aws.clients)
    built = build_world(aws.clients, drill_settings(Scenario()))
    settings = built.settings
    enforcer = Enforcer.for_settings(settings)
    pkg = cp.package(settings, enforcer.policies, tmp_path_factory.mktemp("lambda-package"), stage=STAGE)
    runtime = lr.EmbeddedLambda(aws.clients, settings.recovery_region, time_scale=DEFAULT_SCALE, enforcer=enforcer)
    with lr.active(runtime):
        specs = runtime.deploy(pkg)
        runtime.start()
        try:
            yield World(aws, aws.clients, settings, pkg, specs, runtime, enforcer)
        finally:
            runtime.stop(drain_seconds=10)
            enforcer.uninstall()
    set_factory(aws.clients)


# ------------------------------------------------------------------------------------------ deploy


def test_deploy_registers_every_function_with_its_role_and_policy(world: World) -> None:
    assert {s.handler for s in world.specs} == HANDLERS
    lam, iam = world.client("lambda"), world.client("iam")
    generated = Enforcer.for_settings(world.settings).policies
    deployed = {f["FunctionName"]: f for page in lam.get_paginator("list_functions").paginate()
                for f in page["Functions"] if f["FunctionName"].startswith(f"jams-dr-{STAGE}-")}
    assert set(deployed) == {world.name(h) for h in HANDLERS}
    for handler in HANDLERS:
        name = world.name(handler)
        role = iam.get_role(RoleName=name)["Role"]
        assert deployed[name]["Role"] == role["Arn"]
        assert deployed[name]["Timeout"] == world.spec(handler).timeout_seconds
        [policy_name] = iam.list_role_policies(RoleName=name)["PolicyNames"]
        document = iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
        document = json.loads(document) if isinstance(document, str) else document
        # The inline policy is the one jamsdr/iam.py generated for the function.
        assert document["Statement"] == generated[handler]["Statement"], handler
    concurrency = lam.get_function_concurrency(FunctionName=world.name("heartbeat_watcher"))
    assert concurrency["ReservedConcurrentExecutions"] == 2


def test_deploy_creates_the_schedule_and_pattern_rules_targeting_the_functions(world: World) -> None:
    events, lam = world.client("events"), world.client("lambda")
    rules = {r["Name"]: r for r in events.list_rules(NamePrefix=f"jams-dr-{STAGE}-")["Rules"]}
    expected = {f"{world.name(h)}-schedule" for h in SCHEDULES} | {f"{world.name(h)}-event" for h in PATTERNS}
    assert set(rules) == expected
    for handler, expression in SCHEDULES.items():
        rule = rules[f"{world.name(handler)}-schedule"]
        assert rule["ScheduleExpression"] == expression
        assert rule["State"] == "ENABLED"
    for handler, pattern in PATTERNS.items():
        assert json.loads(rules[f"{world.name(handler)}-event"]["EventPattern"]) == pattern
    for handler in [*SCHEDULES, *PATTERNS]:
        rule = f"{world.name(handler)}-{'event' if handler in PATTERNS else 'schedule'}"
        [target] = events.list_targets_by_rule(Rule=rule)["Targets"]
        assert target["Arn"] == lam.get_function(FunctionName=world.name(handler))["Configuration"]["FunctionArn"]


# ------------------------------------------------------------------------------------------ Invoke


def test_sync_invoke_answers_the_handlers_payload(world: World) -> None:
    mark = len(world.rt.invocations)
    answer = world.invoke("heartbeat_watcher", world.scheduled_event("heartbeat_watcher"))
    assert answer["StatusCode"] == 200
    assert "FunctionError" not in answer
    [invocation] = world.since(mark)
    assert invocation.function == "heartbeat_watcher"
    assert invocation.outcome == "ok"
    assert invocation.trigger == "manual"
    assert answer["Body"] == json.loads(json.dumps(invocation.result, default=str))
    assert answer["Body"]["decision"]  # the watcher's own answer (chalicelib/detection/watcher.py)


def test_sync_invoke_of_a_failing_handler_answers_an_unhandled_function_error(world: World) -> None:
    mark = len(world.rt.invocations)
    # The sweeper reads event["version"] (a scheduled event's); {} makes it fail.
    answer = world.invoke("execution_sweeper", {})
    assert answer["StatusCode"] == 200
    assert answer["FunctionError"] == "Unhandled"
    assert "KeyError" in answer["Body"]["errorMessage"]
    [invocation] = world.since(mark)
    assert invocation.outcome == "error"


def test_async_invoke_answers_202_and_runs_the_function_later(world: World) -> None:
    if world.next_event_is_duplicated():
        world.invoke_async("heartbeat_watcher", world.scheduled_event("heartbeat_watcher"))
    mark = len(world.rt.invocations)
    answer = world.invoke_async("heartbeat_watcher", world.scheduled_event("heartbeat_watcher"))
    assert answer["StatusCode"] == 202
    assert answer["Payload"].read() == b""
    wait_for("the queued event run", lambda: len(finished(world.since(mark, "heartbeat_watcher"))) >= 1)
    invocation = finished(world.since(mark, "heartbeat_watcher"))[0]
    assert (invocation.outcome, invocation.trigger, invocation.attempt) == ("ok", "manual", 1)


def test_a_failing_async_event_is_run_three_times_with_the_scaled_retry_delays(world: World) -> None:
    scale = 0.001
    with _scaled(world, scale):
        if world.next_event_is_duplicated():  # send a filler to take the duplicate delivery
            filler_mark = len(world.rt.invocations)
            world.invoke_async("heartbeat_watcher", world.scheduled_event("heartbeat_watcher"))
            wait_for("the filler and its duplicate",
                     lambda: len(finished(world.since(filler_mark, "heartbeat_watcher"))) >= 2)
        mark = len(world.rt.invocations)
        assert world.invoke_async("execution_sweeper", {})["StatusCode"] == 202
        wait_for("three attempts", lambda: len(finished(world.since(mark, "execution_sweeper"))) >= 3)
        # Absence of a fourth attempt: wait three times the last delay (0.36 s), the one fixed wait here.
        last_delay = lr.ASYNC_RETRY_DELAYS_SECONDS[-1] * scale
        time.sleep(3 * last_delay)
    runs = sorted(world.since(mark, "execution_sweeper"), key=lambda i: i.attempt)
    assert [i.attempt for i in runs] == [1, 2, 3]
    assert all(i.outcome == "error" and i.trigger == "manual" and not i.duplicate for i in runs)
    for before, after, delay in zip(runs, runs[1:], lr.ASYNC_RETRY_DELAYS_SECONDS, strict=False):
        gap = (after.started_at - before.started_at).total_seconds()
        # A retry is queued when the attempt before it ends, ``delay`` production seconds later.
        assert gap >= delay * scale - 0.002, (before.attempt, gap)
        assert gap < delay * scale + 1.0, (before.attempt, gap)


def test_every_second_invoke_event_is_delivered_twice(world: World) -> None:
    if not world.next_event_is_duplicated():
        filler_mark = len(world.rt.invocations)
        world.invoke_async("heartbeat_watcher", world.scheduled_event("heartbeat_watcher"))
        wait_for("the filler", lambda: len(finished(world.since(filler_mark, "heartbeat_watcher"))) >= 1)
    mark = len(world.rt.invocations)
    world.invoke_async("heartbeat_watcher", world.scheduled_event("heartbeat_watcher"))
    wait_for("two deliveries", lambda: len(finished(world.since(mark, "heartbeat_watcher"))) >= 2)
    runs = world.since(mark, "heartbeat_watcher")
    assert sorted(i.duplicate for i in runs) == [False, True]
    assert all(i.outcome == "ok" and i.trigger == "manual" and i.attempt == 1 for i in runs)
    # The next event is not duplicated: one delivery, and the sentinel after it shows no second.
    mark = len(world.rt.invocations)
    world.invoke_async("heartbeat_watcher", world.scheduled_event("heartbeat_watcher"))
    world.invoke_async("execution_sweeper", world.scheduled_event("execution_sweeper"))  # duplicated itself
    wait_for("the sentinel's two deliveries",
             lambda: len(finished(world.since(mark, "execution_sweeper"))) >= 2)
    assert len(world.since(mark, "heartbeat_watcher")) == 1


# ------------------------------------------------------------------------------------------ EventBridge


def test_a_health_event_in_the_primary_region_reaches_health_event_through_the_forwarding_rule(
        world: World) -> None:
    forwarding = world.client("cloudformation", world.settings.primary_region).describe_stacks(
        StackName=f"{world.settings.environment}-event-forwarding")["Stacks"][0]
    assert forwarding["StackStatus"] == "CREATE_COMPLETE"
    mark = len(world.rt.invocations)
    put_event(world, world.settings.primary_region, fixture_event("health_ec2_issue_primary.json"))
    wait_for("health_event", lambda: len(finished(world.since(mark, "health_event"))) >= 1)
    [invocation] = world.since(mark, "health_event")
    assert (invocation.trigger, invocation.outcome) == ("event", "ok")
    assert isinstance(invocation.result, dict)
    assert world.since(mark, "alarm_event") == world.since(mark, "rds_event") == []


def test_an_event_matching_no_rule_invokes_nothing(world: World) -> None:
    ec2 = {"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification",
           "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-1234567890abcdef0"],
           "detail": {"instance-id": "i-1234567890abcdef0", "state": "terminated"}}
    mark = len(world.rt.invocations)
    put_event(world, world.settings.primary_region, ec2)
    put_event(world, world.settings.recovery_region, ec2)
    # Sentinel: an alarm event sent after them; deliveries are run in the order they are queued.
    put_event(world, world.settings.primary_region, fixture_event("alarm_ok_to_alarm.json"))
    wait_for("the sentinel", lambda: len(finished(world.since(mark, "alarm_event"))) >= 1)
    assert [i.function for i in world.since(mark) if i.trigger == "event"] == ["alarm_event"]


def test_a_disabled_rule_delivers_nothing(world: World) -> None:
    events = world.client("events")
    rule = f"{world.name('health_event')}-event"
    events.disable_rule(Name=rule)
    try:
        mark = len(world.rt.invocations)
        put_event(world, world.settings.primary_region, fixture_event("health_ec2_issue_primary.json"))
        put_event(world, world.settings.primary_region, fixture_event("rds_multi_az_failover_started.json"))
        wait_for("the sentinel", lambda: len(finished(world.since(mark, "rds_event"))) >= 1)
        assert world.since(mark, "health_event") == []
    finally:
        events.enable_rule(Name=rule)
    mark = len(world.rt.invocations)
    put_event(world, world.settings.primary_region, fixture_event("health_ec2_issue_primary.json"))
    wait_for("health_event once enabled again", lambda: len(finished(world.since(mark, "health_event"))) >= 1)


# ------------------------------------------------------------------------------------------ schedules


def test_schedules_fire_and_a_disabled_schedule_stops(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # When each schedule fires (EventBridge sends the event), apart from when its run starts: a run
    # queued before the rule was disabled may start after, throttled by the watcher's reserved concurrency.
    fired: list[tuple[str, float]] = []
    scheduled_event = world.rt.scheduled_event

    def recording(name: str, at: Any = None) -> dict[str, Any]:
        if threading.current_thread().name == "lambda-schedules":
            fired.append((name, time.monotonic()))
        return scheduled_event(name, at)

    monkeypatch.setattr(world.rt, "scheduled_event", recording)

    def fires(handler: str, after: float = 0.0) -> int:
        return len([at for name, at in list(fired) if name == world.name(handler) and at > after])

    events = world.client("events")
    rule = f"{world.name('heartbeat_watcher')}-schedule"
    period = 0.2  # rate(1 minute)
    with _scaled(world, period / 60):
        mark = len(world.rt.invocations)
        world.rt.start_schedules()
        try:
            wait_for("two scheduled watcher runs",
                     lambda: len([i for i in finished(world.since(mark, "heartbeat_watcher"))
                                  if i.trigger == "schedule"]) >= 2, timeout=10)
            events.disable_rule(Name=rule)
            # A firing whose rule check came just before disable_rule answered may still be recorded.
            disabled_at = time.monotonic() + 0.05
            try:
                # Sentinel: the sweeper's rate(5 minutes) firing twice (1 s apart) spans five watcher periods.
                wait_for("two sweeper firings", lambda: fires("execution_sweeper", disabled_at) >= 2, timeout=10)
                assert fires("heartbeat_watcher", disabled_at) == 0
            finally:
                events.enable_rule(Name=rule)
            enabled_at = time.monotonic()
            wait_for("the watcher firing again", lambda: fires("heartbeat_watcher", enabled_at) >= 1, timeout=10)
        finally:
            world.rt.stop_schedules()
        # Every firing runs (at this scale) before the next test changes the scale.
        def settled() -> bool:
            runs = [i for i in world.since(mark) if i.trigger == "schedule" and i.attempt == 1]
            return len(runs) == len(fired) and all(i.outcome != "running" for i in runs)

        wait_for("the fired runs to end", settled, timeout=30)
    runs = [i for i in world.since(mark) if i.trigger == "schedule"]
    assert {i.function for i in runs} == {"heartbeat_watcher", "execution_sweeper", "snapshot_tick"}
    assert [i for i in runs if i.outcome != "ok"] == []


# ------------------------------------------------------------------------------------------ timeout


def test_an_invocation_past_its_timeout_is_stopped_at_its_next_aws_call(world: World) -> None:
    with _scaled(world, 1e-9):  # a 900 s timeout lasts ~1 microsecond
        invocation = world.rt.fire_schedule("heartbeat_watcher", SystemClock())
    assert invocation.outcome == "timeout"
    assert invocation.trigger == "schedule"
    assert invocation.error is not None and "timed out" in invocation.error
    assert invocation.result is None


def test_sync_invoke_past_the_timeout_answers_a_function_error(world: World) -> None:
    with _scaled(world, 1e-9):
        answer = world.invoke("heartbeat_watcher", world.scheduled_event("heartbeat_watcher"))
    assert answer["FunctionError"] == "Unhandled"
    assert "timed out" in answer["Body"]["errorMessage"]


def test_remaining_time_counts_down_from_the_scaled_timeout(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    contexts: list[lr.LambdaContext] = []

    class Recorded(lr.LambdaContext):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            contexts.append(self)

    monkeypatch.setattr(lr, "LambdaContext", Recorded)
    readings: list[tuple[float, int]] = []

    test_thread = threading.get_ident()

    def read(**_: Any) -> None:
        # fire_schedule runs the invocation in this thread; the dispatcher's runs are elsewhere.
        if threading.get_ident() == test_thread and contexts:
            readings.append((time.monotonic(), contexts[-1].get_remaining_time_in_millis()))

    scale = 0.01
    timeout_ms = world.spec("heartbeat_watcher").timeout_seconds * scale * 1000
    with _scaled(world, scale), _hook(world.clients, "before-call", read):
        started = time.monotonic()
        invocation = world.rt.fire_schedule("heartbeat_watcher", SystemClock())
    assert invocation.outcome == "ok"
    assert len(readings) >= 2
    deadlines = [at + remaining / 1000 for at, remaining in readings]
    # Every reading is the same deadline seen later: it counts down in real (compressed) time.
    assert max(deadlines) - min(deadlines) < 0.005
    assert [r for _, r in readings] == sorted((r for _, r in readings), reverse=True)
    assert readings[-1][1] < readings[0][1] or readings[-1][0] - readings[0][0] < 0.001
    # ... from the function's Timeout times time_scale, set when the invocation started.
    assert 0 <= (started + timeout_ms / 1000) - deadlines[0] < 0.05
    assert 0 < readings[0][1] <= timeout_ms


# ------------------------------------------------------------------------------------------ credentials


def _credential(request: Any) -> str:
    header = request.headers.get("Authorization", b"")
    text = header.decode() if isinstance(header, bytes) else str(header)
    match = re.search(r"Credential=([^/]+)/", text)
    return match.group(1) if match else ""


def _keys_of_calls(world: World, runs: dict[str, Callable[[], Any]]) -> dict[str, set[str]]:
    """The access keys the AWS calls of each run are signed with (each run in this thread, one by one)."""
    test_thread = threading.get_ident()
    keys: dict[str, set[str]] = {label: set() for label in runs}
    current: list[str] = []

    def capture(request: Any, **_: Any) -> None:
        if threading.get_ident() == test_thread and current:
            keys[current[-1]].add(_credential(request))

    with _hook(world.clients, "before-send", capture):
        for label, run in runs.items():
            current.append(label)
            run()
    return keys


def test_each_function_signs_with_its_own_credentials(world: World) -> None:
    keys = _keys_of_calls(world, {
        "heartbeat_watcher": lambda: world.rt.fire_schedule("heartbeat_watcher", SystemClock()),
        "execution_sweeper": lambda: world.rt.fire_schedule("execution_sweeper", SystemClock()),
        "admin": lambda: world.client("lambda").list_functions(),
    })
    assert keys["admin"] == {ADMIN_KEY}
    [watcher] = keys["heartbeat_watcher"]
    [sweeper] = keys["execution_sweeper"]
    assert len({watcher, sweeper, ADMIN_KEY}) == 3


def test_an_invoke_signed_by_a_function_is_triggered_by_invoke_and_by_the_admin_is_manual(world: World) -> None:
    [sweeper_key] = _keys_of_calls(world, {
        "execution_sweeper": lambda: world.rt.fire_schedule("execution_sweeper", SystemClock())})["execution_sweeper"]
    as_sweeper = world.clients.with_credentials(sweeper_key, "unused-by-moto")
    mark = len(world.rt.invocations)
    world.invoke("heartbeat_watcher", world.scheduled_event("heartbeat_watcher"), factory=as_sweeper)
    world.invoke("heartbeat_watcher", world.scheduled_event("heartbeat_watcher"))
    runs = world.since(mark, "heartbeat_watcher")
    assert [(i.trigger, i.invoked_by) for i in runs] == [("invoke", "execution_sweeper"), ("manual", None)]


# ------------------------------------------------------------------------------------------ IAM


def _without(policy: Mapping[str, Any], action: str) -> dict[str, Any]:
    trimmed = copy.deepcopy(dict(policy))
    kept = []
    for statement in trimmed["Statement"]:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else list(statement["Action"])
        left = [a for a in actions if a != action]
        if left:
            kept.append({**statement, "Action": left})
    trimmed["Statement"] = kept
    return trimmed


def test_a_function_without_an_action_in_its_policy_is_denied_it(world: World, tmp_path: Path) -> None:
    action = "cloudwatch:GetMetricData"
    base = Enforcer.for_settings(world.settings)
    assert any(action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
               for s in base.policies["heartbeat_watcher"]["Statement"])
    policies = copy.deepcopy(base.policies)
    policies["heartbeat_watcher"] = _without(policies["heartbeat_watcher"], action)
    restricted = Enforcer(policies, base.role)
    # The same package under another stage name: functions, roles and rules of their own, run by a runtime
    # whose functions the restricted enforcer checks. Its rules go at once: the module's runtime answers
    # EventBridge, and moto cannot deliver to a function it does not run.
    other = lr.EmbeddedLambda(world.clients, world.settings.recovery_region, time_scale=DEFAULT_SCALE,
                              enforcer=restricted)
    # What the enforcer checks is the deployed role's policy: the package is made with the trimmed one.
    pkg = cp.package(world.settings, policies, tmp_path, stage="iamcheck")
    specs = other.deploy(pkg)
    iam = world.client("iam")
    role = "jams-dr-iamcheck-heartbeat_watcher"
    [policy_name] = iam.list_role_policies(RoleName=role)["PolicyNames"]
    assert action not in json.dumps(iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"])
    events = world.client("events")
    for spec in specs:
        for suffix in ("schedule", "event"):
            with contextlib.suppress(ClientError):
                events.remove_targets(Rule=f"{spec.name}-{suffix}", Ids=[spec.handler])
                events.delete_rule(Name=f"{spec.name}-{suffix}")
    try:
        invocation = other.fire_schedule("heartbeat_watcher", SystemClock())
    finally:
        other.stop(drain_seconds=5)
        restricted.uninstall()
    assert invocation.trigger == "schedule"
    denials = [d for d in restricted.denied if d.action == action]
    assert denials, (restricted.denied, invocation.error)
    assert all(d.function == "heartbeat_watcher" for d in denials)
    message = denials[0].message(restricted.role("heartbeat_watcher"))
    assert "heartbeat_watcher" in message and action in message
    assert not [d for d in world.enforcer.denied if d.function == "heartbeat_watcher"]


# ------------------------------------------------------------------------------------------ concurrency


@contextlib.contextmanager
def _two_watchers_held(world: World) -> Iterator[None]:
    """Two heartbeat_watcher invocations held inside their first AWS call (its reserved concurrency is 2)."""
    release = threading.Event()
    held = threading.Semaphore(0)
    holders: set[int] = set()

    def hold(**_: Any) -> None:
        if threading.get_ident() in holders and not release.is_set():
            held.release()
            release.wait(timeout=20)

    def run() -> None:
        holders.add(threading.get_ident())
        world.rt.fire_schedule("heartbeat_watcher", SystemClock())

    threads = [threading.Thread(target=run) for _ in range(2)]
    with _hook(world.clients, "before-call", hold):
        for thread in threads:
            thread.start()
        try:
            for _ in range(2):
                assert held.acquire(timeout=15), "the two watcher invocations did not start"
            yield
        finally:
            release.set()
            for thread in threads:
                thread.join(timeout=20)


def test_a_third_concurrent_sync_invoke_is_throttled_with_a_429(world: World) -> None:
    """Beyond its reserved concurrency (2 for the watcher) Lambda refuses a synchronous Invoke with HTTP 429
    TooManyRequestsException (Lambda API reference, Invoke, Errors), so boto3 raises and its throttling retry
    applies; the function does not run."""
    with _two_watchers_held(world):
        mark = len(world.rt.invocations)
        lam = world.clients.client("lambda", world.settings.recovery_region)
        with pytest.raises(ClientError) as refused:
            lam.invoke(FunctionName=world.name("heartbeat_watcher"),
                       Payload=json.dumps(world.scheduled_event("heartbeat_watcher")).encode())
        assert world.since(mark) == []  # refused, not run
    assert refused.value.response["Error"]["Code"] == "TooManyRequestsException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    # Once the two end, the function runs again.
    assert "FunctionError" not in world.invoke("heartbeat_watcher", world.scheduled_event("heartbeat_watcher"))


def test_a_dry_run_invoke_runs_nothing(world: World) -> None:
    mark = len(world.rt.invocations)
    answer = world.client("lambda").invoke(FunctionName=world.name("heartbeat_watcher"), InvocationType="DryRun",
                                           Payload=json.dumps(world.scheduled_event("heartbeat_watcher")).encode())
    assert answer["StatusCode"] == 204
    assert world.since(mark) == []
