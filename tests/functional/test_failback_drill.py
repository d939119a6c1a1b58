"""The failback as a drill (`jams-dr drill --scenario` with ``"failback": true``, docs/failback-drill.md).

Two embedded drills (each about a minute: the failback's own polls wait in real time), the rest without one:
- a failback that succeeds: exit 0, report.json (the recovery, with a ``failback`` section) and
  failback-report.json, their RTOs and the data-loss window consistent, the recovery region as before,
  `jams-dr report` re-rendering both and listing the failback;
- a failback that cannot copy the database back: exit 1, the report names the failing step, and the check
  names what the failed failback left in the recovery region;
- scenario validation, the region comparison and the emulated route deletion.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from chalicelib.aws import ClientFactory
from chalicelib.clock import parse_iso
from jamsdr import cli
from jamsdr.failback_drill import compare_region
from jamsdr.scenario import ScenarioError, parse_scenario
from jamsdr.stack_routes import StackRouteCleanup

if TYPE_CHECKING:
    from mypy_boto3_cloudformation.type_defs import ParameterTypeDef

FAILBACK_STATES = ["preflight", "take_lease", "enforce_fence", "quiesce_recovery", "snapshot_recovery_db",
                   "wait_recovery_snapshot", "copy_to_primary", "wait_primary_copy", "retire_old_primary",
                   "create_app_stack", "wait_for_stack", "verify", "switch_traffic", "retire_recovery_stack",
                   "release_lease", "resume_recovery", "notify", "write_report"]


def _drill(tmp_path: Path, scenario: dict[str, Any]) -> tuple[int, str, Path]:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario), encoding="utf-8")
    result = CliRunner().invoke(cli.main, ["drill", "--scenario", str(path), "--report-dir", str(tmp_path / "r")])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    (run,) = list((tmp_path / "r").iterdir())
    return result.exit_code, " ".join(result.output.split()), run


def _load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _at(text: str | None) -> Any:
    assert text is not None
    return parse_iso(text)


def test_a_failback_drill_succeeds_with_both_reports_and_leaves_the_recovery_region_as_before(
    tmp_path: Path,
) -> None:
    code, output, run = _drill(tmp_path, {"failback": True})

    assert code == 0, output
    assert "As expected: region-recovery/succeeded/failback succeeded, recovery region as before" in output
    assert {p.name for p in run.iterdir()} >= {"report.json", "report.md", "report.html", "failback-report.json",
                                               "failback-report.md", "failback-report.html"}
    recovery, failback = _load(run / "report.json"), _load(run / "failback-report.json")

    # report.json is still the recovery's, with its contract fields; the failback section points at the other.
    assert (recovery["kind"], recovery["outcome"], recovery["decision"]) == ("recovery", "succeeded",
                                                                              "region-recovery")
    assert recovery["rto_seconds"] > 0 and recovery["rpo_seconds"] >= 0
    section = recovery["failback"]
    assert section["report"] == "failback-report.json" and section["outcome"] == "succeeded"
    assert section["execution_id"] == failback["execution_id"] != recovery["execution_id"]

    # The failback's own report: every state ran, its RTO from the interruption, its duration from its start.
    assert (failback["kind"], failback["outcome"]) == ("failback", "succeeded")
    assert [s["name"] for s in failback["steps"]] == FAILBACK_STATES
    assert failback["failed_step"] is None and failback["error"] is None
    started, interrupted, back = _at(failback["started_at"]), _at(failback["failure_at"]), _at(failback["recovered_at"])
    assert _at(recovery["recovered_at"]) < started <= interrupted < back
    assert failback["rto_seconds"] == round((back - interrupted).total_seconds(), 3) > 0
    assert failback["duration_seconds"] == round((back - started).total_seconds(), 3) >= failback["rto_seconds"]
    switch = next(s for s in failback["steps"] if s["name"] == "switch_traffic")
    assert switch["outcome"] == "succeeded" and switch["ended_at"] == failback["recovered_at"]

    # The data-loss window: from the failback's snapshot to the switch; no writer ran in it.
    loss = failback["data_loss"]
    snapshot_step = next(s for s in failback["steps"] if s["name"] == "snapshot_recovery_db")
    quiesce = next(s for s in failback["steps"] if s["name"] == "quiesce_recovery")
    assert loss["snapshot_at"] == snapshot_step["started_at"] and loss["writes_stopped_at"] == quiesce["ended_at"]
    assert _at(loss["writes_stopped_at"]) <= _at(loss["snapshot_at"]) < _at(loss["switched_at"]) == back
    assert loss["window_seconds"] == round((back - _at(loss["snapshot_at"])).total_seconds(), 3) > 0
    assert loss["writers_stopped_in_window"] is True and loss["at_risk_seconds"] == 0.0
    assert loss["snapshot_id"] and loss["snapshot_id"].startswith("jams-failback-")
    assert section["data_loss_window_seconds"] == loss["window_seconds"]
    assert section["rto_seconds"] == failback["rto_seconds"]

    # The recovery region as before, the failback's own snapshot kept by design and named.
    check = failback["recovery_region_check"]
    assert check["as_before"] is True and check["differences"] == [] and section["differences"] == []
    assert section["recovery_region_as_before"] is True
    assert [r.split(":")[0] for r in check["retained"]] == [f"snapshot {loss['snapshot_id']}"]

    # Each report has its own notifications: the recovery's before the failback started, the failback's after.
    assert recovery["notifications"] and failback["notifications"]
    assert all(_at(n["at"]) < started for n in recovery["notifications"])
    assert all(_at(n["at"]) >= started for n in failback["notifications"])
    assert [n["kind"] for n in failback["notifications"]] == ["started", "succeeded"]

    # The renderings: console, HTML, Markdown; `jams-dr report` writes both again and lists the failback.
    assert re.search(r"Recovery region us-west-2 as before\s*│\s*yes\s*│", output), output
    assert re.search(r"Data at risk \(a writer ran in the\s*│\s*0\.0 s", output), output
    assert "<h2>Failback</h2>" in (run / "report.html").read_text(encoding="utf-8")
    assert "Data at risk" in (run / "failback-report.html").read_text(encoding="utf-8")
    assert "## Failback" in (run / "failback-report.md").read_text(encoding="utf-8")
    (run / "failback-report.md").unlink()
    again = CliRunner().invoke(cli.main, ["report", str(run / "report.json")])
    assert again.exit_code == 0, again.output
    assert (run / "failback-report.md").is_file()
    history = CliRunner().invoke(cli.main, ["report", "--history", str(tmp_path / "r")])
    assert history.exit_code == 0, history.output
    assert "2 drill(s)" in history.output and "failback" in history.output


def test_a_failback_that_cannot_copy_back_fails_the_drill_and_names_the_step(tmp_path: Path) -> None:
    # Only the failback copies a snapshot with a client in the primary region: the recovery is untouched.
    copy_back = {"service": "rds", "region": "primary", "operation": "CopyDBSnapshot", "error": "5xx", "count": 10}
    code, output, run = _drill(tmp_path, {"failback": True, "faults": [copy_back]})

    assert code == 1, output
    assert "failback failed, recovery region changed" in output
    recovery, failback = _load(run / "report.json"), _load(run / "failback-report.json")
    assert (recovery["kind"], recovery["outcome"]) == ("recovery", "succeeded")
    assert (failback["kind"], failback["outcome"]) == ("failback", "failed")
    assert failback["failed_step"] == "copy_to_primary" == recovery["failback"]["failed_step"]
    assert "ServiceUnavailable" in failback["error"]
    outcomes = {s["name"]: s["outcome"] for s in failback["steps"]}
    assert outcomes["copy_to_primary"] == "failed" and outcomes["switch_traffic"] == "skipped"
    assert outcomes["resume_recovery"] == "succeeded"
    assert failback["recovered_at"] is None and failback["rto_seconds"] is None
    assert failback["data_loss"]["window_seconds"] is None  # nothing switched: JAMS still serves where it was
    # The failed failback kept the recovery stack serving and its lease: the check names both.
    differences = failback["recovery_region_check"]["differences"]
    assert failback["recovery_region_check"]["as_before"] is False
    assert "stack jams-app: absent before, CREATE_COMPLETE after" in differences
    assert any(d.startswith("recovery lease: free before, held by ") for d in differences), differences
    assert recovery["failback"]["differences"] == differences
    assert "failed at copy_to_primary" in (run / "report.md").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------ no drill


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "not a boolean": ({"failback": 1}, "failback: 1 must be true or false"),
    "no region failure": ({"failback": True, "failure": "none"},
                          "failback: true needs failure 'region' (the failback moves JAMS back after a region "
                          "recovery), not 'none'; set failure to region or remove failback"),
    "notify starts no recovery": ({"failback": True, "failover_mode": "notify"},
                                  "failback: true needs a recovery to fail back from, and failover_mode 'notify' "
                                  "starts none; use auto or approve, or remove failback"),
    # A bad failure is that field's problem alone; its line stays as it was.
    "bad failure": ({"failback": True, "failure": "meteor"},
                    "failure: 'meteor' must be one of none, region, az, scheduler, monitoring"),
}


def test_failback_defaults_to_false_and_true_follows_a_region_recovery() -> None:
    assert parse_scenario({}).failback is False
    assert parse_scenario({"failback": True}).failback is True
    assert parse_scenario({"failback": True, "failover_mode": "approve"}).failback is True


@pytest.mark.parametrize(("data", "line"), REFUSED.values(), ids=list(REFUSED))
def test_failback_must_be_a_boolean_and_follow_a_region_recovery(data: dict[str, Any], line: str) -> None:
    with pytest.raises(ScenarioError) as refused:
        parse_scenario(data, "s.json")
    assert refused.value.problems == [line]


def test_the_drill_refuses_a_failback_without_a_region_failure_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    path.write_text('{"failback": true, "failure": "scheduler"}', encoding="utf-8")
    result = CliRunner().invoke(cli.main, ["drill", "--scenario", str(path), "--report-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "failback: true needs failure 'region'" in " ".join(result.stderr.split())
    assert not (tmp_path / "r").exists()


def test_the_region_comparison_names_each_difference_and_keeps_only_this_failbacks_snapshot() -> None:
    before = {"stack jams-standby": "UPDATE_COMPLETE", "stack jams-standby parameter DBSnapshotIdentifier": "a",
              "recovery lease": "free"}
    after = {**before, "stack jams-standby parameter DBSnapshotIdentifier": "b",
             "stack jams-app": "CREATE_COMPLETE", "stack jams-app parameter Mode": "active",
             "snapshot jams-failback-fb-1": "available kind=failback execution=fb-1",
             "snapshot jams-failback-fb-0": "available kind=failback execution=fb-0",
             "snapshot jams-app-final": "available kind=recovery execution=inc-1",
             "snapshot jams-app-older": "available kind=recovery execution=inc-0"}
    result = compare_region(before, after, "fb-1", "inc-1")
    assert result.as_before is False
    assert result.differences == [
        "snapshot jams-app-older: absent before, available kind=recovery execution=inc-0 after",
        "snapshot jams-failback-fb-0: absent before, available kind=failback execution=fb-0 after",
        "stack jams-app: absent before, CREATE_COMPLETE after",  # its parameters are not listed one by one
        "stack jams-standby parameter DBSnapshotIdentifier: a before, b after",
    ]
    assert result.retained == ["snapshot jams-app-final: available kind=recovery execution=inc-1",
                               "snapshot jams-failback-fb-1: available kind=failback execution=fb-1"]
    assert compare_region(before, dict(before), None).as_before is True


ROUTE_STACK = {
    "Parameters": {"RouteTableId": {"Type": "String"}, "GatewayId": {"Type": "String"}},
    "Resources": {"Route": {"Type": "AWS::EC2::Route", "Properties": {
        "RouteTableId": {"Ref": "RouteTableId"}, "DestinationCidrBlock": "0.0.0.0/0",
        "GatewayId": {"Ref": "GatewayId"}}}},
}


def test_deleting_a_stack_deletes_its_routes_as_cloudformation_does(clients: ClientFactory) -> None:
    """CloudFormation deletes every resource of a deleted stack not marked DeletionPolicy Retain
    (CloudFormation User Guide, "DeletionPolicy attribute"); moto 5.x keeps its AWS::EC2::Route."""
    region = "us-west-2"
    ec2, cfn = clients.client("ec2", region), clients.client("cloudformation", region)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=table, DestinationCidrBlock="192.168.0.0/16", GatewayId=gateway)  # not the stack's
    parameters: list[ParameterTypeDef] = [{"ParameterKey": "RouteTableId", "ParameterValue": table},
                  {"ParameterKey": "GatewayId", "ParameterValue": gateway}]

    def routes() -> list[str]:
        found = ec2.describe_route_tables(RouteTableIds=[table])["RouteTables"][0]["Routes"]
        return sorted(str(r.get("DestinationCidrBlock")) for r in found if r.get("GatewayId") != "local")

    cleanup = StackRouteCleanup(clients).install()
    try:
        cfn.create_stack(StackName="routes", TemplateBody=json.dumps(ROUTE_STACK), Parameters=parameters)
        assert routes() == ["0.0.0.0/0", "192.168.0.0/16"]
        cfn.delete_stack(StackName="routes")
    finally:
        cleanup.uninstall()

    assert routes() == ["192.168.0.0/16"]
    assert cleanup.deleted == [f"{table}~0.0.0.0/0"]
    # The same stack again on the same table: AWS accepts it (moto alone would refuse the existing route).
    cfn.create_stack(StackName="routes-again", TemplateBody=json.dumps(ROUTE_STACK), Parameters=parameters)
    assert routes() == ["0.0.0.0/0", "192.168.0.0/16"]
