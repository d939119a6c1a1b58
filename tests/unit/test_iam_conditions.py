"""The embedded drill's IAM evaluator applies the conditions a request itself can answer (docs/iam.md).

IAM evaluates a statement's Condition against the request context: ``aws:RequestedRegion`` is the region
called, ``aws:RequestTag/<key>`` the tags the request carries, and a service's ``CreateAction`` the operation
that triggers the tagging (IAM User Guide, "AWS global condition context keys";
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html; EC2 User Guide,
"Grant permission to tag Amazon EC2 resources during creation"). A key the request lacks fails a
StringEquals condition.
"""

from __future__ import annotations

from typing import Any

from chalicelib.settings import Settings
from jamsdr.iam_enforcement import Call, Enforcer, allows, request_context

SETTINGS = Settings.defaults(environment="jams", primary_region="us-east-1", recovery_region="us-west-2")
VPC = "vpc-0123456789abcdef0"


def _enforcer() -> Enforcer:
    return Enforcer.for_settings(SETTINGS)


def _create_group(tags: list[dict[str, str]] | None, region: str = "us-east-1") -> Call:
    params: dict[str, Any] = {"GroupName": "jams-quarantine", "Description": "quarantine", "VpcId": VPC}
    if tags is not None:
        params["TagSpecifications"] = [{"ResourceType": "security-group", "Tags": tags}]
    return Call("advance_execution", "ec2", "CreateSecurityGroup", region, params)


def test_a_quarantine_group_created_with_the_environment_tag_is_allowed() -> None:
    assert _enforcer().check(_create_group([{"Key": "jams-dr:environment", "Value": "jams"}])) is None


def test_a_quarantine_group_created_without_the_tag_or_with_another_value_is_refused() -> None:
    untagged = _enforcer().check(_create_group(None))
    assert untagged is not None and untagged.action == "ec2:CreateSecurityGroup"
    other = _enforcer().check(_create_group([{"Key": "jams-dr:environment", "Value": "someone-else"}]))
    assert other is not None and other.action == "ec2:CreateSecurityGroup"


def test_a_call_in_a_region_the_statement_does_not_name_is_refused() -> None:
    policy = {"Statement": [{"Effect": "Allow", "Action": ["cloudwatch:GetMetricData"], "Resource": "*",
                             "Condition": {"StringEquals": {"aws:RequestedRegion": ["us-east-1", "us-west-2"]}}}]}
    enforcer = Enforcer({"heartbeat_watcher": policy})
    here = Call("heartbeat_watcher", "cloudwatch", "GetMetricData", "us-west-2", {"MetricDataQueries": []})
    elsewhere = Call("heartbeat_watcher", "cloudwatch", "GetMetricData", "eu-west-1", {"MetricDataQueries": []})
    assert enforcer.check(here) is None
    denied = enforcer.check(elsewhere)
    assert denied is not None and (denied.action, denied.resource) == ("cloudwatch:GetMetricData", "*")


def test_the_tagging_a_create_triggers_holds_only_for_that_create_action() -> None:
    policy = {"Statement": [{"Effect": "Allow", "Action": ["ec2:CreateTags"], "Resource": "*",
                             "Condition": {"StringEquals": {"ec2:CreateAction": "CreateSecurityGroup"}}}]}
    assert allows(policy, "ec2:CreateTags", None, {"ec2:CreateAction": ["CreateSecurityGroup"]})
    assert not allows(policy, "ec2:CreateTags", None, {"ec2:CreateAction": ["RunInstances"]})
    # Called by itself (no create), CreateTags has no CreateAction: the statement does not apply.
    assert not allows(policy, "ec2:CreateTags", None, {"aws:RequestedRegion": ["us-east-1"]})


def test_keys_the_request_cannot_tell_are_not_evaluated() -> None:
    policy = {"Statement": [{"Effect": "Allow", "Action": ["ec2:StopInstances"], "Resource": "*",
                             "Condition": {"StringEquals": {"aws:ResourceTag/jams-dr:environment": "jams"}}}]}
    assert allows(policy, "ec2:StopInstances", None, {"aws:RequestedRegion": ["us-east-1"]})


def test_the_request_context_reads_region_tags_and_tag_specifications() -> None:
    call = Call("advance_execution", "cloudformation", "CreateStack", "us-west-2",
                {"StackName": "jams-app", "Tags": [{"Key": "managed-by", "Value": "jams-dr"}]})
    assert request_context(call) == {"aws:RequestedRegion": ["us-west-2"], "aws:RequestTag/managed-by": ["jams-dr"]}
    context = request_context(_create_group([{"Key": "jams-dr:environment", "Value": "jams"}]))
    assert context["aws:RequestTag/jams-dr:environment"] == ["jams"]
