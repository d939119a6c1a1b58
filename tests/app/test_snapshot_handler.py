"""The scheduled snapshot handler through chalice.test.Client, against the embedded two-region AWS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

from chalicelib.aws import ClientFactory, set_factory
from chalicelib.observability import metrics
from chalicelib.settings import Settings
from chalicelib.stacks import describe_stack, parameters_of
from jamsdr.embedded import EmbeddedAws, World, build_world
from tests.conftest import PRIMARY, RECOVERY


@pytest.fixture(scope="module")
def world(moto_server: EmbeddedAws) -> World:
    factory = moto_server.clients
    assert factory is not None
    moto_server.reset()
    for region in (PRIMARY, RECOVERY):
        moto_server.bring_region_up(region)
    set_factory(factory)
    return build_world(factory, Settings.defaults(environment="jams-handler"))


@pytest.fixture
def chalice_client(world: World, moto_server: EmbeddedAws, tmp_path: Path) -> Iterator[Client]:
    """A Chalice test client whose stage carries the world's settings (as a deployed stage would)."""
    from app import app

    assert moto_server.clients is not None
    set_factory(moto_server.clients)
    config = {
        "version": "2.0",
        "app_name": "jams-dr",
        "stages": {"test": {"environment_variables": world.settings.as_env()}},
    }
    (tmp_path / ".chalice").mkdir()
    (tmp_path / ".chalice" / "config.json").write_text(json.dumps(config))
    metrics.clear_metrics()
    with Client(app, stage_name="test", project_dir=str(tmp_path)) as client:
        yield client
    metrics.clear_metrics()


def scheduled_event(client: Client) -> Any:
    return client.events.generate_cw_event(
        source="aws.events",
        detail_type="Scheduled Event",
        detail={},
        resources=[f"arn:aws:events:{RECOVERY}:123456789012:rule/jams-dr-test-snapshot_tick"],
        region=RECOVERY,
    )


def emf_blobs(text: str) -> list[dict[str, Any]]:
    blobs = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blobs.append(json.loads(line))
    return blobs


def test_scheduled_tick_takes_copies_and_pins(
    chalice_client: Client, world: World, moto_server: EmbeddedAws, capsys: pytest.CaptureFixture[str]
) -> None:
    factory: ClientFactory = moto_server.clients  # type: ignore[assignment]
    response = chalice_client.lambda_.invoke("snapshot_tick", scheduled_event(chalice_client))
    summary = response.payload
    assert summary["ok"] is True, summary["errors"]
    assert len(summary["taken"]) == 1 and summary["taken"][0].startswith("jams-handler-dr-")
    assert summary["copied"] == [f"{summary['taken'][0]}-copy"]
    assert summary["pinned"] == summary["copied"][0]
    stack = describe_stack(factory.client("cloudformation", RECOVERY), world.settings.standby_stack_name)
    assert stack is not None and parameters_of(stack)["DBSnapshotIdentifier"] == summary["pinned"]

    # the middleware flushed the metrics: the RPO is published with the {Environment} dimension set
    blobs = emf_blobs(capsys.readouterr().out)
    rpo = [b for b in blobs if "RecoveryPointAgeSeconds" in b]
    assert rpo, "RecoveryPointAgeSeconds was not flushed"
    # exactly the alarm's dimension set, {Environment} alone (a CloudWatch alarm matches no superset)
    alone = [b for b in rpo if b["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Environment"]]]
    assert alone, rpo
    assert alone[-1]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "JamsDR"
    assert alone[-1]["Environment"] == "jams-handler" and "service" not in alone[-1]

    # delivered twice (at-least-once): the second run changes nothing
    again = chalice_client.lambda_.invoke("snapshot_tick", scheduled_event(chalice_client)).payload
    assert again["ok"] is True
    assert (again["taken"], again["copied"], again["pinned"], again["pruned"]) == ([], [], None, [])
    assert again["pin"] == summary["pinned"]


def test_unreachable_primary_does_not_fail_the_invocation(
    chalice_client: Client, moto_server: EmbeddedAws
) -> None:
    moto_server.take_region_down(PRIMARY)
    try:
        summary = chalice_client.lambda_.invoke("snapshot_tick", scheduled_event(chalice_client)).payload
    finally:
        moto_server.bring_region_up(PRIMARY)
    assert summary["primary_reachable"] is False
    assert summary["taken"] == [] and summary["copied"] == []
    assert any("unreachable" in reason for reason in summary["waiting"])
