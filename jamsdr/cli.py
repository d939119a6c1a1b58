"""The jams-dr operator CLI (CONTRACT in design.md).

Exit status: 0 when the outcome is the expected one, 1 when it is not, 2 on bad input (click's own
usage errors exit 2 as well), 3 when `status` could read nothing at all (AWS unreachable or refused).
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from chalicelib.clock import parse_iso
from jamsdr.cliutil import EXIT_MISMATCH, EXIT_OK, console, err_console, fail_input, settings_for
from jamsdr.heartbeat import heartbeat
from jamsdr.operate import bootstrap, failback, recover, status
from jamsdr.report_render import FAILBACK_STEM, failback_rows, fmt_seconds, load_history, sparkline
from jamsdr.scenario import ScenarioError, load_scenario


@click.group()
@click.version_option(package_name="jams-dr")
def main() -> None:
    """Cross-region disaster recovery for JAMS on AWS."""


class DrillView:
    """Live table of the drill's phases and the chain's steps, with elapsed times."""

    def __init__(self, out: Console) -> None:
        self._out = out
        self._rows: list[list[str]] = []
        self._index: dict[str, int] = {}
        self._started = datetime.now().astimezone()
        self._lock = threading.Lock()
        self.live: Live | None = None

    def _elapsed(self, at: datetime) -> str:
        return f"{(at - self._started).total_seconds():6.1f} s"

    def _upsert(self, key: str, row: list[str]) -> None:
        with self._lock:
            if key in self._index:
                self._rows[self._index[key]] = row
            else:
                self._index[key] = len(self._rows)
                self._rows.append(row)
        if self.live is not None:
            self.live.update(self.render())

    def on_event(self, event: Any) -> None:
        icon = {"started": "[yellow]…[/]", "done": "[green]✔[/]", "failed": "[red]✘[/]", "info": "[cyan]•[/]"}
        key = event.phase if event.state in ("started", "done", "failed") else f"{event.phase}:{len(self._rows)}"
        self._upsert(key, [self._elapsed(event.at), icon.get(event.state, ""), event.phase, event.detail])

    def on_progress(self, progress: Any) -> None:
        icon = {
            "state-started": "[yellow]…[/]", "state-ended": "[green]✔[/]", "waiting": "[blue]⏳[/]",
            "retrying": "[magenta]↻[/]", "state-failed": "[red]✘[/]", "execution-ended": "[green]■[/]",
        }
        detail = progress.note or progress.kind
        if progress.attempt > 1:
            detail = f"{detail} (attempt {progress.attempt})"
        self._upsert(f"step:{progress.state}", [self._elapsed(progress.at), icon.get(progress.kind, ""),
                                                f"  step {progress.state}", detail])

    def render(self) -> Table:
        table = Table(title="jams-dr drill", expand=False, show_lines=False)
        for column, justify in (("elapsed", "right"), ("", "center"), ("phase / step", "left"), ("detail", "left")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        with self._lock:
            for row in self._rows:
                table.add_row(*row)
        return table


def summary_table(report: dict[str, Any], phase_seconds: dict[str, float],
                  failback_report: dict[str, Any] | None = None) -> Group:
    facts = Table(title="Outcome", show_header=False)
    facts.add_column("what")
    facts.add_column("value")
    for label, value in (
        ("kind", report["kind"]), ("decision", report["decision"]), ("outcome", report["outcome"]),
        ("RTO", fmt_seconds(report.get("rto_seconds"))), ("RPO", fmt_seconds(report.get("rpo_seconds"))),
        ("detection", fmt_seconds(report.get("detection_seconds"))),
        ("snapshot", (report.get("snapshot") or {}).get("id") or "n/a"),
        ("stack", f"{(report.get('stack') or {}).get('name')} ({(report.get('stack') or {}).get('status')})"),
    ):
        facts.add_row(label, str(value))
    steps = Table(title="Steps")
    for column in ("step", "outcome", "duration", "attempts"):
        steps.add_column(column)
    for step in report.get("steps", []):
        duration = None
        if step.get("started_at") and step.get("ended_at"):
            duration = (parse_iso(step["ended_at"]) - parse_iso(step["started_at"])).total_seconds()
        steps.add_row(step["name"], step.get("outcome", ""), fmt_seconds(duration), str(step.get("attempts", 1)))
    phases = Table(title="Phases")
    phases.add_column("phase")
    phases.add_column("seconds", justify="right")
    for name, seconds in phase_seconds.items():
        phases.add_row(name, f"{seconds:.2f}")
    tables: list[Table] = [facts, steps]
    # The failback's own report has every fact of report.json's failback section, and more.
    rows = failback_rows(failback_report) if failback_report else failback_rows(report)
    if rows:
        failback = Table(title="Failback", show_header=False)
        failback.add_column("what")
        failback.add_column("value")
        for label, value in rows:
            failback.add_row(label, value)
        tables.append(failback)
    return Group(*tables, phases)


@main.command()
@click.option("--aws", "use_aws", is_flag=True, help="Run against a real account (needs --stage).")
@click.option("--stage", help="Stage in .chalice/config.json (with --aws).")
@click.option("--scenario", "scenario_path", type=click.Path(path_type=Path), help="Scenario JSON (embedded).")
@click.option("--report-dir", type=click.Path(path_type=Path), default=Path("drill-reports"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout.")
@click.option("--local-runner", is_flag=True, help="With --aws: run the chain in this process, not via Lambda.")
def drill(use_aws: bool, stage: str | None, scenario_path: Path | None, report_dir: Path, as_json: bool,
          local_runner: bool) -> None:
    """Run a full DR drill (embedded two-region AWS by default)."""
    if use_aws:
        from jamsdr.aws_drill import run_aws_drill  # noqa: PLC0415

        if not stage:
            fail_input("--aws needs --stage S (the stage in .chalice/config.json to drill)")
        if scenario_path is not None:
            fail_input("--scenario describes the embedded world; it cannot be used with --aws")
        code = run_aws_drill(settings_for(stage), stage, report_dir, as_json=as_json, local_runner=local_runner,
                             out=err_console if as_json else console)
        sys.exit(code)
    if stage is not None or local_runner:
        fail_input("--stage and --local-runner need --aws (the embedded drill builds its own stage)")
    try:
        scenario = load_scenario(scenario_path)
    except ScenarioError as exc:
        fail_input(str(exc))
    from jamsdr.drill import run_embedded_drill  # noqa: PLC0415 - moto only when drilling

    out = err_console if as_json else console
    view = DrillView(out)
    with Live(view.render(), console=out, refresh_per_second=8, transient=False) as live:
        view.live = live
        try:
            result = run_embedded_drill(scenario, report_dir, listener=view.on_event, progress=view.on_progress)
        finally:
            view.live = None
    out.print()
    out.print(summary_table(result.report, result.phase_seconds, result.failback_report))
    out.print(f"Report: {result.report_dir}/ ({', '.join(p.name for p in result.files)})")
    if as_json:
        click.echo(json.dumps(result.report, indent=2))
    expected = f"{scenario.expected_decision}/{scenario.expected_outcome}"
    actual = f"{result.report['decision']}/{result.report['outcome']}"
    if scenario.failback:
        section = result.report.get("failback") or {}
        expected += "/failback succeeded, recovery region as before"
        actual += (f"/failback {section.get('outcome', 'not-started')}, recovery region "
                   f"{'as before' if section.get('recovery_region_as_before') else 'changed'}")
    if result.matches_expectation:
        out.print(f"[green]As expected:[/] {actual}")
        sys.exit(EXIT_OK)
    out.print(f"[red]Unexpected:[/] {actual}, the scenario expects {expected}")
    sys.exit(EXIT_MISMATCH)


@main.command()
@click.option("--history", "history_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Directory of drill reports (one folder per run).")
@click.argument("report_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
def report(history_dir: Path | None, report_file: Path | None) -> None:
    """Render one report.json again (md + html), or list past drills with their RTO/RPO trend."""
    if history_dir is None and report_file is None:
        fail_input("give a report.json to render, or --history DIR")
    if report_file is not None:
        from jamsdr.report_render import write_report_files  # noqa: PLC0415

        try:
            data = json.loads(report_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            fail_input(f"cannot read {report_file}: {exc}")
        stem = FAILBACK_STEM if report_file.name == f"{FAILBACK_STEM}.json" else "report"
        paths = write_report_files(data, report_file.parent, stem=stem)
        # A failback drill's recovery report names its failback report: render that one too.
        section = data.get("failback") if isinstance(data, dict) else None
        named = section.get("report") if isinstance(section, dict) else None
        companion = report_file.parent / f"{FAILBACK_STEM}.json"
        if stem == "report" and named == companion.name and companion.is_file():
            try:
                paths += write_report_files(json.loads(companion.read_text()), report_file.parent, stem=FAILBACK_STEM)
            except (OSError, json.JSONDecodeError) as exc:
                fail_input(f"cannot read {companion}: {exc}")
        console.print(f"wrote {', '.join(str(p) for p in paths)}")
        return
    assert history_dir is not None
    if not history_dir.is_dir():
        fail_input(f"{history_dir} is not a directory of drill reports")
    reports = load_history(history_dir)
    if not reports:
        fail_input(f"no report.json under {history_dir}/*/")
    table = Table(title=f"{len(reports)} drill(s) in {history_dir}")
    for column in ("decided at", "kind", "decision", "outcome", "RTO", "RPO", "detection", "execution"):
        table.add_column(column)
    for item in reports:
        table.add_row(str(item.get("decided_at") or item.get("failure_at")), item["kind"], item["decision"],
                      item["outcome"], fmt_seconds(item.get("rto_seconds")), fmt_seconds(item.get("rpo_seconds")),
                      fmt_seconds(item.get("detection_seconds")), item["execution_id"])
    console.print(table)
    # Failbacks are listed, but their RTO (a planned interruption) is not a recovery's: trends leave them out.
    trend = [r for r in reports if r.get("kind") != "failback"]
    console.print(f"RTO trend {sparkline([r.get('rto_seconds') for r in trend])}   "
                  f"RPO trend {sparkline([r.get('rpo_seconds') for r in trend])}")



for command in (status, recover, failback, bootstrap):
    main.add_command(command)
main.add_command(heartbeat)
