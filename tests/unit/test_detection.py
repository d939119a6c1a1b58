"""The decision table, heartbeat counting, event models and the watcher's state machine (no AWS)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chalicelib.detection.decision import Signals, action_for, decide, region_evidence
from chalicelib.detection.events import (
    EventError,
    classify_alarm,
    classify_health,
    classify_rds,
    parse_alarm_event,
    parse_health_event,
    parse_rds_event,
)
from chalicelib.detection.heartbeats import (
    HeartbeatCopy,
    HeartbeatReading,
    count_beats,
    dimensions,
    high_resolution,
    missed_since,
    query_period,
    window_at,
)
from chalicelib.detection.observe import Observation, Probe
from chalicelib.detection.state import WatchState
from chalicelib.detection.transition import EventInput, evolve
from chalicelib.settings import Settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"
T = 3
PRIMARY = "us-east-1"
RECOVERY = "us-west-2"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def silent(**extra: Any) -> Signals:
    return Signals(primary_missed=T, failover_missed=T, **extra)


# ---------------------------------------------------------------------------------- decision table


def test_primary_beating_is_healthy() -> None:
    verdict = decide(Signals(primary_missed=0, failover_missed=0), threshold=T)
    assert verdict.decision == "healthy"
    assert not verdict.held


def test_primary_silent_failover_beating_is_jams_failover() -> None:
    assert decide(Signals(primary_missed=T, failover_missed=0), threshold=T).decision == "jams-failover"


def test_both_silent_region_answering_is_scheduler_outage() -> None:
    verdict = decide(silent(), threshold=T)
    assert verdict.decision == "scheduler-outage"
    assert "region answers" in verdict.reason


@pytest.mark.parametrize(
    ("evidence", "expected_words"),
    [
        ({"health_event": True}, "Health"),
        ({"region_answers": False, "unreachable_checks": 3}, "did not answer 3 checks"),
        ({"database_unavailable": True}, "database is unavailable"),
        ({"region_answers": False, "unreachable_checks": 7, "health_event": True}, "Health"),
    ],
)
def test_both_silent_with_regional_evidence_is_region_recovery(evidence: dict[str, Any], expected_words: str) -> None:
    verdict = decide(silent(**evidence), threshold=T)
    assert verdict.decision == "region-recovery"
    assert expected_words in verdict.reason


def test_two_missed_beats_take_no_action() -> None:
    for signals in (
        Signals(primary_missed=2, failover_missed=2),
        Signals(primary_missed=2, failover_missed=2, region_answers=False, unreachable_checks=5, health_event=True,
                database_unavailable=True),
    ):
        assert decide(signals, threshold=T).decision == "healthy"
    assert decide(Signals(primary_missed=T - 1, failover_missed=0), threshold=T).decision == "healthy"


def test_only_the_failover_silent_is_healthy_with_a_note() -> None:
    verdict = decide(Signals(primary_missed=0, failover_missed=10), threshold=T)
    assert verdict.decision == "healthy"
    assert "failover scheduler is silent" in verdict.reason


def test_only_the_primary_silent_never_recovers_the_region_whatever_the_evidence() -> None:
    signals = Signals(primary_missed=9, failover_missed=0, health_event=True, database_unavailable=True)
    assert decide(signals, threshold=T).decision == "jams-failover"


def test_an_unanswering_region_is_no_evidence_that_jams_failed_over() -> None:
    # The region stopped answering moments after the failover's last beat: its beats may stop a check later.
    # Hold (neither jams-failover nor a region recovery) until the evidence settles.
    signals = Signals(primary_missed=9, failover_missed=0, region_answers=False, unreachable_checks=9,
                      health_event=True, database_unavailable=True)
    for previous in ("healthy", "scheduler-outage"):
        verdict = decide(signals, threshold=T, previous=previous)
        assert verdict.decision == previous and verdict.held
        assert "did not answer" in verdict.reason


def test_unreadable_heartbeats_never_decide_whatever_the_evidence() -> None:
    # Counts left over from the last readable check, every piece of regional evidence: still held.
    signals = silent(region_answers=False, unreachable_checks=50, health_event=True, database_unavailable=True,
                     heartbeats_readable=False)
    for previous in ("healthy", "jams-failover", "scheduler-outage", "region-recovery"):
        verdict = decide(signals, threshold=T, previous=previous)
        assert verdict.decision == previous and verdict.held
        assert "can be read" in verdict.reason


def test_region_unreachable_without_missed_beats_is_healthy() -> None:
    signals = Signals(primary_missed=0, failover_missed=0, region_answers=False, unreachable_checks=10)
    assert decide(signals, threshold=T).decision == "healthy"


def test_health_event_alone_never_decides() -> None:
    assert decide(Signals(primary_missed=0, failover_missed=0, health_event=True), threshold=T).decision == "healthy"


def test_both_silent_and_region_not_answering_yet_holds_the_previous_decision() -> None:
    for previous in ("healthy", "jams-failover", "scheduler-outage"):
        verdict = decide(silent(region_answers=False, unreachable_checks=2), threshold=T, previous=previous)
        assert verdict.held
        assert verdict.decision == previous
        assert "waiting for 3" in verdict.reason


def test_beats_resuming_return_to_healthy() -> None:
    for previous in ("jams-failover", "scheduler-outage"):
        assert decide(Signals(primary_missed=0, failover_missed=0), threshold=T, previous=previous).decision == (
            "healthy")


def test_region_recovery_is_sticky_until_the_primary_beats_steadily() -> None:
    # Failover beating again, or the region answering again, does not end the incident.
    assert decide(Signals(primary_missed=T, failover_missed=0), threshold=T,
                  previous="region-recovery").decision == "region-recovery"
    assert decide(silent(), threshold=T, previous="region-recovery").decision == "region-recovery"
    # One beat (an old primary back before it is fenced) does not end it either.
    one_beat = Signals(primary_missed=0, failover_missed=0, primary_streak=1)
    assert decide(one_beat, threshold=T, previous="region-recovery").decision == "region-recovery"
    steady = Signals(primary_missed=0, failover_missed=0, primary_streak=T)
    assert decide(steady, threshold=T, previous="region-recovery").decision == "healthy"


def test_region_evidence_lists_each_signal() -> None:
    assert region_evidence(Signals(0, 0)) == []
    assert len(region_evidence(Signals(0, 0, False, 3, True, True))) == 3
    assert region_evidence(Signals(0, 0, False, 2)) == []


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        decide(silent(), threshold=0)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("auto", "start-recovery"), ("approve", "request-approval"), ("notify", "notify")],
)
def test_action_per_failover_mode(mode: str, expected: str) -> None:
    assert action_for("region-recovery", mode) == expected
    for other in ("healthy", "jams-failover", "scheduler-outage"):
        assert action_for(other, mode) == "notify"


def test_unknown_failover_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="auto, approve, notify"):
        action_for("region-recovery", "yolo")


# ---------------------------------------------------------------------------------- counting


def test_dimensions_are_exactly_the_contract() -> None:
    assert dimensions("jams", "primary") == [{"Name": "Environment", "Value": "jams"},
                                             {"Name": "Scheduler", "Value": "primary"}]
    with pytest.raises(ValueError, match="primary, failover"):
        dimensions("jams", "secondary")
    with pytest.raises(ValueError, match="environment is empty"):
        dimensions("", "primary")


@pytest.mark.parametrize(("interval", "period"), [(60, 60), (120, 120), (1, 1), (5, 5), (10, 10), (45, 5),
                                                  (90, 30), (7, 1), (30, 30)])
def test_query_period_divides_the_interval(interval: int, period: int) -> None:
    assert query_period(interval) == period
    assert interval % period == 0


def test_high_resolution_only_for_sub_minute_intervals() -> None:
    assert high_resolution(1) and high_resolution(30) and high_resolution(90)
    assert not high_resolution(60) and not high_resolution(300)


def test_window_is_epoch_aligned_and_leaves_a_grace() -> None:
    now = T0 + timedelta(minutes=10, seconds=2)
    window = window_at(now, 60, 6, grace_seconds=5)
    # 00:10:02 minus 5 s grace: the interval ending 00:10:00 is not complete yet.
    assert window.complete_end == T0 + timedelta(minutes=9)
    assert window.start == T0 + timedelta(minutes=3)
    window = window_at(now + timedelta(seconds=4), 60, 6, grace_seconds=5)
    assert window.complete_end == T0 + timedelta(minutes=10)


def test_count_beats_from_the_last_complete_interval() -> None:
    window = window_at(T0 + timedelta(seconds=60.5), 10, 6, 0.0)  # complete intervals: [0..60) in six of 10 s
    assert window.start == T0

    def at(*seconds: float) -> list[datetime]:
        return [T0 + timedelta(seconds=s) for s in seconds]

    every = count_beats("primary", window, at(1, 11, 21, 31, 41, 51))
    assert (every.missed, every.streak, every.saturated) == (0, 6, False)
    assert every.last_beat_end == T0 + timedelta(seconds=60)
    stopped = count_beats("primary", window, at(1, 11, 21))  # nothing in [30, 60)
    assert (stopped.missed, stopped.streak) == (3, 0)
    assert stopped.last_beat_end == T0 + timedelta(seconds=30)
    two = count_beats("primary", window, at(1, 11, 21, 31))
    assert two.missed == 2
    nothing = count_beats("primary", window, [])
    assert (nothing.missed, nothing.saturated, nothing.last_beat_end) == (6, True, None)
    # A beat in the interval still running: alive now, whatever the complete intervals say.
    running = count_beats("primary", window, at(1, 60.2))
    assert running.missed == 0
    # One late beat in a gap: the count restarts there.
    gap = count_beats("primary", window, at(1, 11, 41))
    assert (gap.missed, gap.streak) == (1, 0)


def test_missed_since_counts_complete_intervals_after_the_last_known_beat() -> None:
    last = T0 + timedelta(seconds=30)
    assert missed_since(last, T0 + timedelta(seconds=35), 10, 0.5) == 0
    assert missed_since(last, T0 + timedelta(seconds=40.6), 10, 0.5) == 1
    assert missed_since(last, T0 + timedelta(seconds=60.6), 10, 0.5) == 3
    assert missed_since(T0 + timedelta(seconds=90), T0, 10, 0.5) == 0  # a beat "in the future": none missed


# ---------------------------------------------------------------------------------- events


def test_health_event_for_the_primary_region_is_relevant() -> None:
    event = parse_health_event(fixture("health_ec2_issue_primary"))
    assert event.region == "us-west-2"  # delivered there...
    signal = classify_health(event, PRIMARY)  # ...but about us-east-1 (detail.eventRegion)
    assert signal.relevant and signal.open
    assert signal.service == "EC2"
    assert "investigating" in event.description


def test_health_event_for_another_region_is_ignored() -> None:
    signal = classify_health(parse_health_event(fixture("health_ec2_issue_other_region")), PRIMARY)
    assert not signal.relevant and not signal.open
    assert "eu-west-1" in signal.reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"service": "S3"}, "not one JAMS depends on"),
        ({"eventTypeCategory": "scheduledChange"}, "not an issue"),
        ({"eventScopeCode": "NONE"}, "neither PUBLIC nor ACCOUNT_SPECIFIC"),
    ],
)
def test_health_events_that_do_not_concern_jams_are_ignored(change: dict[str, str], reason: str) -> None:
    raw = fixture("health_ec2_issue_primary")
    raw["detail"].update(change)
    signal = classify_health(parse_health_event(raw), PRIMARY)
    assert not signal.relevant
    assert reason in signal.reason


def test_closed_health_event_lowers_the_flag() -> None:
    raw = fixture("health_ec2_issue_primary")
    raw["detail"]["statusCode"] = "closed"
    signal = classify_health(parse_health_event(raw), PRIMARY)
    assert signal.relevant and not signal.open


def test_malformed_health_event_names_the_missing_fields() -> None:
    with pytest.raises(EventError) as caught:
        parse_health_event(fixture("health_malformed"))
    message = str(caught.value)
    assert "detail.eventArn" in message and "detail.communicationId" in message
    with pytest.raises(EventError, match="not a JSON object"):
        parse_health_event(["not", "an", "event"])
    wrong_source = fixture("health_ec2_issue_primary") | {"source": "aws.ec2"}
    with pytest.raises(EventError, match="source"):
        parse_health_event(wrong_source)


def test_alarm_ok_to_alarm_triggers_a_check() -> None:
    signal = classify_alarm(parse_alarm_event(fixture("alarm_ok_to_alarm")), PRIMARY)
    assert signal.trigger
    assert signal.alarm_name == "jams-agents-unhealthy"


def test_alarm_insufficient_data_to_alarm_takes_no_action() -> None:
    signal = classify_alarm(parse_alarm_event(fixture("alarm_insufficient_to_alarm")), PRIMARY)
    assert not signal.trigger
    assert "only OK -> ALARM" in signal.reason


def test_alarm_back_to_ok_and_other_regions_take_no_action() -> None:
    raw = fixture("alarm_ok_to_alarm")
    raw["detail"]["previousState"]["value"], raw["detail"]["state"]["value"] = "ALARM", "OK"
    assert not classify_alarm(parse_alarm_event(raw), PRIMARY).trigger
    other = fixture("alarm_ok_to_alarm") | {"region": "eu-west-1"}
    assert not classify_alarm(parse_alarm_event(other), PRIMARY).trigger
    bad = fixture("alarm_ok_to_alarm")
    bad["detail"]["state"]["value"] = "BROKEN"
    with pytest.raises(EventError, match=r"detail\.state\.value"):
        parse_alarm_event(bad)


def test_rds_multi_az_failover_is_an_az_problem_not_unavailability() -> None:
    signal = classify_rds(parse_rds_event(fixture("rds_multi_az_failover_started")), PRIMARY, "jams-db")
    assert signal.effect == "multi-az-started"
    completed = fixture("rds_multi_az_failover_started")
    completed["detail"]["EventID"] = "RDS-EVENT-0015"
    assert classify_rds(parse_rds_event(completed), PRIMARY, "jams-db").effect == "multi-az-completed"


def test_rds_failure_is_unavailability_of_our_database_only() -> None:
    event = parse_rds_event(fixture("rds_instance_failed"))
    assert classify_rds(event, PRIMARY, "jams-db").effect == "unavailable"
    assert classify_rds(event, PRIMARY, "another-db").effect == "ignored"
    assert classify_rds(event, "eu-west-1", "jams-db").effect == "ignored"


@pytest.mark.parametrize(("identifier", "arn"), [
    ("jams-db", "arn:aws:rds:us-east-1:123456789012:db:jams-db"),
    ("rds:jams-db", "arn:aws:rds:us-east-1:123456789012:db:jams-db"),  # the form of AWS's own examples
    ("rds:jams-db", None),
    ("JAMS-DB", None),  # RDS stores identifiers in lowercase
    ("something-else", "arn:aws:rds:us-east-1:123456789012:db:jams-db"),  # the ARN names the instance
])
def test_rds_events_name_our_database_in_every_documented_form(identifier: str, arn: str | None) -> None:
    raw = fixture("rds_instance_failed")
    raw["detail"]["SourceIdentifier"] = identifier
    if arn is None:
        raw["detail"].pop("SourceArn", None)
    else:
        raw["detail"]["SourceArn"] = arn
    assert classify_rds(parse_rds_event(raw), PRIMARY, "Jams-DB").effect == "unavailable"
    assert classify_rds(parse_rds_event(raw), PRIMARY, "jams-db-2").effect == "ignored"


def test_malformed_rds_event_is_rejected() -> None:
    with pytest.raises(EventError) as caught:
        parse_rds_event(fixture("rds_malformed"))
    assert "detail.EventID" in str(caught.value) and "detail.SourceIdentifier" in str(caught.value)


# ---------------------------------------------------------------------------------- the watcher's state machine

SETTINGS = Settings.defaults(heartbeat_interval_seconds=10, missed_beat_threshold=3, failover_mode="auto")


def reading_at(now: datetime, primary: list[float], failover: list[float], interval: int = 10) -> HeartbeatReading:
    """A reading at ``now`` with beats at the given offsets (seconds from T0)."""
    window = window_at(now, interval, 6, 0.5)

    def beats(offsets: list[float]) -> list[datetime]:
        return [T0 + timedelta(seconds=s) for s in offsets]

    return HeartbeatReading(now, window, count_beats("primary", window, beats(primary)),
                            count_beats("failover", window, beats(failover)))


BEFORE_FAILURE = (list(range(1, 61, 10)), list(range(2, 61, 10)))  # beats of beating_state()


def obs(seconds: float, primary: list[float] | None = None, failover: list[float] | None = None, *,
        down: bool = False, database: bool | None = None) -> Observation:
    """Both copies show the same beats; ``down``: the primary region refuses everything (its copy and the
    probe), and the recovery region's copy shows the beats given (default: those before the failure)."""
    now = T0 + timedelta(seconds=seconds)
    if down:
        beats = (primary, failover) if primary is not None or failover is not None else BEFORE_FAILURE
        recovery = HeartbeatCopy(RECOVERY, reading_at(now, beats[0] or [], beats[1] or []))
        return Observation(now, 0.5, (HeartbeatCopy(PRIMARY, None, "Unreachable"), recovery),
                           Probe(answered=False, error="Unreachable"))
    reading = reading_at(now, primary or [], failover or [])
    probe = Probe(answered=True, database_unavailable=database) if database is not None else None
    return Observation(now, 0.5, (HeartbeatCopy(PRIMARY, reading), HeartbeatCopy(RECOVERY, reading)), probe)


def run(state: WatchState, observation: Observation, inputs: EventInput | None = None) -> WatchState:
    new, _ = evolve(state, observation, inputs or EventInput(), SETTINGS)
    return new


def beating_state() -> WatchState:
    state = WatchState(environment="jams", watch_started_at=T0)
    state = run(state, obs(60.6, list(range(1, 61, 10)), list(range(2, 61, 10))))
    assert state.decision == "healthy" and state.primary_missed == 0
    assert state.primary_last_beat == T0 + timedelta(seconds=60)
    return state


def test_region_failure_creates_one_incident_with_estimated_times() -> None:
    state = beating_state()
    checks = []
    for k in range(1, 6):
        state = run(state, obs(60.6 + 10 * k, down=True))
        checks.append((state.unreachable_checks, state.primary_missed, state.decision))
    # Missed beats are extrapolated from the last beat seen; the third unanswered check with three
    # missed intervals decides, not before.
    assert checks[:3] == [(1, 1, "healthy"), (2, 2, "healthy"), (3, 3, "region-recovery")]
    assert state.incident is not None
    incident = state.incident
    assert incident.failure_at == T0 + timedelta(seconds=60)  # end of the last interval with a beat
    assert incident.detected_at == T0 + timedelta(seconds=90.6)  # the check that crossed the threshold
    assert incident.decided_at == T0 + timedelta(seconds=90.6)
    assert state.start_pending  # auto mode: the winner of the write calls the starter
    # Later checks keep the same incident.
    assert checks[3][2] == checks[4][2] == "region-recovery"


def test_concurrent_unanswered_checks_count_once() -> None:
    state = beating_state()
    observation = obs(70.6, down=True)
    for _ in range(10):  # ten deliveries of the same trigger at the same moment
        state = run(state, observation)
    assert state.unreachable_checks == 1
    state = run(state, obs(71.0, down=True))  # less than half an interval later
    assert state.unreachable_checks == 1
    state = run(state, obs(76.0, down=True))
    assert state.unreachable_checks == 2


def test_stale_observation_does_not_roll_counters_back() -> None:
    state = beating_state()
    later = run(state, obs(100.6, [1, 11, 21, 31, 41, 51], [2, 12, 22, 32, 42, 52]))
    assert later.primary_missed == 4  # [60, 100) without a beat
    again = run(later, obs(80.6, list(range(1, 81, 10)), list(range(2, 81, 10))))
    assert again.primary_missed == 4
    assert again.checked_at == later.checked_at


def test_duplicate_health_events_are_idempotent_in_the_state() -> None:
    signal = classify_health(parse_health_event(fixture("health_ec2_issue_primary")), PRIMARY)
    state = beating_state()
    once = run(state, obs(61.0, list(range(1, 61, 10)), list(range(2, 61, 10))), EventInput(health=signal))
    twice = run(once, obs(61.0, list(range(1, 61, 10)), list(range(2, 61, 10))), EventInput(health=signal))
    assert once.health is not None and twice.health == once.health
    assert twice.decision == once.decision == "healthy"  # Health alone never decides


def test_health_flag_with_silent_schedulers_is_region_recovery_and_expires() -> None:
    signal = classify_health(parse_health_event(fixture("health_ec2_issue_primary")), PRIMARY)
    state = beating_state()
    state = run(state, obs(61.0, list(range(1, 61, 10)), list(range(2, 61, 10))), EventInput(health=signal))
    silent_obs = obs(100.6, list(range(1, 61, 10)), list(range(2, 61, 10)), database=False)
    assert run(state, silent_obs).decision == "region-recovery"
    expired = run(state, obs(61.0 + 5 * 3600, [], [], database=False))
    assert expired.health is None
    assert expired.decision == "scheduler-outage"


def test_database_probe_overrides_a_stale_rds_flag() -> None:
    failed = classify_rds(parse_rds_event(fixture("rds_instance_failed")), PRIMARY, "jams-db")
    state = run(beating_state(), obs(61.0, list(range(1, 61, 10)), list(range(2, 61, 10))), EventInput(rds=failed))
    assert state.database is not None
    silent_60 = (list(range(1, 61, 10)), list(range(2, 61, 10)))
    assert run(state, obs(100.6, *silent_60, database=True)).decision == "region-recovery"
    available = run(state, obs(100.6, *silent_60, database=False))
    assert available.decision == "scheduler-outage"
    assert available.database is None


def test_the_incident_ends_when_the_primary_beats_steadily_again() -> None:
    state = beating_state()
    for k in range(1, 4):
        state = run(state, obs(60.6 + 10 * k, down=True))
    assert state.decision == "region-recovery"
    incident_id = state.incident.incident_id if state.incident else None
    # Region back, one beat only: incident continues.
    state = run(state, obs(130.6, [121], []))
    assert state.decision == "region-recovery"
    state = run(state, obs(150.6, [121, 131, 141], [141]))
    assert state.decision == "healthy"
    assert state.incident is None and not state.start_pending
    assert state.last_incident is not None and state.last_incident["incident_id"] == incident_id


def test_notify_mode_creates_the_incident_without_a_pending_start() -> None:
    state = beating_state()
    settings = Settings.defaults(heartbeat_interval_seconds=10, missed_beat_threshold=3, failover_mode="notify")
    for k in range(1, 4):
        state, _ = evolve(state, obs(60.6 + 10 * k, down=True), EventInput(), settings)
    assert state.decision == "region-recovery" and state.incident is not None
    assert not state.start_pending


def test_state_round_trips_through_a_dynamodb_item() -> None:
    state = beating_state()
    for k in range(1, 4):
        state = run(state, obs(60.6 + 10 * k, down=True))
    again = WatchState.from_item(state.to_item())
    assert again == state
    assert state.to_item()["pk"] == {"S": "watch#jams"}
    assert state.to_item()["incident_id"] == {"S": state.incident.incident_id if state.incident else ""}


# ---------------------------------------------------------------------------------- two copies, one probe


def copies_obs(seconds: float, primary_copy: tuple[list[float], list[float]] | None,
               recovery_copy: tuple[list[float], list[float]] | None, probe: Probe | None) -> Observation:
    """An observation with each region's copy given as (primary beats, failover beats), None: unreadable."""
    now = T0 + timedelta(seconds=seconds)

    def copy(region: str, beats: tuple[list[float], list[float]] | None) -> HeartbeatCopy:
        return HeartbeatCopy(region, None, "Unreachable") if beats is None else HeartbeatCopy(
            region, reading_at(now, *beats))

    return Observation(now, 0.5, (copy(PRIMARY, primary_copy), copy(RECOVERY, recovery_copy)), probe)


def beats_until(end: float) -> tuple[list[float], list[float]]:
    return list(range(1, int(end), 10)), list(range(2, int(end), 10))


def test_a_primary_monitoring_outage_never_decides_while_the_recovery_copy_beats() -> None:
    state = beating_state()
    notices = 0
    moments = [60.6 + 10 * k for k in range(1, 13)] + [60.6 + 10 * 12 + 300, 60.6 + 10 * 12 + 600]  # 5-min gaps
    for moment in moments:
        before = state.heartbeat_trouble
        state = run(state, copies_obs(moment, None, beats_until(moment), Probe(answered=True)))
        notices += before is None and state.heartbeat_trouble is not None
        assert state.decision == "healthy", state.last_reason
        assert state.unreachable_checks == 0 and state.region_answers
        assert state.primary_missed == 0 and state.heartbeats_readable
    assert notices == 1  # one episode
    assert state.heartbeat_trouble is not None and not state.heartbeat_trouble["blind"]
    assert any("failed (Unreachable)" in t for t in state.heartbeat_trouble["tried"])
    recovered = run(state, copies_obs(moments[-1] + 10, beats_until(moments[-1] + 10),
                                      beats_until(moments[-1] + 10), None))
    assert recovered.heartbeat_trouble is None


def test_no_readable_copy_holds_the_decision_and_never_counts_silence() -> None:
    state = beating_state()
    for moment in (70.6, 80.6, 90.6, 100.6, 400.6, 1000.6):
        state = run(state, copies_obs(moment, None, None, Probe(answered=False, error="Unreachable")))
        assert state.decision == "healthy" and not state.heartbeats_readable
        assert state.primary_missed == 0  # the counts of the last readable check, not an extrapolation
    assert state.heartbeat_trouble is not None and state.heartbeat_trouble["blind"]


def test_silence_in_the_recovery_copy_with_an_unanswering_primary_is_a_region_loss() -> None:
    state = beating_state()
    for k in range(1, 4):
        state = run(state, copies_obs(60.6 + 10 * k, None, BEFORE_FAILURE, Probe(answered=False, error="Unreachable")))
    assert state.decision == "region-recovery" and state.incident is not None


def test_a_copy_that_never_received_a_beat_is_no_evidence_of_silence() -> None:
    # Publishers that beat into the primary region only: the recovery copy is empty but readable.
    state = WatchState(environment="jams", watch_started_at=T0)
    state = run(state, copies_obs(60.6, BEFORE_FAILURE, ([], []), None))
    assert state.fed_regions == [PRIMARY] and state.decision == "healthy"
    assert state.partition is not None and state.partition["schedulers"] == ["primary", "failover"]
    for moment in (70.6, 80.6, 90.6, 100.6, 110.6):
        state = run(state, copies_obs(moment, None, ([], []), Probe(answered=True)))
        assert state.decision == "healthy" and not state.heartbeats_readable


def test_beats_in_the_primary_copy_only_are_a_partition_not_a_failure() -> None:
    state = beating_state()
    for moment in (70.6, 80.6, 90.6, 100.6, 110.6):
        state = run(state, copies_obs(moment, beats_until(moment), BEFORE_FAILURE, None))
        assert state.decision == "healthy" and state.primary_missed == 0
    assert state.partition is not None and state.partition["region"] == RECOVERY
    assert state.partition["schedulers"] == ["primary", "failover"]
    healed = run(state, copies_obs(120.6, beats_until(120.6), beats_until(120.6), None))
    assert healed.partition is None
