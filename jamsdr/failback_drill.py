"""The failback as a drill (scenario ``failback: true``; docs/failback-drill.md).

After the region recovery, the primary region returns and the real failback chain runs (the starter and
the in-process runner, as `jams-dr failback --local-runner` runs it). The drill then judges three things:

- the failback succeeded (its own report, kind ``failback``, with its RTO);
- the data-loss window: from the failback's snapshot of the recovery database to the switch back, and
  whether any writer could have written in it (``data_loss`` below);
- the recovery region is left as before: its jams-dr resources, read before the failure and again at
  the end, compare equal, except the snapshot pipeline's own snapshots and what the failback keeps on
  purpose (``RETAINED``); every other difference is named.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.aws import ClientFactory
from chalicelib.clock import Clock, isoformat, parse_iso
from chalicelib.report import build_report, report_notifications
from chalicelib.settings import Settings
from chalicelib.snapshots.rules import snap_from_description, tag_map
from chalicelib.tags import TAG_EXECUTION, TAG_KIND
from jamsdr.iam_enforcement import run_as

FAILBACK_REPORT_STEM = "failback-report"
FAILBACK_REASON = "drill: the primary region is back"
# The failback keeps these in the recovery region by design, so they are listed as retained, never as
# differences: its own snapshot of the recovery database (untagged for the pipeline, so nothing prunes
# it: the recovery region's last data) and the final snapshot the recovery stack's deletion leaves
# (DeletionPolicy Snapshot: "the last recovery point"), each tagged with its own execution's id.
RETAINED_SNAPSHOT_KINDS = ("failback", "recovery")
RETAINED = ("the failback's snapshot of the recovery database (jams-dr:kind=failback, its execution id) and "
            "the recovery stack's final snapshot (jams-dr:kind=recovery, the recovery's execution id, "
            "DeletionPolicy Snapshot)")

RegionState = dict[str, str]


# ------------------------------------------------------------------------------------------ region state


def recovery_region_state(settings: Settings, clients: ClientFactory, clock: Clock) -> RegionState:
    """The recovery region's jams-dr resources, one entry per thing that can differ, named for a person.

    Stacks (status, parameters, outputs), database instances, manual snapshots except the pipeline's own
    recovery points, instances that are not terminated, routes, security groups, load balancers, the
    SSM parameters under /jams-dr/, the leases and the active execution.
    """
    from chalicelib.workflow.ledger import Ledger  # noqa: PLC0415

    region = settings.recovery_region
    state: RegionState = {}
    for part in (_stack_state(clients, region), _rds_state(clients, region, settings.environment),
                 _ec2_state(clients, region), _service_state(clients, region)):
        state.update(part)
    ledger = Ledger(settings, clients, clock)
    for kind in ("recovery", "drill"):
        lease = ledger.get_lease(kind)
        holder = None if lease is None else lease.holder
        state[f"{kind} lease"] = f"held by {holder}" if holder else "free"
    active = ", ".join(sorted(e.execution_id for e in ledger.list_active()))
    state["active execution"] = active or "none"
    return state


def _stack_state(clients: ClientFactory, region: str) -> RegionState:
    state: RegionState = {}
    for page in clients.client("cloudformation", region).get_paginator("describe_stacks").paginate():
        for stack in page.get("Stacks", []):
            name = f"stack {stack['StackName']}"
            state[name] = str(stack["StackStatus"])
            for p in stack.get("Parameters", []):
                state[f"{name} parameter {p['ParameterKey']}"] = str(p.get("ParameterValue", ""))
            for o in stack.get("Outputs", []):
                state[f"{name} output {o['OutputKey']}"] = str(o.get("OutputValue", ""))
    return state


def _rds_state(clients: ClientFactory, region: str, environment: str) -> RegionState:
    state: RegionState = {}
    rds = clients.client("rds", region)
    for instances in rds.get_paginator("describe_db_instances").paginate():
        for db in instances.get("DBInstances", []):
            state[f"database {db['DBInstanceIdentifier']}"] = str(db.get("DBInstanceStatus"))
    for snapshots in rds.get_paginator("describe_db_snapshots").paginate(SnapshotType="manual"):
        for snap in snapshots.get("DBSnapshots", []):
            if snap_from_description(snap, region, environment) is not None:
                continue  # the pipeline's recovery points: the pipeline takes and prunes them
            tags = tag_map(_snapshot_tags(rds, snap))
            state[f"snapshot {snap['DBSnapshotIdentifier']}"] = (
                f"{snap.get('Status')} kind={tags.get(TAG_KIND, '-')} execution={tags.get(TAG_EXECUTION, '-')}")
    return state


def _service_state(clients: ClientFactory, region: str) -> RegionState:
    state: RegionState = {}
    for balancers in clients.client("elbv2", region).get_paginator("describe_load_balancers").paginate():
        for lb in balancers.get("LoadBalancers", []):
            state[f"load balancer {lb['LoadBalancerName']}"] = str((lb.get("State") or {}).get("Code", ""))
    paginator = clients.client("ssm", region).get_paginator("get_parameters_by_path")
    for parameters in paginator.paginate(Path="/jams-dr/", Recursive=True):
        for parameter in parameters.get("Parameters", []):
            state[f"parameter {parameter['Name']}"] = str(parameter.get("Value", ""))
    return state


def _snapshot_tags(rds: Any, snapshot: Mapping[str, Any]) -> list[dict[str, str]]:
    if snapshot.get("TagList") is not None:
        return list(snapshot["TagList"])
    return list(rds.list_tags_for_resource(ResourceName=str(snapshot["DBSnapshotArn"])).get("TagList", []))


def _ec2_state(clients: ClientFactory, region: str) -> RegionState:
    ec2 = clients.client("ec2", region)
    state: RegionState = {}
    for instances in ec2.get_paginator("describe_instances").paginate():
        for reservation in instances.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                status = str((instance.get("State") or {}).get("Name", ""))
                if status not in ("terminated", "shutting-down"):
                    state[f"instance {instance['InstanceId']}"] = status
    for tables in ec2.get_paginator("describe_route_tables").paginate():
        for table in tables.get("RouteTables", []):
            for route in table.get("Routes", []):
                if route.get("GatewayId") == "local":
                    continue
                destination = route.get("DestinationCidrBlock") or route.get("DestinationIpv6CidrBlock") or "?"
                target = next((str(v) for k, v in sorted(route.items()) if k.endswith("Id") and v), "?")
                state[f"route {table['RouteTableId']} {destination}"] = target
    for groups in ec2.get_paginator("describe_security_groups").paginate():
        for group in groups.get("SecurityGroups", []):
            state[f"security group {group['GroupId']}"] = str(group.get("GroupName", ""))
    return state


@dataclass(frozen=True)
class RegionComparison:
    as_before: bool
    differences: list[str]
    retained: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"as_before": self.as_before, "differences": self.differences, "retained": self.retained}


def compare_region(before: RegionState, after: RegionState, failback_id: str | None,
                   recovery_id: str | None = None) -> RegionComparison:
    """Every key whose value changed, appeared or went, by name; the RETAINED snapshots of this failback
    and of the recovery it followed apart."""
    differences: list[str] = []
    retained: list[str] = []
    keys = sorted(set(before) | set(after))
    # A stack that appeared or went is one line: its parameters and outputs went or came with it.
    whole = {key for key in keys if key.startswith("stack ") and len(key.split(" ")) == 2
             and (key in before) != (key in after)}
    for key in keys:
        old, new = before.get(key), after.get(key)
        if old == new or (key.startswith("stack ") and " ".join(key.split(" ")[:2]) in whole - {key}):
            continue
        if old is None and new is not None and _retained(key, new, {"failback": failback_id,
                                                                     "recovery": recovery_id}):
            retained.append(f"{key}: {new}")
            continue
        differences.append(f"{key}: {'absent' if old is None else old} before, "
                           f"{'absent' if new is None else new} after")
    return RegionComparison(not differences, differences, retained)


def _retained(key: str, value: str, executions: Mapping[str, str | None]) -> bool:
    if not key.startswith("snapshot "):
        return False
    words = dict(part.split("=", 1) for part in value.split() if "=" in part)
    kind = words.get("kind", "")
    return kind in RETAINED_SNAPSHOT_KINDS and executions.get(kind) not in (None, "") and \
        words.get("execution") == executions.get(kind)


# ------------------------------------------------------------------------------------------ data loss


def data_loss(item: Mapping[str, Any], recovered_at: str | None) -> dict[str, Any]:
    """The failback's data-loss window (docs/failback-drill.md), from its ledger item.

    snapshot_at: when the failback asked RDS for the recovery database's snapshot (the start of
    ``snapshot_recovery_db``): the snapshot holds what was written before. switched_at: traffic back on the
    primary (the end of ``switch_traffic``). Whatever the recovery region's database accepts in between is
    not in the primary's restored database: window_seconds. writes_stopped_at: every recovery scheduler
    seen stopped (the end of ``quiesce_recovery``). at_risk_seconds: the part of the window in which a
    writer ran: 0 when the writers were stopped before the snapshot and none was started again.
    """
    data: Mapping[str, Any] = item.get("data") or {}
    history = [h for h in item.get("history") or [] if isinstance(h, Mapping)]

    def ended(name: str) -> str | None:
        done = [h for h in history if h.get("name") == name and h.get("outcome") == "succeeded"]
        return _iso(done[-1].get("ended_at")) if done else None

    requested = [h for h in history if h.get("name") == "snapshot_recovery_db" and h.get("outcome") == "succeeded"]
    snapshot_at = _iso(requested[-1].get("started_at")) if requested else None
    stopped_at = ended("quiesce_recovery")
    source = data.get("failback_source") if isinstance(data.get("failback_source"), Mapping) else {}
    window = _seconds(snapshot_at, recovered_at)
    stopped_first = (stopped_at is not None and snapshot_at is not None
                     and parse_iso(stopped_at) <= parse_iso(snapshot_at) and not data.get("resumed_instances"))
    return {
        "snapshot_id": data.get("failback_snapshot_id"),
        "snapshot_at": snapshot_at,
        "snapshot_created_at": _iso((source or {}).get("created_at")),
        "writes_stopped_at": stopped_at,
        "switched_at": recovered_at,
        "window_seconds": None if window is None else max(window, 0.0),
        "writers_stopped_in_window": stopped_first,
        "at_risk_seconds": None if window is None else (0.0 if stopped_first else max(window, 0.0)),
    }


def _iso(value: Any) -> str | None:
    return None if value in (None, "") else isoformat(parse_iso(str(value)))


def _seconds(start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    return round((parse_iso(end) - parse_iso(start)).total_seconds(), 3)


# ------------------------------------------------------------------------------------------ the drill part


@dataclass
class FailbackDrill:
    """Baseline before the failure, the failback after the recovery, the report and the check at the end."""

    settings: Settings
    clients: ClientFactory
    clock: Clock
    before: RegionState | None = None
    execution: Any = None
    recovery_id: str | None = None
    started_at: datetime | None = None
    skipped: str | None = None
    report: dict[str, Any] | None = None
    comparison: RegionComparison | None = None

    def capture_before(self) -> str:
        self.before = recovery_region_state(self.settings, self.clients, self.clock)
        return f"{len(self.before)} entries"

    def run(self, bring_primary_up: Callable[[], None], runner: Any,
            phase: Callable[[str, str, Callable[[], Any]], Any]) -> Any:
        """The primary returns, then the failback chain runs to its end (``phase`` is the drill's)."""
        from chalicelib.workflow.starter import StartError, no_launch, start_failback  # noqa: PLC0415

        settings = self.settings
        phase("primary returns", f"{settings.primary_region} answers again", bring_primary_up)
        self.started_at = self.clock.now()
        try:
            started = phase("start failback", FAILBACK_REASON, lambda: run_as("start_failback", lambda: start_failback(
                settings, self.clients, self.clock, reason=FAILBACK_REASON, launcher=no_launch)))
        except StartError as exc:  # refused (the lease, another execution): the report says why
            self.skipped = f"the failback was refused: {exc}"
            return None
        self.execution = phase("failback chain", str(started.execution_id),
                               lambda: run_as("advance_execution", lambda: runner.run(started.execution_id)))
        return self.execution

    def finish(self, recovery_report: dict[str, Any], received: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Split the notifications, build the failback report, compare the region; the summary for
        report.json's ``failback`` section (None when no failback ran)."""
        if self.execution is None:
            recovery_report["failback"] = {"report": None, "outcome": "not-started",
                                           "reason": self.skipped or "the recovery did not succeed"}
            return None
        split = self.started_at
        before = [n for n in received if split is None or not n.get("at") or parse_iso(str(n["at"])) < split]
        recovery_report["notifications"] = report_notifications(before)
        item = self.execution.item
        report = build_report(item, [n for n in received if n not in before])
        after = recovery_region_state(self.settings, self.clients, self.clock)
        self.comparison = compare_region(self.before or {}, after, self.execution.execution_id, self.recovery_id)
        report["started_at"] = isoformat(self.started_at)
        report["duration_seconds"] = _seconds(report["started_at"], report["recovered_at"])
        report["failed_step"] = getattr(self.execution, "failed_state", None) if report["outcome"] == "failed" else None
        report["error"] = getattr(self.execution, "error", None) if report["outcome"] == "failed" else None
        report["data_loss"] = data_loss(item, report["recovered_at"])
        report["recovery_region_check"] = {"region": self.settings.recovery_region,
                                           **self.comparison.as_dict(), "retained_by_design": RETAINED}
        self.report = report
        recovery_report["failback"] = summary(report)
        return report


def summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """report.json's ``failback`` section: where the failback's report is and what it found."""
    check = report.get("recovery_region_check") or {}
    loss = report.get("data_loss") or {}
    return {
        "report": f"{FAILBACK_REPORT_STEM}.json",
        "execution_id": report.get("execution_id"),
        "outcome": report.get("outcome"),
        "failed_step": report.get("failed_step"),
        "rto_seconds": report.get("rto_seconds"),
        "duration_seconds": report.get("duration_seconds"),
        "data_loss_window_seconds": loss.get("window_seconds"),
        "data_at_risk_seconds": loss.get("at_risk_seconds"),
        "recovery_region_as_before": bool(check.get("as_before")),
        "differences": list(check.get("differences") or []),
    }
