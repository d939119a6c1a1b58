"""The jams-dr operator CLI (CONTRACT in design.md).

Exit status (every command, cliutil.EXIT_CODES_HELP): 0 when the outcome is the expected one, 1 when it is
not, 2 on bad input (click's own usage errors exit 2 as well), 3 when AWS is unreachable or refused the
call, 130 when Ctrl-C interrupted it. AWS and network errors end as one line naming what failed, where, and
the fix (cliutil.JamsDrGroup), never a traceback.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from chalicelib.clock import parse_iso
from jamsdr.cliutil import (
    EXIT_BAD_INPUT,
    EXIT_CODES_HELP,
    EXIT_MISMATCH,
    EXIT_OK,
    JamsDrGroup,
    console,
    err_console,
    fail_input,
    print_error,
    settings_for,
)
from jamsdr.heartbeat import heartbeat
from jamsdr.operate import bootstrap, failback, recover, status
from jamsdr.report_render import (
    FAILBACK_STEM,
    failback_rows,
    fmt_seconds,
    load_history,
    report_problem,
    sparkline,
)
from jamsdr.scenario import ScenarioError, load_scenario


@click.group(cls=JamsDrGroup, epilog=EXIT_CODES_HELP)
@click.version_option(package_name="jams-dr")
def main() -> None:
    """Cross-region disaster recovery for JAMS on AWS."""


class DrillLines:
    """The drill's events as plain lines, printed as they happen: what a CI log or a pipe can show (a live
    table redraws in place, which only a terminal can; elsewhere it would print once, at the end)."""

    _STATES = {"state-started": "started", "state-ended": "done", "waiting": "waiting", "retrying": "retrying",
               "state-failed": "failed", "execution-ended": "ended"}

    def __init__(self, out: Console) -> None:
        self._out = out
        self._started = datetime.now().astimezone()
        self._lock = threading.Lock()

    def _line(self, at: datetime, state: str, what: str, detail: str) -> None:
        line = f"{(at - self._started).total_seconds():7.1f} s  {state:<8} {what}  {detail}".rstrip()
        with self._lock:
            # Straight to the stream, not through rich's buffer: a Ctrl-C landing in a print would leave the
            # line in that buffer, and the next print would show it twice.
            self._out.file.write(line + "\n")
            self._out.file.flush()

    def on_event(self, event: Any) -> None:
        self._line(event.at, event.state, event.phase, event.detail)

    def on_progress(self, progress: Any) -> None:
        detail = progress.note + (f" (attempt {progress.attempt})" if progress.attempt > 1 else "")
        what = "execution" if progress.kind == "execution-ended" else f"step {progress.state}"
        self._line(progress.at, self._STATES.get(progress.kind, progress.kind), what, detail)


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
@click.option("--in-process", "in_process", is_flag=True,
              help="Embedded: call the functions' logic from the drill instead of deploying chalice package's "
                   "functions, schedules and rules into the embedded Lambda and EventBridge.")
def drill(use_aws: bool, stage: str | None, scenario_path: Path | None, report_dir: Path, as_json: bool,
          local_runner: bool, in_process: bool) -> None:
    """Run a full DR drill (embedded two-region AWS by default).

    Embedded, the drill deploys what `chalice package` produces into the embedded AWS and lets the
    functions run as in production (schedules, event rules, the chain's Lambda invoking itself, the
    sweeper); the report lists every invocation. --in-process runs the same logic without them."""
    if use_aws and in_process:
        fail_input("--in-process is for the embedded drill; with --aws use --local-runner")
    if use_aws:
        from jamsdr.aws_drill import run_aws_drill  # noqa: PLC0415

        if not stage:
            fail_input("--aws needs --stage S (the stage in .chalice/config.json to drill)")
        if scenario_path is not None:
            fail_input("--scenario describes the embedded world; it cannot be used with --aws")
        writable_report_dir(report_dir)
        code = run_aws_drill(settings_for(stage), stage, report_dir, as_json=as_json, local_runner=local_runner,
                             out=err_console if as_json else console)
        sys.exit(code)
    if stage is not None or local_runner:
        fail_input("--stage and --local-runner need --aws (the embedded drill builds its own stage)")
    try:
        scenario = load_scenario(scenario_path)
    except ScenarioError as exc:
        fail_input(str(exc))
    writable_report_dir(report_dir)
    from jamsdr.drill import run_embedded_drill  # noqa: PLC0415 - moto only when drilling

    out = err_console if as_json else console
    if not out.is_terminal:
        lines = DrillLines(out)
        result = run_embedded_drill(scenario, report_dir, listener=lines.on_event, progress=lines.on_progress,
                                    in_process=in_process)
    else:
        view = DrillView(out)
        with Live(view.render(), console=out, refresh_per_second=8, transient=False) as live:
            view.live = live
            try:
                result = run_embedded_drill(scenario, report_dir, listener=view.on_event, progress=view.on_progress,
                                            in_process=in_process)
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


def writable_report_dir(path: Path) -> None:
    """Exit 2 naming ``path`` before a drill starts, rather than losing its report at the end."""
    if path.exists() and not path.is_dir():
        fail_input(f"--report-dir {path} is not a directory; give a directory the drill may write its runs into")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        fail_input(f"--report-dir {path} cannot be created or written ({exc.strerror or exc}); give a writable "
                   "directory")


@main.command()
@click.option("--history", "history_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Directory of drill reports (one folder per run).")
@click.argument("report_files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
def report(history_dir: Path | None, report_files: tuple[Path, ...]) -> None:
    """Render report.json files again (md + html), or list past drills with their RTO/RPO trend.

    A file that is not a readable report is skipped with a warning naming it; the others are still
    rendered (or listed), and the exit status is 2 when a named file was skipped.
    """
    if history_dir is None and not report_files:
        fail_input("give one or more report.json files to render, or --history DIR")
    skipped = 0
    for report_file in report_files:
        try:
            paths = _render_report(report_file)
        except _Malformed as exc:
            _warn_skipped(report_file, str(exc))
            skipped += 1
            continue
        console.print(Text(f"wrote {', '.join(str(p) for p in paths)}"), soft_wrap=True, highlight=False)
    if history_dir is not None:
        _history(history_dir)
    if skipped:
        sys.exit(EXIT_BAD_INPUT)


class _Malformed(Exception):
    """A report file that cannot be rendered: unreadable, not JSON, or missing what a report has."""


def _warn_skipped(path: Path, why: str) -> None:
    print_error(f"skipped {path}: {why}", "warning:")


def _read_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _Malformed(f"cannot read it ({exc})") from None
    problem = report_problem(data)
    if problem is not None:
        raise _Malformed(problem)
    assert isinstance(data, dict)
    return data


def _render_report(report_file: Path) -> list[Path]:
    from jamsdr.report_render import write_report_files  # noqa: PLC0415

    data = _read_report(report_file)
    stem = FAILBACK_STEM if report_file.name == f"{FAILBACK_STEM}.json" else "report"
    try:
        paths = write_report_files(data, report_file.parent, stem=stem)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a damaged field deeper in the report
        raise _Malformed(f"cannot render it ({type(exc).__name__}: {exc})") from None
    # A failback drill's recovery report names its failback report: render that one too.
    section = data.get("failback")
    named = section.get("report") if isinstance(section, dict) else None
    companion = report_file.parent / f"{FAILBACK_STEM}.json"
    if stem == "report" and named == companion.name and companion.is_file():
        try:
            paths += write_report_files(_read_report(companion), report_file.parent, stem=FAILBACK_STEM)
        except (_Malformed, KeyError, TypeError, ValueError, AttributeError) as exc:
            _warn_skipped(companion, str(exc))
    return paths


# Below this width the history drops the execution ids (each report.json has its own): a table of
# wrapped cells is not legible, and 80 columns is what a CI log or a default terminal gives.
HISTORY_WIDE_COLUMNS = 120


def _short_seconds(value: float | None) -> str:
    """At most 6 characters ("59.9s", "12m03s", "2h05m"): a duration column that fits 80 columns."""
    if value is None:
        return "n/a"
    whole = int(value)
    if value < 60:
        return f"{value:.1f}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _history(history_dir: Path) -> None:
    if not history_dir.is_dir():
        fail_input(f"{history_dir} is not a directory of drill reports")
    skipped: list[tuple[Path, str]] = []
    reports = load_history(history_dir, skipped)
    for path, why in skipped:
        _warn_skipped(path, why)
    if not reports:
        fail_input(f"no readable report.json under {history_dir}/*/")
    wide = console.width >= HISTORY_WIDE_COLUMNS
    # Narrow: no borders (each costs a column), so that a row of the seven facts fits in 80 columns.
    table = Table(title=f"{len(reports)} drill(s) in {history_dir}", box=box.HEAVY_HEAD if wide else None,
                  pad_edge=wide, header_style="bold")
    columns = ["decided at (UTC)" if wide else "UTC", "kind", "decision", "outcome", "RTO", "RPO", "detection"]
    for column in columns + (["execution"] if wide else []):
        table.add_column(column, no_wrap=True)
    seconds = fmt_seconds if wide else _short_seconds
    for item in reports:
        when = str(item.get("decided_at") or item.get("failure_at") or (item.get("interrupted") or {}).get("at")
                   or "n/a")
        cells = [when if wide else when[5:16].replace("T", " ") or "n/a", str(item["kind"]), str(item["decision"]),
                 str(item["outcome"]), seconds(item.get("rto_seconds")), seconds(item.get("rpo_seconds")),
                 seconds(item.get("detection_seconds"))]
        table.add_row(*[Text(cell) for cell in cells + ([str(item["execution_id"])] if wide else [])])
    console.print(table)
    if not wide:
        console.print(f"(execution ids from {HISTORY_WIDE_COLUMNS} columns up, or in each run's report.json)",
                      highlight=False)
    # Failbacks are listed, but their RTO (a planned interruption) is not a recovery's: trends leave them out.
    trend = [r for r in reports if r.get("kind") != "failback"]
    console.print(f"RTO trend {sparkline([r.get('rto_seconds') for r in trend])}   "
                  f"RPO trend {sparkline([r.get('rpo_seconds') for r in trend])}")


for command in (status, recover, failback, bootstrap):
    main.add_command(command)
main.add_command(heartbeat)  # its exit statuses are its own (its --help)
for command in main.commands.values():
    if command is not heartbeat:
        command.epilog = EXIT_CODES_HELP
