"""What CloudFormation, IAM and EC2 would refuse on a first real deployment, and moto does not (issue 13).

Each test states the AWS behaviour and fails if the product stops respecting it:
- the pin's UpdateStack runs with the snapshot pipeline's own narrow credentials, so it must touch no
  resource of the network stack (a resource handler would need permissions the pipeline lacks, and a
  refused call leaves the standby stack UPDATE_ROLLBACK_FAILED); it must still change an output, or
  CloudFormation answers "No updates are to be performed" and the pin never moves;
- the images an application stack launches are checked in the target region before anything changes
  (otherwise RunInstances fails inside the stack, after the lease and the fence);
- the application stack takes the schedulers' instance profile from the support stack: it writes
  nothing to IAM, whose control plane is in us-east-1 only.
See docs/aws-fidelity.md for the sources.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chalicelib.keys import APP_PARAMETERS_KEY
from chalicelib.snapshots.publish import pinned_snapshot_parameter
from chalicelib.stacks import describe_stack, outputs_of, parameters_of
from tests.functional.test_recovery_chain import Env, _Hooks, hooks  # noqa: F401 - the chain's fixtures
from tests.functional.test_recovery_chain import env as chain_env  # noqa: F401
from tests.functional.test_templates import load

PIN = "DBSnapshotIdentifier"


@pytest.fixture
def env(chain_env: Env) -> Env:  # noqa: F811 - the chain tests' world
    return chain_env


# ------------------------------------------------------------------------------------------- the pin


def _references(node: Any, names: set[str]) -> bool:
    """Does ``node`` use any of ``names`` (Ref, Condition, Fn::If, or ${name} inside Fn::Sub)?"""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("Ref", "Condition") and value in names:
                return True
            if key == "Fn::If" and value[0] in names:
                return True
            if key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                if any("${" + name + "}" in text for name in names):
                    return True
            if _references(value, names):
                return True
    elif isinstance(node, list):
        return any(_references(value, names) for value in node)
    return False


def _pin_dependents(template: dict[str, Any]) -> set[str]:
    """The pin parameter and every condition that depends on it, transitively."""
    names = {PIN}
    conditions = template.get("Conditions", {})
    grew = True
    while grew:
        grew = False
        for name, body in conditions.items():
            if name not in names and _references(body, names):
                names.add(name)
                grew = True
    return names


def test_the_pin_touches_no_resource_of_the_network_stack_and_changes_an_output() -> None:
    template = load("jams-network.yaml")
    pin = _pin_dependents(template)
    touched = sorted(name for name, resource in template["Resources"].items() if _references(resource, pin))
    assert touched == [], f"{touched} depend on {PIN}: the pin would run their handlers with snapshot_tick's role"
    changed = sorted(name for name, output in template["Outputs"].items() if _references(output, pin))
    assert changed == ["PinnedSnapshotIdentifier"], "without a changed output the pin is 'No updates'"


def test_the_dependency_check_sees_a_resource_that_uses_the_pin() -> None:
    """The check above can fail: the SSM parameter the network stack used to own is caught."""
    template = load("jams-network.yaml")
    template["Resources"]["PinnedSnapshotParameter"] = {
        "Type": "AWS::SSM::Parameter",
        "Properties": {"Type": "String", "Value": {"Fn::If": ["HasPinnedSnapshot", {"Ref": PIN}, "none"]}}}
    pin = _pin_dependents(template)
    assert "HasPinnedSnapshot" in pin
    assert _references(template["Resources"]["PinnedSnapshotParameter"], pin)


def test_the_pipeline_publishes_the_settled_pin(env: Env) -> None:
    """The SSM parameter is the pipeline's to write (the pin request itself, without RoleARN, is asserted
    in tests/functional/test_snapshots.py::test_full_cycle_from_nothing_to_a_pinned_copy)."""
    from tests.functional.test_snapshots import tick

    s = env.s
    ssm = env.clients.client("ssm", s.recovery_region)
    name = pinned_snapshot_parameter(s.environment, s.recovery_region)
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=name)
    tick(s, env.clients, env.clock)
    standby = describe_stack(env.cfn(s.recovery_region), s.standby_stack_name)
    assert standby is not None
    assert outputs_of(standby)["PinnedSnapshotParameterName"] == name
    first = ssm.get_parameter(Name=name)["Parameter"]
    assert first["Value"] == parameters_of(standby)[PIN]
    tick(s, env.clients, env.clock)  # unchanged pin: no new parameter version
    assert ssm.get_parameter(Name=name)["Parameter"]["Version"] == first["Version"]


# ------------------------------------------------------------------------------------------- images


def _parameters_file(env: Env, values: dict[str, str]) -> None:
    env.clients.client("s3", env.s.recovery_region).put_object(
        Bucket=env.s.artifact_bucket, Key=APP_PARAMETERS_KEY,
        Body=json.dumps({"default": {"AgentLoadBalancerType": "application", **values}}).encode())


def _nothing_changed(env: Env, execution_id: str) -> None:
    s = env.s
    assert env.app_stack(s.recovery_region) is None
    lease = env.ledger().get_lease("recovery")
    assert lease is None or lease.holder != execution_id
    primary = env.app_stack(s.primary_region)
    assert primary is not None
    scheduler = env.instance(s.primary_region, outputs_of(primary)["PrimarySchedulerInstanceId"])
    assert scheduler["State"]["Name"] == "running"  # not fenced


def test_a_missing_image_parameter_stops_the_recovery_in_preflight(env: Env) -> None:
    _parameters_file(env, {"SchedulerImageId": f"/jams-dr/{env.s.environment}/scheduler-image"})
    execution = env.recover()
    assert execution.status == "failed" and execution.failed_state == "preflight", execution.error
    assert "ImageUnavailable" in (execution.error or "")
    assert f"/jams-dr/{env.s.environment}/scheduler-image" in (execution.error or "")
    assert env.s.recovery_region in (execution.error or "")
    _nothing_changed(env, execution.execution_id)


def test_an_image_that_does_not_exist_in_the_recovery_region_stops_the_recovery(env: Env) -> None:
    """AMIs are regional: the operator's golden image parameter names an id only the primary knows."""
    name = f"/jams-dr/{env.s.environment}/scheduler-image"
    env.clients.client("ssm", env.s.recovery_region).put_parameter(
        Name=name, Value="ami-0123456789abcdef0", Type="String", DataType="text")
    _parameters_file(env, {"SchedulerImageId": name, "AgentImageId": "ami-0fedcba9876543210"})
    execution = env.recover()
    assert execution.status == "failed" and execution.failed_state == "preflight", execution.error
    error = execution.error or ""
    assert "SchedulerImageId=ami-0123456789abcdef0 (not found)" in error
    assert "AgentImageId=ami-0fedcba9876543210 (not found)" in error
    _nothing_changed(env, execution.execution_id)


def test_the_recovery_launches_the_region_s_own_image_and_the_support_stack_s_profile(
    env: Env, hooks: _Hooks  # noqa: F811
) -> None:
    name = f"/jams-dr/{env.s.environment}/scheduler-image"
    image = "ami-1812c061"  # a Windows image of moto's catalogue, present in every region
    env.clients.client("ssm", env.s.recovery_region).put_parameter(
        Name=name, Value=image, Type="String", DataType="aws:ec2:image")
    _parameters_file(env, {"SchedulerImageId": name})
    created: list[dict[str, Any]] = []
    hooks.on("before-parameter-build.cloudformation.CreateStack", lambda params, **_: created.append(params))

    execution = env.recover()

    assert execution.status == "succeeded", execution.error
    (request,) = created
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in request["Parameters"]}
    assert parameters["SchedulerInstanceProfileName"] == env.s.scheduler_instance_profile_name
    assert parameters["SchedulerImageId"] == name  # CloudFormation resolves it in the stack's region
    # No IAM resource in the stack: without the capability, CloudFormation refuses any that comes back.
    assert not request.get("Capabilities")
    stack = env.app_stack(env.s.recovery_region)
    assert stack is not None
    scheduler = env.instance(env.s.recovery_region, outputs_of(stack)["PrimarySchedulerInstanceId"])
    assert scheduler["ImageId"] == image
    assert scheduler["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/{env.s.scheduler_instance_profile_name}")
