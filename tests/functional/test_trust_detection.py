"""Issue 12, defects 1 and 4, through the watcher's entry points against the embedded two-region AWS:

- the primary region's CloudWatch reads fail while JAMS beats: detection reads the recovery region's copy,
  never decides a failure from it, and tells the on-call once;
- beats that reach the primary's copy only are a partition to report, not a failure;
- a watcher that dies between the decision and the start is resumed by the next check, within one period.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock, SystemClock
from chalicelib.detection.heartbeats import publish_heartbeat
from chalicelib.detection.incident import Incident
from chalicelib.detection.store import read_watch_state
from chalicelib.detection.triggers import handle_health_event
from chalicelib.detection.watcher import run_watcher
from chalicelib.settings import Settings
from jamsdr.embedded import World
from jamsdr.faults import Fault
from tests.conftest import PRIMARY, RECOVERY
from tests.functional.test_detection_fleet import (  # noqa: F401 - the module world's fixtures
    FIXTURES,
    CountingStarter,
    clients,
    embedded,
    shared,
    subscribe_inbox,
    world,
)


class LambdaKilled(BaseException):
    """The invocation ends here (timeout, out of memory): nothing after it in the handler runs."""


def refusing_starter(incident: Incident, *, await_approval: bool) -> str:
    raise AssertionError(f"no recovery may start: {incident.incident_id} (approval {await_approval})")


@pytest.fixture
def faults(embedded: Any) -> Iterator[Any]:  # noqa: F811
    yield embedded
    embedded.clear_faults()


def beat(factory: ClientFactory, settings: Settings, clock: FakeClock, *, seconds: int,
         regions: tuple[str, ...] = (PRIMARY, RECOVERY)) -> None:
    """Both schedulers beat once a second for the ``seconds`` before the clock's now, into ``regions``."""
    for back in range(seconds, -1, -1):
        at = FakeClock(clock.now() - timedelta(seconds=back))
        for role in ("primary", "failover"):
            for region in regions:
                publish_heartbeat(factory, region, settings.environment, role, at, interval_seconds=1)


def fresh_clock(days: int) -> FakeClock:
    """A moment no other test beat in (each test its own day ahead)."""
    return FakeClock(SystemClock().now().replace(microsecond=0) + timedelta(days=days))


def test_a_primary_monitoring_outage_never_starts_a_recovery(
    faults: Any, clients: ClientFactory, world: World  # noqa: F811
) -> None:
    settings = world.settings  # auto mode: a wrong decision would start a recovery at once
    inbox = subscribe_inbox(clients, settings.topic_arn, "monitoring-inbox")
    clock = fresh_clock(3)
    beat(clients, settings, clock, seconds=8)
    assert run_watcher(settings, clients, clock, refusing_starter).decision == "healthy"
    faults.fail_monitoring(PRIMARY)
    results = []
    # Ten checks a period apart, then checks after 5- and 10-minute gaps (a throttled or late watcher).
    for step in [1] * 10 + [300, 600]:
        clock.advance(step)
        beat(clients, settings, clock, seconds=min(step, 8))
        results.append(run_watcher(settings, clients, clock, refusing_starter))
    assert {r.decision for r in results} == {"healthy"}
    assert all(r.counts["unreachable_checks"] == 0 and r.counts["region_answers"] for r in results)
    assert all(r.counts["primary_missed"] == 0 for r in results)
    state = read_watch_state(settings, clients)
    assert state is not None and state.heartbeat_trouble is not None
    assert any(f"in {PRIMARY}: failed (Unreachable)" in t for t in state.heartbeat_trouble["tried"])
    assert any(f.operation == "GetMetricData" and f.region == PRIMARY for f in faults.injected_faults)
    messages = inbox()
    assert [subject for subject, _ in messages] == [f"jams-dr {settings.environment}: heartbeats unreadable"]
    assert "What was tried:" in messages[0][1] and f"GetMetricData JAMS/Heartbeat in {PRIMARY}" in messages[0][1]


def test_silence_in_the_recovery_copy_and_an_unanswering_primary_is_still_a_region_loss(
    faults: Any, clients: ClientFactory, world: World  # noqa: F811
) -> None:
    settings = world.settings
    starter = CountingStarter()
    clock = fresh_clock(4)
    beat(clients, settings, clock, seconds=8)
    assert run_watcher(settings, clients, clock, starter).decision == "healthy"
    faults.take_region_down(PRIMARY)  # every API of the primary refuses: its copy and the probe
    decisions = []
    for _ in range(8):
        clock.advance(1)
        decisions.append(run_watcher(settings, clients, clock, starter).decision)
    assert decisions[-1] == "region-recovery" and "jams-failover" not in decisions
    assert len(starter.calls) == 1


def test_beats_that_reach_the_primarys_copy_only_are_a_partition_not_a_failure(
    faults: Any, clients: ClientFactory, world: World  # noqa: F811
) -> None:
    settings = world.settings
    inbox = subscribe_inbox(clients, settings.topic_arn, "partition-inbox")
    clock = fresh_clock(5)
    beat(clients, settings, clock, seconds=8)
    run_watcher(settings, clients, clock, refusing_starter)
    results = []
    for _ in range(8):  # the beats stop arriving in the recovery region
        clock.advance(1)
        beat(clients, settings, clock, seconds=1, regions=(PRIMARY,))
        results.append(run_watcher(settings, clients, clock, refusing_starter))
    assert {r.decision for r in results} == {"healthy"}
    state = read_watch_state(settings, clients)
    assert state is not None and state.partition is not None
    assert state.partition["region"] == RECOVERY and state.partition["schedulers"] == ["primary", "failover"]
    subjects = [subject for subject, _ in inbox()]
    assert subjects == [f"jams-dr {settings.environment}: heartbeats do not reach {RECOVERY}"]


def test_a_watcher_killed_between_decision_and_start_is_resumed_within_one_period(
    clients: ClientFactory, world: World  # noqa: F811
) -> None:
    settings = world.settings  # auto
    clock = fresh_clock(6)

    def killed(incident: Incident, *, await_approval: bool) -> str:
        raise LambdaKilled(incident.incident_id)

    health = json.loads((FIXTURES / "health_ec2_issue_primary.json").read_text())
    with pytest.raises(LambdaKilled):
        handle_health_event(settings, clients, clock, killed, health, stage="prod")
    state = read_watch_state(settings, clients)
    assert state is not None and state.decision == "region-recovery" and state.start_pending
    assert state.execution_id is None
    starter = CountingStarter()
    clock.advance(60)  # the next scheduled check: one watcher period later
    result = run_watcher(settings, clients, clock, starter)
    assert len(starter.calls) == 1 and result.execution_id == f"rec-{state.incident.incident_id}"  # type: ignore[union-attr]


def test_a_decision_notification_refused_by_sns_is_sent_by_the_next_check(
    faults: Any, clients: ClientFactory, world: World  # noqa: F811
) -> None:
    settings = replace(world.settings, failover_mode="notify")  # nothing starts: the message is all there is
    inbox = subscribe_inbox(clients, settings.topic_arn, "lost-decision-inbox")
    clock = fresh_clock(7)
    health = json.loads((FIXTURES / "health_ec2_issue_primary.json").read_text())
    # Two refused Publish calls: the decision's own send and the flush that ends the same check.
    faults.fault_injector.arm([Fault("sns", RECOVERY, "Publish", "5xx", count=2)])
    answer = handle_health_event(settings, clients, clock, refusing_starter, health, stage="prod")
    assert answer["decision"] == "region-recovery" and answer["changed"] and not answer["notified"]
    assert [f.operation for f in faults.injected_faults][-2:] == ["Publish", "Publish"]
    assert inbox() == []  # SNS refused it (after botocore's retries)
    clock.advance(60)
    run_watcher(settings, clients, clock, refusing_starter)  # the next scheduled check
    clock.advance(60)
    run_watcher(settings, clients, clock, refusing_starter)
    [(subject, body)] = inbox()  # delivered once, by the check after the refusal
    assert subject == f"jams-dr {settings.environment}: REGION-RECOVERY (notify)"
    assert "To recover the region: jams-dr recover --stage prod" in body
