"""The watcher's pure state transition (chalicelib/detection/transition.py): observations and events in, the next state out."""

from __future__ import annotations

from datetime import datetime, timedelta

from chalicelib.detection.events import (
    classify_health,
    classify_rds,
    parse_health_event,
    parse_rds_event,
)
from chalicelib.detection.heartbeats import (
    HeartbeatCopy,
    HeartbeatReading,
    count_beats,
    window_at,
)
from chalicelib.detection.observe import Observation, Probe
from chalicelib.detection.state import WatchState
from chalicelib.detection.transition import EventInput, evolve
from chalicelib.settings import Settings
from tests.unit.detection.support import PRIMARY, RECOVERY, T0, fixture

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
