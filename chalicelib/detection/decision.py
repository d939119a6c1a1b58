"""The failover decision: signals in, one of four decisions out, and what to do about it. Pure.

| signals | decision |
|---|---|
| primary beating | ``healthy`` |
| primary missed >= threshold, failover beating | ``jams-failover`` (JAMS took over in-region) |
| both missed >= threshold, region answers, no regional evidence | ``scheduler-outage`` (restart JAMS) |
| both missed >= threshold and regional evidence: a Health event for EC2/RDS in the primary region, |
|   or primary APIs unreachable for >= 3 checks, or the database unavailable | ``region-recovery`` |

Rules that are not in the table but follow from it:
- Regional evidence never decides alone: Health events are corroboration, an unreachable API without
  missed beats is a network problem of ours, not the region's.
- Heartbeats nobody could read are unknown, not silence: the previous decision is held. "The primary
  region does not answer" is probed through another API family than the heartbeat read (the watcher's
  ``Probe``), so one failing API is never both the symptom and its corroboration.
- Both schedulers silent while the primary API has failed fewer than 3 checks is not yet a decision:
  the previous decision is *held* rather than announcing a scheduler outage that the next check
  would turn into a region recovery.
- ``region-recovery`` is sticky: the incident ends only when the primary scheduler beats again,
  steadily (``threshold`` complete intervals in a row), so an old primary that returns for one beat
  before it is fenced does not close an incident whose recovery is running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chalicelib.detection.incident import Decision

Action = Literal["none", "notify", "start-recovery", "request-approval"]
UNREACHABLE_CHECK_THRESHOLD = 3


@dataclass(frozen=True)
class Signals:
    primary_missed: int
    failover_missed: int
    region_answers: bool = True
    unreachable_checks: int = 0
    health_event: bool = False  # open regional Health issue for EC2/RDS in the primary region
    database_unavailable: bool = False
    primary_streak: int = 0  # complete intervals in a row with a primary beat (ending an incident)
    heartbeats_readable: bool = True  # False: no copy of the metric could be read, the counts are stale


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    held: bool = False  # the previous decision is kept while evidence is incomplete


def region_evidence(signals: Signals, unreachable_threshold: int = UNREACHABLE_CHECK_THRESHOLD) -> list[str]:
    """The corroborating signals that turn two silent schedulers into a region failure."""
    evidence: list[str] = []
    if signals.health_event:
        evidence.append("an open AWS Health issue for EC2/RDS in the primary region")
    if signals.unreachable_checks >= unreachable_threshold:
        evidence.append(f"the primary region's API did not answer {signals.unreachable_checks} checks in a row")
    if signals.database_unavailable:
        evidence.append("the JAMS database is unavailable")
    return evidence


def decide(  # noqa: PLR0911 - a decision table: one return per row reads best
    signals: Signals,
    *,
    threshold: int,
    previous: Decision = "healthy",
    unreachable_threshold: int = UNREACHABLE_CHECK_THRESHOLD,
) -> Verdict:
    if threshold < 1:
        raise ValueError(f"threshold {threshold} must be at least 1")
    primary_silent = signals.primary_missed >= threshold
    failover_silent = signals.failover_missed >= threshold
    beats = f"primary missed {signals.primary_missed}, failover missed {signals.failover_missed} heartbeat(s)"
    if not signals.heartbeats_readable:
        # Unknown is not silence: nothing is decided on heartbeats nobody could read (an incident goes on).
        return Verdict(previous, f"no copy of the heartbeats that the publishers feed can be read (last counts: "
                       f"{beats}); the {previous} decision is kept until one can", held=True)

    if previous == "region-recovery" and (primary_silent or signals.primary_streak < threshold):
        return Verdict(
            "region-recovery",
            f"incident continues ({beats}); it ends when the primary scheduler beats for {threshold} "
            "intervals in a row",
        )
    if not primary_silent:
        note = "; the failover scheduler is silent" if failover_silent else ""
        return Verdict("healthy", f"the primary scheduler is beating ({beats}){note}")
    if not failover_silent and not signals.region_answers:
        # A region whose API does not answer is no in-region failover: the failover's last beats can lag the
        # primary's by an interval (jitter) and stop a check later. Not evidence that JAMS failed over.
        return Verdict(
            previous,
            f"the primary scheduler is silent and the primary region's API did not answer ({beats}); "
            "waiting to see whether the failover scheduler goes silent too",
            held=True,
        )
    if not failover_silent:
        return Verdict("jams-failover", f"the primary scheduler is silent and the failover scheduler beats ({beats})")
    evidence = region_evidence(signals, unreachable_threshold)
    if evidence:
        return Verdict("region-recovery", f"both schedulers are silent ({beats}) and " + " and ".join(evidence))
    if not signals.region_answers:
        return Verdict(
            previous,
            f"both schedulers are silent ({beats}) and the primary region's API did not answer "
            f"{signals.unreachable_checks} check(s); waiting for {unreachable_threshold} before deciding",
            held=True,
        )
    return Verdict(
        "scheduler-outage",
        f"both schedulers are silent ({beats}) while the primary region answers, with no regional "
        "Health event and the database available",
    )


def action_for(decision: Decision, failover_mode: str) -> Action:
    """What a CHANGE to ``decision`` triggers under FAILOVER_MODE (no change triggers nothing)."""
    if decision != "region-recovery":
        return "notify"
    if failover_mode == "auto":
        return "start-recovery"
    if failover_mode == "approve":
        return "request-approval"
    if failover_mode == "notify":
        return "notify"
    raise ValueError(f"failover mode {failover_mode!r} is not one of auto, approve, notify")
