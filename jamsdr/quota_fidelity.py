"""The RDS manual-snapshot quota in the embedded AWS, as RDS keeps it (docs/aws-fidelity.md).

RDS limits the manual DB snapshots of an account per region (the ``ManualSnapshots`` quota, 100 by default:
RDS User Guide, "Quotas and constraints for Amazon RDS"), answers its usage and value in
DescribeAccountAttributes (RDS API reference, DescribeAccountAttributes: ``AccountQuotas``, each an
``AccountQuota`` with ``AccountQuotaName``, ``Used`` and ``Max``), and refuses CreateDBSnapshot and
CopyDBSnapshot beyond it with ``SnapshotQuotaExceeded``. Automated snapshots do not count against it.

moto 5.2.5 does not implement DescribeAccountAttributes, counts automated snapshots against its limit, and
defaults the limit (``MOTO_RDS_SNAPSHOT_LIMIT``) to 1000. Here:

- the limit is ``MOTO_RDS_SNAPSHOT_LIMIT`` when set, else RDS's default quota;
- only manual snapshots count against it (moto's own check compares all of a region's snapshots with it, so
  the limit it sees is raised by the region's automated ones);
- DescribeAccountAttributes answers ``ManualSnapshots`` (Used: the region's manual snapshots, Max: the limit,
  the same numbers moto refuses on) and the other quotas the pipeline does not read are left out.
"""

from __future__ import annotations

import os
from typing import Any

from moto.core.responses import ActionResult
from moto.rds.models import RDSBackend
from moto.rds.responses import RDSResponse

from chalicelib.retention import DEFAULT_MANUAL_SNAPSHOT_QUOTA
from chalicelib.snapshots.quota import MANUAL_SNAPSHOTS_QUOTA_NAME

LIMIT_VARIABLE = "MOTO_RDS_SNAPSHOT_LIMIT"
_INSTALLED = "_jamsdr_quota_fidelity"


def manual_snapshot_limit() -> int:
    """The embedded account's manual-snapshot quota per region."""
    return int(os.environ.get(LIMIT_VARIABLE, DEFAULT_MANUAL_SNAPSHOT_QUOTA))


def manual_snapshot_count(backend: RDSBackend) -> int:
    return sum(1 for snapshot in backend.database_snapshots.values() if snapshot.snapshot_type == "manual")


def _snapshot_quota(backend: RDSBackend) -> int:
    # moto refuses when len(all snapshots) >= SNAPSHOT_QUOTA: adding the automated ones makes that
    # "manual snapshots >= limit", as RDS counts.
    automated = len(backend.database_snapshots) - manual_snapshot_count(backend)
    return manual_snapshot_limit() + automated


def _describe_account_attributes(self: RDSResponse) -> ActionResult:
    quotas: list[dict[str, Any]] = [{
        "AccountQuotaName": MANUAL_SNAPSHOTS_QUOTA_NAME,
        "Used": manual_snapshot_count(self.backend),
        "Max": manual_snapshot_limit(),
    }]
    return ActionResult({"AccountQuotas": quotas})


def install() -> None:
    """Patch moto in this process (idempotent)."""
    if getattr(RDSResponse, _INSTALLED, False):
        return
    RDSBackend.SNAPSHOT_QUOTA = property(_snapshot_quota)  # type: ignore[method-assign,assignment]
    RDSResponse.describe_account_attributes = _describe_account_attributes  # type: ignore[attr-defined]
    setattr(RDSResponse, _INSTALLED, True)
