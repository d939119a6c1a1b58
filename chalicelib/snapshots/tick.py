"""The recovery-point pipeline: snapshot -> cross-region copy -> pin on the standby stack -> prune.

``run_tick`` is called every few minutes. It reads the state from AWS (our tags and the snapshots'
statuses, the standby stack, the ledger), advances whatever is due and never waits, so:

- a tick that dies anywhere is completed by the next one (every step is re-derived from AWS);
- two overlapping ticks never make two snapshots or two copies: identifiers are deterministic (one
  per interval slot, one copy per source) and RDS refuses the second request with
  DBSnapshotAlreadyExists, which counts as success; pins and deletes converge the same way;
- the primary region may be unreachable: the tick still pins, prunes and measures in the recovery
  region, which is what recovery needs.

``recovery_point`` answers "what would a recovery restore from" for the status command and the
recovery chain's preflight. The rules themselves are pure functions in ``snapshot_rules``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from chalicelib.aws import ClientFactory, error_code, is_unreachable
from chalicelib.clock import Clock, isoformat
from chalicelib.errors import AwsError
from chalicelib.keys import notice_key
from chalicelib.notify import Notifier
from chalicelib.observability import emit_alone, logger, metrics
from chalicelib.rds import (
    copy_request,
    copy_snapshot,
    create_snapshot,
    delete_snapshot,
    instance_option_group,
    is_copy_limit,
    list_snapshots,
    manual_snapshot_quota,
    tag_snapshot,
)
from chalicelib.retention import snapshot_budget
from chalicelib.settings import Settings
from chalicelib.snapshots.pitr import find_replicated_backup, unusable_reason
from chalicelib.snapshots.points import RecoveryPoint, RecoveryPointInfo, TickResult, recovery_point
from chalicelib.snapshots.publish import (
    close_notice,
    lease_holder,
    open_notice,
    pinned_snapshot_parameter,
    publish_pin,
)
from chalicelib.snapshots.quota import QuotaUse, quota_warnings
from chalicelib.snapshots.replication import ensure_backup_replication, primary_instance
from chalicelib.snapshots.rules import (
    Retention,
    Snap,
    copy_candidate,
    copy_snapshot_id,
    copy_tags,
    is_default_option_group,
    matches_pin,
    newest_available,
    protected_sources,
    prune_plan,
    slot_start,
    snapshot_due,
    source_snapshot_id,
    source_tags,
)
from chalicelib.stacks import PIN_PARAMETER, UPDATABLE, describe_stack, outputs_of, parameters_of, update_pin
from chalicelib.table import LedgerTable
from chalicelib.tags import TAG_COPY_COMPLETED

# The pipeline's public surface (the handler, the operator CLI, the embedded drill, the recovery chain).
__all__ = [
    "RecoveryPoint",
    "RecoveryPointInfo",
    "TickResult",
    "ensure_backup_replication",
    "recovery_point",
    "run_tick",
]

T = TypeVar("T")

NOTICE_COPY_LIMIT = "copy-limit"
NOTICE_COPY_CONFIG = "copy-config"
NOTICE_SNAPSHOT_QUOTA = "snapshot-quota"
# The recovery region's AWS-managed RDS key, for an unencrypted source when no copy key is configured.
UNSET_COPY_KEY = "alias/aws/rds"


# --- metrics --------------------------------------------------------------------------------------


def _emit(environment: str, name: str, unit: MetricUnit, value: float) -> None:
    """One metric value under the dimension set {Environment} the RPO alarm watches, and in the
    service set with the other metrics of the invocation.

    powertools always adds a ``service`` dimension to its dimension set, and a CloudWatch alarm only
    matches a metric with exactly its dimensions. Metrics.add_dimensions (a second set) first shipped
    in Powertools 3.25.0, and the functions run the public layer, whose release is pinned to the one
    the tests run (jamsdr/powertools_layer.py): the {Environment} record is therefore written by
    emit_alone, the same way on every release.
    """
    emit_alone({"Environment": environment}, name, unit, value)
    metrics.add_metric(name=name, unit=unit, value=value)


# --- the tick -------------------------------------------------------------------------------------


class _Unknown:
    """Marks a fact the tick could not read (distinct from None, which is a real answer)."""


UNKNOWN = _Unknown()


class _Tick:
    def __init__(self, settings: Settings, clients: ClientFactory, clock: Clock) -> None:
        self.settings = settings
        self.clients = clients
        self.env = settings.environment
        self.primary = settings.primary_region
        self.recovery = settings.recovery_region
        self.now = clock.now()
        self.result = TickResult(environment=self.env, at=self.now)
        self.notifier = Notifier(settings, clients, clock)
        self.table = LedgerTable(settings, clients)
        self._standby: dict[str, Any] | _Unknown | None = UNKNOWN
        self._lease: str | _Unknown | None = UNKNOWN
        self._db_instance_id: str | None = settings.db_instance_id
        self._quota: dict[str, QuotaUse] = {}  # region -> its manual snapshots, as read this tick

    # -- plumbing --

    def rds(self, region: str) -> Any:
        return self.clients.client("rds", region)

    def fail(self, stage: str, exc: BaseException) -> None:
        code = exc.code if isinstance(exc, AwsError) else error_code(exc)
        message = f"{stage}: {exc}"
        self.result.errors.append(message)
        logger.error(
            "snapshot pipeline step failed",
            extra={"stage": stage, "error_code": code, "error": str(exc), "environment": self.env},
        )

    def guarded(
        self, stage: str, action: Callable[[], T], *, needs_primary: bool = False, in_primary: bool = False
    ) -> T | _Unknown:
        """Run one stage; any failure is logged and counted, never fatal to the rest of the tick.

        ``needs_primary``: skipped once the primary region proved unreachable. ``in_primary``: the stage
        talks to the primary region only, so an unreachable endpoint there means the primary is down.
        """
        if (needs_primary or in_primary) and not self.result.primary_reachable:
            return UNKNOWN
        try:
            return action()
        except Exception as exc:
            if in_primary and is_unreachable(exc):
                self.result.primary_reachable = False
                self.result.waiting.append(f"primary region {self.primary} unreachable: {stage} skipped")
                logger.warning(
                    "primary region unreachable; pinning, pruning and measuring in the recovery region only",
                    extra={"stage": stage, "region": self.primary, "error_code": error_code(exc)},
                )
            else:
                self.fail(stage, exc)
            return UNKNOWN

    def wait(self, reason: str, **context: Any) -> None:
        self.result.waiting.append(reason)
        logger.info("snapshot pipeline waiting", extra={"reason": reason, "environment": self.env, **context})

    def notify_once(self, topic: str, subject: str, body: str) -> None:
        """One notification per episode: the ledger item is the episode, written once conditionally.

        The outbox key is the episode's (the notice item's key and the time it opened): the notice item is
        deleted when the episode ends, so the next episode of the same topic is a new notification.
        """
        key = notice_key(topic, self.env)
        opened = isoformat(self.now) or ""
        if not open_notice(self.table, key, body, opened):
            logger.info("notice already sent for this episode", extra={"notice": key})
            return
        delivery = self.notifier.deliver(subject, body, kind="notice", key=f"{key}#{opened}",
                                         environment=self.env, notice=key)
        if not delivery.sent and not delivery.queued:
            # Neither sent nor in the outbox: forget the episode so a later tick tries again rather than
            # staying silent. (Queued: the watcher and the sweeper re-send it.)
            close_notice(self.table, key)

    def close_notices(self) -> None:
        for topic in (NOTICE_COPY_LIMIT, NOTICE_COPY_CONFIG):
            close_notice(self.table, notice_key(topic, self.env))

    def standby(self) -> dict[str, Any] | None:
        if isinstance(self._standby, _Unknown):
            cfn = self.clients.client("cloudformation", self.recovery)
            self._standby = describe_stack(cfn, self.settings.standby_stack_name)
        return self._standby

    def lease(self) -> str | None:
        """Holder of the recovery/failback lease (read once per tick, only when it matters)."""
        if isinstance(self._lease, _Unknown):
            self._lease = lease_holder(self.table, self.env)
        return self._lease

    def drill_lease(self) -> str | None:
        return lease_holder(self.table, self.env, kind="drill")

    def db_instance_id(self) -> str:
        if self._db_instance_id is None:
            cfn = self.clients.client("cloudformation", self.primary)
            stack = describe_stack(cfn, self.settings.app_stack_name)
            value = outputs_of(stack).get("DatabaseInstanceId") if stack else None
            if not value:
                raise AwsError(
                    f"DB_INSTANCE_ID is empty and stack {self.settings.app_stack_name} in {self.primary} has no "
                    "DatabaseInstanceId output; set DB_INSTANCE_ID to the JAMS database's identifier",
                    code="DBInstanceUnknown",
                )
            self._db_instance_id = value
        return self._db_instance_id

    # -- stages --

    def run(self) -> TickResult:
        sources = self.guarded(
            "list source snapshots",
            lambda: list_snapshots(self.rds(self.primary), self.primary, self.env,
                                   db_instance_id=self.db_instance_id()),
            in_primary=True,
        )
        copies = self.guarded(
            "list copies", lambda: list_snapshots(self.rds(self.recovery), self.recovery, self.env)
        )
        if not isinstance(copies, _Unknown):
            self.guarded("remove failed copies", lambda: self.remove_failed(self.recovery, copies))
            self.guarded("record finished copies", lambda: self.record_completed(copies))
        self.check_quota(sources, copies)
        if not isinstance(sources, _Unknown):
            self.guarded("take snapshot", lambda: self.take(sources), in_primary=True)
            if not isinstance(copies, _Unknown):
                self.guarded("copy snapshot", lambda: self.copy(sources, copies), needs_primary=True)
        if not isinstance(copies, _Unknown):
            pins = self.guarded("pin recovery point", lambda: self.pin(copies))
            self.guarded("publish pin", self.publish_pin)
            if isinstance(pins, list):
                self.guarded("prune copies", lambda: self.prune_copies(copies, pins))
            elif isinstance(pins, _Unknown):
                self.wait("pin unknown: copies are not pruned this tick")
            if not isinstance(sources, _Unknown):
                self.guarded("prune sources", lambda: self.prune_sources(sources, copies), in_primary=True)
            self.measure(copies)
        if self.settings.backup_replication:
            self.guarded("backup replication", self._replication, needs_primary=True)
        _emit(self.env, "SnapshotPipelineFailures", MetricUnit.Count, len(self.result.errors))
        logger.info("snapshot tick", extra={"tick": self.result.to_dict()})
        return self.result

    def _replication(self) -> None:
        self.result.replication = ensure_backup_replication(self.settings, self.clients, self.db_instance_id())

    def record_completed(self, copies: list[Snap]) -> None:
        """The newest copy, seen available for the first time: measure the copy and mark it measured.

        Only the newest: copies run one at a time, so it is the one that just finished, and older
        unmarked copies (made before this version, or superseded) must not cost a call each.
        """
        latest = newest_available(copies)
        if latest is None or latest.copy_completed is not None:
            return
        if latest.copy_started is not None:
            duration = max((self.now - latest.copy_started).total_seconds(), 0.0)
            _emit(self.env, "CopyDurationSeconds", MetricUnit.Seconds, duration)
        tag_snapshot(self.rds(self.recovery), latest.arn,
                     [{"Key": TAG_COPY_COMPLETED, "Value": isoformat(self.now) or ""}])
        copies[copies.index(latest)] = replace(latest, copy_completed=self.now)
        self.result.completed.append(latest.snapshot_id)
        logger.info("copy available", extra={"snapshot_id": latest.snapshot_id, "source_id": latest.source_id})

    def take(self, sources: list[Snap]) -> None:
        self.remove_failed(self.primary, sources)
        due = snapshot_due(sources, self.now, self.settings.snapshot_interval_minutes)
        if not due.due:
            self.wait(due.reason)
            return
        full = self.quota_full(self.primary)
        if full:
            self.wait(f"snapshot due but not taken: {full}")
            return
        db_id = self.db_instance_id()
        snapshot_id = source_snapshot_id(self.env, slot_start(self.now, self.settings.snapshot_interval_minutes))
        created = create_snapshot(self.rds(self.primary), db_id, snapshot_id, source_tags(self.env, self.now))
        if created is None:
            self.wait(f"snapshot {snapshot_id} was taken by a concurrent tick", snapshot_id=snapshot_id)
            return
        answer = created["DBSnapshot"]
        logger.info("snapshot taken", extra={"snapshot_id": snapshot_id, "db_instance_id": db_id, "reason": due.reason})
        self.result.taken.append(snapshot_id)
        sources.append(
            Snap(
                snapshot_id=snapshot_id,
                arn=str(answer.get("DBSnapshotArn", "")),
                region=self.primary,
                kind="source",
                status=str(answer.get("Status", "creating")).lower(),
                created=self.now,
                encrypted=bool(answer.get("Encrypted", False)),
                kms_key_id=answer.get("KmsKeyId"),
                option_group=answer.get("OptionGroupName") or None,
                db_instance_id=db_id,
            )
        )

    def copy(self, sources: list[Snap], copies: list[Snap]) -> None:
        decision = copy_candidate(sources, copies)
        if decision.source is None:
            self.wait(decision.reason)
            return
        source = decision.source
        target = copy_snapshot_id(source.snapshot_id)
        full = self.quota_full(self.recovery)
        if full:
            self.wait(f"copy of {source.snapshot_id} not started: {full}", snapshot_id=target)
            return
        try:
            request = self.copy_request(source, target)
        except AwsError as exc:
            self.fail("copy snapshot", exc)
            self.notify_once(
                NOTICE_COPY_CONFIG,
                f"jams-dr {self.env}: recovery points are not being copied",
                f"Snapshot {source.snapshot_id} cannot be copied to {self.recovery}: {exc}",
            )
            return
        try:
            copied = copy_snapshot(self.rds(self.recovery), request)
        except ClientError as exc:
            if is_copy_limit(exc):
                self.copy_limited(source, target, exc)
                return
            raise
        if copied is None:
            self.wait(f"copy {target} was started by a concurrent tick", snapshot_id=target)
            return
        answer = copied["DBSnapshot"]
        logger.info(
            "copy started",
            extra={"snapshot_id": target, "source_id": source.snapshot_id, "region": self.recovery,
                   "kms_key": request.get("KmsKeyId"), "option_group": request.get("OptionGroupName")},
        )
        self.result.copied.append(target)
        self.close_notices()
        started = Snap(
            snapshot_id=target,
            arn=str(answer.get("DBSnapshotArn", "")),
            region=self.recovery,
            kind="copy",
            status=str(answer.get("Status", "pending")).lower(),
            created=source.created,
            encrypted=bool(answer.get("Encrypted", False)),
            source_id=source.snapshot_id,
            source_arn=source.arn,
            copy_started=self.now,
        )
        copies.append(started)
        self.record_completed(copies)

    def copy_request(self, source: Snap, target: str) -> dict[str, Any]:
        """CopyDBSnapshot arguments for ``source`` (docs/aws-facts.md, "Cross-region snapshot copy: the
        request"), or a clear AwsError."""
        if source.encrypted and not self.settings.copy_kms_key:
            raise AwsError(
                f"source snapshot {source.snapshot_id} is encrypted and COPY_KMS_KEY_ID is empty: set it to "
                f"a KMS key of {self.recovery} (the dr-support stack's CopyKeyArn output)",
                code="CopyKmsKeyMissing",
            )
        group = source.option_group
        if group is None:
            # moto leaves OptionGroupName off snapshots; RDS always reports it. Ask the instance.
            group = instance_option_group(primary_instance(self.rds(self.primary), self.db_instance_id()))
        mapped: str | None = None
        if not is_default_option_group(group):
            assert group is not None
            mapped = self.mapped_option_group(group, source)
        return copy_request(
            source_arn=source.arn,
            target_id=target,
            source_region=self.primary,
            # Every copy is encrypted, so a recovery point never sits in the recovery region in the clear.
            kms_key_id=self.settings.copy_kms_key or UNSET_COPY_KEY,
            copy_source_tags=True,
            tags=copy_tags(self.env, source, self.now),
            option_group=mapped,
        )

    def mapped_option_group(self, group: str, source: Snap) -> str:
        mapping = self.settings.option_group_map
        if group in mapping:
            return mapping[group]
        if not mapping:
            # Documented fallback (settings): an empty map means "the standby stack's option group".
            standby = self.standby()
            fallback = outputs_of(standby).get("OptionGroupName") if standby else None
            if fallback:
                return fallback
        raise AwsError(
            f"source snapshot {source.snapshot_id} uses option group {group!r}, which OPTION_GROUP_MAP does not "
            f"map to an option group of {self.recovery}; add it, e.g. OPTION_GROUP_MAP="
            f'{{"{group}": "<option group in {self.recovery}>"}} (the standby stack\'s OptionGroupName output)',
            code="OptionGroupNotMapped",
        )

    def copy_limited(self, source: Snap, target: str, exc: ClientError) -> None:
        """Too many copies in flight or the quota is full: wait, never delete to make room."""
        message = str(exc.response.get("Error", {}).get("Message", exc))
        reason = f"copy limit reached in {self.recovery} ({error_code(exc)}: {message}); retrying next tick"
        self.result.errors.append(f"copy snapshot: {reason}")
        self.wait(reason, snapshot_id=target, source_id=source.snapshot_id, error_code=error_code(exc))
        self.notify_once(
            NOTICE_COPY_LIMIT,
            f"jams-dr {self.env}: snapshot copies to {self.recovery} are blocked by a limit",
            f"Copying {source.snapshot_id} to {self.recovery} as {target} was refused: {message}. jams-dr retries "
            "every tick and deletes nothing to make room. Raise the quota or remove snapshots jams-dr does not "
            "manage; this notice is sent once until a copy succeeds again.",
        )

    # -- the manual-snapshot quota (docs/retention.md) --

    def check_quota(self, sources: list[Snap] | _Unknown, copies: list[Snap] | _Unknown) -> None:
        """Read each region's manual-snapshot quota the tick works in, publish the headroom, and warn once per
        episode before it is full. It never deletes anything: pruning deletes only the pipeline's own
        snapshots, by the retention; what jams-dr does not manage is only counted."""
        if not isinstance(sources, _Unknown):
            self.guarded("read snapshot quota", lambda: self.read_quota(self.primary, sources), in_primary=True)
        if not isinstance(copies, _Unknown):
            self.guarded("read snapshot quota", lambda: self.read_quota(self.recovery, copies))
        if self._quota:
            self.guarded("judge snapshot quota", lambda: self.judge_quota(
                complete=not isinstance(sources, _Unknown) and not isinstance(copies, _Unknown)))

    def read_quota(self, region: str, ours: list[Snap]) -> None:
        reading = manual_snapshot_quota(self.rds(region))
        if reading is None:
            raise AwsError(f"DescribeAccountAttributes in {region} lists no ManualSnapshots quota",
                           code="SnapshotQuotaUnknown")
        self._quota[region] = QuotaUse(region=region, used=reading.used, max=reading.max, ours=len(ours))

    def judge_quota(self, *, complete: bool) -> None:
        """Metrics for the region nearest its quota; one notice while any region needs attention, closed once
        every region read is clear again (``complete``: both regions were read this tick)."""
        uses = list(self._quota.values())
        _emit(self.env, "ManualSnapshotQuotaHeadroom", MetricUnit.Count, min(u.headroom for u in uses))
        _emit(self.env, "ManualSnapshotQuotaUsedPercent", MetricUnit.Percent, max(u.used_percent for u in uses))
        s = self.settings
        budget = snapshot_budget(s.snapshot_interval_minutes, s.retain_count, s.retain_days)
        problems = [p for use in uses for p in quota_warnings(use, budget, s.manual_snapshot_quota)]
        if not problems:
            if complete:
                close_notice(self.table, notice_key(NOTICE_SNAPSHOT_QUOTA, self.env))
            return
        logger.warning(
            "manual snapshot quota needs attention",
            extra={"problems": problems, "environment": self.env, "budget": budget.total,
                   "regions": {u.region: {"used": u.used, "max": u.max, "ours": u.ours} for u in uses}},
        )
        self.notify_once(
            NOTICE_SNAPSHOT_QUOTA,
            f"jams-dr {self.env}: the RDS manual-snapshot quota is nearly full",
            "; ".join(problems) + f". jams-dr keeps up to {budget.total} manual snapshots per region with "
            f"SNAPSHOT_INTERVAL_MINUTES={s.snapshot_interval_minutes}, RETAIN_COUNT={s.retain_count} and "
            f"RETAIN_DAYS={s.retain_days}. It deletes nothing it does not manage and nothing for the quota: delete "
            "snapshots jams-dr does not manage, shorten RETAIN_DAYS or raise the quota (Service Quotas). This "
            "notice is sent once until every region is clear again.",
        )

    def quota_full(self, region: str) -> str | None:
        """Why a snapshot or copy in ``region`` would fail on the quota now, or None (also when unread)."""
        use = self._quota.get(region)
        if use is None or not use.full:
            return None
        return (f"the manual-snapshot quota of {region} is full ({use.used} of {use.max}, {use.foreign} not "
                "jams-dr's); retrying each tick, nothing is deleted to make room")

    def remove_failed(self, region: str, snaps: list[Snap]) -> None:
        """A failed snapshot holds no data and blocks its deterministic id: delete it, report it."""
        for snap in [s for s in snaps if s.failed]:
            problem = AwsError(f"RDS reports it failed in {region}; deleting it", "SnapshotFailed")
            self.fail(f"{snap.kind} {snap.snapshot_id}", problem)
            if delete_snapshot(self.rds(region), snap.snapshot_id):
                self.result.pruned.append(snap.snapshot_id)
            snaps.remove(snap)

    def pin(self, copies: list[Snap]) -> list[str] | None:
        """Make the newest available copy the standby stack's DBSnapshotIdentifier when it is safe.

        Returns the pin values pruning must spare: the current one, plus the new one while an update
        is on its way (a failed update rolls back to the old value). None while the stack is changing,
        when which copy it will name is not settled: then nothing is pruned in the recovery region.
        """
        stack = self.standby()
        if stack is None:
            raise AwsError(
                f"standby stack {self.settings.standby_stack_name} does not exist in {self.recovery}; "
                "create it (jams-dr bootstrap) or set STANDBY_STACK_NAME",
                code="StandbyStackNotFound",
            )
        current = parameters_of(stack).get(PIN_PARAMETER) or ""
        # What a recovery started now would restore (its preflight reads this parameter): measure() dates it.
        self.result.pin = current or None
        status = str(stack.get("StackStatus", ""))
        latest = newest_available(copies)
        if status.endswith("_IN_PROGRESS"):
            self.wait(f"pin pending: standby stack is {status}; copies are not pruned meanwhile")
            return None
        if latest is None:
            self.wait("no available copy to pin yet")
            return [current]
        if matches_pin(latest, current):
            return [current]
        if status not in UPDATABLE:
            raise AwsError(
                f"standby stack {stack['StackName']} is {status}; repair it (e.g. continue-update-rollback) "
                f"before {latest.snapshot_id} can be pinned",
                code="StandbyStackNotUpdatable",
            )
        frozen = self.pin_frozen()
        if frozen:
            # Held on purpose, not stuck: measure() reports no pin lag for it (PinBehindSeconds 0).
            self.result.pin_held = frozen
            self.wait(frozen, snapshot_id=latest.snapshot_id)
            return [current]
        cfn = self.clients.client("cloudformation", self.recovery)
        outcome = update_pin(cfn, stack, latest.snapshot_id)
        self._standby = UNKNOWN
        if outcome == "busy":
            self.wait("pin pending: a concurrent update of the standby stack is in progress",
                      snapshot_id=latest.snapshot_id)
            return None
        self.result.pinned = latest.snapshot_id
        self.result.pin = latest.snapshot_id
        logger.info("recovery point pinned",
                    extra={"snapshot_id": latest.snapshot_id, "previous": current, "stack": stack["StackName"]})
        return [current, latest.snapshot_id]

    def publish_pin(self) -> None:
        """Mirror the standby stack's settled pin into its SSM parameter (never a pin still in flight:
        a failed update rolls back to the old value)."""
        stack = self.standby()
        if stack is None or str(stack.get("StackStatus", "")).endswith("_IN_PROGRESS"):
            return
        current = parameters_of(stack).get(PIN_PARAMETER) or ""
        if current:
            publish_pin(self.clients.client("ssm", self.recovery),
                        pinned_snapshot_parameter(self.env, self.recovery), current)

    def pin_frozen(self) -> str | None:
        """Why the pin must not move now, or None: a changed DBSnapshotIdentifier makes CloudFormation
        restore a new DB instance and delete the old one (CloudFormation template reference,
        AWS::RDS::DBInstance, DBSnapshotIdentifier)."""
        holder = self.lease()
        if holder is not None:
            return f"pin frozen: the recovery lease is held by {holder}"
        cfn = self.clients.client("cloudformation", self.recovery)
        if describe_stack(cfn, self.settings.app_stack_name) is not None:
            return (
                f"pin frozen: application stack {self.settings.app_stack_name} exists in {self.recovery} "
                "(its database was restored from the pinned snapshot)"
            )
        return None

    def retention(self) -> Retention:
        return Retention(retain_count=self.settings.retain_count, retain_days=self.settings.retain_days)

    def prune_copies(self, copies: list[Snap], pins: list[str]) -> None:
        protected: dict[str, str] = {}
        for copy in copies:
            if any(matches_pin(copy, value) for value in pins):
                protected[copy.snapshot_id] = "pinned on the standby stack"
        latest = newest_available(copies)
        if latest is not None:
            # Keeps the next copy incremental (only a previous copy still in the destination, under the
            # same KMS key, makes a copy incremental: RDS User Guide, "Copying a DB snapshot for Amazon
            # RDS", incremental copying) and is the next pin.
            protected.setdefault(latest.snapshot_id, "newest available copy")
        plan = prune_plan(copies, self.now, self.retention(), protected)
        if not plan.delete:
            return
        # A recovery or a drill may be restoring from a copy the pin no longer names.
        holder = self.lease() or self.drill_lease()
        if holder is not None:
            self.wait(f"copies not pruned while the lease is held by {holder}")
            return
        self.delete(self.recovery, plan.delete)

    def prune_sources(self, sources: list[Snap], copies: list[Snap]) -> None:
        plan = prune_plan(sources, self.now, self.retention(), protected_sources(sources, copies))
        self.delete(self.primary, plan.delete)

    def delete(self, region: str, doomed: list[Snap]) -> None:
        rds = self.rds(region)
        count = 0
        for snap in doomed:
            if delete_snapshot(rds, snap.snapshot_id):
                count += 1
                self.result.pruned.append(snap.snapshot_id)
                logger.info("snapshot pruned", extra={"snapshot_id": snap.snapshot_id, "region": region,
                                                      "snapshot_created": isoformat(snap.created)})
        if count:
            _emit(self.env, "SnapshotsPruned", MetricUnit.Count, count)

    def measure(self, copies: list[Snap]) -> None:
        """Publish the RPO a recovery would get now, and how far the pin is behind the newest copy.

        Runs after pin(), so ``result.pin`` is the value the standby stack's DBSnapshotIdentifier holds
        now: the one the recovery chain's preflight reads and restores.
        """
        latest = newest_available(copies)
        self.result.newest_copy = None if latest is None else latest.snapshot_id
        age = self.pinned_age(copies)
        point = self.result.pinned_copy or ""
        pitr = self.pitr_age() if self.settings.recovery_source == "pitr" else None
        # A recovery restores the replicated backups only when their latest point is newer than the pin.
        if pitr is not None and (age is None or pitr[0] <= age):
            age, point = pitr
        if age is not None:
            self.publish_rpo(age, point)
        lag = self.pin_behind(copies, latest)
        self.result.pin_behind_seconds = lag
        _emit(self.env, "PinBehindSeconds", MetricUnit.Seconds, lag)

    def pitr_age(self) -> tuple[float, str] | None:
        """RECOVERY_SOURCE=pitr: the replicated backups' lag (now - RestoreWindow.LatestTime, docs/pitr.md)
        and their ARN; None, logged, when they are missing or unusable (the pinned copy's age stands)."""
        try:
            db_instance_id: str | None = self.db_instance_id()
        except (AwsError, ClientError):
            db_instance_id = self.settings.db_instance_id or None
        backup, reason = find_replicated_backup(self.settings, self.clients, db_instance_id)
        if backup is not None:
            reason = unusable_reason(backup, None) or ""
        if backup is None or backup.latest is None or reason:
            logger.warning("RecoveryPointAgeSeconds: the pinned copy's age, not the replicated backups' lag",
                           extra={"reason": reason})
            return None
        return max((self.now - backup.latest).total_seconds(), 0.0), backup.arn

    def pinned_copy(self, copies: list[Snap]) -> Snap | None:
        """The available copy the standby stack names, or None when a recovery could not restore it."""
        value = self.result.pin
        pinned = next((c for c in copies if matches_pin(c, value)), None)
        return pinned if pinned is not None and pinned.available else None

    def pinned_age(self, copies: list[Snap]) -> float | None:
        """Age of the pinned copy's data (now - its source's creation), or None with nothing restorable.

        None publishes no RecoveryPointAgeSeconds: with nothing pinned (or a pin naming a copy that is
        gone or not available) a recovery stops at its preflight, so no age would be true. The RPO
        alarm treats missing data as breaching, so this still pages, after the same periods as a
        pipeline that stopped.
        """
        pinned = self.pinned_copy(copies)
        if pinned is None:
            self.wait(f"no restorable copy pinned on {self.settings.standby_stack_name} "
                      f"({self.result.pin or 'nothing pinned'}): RecoveryPointAgeSeconds not published")
            return None
        self.result.pinned_copy = pinned.snapshot_id
        return max((self.now - pinned.created).total_seconds(), 0.0)

    def publish_rpo(self, age: float, recovery_point: str) -> None:
        self.result.rpo_seconds = age
        _emit(self.env, "RecoveryPointAgeSeconds", MetricUnit.Seconds, age)
        if age > self.settings.rpo_target_seconds:
            logger.warning("recovery point older than the RPO target",
                           extra={"recovery_point": recovery_point, "age_seconds": age,
                                  "target_seconds": self.settings.rpo_target_seconds})

    def pin_behind(self, copies: list[Snap], latest: Snap | None) -> float:
        """How much newer data the newest available copy holds than the pinned one (PinBehindSeconds).

        0 when the newest copy is pinned, when there is no copy, and when the pin is held on purpose
        (result.pin_held: a recovery lease or a restored application stack; moving it then would make
        CloudFormation replace a live database). Otherwise it is positive only while the pin cannot
        move: the standby stack is not updatable, or stays *_IN_PROGRESS, or the update keeps failing.
        A healthy pipeline pins a new copy in the tick that sees it available, so a value that outlasts
        a few ticks means pinning is stuck (the support stack's pin-stuck alarm). With nothing
        restorable pinned, the pin is behind all the newest copy holds: its age.
        """
        if latest is None or self.result.pin_held:
            return 0.0
        pinned = self.pinned_copy(copies)
        if pinned is None:
            return max((self.now - latest.created).total_seconds(), 0.0)
        behind = max((latest.created - pinned.created).total_seconds(), 0.0)
        if behind:
            logger.warning("the pin is behind the newest available copy",
                           extra={"pinned": pinned.snapshot_id, "newest": latest.snapshot_id,
                                  "behind_seconds": behind})
        return behind


def run_tick(settings: Settings, clients: ClientFactory, clock: Clock) -> TickResult:
    """Advance the pipeline once (never sleeps); safe to interrupt anywhere and to run concurrently."""
    return _Tick(settings, clients, clock).run()
