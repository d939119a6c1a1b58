"""The failover decision table (chalicelib/detection/decision.py): signals in, one decision out."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.detection.decision import Signals, action_for, decide, region_evidence
from tests.unit.detection.support import T, silent


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


