"""Deploying the project's CloudFormation stacks (bootstrap and the embedded world share this).

Every stack is created or updated through a change set, so an operator sees what a re-run of
`jams-dr bootstrap` changes before it changes anything (a new RPO target, a new region pair):

1. CreateChangeSet: ``CREATE`` when the stack does not exist, ``UPDATE`` when it does. On an update
   every parameter is passed with an explicit value (moto crashes on ``UsePreviousValue`` for a
   parameter left at its default): the stack's current values, overridden by the given ones, except
   the ``keep`` parameters, whose current value always wins (the standby stack's pin). Only a NoEcho
   value, which DescribeStacks masks, goes back as ``UsePreviousValue``.
2. Wait for it (waiter ``change_set_create_complete``). "No changes" is a FAILED change set whose
   ``StatusReason`` says "The submitted information didn't contain changes" (sometimes "No updates are to
   be performed."; CloudFormation API reference, DescribeChangeSet): the stack is up to date; the
   failed change set is deleted.
3. Show the changes (every page of DescribeChangeSet) to ``review``, which answers whether to execute.
   A declined change set is deleted (and, for a CREATE, the empty ``REVIEW_IN_PROGRESS`` stack it made):
   nothing changes.
4. ExecuteChangeSet and wait (``stack_create_complete`` / ``stack_update_complete``). If the stack was
   updated after the change set was made (the snapshot pipeline pinned a new recovery point on the
   standby stack), CloudFormation marks the change set ``OBSOLETE`` and refuses to execute it
   (API reference, ChangeSetSummary ``ExecutionStatus``): the stale pin is never written back.

A failed CREATE is deleted by CloudFormation (``OnStackFailure=DELETE``, the CreateStack
``OnFailure=DELETE`` of before): a stack left in ``ROLLBACK_COMPLETE`` can never be updated, only
deleted, so keeping it would only block the next bootstrap; its events stay readable by stack id and
the error quotes the first failure. A failed UPDATE rolls back to the previous configuration, which
stays in use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from botocore.exceptions import ClientError, WaiterError

from chalicelib.aws import ClientFactory, error_code
from chalicelib.stacks import NO_ECHO_MASK, UPDATABLE, describe_stack, outputs_of, parameters_of
from chalicelib.tags import TAG_MANAGED_BY
from chalicelib.workflow.steps.common import failure_reason

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_cloudformation.literals import CapabilityType
    from mypy_boto3_cloudformation.type_defs import (
        CreateChangeSetInputTypeDef,
        ParameterTypeDef,
        TagTypeDef,
        WaiterConfigTypeDef,
    )

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"

# A change set is ready in seconds; 10 minutes means CloudFormation is stuck.
CHANGE_SET_WAIT: WaiterConfigTypeDef = {"Delay": 5, "MaxAttempts": 120}
# Up to 2 hours: an application stack restoring a SQL Server snapshot takes more than one.
STACK_WAIT: WaiterConfigTypeDef = {"Delay": 15, "MaxAttempts": 480}
NO_CHANGES = ("The submitted information didn't contain changes", "No updates are to be performed")
MANAGED_TAGS: list[TagTypeDef] = [{"Key": TAG_MANAGED_BY, "Value": "jams-dr"}]

ChangeSetType = Literal["CREATE", "UPDATE"]
Outcome = Literal["created", "updated", "unchanged", "declined"]


class DeployError(RuntimeError):
    """A stack could not be created or updated; the message names the stack, the region and the fix."""


@dataclass(frozen=True)
class ResourceChange:
    action: str  # Add | Modify | Remove (| Import | Dynamic)
    logical_id: str
    resource_type: str
    replacement: str  # True | False | Conditional for a Modify; "" otherwise


@dataclass(frozen=True)
class ChangeSetReview:
    """What executing a change set would do: shown to the operator before it runs."""

    stack: str
    region: str
    kind: ChangeSetType
    change_set: str
    changes: tuple[ResourceChange, ...]
    parameters: tuple[tuple[str, str, str], ...] = ()  # (key, current, new) of each changed value


Review = Callable[[ChangeSetReview], bool]


def approve_all(_: ChangeSetReview) -> bool:
    """The embedded world's review: execute everything."""
    return True


@dataclass(frozen=True)
class Deployment:
    stack: str
    region: str
    outcome: Outcome
    outputs: dict[str, str] = field(default_factory=dict)


def deploy_stack(
    clients: ClientFactory,
    region: str,
    name: str,
    template: str,
    parameters: dict[str, str],
    *,
    capabilities: tuple[CapabilityType, ...] = ("CAPABILITY_NAMED_IAM",),
    review: Review = approve_all,
    keep: Collection[str] = (),
) -> dict[str, str]:
    """Create or update the stack through a change set; its outputs (see ``deploy``)."""
    return deploy(clients, region, name, template, parameters, capabilities=capabilities, review=review,
                  keep=keep).outputs


def deploy(
    clients: ClientFactory,
    region: str,
    name: str,
    template: str,
    parameters: Mapping[str, str],
    *,
    capabilities: tuple[CapabilityType, ...] = ("CAPABILITY_NAMED_IAM",),
    review: Review = approve_all,
    keep: Collection[str] = (),
) -> Deployment:
    """Create or update stack ``name`` in ``region`` from ``templates/<template>`` through a change set.

    ``keep``: parameters whose value on an existing stack is never changed (given values apply only
    when the stack is created). Raises DeployError when the stack cannot be deployed.
    """
    cfn = clients.client("cloudformation", region)
    body = (TEMPLATES / template).read_text()
    stack = _deployable(cfn, name, region)
    current = parameters_of(stack) if stack is not None else {}
    kind: ChangeSetType = "UPDATE" if stack is not None else "CREATE"
    values = _values(current, parameters, keep, _declared(body)) if stack is not None else dict(parameters)
    change_set = change_set_name(body, values)
    request: CreateChangeSetInputTypeDef = {
        "StackName": name, "ChangeSetName": change_set, "ChangeSetType": kind, "TemplateBody": body,
        "Parameters": _parameters(values), "Capabilities": list(capabilities), "Tags": MANAGED_TAGS,
        "ClientToken": change_set, "Description": "jams-dr bootstrap",
    }
    if kind == "CREATE":
        request["OnStackFailure"] = "DELETE"
    try:
        created = cfn.create_change_set(**request)
    except ClientError as exc:
        if stack is not None and any(text in str(exc) for text in NO_CHANGES):
            return Deployment(name, region, "unchanged", outputs_of(stack))
        raise
    change_set_id, stack_id = created["Id"], created["StackId"]
    try:
        cfn.get_waiter("change_set_create_complete").wait(ChangeSetName=change_set_id, WaiterConfig=CHANGE_SET_WAIT)
    except WaiterError:
        described = cfn.describe_change_set(ChangeSetName=change_set_id)
        reason = str(described.get("StatusReason", ""))
        cfn.delete_change_set(ChangeSetName=change_set_id)
        if stack is not None and described.get("Status") == "FAILED" and any(t in reason for t in NO_CHANGES):
            return Deployment(name, region, "unchanged", outputs_of(stack))
        if kind == "CREATE":
            cfn.delete_stack(StackName=stack_id)  # the empty REVIEW_IN_PROGRESS stack of the change set
        raise DeployError(f"change set {change_set} of stack {name} in {region} is {described.get('Status')}: "
                          f"{reason or 'no reason given'}; nothing was changed") from None
    proposal = ChangeSetReview(
        stack=name, region=region, kind=kind, change_set=change_set, changes=tuple(_changes(cfn, change_set_id)),
        parameters=tuple((k, current.get(k, ""), v) for k, v in values.items() if stack and current.get(k) != v),
    )
    try:
        approved = review(proposal)
    except BaseException:  # no answer (no terminal, Ctrl-C): nothing is left behind either
        _discard(cfn, change_set_id, stack_id if kind == "CREATE" else None)
        raise
    if not approved:
        _discard(cfn, change_set_id, stack_id if kind == "CREATE" else None)
        return Deployment(name, region, "declined", outputs_of(stack) if stack is not None else {})
    try:
        cfn.execute_change_set(ChangeSetName=change_set_id)
    except ClientError as exc:
        if error_code(exc) != "InvalidChangeSetStatus":
            raise
        cfn.delete_change_set(ChangeSetName=change_set_id)
        raise DeployError(
            f"stack {name} in {region} changed after change set {change_set} was made (on the standby stack: "
            "the snapshot pipeline pinned a new recovery point); nothing was executed: run bootstrap again"
        ) from None
    waiter = cfn.get_waiter("stack_create_complete" if kind == "CREATE" else "stack_update_complete")
    try:
        waiter.wait(StackName=stack_id, WaiterConfig=STACK_WAIT)
    except WaiterError:
        raise DeployError(_execution_failure(cfn, name, region, stack_id, kind)) from None
    final = describe_stack(cfn, stack_id)
    return Deployment(name, region, "created" if kind == "CREATE" else "updated",
                      outputs_of(final) if final is not None else {})


def change_set_name(body: str, values: Mapping[str, str], now: datetime | None = None) -> str:
    """``jams-dr-<UTC second>-<digest of template and values>``: the same request names itself the same
    (and is its own ClientToken), a later run a new one. CloudFormation: ``[a-zA-Z][-a-zA-Z0-9]*``, <= 128."""
    digest = hashlib.sha256((body + json.dumps(dict(values), sort_keys=True)).encode()).hexdigest()[:12]
    return f"jams-dr-{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}-{digest}"


def _deployable(cfn: CloudFormationClient, name: str, region: str) -> dict[str, Any] | None:
    """The stack to update, or None to create it; DeployError when its state allows neither."""
    stack = describe_stack(cfn, name)
    if stack is None:
        return None
    status = str(stack["StackStatus"])
    if status == "REVIEW_IN_PROGRESS":
        # A change set never executed (an interrupted or declined first bootstrap): no resources.
        cfn.delete_stack(StackName=stack["StackId"])
        cfn.get_waiter("stack_delete_complete").wait(StackName=stack["StackId"], WaiterConfig=CHANGE_SET_WAIT)
        return None
    if status in UPDATABLE:
        return stack
    fix = f"aws cloudformation delete-stack --stack-name {name} --region {region}"
    if status == "ROLLBACK_COMPLETE":
        raise DeployError(f"stack {name} in {region} is ROLLBACK_COMPLETE (its creation failed: "
                          f"{failure_reason(cfn, name)}); CloudFormation cannot update it, only delete it: "
                          f"{fix}, then run bootstrap again")
    if status.endswith("_IN_PROGRESS"):
        raise DeployError(f"stack {name} in {region} is {status}: run bootstrap again once it has settled")
    raise DeployError(f"stack {name} in {region} is {status} and cannot be updated ({failure_reason(cfn, name)}); "
                      "see its events in the CloudFormation console")


def _discard(cfn: CloudFormationClient, change_set_id: str, review_stack_id: str | None) -> None:
    """Delete a change set that will not run, and the empty REVIEW_IN_PROGRESS stack a CREATE made."""
    cfn.delete_change_set(ChangeSetName=change_set_id)
    if review_stack_id is not None:
        cfn.delete_stack(StackName=review_stack_id)


def _declared(body: str) -> set[str]:
    return set((yaml.safe_load(body) or {}).get("Parameters") or {})


def _values(current: Mapping[str, str], given: Mapping[str, str], keep: Collection[str],
            declared: Collection[str]) -> dict[str, str]:
    """An update's parameter values: the current ones the template still declares (an operator's own
    setting is not reset to a default), the given ones over them, the ``keep`` ones never changed."""
    values = {k: v for k, v in current.items() if k in declared}
    values.update({k: v for k, v in given.items() if k not in keep or k not in current})
    return values


def _parameters(values: Mapping[str, str]) -> list[ParameterTypeDef]:
    return [{"ParameterKey": k, "UsePreviousValue": True} if v == NO_ECHO_MASK
            else {"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


def _changes(cfn: CloudFormationClient, change_set_id: str) -> list[ResourceChange]:
    found: list[ResourceChange] = []
    for page in cfn.get_paginator("describe_change_set").paginate(ChangeSetName=change_set_id):
        for change in page.get("Changes", []):
            resource = change.get("ResourceChange", {})
            found.append(ResourceChange(
                action=str(resource.get("Action", "")), logical_id=str(resource.get("LogicalResourceId", "")),
                resource_type=str(resource.get("ResourceType", "")), replacement=str(resource.get("Replacement", "")),
            ))
    return found


def _execution_failure(cfn: CloudFormationClient, name: str, region: str, stack_id: str, kind: ChangeSetType) -> str:
    stacks = cfn.describe_stacks(StackName=stack_id)["Stacks"]  # by id: answers for a deleted stack too
    status = str(stacks[0]["StackStatus"]) if stacks else "unknown"
    if status.endswith("_IN_PROGRESS"):
        minutes = STACK_WAIT["Delay"] * STACK_WAIT["MaxAttempts"] // 60
        return (f"stack {name} in {region} is still {status} after {minutes} min: follow it in the "
                "CloudFormation console and run bootstrap again once it has settled")
    reason = failure_reason(cfn, stack_id)
    if kind == "CREATE" and status == "DELETE_COMPLETE":
        return (f"stack {name} in {region} failed to create ({reason}); CloudFormation deleted it "
                "(OnStackFailure=DELETE): fix the cause and run bootstrap again")
    if kind == "CREATE":
        return (f"stack {name} in {region} failed to create and is {status} ({reason}): delete it "
                f"(aws cloudformation delete-stack --stack-name {name} --region {region}) and run bootstrap again")
    return (f"stack {name} in {region}: the update failed and the stack is {status} ({reason}); "
            "UPDATE_ROLLBACK_COMPLETE means the previous configuration is back in place and still in use")


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
