"""The execution ledger: one DynamoDB item per execution, one lease item per environment.

Item layout (table ``settings.ledger_table_name`` in the recovery region, hash key ``pk``):

- ``exec#<execution_id>``: kind, workflow, status, state, seq, attempt, history, data, incident, claim,
  next_check_at, state_started_at, started_at, failed_state/error, report, environment, timestamps.
- ``lease#<env>`` (recovery, failback) and ``lease#<env>#drill``: epoch, holder (absent when free), kind,
  acquired_at. The epoch is the fencing token; it only grows.
- ``fence#<env>``: a fence of the old primary that could not be enforced yet (its region did not answer).

Every write that must happen once is a conditional write, so duplicated, retried or concurrent
invocations cannot both win: creation (``attribute_not_exists``), claims (no live claim of another
owner), transitions (same ``seq`` and still our claim), approval/retry (expected status), leases
(no holder, or us). A lost condition surfaces as one of the exceptions below, never as a silent no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.aws import ClientFactory, error_code
from chalicelib.clock import Clock, isoformat, parse_iso
from chalicelib.keys import EXEC_PREFIX, execution_key, fence_key, lease_key, slot_key
from chalicelib.observability import logger
from chalicelib.settings import Settings
from chalicelib.table import CONDITION_FAILED, LedgerTable, Update, deserialize_item, opt_str, opt_time, serialize_item
from chalicelib.workflow.model import KINDS, Kind
from chalicelib.workflow.records import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Execution,
    Fence,
    Lease,
    LedgerError,
    Status,
    Transition,
)

# Finished executions expire (DynamoDB TTL on ``expires_at``) after a year and a bit: long enough for
# an annual DR review; the reports stay in S3.
RETENTION_DAYS = 400


# A transaction cancelled by another one on the same item (TransactionConflict) is tried again.
CONFLICT_ATTEMPTS = 3
CONFLICT_BACKOFF_SECONDS = 0.05
# Executions that hold the active slot while they run: one recovery or failback at a time.
SLOT_KINDS: tuple[Kind, ...] = ("recovery", "failback")


# ---------------------------------------------------------------------------------------- errors


class ExecutionNotFound(LedgerError):
    def __init__(self, execution_id: str, table: str) -> None:
        super().__init__(
            f"no execution {execution_id!r} in ledger table {table}; list executions with `jams-dr status`"
        )
        self.execution_id = execution_id


class ExecutionExists(LedgerError):
    def __init__(self, existing: Execution) -> None:
        super().__init__(
            f"execution {existing.execution_id!r} already exists (status {existing.status}, "
            f"state {existing.state})"
        )
        self.existing = existing


class ClaimLost(LedgerError):
    """Another runner holds (or took over) the execution, or it is no longer running."""

    def __init__(self, execution_id: str, current: Execution | None, owner: str) -> None:
        if current is None:
            detail = "it does not exist"
        elif current.status != "running":
            detail = f"it is {current.status}"
        elif current.claim is not None and current.claim.owner != owner:
            detail = f"{current.claim.owner} holds it until {isoformat(current.claim.expires_at)}"
        else:
            detail = f"it moved on (seq {current.seq})"
        super().__init__(f"{owner} cannot advance execution {execution_id!r}: {detail}")
        self.execution_id = execution_id
        self.current = current


class StatusConflict(LedgerError):
    def __init__(self, message: str, current: Execution | None = None) -> None:
        super().__init__(message)
        self.current = current


class SlotHeld(LedgerError):
    """Another execution is (or was, if it ended without freeing it) the environment's active one."""

    def __init__(self, holder: str, wanted_by: str) -> None:
        super().__init__(f"{wanted_by} cannot become the active recovery/failback: {holder or 'another'} is")
        self.holder = holder


class LeaseHeld(LedgerError):
    def __init__(self, lease: Lease, wanted_by: str) -> None:
        super().__init__(
            f"{wanted_by} cannot take {lease.name}: {lease.holder} holds it (epoch {lease.epoch}, "
            f"since {isoformat(lease.acquired_at)}); finish, retry or roll back that execution first "
            f"(`jams-dr recover --retry {lease.holder}` or `jams-dr recover --rollback {lease.holder}`)"
        )
        self.lease = lease


# ---------------------------------------------------------------------------------------- ledger


class Ledger:
    """DynamoDB access for executions, leases and pending fences (low-level client, conditional writes)."""

    def __init__(self, settings: Settings, clients: ClientFactory, clock: Clock) -> None:
        self.table = settings.ledger_table_name
        self.environment = settings.environment
        self._region = settings.recovery_region
        self._clients = clients
        self._clock = clock
        self._table = LedgerTable(settings, clients)

    @property
    def _ddb(self) -> Any:
        return self._table.client

    # -- executions -------------------------------------------------------------------------

    def create(
        self,
        execution_id: str,
        *,
        kind: Kind,
        workflow: str,
        state: str,
        status: Status,
        incident: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        exclusive: bool = False,
    ) -> Execution:
        """Create the execution once; raises ExecutionExists (carrying the stored one) otherwise.

        ``exclusive``: in the same transaction, take the environment's active slot (``take_slot``), so of
        two starts with different ids at once exactly one is created; the other gets SlotHeld.
        """
        item = self._new_item(execution_id, kind=kind, workflow=workflow, state=state, status=status,
                              incident=incident, data=data)
        try:
            if exclusive:
                self._create_exclusive(item, execution_id, kind)
            else:
                self._ddb.put_item(
                    TableName=self.table,
                    Item=serialize_item(item),
                    ConditionExpression="attribute_not_exists(pk)",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            existing = self._from_failure(exc, execution_key(execution_id))
            if existing is None:  # deleted in between: vanishingly rare, still not ours to create
                raise LedgerError(f"execution {execution_id!r} changed while being created; retry") from exc
            raise ExecutionExists(Execution.from_item(existing)) from exc
        logger.info("execution created", extra={"execution_id": execution_id, "status": status})
        return Execution.from_item(item)

    def _create_exclusive(self, item: Mapping[str, Any], execution_id: str, kind: Kind) -> None:
        slot = self._slot_update(execution_id, kind)
        request = slot.request(
            f"attribute_not_exists({slot.name('holder')}) OR {slot.name('holder')} = {slot.value(execution_id)}")
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                self._ddb.transact_write_items(TransactItems=[
                    {"Put": {"TableName": self.table, "Item": serialize_item(item),
                             "ConditionExpression": "attribute_not_exists(pk)"}},
                    {"Update": {"TableName": self.table, "Key": {"pk": {"S": slot_key(self.environment)}},
                                **request}},
                ])
                return
            except ClientError as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise
                reasons = [str(r.get("Code", "")) for r in exc.response.get("CancellationReasons", [])]
                if reasons and reasons[0] == "ConditionalCheckFailed":
                    existing = self._get_item(execution_key(execution_id))
                    if existing is None:
                        raise LedgerError(f"execution {execution_id!r} changed while being created; retry") from exc
                    raise ExecutionExists(Execution.from_item(existing)) from exc
                if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                    holder = (self._get_item(slot_key(self.environment)) or {}).get("holder", "")
                    raise SlotHeld(str(holder), execution_id) from exc
                # Another transaction on the slot at the same moment (TransactionConflict): AWS says retry.
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                self._clock.sleep(CONFLICT_BACKOFF_SECONDS * attempt)

    def get(self, execution_id: str) -> Execution | None:
        item = self._get_item(execution_key(execution_id))
        return None if item is None else Execution.from_item(item)

    def load(self, execution_id: str) -> Execution:
        execution = self.get(execution_id)
        if execution is None:
            raise ExecutionNotFound(execution_id, self.table)
        return execution

    def claim(self, execution_id: str, owner: str, expires_at: datetime) -> Execution:
        """Take (or extend) the right to advance a running execution until ``expires_at``."""
        now = self._clock.now()
        update = Update()
        update.set("claim", {"owner": owner, "expires_at": isoformat(expires_at)})
        condition = (
            f"{update.name('status')} = {update.value('running')} AND ("
            f"attribute_not_exists({update.name('claim')}) OR "
            f"{update.name('claim')}.{update.name('owner')} = {update.value(owner)} OR "
            f"{update.name('claim')}.{update.name('expires_at')} <= {update.value(isoformat(now))})"
        )
        try:
            item = self._update(execution_key(execution_id), update, condition)
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            current = self._from_failure(exc, execution_key(execution_id))
            if current is None:
                raise ExecutionNotFound(execution_id, self.table) from exc
            raise ClaimLost(execution_id, Execution.from_item(current), owner) from exc
        return Execution.from_item(item)

    def release_claim(self, execution_id: str, owner: str) -> bool:
        """Give the claim back (only ours); False when it was not ours any more."""
        update = Update()
        update.remove("claim")
        condition = f"{update.name('claim')}.{update.name('owner')} = {update.value(owner)}"
        try:
            self._update(execution_key(execution_id), update, condition)
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            return False
        return True

    def transition(self, execution: Execution, owner: str, change: Transition) -> Execution:
        """Record one step's outcome; only if nobody moved the execution on and the claim is still ours."""
        now = self._clock.now()
        update = Update()
        update.set("status", change.status)
        update.set("state", change.state)
        update.set("seq", execution.seq + 1)
        update.set("attempt", change.attempt)
        update.set("state_started_at", isoformat(change.state_started_at))
        update.set("data", dict(change.data))
        update.set("updated_at", isoformat(now))
        if change.history:
            update.set_expr(
                f"{update.name('history')} = list_append(if_not_exists({update.name('history')}, "
                f"{update.value([])}), {update.value([dict(h) for h in change.history])})"
            )
        if change.next_check_at is None:
            update.remove("next_check_at")
        else:
            update.set("next_check_at", isoformat(change.next_check_at))
        if change.failed_state is not None:
            update.set("failed_state", change.failed_state)
        if change.error is not None:
            update.set("error", change.error)
        if change.note is not None:
            update.set("last_note", change.note)
        if change.report is not None:
            update.set("report", dict(change.report))
        terminal = change.status in TERMINAL_STATUSES
        if terminal:
            update.set("ended_at", isoformat(now))
            update.set("expires_at", _ttl(now))
        if terminal or not change.keep_claim:
            update.remove("claim")
        condition = (
            f"{update.name('seq')} = {update.value(execution.seq)} AND "
            f"{update.name('claim')}.{update.name('owner')} = {update.value(owner)}"
        )
        try:
            item = self._update(execution_key(execution.execution_id), update, condition)
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            current = self._from_failure(exc, execution_key(execution.execution_id))
            raise ClaimLost(
                execution.execution_id, None if current is None else Execution.from_item(current), owner
            ) from exc
        ended = Execution.from_item(item)
        if terminal and ended.kind in SLOT_KINDS:
            # Not in the same write: an execution that died here leaves the slot to its ended holder, which
            # the next start sees as ended and clears (take_slot's SlotHeld).
            self.release_slot(ended.execution_id)
        return ended

    def approve(self, execution_id: str, *, approved_by: str) -> Execution:
        """awaiting-approval -> running, once."""
        now = self._clock.now()
        update = Update()
        update.set("status", "running")
        update.set("started_at", isoformat(now))
        update.set("state_started_at", isoformat(now))
        update.set("next_check_at", isoformat(now))
        update.set("approved_at", isoformat(now))
        update.set("approved_by", approved_by)
        update.set("updated_at", isoformat(now))
        update.set_expr(f"{update.name('seq')} = {update.name('seq')} + {update.value(1)}")
        condition = f"{update.name('status')} = {update.value('awaiting-approval')}"
        try:
            return Execution.from_item(self._update(execution_key(execution_id), update, condition))
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            current = self._from_failure(exc, execution_key(execution_id))
            if current is None:
                raise ExecutionNotFound(execution_id, self.table) from exc
            found = Execution.from_item(current)
            raise StatusConflict(
                f"execution {execution_id!r} is {found.status}, not awaiting-approval: nothing to approve",
                found,
            ) from exc

    def reopen(self, execution: Execution, *, requested_by: str) -> Execution:
        """failed -> running again from the state that failed (the operator's retry), once."""
        if execution.status != "failed" or not execution.failed_state:
            raise StatusConflict(
                f"execution {execution.execution_id!r} is {execution.status}"
                + ("" if execution.status != "failed" else " without a failed state")
                + ": only a failed execution can be retried",
                execution,
            )
        now = self._clock.now()
        update = Update()
        update.set("status", "running")
        update.set("state", execution.failed_state)
        update.set("attempt", 1)
        update.set("state_started_at", isoformat(now))
        update.set("next_check_at", isoformat(now))
        update.set("updated_at", isoformat(now))
        update.set("seq", execution.seq + 1)
        data = {k: v for k, v in execution.data.items() if k not in ("failed_state", "error")}
        update.set("data", {**data, "failed": False})
        failure = {"state": execution.failed_state, "error": execution.error or "",
                   "retried_at": isoformat(now), "retried_by": requested_by}
        update.set_expr(
            f"{update.name('previous_failures')} = list_append(if_not_exists("
            f"{update.name('previous_failures')}, {update.value([])}), {update.value([failure])})"
        )
        for attr in ("failed_state", "error", "expires_at", "ended_at", "claim"):
            update.remove(attr)
        condition = (
            f"{update.name('status')} = {update.value('failed')} AND "
            f"{update.name('seq')} = {update.value(execution.seq)}"
        )
        try:
            return Execution.from_item(self._update(execution_key(execution.execution_id), update, condition))
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            current = self._from_failure(exc, execution_key(execution.execution_id))
            raise StatusConflict(
                f"execution {execution.execution_id!r} changed while being retried; look at it again",
                None if current is None else Execution.from_item(current),
            ) from exc

    def create_replacing(
        self,
        original: Execution,
        execution_id: str,
        *,
        kind: Kind,
        workflow: str,
        state: str,
        data: Mapping[str, Any],
    ) -> Execution:
        """Atomically create ``execution_id`` and cancel the failed ``original`` (used by rollback)."""
        now = self._clock.now()
        item = self._new_item(execution_id, kind=kind, workflow=workflow, state=state, status="running",
                              incident=original.incident, data=data)
        update = Update()
        update.set("status", "cancelled")
        update.set("replaced_by", execution_id)
        update.set("updated_at", isoformat(now))
        update.set("ended_at", isoformat(now))
        update.set("expires_at", _ttl(now))
        update.set("seq", original.seq + 1)
        update.remove("claim")
        condition = (
            f"{update.name('status')} = {update.value('failed')} AND "
            f"{update.name('seq')} = {update.value(original.seq)}"
        )
        try:
            self._ddb.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": self.table, "Item": serialize_item(item),
                             "ConditionExpression": "attribute_not_exists(pk)"}},
                    {"Update": {"TableName": self.table,
                                "Key": {"pk": {"S": execution_key(original.execution_id)}},
                                **update.request(condition)}},
                ]
            )
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            existing = self.get(execution_id)
            if existing is not None and (not reasons or reasons[0] == "ConditionalCheckFailed"):
                raise ExecutionExists(existing) from exc
            current = self.get(original.execution_id)
            raise StatusConflict(
                f"execution {original.execution_id!r} is "
                f"{'gone' if current is None else current.status}, not failed: nothing to replace",
                current,
            ) from exc
        return Execution.from_item(item)

    def list_executions(self, statuses: Iterable[Status] | None = None) -> list[Execution]:
        """Executions of this environment (optionally only some statuses), newest first."""
        names = {"#pk": "pk", "#env": "environment"}
        values: dict[str, Any] = {":prefix": {"S": EXEC_PREFIX}, ":env": {"S": self.environment}}
        expression = "begins_with(#pk, :prefix) AND #env = :env"
        wanted = list(statuses or [])
        if wanted:
            # Only when used: DynamoDB refuses a Scan naming an attribute its expressions do not use.
            names["#status"] = "status"
            placeholders = []
            for index, status in enumerate(wanted):
                values[f":s{index}"] = {"S": status}
                placeholders.append(f":s{index}")
            expression += f" AND #status IN ({', '.join(placeholders)})"
        found: list[Execution] = []
        paginator = self._ddb.get_paginator("scan")
        for page in paginator.paginate(
            TableName=self.table,
            FilterExpression=expression,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ConsistentRead=True,
        ):
            found.extend(Execution.from_item(deserialize_item(raw)) for raw in page.get("Items", []))
        return sorted(found, key=lambda e: (e.created_at, e.execution_id), reverse=True)  # ids break ties

    def list_active(self) -> list[Execution]:
        return self.list_executions(ACTIVE_STATUSES)

    # -- leases -----------------------------------------------------------------------------

    def take_lease(self, holder: str, kind: str) -> Lease:
        """Take the environment's lease (drills: the drill lease) and bump the epoch.

        Taking it again as the same holder (a step re-run after a crash) returns the current epoch
        without bumping it, so the epoch recorded in the execution is the one in the fencing tags.
        """
        key = lease_key(self.environment, kind)
        now = self._clock.now()
        update = Update()
        update.set("holder", holder)
        update.set("kind", kind)
        update.set("acquired_at", isoformat(now))
        update.set("environment", self.environment)
        update.set_expr(
            f"{update.name('epoch')} = if_not_exists({update.name('epoch')}, {update.value(0)}) "
            f"+ {update.value(1)}"
        )
        update.remove("released_at")
        update.remove("released_by")
        condition = f"attribute_not_exists({update.name('holder')})"
        try:
            item = self._update(key, update, condition)
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            current = self._from_failure(exc, key) or self._get_item(key) or {}
            lease = _lease_from(key, current)
            if lease.holder == holder:
                return lease
            raise LeaseHeld(lease, holder) from exc
        lease = _lease_from(key, item)
        logger.info("lease taken", extra={"lease": key, "holder": holder, "epoch": lease.epoch})
        return lease

    def release_lease(self, holder: str, kind: str) -> bool:
        """Free the lease if ``holder`` holds it; False (logged) when someone else or nobody does."""
        key = lease_key(self.environment, kind)
        now = self._clock.now()
        update = Update()
        update.remove("holder")
        update.set("released_at", isoformat(now))
        update.set("released_by", holder)
        condition = f"{update.name('holder')} = {update.value(holder)}"
        try:
            self._update(key, update, condition)
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            logger.info("lease not held by releaser", extra={"lease": key, "holder": holder})
            return False
        logger.info("lease released", extra={"lease": key, "holder": holder})
        return True

    def get_lease(self, kind: str) -> Lease | None:
        key = lease_key(self.environment, kind)
        item = self._get_item(key)
        return None if item is None else _lease_from(key, item)

    # -- the active slot --------------------------------------------------------------------

    def take_slot(self, execution_id: str, kind: Kind) -> None:
        """Make ``execution_id`` the environment's one active recovery or failback; SlotHeld otherwise.

        Free or already ours: taken. Held by another execution: SlotHeld names it, and the caller looks
        at that execution (active: join or refuse; ended: ``clear_slot`` it, then take again).
        """
        update = self._slot_update(execution_id, kind)
        condition = (f"attribute_not_exists({update.name('holder')}) OR "
                     f"{update.name('holder')} = {update.value(execution_id)}")
        try:
            self._update(slot_key(self.environment), update, condition)
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            current = self._from_failure(exc, slot_key(self.environment)) or {}
            raise SlotHeld(str(current.get("holder", "")), execution_id) from exc

    def slot_holder(self) -> Execution | None:
        """The execution holding the active slot (it may have ended without freeing it), if any."""
        item = self._get_item(slot_key(self.environment))
        holder = str((item or {}).get("holder") or "")
        return self.get(holder) if holder else None

    def release_slot(self, execution_id: str) -> bool:
        """Free the slot if ``execution_id`` holds it (an execution that ended); False otherwise."""
        update = Update()
        update.remove("holder")
        update.set("released_at", isoformat(self._clock.now()))
        update.set("released_by", execution_id)
        condition = f"{update.name('holder')} = {update.value(execution_id)}"
        try:
            self._update(slot_key(self.environment), update, condition)
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            return False
        logger.info("active slot released", extra={"execution_id": execution_id})
        return True

    def _slot_update(self, execution_id: str, kind: Kind) -> Update:
        update = Update()
        update.set("holder", execution_id)
        update.set("kind", kind)
        update.set("environment", self.environment)
        update.set("taken_at", isoformat(self._clock.now()))
        return update

    # -- pending fences ---------------------------------------------------------------------

    def put_fence(self, execution_id: str, epoch: int, region: str, instance_ids: Iterable[str]) -> bool:
        """Record a fence to enforce when ``region`` answers; never replaces a fence of a newer epoch."""
        now = self._clock.now()
        item = {
            "pk": fence_key(self.environment),
            "execution_id": execution_id,
            "epoch": epoch,
            "region": region,
            "instance_ids": sorted(set(instance_ids)),
            "recorded_at": isoformat(now),
            "environment": self.environment,
        }
        try:
            self._ddb.put_item(
                TableName=self.table,
                Item=serialize_item(item),
                ConditionExpression="attribute_not_exists(pk) OR epoch <= :epoch",
                ExpressionAttributeValues={":epoch": {"N": str(epoch)}},
            )
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            logger.info("newer pending fence kept", extra={"execution_id": execution_id, "epoch": epoch})
            return False
        return True

    def get_fence(self) -> Fence | None:
        item = self._get_item(fence_key(self.environment))
        if item is None:
            return None
        return Fence(
            execution_id=str(item["execution_id"]),
            epoch=int(item["epoch"]),
            region=str(item["region"]),
            instance_ids=tuple(str(i) for i in item.get("instance_ids", [])),
            recorded_at=parse_iso(str(item["recorded_at"])),
        )

    def clear_fence(self, epoch: int) -> bool:
        """Remove the pending fence of ``epoch`` (not a newer one recorded meanwhile)."""
        try:
            self._ddb.delete_item(
                TableName=self.table,
                Key={"pk": {"S": fence_key(self.environment)}},
                ConditionExpression="epoch = :epoch",
                ExpressionAttributeValues={":epoch": {"N": str(epoch)}},
            )
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            return False
        return True

    # -- plumbing ---------------------------------------------------------------------------

    def _new_item(
        self,
        execution_id: str,
        *,
        kind: Kind,
        workflow: str,
        state: str,
        status: Status,
        incident: Mapping[str, Any] | None,
        data: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        if status not in ACTIVE_STATUSES:
            raise ValueError(f"a new execution starts running or awaiting-approval, not {status!r}")
        now = isoformat(self._clock.now())
        item: dict[str, Any] = {
            "pk": execution_key(execution_id),
            "execution_id": execution_id,
            "kind": kind,
            "workflow": workflow,
            "status": status,
            "state": state,
            "seq": 0,
            "attempt": 1,
            "history": [],
            "data": dict(data or {}),
            "environment": self.environment,
            "created_at": now,
            "updated_at": now,
        }
        if incident is not None:
            item["incident"] = dict(incident)
        if status == "running":
            item.update(started_at=now, state_started_at=now, next_check_at=now)
        return item

    def _get_item(self, key: str) -> dict[str, Any] | None:
        return self._table.get(key)

    def _update(self, key: str, update: Update, condition: str) -> dict[str, Any]:
        return self._table.update(key, update, condition)

    def _from_failure(self, exc: ClientError, key: str) -> dict[str, Any] | None:
        """The item as it was when our condition failed (returned by DynamoDB, else read again)."""
        return self._table.item_at_failure(exc, key)


# ---------------------------------------------------------------------------------------- values


def _lease_from(key: str, item: Mapping[str, Any]) -> Lease:
    return Lease(
        name=key,
        epoch=int(item.get("epoch", 0)),
        holder=opt_str(item.get("holder")),
        kind=opt_str(item.get("kind")),
        acquired_at=opt_time(item.get("acquired_at")),
    )


def _ttl(now: datetime) -> int:
    return int((now + timedelta(days=RETENTION_DAYS)).timestamp())


