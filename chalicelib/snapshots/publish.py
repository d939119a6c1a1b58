"""AWS calls of the recovery-point pipeline that are neither RDS (chalicelib/rds.py) nor CloudFormation
(chalicelib/stacks.py): the pin's SSM parameter, and the ledger's lease and notices (through chalicelib/table.py).

Thin functions over the clients a ``ClientFactory`` gives; each maps the AWS outcomes the pipeline
relies on (not found, already recorded) to plain values and lets every other error through with its
AWS code, for the tick to log and count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from chalicelib.aws import error_code
from chalicelib.keys import lease_key
from chalicelib.table import LedgerTable

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

# --- the pin's SSM parameter ----------------------------------------------------------------------


def pinned_snapshot_parameter(environment: str, region: str) -> str:
    """SSM parameter that tells operators and their tooling the pinned recovery point of ``region``.

    Written by the pipeline, not by the standby stack: as a stack resource, every pin's UpdateStack
    would run the AWS::SSM::Parameter update handler with the pipeline's credentials, which would then
    need ssm:GetParameters and the tag actions too, and a refused call would leave the standby stack
    UPDATE_ROLLBACK_FAILED, unusable for a recovery (docs/aws-fidelity.md). The stack's
    PinnedSnapshotParameterName output names the same path.
    """
    return f"/jams-dr/{environment}/{region}/pinned-snapshot"


def publish_pin(ssm: SSMClient, name: str, snapshot_id: str) -> bool:
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


# --- the ledger (DynamoDB, recovery region) -------------------------------------------------------


def lease_holder(table: LedgerTable, environment: str, kind: str = "recovery") -> str | None:
    """Who holds the lease (the recovery chain writes it), None when it is free."""
    holder = (table.get(lease_key(environment, kind)) or {}).get("holder")
    if holder is None:
        return None
    # Present but odd (empty, another type): held all the same; pinning on a guess is the danger.
    if isinstance(holder, bool) or not isinstance(holder, str | int | float) or str(holder) == "":
        return "unknown holder"
    return str(holder)


def open_notice(table: LedgerTable, key: str, message: str, now_iso: str) -> bool:
    """Record that a notice was sent; True only for the first caller of the episode."""
    return table.put_new({"pk": key, "message": message[:1000], "opened_at": now_iso})


def close_notice(table: LedgerTable, key: str) -> None:
    table.delete(key)
