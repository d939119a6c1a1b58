"""Every trigger delivered twice, one after the other and at the same moment: one effect.

EventBridge and schedules deliver at least once, operators press twice, Lambda retries async invokes.
Each trigger is delivered twice in a row, then twice concurrently (two threads released together by a
barrier), against the embedded two-region AWS; the effect is counted in AWS and in the ledger: one
snapshot per interval, one copy, one incident and one recovery execution, one launch of the chain per
start, approval or retry, one rollback, one runner per step, one application stack, one lease epoch.

moto applies a request as several unlocked steps; DynamoDB and RDS apply each request atomically. The
factory here holds one lock from sending a request to receiving its answer, which gives every request
the service's atomicity and leaves the interleaving of requests, the thing under test, as it is.
Scheduled and event triggers run their logic with a FakeClock (their handlers only add SystemClock);
the manual entry points run as the Lambda handler functions themselves, with their payload parsing.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest

from chalicelib.aws import ClientFactory, closed_loopback_endpoint, set_factory
from chalicelib.clock import FakeClock
from chalicelib.detection.heartbeats import publish_heartbeat
from chalicelib.detection.incident import Incident, RecoveryStarter
from chalicelib.detection.state import WatchState
from chalicelib.detection.triggers import handle_alarm_event, handle_health_event, handle_rds_event
from chalicelib.detection.watcher import run_watcher
from chalicelib.keys import watch_key
from chalicelib.notify import Notifier
from chalicelib.settings import Settings
from chalicelib.snapshots.rules import slot_start, source_snapshot_id
from chalicelib.snapshots.tick import run_tick
from chalicelib.stacks import describe_stack
from chalicelib.tags import TAG_KIND, TAG_SOURCE_ID
from chalicelib.workflow import starter
from chalicelib.workflow.ledger import Ledger
from chalicelib.workflow.records import Execution
from chalicelib.workflow.runners import lambda_slice
from jamsdr.embedded import EmbeddedAws, World, build_world
from tests.conftest import PRIMARY, RECOVERY
from tests.faults.world import clear_ledger, our_snapshots, restore

EVENTS = Path(__file__).resolve().parents[1] / "fixtures" / "events"
ADVANCE = "jams-dr-dev-advance_execution"
T = TypeVar("T")
DATABASE: dict[str, str | None] = {"status": None}  # what DescribeDBInstances reports, when set
BEATS: dict[str, FakeClock | None] = {"clock": None}  # when set, recovered schedulers beat on this clock


# ------------------------------------------------------------------------------------------ plumbing


def one_request_at_a_time(factory: ClientFactory) -> None:
    lock = threading.Lock()
    held = threading.local()

    def before_send(**_: Any) -> None:
        lock.acquire()
        held.lock = True

    def response_received(**_: Any) -> None:
        if getattr(held, "lock", False):
            held.lock = False
            lock.release()

    factory.register_hook("before-send", before_send)
    factory.register_hook("response-received", response_received)


def twice_at_once(call: Callable[[], T]) -> list[T | BaseException]:
    """``call`` in two threads released together; each result, or the exception it raised."""
    barrier = threading.Barrier(2)
    results: list[T | BaseException] = [RuntimeError("not run"), RuntimeError("not run")]

    def worker(index: int) -> None:
        barrier.wait()
        try:
            results[index] = call()
        except Exception as exc:  # the caller inspects it
            results[index] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


class Context:
    """What Lambda hands a handler (the parts ours read)."""

    def __init__(self, function: str) -> None:
        self.function_name = f"jams-dr-dev-{function}"
        self.aws_request_id = uuid.uuid4().hex

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


@dataclasses.dataclass
class Aws:
    world: World
    clients: ClientFactory  # one request at a time, as the services apply them
    plain: ClientFactory
    invokes: list[str]  # execution ids the chain was launched for (lambda Invoke, answered 202)

    @property
    def s(self) -> Settings:
        return self.world.settings

    def ledger(self, clock: FakeClock | None = None) -> Ledger:
        return Ledger(self.s, self.plain, clock or FakeClock())

    def executions(self) -> list[Execution]:
        return self.ledger().list_executions()

    def handler(self, name: str, payload: Any) -> dict[str, Any]:
        from chalicelib.handlers import workflow as handlers

        answer = getattr(handlers, name)(payload, Context(name))
        assert isinstance(answer, dict)
        return answer


@pytest.fixture(scope="module")
def world(moto_server: EmbeddedAws) -> World:
    moto_server.reset()
    for region in (PRIMARY, RECOVERY):
        moto_server.bring_region_up(region)
    assert moto_server.clients is not None
    return build_world(moto_server.clients, Settings.defaults(environment="jams-dev"))


@pytest.fixture(scope="module")
def serialized(world: World, moto_server: EmbeddedAws) -> tuple[ClientFactory, list[str]]:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing"
    )
    # Two attempts, as the embedded AWS's own factory: a dead region costs one short back-off, not four.
    made = ClientFactory(session=session, endpoint_url=moto_server.endpoint, max_attempts=2)
    one_request_at_a_time(made)
    invokes: list[str] = []

    class Accepted:
        status_code = 202

    def invoke(params: dict[str, Any], **_: Any) -> Any:
        invokes.append(json.loads(params["body"])["execution_id"])
        return Accepted(), {"StatusCode": 202}

    made.register_hook("before-call.lambda.Invoke", invoke)

    def database_status(parsed: dict[str, Any], **_: Any) -> None:
        # moto's instances are always available; a failed database is what RDS reports after RDS-EVENT-0031.
        if DATABASE["status"]:
            for instance in parsed.get("DBInstances", []):
                instance["DBInstanceStatus"] = DATABASE["status"]

    made.register_hook("after-call.rds.DescribeDBInstances", database_status)

    plain = moto_server.clients
    assert plain is not None

    def beat(context: dict[str, Any], **_: Any) -> None:
        # JAMS on the recovered hosts beats as soon as they run (once the recovery built them): just before
        # the chain looks for it. Not before: the recovery's fencing reads that copy too.
        clock = BEATS["clock"]
        recovered = clock is not None and context.get("client_region") == RECOVERY and describe_stack(
            plain.client("cloudformation", RECOVERY), world.settings.app_stack_name) is not None
        if clock is not None and recovered:
            for role in ("primary", "failover"):
                publish_heartbeat(plain, RECOVERY, world.settings.environment, role, clock)

    made.register_hook("before-call.cloudwatch.GetMetricData", beat)
    return made, invokes


@pytest.fixture
def aws(world: World, serialized: tuple[ClientFactory, list[str]], moto_server: EmbeddedAws,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    """The module's world put back to its baseline; the handlers see its settings and the factory."""
    plain = moto_server.clients
    assert plain is not None
    for region in (PRIMARY, RECOVERY):
        moto_server.bring_region_up(region)
    restore(world, plain)
    clients, invokes = serialized
    invokes.clear()
    for key, value in {**world.settings.as_env(), "ADVANCE_FUNCTION_NAME": ADVANCE}.items():
        monkeypatch.setenv(key, value)
    set_factory(clients)
    yield Aws(world, clients, plain, invokes)
    set_factory(plain)


def fresh_clock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(minute=1, second=0, microsecond=0))


# ------------------------------------------------------------------------------------------ snapshots


def test_snapshot_tick_twice_and_concurrently_takes_and_copies_once(aws: Aws) -> None:
    settings, clock = aws.s, fresh_clock()
    for deliver in ("in a row", "at once"):
        clock.advance(settings.snapshot_interval_minutes * 60)
        if deliver == "in a row":
            results: list[Any] = [run_tick(settings, aws.clients, clock) for _ in range(2)]
        else:
            results = twice_at_once(lambda: run_tick(settings, aws.clients, clock))
        assert all(not isinstance(r, BaseException) for r in results), results
        slot = source_snapshot_id(settings.environment, slot_start(clock.now(), settings.snapshot_interval_minutes))
        sources = our_snapshots(aws.plain, PRIMARY)
        copies = our_snapshots(aws.plain, RECOVERY)
        assert slot in sources, deliver
        per_source = Counter(c["tags"].get(TAG_SOURCE_ID) for c in copies.values() if c["tags"].get(TAG_KIND) == "copy")
        assert per_source[slot] == 1 and max(per_source.values()) == 1, (deliver, per_source)
        standby = describe_stack(aws.plain.client("cloudformation", RECOVERY), settings.standby_stack_name)
        assert standby is not None
        assert {p["ParameterKey"]: p["ParameterValue"] for p in standby["Parameters"]}[
            "DBSnapshotIdentifier"] == f"{slot}-copy", deliver
        assert sum(len(r.taken) for r in results) >= 1  # a racing loser reports it, never a second one


# ------------------------------------------------------------------------------------------ detection


def silence_schedulers(aws: Aws, clock: FakeClock, minutes: int = 5) -> None:
    """Both schedulers beat until ``minutes`` ago, then stopped (into both regions, as the CONTRACT says)."""
    last = clock.now() - timedelta(minutes=minutes)
    data = [{"MetricName": "Heartbeat", "Value": 1.0, "Unit": "Count", "Timestamp": last - timedelta(minutes=k),
             "Dimensions": [{"Name": "Environment", "Value": aws.s.environment},
                            {"Name": "Scheduler", "Value": scheduler}]}
            for k in range(5) for scheduler in ("primary", "failover")]
    for region in (PRIMARY, RECOVERY):
        aws.plain.client("cloudwatch", region).put_metric_data(Namespace="JAMS", MetricData=data)


def watch_state(aws: Aws) -> WatchState | None:
    item = aws.plain.client("dynamodb", RECOVERY).get_item(
        TableName=aws.s.ledger_table_name, Key={"pk": {"S": watch_key(aws.s.environment)}},
        ConsistentRead=True).get("Item")
    return None if item is None else WatchState.from_item(item)


def event(name: str, **detail: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    raw["detail"].update(detail)
    return raw


def assert_one_recovery(aws: Aws) -> None:
    executions = aws.executions()
    state = watch_state(aws)
    assert state is not None and state.decision == "region-recovery" and state.incident is not None
    assert [e.execution_id for e in executions] == [f"rec-{state.incident.incident_id}"]
    assert state.execution_id == executions[0].execution_id and not state.start_pending


@pytest.mark.parametrize("trigger", ["schedule", "alarm", "rds", "health"])
def test_the_deciding_trigger_twice_and_concurrently_starts_one_recovery(aws: Aws, trigger: str) -> None:
    """The delivery that turns the decision into region-recovery arrives twice: one incident, one start.

    schedule and alarm: the primary's APIs stop answering, and the third unanswered check decides;
    rds: the database failed; health: an AWS Health issue for EC2 in the primary region.
    """
    settings = dataclasses.replace(aws.s, failover_mode="auto")
    for deliver in ("in a row", "at once"):
        clear_ledger(aws.plain, settings)
        clock = FakeClock(datetime.now(UTC).replace(second=30, microsecond=0) + timedelta(hours=3))
        silence_schedulers(aws, clock)
        starts = starter.recovery_starter(settings, aws.clients, clock, launcher=starter.no_launch)
        deliveries: dict[str, Callable[[], dict[str, Any]]] = {
            "schedule": partial(scheduled_check, settings, aws.clients, clock, starts),
            "alarm": partial(handle_alarm_event, settings, aws.clients, clock, starts, event("alarm_ok_to_alarm")),
            "rds": partial(handle_rds_event, settings, aws.clients, clock, starts,
                           event("rds_instance_failed", SourceIdentifier=settings.db_instance_id)),
            "health": partial(handle_health_event, settings, aws.clients, clock, starts,
                              event("health_ec2_issue_primary")),
        }
        assert run_watcher(settings, aws.clients, clock, starts).decision == "scheduler-outage"
        if trigger in ("schedule", "alarm"):
            with region_down(aws.clients, PRIMARY):
                for _ in range(2):
                    clock.advance(60)
                    assert run_watcher(settings, aws.clients, clock, starts).decision == "scheduler-outage"
                clock.advance(60)
                results = deliver_twice(deliver, deliveries[trigger])
        else:
            clock.advance(30)
            DATABASE["status"] = "failed" if trigger == "rds" else None
            try:
                results = deliver_twice(deliver, deliveries[trigger])
            finally:
                DATABASE["status"] = None
        assert all(isinstance(r, dict) for r in results), results
        answers = [r for r in results if isinstance(r, dict)]
        assert sum(bool(a.get("changed")) for a in answers) == 1, (deliver, answers)
        assert_one_recovery(aws)
        if trigger == "health":
            assert sorted(bool(a["duplicate"]) for a in answers) == [False, True], answers


def scheduled_check(settings: Settings, clients: ClientFactory, clock: FakeClock,
                    starts: RecoveryStarter) -> dict[str, Any]:
    return run_watcher(settings, clients, clock, starts).to_dict()


@contextmanager
def region_down(clients: ClientFactory, region: str) -> Iterator[None]:
    """Every call into ``region`` is refused at once, as a dead region's API is to the caller."""
    clients.set_region_endpoint(region, closed_loopback_endpoint())
    try:
        yield
    finally:
        clients.set_region_endpoint(region, None)


def deliver_twice(deliver: str, call: Callable[[], T]) -> list[T | BaseException]:
    if deliver == "in a row":
        return [call(), call()]
    return twice_at_once(call)


# ------------------------------------------------------------------------------------------ manual starts


def ok(answer: Any) -> dict[str, Any]:
    assert isinstance(answer, dict) and answer.get("ok") is True, answer
    return answer


def test_start_recovery_and_start_drill_twice_and_concurrently_create_and_launch_once(aws: Aws) -> None:
    for deliver, key in (("in a row", "a"), ("at once", "b")):
        # A recovery start while another is active joins it: each case starts from an empty ledger.
        clear_ledger(aws.plain, aws.s)
        recoveries = deliver_twice(deliver, partial(
            aws.handler, "start_recovery", {"reason": "us-east-1 is down", "incident_id": f"dup-{key}"}))
        drills = deliver_twice(deliver, partial(aws.handler, "start_drill", {"drill_id": f"dup-{key}"}))
        for answers, execution_id in ((recoveries, f"rec-dup-{key}"), (drills, f"drill-dup-{key}")):
            assert {ok(a)["execution_id"] for a in answers} == {execution_id}, deliver
            assert sorted(ok(a)["created"] for a in answers) == [False, True], (deliver, answers)
            assert aws.invokes.count(execution_id) == 1, (deliver, aws.invokes)
        assert sorted(e.execution_id for e in aws.executions()) == [f"drill-dup-{key}", f"rec-dup-{key}"]


def test_start_failback_twice_and_concurrently_creates_and_launches_once(aws: Aws) -> None:
    first, second = (aws.handler("start_failback", {"reason": "us-east-1 healthy again"}) for _ in range(2))
    created = ok(first)["execution_id"]
    assert second["ok"] is False and created in second["error"], second  # one failback at a time
    assert aws.invokes == [created]

    clear_ledger(aws.plain, aws.s)
    aws.invokes.clear()
    clock = fresh_clock()  # both deliveries in the same second: the id (fb-<second>) is the same
    answers = twice_at_once(lambda: starter.start_failback(
        aws.s, aws.clients, clock, reason="again", launcher=starter.lambda_launcher(aws.clients, RECOVERY, ADVANCE)))
    started = [a for a in answers if isinstance(a, starter.Started)]
    refused = [a for a in answers if isinstance(a, starter.StartError)]
    assert len(started) + len(refused) == 2, answers
    assert sum(s.created for s in started) == 1
    assert [e.execution_id for e in aws.executions()] == [started[0].execution_id]
    assert aws.invokes == [started[0].execution_id]


def test_approve_recovery_twice_and_concurrently_runs_and_launches_once(aws: Aws) -> None:
    clock = fresh_clock()
    for deliver, key in (("in a row", "a"), ("at once", "b")):
        clear_ledger(aws.plain, aws.s)  # an active recovery would be joined, not started
        incident = Incident(incident_id=f"appr-{key}", decision="region-recovery", reason="approve me",
                            failure_at=None, detected_at=clock.now(), decided_at=clock.now())
        execution_id = starter.start_incident_recovery(aws.s, aws.clients, clock, incident, await_approval=True,
                                                       launcher=starter.no_launch).execution_id
        answers = deliver_twice(deliver, partial(aws.handler, "approve_recovery", {"execution_id": execution_id}))
        assert sorted(bool(a["ok"]) for a in answers if isinstance(a, dict)) == [False, True], (deliver, answers)
        assert aws.invokes.count(execution_id) == 1, (deliver, aws.invokes)
        approved = aws.ledger().load(execution_id)
        assert approved.status == "running" and approved.seq == 1, approved


def failed_recovery(aws: Aws, incident_id: str, clock: FakeClock) -> str:
    """A recovery that fails at its preflight: the world has no recovery point pinned (restore())."""
    incident = Incident(incident_id=incident_id, decision="region-recovery", reason="no pin",
                        failure_at=None, detected_at=clock.now(), decided_at=clock.now())
    execution_id = starter.start_incident_recovery(aws.s, aws.clients, clock, incident, await_approval=False,
                                                   launcher=starter.no_launch).execution_id
    run = starter.inprocess_launcher(aws.s, aws.clients, clock,
                                     Notifier(dataclasses.replace(aws.s, topic_arn=None), aws.clients, clock))
    run(execution_id)
    failed = aws.ledger().load(execution_id)
    assert failed.status == "failed" and failed.failed_state == "preflight", failed.error
    return execution_id


def test_retry_and_rollback_twice_and_concurrently_act_and_launch_once(aws: Aws) -> None:
    clock = fresh_clock()
    rollbacks: list[str] = []
    for deliver, key in (("in a row", "a"), ("at once", "b")):
        clear_ledger(aws.plain, aws.s)  # an active recovery would be joined, not started
        execution_id = failed_recovery(aws, f"retry-{key}", clock)
        answers = deliver_twice(deliver, partial(aws.handler, "retry_execution", {"execution_id": execution_id}))
        assert sorted(bool(a["ok"]) for a in answers if isinstance(a, dict)) == [False, True], (deliver, answers)
        assert aws.invokes.count(execution_id) == 1, (deliver, aws.invokes)
        reopened = aws.ledger().load(execution_id)
        assert reopened.status == "running" and len(reopened.item["previous_failures"]) == 1

        clear_ledger(aws.plain, aws.s)
        failed = failed_recovery(aws, f"rollback-{key}", clock)
        answers = deliver_twice(deliver, partial(aws.handler, "rollback_execution", {"execution_id": failed}))
        assert [ok(a)["execution_id"] for a in answers] == [f"rb-{failed}"] * 2, (deliver, answers)
        assert sorted(ok(a)["created"] for a in answers) == [False, True], (deliver, answers)
        assert aws.invokes.count(f"rb-{failed}") == 1, (deliver, aws.invokes)
        assert aws.ledger().load(failed).status == "cancelled"
        rollbacks += [e.execution_id for e in aws.executions() if e.execution_id.startswith("rb-")]
    assert sorted(rollbacks) == ["rb-rec-rollback-a", "rb-rec-rollback-b"]


# ------------------------------------------------------------------------------------------ the chain


def test_advance_execution_twice_and_concurrently_runs_each_step_once(aws: Aws) -> None:
    """The chain's own invocation, duplicated: a rollback through the Lambda handler, then a real
    recovery (stack creation, fencing, DNS) with two runners racing on a FakeClock."""
    clock = fresh_clock()
    failed = failed_recovery(aws, "adv-rb", clock)
    rollback_id = ok(aws.handler("rollback_execution", {"execution_id": failed}))["execution_id"]
    answers = twice_at_once(lambda: aws.handler("advance_execution", {"execution_id": rollback_id}))
    assert sum(ok(a)["steps_run"] for a in answers) == 5, answers
    late = ok(aws.handler("advance_execution", {"execution_id": rollback_id}))  # delivered again at the end
    assert (late["outcome"], late["steps_run"]) == ("ended", 0)
    history = [h["name"] for h in aws.ledger().load(rollback_id).history]
    assert history == ["rollback_stack", "withdraw_fence", "release_lease", "notify", "write_report"]

    assert run_tick(aws.s, aws.clients, clock).pinned  # a recovery point for the real recovery
    incident = Incident(incident_id="adv-real", decision="region-recovery", reason="duplicated invocation",
                        failure_at=None, detected_at=clock.now(), decided_at=clock.now())
    execution_id = starter.start_incident_recovery(aws.s, aws.clients, clock, incident, await_approval=False,
                                                   launcher=starter.no_launch).execution_id
    BEATS["clock"] = clock
    try:
        results = twice_at_once(lambda: lambda_slice(
            execution_id, settings=aws.s, clients=aws.clients, clock=clock,
            notifier=Notifier(dataclasses.replace(aws.s, topic_arn=None), aws.clients, clock),
            owner=f"lambda:{uuid.uuid4().hex[:8]}",
            remaining_ms=900_000, margin_seconds=60, launcher=lambda _id: False))
    finally:
        BEATS["clock"] = None
    slices = [r for r in results if not isinstance(r, BaseException)]
    assert len(slices) == 2, results
    assert sum(s.result.steps_run for s in slices) == 9, [s.result for s in slices]
    recovered = aws.ledger().load(execution_id)
    assert recovered.status == "succeeded", recovered.error
    assert [h["name"] for h in recovered.history] == [
        "preflight", "take_lease", "fence_primary", "create_app_stack", "wait_for_stack", "verify",
        "switch_traffic", "notify", "write_report"]
    stacks = [s for s in aws.plain.client("cloudformation", RECOVERY).describe_stacks()["Stacks"]
              if s["StackName"] == aws.s.app_stack_name and s["StackStatus"] != "DELETE_COMPLETE"]
    assert len(stacks) == 1
    lease = aws.ledger().get_lease("recovery")
    assert lease is not None and (lease.holder, lease.epoch) == (execution_id, 1)
