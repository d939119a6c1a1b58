"""The tick's view of the RDS manual-snapshot quota in a region: usage, headroom and what needs a warning (pure).

The budget (how many snapshots the pipeline keeps) is ``chalicelib.retention``; this module compares it and a
region's real usage, read with DescribeAccountAttributes (``chalicelib.rds.manual_snapshot_quota``), with the
region's real quota. docs/retention.md explains the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from chalicelib.retention import DEFAULT_MANUAL_SNAPSHOT_QUOTA, WARN_PERCENT, Budget, warn_level

# The quota's default is defined in chalicelib.retention and named here too, with the real quota's reading.
__all__ = ["DEFAULT_MANUAL_SNAPSHOT_QUOTA", "MANUAL_SNAPSHOTS_QUOTA_NAME", "QuotaReading", "QuotaUse", "quota_warnings"]
# DescribeAccountAttributes' AccountQuotaName of the manual DB snapshots (RDS API reference, AccountQuota).
MANUAL_SNAPSHOTS_QUOTA_NAME = "ManualSnapshots"

@dataclass(frozen=True)
class QuotaReading:
    """DescribeAccountAttributes' ManualSnapshots quota of one region: snapshots used and the quota."""

    used: int
    max: int


@dataclass(frozen=True)
class QuotaUse:
    """One region's manual snapshots: the account's usage and quota, and how many of them are the pipeline's."""

    region: str
    used: int
    max: int
    ours: int

    @property
    def foreign(self) -> int:
        """Manual snapshots in the region the pipeline does not manage (it never deletes them)."""
        return max(self.used - self.ours, 0)

    @property
    def headroom(self) -> int:
        return self.max - self.used

    @property
    def full(self) -> bool:
        return self.used >= self.max

    @property
    def used_percent(self) -> float:
        return 100.0 * self.used / self.max if self.max > 0 else 100.0


def quota_warnings(use: QuotaUse, budget: Budget, configured_quota: int) -> list[str]:
    """Why the region's quota needs attention, before it is full; empty when it does not."""
    problems: list[str] = []
    where = f"{use.region}: {use.used} of {use.max} manual snapshots used ({use.ours} jams-dr's, {use.foreign} not)"
    if use.full:
        problems.append(f"{where}: the quota is full; new snapshots and copies here wait until it has room")
    elif use.used >= warn_level(use.max):
        problems.append(f"{where}: at or over the warning level of {warn_level(use.max)} ({WARN_PERCENT}%)")
    projected = use.foreign + budget.total
    if projected > use.max:
        problems.append(
            f"{use.region}: jams-dr keeps up to {budget.total} manual snapshots here and {use.foreign} it does not "
            f"manage are already here: {projected} would exceed the quota of {use.max}")
    if use.max < configured_quota:
        problems.append(
            f"{use.region}: the account's quota is {use.max}, below MANUAL_SNAPSHOT_QUOTA={configured_quota} the "
            "settings were checked against; set MANUAL_SNAPSHOT_QUOTA to the smaller quota of the two regions")
    return problems
