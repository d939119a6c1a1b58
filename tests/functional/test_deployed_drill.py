"""The default drill runs the deployed topology (issue 17): chalice package's functions in the embedded
Lambda runtime, triggered by their schedules and by each other, with the default scenario's lost Invoke.

One drill for the module (about 30 s): every assertion reads its report and events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from chalicelib.clock import parse_iso
from jamsdr.cli import main
from jamsdr.cliutil import EXIT_BAD_INPUT
from jamsdr.drill import DrillResult, run_embedded_drill
from jamsdr.scenario import Scenario
from jamsdr.topology import DRILL_RESTORE_MINUTES, time_scale

pytestmark = [
    pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning:aws_lambda_powertools.*"),
]

FIELDS = {"function", "trigger", "started_at", "duration_seconds", "outcome"}


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> DrillResult:
    return run_embedded_drill(Scenario(), tmp_path_factory.mktemp("deployed"))


def _advances(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in report["invocations"] if i["function"] == "advance_execution"]


def test_the_default_drill_recovers_through_the_deployed_functions(drill: DrillResult) -> None:
    report = drill.report
    assert drill.matches_expectation, [f"{e.phase}: {e.detail}" for e in drill.events]
    assert (report["decision"], report["outcome"]) == ("region-recovery", "succeeded")
    assert drill.iam_denied == []
    phases = [e.phase for e in drill.events if e.state == "done"]
    assert "deploy functions" in phases


def test_the_report_lists_every_invocation_as_the_contract_says(drill: DrillResult) -> None:
    invocations = drill.report["invocations"]
    assert invocations, "a deployed drill lists its invocations"
    for invocation in invocations:
        assert set(invocation) >= FIELDS
        assert invocation["trigger"] in ("schedule", "event", "invoke", "manual")
        assert invocation["outcome"] in ("ok", "error", "timeout")
        assert invocation["duration_seconds"] >= 0
        parse_iso(invocation["started_at"])
    starts = [parse_iso(i["started_at"]) for i in invocations]
    assert starts == sorted(starts)
    assert all(i["outcome"] == "ok" for i in invocations), invocations
    # The tick's schedule made the recovery points; the watcher's schedule watched, every heartbeat.
    by_schedule = {i["function"] for i in invocations if i["trigger"] == "schedule"}
    assert {"snapshot_tick", "heartbeat_watcher", "execution_sweeper"} <= by_schedule


def test_the_lost_launch_is_recovered_by_the_scheduled_sweeper(drill: DrillResult) -> None:
    # The default scenario's fault: the first Invoke after the failure, the watcher's launch of the chain.
    faults = [e.detail for e in drill.events if e.phase == "faults"]
    assert faults == ["calls failed on purpose: lambda Invoke in us-west-2: 5xx x1"]
    first = _advances(drill.report)[0]
    assert (first["trigger"], first["invoked_by"]) == ("invoke", "execution_sweeper")
    assert not [i for i in _advances(drill.report) if i["invoked_by"] == "heartbeat_watcher"]
    assert any(e.phase == "invocations" and e.detail.startswith("execution_sweeper resumed rec-")
               for e in drill.events)


def test_the_restore_outlasts_an_invocation_and_the_chain_invokes_itself(drill: DrillResult) -> None:
    advances = _advances(drill.report)
    hops = [i for i in advances if i["invoked_by"] == "advance_execution" and not i["duplicate"]]
    assert len(hops) >= 1
    # Each invocation stayed within its compressed 900 s.
    timeout = 900 * time_scale(Scenario().heartbeat_seconds)
    assert all(i["duration_seconds"] <= timeout for i in advances)
    wait = next(s for s in drill.report["steps"] if s["name"] == "wait_for_stack")
    waited = (parse_iso(wait["ended_at"]) - parse_iso(wait["started_at"])).total_seconds()
    assert waited >= DRILL_RESTORE_MINUTES * 60 * time_scale(Scenario().heartbeat_seconds) - 1
    # verify proved the pinned copy was restored, the restore event dated at the restore's end.
    assert drill.report["restored_from"]["proven"] is True


def test_a_duplicate_delivery_runs_and_leaves_the_execution_to_its_holder(drill: DrillResult) -> None:
    duplicates = [i for i in _advances(drill.report) if i["duplicate"]]
    assert len(duplicates) == 1
    # Whichever of the two deliveries claims the execution first runs the chain to its end; the other finds it
    # held and leaves (the engine's claim), in either order.
    assert [e.detail for e in drill.events if e.phase == "invocations" and "twice" in e.detail] == [
        "advance_execution received one event twice (Lambda delivers an event more than once now and then): "
        "the deliveries answered busy and ended"]


def test_in_process_is_for_the_embedded_drill_only(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["drill", "--aws", "--stage", "dev", "--in-process",
                                       "--report-dir", str(tmp_path)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "--in-process is for the embedded drill; with --aws use --local-runner" in result.output


def test_without_a_chalice_project_the_drill_names_it_and_exits_2(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from jamsdr import chalice_package

    monkeypatch.setattr(chalice_package, "PROJECT_DIR", tmp_path / "not-a-checkout")
    result = CliRunner().invoke(main, ["drill", "--report-dir", str(tmp_path / "reports")])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    flat = " ".join(result.output.split())
    assert f"no chalice project at {tmp_path / 'not-a-checkout'} (app.py and .chalice/config.json)" in flat
    assert "use --in-process elsewhere" in flat
    assert "Traceback" not in result.output
