"""`jams-dr bootstrap` creates OR updates its stacks through change sets (issue 16).

Run twice, bootstrap changes nothing ("up to date"); run after a settings change, it updates the stack
that setting feeds (the support stack's RpoTargetSeconds) and nothing else; every change set is shown
before it runs and may be declined; the standby stack's DBSnapshotIdentifier belongs to the snapshot
pipeline and is never changed by a re-run. The last tests state the change-set facts of CloudFormation
the embedded AWS restores over moto (jamsdr/changeset_fidelity.py, docs/aws-fidelity.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from click.testing import CliRunner

from chalicelib.settings import Settings
from chalicelib.stacks import PIN_PARAMETER, describe_stack, parameters_of, update_pin
from jamsdr import operate
from jamsdr.changeset_fidelity import NO_CHANGES_REASON
from jamsdr.cli import main
from jamsdr.deploy import TEMPLATES, ChangeSetReview, DeployError, deploy, deploy_stack

if TYPE_CHECKING:
    from chalicelib.aws import ClientFactory

PREFIX = "jams-dr-dev-"
PINNED = "jams-dr-202612050400-copy"


def _stacks(s: Settings) -> list[tuple[str, str]]:
    env = s.environment
    return [(s.recovery_region, f"{env}-dr-support"), (s.primary_region, f"{env}-event-forwarding"),
            (s.recovery_region, f"{env}-dr-monitoring"), (s.recovery_region, s.standby_stack_name)]


def _state(clients: ClientFactory, region: str, name: str) -> tuple[str, dict[str, str], int]:
    """Status, parameters and number of events: an executed change set adds events."""
    cfn = clients.client("cloudformation", region)
    stack = describe_stack(cfn, name)
    assert stack is not None, name
    events = cfn.describe_stack_events(StackName=name)["StackEvents"]
    return stack["StackStatus"], parameters_of(stack), len(events)


def _change_sets(clients: ClientFactory, region: str, name: str) -> list[dict[str, Any]]:
    """The change sets of stack ``name`` that still exist."""
    summaries = clients.client("cloudformation", region).list_change_sets(StackName=name)["Summaries"]
    return [c for c in summaries if c.get("StackName") == name and c.get("ExecutionStatus") != "EXECUTE_COMPLETE"]


class Recorder:
    """A review that records what it was shown and answers ``answer``."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.seen: list[ChangeSetReview] = []

    def __call__(self, review: ChangeSetReview) -> bool:
        self.seen.append(review)
        return self.answer


@pytest.fixture
def stage(clients: ClientFactory) -> Settings:
    """A stage whose primary network stack exists (the standby stack mirrors its parameters)."""
    s = Settings.defaults()
    deploy_stack(clients, s.primary_region, s.network_stack_name, "jams-network.yaml", {"EnvironmentName": s.environment})
    return s


def _pin(clients: ClientFactory, s: Settings, snapshot: str) -> None:
    """What the snapshot pipeline does: pin a recovery point on the standby stack."""
    cfn = clients.client("cloudformation", s.recovery_region)
    stack = describe_stack(cfn, s.standby_stack_name)
    assert stack is not None
    assert update_pin(cfn, stack, snapshot) == "updated"


# ------------------------------------------------------------------------------- create, then update


def test_bootstrap_twice_changes_nothing_then_a_new_rpo_target_updates_the_support_stack(
    clients: ClientFactory, stage: Settings,
) -> None:
    first, lines = Recorder(), list[str]()
    env = operate.bootstrap_stage(stage, clients, lines.append, function_prefix=PREFIX, review=first)
    assert [(r.stack, r.kind) for r in first.seen] == [(name, "CREATE") for _, name in _stacks(stage)]
    assert all(c.action == "Add" for r in first.seen for c in r.changes) and all(r.changes for r in first.seen)
    assert {f"{name}: created" for _, name in _stacks(stage)} <= set(lines)
    assert env["LEDGER_TABLE"] and env["TOPIC_ARN"].startswith("arn:aws:sns:us-west-2:")
    _pin(clients, stage, PINNED)
    before = {name: _state(clients, region, name) for region, name in _stacks(stage)}

    again, lines = Recorder(), []
    assert operate.bootstrap_stage(stage, clients, lines.append, function_prefix=PREFIX, review=again) == env
    assert again.seen == []  # nothing to show, nothing to confirm
    assert {f"{name}: up to date" for _, name in _stacks(stage)} <= set(lines)
    assert {name: _state(clients, region, name) for region, name in _stacks(stage)} == before
    for region, name in _stacks(stage):
        assert _change_sets(clients, region, name) == [], f"the 'no changes' change set of {name} is deleted"

    changed = Settings.defaults(rpo_target_minutes=stage.rpo_target_minutes + 10)
    third, lines = Recorder(), []
    operate.bootstrap_stage(changed, clients, lines.append, function_prefix=PREFIX, review=third)
    support = f"{stage.environment}-dr-support"
    (review,) = third.seen
    assert (review.stack, review.kind) == (support, "UPDATE")
    assert [(c.action, c.logical_id) for c in review.changes] == [("Modify", "RpoAlarm")]
    assert review.parameters == (("RpoTargetSeconds", str(stage.rpo_target_seconds),
                                  str(changed.rpo_target_seconds)),)
    status, params, _ = _state(clients, stage.recovery_region, support)
    assert (status, params["RpoTargetSeconds"]) == ("UPDATE_COMPLETE", str(changed.rpo_target_seconds))
    assert f"{support}: updated" in lines
    for region, name in _stacks(stage)[1:]:
        assert _state(clients, region, name) == before[name], f"{name} must not change"
        assert f"{name}: up to date" in lines


def test_a_rerun_that_updates_the_standby_stack_keeps_the_pipeline_s_pin(
    clients: ClientFactory, stage: Settings,
) -> None:
    operate.bootstrap_stage(stage, clients, lambda _: None, function_prefix=PREFIX)
    _pin(clients, stage, PINNED)
    # A setting of the primary network changes (the standby stack mirrors it): the standby is updated.
    deploy_stack(clients, stage.primary_region, stage.network_stack_name, "jams-network.yaml",
                 {"EnvironmentName": stage.environment, "DBEngineMajorVersion": "16.00"})
    requests: list[dict[str, Any]] = []
    cfn = clients.client("cloudformation", stage.recovery_region)

    def record(params: dict[str, Any], **_: Any) -> None:
        if params.get("StackName") == stage.standby_stack_name:
            requests.append(params)

    cfn.meta.events.register("provide-client-params.cloudformation.CreateChangeSet", record)
    try:
        seen = Recorder()
        operate.bootstrap_stage(stage, clients, lambda _: None, function_prefix=PREFIX, review=seen)
    finally:
        cfn.meta.events.unregister("provide-client-params.cloudformation.CreateChangeSet", record)
    (request,) = requests
    sent = {p["ParameterKey"]: p.get("ParameterValue") for p in request["Parameters"]}
    assert sent[PIN_PARAMETER] == PINNED and sent["DBEngineMajorVersion"] == "16.00"
    (review,) = [r for r in seen.seen if r.stack == stage.standby_stack_name]
    assert [key for key, _, _ in review.parameters] == ["DBEngineMajorVersion"]
    status, params, _ = _state(clients, stage.recovery_region, stage.standby_stack_name)
    assert (status, params[PIN_PARAMETER], params["DBEngineMajorVersion"]) == ("UPDATE_COMPLETE", PINNED, "16.00")


def test_a_declined_change_set_is_deleted_and_changes_nothing(clients: ClientFactory, stage: Settings) -> None:
    operate.bootstrap_stage(stage, clients, lambda _: None, function_prefix=PREFIX)
    support = f"{stage.environment}-dr-support"
    before = _state(clients, stage.recovery_region, support)
    lines: list[str] = []
    no = Recorder(answer=False)
    operate.bootstrap_stage(Settings.defaults(rpo_target_minutes=stage.rpo_target_minutes + 5), clients,
                            lines.append, function_prefix=PREFIX, review=no)
    assert [r.stack for r in no.seen] == [support]
    assert f"{support}: change set declined and deleted: nothing changed" in lines
    assert _state(clients, stage.recovery_region, support) == before
    assert _change_sets(clients, stage.recovery_region, support) == []


def test_a_declined_first_creation_leaves_no_stack_and_stops(clients: ClientFactory, stage: Settings) -> None:
    support = f"{stage.environment}-dr-support"
    with pytest.raises(DeployError, match="creation was declined"):
        operate.bootstrap_stage(stage, clients, lambda _: None, function_prefix=PREFIX, review=Recorder(False))
    cfn = clients.client("cloudformation", stage.recovery_region)
    assert describe_stack(cfn, support) is None  # not even the REVIEW_IN_PROGRESS shell of the change set
    assert describe_stack(clients.client("cloudformation", stage.primary_region),
                          f"{stage.environment}-event-forwarding") is None


def test_a_stack_left_in_review_is_created_afresh(clients: ClientFactory, stage: Settings) -> None:
    """A change set never executed (an interrupted first bootstrap) leaves an empty stack in REVIEW_IN_PROGRESS."""
    cfn = clients.client("cloudformation", stage.recovery_region)
    cfn.create_change_set(StackName="jams-dr-monitoring", ChangeSetName="interrupted", ChangeSetType="CREATE",
                          TemplateBody=(TEMPLATES / "jams-dr-monitoring.yaml").read_text(),
                          Parameters=[{"ParameterKey": "TopicArn", "ParameterValue": "arn:aws:sns:us-west-2:1:t"}])
    stack = describe_stack(cfn, "jams-dr-monitoring")
    assert stack is not None and stack["StackStatus"] == "REVIEW_IN_PROGRESS"
    done = deploy(clients, stage.recovery_region, "jams-dr-monitoring", "jams-dr-monitoring.yaml",
                  {"EnvironmentName": "jams", "FunctionNamePrefix": PREFIX, "TopicArn": "arn:aws:sns:us-west-2:1:t"})
    assert done.outcome == "created"
    status, params, _ = _state(clients, stage.recovery_region, "jams-dr-monitoring")
    assert (status, params["FunctionNamePrefix"]) == ("CREATE_COMPLETE", PREFIX)


# ------------------------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli(clients: ClientFactory, stage: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`jams-dr bootstrap --stage dev` on the embedded AWS with the stage's settings."""
    monkeypatch.setattr(operate, "settings_for", lambda _: stage)
    monkeypatch.setattr(operate, "get_factory", lambda: clients)
    return stage


def test_cli_shows_each_change_set_and_yes_skips_the_question(cli: Settings, clients: ClientFactory) -> None:
    result = CliRunner().invoke(main, ["bootstrap", "--stage", "dev", "--yes"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "jams-dr-support (us-west-2): CREATE change set jams-dr-" in result.output
    assert "RpoAlarm" in result.output and "AWS::CloudWatch::Alarm" in result.output
    assert "Execute this change set" not in result.output
    assert "jams-dr-support: created" in result.output
    again = CliRunner().invoke(main, ["bootstrap", "--stage", "dev"], catch_exceptions=False)
    # Nothing to confirm: no terminal needed.
    assert again.exit_code == 0, again.output
    assert "jams-dr-support: up to date" in again.output and "change set jams-dr-" not in again.output


def test_cli_without_a_terminal_and_without_yes_refuses(cli: Settings, clients: ClientFactory) -> None:
    result = CliRunner().invoke(main, ["bootstrap", "--stage", "dev"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "use --yes" in result.output
    assert "jams-dr-support (us-west-2): CREATE change set" in result.output  # shown, then refused
    assert describe_stack(clients.client("cloudformation", cli.recovery_region), "jams-dr-support") is None


def test_cli_asks_per_change_set_on_a_terminal(cli: Settings, clients: ClientFactory,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(operate, "_interactive", lambda: True)
    result = CliRunner().invoke(main, ["bootstrap", "--stage", "dev"], input="y\ny\ny\ny\n", catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.count("Execute this change set on ") == 4
    declined = CliRunner().invoke(main, ["bootstrap", "--stage", "dev"], input="n\n", catch_exceptions=False)
    assert declined.exit_code == 0 and "Execute this change set" not in declined.output  # all up to date
    monkeypatch.setattr(operate, "settings_for", lambda _: Settings.defaults(rpo_target_minutes=45))
    declined = CliRunner().invoke(main, ["bootstrap", "--stage", "dev"], input="n\n", catch_exceptions=False)
    assert declined.exit_code == 0, declined.output
    assert "jams-dr-support: change set declined and deleted: nothing changed" in declined.output
    _, params, _ = _state(clients, cli.recovery_region, "jams-dr-support")
    assert params["RpoTargetSeconds"] == str(cli.rpo_target_seconds)


# --------------------------------------------------------------- CloudFormation facts the embedded AWS keeps


def _support_request(name: str, kind: str, rpo: str) -> dict[str, Any]:
    return {"StackName": "facts", "ChangeSetName": name, "ChangeSetType": kind,
            "TemplateBody": (TEMPLATES / "dr-support.yaml").read_text(), "Capabilities": ["CAPABILITY_NAMED_IAM"],
            # Every parameter explicit, defaults included: moto refused this as "No updates are to be performed."
            "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in
                           {"EnvironmentName": "facts", "RpoTargetSeconds": rpo, "NotificationEmail": ""}.items()]}


def test_embedded_change_sets_behave_as_cloudformation(clients: ClientFactory) -> None:
    """CloudFormation API reference (CreateChangeSet, DescribeChangeSet Status/StatusReason, ExecuteChangeSet,
    ChangeSetSummary ExecutionStatus); User Guide, "Update CloudFormation stacks using change sets".
    Each assertion fails on plain moto 5.2.5 (jamsdr/changeset_fidelity.py says how)."""
    cfn = clients.client("cloudformation", "us-west-2")
    cfn.create_change_set(**_support_request("create", "CREATE", "900"))
    cfn.execute_change_set(ChangeSetName="create", StackName="facts")
    stack = describe_stack(cfn, "facts")
    assert stack is not None and stack["StackStatus"] == "CREATE_COMPLETE"
    assert {o["OutputKey"] for o in stack.get("Outputs", [])} >= {"TopicArn", "LedgerTableName"}  # moto: none

    # The same template and values: a FAILED change set, not a refused request.
    cfn.create_change_set(**_support_request("same", "UPDATE", "900"))
    same = cfn.describe_change_set(ChangeSetName="same", StackName="facts")
    assert (same["Status"], same["StatusReason"], same["ExecutionStatus"]) == ("FAILED", NO_CHANGES_REASON,
                                                                              "UNAVAILABLE")
    cfn.delete_change_set(ChangeSetName="same", StackName="facts")

    # A changed parameter modifies the resources that reference it.
    cfn.create_change_set(**_support_request("rpo", "UPDATE", "1200"))
    rpo = cfn.describe_change_set(ChangeSetName="rpo", StackName="facts")
    assert [(c["ResourceChange"]["Action"], c["ResourceChange"]["LogicalResourceId"]) for c in rpo["Changes"]] == [
        ("Modify", "RpoAlarm")]
    cfn.create_change_set(**_support_request("other", "UPDATE", "600"))
    cfn.execute_change_set(ChangeSetName="rpo", StackName="facts")
    assert parameters_of(describe_stack(cfn, "facts") or {})["RpoTargetSeconds"] == "1200"
    # Executing one deletes the others; the same values again are "no changes" (moto kept the old ones).
    assert [c["ChangeSetName"] for c in cfn.list_change_sets(StackName="facts")["Summaries"]
            if c["ExecutionStatus"] != "EXECUTE_COMPLETE"] == []
    cfn.create_change_set(**_support_request("again", "UPDATE", "1200"))
    assert cfn.describe_change_set(ChangeSetName="again", StackName="facts")["Status"] == "FAILED"
    cfn.delete_change_set(ChangeSetName="again", StackName="facts")

    # A stack updated after a change set was made: the change set is OBSOLETE and cannot run.
    cfn.create_change_set(**_support_request("stale", "UPDATE", "300"))
    current = describe_stack(cfn, "facts")
    assert current is not None
    cfn.update_stack(StackName="facts", UsePreviousTemplate=True, Capabilities=["CAPABILITY_NAMED_IAM"],
                     Parameters=[{"ParameterKey": k, "ParameterValue": v if k != "RpoTargetSeconds" else "450"}
                                 for k, v in parameters_of(current).items()])
    stale = cfn.describe_change_set(ChangeSetName="stale", StackName="facts")
    assert stale["ExecutionStatus"] == "OBSOLETE"
    with pytest.raises(ClientError) as refused:
        cfn.execute_change_set(ChangeSetName="stale", StackName="facts")
    assert refused.value.response["Error"]["Code"] == "InvalidChangeSetStatus"
    assert parameters_of(describe_stack(cfn, "facts") or {})["RpoTargetSeconds"] == "450"


def test_bootstrap_never_executes_a_change_set_made_stale_by_a_pin(
    clients: ClientFactory, stage: Settings,
) -> None:
    """The pipeline pins between bootstrap's change set and its execution: the old pin is not written back."""
    operate.bootstrap_stage(stage, clients, lambda _: None, function_prefix=PREFIX)
    _pin(clients, stage, PINNED)
    deploy_stack(clients, stage.primary_region, stage.network_stack_name, "jams-network.yaml",
                 {"EnvironmentName": stage.environment, "DBEngineMajorVersion": "14.00"})

    def pin_meanwhile(review: ChangeSetReview) -> bool:
        if review.stack == stage.standby_stack_name:
            _pin(clients, stage, "jams-dr-202612050405-copy")
        return True

    with pytest.raises(DeployError, match="changed after change set"):
        operate.bootstrap_stage(stage, clients, lambda _: None, function_prefix=PREFIX, review=pin_meanwhile)
    _, params, _ = _state(clients, stage.recovery_region, stage.standby_stack_name)
    assert params[PIN_PARAMETER] == "jams-dr-202612050405-copy"
    assert _change_sets(clients, stage.recovery_region, stage.standby_stack_name) == []



# ------------------------------------------------------------------- failures (requests asserted: moto cannot fail)


class _OneClient:
    """A ClientFactory stand-in handing out one stubbed CloudFormation client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def client(self, service: str, region: str) -> Any:
        assert (service, region) == ("cloudformation", "us-west-2")
        return self._client


def _stubbed() -> tuple[Any, Stubber]:
    client = boto3.client("cloudformation", region_name="us-west-2")
    return client, Stubber(client)


_EVENTS = {"StackEvents": [
    {"StackId": "id", "EventId": "2", "StackName": "jams-dr-support", "Timestamp": datetime(2026, 12, 6, tzinfo=UTC),
     "LogicalResourceId": "CopyKey", "ResourceStatus": "CREATE_FAILED", "ResourceStatusReason": "Resource creation cancelled"},
    {"StackId": "id", "EventId": "1", "StackName": "jams-dr-support", "Timestamp": datetime(2026, 12, 6, tzinfo=UTC),
     "LogicalResourceId": "LedgerTable", "ResourceStatus": "CREATE_FAILED",
     "ResourceStatusReason": "jams-dr-ledger already exists"},
]}


def test_a_failed_first_creation_is_deleted_by_cloudformation_and_the_error_quotes_its_cause() -> None:
    client, stub = _stubbed()
    stack_id = "arn:aws:cloudformation:us-west-2:123456789012:stack/jams-dr-support/1"
    change_set_id = "arn:aws:cloudformation:us-west-2:123456789012:changeSet/c/1"
    stub.add_client_error("describe_stacks", "ValidationError", "Stack with id jams-dr-support does not exist")
    stub.add_response("create_change_set", {"Id": change_set_id, "StackId": stack_id}, {
        "StackName": "jams-dr-support", "ChangeSetName": ANY, "ChangeSetType": "CREATE", "TemplateBody": ANY,
        "Parameters": [{"ParameterKey": "EnvironmentName", "ParameterValue": "jams"}],
        "Capabilities": ["CAPABILITY_NAMED_IAM"], "Tags": [{"Key": "managed-by", "Value": "jams-dr"}],
        "ClientToken": ANY, "Description": ANY,
        "OnStackFailure": "DELETE",  # the old CreateStack OnFailure=DELETE: no ROLLBACK_COMPLETE left behind
    })
    stub.add_response("describe_change_set", {"Status": "CREATE_COMPLETE"}, {"ChangeSetName": change_set_id})
    stub.add_response("describe_change_set", {"Changes": [], "Status": "CREATE_COMPLETE"},
                      {"ChangeSetName": change_set_id})
    stub.add_response("execute_change_set", {}, {"ChangeSetName": change_set_id})
    deleted = {"Stacks": [{"StackName": "jams-dr-support", "StackId": stack_id, "StackStatus": "DELETE_COMPLETE",
                           "CreationTime": datetime(2026, 12, 6, tzinfo=UTC)}]}
    stub.add_response("describe_stacks", deleted, {"StackName": stack_id})
    stub.add_response("describe_stacks", deleted, {"StackName": stack_id})
    stub.add_response("describe_stack_events", _EVENTS, {"StackName": stack_id})
    with stub, pytest.raises(DeployError) as failed:
        deploy(_OneClient(client), "us-west-2", "jams-dr-support", "dr-support.yaml",  # type: ignore[arg-type]
               {"EnvironmentName": "jams"})
    message = str(failed.value)
    assert "jams-dr-support in us-west-2" in message and "LedgerTable CREATE_FAILED: jams-dr-ledger already exists" in message
    assert "deleted it" in message and "run bootstrap again" in message
    stub.assert_no_pending_responses()


def test_a_stack_in_rollback_complete_is_refused_with_the_fix() -> None:
    client, stub = _stubbed()
    stub.add_response("describe_stacks", {"Stacks": [{
        "StackName": "jams-dr-support", "StackId": "id", "StackStatus": "ROLLBACK_COMPLETE",
        "CreationTime": datetime(2026, 12, 6, tzinfo=UTC)}]}, {"StackName": "jams-dr-support"})
    stub.add_response("describe_stack_events", _EVENTS, {"StackName": "jams-dr-support"})
    with stub, pytest.raises(DeployError) as refused:
        deploy(_OneClient(client), "us-west-2", "jams-dr-support", "dr-support.yaml",  # type: ignore[arg-type]
               {"EnvironmentName": "jams"})
    message = str(refused.value)
    assert "ROLLBACK_COMPLETE" in message and "jams-dr-ledger already exists" in message
    assert "aws cloudformation delete-stack --stack-name jams-dr-support --region us-west-2" in message
    stub.assert_no_pending_responses()  # no change set was even attempted
