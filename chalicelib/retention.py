"""How many manual snapshots jams-dr keeps per region, against the RDS manual-snapshot quota (pure arithmetic).

RDS limits the manual DB snapshots of an account in a region (the ``ManualSnapshots`` quota: 100 by default;
RDS User Guide, "Quotas and constraints for Amazon RDS"). Every manual snapshot counts, whoever made it:
the pipeline's sources (primary region) and copies (recovery region), an operator's snapshots, other
backup tools' manual snapshots, the final snapshots CloudFormation leaves when it deletes a database with
``DeletionPolicy: Snapshot``. Once the quota is full, CreateDBSnapshot and CopyDBSnapshot fail
(``SnapshotQuotaExceeded``) and no new recovery point is made.

``snapshot_budget`` is the most snapshots the pruning rules (``chalicelib.snapshots.rules.prune_plan`` and
the tick's protections) keep in one region; the settings refuse an interval and retention whose budget
exceeds jams-dr's share of the quota, and the tick (``chalicelib.snapshots.quota``) compares the budget and
the region's real usage (DescribeAccountAttributes) with the real quota. It imports only the standard
library: the settings, a foundation module, validate with it, so it is a foundation module too.
"""

from __future__ import annotations

from dataclasses import dataclass

# Manual DB snapshots per region and account, by default (RDS User Guide, "Quotas and constraints for Amazon
# RDS", Manual DB snapshots: 100). DescribeAccountAttributes answers the account's real quota and usage.
DEFAULT_MANUAL_SNAPSHOT_QUOTA = 100

MINUTES_PER_DAY = 24 * 60
# The longest SNAPSHOT_INTERVAL_MINUTES the settings accept (a week), so a fix never names one they refuse.
MAX_INTERVAL_MINUTES = 7 * MINUTES_PER_DAY
# jams-dr may keep at most 60% of the quota; 40% is left to what it does not manage. The quota is per account
# and region, and shared with operators' snapshots before a change, other tools' manual snapshots, the final
# snapshot of every database stack CloudFormation deletes (a retired recovery stack, a failed drill's
# teardown), and another jams-dr environment using the same regions. jams-dr never prunes those, so they need
# room the pipeline never takes. 60% is the smallest round share that holds the defaults (hourly snapshots
# kept 2 days: 51) in the default quota of 100.
SHARE_PERCENT = 60
# The tick warns when a region's manual snapshots reach this share of its quota: with the default quota,
# 20 snapshots (20 hours at the default interval) before CreateDBSnapshot and CopyDBSnapshot start failing.
WARN_PERCENT = 80


@dataclass(frozen=True)
class Budget:
    """The most manual snapshots the pipeline keeps in one region (the same bound holds in both).

    - ``retained``: the available snapshots the retention keeps in the steady state: the newest
      ``retain_count``, and every one younger than ``retain_days`` (one per interval at most: a snapshot is
      due only when the newest is an interval old), whichever set is larger (both are the newest ones).
    - ``in_flight``: 1, the snapshot being made now: the source being created (primary) or the copy in
      progress (recovery). Kept whatever its age (``prune_plan`` keeps anything not available, and counts
      only available ones against the retention); one at a time (no snapshot is due while one is being
      created, no copy starts while one is in progress).
    - ``finished``: 1, the previous one, made available since the last prune. A tick takes or copies before
      it prunes, so when the previous snapshot or copy finished within the last tick (a creation or a copy
      that takes about an interval or longer, or an interval of one tick), it stands beside the new one
      before the prune drops what it superseded.
    - ``held``: 1, a snapshot the retention drops that another rule keeps. Primary: the source of the copy
      in progress (deleting it fails the copy) once the copy outlives the retention. Recovery: the pin while
      it is frozen (a recovery or drill lease, an application stack in the region) or the previous pin while
      a pin update is in flight (a failed update rolls back to it). Pruning spares at most the current pin
      and the newest available copy, and the newest is among those the retention keeps: one at most.

    tests/unit/test_snapshot_quota_budget.py drives the real rules tick by tick and finds exactly this bound.

    Not counted, because they are episodes rather than the steady state: while a lease is held the copies are
    not pruned at all (a recovery or a drill may restore from any of them), so a long drill adds one copy per
    interval until it ends; while the standby stack is being updated (minutes) the recovery region is not
    pruned. The tick's quota warning covers both.
    """

    retained: int
    in_flight: int = 1
    finished: int = 1
    held: int = 1

    @property
    def total(self) -> int:
        return self.retained + self.extra

    @property
    def extra(self) -> int:
        return self.in_flight + self.finished + self.held


def window_count(interval_minutes: int, retain_days: int) -> int:
    """The most snapshots younger than ``retain_days`` when one is taken every ``interval_minutes`` or later."""
    window = retain_days * MINUTES_PER_DAY
    return -(-window // interval_minutes)


def snapshot_budget(interval_minutes: int, retain_count: int, retain_days: int) -> Budget:
    return Budget(retained=max(retain_count, window_count(interval_minutes, retain_days)))


def share_of(quota: int) -> int:
    """The snapshots jams-dr may keep in a region whose quota is ``quota``."""
    return quota * SHARE_PERCENT // 100


def quota_for(total: int) -> int:
    """The smallest quota whose share holds ``total`` snapshots."""
    return -(-total * 100 // SHARE_PERCENT)


def warn_level(quota: int) -> int:
    """Manual snapshots in a region at which the tick warns (at least one below the quota)."""
    return min(-(-quota * WARN_PERCENT // 100), max(quota - 1, 0))


def fit_problem(interval_minutes: int, retain_count: int, retain_days: int, quota: int) -> tuple[str, str] | None:
    """(variable, problem) when the budget exceeds jams-dr's share of ``quota``, else None.

    RETAIN_COUNT is named when the count alone cannot fit; otherwise RETAIN_DAYS (the window at this
    interval is what overflows). The problem names the numbers and every fix.
    """
    budget = snapshot_budget(interval_minutes, retain_count, retain_days)
    share = share_of(quota)
    if budget.total <= share:
        return None
    where = (f"over jams-dr's share of the RDS manual-snapshot quota per region: {share} of "
             f"MANUAL_SNAPSHOT_QUOTA={quota} (the other {100 - SHARE_PERCENT}% is left to snapshots jams-dr does "
             "not manage)")
    raise_quota = (f"raise the account's ManualSnapshots quota in both regions (Service Quotas) to at least "
                   f"{quota_for(budget.total)} and set MANUAL_SNAPSHOT_QUOTA to it")
    room = share - budget.extra
    if retain_count > room:
        fixes = [f"set RETAIN_COUNT to at most {room}"] if room >= 1 else []
        return "RETAIN_COUNT", (
            f"RETAIN_COUNT='{retain_count}': jams-dr keeps at least {retain_count + budget.extra} manual snapshots "
            f"per region ({retain_count} + {budget.extra} in flight, just made or held), {where}; "
            + " or ".join([*fixes, raise_quota]))
    fixes = [f"set RETAIN_DAYS to at most {room * interval_minutes // MINUTES_PER_DAY}"]
    if retain_days > 0:
        shortest = -(-retain_days * MINUTES_PER_DAY // room)
        if shortest <= MAX_INTERVAL_MINUTES:
            fixes.append(f"SNAPSHOT_INTERVAL_MINUTES to at least {shortest}")
    return "RETAIN_DAYS", (
        f"RETAIN_DAYS='{retain_days}': with SNAPSHOT_INTERVAL_MINUTES={interval_minutes} jams-dr would keep up to "
        f"{budget.total} manual snapshots per region ({budget.retained} younger than {retain_days} days + "
        f"{budget.extra} in flight, just made or held), {where}; " + ", ".join(fixes) + f", or {raise_quota}")
