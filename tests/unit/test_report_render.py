from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from jamsdr.report_render import (
    fmt_seconds,
    load_history,
    sparkline,
    timeline_svg,
    to_html,
    to_markdown,
    write_report_files,
)

REPORT = {
    "kind": "recovery", "execution_id": "rec-inc-1", "outcome": "succeeded", "decision": "region-recovery",
    "primary_region": "us-east-1", "recovery_region": "us-west-2",
    "failure_at": "2026-01-01T00:00:10.000Z", "detected_at": "2026-01-01T00:00:14.000Z",
    "decided_at": "2026-01-01T00:00:14.500Z", "recovered_at": "2026-01-01T00:00:20.000Z",
    "detection_seconds": 4.0, "rto_seconds": 10.0, "rpo_seconds": 8.0,
    "snapshot": {"id": "jams-dr-1", "arn": "arn:aws:rds:us-west-2:123456789012:snapshot:jams-dr-1",
                 "created_at": "2026-01-01T00:00:02.000Z"},
    "stack": {"name": "jams-app", "region": "us-west-2", "status": "CREATE_COMPLETE"},
    "steps": [
        {"name": "preflight", "started_at": "2026-01-01T00:00:14.600Z", "ended_at": "2026-01-01T00:00:15.000Z",
         "outcome": "succeeded", "attempts": 1},
        {"name": "create_app_stack", "started_at": "2026-01-01T00:00:15.000Z",
         "ended_at": "2026-01-01T00:00:19.000Z", "outcome": "succeeded", "attempts": 2},
    ],
}


def test_svg_timeline_is_valid_xml_with_steps_marks_rto_and_rpo() -> None:
    svg = timeline_svg(REPORT)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    rects = [r for r in root.iter(f"{ns}rect") if r.get("class") == "step"]
    assert len(rects) == 2
    texts = {t.get("id"): "".join(t.itertext()) for t in root.iter(f"{ns}text") if t.get("id")}
    assert texts["rto"] == "RTO 10.0 s"
    assert texts["rpo"] == "RPO 8.0 s"
    labels = {"".join(t.itertext()) for t in root.iter(f"{ns}text")}
    assert {"failure", "detected", "decided", "recovered"} <= labels
    # The failure mark sits left of the recovery mark: time runs left to right.
    marks = [float(m.get("x1", "0")) for m in root.iter(f"{ns}line") if m.get("class") == "mark"]
    assert marks == sorted(marks)


def test_marks_at_the_same_moment_get_separate_label_rows() -> None:
    # Detection and decision are usually the same instant: their labels must not print on top of each other.
    svg = timeline_svg(REPORT | {"decided_at": REPORT["detected_at"]})
    ns = "{http://www.w3.org/2000/svg}"
    spots = {"".join(t.itertext()): (t.get("x"), t.get("y")) for t in ET.fromstring(svg).iter(f"{ns}text")}
    assert spots["detected"][0] == spots["decided"][0]
    assert spots["detected"][1] != spots["decided"][1]


def test_html_is_self_contained() -> None:
    page = to_html(REPORT)
    assert "<svg" in page and "RTO" in page
    for external in ("http://", "https://", "<script", "src="):
        assert external not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_files_and_history(tmp_path: Path) -> None:
    for index, rto in enumerate((30.0, 20.0, 10.0)):
        report = dict(REPORT, execution_id=f"rec-{index}", rto_seconds=rto,
                      decided_at=f"2026-01-0{index + 1}T00:00:00.000Z")
        paths = write_report_files(report, tmp_path / f"run-{index}")
        assert [p.name for p in paths] == ["report.json", "report.md", "report.html"]
        assert json.loads(paths[0].read_text()) == report
    history = load_history(tmp_path)
    assert [r["execution_id"] for r in history] == ["rec-0", "rec-1", "rec-2"]
    assert sparkline([r["rto_seconds"] for r in history]) == "█▄▁"


def test_fmt_seconds() -> None:
    assert fmt_seconds(None) == "n/a"
    assert fmt_seconds(4.04) == "4.0 s"
    assert fmt_seconds(125) == "2 min 5 s"
    assert fmt_seconds(7322) == "2 h 2 min"


def test_the_recovery_point_restored_and_its_proof_are_shown() -> None:
    pitr = REPORT | {
        "recovery_source": {"requested": "pitr", "used": "pitr", "restore_time": "2026-01-01T00:00:05.000Z",
                            "automated_backups_arn": "arn:aws:rds:us-west-2:123456789012:auto-backup:ab-1",
                            "reason": None},
        "restored_from": {"proven": True, "message": "Restored from DB instance jams-db to 2026-01-01 00:00:05",
                          "event_at": "2026-01-01T00:00:18.000Z"},
    }
    page, text = to_html(pitr), to_markdown(pitr)
    for shown in ("pitr (requested pitr), restore time 2026-01-01T00:00:05.000Z from "
                  "arn:aws:rds:us-west-2:123456789012:auto-backup:ab-1",
                  "Restored from DB instance jams-db to 2026-01-01 00:00:05 at 2026-01-01T00:00:18.000Z"):
        assert shown in page and shown in text
    fallback = REPORT | {"recovery_source": {"requested": "pitr", "used": "snapshot", "reason": "no backups"},
                         "restored_from": {"proven": False, "reason": "no restore event within 300 s"}}
    assert "Why not the requested source | no backups" in to_markdown(fallback)
    assert "Not proven | no restore event within 300 s" in to_markdown(fallback)
    assert "Recovery point" not in to_markdown(REPORT)  # a report without either keeps its old shape


def _invocation(function: str, trigger: str, at: str, outcome: str = "ok", **extra: object) -> dict[str, object]:
    return {"function": function, "trigger": trigger, "started_at": at, "duration_seconds": 0.5,
            "outcome": outcome, "attempt": 1, "duplicate": False, "invoked_by": None, **extra}


def test_the_lambda_invocations_are_counted_per_function_and_the_chain_listed_one_by_one() -> None:
    report = {**REPORT, "invocations": [
        _invocation("heartbeat_watcher", "schedule", "2026-01-01T00:00:11.000Z"),
        _invocation("heartbeat_watcher", "schedule", "2026-01-01T00:00:12.000Z", "error", attempt=2),
        _invocation("advance_execution", "invoke", "2026-01-01T00:00:15.000Z", invoked_by="execution_sweeper"),
        _invocation("advance_execution", "invoke", "2026-01-01T00:00:18.000Z", invoked_by="advance_execution",
                    duplicate=True),
    ]}
    md = to_markdown(report)
    section = md[md.index("## Lambda invocations"):md.index("## Notifications")]
    assert "| heartbeat_watcher | schedule | 2 (error, ok) | 1.0 s |" in section
    assert "| advance_execution | invoke | 2 (ok) | 1.0 s |" in section
    # The scheduled watcher's good runs are counted only; its failed run and the chain are listed.
    assert "| 2026-01-01T00:00:11.000Z |" not in section
    assert "| 2026-01-01T00:00:12.000Z | heartbeat_watcher | schedule, attempt 2 | 0.5 s | error |" in section
    assert "| 2026-01-01T00:00:15.000Z | advance_execution | invoke by execution_sweeper | 0.5 s | ok |" in section
    assert ("| 2026-01-01T00:00:18.000Z | advance_execution | invoke by advance_execution, duplicate delivery "
            "| 0.5 s | ok |") in section
    page = to_html(report)
    assert page.count('<table class="invocations">') == 2
    assert "<td>invoke by execution_sweeper</td>" in page


def test_a_report_without_invocations_has_no_invocation_section() -> None:
    assert "Lambda invocations" not in to_markdown(REPORT)
    assert 'class="invocations"' not in to_html(REPORT)
