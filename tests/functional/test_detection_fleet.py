"""Detection end to end in the embedded two-region AWS: the simulated fleet beats every second (real
threads), the watcher runs once per watcher period on a fixed schedule, failures are injected.

The detection bound asserted is the contract's: threshold heartbeat intervals plus one watcher period
(plus the ingestion grace, a tenth of an interval) from the estimated failure (the end of the last
interval with a beat) to the check that crossed the threshold. The watcher period used in the bound is
the largest gap actually observed between two checks, so a slow check can't make the test flaky, and a
detector that needed one more interval would still fail it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from chalicelib.aws import ClientFactory, set_factory
from chalicelib.clock import FakeClock, SystemClock
from chalicelib.detection.heartbeats import publish_heartbeat, read_heartbeats
from chalicelib.detection.incident import Incident
from chalicelib.detection.transition import start_claim
from chalicelib.detection.triggers import handle_health_event
from chalicelib.detection.watcher import WatchResult, run_watcher
from chalicelib.settings import Settings
from jamsdr.cli import main
from jamsdr.embedded import World, build_world
from jamsdr.fleet import Fleet
from jamsdr.heartbeat import run_host
from tests.conftest import PRIMARY, RECOVERY

INTERVAL = 1
PERIOD = 1.0  # the watcher period of these tests
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"


class CountingStarter:
    """The injected RecoveryStarter: counts calls, widens any race a little."""

    def __init__(self) -> None:
        self.calls: list[tuple[Incident, bool]] = []
        self._lock = threading.Lock()

    def __call__(self, incident: Incident, *, await_approval: bool) -> str:
        time.sleep(0.1)
        with self._lock:
            self.calls.append((incident, await_approval))
        return f"rec-{incident.incident_id}"


@pytest.fixture(scope="module")
def shared(moto_server: Any) -> tuple[Any, World]:
    """One world for the module: building it is most of a test's time, and the tests leave it as found."""
    moto_server.reset()
    for region in (PRIMARY, RECOVERY):
        moto_server.bring_region_up(region)
    built = build_world(moto_server.clients, Settings.defaults(
        heartbeat_interval_seconds=INTERVAL, missed_beat_threshold=3, failover_mode="auto"))
    return moto_server, built


@pytest.fixture
def embedded(shared: tuple[Any, World]) -> Iterator[Any]:
    """The module's server, both regions up, no watch state: what each test starts from."""
    aws, world = shared
    for region in (PRIMARY, RECOVERY):
        aws.bring_region_up(region)
    set_factory(aws.clients)
    ddb = aws.clients.client("dynamodb", RECOVERY)
    for item in ddb.scan(TableName=world.settings.ledger_table_name)["Items"]:
        if item["pk"]["S"].startswith(("watch#", "health#")):
            ddb.delete_item(TableName=world.settings.ledger_table_name, Key={"pk": item["pk"]})
    yield aws
    aws.bring_region_up(PRIMARY)


@pytest.fixture
def clients(embedded: Any) -> ClientFactory:
    factory: ClientFactory = embedded.clients
    return factory


@pytest.fixture
def world(shared: tuple[Any, World], embedded: Any) -> World:
    return shared[1]


@pytest.fixture
def fleet(clients: ClientFactory, world: World) -> Iterator[Fleet]:
    s = world.settings
    running = Fleet(clients, s.environment, [s.primary_region, s.recovery_region], INTERVAL,
                    recovery_region=s.recovery_region).start()
    yield running
    running.stop()


class Watch:
    """The watcher on a fixed period (deadline schedule), keeping every result and the gaps between checks."""

    def __init__(self, settings: Settings, clients: ClientFactory, starter: CountingStarter) -> None:
        self.settings, self.clients, self.starter = settings, clients, starter
        self.results: list[WatchResult] = []
        self.times: list[float] = []

    def check(self) -> WatchResult:
        self.times.append(time.monotonic())
        result = run_watcher(self.settings, self.clients, SystemClock(), self.starter, stage="test")
        self.results.append(result)
        return result

    def until(self, decision: str, max_checks: int) -> WatchResult:
        due = time.monotonic()
        for _ in range(max_checks):
            due += PERIOD
            time.sleep(max(0.0, due - time.monotonic()))
            result = self.check()
            if result.decision == decision:
                return result
        raise AssertionError(f"no {decision} after {max_checks} checks: {[r.decision for r in self.results]}")

    def healthy(self) -> WatchResult:
        """A baseline: both schedulers seen beating with no beat missed. Polled, not timed: on a loaded
        machine the fleet's threads can be late for a beat, which is what the next check then shows."""
        time.sleep(2 * INTERVAL)  # the fleet's first beats
        due = time.monotonic()
        for _ in range(10):
            result = self.check()
            if result.decision == "healthy" and result.counts["primary_missed"] == 0 == result.counts[
                    "failover_missed"]:
                return result
            due += PERIOD
            time.sleep(max(0.0, due - time.monotonic()))
        raise AssertionError(f"no beat-perfect healthy check in 10: {[r.counts for r in self.results[-10:]]}")

    @property
    def max_gap(self) -> float:
        gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return max([PERIOD, *gaps])


def bound(settings: Settings, watch: Watch) -> timedelta:
    grace = 0.1 * settings.heartbeat_interval_seconds
    return timedelta(seconds=settings.missed_beat_threshold * settings.heartbeat_interval_seconds + grace
                     + watch.max_gap)


def test_silenced_region_is_a_region_recovery_within_three_intervals_and_one_period(
    embedded: Any, clients: ClientFactory, world: World, fleet: Fleet
) -> None:
    starter = CountingStarter()
    watch = Watch(world.settings, clients, starter)
    watch.healthy()
    down_at = SystemClock().now()
    embedded.take_region_down(PRIMARY)
    result = watch.until("region-recovery", 12)

    assert result.changed
    incident = result.incident
    assert incident is not None and incident.failure_at is not None
    assert incident.detected_at - incident.failure_at <= bound(world.settings, watch)
    # The estimate is not later than the real failure (the end of the interval in which it happened).
    assert incident.failure_at <= down_at + timedelta(seconds=INTERVAL)
    assert re.search(r"did not answer \d+ checks in a row", incident.reason)
    assert [await_approval for _, await_approval in starter.calls] == [False]  # auto: started, once
    assert result.execution_id == f"rec-{incident.incident_id}"
    assert fleet.stats.discovery_failures > 0  # the dead region's beats failed and were counted
    # Later checks keep the incident; nothing starts twice.
    later = watch.check()
    assert later.decision == "region-recovery" and not later.changed
    assert later.incident == incident and len(starter.calls) == 1
    # The region comes back and the primary beats steadily again (a failback): the incident ends, once.
    embedded.bring_region_up(PRIMARY)
    ended = watch.until("healthy", 10)
    assert ended.changed and ended.previous == "region-recovery" and len(starter.calls) == 1
    assert ended.counts["primary_streak"] >= world.settings.missed_beat_threshold


def test_silenced_primary_is_a_jams_failover_then_both_silenced_a_scheduler_outage(
    clients: ClientFactory, world: World, fleet: Fleet
) -> None:
    starter = CountingStarter()
    watch = Watch(world.settings, clients, starter)
    watch.healthy()
    silenced_at = SystemClock().now()
    fleet.silence("primary")
    failover = watch.until("jams-failover", 10)
    assert failover.changed and failover.detected_at is not None
    assert failover.counts["failover_missed"] == 0
    # The last beat came at most one interval before the silence.
    assert failover.detected_at - silenced_at <= bound(world.settings, watch) + timedelta(seconds=INTERVAL)

    fleet.silence("failover")  # both silent, the region answering
    outage = watch.until("scheduler-outage", 10)
    assert outage.changed and outage.previous == "jams-failover" and outage.counts["region_answers"]
    assert outage.incident is None and starter.calls == []
    assert [r.decision for r in watch.results].count("region-recovery") == 0
    assert sum(r.changed for r in watch.results) == 2  # one transition each, not one per check

    fleet.unsilence("primary")
    fleet.unsilence("failover")
    back = watch.until("healthy", 6)
    assert back.changed and back.previous == "scheduler-outage"


def test_ten_concurrent_watcher_triggers_start_exactly_one_recovery(
    embedded: Any, clients: ClientFactory, world: World, fleet: Fleet
) -> None:
    starter = CountingStarter()
    watch = Watch(world.settings, clients, starter)
    watch.healthy()
    embedded.take_region_down(PRIMARY)
    for _ in range(2):  # two unanswered checks: one short of the region evidence
        time.sleep(PERIOD)
        assert watch.check().decision == "healthy"
    time.sleep(3.5 * INTERVAL)  # three intervals without a beat, and no check meanwhile
    results = fire_concurrently(10, lambda: run_watcher(world.settings, clients, SystemClock(), starter))

    assert len(starter.calls) == 1
    assert sum(r.changed for r in results) == 1
    assert {r.decision for r in results} == {"region-recovery"}
    winner = next(r for r in results if r.changed)
    assert winner.incident is not None
    assert {r.incident.incident_id for r in results if r.incident} == {winner.incident.incident_id}
    assert winner.execution_id == f"rec-{winner.incident.incident_id}"


def test_ten_duplicated_health_events_start_exactly_one_recovery(
    clients: ClientFactory, world: World, fleet: Fleet
) -> None:
    starter = CountingStarter()
    watch = Watch(world.settings, clients, starter)
    watch.healthy()
    fleet.silence("primary")
    fleet.silence("failover")
    time.sleep(4.5 * INTERVAL)  # both silent for three intervals; no check has seen it yet
    health = json.loads((FIXTURES / "health_ec2_issue_primary.json").read_text())
    answers = fire_concurrently(10, lambda: handle_health_event(world.settings, clients, SystemClock(), starter,
                                                                health))
    processed = [a for a in answers if not a["duplicate"]]
    assert len(processed) == 1 and processed[0]["decision"] == "region-recovery" and processed[0]["changed"]
    assert len(starter.calls) == 1
    assert "Health" in starter.calls[0][0].reason


def fire_concurrently(count: int, call: Any) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    return results


# ---------------------------------------------------------------------------------- fleet and publisher


def test_fleet_beats_running_schedulers_only_and_survives_a_dead_region(
    embedded: Any, clients: ClientFactory, world: World
) -> None:
    s = world.settings
    fleet = Fleet(clients, s.environment, [PRIMARY, RECOVERY], INTERVAL, recovery_region=RECOVERY)
    assert {h.role for h in fleet.beat_once()} == {"primary", "failover"}
    fleet.silence("failover")
    assert {h.role for h in fleet.beat_once()} == {"primary"}
    # A fenced (stopped) scheduler does not beat.
    ec2 = clients.client("ec2", PRIMARY)
    ec2.stop_instances(InstanceIds=[world.app["PrimarySchedulerInstanceId"]])
    try:
        assert fleet.beat_once() == []
        embedded.take_region_down(PRIMARY)
        assert fleet.beat_once() == []
    finally:
        embedded.bring_region_up(PRIMARY)
        ec2.start_instances(InstanceIds=[world.app["PrimarySchedulerInstanceId"]])
    assert fleet.stats.discovery_failures == 1
    assert fleet.stats.beats[(PRIMARY, "primary")] == 2 and fleet.stats.beats[(PRIMARY, "failover")] == 1
    with pytest.raises(ValueError, match="jitter"):
        Fleet(clients, s.environment, [PRIMARY], INTERVAL, jitter=0.6)
    with pytest.raises(ValueError, match="primary, failover"):
        fleet.silence("agent")


def test_a_failover_beat_never_counts_for_the_primary(clients: ClientFactory) -> None:
    env = "jams-dims"
    now = SystemClock().now()
    for k in range(8):
        publish_heartbeat(clients, PRIMARY, env, "failover", FakeClock(now - timedelta(seconds=10 * k)),
                          interval_seconds=10)
    # Same metric with a superset of the dimensions, and another environment: neither is ours.
    clients.client("cloudwatch", PRIMARY).put_metric_data(Namespace="JAMS", MetricData=[{
        "MetricName": "Heartbeat", "Value": 1.0, "Unit": "Count", "Timestamp": now, "StorageResolution": 1,
        "Dimensions": [{"Name": "Environment", "Value": env}, {"Name": "Scheduler", "Value": "primary"},
                       {"Name": "Host", "Value": "jams-1"}]}])
    publish_heartbeat(clients, PRIMARY, f"{env}-other", "primary", SystemClock(), interval_seconds=10)
    reading = read_heartbeats(clients, PRIMARY, env, 10, SystemClock(), lookback=6)
    assert reading.failover.missed == 0 and not reading.failover.saturated
    assert reading.primary.saturated and reading.primary.missed == 6


def test_heartbeat_command_publishes_the_contract_metric_into_both_regions(clients: ClientFactory) -> None:
    result = CliRunner().invoke(main, ["heartbeat", "--environment", "jams-cli", "--scheduler", "primary",
                                       "--region", PRIMARY, "--recovery-region", RECOVERY, "--interval", "60",
                                       "--once"])
    assert result.exit_code == 0, result.output
    for region in (PRIMARY, RECOVERY):
        metrics = clients.client("cloudwatch", region).list_metrics(
            Namespace="JAMS", MetricName="Heartbeat",
            Dimensions=[{"Name": "Environment", "Value": "jams-cli"}])["Metrics"]
        dims = {tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])) for m in metrics}
        assert dims == {(("Environment", "jams-cli"), ("Scheduler", "primary"))}, region
        reading = read_heartbeats(clients, region, "jams-cli", 60, SystemClock(), lookback=4)
        assert reading.primary.missed == 0, region


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--environment", "Bad Name", "--scheduler", "primary", "--region", PRIMARY], "not a valid environment"),
        (["--environment", "jams", "--scheduler", "primary", "--region", "mars-1"], "not an AWS region"),
        (["--scheduler", "primary", "--region", PRIMARY], "--environment is required"),
        (["--environment", "jams", "--scheduler", "tertiary", "--region", PRIMARY], "tertiary"),
        (["--environment", "jams", "--scheduler", "primary", "--region", PRIMARY, "--interval", "0"], "1<=x<=3600"),
        (["--environment", "jams", "--scheduler", "primary", "--region", PRIMARY], "--recovery-region is required"),
        (["--environment", "jams", "--scheduler", "primary", "--region", PRIMARY, "--recovery-region", "west"],
         "--recovery-region 'west' is not an AWS region"),
    ],
)
def test_heartbeat_command_rejects_bad_arguments_with_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["heartbeat", *args, "--once"])
    assert result.exit_code == 2
    assert message in result.output


def test_heartbeat_loop_keeps_its_interval_and_survives_errors(embedded: Any, clients: ClientFactory) -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=SystemClock().now().tzinfo))
    lines: list[str] = []
    embedded.take_region_down(PRIMARY)
    failures = run_host(clients, PRIMARY, "jams-loop", "failover", 30, clock, once=False, max_beats=3,
                        recovery_region=RECOVERY, echo=lines.append).failures
    assert failures == 3 and clock.slept == [30, 30]
    # The primary region's failures never cost the recovery region's copy.
    assert [line.split(" at ")[0] for line in lines if " FAILED" not in line] == [
        f"heartbeat jams-loop/failover -> {RECOVERY}"] * 3
    assert all("FAILED: Unreachable" in line for line in lines if f"-> {PRIMARY}" in line)


# ---------------------------------------------------------------------------------- starting, on a fake clock


def subscribe_inbox(clients: ClientFactory, topic_arn: str | None, name: str) -> Any:
    sqs = clients.client("sqs", RECOVERY)
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert topic_arn
    clients.client("sns", RECOVERY).subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn)

    def read() -> list[tuple[str, str]]:
        out = []
        while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            for message in messages:
                body = json.loads(message["Body"])
                out.append((body.get("Subject", ""), body["Message"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return out

    return read


def far_future_clock() -> FakeClock:
    """A day ahead of the fleet tests' real-time beats: both schedulers are silent there."""
    return FakeClock(SystemClock().now() + timedelta(days=1))


def test_approve_mode_parks_the_recovery_and_tells_how_to_approve(clients: ClientFactory, world: World) -> None:
    settings = replace(world.settings, failover_mode="approve")
    inbox = subscribe_inbox(clients, settings.topic_arn, "approve-inbox")
    starter = CountingStarter()
    health = json.loads((FIXTURES / "health_ec2_issue_primary.json").read_text())
    answer = handle_health_event(settings, clients, far_future_clock(), starter, health, stage="prod")
    assert answer["decision"] == "region-recovery" and answer["action"] == "request-approval"
    [(incident, await_approval)] = starter.calls
    assert await_approval is True
    [(subject, body)] = inbox()
    assert "REGION-RECOVERY" in subject
    assert f"To approve: jams-dr recover --approve rec-{incident.incident_id} --stage prod" in body
    assert "To stop: do nothing" in body
    assert "What was seen:" in body and "What was decided: region-recovery" in body


def test_a_failed_start_is_retried_once_by_a_later_check(clients: ClientFactory, world: World) -> None:
    settings = world.settings  # auto
    inbox = subscribe_inbox(clients, settings.topic_arn, "retry-inbox")
    clock = far_future_clock()
    attempts: list[str] = []

    def failing(incident: Incident, *, await_approval: bool) -> str:
        attempts.append(incident.incident_id)
        raise RuntimeError("ledger throttled")

    health = json.loads((FIXTURES / "health_ec2_issue_primary.json").read_text())
    answer = handle_health_event(settings, clients, clock, failing, health, stage="prod")
    assert answer["decision"] == "region-recovery" and answer["execution_id"] is None
    assert "ledger throttled" in answer["start_error"]
    [(_, body)] = inbox()
    assert "Starting the recovery FAILED" in body and "jams-dr recover --stage prod" in body

    starter = CountingStarter()
    claim = start_claim(settings).total_seconds()
    assert claim <= 30  # within one watcher period (one minute)
    clock.advance(claim * 0.9)  # checks within the claim leave the start to its holder
    assert run_watcher(settings, clients, clock, starter).execution_id is None and starter.calls == []
    clock.advance(claim * 0.2)
    results = fire_concurrently(10, lambda: run_watcher(settings, clients, clock, starter))
    assert len(starter.calls) == 1 and starter.calls[0][0].incident_id == attempts[0]
    final = run_watcher(settings, clients, clock, starter)
    assert final.execution_id == f"rec-{attempts[0]}" and final.start_error is None
    assert any(r.execution_id for r in results)
    [(subject, body)] = inbox()
    assert "started" in subject and f"rec-{attempts[0]}" in body
