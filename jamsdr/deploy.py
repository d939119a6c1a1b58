"""Deploying the project's CloudFormation stacks (bootstrap and the embedded world share this)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from chalicelib.aws import ClientFactory
from chalicelib.stacks import as_parameters, describe_stack, outputs_of

if TYPE_CHECKING:
    from mypy_boto3_cloudformation.literals import CapabilityType

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def deploy_stack(
    clients: ClientFactory,
    region: str,
    name: str,
    template: str,
    parameters: dict[str, str],
    *,
    capabilities: tuple[CapabilityType, ...] = ("CAPABILITY_NAMED_IAM",),
) -> dict[str, str]:
    """Create the stack if absent, wait for it, return its outputs (bootstrap and embedded world)."""
    cfn = clients.client("cloudformation", region)
    body = (TEMPLATES / template).read_text()
    if describe_stack(cfn, name) is None:
        cfn.create_stack(
            StackName=name,
            TemplateBody=body,
            Parameters=as_parameters(parameters),
            Capabilities=list(capabilities),
            OnFailure="DELETE",
            Tags=[{"Key": "managed-by", "Value": "jams-dr"}],
        )
        cfn.get_waiter("stack_create_complete").wait(
            StackName=name, WaiterConfig={"Delay": 5, "MaxAttempts": 720}
        )
    stack = describe_stack(cfn, name)
    if stack is None or stack["StackStatus"] not in {"CREATE_COMPLETE", "UPDATE_COMPLETE"}:
        status = None if stack is None else stack["StackStatus"]
        raise RuntimeError(f"stack {name} in {region} is {status}, expected CREATE_COMPLETE")
    return outputs_of(stack)


NETWORK_TO_APP = (
    "VpcId", "PublicSubnet1Id", "PublicSubnet2Id", "PrivateSubnet1Id", "PrivateSubnet2Id",
    "PrivateRouteTable1Id", "PrivateRouteTable2Id", "DrillSubnet1Id", "DrillSubnet2Id",
    "SchedulerSecurityGroupId", "AgentSecurityGroupId",
    "LoadBalancerSecurityGroupId", "DatabaseSecurityGroupId", "DBSubnetGroupName", "OptionGroupName",
)


def app_parameters(network_outputs: dict[str, str], **extra: str) -> dict[str, str]:
    """Application stack parameters: the network stack's outputs under the same names, plus extras."""
    missing = [k for k in NETWORK_TO_APP if k not in network_outputs]
    if missing:
        raise RuntimeError(f"network stack lacks outputs {missing}")
    return {**{k: network_outputs[k] for k in NETWORK_TO_APP}, **extra}
