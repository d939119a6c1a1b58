"""AWS API calls made by the snapshot pipeline, per tick, against the embedded two-region AWS.

    .venv/bin/python -m benchmarks.snapshot_calls [--sizes 100,1000]

Counts every request the tick's clients send (a ``before-call`` hook on the ClientFactory) for:
the first tick (take, copy, pin), a steady-state tick (nothing due), a tick in a new interval, and a
tick that prunes N old snapshots in each region. The claim checked: apart from the deletes, the calls
grow with pages of 100, not with snapshots (tags come with the listing; no per-snapshot lookups).

moto returns every snapshot in one page whatever MaxRecords says, so DescribeDBSnapshots is served
here the way RDS serves it: pages of MaxRecords (<= 100) chained by Marker, cut from moto's answer.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock, isoformat
from chalicelib.observability import logger, metrics
from chalicelib.settings import Settings
from chalicelib.snapshots.rules import base_tags, source_tags
from chalicelib.snapshots.tick import TickResult, run_tick
from chalicelib.tags import TAG_COPY_COMPLETED, TAG_COPY_STARTED, TAG_SOURCE_ARN, TAG_SOURCE_CREATED, TAG_SOURCE_ID
from jamsdr.embedded import build_world, embedded_aws

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
RDS_MAX_RECORDS = 100


class CallCounter:
    """before-call hook: one count per request, by (service, operation, region)."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self.enabled = False

    def __call__(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        if self.enabled:
            service = model.service_model.service_name
            self.calls[(service, model.name, str(context.get("client_region")))] += 1

    @contextmanager
    def measure(self) -> Iterator[Counter[tuple[str, str, str]]]:
        self.calls = Counter()
        self.enabled = True
        try:
            yield self.calls
        finally:
            self.enabled = False


class _Http:
    status_code = 200
    headers: dict[str, str] = {}


class RdsPaging:
    """Serve DescribeDBSnapshots in RDS's pages (moto ignores MaxRecords and Marker)."""

    def __init__(self, raw: ClientFactory, counter: CallCounter) -> None:
        self._raw = raw
        self._counter = counter

    def __call__(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> Any:
        # botocore calls the most specific hook first and stops at the first answer: count here.
        self._counter(model=model, context=context)
        body = params.get("body", {})
        args = {k: body[k] for k in ("SnapshotType", "DBInstanceIdentifier", "DBSnapshotIdentifier") if k in body}
        everything = self._raw.client("rds", context["client_region"]).describe_db_snapshots(**args)["DBSnapshots"]
        size = min(int(body.get("MaxRecords", RDS_MAX_RECORDS)), RDS_MAX_RECORDS)
        offset = int(body.get("Marker") or 0)
        parsed: dict[str, Any] = {"DBSnapshots": everything[offset:offset + size], "ResponseMetadata": {}}
        if offset + size < len(everything):
            parsed["Marker"] = str(offset + size)
        return _Http(), parsed


@dataclass
class Row:
    scenario: str
    in_scope: int
    calls: Counter[tuple[str, str, str]]
    result: TickResult

    def count(self, operation: str | None = None) -> int:
        return sum(n for (_, op, _), n in self.calls.items() if operation is None or op == operation)


def seed_old_snapshots(raw: ClientFactory, settings: Settings, count: int, tag: str) -> None:
    """``count`` old snapshots of ours: half sources in the primary, half copies in the recovery region."""
    env, primary, recovery = settings.environment, settings.primary_region, settings.recovery_region
    rds_p, rds_r = raw.client("rds", primary), raw.client("rds", recovery)
    assert settings.db_instance_id, "the benchmark's settings name the database"
    template_arn = ""
    for i in range(count // 2):
        created = START - timedelta(days=30, minutes=i)
        sid = f"{env}-dr-{tag}-{i:05d}"
        answer = rds_p.create_db_snapshot(
            DBInstanceIdentifier=settings.db_instance_id, DBSnapshotIdentifier=sid, Tags=source_tags(env, created)
        )["DBSnapshot"]
        template_arn = template_arn or answer["DBSnapshotArn"]
        rds_r.copy_db_snapshot(
            SourceDBSnapshotIdentifier=template_arn,
            TargetDBSnapshotIdentifier=f"{sid}-copy",
            Tags=[
                *base_tags(env, "copy"),
                {"Key": TAG_SOURCE_ID, "Value": sid},
                {"Key": TAG_SOURCE_ARN, "Value": answer["DBSnapshotArn"]},
                {"Key": TAG_SOURCE_CREATED, "Value": isoformat(created) or ""},
                {"Key": TAG_COPY_STARTED, "Value": isoformat(created) or ""},
                {"Key": TAG_COPY_COMPLETED, "Value": isoformat(created) or ""},
            ],
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000",
                        help="old snapshots to prune, half in each region (comma list)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    # moto refuses more than 1000 snapshots per region by default; RDS's quota is a setting too.
    os.environ["MOTO_RDS_SNAPSHOT_LIMIT"] = str(2 * max(sizes, default=0) + 100)
    logger.setLevel("WARNING")  # one info line per pruned snapshot would drown the table

    with embedded_aws(empty=True) as aws:
        clients = aws.clients
        assert clients is not None
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing"
        )
        raw = ClientFactory(session=session, endpoint_url=aws.endpoint)  # uncounted: seeding and paging
        print("building the embedded world (both regions) ...", file=sys.stderr)
        world = build_world(clients, Settings.defaults())
        settings = world.settings
        counter = CallCounter()
        clients.register_hook("before-call", counter)
        clients.register_hook("before-call.rds.DescribeDBSnapshots", RdsPaging(raw, counter))
        clock = FakeClock(START)
        rows: list[Row] = []

        def measured(scenario: str, in_scope: int, tick: Callable[[], TickResult]) -> Row:
            with counter.measure() as calls:
                result = tick()
            metrics.clear_metrics()  # not a Lambda: nothing flushes them
            if result.errors:
                raise SystemExit(f"{scenario}: tick failed: {result.errors}")
            row = Row(scenario, in_scope, Counter(calls), result)
            rows.append(row)
            return row

        def tick() -> TickResult:
            return run_tick(settings, clients, clock)

        measured("first tick: take, copy, pin", 0, tick)
        clock.advance(300)
        measured("steady state: nothing due", 0, tick)
        clock.advance(3600 - 300)
        measured("new interval: take, copy, pin", 0, tick)
        for size in sizes:
            print(f"seeding {size} old snapshots ...", file=sys.stderr)
            seed_old_snapshots(raw, settings, size, f"old{size}")
            clock.advance(300)
            measured(f"prune {size} old snapshots", size, tick)

        print_table(rows)
        for row in rows[:3]:
            print()
            print(f"{row.scenario}, by call:")
            for (service, operation, region), n in sorted(row.calls.items()):
                print(f"  {n:>3}  {service}:{operation} ({region})")
        print()
        check(rows, sizes)
    return 0


def print_table(rows: list[Row]) -> None:
    header = ("scenario", "old", "calls", "describe pages", "deletes", "other", "pruned")
    widths = (30, 5, 6, 14, 8, 6, 7)
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        deletes = row.count("DeleteDBSnapshot")
        pages = row.count("DescribeDBSnapshots")
        values = (row.scenario, row.in_scope, row.count(), pages, deletes, row.count() - deletes - pages,
                  len(row.result.pruned))
        print(" | ".join(str(v).ljust(w) for v, w in zip(values, widths, strict=True)))


def check(rows: list[Row], sizes: list[int]) -> None:
    """Non-delete calls = a constant + one per page of 100 in each region; one delete per pruned snapshot."""
    steady = rows[1]
    base = steady.count() - steady.count("DescribeDBSnapshots")
    for row, size in zip(rows[3:], sizes, strict=True):
        deletes = row.count("DeleteDBSnapshot")
        pages = row.count("DescribeDBSnapshots")
        other = row.count() - deletes - pages
        assert deletes == len(row.result.pruned), (row.scenario, deletes, len(row.result.pruned))
        # each region lists size / 2 old ones plus a handful of kept ones, 100 per page
        assert pages <= 2 * math.ceil((size // 2 + 20) / RDS_MAX_RECORDS), (row.scenario, pages)
        # beyond the steady state: two ledger reads (recovery and drill leases, before deleting copies)
        assert other <= base + 2, (row.scenario, other, base)
        print(f"{row.scenario}: {pages} describe pages, {other} other calls (steady state: {base}), "
              f"{deletes} deletes for {len(row.result.pruned)} pruned")


if __name__ == "__main__":
    raise SystemExit(main())
