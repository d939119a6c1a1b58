"""The report's arithmetic and its CONTRACT keys (design.md), from ledger items alone (no AWS)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.report import CONTRACT_KEYS, as_plain, build_report, report_key

CONTRACT = (
    "kind", "execution_id", "outcome", "decision", "primary_region", "recovery_region",
    "failure_at", "detected_at", "decided_at", "recovered_at",
    "detection_seconds", "rto_seconds", "rpo_seconds", "snapshot", "stack", "steps", "notifications",
    "isolation", "traffic", "recovery_source", "restored_from",
)


def _entry(name: str, start: str, end: str, outcome: str = "succeeded", attempts: int | Decimal = 1) -> dict[str, Any]:
    return {"name": name, "started_at": start, "ended_at": end, "outcome": outcome, "attempts": attempts,
            "note": "x"}


def _recovery_item(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "pk": "exec#rec-inc1",
        "execution_id": "rec-inc1",
        "kind": "recovery",
        "status": "running",
        "created_at": "2026-01-01T10:06:00.000Z",
        "incident": {
            "incident_id": "inc1", "decision": "region-recovery", "reason": "region down",
            "failure_at": "2026-01-01T10:00:00.000Z", "detected_at": "2026-01-01T10:03:00.000Z",
            "decided_at": "2026-01-01T10:05:00.000Z",
        },
        "history": [
            _entry("preflight", "2026-01-01T10:06:00.000Z", "2026-01-01T10:06:05.000Z"),
            _entry("wait_for_stack", "2026-01-01T10:06:10.000Z", "2026-01-01T11:10:00.000Z", attempts=Decimal(2)),
            _entry("switch_traffic", "2026-01-01T11:20:00.000Z", "2026-01-01T11:21:30.500Z"),
        ],
        "data": {
            "primary_region": "us-east-1", "recovery_region": "us-west-2",
            "snapshot": {"id": "jams-dr-copy", "arn": "arn:aws:rds:us-west-2:123456789012:snapshot:jams-dr-copy",
                         "created_at": "2026-01-01T09:15:00+00:00"},
            "stack": {"name": "jams-app", "region": "us-west-2", "status": "CREATE_COMPLETE", "extra": 1},
        },
    }
    item.update(changes)
    return item


def test_contract_keys_exactly_and_in_order() -> None:
    report = build_report(_recovery_item())
    assert tuple(report) == CONTRACT == CONTRACT_KEYS
    assert set(report["snapshot"]) == {"id", "arn", "created_at"}
    assert set(report["stack"]) == {"name", "region", "status"}
    assert all(set(step) == {"name", "started_at", "ended_at", "outcome", "attempts"} for step in report["steps"])
    assert report["notifications"] == []  # the ledger cannot know what subscribers received
    json.dumps(report)  # serialisable as is


def test_pitr_restore_measures_rpo_from_the_restore_time_used() -> None:
    """RECOVERY_SOURCE=pitr: the RPO is failure_at minus the restore time create_app_stack passed, not the
    pinned snapshot's time; ``snapshot`` stays the pinned snapshot (the checked fallback)."""
    item = _recovery_item()
    item["data"]["recovery_source"] = {
        "requested": "pitr", "used": "pitr", "restore_time": "2026-01-01T09:55:00Z", "reason": None,
        "automated_backups_arn": "arn:aws:rds:us-west-2:123456789012:auto-backup:ab-x"}
    report = build_report(item)
    assert report["rpo_seconds"] == 300.0  # 10:00 - 09:55, where the snapshot would give 2700
    assert report["recovery_source"] == {
        "requested": "pitr", "used": "pitr", "restore_time": "2026-01-01T09:55:00.000Z",
        "automated_backups_arn": "arn:aws:rds:us-west-2:123456789012:auto-backup:ab-x", "reason": None}
    assert report["snapshot"]["id"] == "jams-dr-copy"


def test_pitr_fallback_measures_rpo_from_the_snapshot_and_says_why() -> None:
    item = _recovery_item()
    item["data"]["recovery_source"] = {"requested": "pitr", "used": "snapshot", "restore_time": None,
                                       "automated_backups_arn": None, "reason": "no automated backups"}
    report = build_report(item)
    assert report["rpo_seconds"] == 2700.0  # 10:00 - 09:15, the pinned snapshot
    assert report["recovery_source"]["used"] == "snapshot"
    assert report["recovery_source"]["reason"] == "no automated backups"
    assert build_report(_recovery_item())["recovery_source"] is None  # no source chosen (e.g. a failback)


def test_recovery_arithmetic() -> None:
    report = build_report(_recovery_item())
    assert report["outcome"] == "succeeded"
    assert report["decision"] == "region-recovery"
    assert report["failure_at"] == "2026-01-01T10:00:00.000Z"
    assert report["recovered_at"] == "2026-01-01T11:21:30.500Z"
    assert report["detection_seconds"] == 180.0
    assert report["rto_seconds"] == 81 * 60 + 30.5
    assert report["rpo_seconds"] == 45 * 60.0
    # Timestamps normalised to the report format (UTC, ms, Z).
    assert report["snapshot"]["created_at"] == "2026-01-01T09:15:00.000Z"
    assert report["steps"][1]["attempts"] == 2
    assert report["stack"] == {"name": "jams-app", "region": "us-west-2", "status": "CREATE_COMPLETE"}


def test_failed_recovery_has_no_recovered_time() -> None:
    item = _recovery_item(status="failed")
    item["data"]["failed"] = True
    report = build_report(item)
    assert report["outcome"] == "failed"
    assert report["recovered_at"] is None and report["rto_seconds"] is None
    # Still measured: detection and the data the failure put at risk.
    assert report["detection_seconds"] == 180.0 and report["rpo_seconds"] == 2700.0


def test_running_execution_marked_failed_reports_failed() -> None:
    item = _recovery_item()
    item["data"]["failed"] = True
    assert build_report(item)["outcome"] == "failed"


def test_drill_without_incident_starts_at_the_drill() -> None:
    item = {
        "execution_id": "drill-abc", "kind": "drill", "status": "running",
        "created_at": "2026-02-01T00:00:00Z",
        "history": [
            _entry("verify", "2026-02-01T00:20:00Z", "2026-02-01T00:25:00Z"),
            _entry("switch_traffic", "2026-02-01T00:25:00Z", "2026-02-01T00:26:00Z"),
        ],
        "data": {"snapshot": {"id": "s", "arn": "a", "created_at": "2026-01-31T23:00:00Z"}},
    }
    report = build_report(item)
    assert report["decision"] == "healthy"
    assert report["failure_at"] == report["detected_at"] == report["decided_at"] == "2026-02-01T00:00:00.000Z"
    assert report["detection_seconds"] == 0.0
    assert report["recovered_at"] == "2026-02-01T00:25:00.000Z"  # end of verify, not of any switch
    assert report["rto_seconds"] == 1500.0
    assert report["rpo_seconds"] == 3600.0
    assert report["primary_region"] is None and report["stack"]["name"] is None


def test_drill_with_injected_incident_uses_it() -> None:
    item = {
        "execution_id": "drill-x", "kind": "drill", "status": "succeeded", "created_at": "2026-02-01T00:10:00Z",
        "incident": {"decision": "region-recovery", "failure_at": "2026-02-01T00:00:00Z",
                     "detected_at": "2026-02-01T00:04:00Z", "decided_at": "2026-02-01T00:05:00Z"},
        "history": [_entry("verify", "2026-02-01T00:20:00Z", "2026-02-01T00:30:00Z")],
        "data": {},
    }
    report = build_report(item)
    assert report["decision"] == "region-recovery"
    assert report["detection_seconds"] == 240.0 and report["rto_seconds"] == 1800.0
    assert report["rpo_seconds"] is None  # no snapshot recorded


def test_failback_measures_the_planned_interruption_and_never_a_negative_rpo() -> None:
    item = {
        "execution_id": "fb-1", "kind": "failback", "status": "running", "created_at": "2026-03-01T00:00:00Z",
        "history": [_entry("switch_traffic", "2026-03-01T01:00:00Z", "2026-03-01T01:00:10Z")],
        "data": {"quiesced_at": "2026-03-01T00:05:00Z",
                 # Taken after the schedulers stopped: nothing written after it, so nothing lost.
                 "snapshot": {"id": "s", "arn": "a", "created_at": "2026-03-01T00:06:00Z"}},
    }
    report = build_report(item)
    assert report["failure_at"] == "2026-03-01T00:05:00.000Z"
    assert report["rto_seconds"] == 3310.0
    assert report["rpo_seconds"] == 0.0


def test_manual_recovery_without_failure_time() -> None:
    item = _recovery_item(incident=None)
    report = build_report(item)
    assert report["failure_at"] is None
    assert report["rto_seconds"] is None and report["rpo_seconds"] is None and report["detection_seconds"] is None
    assert report["detected_at"] == report["decided_at"] == "2026-01-01T10:06:00.000Z"
    assert report["decision"] == "region-recovery"


def test_last_successful_switch_counts_after_a_retry() -> None:
    item = _recovery_item()
    item["history"] = [
        _entry("switch_traffic", "2026-01-01T11:00:00Z", "2026-01-01T11:01:00Z", outcome="failed"),
        _entry("switch_traffic", "2026-01-01T12:00:00Z", "2026-01-01T12:00:30Z"),
    ]
    assert build_report(item)["recovered_at"] == "2026-01-01T12:00:30.000Z"


def test_outcome_not_started_for_awaiting_approval() -> None:
    assert build_report(_recovery_item(status="awaiting-approval", history=[]))["outcome"] == "not-started"


def test_report_key_and_bad_ids() -> None:
    assert report_key("rec-inc1") == "reports/rec-inc1/report.json"
    # An operator's incident id may hold ':' (S3 keys avoid it): a dash, and a digest keeps ids apart.
    colon, dash = report_key("rec-inc:1"), report_key("rec-inc-1")
    assert colon.startswith("reports/rec-inc-1-") and colon != dash and ":" not in colon
    for bad in ("", "../etc", "a/b", "x" * 300):
        with pytest.raises(ValueError, match="cannot name a report"):
            report_key(bad)


def test_as_plain_turns_decimals_into_numbers() -> None:
    assert as_plain({"a": [Decimal("1"), Decimal("1.5")], "b": {"c": Decimal(0)}}) == {"a": [1, 1.5], "b": {"c": 0}}
