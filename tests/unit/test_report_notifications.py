"""The report's ``notifications`` (CONTRACT): in report.json, and as a section of report.md and report.html."""

from __future__ import annotations

import html
from typing import Any

from chalicelib.report import build_report
from jamsdr.report_render import to_html, to_markdown

ITEM: dict[str, Any] = {
    "pk": "exec#drill-n1", "execution_id": "drill-n1", "kind": "drill", "status": "succeeded",
    "created_at": "2026-01-01T10:00:00.000Z", "history": [], "data": {},
}
RECEIVED = [
    {"at": "2026-01-01T10:05:00.000Z", "kind": "succeeded", "subject": "jams-dr drill drill-n1 succeeded",
     "extra": "dropped"},
    {"at": "2026-01-01T10:00:00.5+00:00", "kind": "started", "subject": "jams-dr drill drill-n1 started"},
    {"at": "2026-01-01T10:01:00.000Z", "kind": "notice", "subject": "a | pipe <b>and</b> markup"},
]


def test_the_report_has_an_empty_list_when_nothing_was_received() -> None:
    assert build_report(ITEM)["notifications"] == []


def test_received_notifications_are_reported_in_time_order_with_exactly_at_kind_subject() -> None:
    report = build_report(ITEM, RECEIVED)

    assert report["notifications"] == [
        {"at": "2026-01-01T10:00:00.500Z", "kind": "started", "subject": "jams-dr drill drill-n1 started"},
        {"at": "2026-01-01T10:01:00.000Z", "kind": "notice", "subject": "a | pipe <b>and</b> markup"},
        {"at": "2026-01-01T10:05:00.000Z", "kind": "succeeded", "subject": "jams-dr drill drill-n1 succeeded"},
    ]


def test_markdown_has_a_notifications_table_and_stays_a_table_with_a_pipe_in_a_subject() -> None:
    markdown = to_markdown(build_report(ITEM, RECEIVED))

    section = markdown.split("## Notifications\n", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[:2] == ["| Time | Kind | Subject |", "| --- | --- | --- |"]
    assert lines[2] == "| 2026-01-01T10:00:00.500Z | started | jams-dr drill drill-n1 started |"
    assert lines[3] == "| 2026-01-01T10:01:00.000Z | notice | a \\| pipe <b>and</b> markup |"
    assert all(line.replace("\\|", "").count("|") == 4 for line in lines)


def test_markdown_and_html_say_so_when_there_were_none() -> None:
    report = build_report(ITEM)
    assert "## Notifications\n\nNone: no notification reached the topic" in to_markdown(report)
    page = to_html(report)
    assert "<h2>Notifications</h2><p class=\"notifications\">None: no notification reached the topic" in page


def test_html_lists_the_notifications_escaped() -> None:
    page = to_html(build_report(ITEM, RECEIVED))

    section = page.split("<h2>Notifications</h2>", 1)[1]
    assert section.count("<tr>") == 4  # header + three
    assert "<td>2026-01-01T10:00:00.500Z</td><td>started</td><td>jams-dr drill drill-n1 started</td>" in section
    assert html.escape("a | pipe <b>and</b> markup") in section and "<b>and</b>" not in section


def test_a_report_from_before_notifications_existed_still_renders() -> None:
    old = {k: v for k, v in build_report(ITEM).items() if k != "notifications"}
    assert "None: no notification reached the topic" in to_markdown(old)
    assert "None: no notification reached the topic" in to_html(old)
