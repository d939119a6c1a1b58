"""Steps that remove what an execution built: the drill's teardown and the rollback of a failed recovery.

Both only ever delete a stack tagged with the owning execution's id: a teardown that finds a stack of
the same name built by someone else leaves it alone and says so. The drill's final snapshot is chosen
by identity too (its database and its stack's id tag), never by a time window.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from chalicelib.observability import logger
from chalicelib.rds import delete_snapshot, manual_snapshots, snapshot_name, unprotect_instance
from chalicelib.stacks import describe_stack
from chalicelib.tags import TAG_STACK_ID
from chalicelib.workflow.model import Done, NotReady, StepContext, StepError, StepResult
from chalicelib.workflow.steps.common import (
    DELETE_POLL_SECONDS,
    created_by,
    failure_reason,
    ledger_of,
    owner_id,
    stack_database_id,
    stack_record,
    stack_role,
    target_of,
)

# The application template tags its database with the id of the stack that made it
# (templates/jams-app.yaml, Database). Facts relied on, from the AWS documentation:
# - AWS::RDS::DBInstance CopyTagsToSnapshot / RDS CreateDBInstance and ModifyDBInstance API references,
#   and the RDS User Guide "Copying tags to DB instance snapshots": with CopyTagsToSnapshot true (set in
#   the template) the instance's tags are copied to snapshots of it.
# - DeletionPolicy attribute (CloudFormation User Guide): with Snapshot, CloudFormation takes a snapshot
#   of the DB instance before deleting it; it does so through DeleteDBInstance's FinalDBSnapshotIdentifier,
#   a request that carries no tags of its own, so the final snapshot gets the instance's tags.
# - "CloudFormation resource tagging": the propagation of stack-level tags (our jams-dr:execution-id,
#   aws:cloudformation:stack-id) "varies by resource type", so the template declares this one itself.
# Stack ids are unique (a new stack of the same name gets a new id): a snapshot carrying the drill
# stack's id and taken of the drill stack's database is that drill's final snapshot, whatever its time.
# CloudFormation often deletes on a second request (a dependency gone meanwhile); three is enough.
MAX_DELETE_REQUESTS = 3


def delete_owned_stack(ctx: StepContext, region: str, name: str, owner: str) -> StepResult | None:
    """Delete ``name`` if ``owner`` created it. NotReady while it goes; None once it is gone.

    Records the stack's database id and stack id first (``owned_db_instance_id``, ``owned_stack_id``):
    after the deletion nothing else says which instance and which stack the final snapshot belongs to.
    """
    cfn = ctx.clients.client("cloudformation", region)
    stack = describe_stack(cfn, name)
    if stack is None:
        return None
    status = str(stack["StackStatus"])
    if not created_by(stack, owner):
        raise StepError(f"stack {name} in {region} was not created by {owner}: left untouched",
                        code="NotOwned")
    output: dict[str, Any] = {"stack": stack_record(name, region, status)}
    db_id = ctx.data.get("owned_db_instance_id") or stack_database_id(cfn, stack)
    if db_id:
        output["owned_db_instance_id"] = db_id
    output["owned_stack_id"] = str(ctx.data.get("owned_stack_id") or stack["StackId"])
    if status == "DELETE_IN_PROGRESS":
        return NotReady(DELETE_POLL_SECONDS, note=status, output=output)
    requests = int(ctx.data.get("delete_requests") or 0)
    if status == "DELETE_FAILED":
        reason = failure_reason(cfn, name)
        if requests >= MAX_DELETE_REQUESTS:
            raise StepError(f"stack {name} in {region} failed to delete {requests} times: {reason}; delete "
                            "what blocks it, then retry", code="StackDeleteFailed")
        logger.warning("stack deletion failed, asking again", extra={"stack": name, "reason": reason})
    # The DeletionPolicy Snapshot keeps a final snapshot of the database.
    unprotect_instance(ctx.clients.client("rds", region), db_id)
    cfn.delete_stack(StackName=str(stack["StackId"]), **stack_role(ctx.settings))
    logger.info("stack deletion requested", extra={"stack": name, "region": region, "status": status})
    output["delete_requests"] = requests + 1
    # Small stacks can be gone at once: look again right away rather than after a full poll period.
    again = 0.0 if describe_stack(cfn, name) is None else DELETE_POLL_SECONDS
    return NotReady(again, note=f"deleting {name} (was {status})", output=output)


def teardown(ctx: StepContext) -> StepResult:
    """Drill: delete the drill stack, then the final snapshot(s) its database left; nothing else."""
    target = target_of(ctx)
    cfn = ctx.clients.client("cloudformation", target.region)
    stack = describe_stack(cfn, target.stack_name)
    if stack is not None and not created_by(stack, ctx.execution_id):
        # Preflight refused this name: somebody else's stack. Never ours to delete.
        return Done({"teardown": "skipped"},
                    note=f"{target.stack_name} was not created by {ctx.execution_id}: left untouched")
    waiting = delete_owned_stack(ctx, target.region, target.stack_name, ctx.execution_id)
    if waiting is not None:
        return waiting
    db_id = ctx.data.get("owned_db_instance_id") or _db_from_outputs(ctx.data)
    record = stack_record(target.stack_name, target.region, "DELETE_COMPLETE")
    if not db_id:
        return Done({"stack": record, "deleted_snapshots": []},
                    note="drill stack gone; it had no database, so no final snapshot")
    # The id of the stack this execution created (create_app_stack), or of the one it saw deleting.
    stack_id = ctx.data.get("owned_stack_id") or ctx.data.get("stack_id")
    if not stack_id:
        return Done({"stack": record, "owned_db_instance_id": db_id, "deleted_snapshots": []},
                    note=f"drill stack gone; no stack id recorded, so no snapshot of {db_id} can be proven "
                         "this drill's: none deleted; delete its final snapshot by hand")
    found = delete_final_snapshots(ctx, target.region, str(db_id), str(stack_id))
    output = {"stack": record, "owned_db_instance_id": db_id, "owned_stack_id": stack_id,
              "deleted_snapshots": sorted({*ctx.data.get("deleted_snapshots", []), *found.deleted})}
    if found.pending:
        return NotReady(DELETE_POLL_SECONDS, note=f"final snapshot(s) still being created: {found.pending}",
                        output=output)
    note = f"drill stack deleted; final snapshot(s) deleted: {output['deleted_snapshots']}"
    if found.kept:
        note += (f"; kept snapshot(s) of {db_id} not tagged {TAG_STACK_ID}={stack_id}: {found.kept} "
                 "(not this drill's to delete)")
    if not output["deleted_snapshots"]:
        note += (f"; no final snapshot tagged {TAG_STACK_ID} found: if the template in the artifact bucket "
                 "predates that tag, delete the final snapshot by hand and upload templates/jams-app.yaml")
    return Done(output, note=note)


class FinalSnapshots(NamedTuple):
    deleted: list[str]
    pending: list[str]
    kept: list[str]


def delete_final_snapshots(ctx: StepContext, region: str, db_instance_id: str, stack_id: str) -> FinalSnapshots:
    """Delete the final snapshot(s) the drill stack ``stack_id`` left of its database ``db_instance_id``.

    Chosen by identity, never by time: a manual snapshot of ``db_instance_id`` that carries the tag
    ``jams-dr:stack-id`` = ``stack_id`` (see TAG_STACK_ID). NEVER any other snapshot: another
    instance's, the production database's, one without that tag (someone else took it), or the pinned
    recovery point (refused even if it matched). Returns the deleted, the still being created, and the
    snapshots of ``db_instance_id`` kept because they are not this stack's.
    """
    protected = {_name_of(ctx.data.get("restore_snapshot")), _name_of((ctx.data.get("snapshot") or {}).get("id"))}
    if db_instance_id == ctx.settings.db_instance_id:
        raise StepError(f"refusing to delete snapshots of {db_instance_id}: it is the production database",
                        code="NotOwned")
    rds = ctx.clients.client("rds", region)
    found = FinalSnapshots([], [], [])
    # page_size None: no MaxRecords in the request, RDS pages by its default.
    for snapshot in manual_snapshots(rds, db_instance_id=db_instance_id, page_size=None):
        name = str(snapshot["DBSnapshotIdentifier"])
        if snapshot.get("DBInstanceIdentifier") != db_instance_id or name.lower() in protected:
            continue
        # DescribeDBSnapshots answers with each snapshot's TagList: no extra call, no extra permission.
        tags = {t.get("Key"): t.get("Value") for t in snapshot.get("TagList") or []}
        if tags.get(TAG_STACK_ID) != stack_id:
            found.kept.append(name)
            continue
        if snapshot.get("Status") != "available":
            found.pending.append(name)
            continue
        delete_snapshot(rds, name)  # False: already gone, which is what was wanted
        logger.info("final snapshot deleted", extra={"snapshot": name, "region": region})
        found.deleted.append(name)
    return found


def rollback_stack(ctx: StepContext) -> StepResult:
    """Rollback of a failed recovery: delete the half-built application stack in the recovery region."""
    if ctx.data.get("traffic_switched"):
        raise StepError("traffic already points at this recovery's stack: it serves JAMS; use "
                        "`jams-dr failback` instead of a rollback", code="RollbackRefused")
    settings = ctx.settings
    owner = owner_id(ctx)
    waiting = delete_owned_stack(ctx, settings.recovery_region, settings.app_stack_name, owner)
    if waiting is not None:
        return waiting
    return Done({"stack": stack_record(settings.app_stack_name, settings.recovery_region, "DELETE_COMPLETE")},
                note=f"{settings.app_stack_name} deleted from {settings.recovery_region} (its final "
                     "snapshot is kept)")


def withdraw_fence(ctx: StepContext) -> StepResult:
    """Rollback: no recovered environment exists any more, so the old primary may run again when its
    region returns. Drop the pending fence this recovery recorded (never a newer one)."""
    ledger = ledger_of(ctx)
    fence = ledger.get_fence()
    if fence is None or fence.execution_id != owner_id(ctx):
        return Done({"fence_pending": False}, note="no pending fence of this recovery")
    ledger.clear_fence(fence.epoch)
    return Done({"fence_pending": False},
                note="pending fence withdrawn; schedulers already stopped stay stopped and quarantined "
                     "(tag jams-dr:original-groups lists their groups)")


def _db_from_outputs(data: Mapping[str, Any]) -> str | None:
    outputs = data.get("stack_outputs")
    if isinstance(outputs, Mapping) and outputs.get("DatabaseInstanceId"):
        return str(outputs["DatabaseInstanceId"])
    return None


def _name_of(value: Any) -> str:
    return snapshot_name(str(value)).lower() if value else ""
