"""CloudFormation helpers shared by the snapshot pipeline, the recovery chain and the operator CLI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.aws import error_code
from chalicelib.errors import AwsError

TERMINAL_OK = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"})
TERMINAL_BAD = frozenset(
    {
        "CREATE_FAILED",
        "ROLLBACK_COMPLETE",
        "ROLLBACK_FAILED",
        "DELETE_FAILED",
        "UPDATE_ROLLBACK_COMPLETE",
        "UPDATE_ROLLBACK_FAILED",
        "UPDATE_FAILED",
        "IMPORT_ROLLBACK_COMPLETE",
        "IMPORT_ROLLBACK_FAILED",
    }
)


def describe_stack(cfn: Any, name: str) -> dict[str, Any] | None:
    """The stack, or None when it does not exist (or is deleted)."""
    try:
        stacks = cfn.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        if error_code(exc) == "ValidationError" and "does not exist" in str(exc):
            return None
        raise
    for stack in stacks:
        if stack.get("StackStatus") != "DELETE_COMPLETE":
            return dict(stack)
    return None


def outputs_of(stack: Mapping[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", [])}


def parameters_of(stack: Mapping[str, Any]) -> dict[str, str]:
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}


def stack_outputs(cfn: Any, name: str) -> dict[str, str]:
    stack = describe_stack(cfn, name)
    if stack is None:
        raise AwsError(f"stack {name!r} does not exist", code="StackNotFound")
    return outputs_of(stack)


def as_parameters(values: Mapping[str, str]) -> list[dict[str, str]]:
    """Explicit parameter values: never UsePreviousValue, which moto cannot handle on defaults."""
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


