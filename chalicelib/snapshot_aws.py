"""AWS calls of the recovery-point pipeline: RDS snapshots, the standby stack, the ledger.

Thin functions over the clients a ``ClientFactory`` gives; each maps the AWS outcomes the pipeline
relies on (already exists, not found, no updates) to plain values and lets every other error through
with its AWS code, for the tick to log and count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from botocore.exceptions import ClientError

from chalicelib.aws import error_code
from chalicelib.errors import AwsError
from chalicelib.keys import lease_key
from chalicelib.snapshot_rules import Snap, snap_from_description
from chalicelib.stacks import parameters_of

PAGE_SIZE = 100
PIN_PARAMETER = "DBSnapshotIdentifier"
# describe_stacks masks NoEcho parameters; passing the mask back would overwrite the real value.
NO_ECHO_MASK = "****"

_COPY_LIMIT_CODES = frozenset(
    {"SnapshotQuotaExceeded", "SnapshotQuotaExceededFault", "QuotaExceeded", "LimitExceeded", "LimitExceededException"}
)
_COPY_LIMIT_MESSAGE = re.compile(r"cannot copy more than \d+ snapshots|quota|too many .*copies", re.IGNORECASE)


def is_copy_limit(exc: BaseException) -> bool:
    """The destination has too many copies in flight or the snapshot quota is reached (docs/aws-facts.md,
    "Cross-region snapshot copy: limits and queueing")."""
    if not isinstance(exc, ClientError):
        return False
    if error_code(exc) in _COPY_LIMIT_CODES:
        return True
    message = str(exc.response.get("Error", {}).get("Message", ""))
    return bool(_COPY_LIMIT_MESSAGE.search(message))


def already_exists(exc: BaseException) -> bool:
    return error_code(exc) in {"DBSnapshotAlreadyExists", "DBSnapshotAlreadyExistsFault"}


# --- RDS ------------------------------------------------------------------------------------------


def list_snapshots(
    rds: Any, region: str, environment: str, *, db_instance_id: str | None = None
) -> list[Snap]:
    """Our manual snapshots in ``region`` (tags decide; DescribeDBSnapshots returns the TagList).

    One call per page of 100, never one per snapshot: the tags come with the listing.
    """
    args: dict[str, Any] = {"SnapshotType": "manual", "PaginationConfig": {"PageSize": PAGE_SIZE}}
    if db_instance_id:
        args["DBInstanceIdentifier"] = db_instance_id
    found: list[Snap] = []
    for page in rds.get_paginator("describe_db_snapshots").paginate(**args):
        for desc in page.get("DBSnapshots", []):
            snap = snap_from_description(desc, region, environment)
            if snap is not None:
                found.append(snap)
    return found


def describe_instance(rds: Any, db_instance_id: str) -> dict[str, Any]:
    try:
        instances = rds.describe_db_instances(DBInstanceIdentifier=db_instance_id)["DBInstances"]
    except ClientError as exc:
        if error_code(exc) in {"DBInstanceNotFound", "DBInstanceNotFoundFault"}:
            raise AwsError(
                f"database {db_instance_id!r} does not exist in the primary region; set DB_INSTANCE_ID "
                "to the JAMS database's DBInstanceIdentifier (or leave it empty to read the app stack)",
                code="DBInstanceNotFound",
            ) from exc
        raise
    return dict(instances[0])


def instance_option_group(instance: Mapping[str, Any]) -> str | None:
    for membership in instance.get("OptionGroupMemberships", []):
        name = membership.get("OptionGroupName")
        if name:
            return str(name)
    return None


def delete_snapshot(rds: Any, snapshot_id: str) -> bool:
    """Delete; False when it was already gone (a concurrent tick got there first)."""
    try:
        rds.delete_db_snapshot(DBSnapshotIdentifier=snapshot_id)
    except ClientError as exc:
        if error_code(exc) in {"DBSnapshotNotFound", "DBSnapshotNotFoundFault"}:
            return False
        raise
    return True


# --- the standby stack ----------------------------------------------------------------------------


def pin_parameters(stack: Mapping[str, Any], snapshot_id: str) -> list[dict[str, Any]]:
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
    params: list[dict[str, Any]] = []
    for key, value in current.items():
        if key == PIN_PARAMETER:
            params.append({"ParameterKey": key, "ParameterValue": snapshot_id})
        elif value == NO_ECHO_MASK:
            params.append({"ParameterKey": key, "UsePreviousValue": True})
        else:
            params.append({"ParameterKey": key, "ParameterValue": value})
    return params


def pinned_snapshot_parameter(environment: str, region: str) -> str:
    """SSM parameter that tells operators and their tooling the pinned recovery point of ``region``.

    Written by the pipeline, not by the standby stack: as a stack resource, every pin's UpdateStack
    would run the AWS::SSM::Parameter update handler with the pipeline's credentials, which would then
    need ssm:GetParameters and the tag actions too, and a refused call would leave the standby stack
    UPDATE_ROLLBACK_FAILED, unusable for a recovery (docs/aws-fidelity.md). The stack's
    PinnedSnapshotParameterName output names the same path.
    """
    return f"/jams-dr/{environment}/{region}/pinned-snapshot"


def publish_pin(ssm: Any, name: str, snapshot_id: str) -> bool:
    """Make the parameter say ``snapshot_id``; False when it already did (no new parameter version)."""
    try:
        if ssm.get_parameter(Name=name)["Parameter"]["Value"] == snapshot_id:
            return False
    except ClientError as exc:
        if error_code(exc) != "ParameterNotFound":
            raise
    ssm.put_parameter(Name=name, Value=snapshot_id, Type="String", Overwrite=True,
                      Description="The snapshot jams-dr restores in this region (written by the snapshot pipeline)")
    return True


PinOutcome = Literal["updated", "unchanged", "busy"]


def update_pin(cfn: Any, stack: Mapping[str, Any], snapshot_id: str) -> PinOutcome:
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


# --- the ledger (DynamoDB, recovery region) -------------------------------------------------------


def lease_holder(ddb: Any, table: str, environment: str, kind: str = "recovery") -> str | None:
    """Who holds the lease (the recovery chain writes it), None when it is free."""
    item = ddb.get_item(
        TableName=table, Key={"pk": {"S": lease_key(environment, kind)}}, ConsistentRead=True
    ).get("Item")
    holder = (item or {}).get("holder")
    if not isinstance(holder, dict) or not holder or "NULL" in holder:
        return None
    value = holder.get("S") or holder.get("N")
    # Present but odd (empty, another type): held all the same; pinning on a guess is the danger.
    return str(value) if value else "unknown holder"


def open_notice(ddb: Any, table: str, key: str, message: str, now_iso: str) -> bool:
    """Record that a notice was sent; True only for the first caller of the episode."""
    try:
        ddb.put_item(
            TableName=table,
            Item={"pk": {"S": key}, "message": {"S": message[:1000]}, "opened_at": {"S": now_iso}},
            ConditionExpression="attribute_not_exists(pk)",
        )
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            return False
        raise
    return True


def close_notice(ddb: Any, table: str, key: str) -> None:
    ddb.delete_item(TableName=table, Key={"pk": {"S": key}})
