"""Counting heartbeats (chalicelib/detection/heartbeats.py): the contract's dimensions, periods, windows, missed beats."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from chalicelib.detection.heartbeats import (
    count_beats,
    dimensions,
    high_resolution,
    missed_since,
    query_period,
    window_at,
)
from tests.unit.detection.support import T0


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


