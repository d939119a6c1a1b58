"""`jams-dr status` at a glance (issue 18): the recovery point in use and its age against the RPO target, the
last drill's RTO and RPO, `--json` for scripts, and a non-zero exit when the RPO target is exceeded.

Against the snapshot pipeline's embedded world: a real tick takes, copies and pins a recovery point, and the
CLI reads it back through a stage's .chalice/config.json. The tick runs on a fake clock, status on the real
one: a point pinned at the real time is within the target, one pinned at the fixture's fixed date is not.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock, isoformat
from chalicelib.snapshots.tick import run_tick
from chalicelib.table import serialize_item
from chalicelib.workflow.ledger import Ledger
from jamsdr import operate
from jamsdr.cli import main
from jamsdr.cliutil import EXIT_MISMATCH, EXIT_OK
from jamsdr.embedded import World
from tests.functional import test_snapshots as snapshots

base_world = snapshots.base_world
clients = snapshots.clients
world = snapshots.world

STAGE = "glance"


@pytest.fixture
def stage(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A project whose stage is the world's deployed settings; the CLI runs from it."""
    config = {"version": "2.0", "app_name": "jams-dr",
              "stages": {STAGE: {"environment_variables": world.settings.as_env()}}}
    (tmp_path / ".chalice").mkdir()
    (tmp_path / ".chalice" / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(operate, "console", Console(width=500))
    return STAGE


def status(*args: str) -> Result:
    return CliRunner().invoke(main, ["status", "--stage", STAGE, *args], catch_exceptions=False)


def pin_a_point_at(world: World, clients: ClientFactory, moment: datetime) -> str:
    result = run_tick(world.settings, clients, FakeClock(moment))
    assert result.errors == [] and result.pin, result.to_dict()
    return result.pin


def record_a_drill(world: World, clients: ClientFactory, started: datetime, *, verified_after: float,
                   point_age: float) -> None:
    """A finished drill as the chain leaves it in the ledger: its verify step and the snapshot it restored."""
    ledger = Ledger(world.settings, clients, FakeClock(started))
    execution = ledger.create("drill-glance", kind="drill", workflow="drill", state="preflight", status="running",
                              data={"snapshot": {"id": "s", "arn": "a",
                                                 "created_at": isoformat(started - timedelta(seconds=point_age))}})
    item = {**execution.item, "status": "succeeded", "state": "done"}
    item["history"] = [{"name": "verify", "outcome": "succeeded", "attempts": 1, "started_at": isoformat(started),
                        "ended_at": isoformat(started + timedelta(seconds=verified_after))}]
    clients.client("dynamodb", world.settings.recovery_region).put_item(
        TableName=world.settings.ledger_table_name, Item=serialize_item(item))


def test_a_fresh_point_and_the_last_drill_at_a_glance(world: World, clients: ClientFactory, stage: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    pinned = pin_a_point_at(world, clients, now)
    record_a_drill(world, clients, now - timedelta(days=2), verified_after=754.0, point_age=1800.0)

    result = status("--json")

    assert result.exit_code == EXIT_OK, result.output
    facts = json.loads(result.stdout)
    point = facts["recovery_point"]
    assert (point["source"], point["id"], point["over_target"]) == ("snapshot", pinned, False)
    assert 0 <= point["age_seconds"] < world.settings.rpo_target_seconds == point["target_seconds"]
    drill = facts["last_drill"]
    assert (drill["execution_id"], drill["outcome"], drill["rto_seconds"], drill["rpo_seconds"]) == (
        "drill-glance", "succeeded", 754.0, 1800.0)
    assert facts["missed_beats"]["threshold"] == world.settings.missed_beat_threshold
    assert facts["awaiting_approval"] == [] and facts["rpo_exceeded"] is False
    assert (facts["primary_region"], facts["recovery_region"]) == (
        world.settings.primary_region, world.settings.recovery_region)

    table = status()
    assert table.exit_code == EXIT_OK, table.output
    assert "drill-glance succeeded on" in table.stdout and "RTO 12 min 34 s, RPO 30 min 0 s" in table.stdout


def test_a_point_older_than_the_target_exits_1_and_says_so(world: World, clients: ClientFactory, stage: str) -> None:
    pinned = pin_a_point_at(world, clients, snapshots.START)  # months before the real now

    result = status()

    assert result.exit_code == EXIT_MISMATCH == 1, result.output
    assert f"{pinned} (available)" in result.stdout and "OVER TARGET" in result.stdout
    message = " ".join(result.stderr.split())
    assert f"the recovery point in use (snapshot {pinned}) is" in message and "over the RPO target of" in message
    assert "last drill" in result.stdout and "none recorded in the ledger" in result.stdout

    as_json = status("--json")
    assert as_json.exit_code == EXIT_MISMATCH
    facts = json.loads(as_json.stdout)
    assert facts["rpo_exceeded"] is True and facts["recovery_point"]["over_target"] is True
    assert facts["last_drill"] is None
