"""Report files of a drill or recovery: report.json (CONTRACT), report.md, and report.html with an SVG timeline.

The HTML is self-contained (inline CSS and SVG, no scripts, no external assets) so it can be mailed or
attached to a change ticket and still render.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from chalicelib.clock import parse_iso

REPORT_FILES = ("report.json", "report.md", "report.html")
# A failback drill's second report sits next to the recovery's: failback-report.json, .md, .html.
FAILBACK_STEM = "failback-report"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    seconds = float(value)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {rest:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def write_report_files(report: dict[str, Any], directory: Path, stem: str = "report") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / name.replace("report", stem, 1) for name in REPORT_FILES]
    paths[0].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    paths[1].write_text(to_markdown(report))
    paths[2].write_text(to_html(report))
    return paths


def _step_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, int]]:
    rows = []
    for step in report.get("steps", []):
        duration = None
        if step.get("started_at") and step.get("ended_at"):
            duration = (parse_iso(step["ended_at"]) - parse_iso(step["started_at"])).total_seconds()
        rows.append((step["name"], step.get("outcome", ""), fmt_seconds(duration), step.get("started_at") or "",
                     int(step.get("attempts", 1))))
    return rows


def to_markdown(report: dict[str, Any]) -> str:
    snapshot = report.get("snapshot") or {}
    stack = report.get("stack") or {}
    lines = [
        f"# jams-dr {report['kind']} report: {report['outcome']}",
        "",
        f"Execution `{report['execution_id']}`: decision **{report['decision']}**, "
        f"{report['primary_region']} -> {report['recovery_region']}.",
        "",
        "| Measure | Value |",
        "| --- | --- |",
        f"| RTO (failure -> recovered) | {fmt_seconds(report.get('rto_seconds'))} |",
        f"| RPO (snapshot -> failure) | {fmt_seconds(report.get('rpo_seconds'))} |",
        f"| Detection (failure -> detected) | {fmt_seconds(report.get('detection_seconds'))} |",
        f"| Failure at | {report.get('failure_at') or 'n/a'} |",
        f"| Detected at | {report.get('detected_at') or 'n/a'} |",
        f"| Decided at | {report.get('decided_at') or 'n/a'} |",
        f"| Recovered at | {report.get('recovered_at') or 'n/a'} |",
        f"| Snapshot | `{snapshot.get('id') or 'n/a'}` created {snapshot.get('created_at') or 'n/a'} |",
        f"| Stack | `{stack.get('name') or 'n/a'}` in {stack.get('region') or 'n/a'}: {stack.get('status') or 'n/a'} |",
        "",
    ]
    rows = _step_rows(report)
    if rows:
        lines += ["## Steps", "", "| Step | Outcome | Duration | Attempts | Started |", "| --- " * 5 + "|"]
        lines += [f"| {n} | {o} | {d} | {a} | {s} |" for n, o, d, s, a in rows]
        lines.append("")
    lines += _failback_markdown(report)
    point_rows = recovery_point_rows(report)
    if point_rows:
        lines += ["## Recovery point", "", "| What | Found |", "| --- | --- |"]
        lines += [f"| {_md_cell(label)} | {_md_cell(value)} |" for label, value in point_rows]
        lines.append("")
    iso_rows = isolation_rows(report)
    if iso_rows:
        lines += ["## Isolation (read back from AWS)", "", "| Check | Found |", "| --- | --- |"]
        lines += [f"| {_md_cell(label)} | {_md_cell(value)} |" for label, value in iso_rows]
        lines.append("")
    summary, detail = invocation_rows(report)
    if summary:
        lines += ["## Lambda invocations", "", "| Function | Trigger | Invocations | Time |", "| --- " * 4 + "|"]
        lines += [f"| {f} | {t} | {n} | {d} |" for f, t, n, d in summary]
        lines += ["", "| Started | Function | How | Duration | Outcome |", "| --- " * 5 + "|"]
        lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in detail]
        lines.append("")
    lines += ["## Notifications", ""]
    notes = _notification_rows(report)
    if notes:
        lines += ["| Time | Kind | Subject |", "| --- | --- | --- |"]
        lines += [f"| {at} | {kind} | {_md_cell(subject)} |" for at, kind, subject in notes]
    else:
        lines.append(_NO_NOTIFICATIONS)
    lines.append("")
    return "\n".join(lines)


_NO_NOTIFICATIONS = "None: no notification reached the topic (or none was recorded for this run)."

# Scheduled functions run every beat of the drill: counted; the others (the chain, the entry points), and any
# invocation that failed, are listed one by one.
_COUNTED = ("heartbeat_watcher", "snapshot_tick", "execution_sweeper")


_Row4 = tuple[str, str, str, str]
_Row5 = tuple[str, str, str, str, str]


def invocation_rows(report: dict[str, Any]) -> tuple[list[_Row4], list[_Row5]]:
    """``invocations`` (a drill of the deployed topology): per function and trigger, the count, outcomes and
    time; then each invocation of the chain or the entry points, and each failed one."""
    invocations = [i for i in report.get("invocations") or [] if isinstance(i, dict)]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for invocation in invocations:
        groups.setdefault((str(invocation.get("function")), str(invocation.get("trigger"))), []).append(invocation)
    summary = []
    for (function, trigger), runs in sorted(groups.items()):
        outcomes = sorted({str(r.get("outcome")) for r in runs})
        total = sum(float(r.get("duration_seconds") or 0.0) for r in runs)
        summary.append((function, trigger, f"{len(runs)} ({', '.join(outcomes)})", fmt_seconds(total)))
    detail = []
    for invocation in invocations:
        if invocation.get("function") in _COUNTED and invocation.get("outcome") == "ok":
            continue
        how = str(invocation.get("trigger"))
        if invocation.get("invoked_by"):
            how += f" by {invocation['invoked_by']}"
        if invocation.get("duplicate"):
            how += ", duplicate delivery"
        if int(invocation.get("attempt") or 1) > 1:
            how += f", attempt {invocation['attempt']}"
        detail.append((str(invocation.get("started_at")), str(invocation.get("function")), how,
                       fmt_seconds(invocation.get("duration_seconds")), str(invocation.get("outcome"))))
    return summary, detail


def failback_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The failback facts of either report: report.json's ``failback`` section (a failback drill's
    recovery) or a failback report's own data loss and recovery region check; [] for any other report."""
    section = report.get("failback")
    if isinstance(section, dict):
        if section.get("report") is None:
            return [("Failback", f"not run: {section.get('reason') or 'n/a'}")]
        return [("Failback", f"{section.get('outcome')}"
                 + (f" (failed at {section['failed_step']})" if section.get("failed_step") else "")
                 + f", report {section.get('report')}"),
                ("Failback RTO (writes stopped -> traffic back)", fmt_seconds(section.get("rto_seconds"))),
                ("Failback start -> traffic back", fmt_seconds(section.get("duration_seconds"))),
                ("Data-loss window (snapshot -> switch)", fmt_seconds(section.get("data_loss_window_seconds"))),
                ("Data at risk (a writer ran in the window)", fmt_seconds(section.get("data_at_risk_seconds"))),
                ("Recovery region as before", _as_before(section.get("recovery_region_as_before"),
                                                         section.get("differences")))]
    loss, check = report.get("data_loss"), report.get("recovery_region_check")
    if not isinstance(loss, dict) and not isinstance(check, dict):
        return []
    loss = loss if isinstance(loss, dict) else {}
    check = check if isinstance(check, dict) else {}
    rows = [("Failback", f"{report.get('outcome')}, execution {report.get('execution_id')}")]
    if report.get("failed_step"):
        rows.append(("Failed step", f"{report['failed_step']}: {report.get('error') or 'n/a'}"))
    rows += [
        ("RTO (writes stopped -> traffic back)", fmt_seconds(report.get("rto_seconds"))),
        ("Started at", str(report.get("started_at") or "n/a")),
        ("Start -> traffic back", fmt_seconds(report.get("duration_seconds"))),
        ("Failback snapshot", f"{loss.get('snapshot_id') or 'n/a'} requested {loss.get('snapshot_at') or 'n/a'}"),
        ("Writes stopped at", str(loss.get("writes_stopped_at") or "n/a")),
        ("Switched back at", str(loss.get("switched_at") or "n/a")),
        ("Data-loss window (snapshot -> switch)", fmt_seconds(loss.get("window_seconds"))),
        ("Data at risk (a writer ran in the window)", fmt_seconds(loss.get("at_risk_seconds"))),
        (f"Recovery region {check.get('region') or ''} as before".replace("  ", " "),
         _as_before(check.get("as_before"), check.get("differences"))),
    ]
    rows += [("Retained by design", str(item)) for item in check.get("retained") or []]
    return rows


def recovery_point_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """What was restored (report.json ``recovery_source``) and the proof read back from RDS's events
    (``restored_from``); [] when the report has neither (a failback, or a run that stopped before preflight)."""
    rows: list[tuple[str, str]] = []
    source = report.get("recovery_source")
    if isinstance(source, dict):
        used = f"{source.get('used')} (requested {source.get('requested')})"
        if source.get("used") == "pitr":
            used += f", restore time {source.get('restore_time')} from {source.get('automated_backups_arn')}"
        rows.append(("Restored from", used))
        if source.get("reason"):
            rows.append(("Why not the requested source", str(source["reason"])))
    proof = report.get("restored_from")
    if isinstance(proof, dict):
        if proof.get("proven"):
            rows.append(("Proven by RDS event", f"{proof.get('message')} at {proof.get('event_at')}"))
        else:
            rows.append(("Not proven", str(proof.get("reason"))))
    return rows


def isolation_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """A drill's isolation as verified from AWS (report.json ``isolation``); [] when the report has none."""
    isolation = report.get("isolation")
    if not isinstance(isolation, dict):
        return []
    rows = [("Verified", f"{'yes' if isolation.get('verified') else 'no'} at {isolation.get('verified_at') or 'n/a'}"),
            ("Hosts", f"{len(isolation.get('hosts') or [])}, public IPs: {isolation.get('public_ips')}"),
            ("Database publicly accessible", "yes" if isolation.get("db_publicly_accessible") else "no"),
            ("DNS records", str(isolation.get("dns_records")))]
    for group in isolation.get("security_groups") or []:
        rules = [f"in: {r}" for r in group.get("ingress") or []] + [f"out: {r}" for r in group.get("egress") or []]
        rows.append((f"Security group {group.get('id')} ({group.get('role')})", "; ".join(rules) or "no rule"))
    for table in isolation.get("routes") or []:
        rows.append((f"Route table {table.get('route_table')}", "; ".join(table.get("routes") or [])))
    for endpoint in isolation.get("endpoints") or []:
        rows.append((f"Endpoint {endpoint.get('id')}",
                     f"{endpoint.get('service')}, private DNS {endpoint.get('private_dns')}"))
    return rows


def _as_before(as_before: Any, differences: Any) -> str:
    if as_before:
        return "yes"
    listed = [str(d) for d in differences or []]
    return "NO: " + "; ".join(listed) if listed else "NO"


def _failback_markdown(report: dict[str, Any]) -> list[str]:
    rows = failback_rows(report)
    if not rows:
        return []
    return ["## Failback", "", "| Measure | Value |", "| --- | --- |",
            *[f"| {label} | {_md_cell(value)} |" for label, value in rows], ""]


def _notification_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(str(n.get("at") or "n/a"), str(n.get("kind") or ""), str(n.get("subject") or ""))
            for n in report.get("notifications") or [] if isinstance(n, dict)]


def _md_cell(text: str) -> str:
    """One Markdown table cell: a "|" or a newline in a subject would break the table."""
    return " ".join(text.split()).replace("|", "\\|")


@dataclass(frozen=True)
class _Mark:
    label: str
    at: datetime
    color: str


def _marks(report: dict[str, Any]) -> list[_Mark]:
    marks = []
    for key, label, color in (
        ("failure_at", "failure", "#c0392b"),
        ("detected_at", "detected", "#e67e22"),
        ("decided_at", "decided", "#8e44ad"),
        ("recovered_at", "recovered", "#27ae60"),
    ):
        if report.get(key):
            marks.append(_Mark(label, parse_iso(report[key]), color))
    return marks


# The mark labels' rows, 14 px apart above the plot, and the RTO span above them. A label is 12 px text:
# its width is estimated generously (DejaVu Sans, Chromium's default sans-serif on Debian, averages under
# 7 px a character at 12 px); tests/browser checks the real layout in Chromium.
_LABEL_ROW_STEP = 14
_MIN_LABEL_ROWS = 2
_CHAR_WIDTH = 7.0
_LABEL_PAD = 6.0


def _label_width(label: str) -> float:
    return _CHAR_WIDTH * len(label)


def _label_rows(labels: list[tuple[str, float]]) -> list[int]:
    """The row of each mark label (0 lowest): the lowest row where it overlaps no earlier label. Marks at
    the same instant (a plain drill's failure, detection and decision) stack, however many there are."""
    taken: list[list[tuple[float, float]]] = []
    chosen = []
    for label, position in labels:
        half = _label_width(label) / 2 + _LABEL_PAD
        span = (position - half, position + half)
        row = next((r for r, spans in enumerate(taken) if all(span[1] <= a or span[0] >= b for a, b in spans)),
                   len(taken))
        if row == len(taken):
            taken.append([])
        taken[row].append(span)
        chosen.append(row)
    return chosen


def _place_labels(marks: list[_Mark], positions: list[float], width: int) -> tuple[list[float], list[int], int]:
    """Each mark label's x (centred on its mark, moved in where it would cross the SVG's edge), its row, and
    the baseline of the lowest row (the RTO label sits at 12 over its line at 16, the rows below it)."""
    label_at = [min(max(at, _label_width(m.label) / 2 + 2), width - _label_width(m.label) / 2 - 2)
                for m, at in zip(marks, positions, strict=True)]
    label_rows = _label_rows([(m.label, at) for m, at in zip(marks, label_at, strict=True)])
    rows_of_labels = max([_MIN_LABEL_ROWS, *(r + 1 for r in label_rows)])
    return label_at, label_rows, 16 + _LABEL_ROW_STEP * rows_of_labels


def timeline_svg(report: dict[str, Any], width: int = 960) -> str:
    """A timeline: one bar per step, the failure/detection/decision/recovery marks, RTO and RPO spans."""
    steps = [s for s in report.get("steps", []) if s.get("started_at")]
    marks = _marks(report)
    moments = [m.at for m in marks]
    for step in steps:
        moments.append(parse_iso(step["started_at"]))
        if step.get("ended_at"):
            moments.append(parse_iso(step["ended_at"]))
    snapshot_text = (report.get("snapshot") or {}).get("created_at")
    snapshot_at = parse_iso(snapshot_text) if snapshot_text else None
    if not moments:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" role="img"></svg>'
    start, end = min(moments), max(moments)
    span = max((end - start).total_seconds(), 1.0)
    # The snapshot may be hours older than the incident: show it on the axis only when it fits.
    rpo_inline = snapshot_at is not None and (start - snapshot_at).total_seconds() <= span * 2
    if rpo_inline and snapshot_at is not None:
        start = min(start, snapshot_at)
        span = max((end - start).total_seconds(), 1.0)
    left, right, row = 170, 30, 22
    plot = width - left - right

    def x(at: datetime) -> float:
        return left + plot * (at - start).total_seconds() / span

    label_at, label_rows, labels_y = _place_labels(marks, [x(m.at) for m in marks], width)
    top = labels_y + 26
    height = top + row * (len(steps) + 1) + 76
    axis_y = height - 56

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="recovery timeline" font-family="sans-serif" '
        'font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" stroke="#555"/>',
    ]
    for tick in range(6):
        tx = left + plot * tick / 5
        parts.append(f'<line x1="{tx:.1f}" y1="{axis_y - 4}" x2="{tx:.1f}" y2="{axis_y + 4}" stroke="#555"/>')
        parts.append(f'<text x="{tx:.1f}" y="{axis_y + 18}" text-anchor="middle" fill="#333">'
                     f'+{fmt_seconds(span * tick / 5)}</text>')
    for index, step in enumerate(steps):
        y = top + row * index
        s_at = parse_iso(step["started_at"])
        e_at = parse_iso(step["ended_at"]) if step.get("ended_at") else end
        x1, x2 = x(s_at), max(x(e_at), x(s_at) + 2)
        color = "#2e86c1" if step.get("outcome") in ("succeeded", "skipped") else "#c0392b"
        parts.append(f'<text x="{left - 8}" y="{y + 14}" text-anchor="end" fill="#222">'
                     f'{html.escape(str(step["name"]))}</text>')
        parts.append(f'<rect class="step" x="{x1:.1f}" y="{y + 3}" width="{x2 - x1:.1f}" height="{row - 8}" '
                     f'fill="{color}" rx="2"><title>{html.escape(str(step["name"]))}: '
                     f'{html.escape(str(step.get("outcome", "")))}, attempts {step.get("attempts", 1)}</title></rect>')
    for mark, at, label_row in zip(marks, label_at, label_rows, strict=True):
        mx = x(mark.at)
        parts.append(f'<line class="mark" x1="{mx:.1f}" y1="{labels_y + 4}" x2="{mx:.1f}" y2="{axis_y}" '
                     f'stroke="{mark.color}" stroke-width="2" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{at:.1f}" y="{labels_y - _LABEL_ROW_STEP * label_row}" text-anchor="middle" '
                     f'fill="{mark.color}">{mark.label}</text>')
    by_label = {m.label: m for m in marks}
    if "failure" in by_label and "recovered" in by_label:
        x1, x2 = x(by_label["failure"].at), x(by_label["recovered"].at)
        parts.append(f'<line x1="{x1:.1f}" y1="16" x2="{x2:.1f}" y2="16" stroke="#27ae60" stroke-width="3"/>')
        parts.append(f'<text id="rto" x="{(x1 + x2) / 2:.1f}" y="12" text-anchor="middle" fill="#1e8449" '
                     f'font-weight="bold">RTO {fmt_seconds(report.get("rto_seconds"))}</text>')
    if "failure" in by_label and snapshot_at:
        fx = x(by_label["failure"].at)
        sx = x(snapshot_at) if rpo_inline and snapshot_at is not None else left
        label = f"RPO {fmt_seconds(report.get('rpo_seconds'))}" + ("" if rpo_inline else " (snapshot off-axis)")
        parts.append(f'<line x1="{sx:.1f}" y1="{height - 8}" x2="{fx:.1f}" y2="{height - 8}" stroke="#c0392b" '
                     'stroke-width="3"/>')
        parts.append(f'<text id="rpo" x="{sx + 4:.1f}" y="{height - 14}" fill="#922b21" font-weight="bold">'
                     f'{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
.succeeded { color: #1e8449; } .failed { color: #c0392b; } .not-started { color: #7f8c8d; }
.kpi { display: inline-block; margin-right: 2em; font-size: 1.2em; }
"""


def to_html(report: dict[str, Any]) -> str:
    esc = html.escape
    outcome = esc(str(report["outcome"]))
    kpis = "".join(
        f'<span class="kpi"><b>{name}</b> {fmt_seconds(report.get(key))}</span>'
        for name, key in (("RTO", "rto_seconds"), ("RPO", "rpo_seconds"), ("Detection", "detection_seconds"))
    )
    facts = "".join(
        f"<tr><th>{esc(label)}</th><td>{esc(str(value if value is not None else 'n/a'))}</td></tr>"
        for label, value in (
            ("Execution", report.get("execution_id")),
            ("Decision", report.get("decision")),
            ("Regions", f"{report.get('primary_region')} -> {report.get('recovery_region')}"),
            ("Failure at", report.get("failure_at")),
            ("Detected at", report.get("detected_at")),
            ("Decided at", report.get("decided_at")),
            ("Recovered at", report.get("recovered_at")),
            ("Snapshot", (report.get("snapshot") or {}).get("id")),
            ("Snapshot created", (report.get("snapshot") or {}).get("created_at")),
            ("Stack", f"{(report.get('stack') or {}).get('name')} ({(report.get('stack') or {}).get('status')})"),
        )
    )
    steps = "".join(
        f"<tr><td>{esc(n)}</td><td class=\"{esc(o)}\">{esc(o)}</td><td>{esc(d)}</td><td>{a}</td></tr>"
        for n, o, d, _s, a in _step_rows(report)
    )
    fb_rows = failback_rows(report)
    failback = (
        "<h2>Failback</h2><table class=\"failback\">"
        + "".join(f"<tr><th>{esc(label)}</th><td>{esc(value)}</td></tr>" for label, value in fb_rows)
        + "</table>"
    ) if fb_rows else ""
    point_rows = recovery_point_rows(report)
    if point_rows:
        failback += ("<h2>Recovery point</h2><table class=\"recovery-point\">"
                     + "".join(f"<tr><th>{esc(label)}</th><td>{esc(value)}</td></tr>" for label, value in point_rows)
                     + "</table>")
    iso_rows = isolation_rows(report)
    if iso_rows:
        failback += ("<h2>Isolation (read back from AWS)</h2><table class=\"isolation\">"
                     + "".join(f"<tr><th>{esc(label)}</th><td>{esc(value)}</td></tr>" for label, value in iso_rows)
                     + "</table>")
    summary, detail = invocation_rows(report)
    if summary:
        failback += ("<h2>Lambda invocations</h2><table class=\"invocations\"><tr><th>Function</th><th>Trigger</th>"
                     "<th>Invocations</th><th>Time</th></tr>"
                     + "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in summary)
                     + "</table><table class=\"invocations\"><tr><th>Started</th><th>Function</th><th>How</th>"
                     "<th>Duration</th><th>Outcome</th></tr>"
                     + "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in detail)
                     + "</table>")
    notes = _notification_rows(report)
    notifications = (
        "<table class=\"notifications\"><tr><th>Time</th><th>Kind</th><th>Subject</th></tr>"
        + "".join(f"<tr><td>{esc(at)}</td><td>{esc(kind)}</td><td>{esc(subject)}</td></tr>"
                  for at, kind, subject in notes)
        + "</table>"
    ) if notes else f"<p class=\"notifications\">{esc(_NO_NOTIFICATIONS)}</p>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>jams-dr {esc(str(report['kind']))} {esc(str(report['execution_id']))}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>jams-dr {esc(str(report['kind']))}: <span class=\"{outcome}\">{outcome}</span></h1>"
        f"<p>{kpis}</p>"
        f"<h2>Timeline</h2>{timeline_svg(report)}"
        f"<h2>Facts</h2><table>{facts}</table>{failback}"
        "<h2>Steps</h2><table><tr><th>Step</th><th>Outcome</th><th>Duration</th><th>Attempts</th></tr>"
        f"{steps}</table>"
        f"<h2>Notifications</h2>{notifications}</body></html>\n"
    )


# What every rendering of a report reads (the rest is optional): a file without them is not a report.
REQUIRED_FIELDS = ("kind", "outcome", "decision", "execution_id", "primary_region", "recovery_region")


def report_problem(data: Any) -> str | None:
    """Why ``data`` (a parsed report file) cannot be rendered, or None when it can."""
    if not isinstance(data, dict):
        return f"not a JSON object but {type(data).__name__}"
    missing = [name for name in REQUIRED_FIELDS if not isinstance(data.get(name), str)]
    if missing:
        return f"no {', '.join(missing)} (not a jams-dr report, or a damaged one)"
    if not isinstance(data.get("steps", []), list):
        return "steps is not a list"
    return None


def load_history(directory: Path, skipped: list[tuple[Path, str]] | None = None) -> list[dict[str, Any]]:
    """Every report.json under ``directory`` (one folder per run), oldest first; a file that is not a
    readable report is left out, with the reason in ``skipped``."""
    reports = []
    paths = [*directory.glob("*/report.json"), *directory.glob(f"*/{FAILBACK_STEM}.json")]
    for path in sorted(paths):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problem: str | None = f"unreadable: {exc}"
        else:
            problem = report_problem(data)
        if problem is not None:
            if skipped is not None:
                skipped.append((path, problem))
            continue
        data["_path"] = str(path)
        reports.append(data)
    # A partial report (Ctrl-C before any decision) sorts by its interruption.
    reports.sort(key=lambda r: r.get("decided_at") or r.get("failure_at") or (r.get("interrupted") or {}).get("at")
                 or "")
    return reports


_SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None]) -> str:
    real = [v for v in values if v is not None]
    if not real:
        return ""
    low, high = min(real), max(real)
    scale = (high - low) or 1.0
    return "".join(" " if v is None else _SPARK[int((v - low) / scale * (len(_SPARK) - 1))] for v in values)
