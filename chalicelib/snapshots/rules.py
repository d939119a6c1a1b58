"""Pure rules of the recovery-point pipeline: names, tags, what is due, what may be deleted.

Nothing here calls AWS or reads a clock: every function takes the facts (snapshots as ``Snap``, the
current time) and returns a decision, so the rules are unit-tested exhaustively and the tick in
``chalicelib.snapshots.tick`` only gathers facts and applies decisions.

Times: a snapshot's ``created`` is the point in time of its data as jams-dr recorded it (the tick's
clock when the source was requested, carried to the copy in ``jams-dr:source-created``). It is at most
seconds earlier than RDS's SnapshotCreateTime, so ages derived from it err on the old side (the RPO is
never under-reported), and it keeps the rules on the same clock as the tick that applies them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from chalicelib.clock import isoformat, parse_iso
from chalicelib.tags import (
    TAG_COPY_COMPLETED,
    TAG_COPY_STARTED,
    TAG_ENVIRONMENT,
    TAG_KIND,
    TAG_MANAGED_BY,
    TAG_SOURCE_ARN,
    TAG_SOURCE_CREATED,
    TAG_SOURCE_ID,
    TAG_TAKEN_AT,
)

if TYPE_CHECKING:
    from mypy_boto3_rds.type_defs import TagTypeDef

MANAGED_BY = "jams-dr"

Kind = Literal["source", "copy"]
AVAILABLE = "available"
FAILED = "failed"
COPY_SUFFIX = "-copy"


@dataclass(frozen=True)
class Snap:
    """One of our manual snapshots, as the rules need it."""

    snapshot_id: str
    arn: str
    region: str
    kind: Kind
    status: str
    created: datetime
    encrypted: bool = False
    kms_key_id: str | None = None
    option_group: str | None = None
    db_instance_id: str | None = None
    source_id: str | None = None
    source_arn: str | None = None
    copy_started: datetime | None = None
    copy_completed: datetime | None = None

    @property
    def available(self) -> bool:
        return self.status == AVAILABLE

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    @property
    def in_progress(self) -> bool:
        """Still being made (creating, copying, pending...): neither usable nor finished."""
        return not (self.available or self.failed or self.status == "deleting")


def tag_map(tags: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in tags or ()}


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        return None


def _as_utc(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def snap_from_description(desc: Mapping[str, Any], region: str, environment: str) -> Snap | None:
    """The ``Snap`` for a DescribeDBSnapshots item, or None when it is not ours (tags decide)."""
    tags = tag_map(desc.get("TagList"))
    if tags.get(TAG_MANAGED_BY) != MANAGED_BY or tags.get(TAG_ENVIRONMENT) != environment:
        return None
    # Only the pipeline's own snapshots are recovery points. An application stack tags its database with
    # managed-by and jams-dr:kind = recovery | drill | failback, and CopyTagsToSnapshot carries those tags
    # to the final snapshot its deletion leaves: such a snapshot must never be copied, pinned or pruned.
    kind_tag = tags.get(TAG_KIND)
    if kind_tag not in ("source", "copy"):
        return None
    kind: Kind = "copy" if kind_tag == "copy" else "source"
    rds_time = _as_utc(desc.get("SnapshotCreateTime")) or _as_utc(desc.get("OriginalSnapshotCreateTime"))
    recorded = _parse_time(tags.get(TAG_SOURCE_CREATED if kind == "copy" else TAG_TAKEN_AT))
    created = recorded or rds_time or datetime.fromtimestamp(0, UTC)
    return Snap(
        snapshot_id=str(desc["DBSnapshotIdentifier"]).lower(),
        arn=str(desc.get("DBSnapshotArn", "")),
        region=region,
        kind=kind,
        status=str(desc.get("Status", "")).lower(),
        created=created,
        encrypted=bool(desc.get("Encrypted", False)),
        kms_key_id=desc.get("KmsKeyId"),
        option_group=desc.get("OptionGroupName") or None,
        db_instance_id=desc.get("DBInstanceIdentifier"),
        source_id=(tags.get(TAG_SOURCE_ID) or None) if kind == "copy" else None,
        source_arn=(tags.get(TAG_SOURCE_ARN) or None) if kind == "copy" else None,
        copy_started=_parse_time(tags.get(TAG_COPY_STARTED)),
        copy_completed=_parse_time(tags.get(TAG_COPY_COMPLETED)),
    )


# --- names and tags -------------------------------------------------------------------------------


def slot_start(now: datetime, interval_minutes: int) -> datetime:
    """Start of the interval slot holding ``now`` (aligned on the epoch, so every tick agrees)."""
    step = interval_minutes * 60
    epoch = int(now.astimezone(UTC).timestamp())
    return datetime.fromtimestamp(epoch - epoch % step, UTC)


def source_snapshot_id(environment: str, slot: datetime) -> str:
    """Deterministic per slot: two overlapping ticks ask RDS for the same id and one of them loses."""
    return f"{environment}-dr-{slot.astimezone(UTC):%Y%m%d%H%M}"


def copy_snapshot_id(source_id: str) -> str:
    """Deterministic per source: a second copy request of the same source is refused by RDS."""
    return f"{source_id.lower()}{COPY_SUFFIX}"


def base_tags(environment: str, kind: Kind) -> list[TagTypeDef]:
    return [
        {"Key": TAG_MANAGED_BY, "Value": MANAGED_BY},
        {"Key": TAG_ENVIRONMENT, "Value": environment},
        {"Key": TAG_KIND, "Value": kind},
    ]


def source_tags(environment: str, taken_at: datetime) -> list[TagTypeDef]:
    return [*base_tags(environment, "source"), {"Key": TAG_TAKEN_AT, "Value": isoformat(taken_at) or ""}]


def copy_tags(environment: str, source: Snap, started_at: datetime) -> list[TagTypeDef]:
    return [
        *base_tags(environment, "copy"),
        {"Key": TAG_SOURCE_ID, "Value": source.snapshot_id},
        {"Key": TAG_SOURCE_ARN, "Value": source.arn},
        {"Key": TAG_SOURCE_CREATED, "Value": isoformat(source.created) or ""},
        {"Key": TAG_COPY_STARTED, "Value": isoformat(started_at) or ""},
    ]


def is_default_option_group(name: str | None) -> bool:
    """RDS's own groups ("default:sqlserver-se-15-00") exist in every region: nothing to map."""
    return not name or name.startswith("default:")


# --- the pipeline's decisions ---------------------------------------------------------------------


def newest(snaps: Iterable[Snap]) -> Snap | None:
    return max(snaps, key=lambda s: (s.created, s.snapshot_id), default=None)


def newest_available(snaps: Iterable[Snap]) -> Snap | None:
    return newest(s for s in snaps if s.available)


@dataclass(frozen=True)
class Due:
    due: bool
    reason: str


def snapshot_due(sources: Sequence[Snap], now: datetime, interval_minutes: int) -> Due:
    """A new source is due when the newest of ours (any status but failed) is an interval old."""
    creating = [s for s in sources if s.in_progress]
    if creating:
        return Due(False, f"source snapshot {creating[0].snapshot_id} is still {creating[0].status}")
    latest = newest(s for s in sources if not s.failed)
    if latest is None:
        return Due(True, "no snapshot of ours yet")
    age = now - latest.created
    if age >= timedelta(minutes=interval_minutes):
        return Due(True, f"newest snapshot {latest.snapshot_id} is {int(age.total_seconds())} s old")
    return Due(False, f"newest snapshot {latest.snapshot_id} is younger than {interval_minutes} min")


def copy_of(source: Snap, copies: Iterable[Snap]) -> Snap | None:
    """The copy made from ``source`` (by tag, or by the deterministic id for untagged races)."""
    target = copy_snapshot_id(source.snapshot_id)
    for copy in copies:
        if copy.source_id == source.snapshot_id or (source.arn and copy.source_arn == source.arn):
            return copy
        if copy.snapshot_id == target:
            return copy
    return None


@dataclass(frozen=True)
class CopyDecision:
    source: Snap | None
    reason: str


def copy_candidate(sources: Sequence[Snap], copies: Sequence[Snap]) -> CopyDecision:
    """The source to copy now, if any.

    Only the newest available source is ever copied: once it is copied, older uncopied sources are
    superseded (their copy would never be pinned). Copies of one instance run one after another
    (docs/aws-facts.md, "Cross-region snapshot copy: limits and queueing"), so nothing starts while a
    copy of ours is still in progress.
    """
    busy = [c for c in copies if c.in_progress]
    if busy:
        return CopyDecision(None, f"copy {busy[0].snapshot_id} is still {busy[0].status}")
    latest = newest_available(sources)
    if latest is None:
        return CopyDecision(None, "no available source snapshot to copy")
    existing = copy_of(latest, copies)
    if existing is not None:
        return CopyDecision(None, f"newest source {latest.snapshot_id} already copied as {existing.snapshot_id}")
    return CopyDecision(latest, f"newest source {latest.snapshot_id} has no copy yet")


def matches_pin(snap: Snap, pinned_value: str | None) -> bool:
    """The standby stack names the pin by id (we write ids) but an operator may have written an ARN."""
    if not pinned_value:
        return False
    value = pinned_value.strip()
    return value.lower() == snap.snapshot_id or (bool(snap.arn) and value == snap.arn)


def protected_sources(sources: Sequence[Snap], copies: Sequence[Snap]) -> dict[str, str]:
    """Sources that must not be deleted because their copy still needs them, with the reason.

    Deleting a source before its copy is available can fail the copy (RDS User Guide, "Copying a DB
    snapshot for Amazon RDS", Limitations). A source whose copy has not started is protected only
    while it is the one the next copy will take.
    """
    keep: dict[str, str] = {}
    for source in sources:
        copy = copy_of(source, copies)
        if copy is not None and not copy.available:
            keep[source.snapshot_id] = f"its copy {copy.snapshot_id} is {copy.status}"
    candidate = newest_available(sources)
    if candidate is not None and copy_of(candidate, copies) is None:
        keep[candidate.snapshot_id] = "its copy has not started yet"
    return keep


@dataclass(frozen=True)
class Retention:
    retain_count: int
    retain_days: int


@dataclass(frozen=True)
class PrunePlan:
    delete: list[Snap] = field(default_factory=list)
    keep: dict[str, str] = field(default_factory=dict)


def prune_plan(
    snaps: Sequence[Snap],
    now: datetime,
    retention: Retention,
    protected: Mapping[str, str] | None = None,
) -> PrunePlan:
    """Which of ``snaps`` (ours, one region) to delete, and why each other one is kept.

    Kept: anything not available; anything in ``protected`` (id -> reason); the newest
    ``retain_count`` available ones; anything younger than ``retain_days``.
    """
    guard = {k.lower(): v for k, v in (protected or {}).items()}
    keep: dict[str, str] = {}
    ordered = sorted(snaps, key=lambda s: (s.created, s.snapshot_id), reverse=True)
    available = [s for s in ordered if s.available]
    for snap in ordered:
        if not snap.available:
            keep[snap.snapshot_id] = f"status {snap.status}"
        elif snap.snapshot_id in guard:
            keep[snap.snapshot_id] = guard[snap.snapshot_id]
    for snap in available[: retention.retain_count]:
        keep.setdefault(snap.snapshot_id, f"among the newest {retention.retain_count}")
    horizon = now - timedelta(days=retention.retain_days)
    for snap in available:
        if snap.created > horizon:
            keep.setdefault(snap.snapshot_id, f"younger than {retention.retain_days} days")
    delete = [s for s in available if s.snapshot_id not in keep]
    return PrunePlan(delete=delete, keep=keep)
