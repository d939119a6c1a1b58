"""Issue 12 through the embedded drill behind `jams-dr drill --scenario FILE` (its events are the live view):

- ``failure: monitoring``: the primary region's CloudWatch reads refuse connections for ten heartbeat
  intervals while JAMS beats: the decision stays ``healthy``, nothing starts, the on-call is told once;
- ``failover_mode: approve`` with SNS Publish failing: the approval request still reaches the on-call (the
  outbox re-sends it), the drill approves it and the recovery succeeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jamsdr.drill import DrillEvent, DrillResult, run_embedded_drill
from jamsdr.scenario import parse_scenario


def drill(tmp_path: Path, scenario: dict[str, Any]) -> tuple[DrillResult, list[str], str]:
    events: list[DrillEvent] = []
    result = run_embedded_drill(parse_scenario(scenario), tmp_path, listener=events.append)
    lines = [f"{e.phase}: {e.detail}" for e in events]
    return result, lines, (result.report_dir / "drill.log").read_text(encoding="utf-8")


def test_a_monitoring_outage_drill_stays_healthy_and_tells_once(tmp_path: Path) -> None:
    result, lines, _log = drill(tmp_path, {"failure": "monitoring"})
    report = result.report
    assert result.matches_expectation, lines
    assert (report["decision"], report["outcome"]) == ("healthy", "not-started")
    assert report["steps"] == [] and report["rto_seconds"] is None
    # The watcher's checks, 5 and 10 intervals into the outage, as the live view printed them.
    checks = [line for line in lines if line.startswith("detection: check ")]
    assert checks == [f"detection: check {k}, {k} interval(s) into the failure: healthy" for k in range(1, 11)]
    kinds = [n["kind"] for n in report["notifications"]]
    subjects = [n["subject"] for n in report["notifications"]]
    assert kinds == ["notice"] and subjects == ["jams-dr jams: heartbeats unreadable"]


def test_an_approval_request_refused_by_sns_still_arrives_and_the_recovery_succeeds(tmp_path: Path) -> None:
    # Every Publish of the first four after the failure fails (all attempts): the notice of the unreadable
    # copy, its re-sends and the approval request's first send among them, whatever the order.
    fault = {"service": "sns", "region": "recovery", "operation": "Publish", "error": "5xx", "count": 4}
    result, lines, log = drill(tmp_path, {"failover_mode": "approve", "faults": [fault]})
    report = result.report
    assert result.matches_expectation, lines
    assert (report["decision"], report["outcome"]) == ("region-recovery", "succeeded")
    kinds = [n["kind"] for n in report["notifications"]]
    assert kinds.count("approval-request") == 1  # sent once, however often it was tried
    assert kinds.index("approval-request") < kinds.index("started") < kinds.index("succeeded")
    refused = [line for line in log.splitlines() if "notification not accepted by SNS" in line
               or "notification queued, not sent now" in line]
    assert len(refused) >= 4, refused  # the four faults really hit the notifications
    assert "faults: calls failed on purpose: sns Publish in us-west-2: 5xx x4" in lines
