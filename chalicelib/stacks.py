"""The CloudFormation gateway: stacks read and updated, and every set of stack statuses jams-dr decides on.

Shared by the snapshot pipeline (the standby stack's pin), the recovery chain and the operator CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from chalicelib.aws import error_code
from chalicelib.errors import AwsError

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_cloudformation.type_defs import ParameterTypeDef

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
# A standby stack in these states has a usable DBSnapshotIdentifier (a failed pin update rolled back
# to the previous pin, which is still a valid recovery point).
STANDBY_USABLE = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"})
# A pin update finishes within a minute or two: worth waiting for rather than failing the preflight.
STANDBY_SETTLING = frozenset(
    {"UPDATE_IN_PROGRESS", "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "UPDATE_ROLLBACK_IN_PROGRESS",
     "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS"}
)
# Stack states from which an update may start (anything *_IN_PROGRESS means "pin pending").
UPDATABLE = frozenset(
    {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE", "IMPORT_ROLLBACK_COMPLETE"}
)

# The standby stack's parameter that names the recovery point (the pin).
PIN_PARAMETER = "DBSnapshotIdentifier"
# describe_stacks masks NoEcho parameters; passing the mask back would overwrite the real value.
NO_ECHO_MASK = "****"


def describe_stack(cfn: CloudFormationClient, name: str) -> dict[str, Any] | None:
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


def stack_outputs(cfn: CloudFormationClient, name: str) -> dict[str, str]:
    stack = describe_stack(cfn, name)
    if stack is None:
        raise AwsError(f"stack {name!r} does not exist", code="StackNotFound")
    return outputs_of(stack)


def as_parameters(values: Mapping[str, str]) -> list[ParameterTypeDef]:
    """Explicit parameter values: never UsePreviousValue, which moto cannot handle on defaults."""
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


# --- the standby stack's pin ----------------------------------------------------------------------


def pin_parameters(stack: Mapping[str, Any], snapshot_id: str) -> list[ParameterTypeDef]:
    """Every parameter of the stack passed back explicitly, with the pin replaced.

    Explicit values because moto crashes on UsePreviousValue for parameters left at their default;
    only NoEcho parameters (whose value describe_stacks masks) must use UsePreviousValue.
    """
    current = parameters_of(stack)
    if PIN_PARAMETER not in current:
        raise AwsError(
            f"stack {stack.get('StackName')} has no {PIN_PARAMETER} parameter; STANDBY_STACK_NAME must name "
            "the standby network stack (templates/jams-network.yaml) in the recovery region",
            code="StandbyStackInvalid",
        )
    params: list[ParameterTypeDef] = []
    for key, value in current.items():
        if key == PIN_PARAMETER:
            params.append({"ParameterKey": key, "ParameterValue": snapshot_id})
        elif value == NO_ECHO_MASK:
            params.append({"ParameterKey": key, "UsePreviousValue": True})
        else:
            params.append({"ParameterKey": key, "ParameterValue": value})
    return params


PinOutcome = Literal["updated", "unchanged", "busy"]


def update_pin(cfn: CloudFormationClient, stack: Mapping[str, Any], snapshot_id: str) -> PinOutcome:
    """Start (never wait for) the standby stack update that pins ``snapshot_id``.

    "unchanged": CloudFormation found nothing to update (a concurrent tick pinned it already);
    "busy": another update is running (a concurrent tick, or an operator): the next tick retries.
    """
    try:
        cfn.update_stack(
            StackName=stack["StackName"],
            UsePreviousTemplate=True,
            Parameters=pin_parameters(stack, snapshot_id),
            Capabilities=list(stack.get("Capabilities", [])),
        )
    except ClientError as exc:
        message = str(exc)
        if error_code(exc) == "ValidationError" and "No updates are to be performed" in message:
            return "unchanged"
        if error_code(exc) == "ValidationError" and "_IN_PROGRESS state and can not be updated" in message:
            return "busy"
        raise
    return "updated"


