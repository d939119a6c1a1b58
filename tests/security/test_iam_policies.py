"""Least privilege, derived: every AWS call each Chalice function makes is recorded while the
function runs its real paths in the embedded two-region AWS (iam_scenarios), and each function's
policy must allow every one of them (action and, where the request names it, the resource ARN)
while holding no action that none of them needs (implicit permissions count only when their
trigger call was recorded: jamsdr.iam.IMPLICIT).

Two policy sets are judged: the generator's policies for the recorded world (its settings name the
real table, topic, bucket, zone, key and CloudFormation role: resource-level checks), and the files
of stage dev on disk (action level: stage dev configures no topic, zone, role, bucket or copy key,
so the actions those features need are absent there by design, and only those).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import xform_name
from parliament import analyze_policy_string  # type: ignore[import-untyped]

from chalicelib.settings import Settings
from chalicelib.workflow.steps.common import stack_role
from jamsdr import iam
from jamsdr.embedded import EmbeddedAws
from tests.conftest import PRIMARY, RECOVERY
from tests.security.iam_calls import Auth, allows, policy_actions, required, statements
from tests.security.iam_scenarios import ADVANCE, STAGE, Recording, record_everything, variant

PROJECT = Path(__file__).resolve().parents[2]
CHALICE = PROJECT / ".chalice"
FUNCTIONS = sorted(iam.FUNCTIONS)
# Operations the code names that no Lambda function calls: the operator CLI's heartbeat publisher.
NOT_IN_LAMBDA = {("cloudwatch", "PutMetricData")}

pytestmark = [
    pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning:aws_lambda_powertools.*"),
]


@pytest.fixture(scope="module")
def recording(moto_server: EmbeddedAws) -> Iterator[Recording]:
    """One world, every function driven once (about half a minute): the module's tests judge it."""
    moto_server.reset()
    for region in (PRIMARY, RECOVERY):
        moto_server.bring_region_up(region)
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield record_everything(moto_server, monkeypatch)


@pytest.fixture(scope="module")
def world_scope(recording: Recording) -> iam.Scope:
    # Backup replication and the pitr tier ran (a tick, the drill): the policy of a stage that turns them on.
    return iam.Scope(variant(recording.world.settings, backup_replication=True, recovery_source="pitr"), STAGE,
                     ADVANCE)


@pytest.fixture(scope="module")
def world_policies(world_scope: iam.Scope) -> dict[str, dict[str, Any]]:
    return iam.policies(world_scope)


@pytest.fixture(scope="module")
def dev_generated() -> dict[str, dict[str, Any]]:
    [dev] = [stage for stage in iam.load_stages(CHALICE / "config.json") if stage.name == STAGE]
    return iam.policies(dev.scope)


def on_disk(stage: str, function: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((CHALICE / iam.policy_path(stage, function)).read_text())
    return document


def not_allowed(policy: dict[str, Any], checks: list[Auth]) -> list[str]:
    return sorted({f"{c.action} on {c.resources or '(action level)'} for {c.why}"
                   for c in checks if not allows(policy, c.action, c.resources)})


def unused(policy: dict[str, Any], checks: list[Auth]) -> list[str]:
    return sorted(policy_actions(policy) - {c.action for c in checks})


# ---------------------------------------------------------------------------------------- derivation


def test_the_scenarios_ran_their_real_paths(recording: Recording) -> None:
    assert {k: v.status for k, v in recording.outcomes.items()} == {
        "drill": "succeeded", "recovery": "succeeded", "failback": "succeeded", "rollback": "succeeded"}
    assert {c.function for c in recording.recorder.calls} == set(FUNCTIONS)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_recorded_call_is_allowed_by_the_functions_policy(
    function: str, recording: Recording, world_policies: dict[str, dict[str, Any]]
) -> None:
    checks = required(recording.recorder.of(function))
    assert not_allowed(world_policies[function], checks) == []


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_policy_action_is_needed_by_a_recorded_call(
    function: str, recording: Recording, world_policies: dict[str, dict[str, Any]]
) -> None:
    checks = required(recording.recorder.of(function))
    assert unused(world_policies[function], checks) == []


@pytest.mark.parametrize("function", FUNCTIONS)
def test_stage_dev_files_hold_exactly_the_recorded_actions_its_settings_enable(
    function: str, recording: Recording, world_policies: dict[str, dict[str, Any]],
    dev_generated: dict[str, dict[str, Any]],
) -> None:
    """The files Chalice deploys, judged directly: removing an action from one fails here."""
    disabled = policy_actions(world_policies[function]) - policy_actions(dev_generated[function])
    needed = {c.action for c in required(recording.recorder.of(function))} - disabled
    granted = policy_actions(on_disk(STAGE, function))
    assert sorted(needed - granted) == [], "recorded calls the file does not allow"
    assert sorted(granted - needed) == [], "file actions no recorded call needs"


def test_the_checks_catch_a_removed_and_an_unused_action(
    recording: Recording, world_policies: dict[str, dict[str, Any]]
) -> None:
    """The evaluator itself can fail: drop an action, add one nobody calls, narrow a resource."""
    checks = required(recording.recorder.of("snapshot_tick"))
    policy = json.loads(json.dumps(world_policies["snapshot_tick"]))
    for statement in statements(policy):
        statement["Action"] = [a for a in statement["Action"] if a != "rds:DeleteDBSnapshot"]
    assert any(m.startswith("rds:DeleteDBSnapshot") for m in not_allowed(policy, checks))
    statements(policy)[0]["Action"].append("rds:DeleteDBInstance")
    assert unused(policy, checks) == ["rds:DeleteDBInstance"]
    narrowed = json.loads(json.dumps(world_policies["snapshot_tick"]))
    for statement in statements(narrowed):
        if "rds:DeleteDBSnapshot" in statement["Action"]:
            statement["Resource"] = [r.replace("-dr-*", "-dr-2020*") for r in statement["Resource"]]
    assert any(m.startswith("rds:DeleteDBSnapshot") for m in not_allowed(narrowed, checks))


def test_every_operation_the_code_names_is_recorded(recording: Recording) -> None:
    """A call on a path the scenarios never take would go unjudged: name the path or drive it."""
    session = boto3.session.Session(region_name=PRIMARY)
    recorded = {(c.service, c.operation) for c in recording.recorder.calls}
    services = {service for service, _ in recorded} | {service for service, _ in NOT_IN_LAMBDA}
    by_method: dict[str, set[tuple[str, str]]] = {}
    for service in services:
        for operation in session.client(service, region_name=PRIMARY).meta.service_model.operation_names:
            by_method.setdefault(xform_name(operation), set()).add((service, operation))
    named: set[str] = set()
    for path in (PROJECT / "chalicelib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                named.add(node.func.attr)
                if node.func.attr in ("get_paginator", "get_waiter") and node.args and \
                        isinstance(node.args[0], ast.Constant):
                    named.add(str(node.args[0].value))
    missing = sorted(method for method in named & set(by_method)
                     if not by_method[method] & (recorded | NOT_IN_LAMBDA))
    assert missing == []


# ---------------------------------------------------------------------------------------- the files


def test_generated_files_are_up_to_date_and_wired() -> None:
    lines: list[str] = []
    status = iam.run("check", CHALICE / "config.json", out=lines.append)
    assert status == 0, [line for line in lines if not line.startswith("warning:")]
    assert not list(CHALICE.glob("policy-*.json"))


def test_the_app_defines_exactly_the_functions_with_policies() -> None:
    assert iam.app_functions() == set(FUNCTIONS)


def all_documents(world_policies: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((CHALICE / iam.POLICY_DIR).rglob("*.json")):
        yield str(path.relative_to(PROJECT)), json.loads(path.read_text())
    for function, document in world_policies.items():
        yield f"world:{function}", document


def test_no_wildcard_action_and_star_resources_only_where_aws_allows_nothing_else(
    world_policies: dict[str, dict[str, Any]]
) -> None:
    for name, document in all_documents(world_policies):
        for statement in statements(document):
            assert statement["Effect"] == "Allow" and iam.sid_ok(statement["Sid"]), (name, statement)
            assert not any("*" in action for action in statement["Action"]), (name, statement)
            if statement["Resource"] == "*":
                assert statement["Sid"].startswith("StarOnly"), (name, statement)
                assert set(statement["Action"]) <= set(iam.STAR_ONLY), (name, statement)
            else:
                assert "*" not in statement["Resource"], (name, statement)


def test_star_only_actions_really_have_no_resource_type() -> None:
    """parliament's copy of the Service Authorization Reference agrees with STAR_ONLY, except
    GetTemplateSummary, whose stack resource type applies only to a StackName (see STAR_ONLY)."""
    from parliament import iam_definition

    types = {f"{s['prefix']}:{p['privilege']}": [r["resource_type"] for r in p["resource_types"]]
             for s in iam_definition for p in s["privileges"]}
    with_types = {a for a in iam.STAR_ONLY if any(types.get(a, []))}
    assert with_types == {"cloudformation:GetTemplateSummary"}


# parliament's community auditors flag every grant and every role hand-over; these are the point of
# their statements (docs/iam.md, "parliament"). Anything else they report fails the test.
JUSTIFIED = {
    ("PERMISSIONS_MANAGEMENT_ACTIONS", "kms:creategrant"):
        "RDS needs a grant on the copy key (or aws/rds) for an encrypted copy; only via RDS (kms:ViaService)",
    ("PERMISSIONS_MANAGEMENT_ACTIONS", "iam:passrole"):
        "RoleARN of CloudFormation's service role; that role only, iam:PassedToService cloudformation",
    ("PRIVILEGE_ESCALATION", "iam:passrole"):
        "PassRole + CreateStack is the service-role design itself: the one role passed may only build "
        "JAMS application stacks of this environment, and CreateStack is limited to those stack names",
    ("PRIVILEGE_ESCALATION", "cloudformation:createstack"): "same pair as iam:passrole",
}


def test_parliament_finds_nothing_unjustified(world_policies: dict[str, dict[str, Any]]) -> None:
    core, community = [], []
    for name, document in all_documents(world_policies):
        text = json.dumps(document)
        core += [(name, f.issue, f.detail) for f in analyze_policy_string(text).findings]
        for finding in analyze_policy_string(text, include_community_auditors=True).findings:
            actions = finding.location.get("actions") or [""]
            community += [(name, finding.issue, a) for a in actions if (finding.issue, a) not in JUSTIFIED]
    assert core == []
    assert community == []


def test_docs_explain_every_star_only_action_and_implicit_permission() -> None:
    doc = (PROJECT / "docs" / "iam.md").read_text()
    for action in iam.STAR_ONLY:
        assert re.search(rf"^\| `{re.escape(action)}` \|", doc, re.MULTILINE), action
    for entry in iam.IMPLICIT:
        assert f"`{entry.action}`" in doc, entry.action


# ---------------------------------------------------------------------------------------- service role


def test_the_chain_hands_cloudformation_the_support_stacks_role(recording: Recording) -> None:
    """moto ignores RoleARN: the serialized requests prove it (before-call hooks in iam_scenarios)."""
    role = recording.world.support["CloudFormationRoleArn"]
    chain = [(op, region, body) for op, region, body in recording.stack_requests if op != "UpdateStack"]
    assert {(op, region) for op, region, _ in chain} >= {
        ("CreateStack", RECOVERY), ("DeleteStack", RECOVERY), ("CreateStack", PRIMARY), ("DeleteStack", PRIMARY)}
    assert {body.get("RoleARN") for _, _, body in chain} == {role}
    assert role.startswith("arn:aws:iam::123456789012:role/") and recording.world.settings.cfn_role_arn == role


def test_without_a_role_the_chain_calls_cloudformation_as_itself_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert stack_role(Settings.defaults(cfn_role_arn="arn:aws:iam::123456789012:role/r")) == {
        "RoleARN": "arn:aws:iam::123456789012:role/r"}
    assert not any("CFN_ROLE_ARN" in r.getMessage() for r in caplog.records)
    assert stack_role(Settings.defaults()) == {}
    assert any(r.levelname == "WARNING" and "CFN_ROLE_ARN is empty" in r.getMessage() for r in caplog.records)


def test_a_role_arn_setting_is_validated() -> None:
    with pytest.raises(ValueError, match=r"CFN_ROLE_ARN='role/x'.*CloudFormationRoleArn"):
        Settings.from_env({"CFN_ROLE_ARN": "role/x"})


def test_stages_without_a_role_are_warned_about() -> None:
    stages = iam.load_stages(CHALICE / "config.json")
    for stage in stages:
        if not stage.scope.settings.cfn_role_arn:
            assert any("CFN_ROLE_ARN is empty" in w for w in stage.warnings)
            assert "iam:PassRole" not in policy_actions(on_disk(stage.name, "advance_execution"))

