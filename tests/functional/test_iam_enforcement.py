"""Every function runs as its own role in the embedded drill (docs/iam.md, "Enforced in the embedded drill").

Each call a function makes is checked against the policy jamsdr/iam.py generates for it, and refused
as IAM refuses it: the drill passes with the generated policies, fails naming the function and the
action when one action is removed, and passes again once it is back.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from click.testing import CliRunner

from chalicelib.aws import ClientFactory, closed_loopback_endpoint
from chalicelib.settings import Settings
from jamsdr import iam
from jamsdr.cli import main
from jamsdr.drill import run_embedded_drill
from jamsdr.iam_enforcement import Call, Enforcer, acting_as, allows
from jamsdr.scenario import parse_scenario

pytestmark = [
    pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning:aws_lambda_powertools.*"),
]

REMOVED_FUNCTION = "advance_execution"
REMOVED_ACTION = "cloudformation:CreateStack"


def _without(policy: dict[str, Any], action: str) -> dict[str, Any]:
    """``policy`` with ``action`` taken out of every statement (a statement left empty is dropped)."""
    trimmed = copy.deepcopy(policy)
    kept = []
    for statement in trimmed["Statement"]:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        statement["Action"] = [a for a in actions if a != action]
        if statement["Action"]:
            kept.append(statement)
    trimmed["Statement"] = kept
    return trimmed


class _Spy:
    """Wraps Enforcer.for_settings: keeps every enforcer the drill builds, optionally trims one policy."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.enforcers: list[Enforcer] = []
        self.remove: tuple[str, str] | None = None
        original = Enforcer.for_settings.__func__  # type: ignore[attr-defined]

        def for_settings(cls: type[Enforcer], settings: Settings, stage: str = "drill") -> Enforcer:
            enforcer: Enforcer = original(cls, settings, stage)
            if self.remove is not None:
                function, action = self.remove
                assert action in str(enforcer.policies[function]), "the action to remove is in the policy"
                enforcer.policies[function] = _without(enforcer.policies[function], action)
            self.enforcers.append(enforcer)
            return enforcer

        monkeypatch.setattr(Enforcer, "for_settings", classmethod(for_settings))


def test_the_drill_fails_naming_a_removed_action_and_passes_again_once_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(monkeypatch)
    spy.remove = (REMOVED_FUNCTION, REMOVED_ACTION)
    denied = CliRunner().invoke(main, ["drill", "--report-dir", str(tmp_path / "denied")])

    assert denied.exit_code == 1, denied.output
    refusal = (f"assumed-role/jams-dr-drill-{REMOVED_FUNCTION}/{REMOVED_FUNCTION} is not authorized to perform: "
               f"{REMOVED_ACTION} on resource: arn:aws:cloudformation:us-west-2:123456789012:stack/jams-app/")
    flat = " ".join(denied.output.split())  # the console wraps long lines
    assert refusal in flat
    assert f"because no identity-based policy allows the {REMOVED_ACTION} action" in flat
    [enforcer] = spy.enforcers
    assert [(d.function, d.action) for d in enforcer.denied] == [(REMOVED_FUNCTION, REMOVED_ACTION)]

    spy.remove = None
    restored = CliRunner().invoke(main, ["drill", "--report-dir", str(tmp_path / "restored")])

    assert restored.exit_code == 0, restored.output
    assert "not authorized" not in restored.output


def test_the_default_drill_passes_with_every_function_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    seen: list[str] = []
    check = Enforcer.check

    def counting(self: Enforcer, call: Call) -> Any:
        seen.append(call.function)
        return check(self, call)

    monkeypatch.setattr(Enforcer, "check", counting)
    result = run_embedded_drill(parse_scenario({}), tmp_path)

    assert result.matches_expectation, result.report
    assert result.iam_denied == []
    [enforcer] = spy.enforcers
    assert enforcer.denied == []
    # The functions the default drill runs, each checked on its own calls.
    assert {"snapshot_tick", "heartbeat_watcher", "advance_execution", "execution_sweeper"} <= set(seen)


# ---------------------------------------------------------------------------------------- the evaluator


@pytest.fixture(scope="module")
def dev_policies() -> dict[str, dict[str, Any]]:
    [dev] = [stage for stage in iam.load_stages() if stage.name == "dev"]
    return iam.policies(dev.scope)


def _copy_call(function: str, region: str = "us-west-2") -> Call:
    return Call(function, "rds", "CopyDBSnapshot", region, {
        "SourceDBSnapshotIdentifier": "arn:aws:rds:us-east-1:123456789012:snapshot:jams-dev-dr-202612060500",
        "TargetDBSnapshotIdentifier": "jams-dev-dr-202612060500-copy"})


def test_the_evaluator_allows_a_granted_call_and_denies_an_ungranted_one(
    dev_policies: dict[str, dict[str, Any]]
) -> None:
    enforcer = Enforcer(dev_policies)

    assert enforcer.check(_copy_call("snapshot_tick")) is None
    denial = enforcer.check(_copy_call("heartbeat_watcher"))
    assert denial is not None
    assert (denial.function, denial.action) == ("heartbeat_watcher", "rds:CopyDBSnapshot")
    assert denial.resource == "arn:aws:rds:us-west-2:123456789012:snapshot:jams-dev-dr-202612060500-copy"
    assert not allows(dev_policies["snapshot_tick"], "rds:CopyDBSnapshot",
                      ("arn:aws:rds:us-west-2:123456789012:snapshot:someone-elses",))
    assert enforcer.check(Call("no_such_function", "sns", "Publish", "us-west-2", {"TopicArn": "arn:x"})) is not None


def test_a_refused_call_raises_the_access_denied_iam_returns_and_unchecked_calls_pass(
    dev_policies: dict[str, dict[str, Any]],
) -> None:
    # No endpoint is reached: the refusal comes before the request is built, and the unchecked call is
    # sent to a closed port (its connection error shows that it went on).
    factory = ClientFactory(endpoint_url=closed_loopback_endpoint(), max_attempts=1)
    enforcer = Enforcer(dev_policies, lambda function: f"jams-dr-dev-{function}")
    enforcer.install(factory)
    try:
        dynamodb = factory.client("dynamodb", "us-west-2")
        with acting_as("snapshot_tick"), pytest.raises(ClientError) as refused:
            dynamodb.delete_table(TableName="jams-dr-ledger")
        assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
        assert refused.value.response["Error"]["Message"] == (
            "User: arn:aws:sts::123456789012:assumed-role/jams-dr-dev-snapshot_tick/snapshot_tick is not authorized "
            "to perform: dynamodb:DeleteTable on resource: arn:aws:dynamodb:us-west-2:123456789012:table/"
            "jams-dr-ledger because no identity-based policy allows the dynamodb:DeleteTable action")
        with pytest.raises(EndpointConnectionError):
            dynamodb.delete_table(TableName="jams-dr-ledger")
    finally:
        enforcer.uninstall()
