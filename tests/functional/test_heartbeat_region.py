"""`jams-dr heartbeat` beats from the host's own region (instance metadata) and into the recovery region.

A scheduler restored in the recovery region must beat there only: a beat it put into the primary region's
copy would pass for the old primary (the watcher ends an incident on the primary's own copy). The tests
never reach the metadata service (tests/conftest.py disables it): its answer is stood in for.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from chalicelib.aws import ClientFactory
from jamsdr import heartbeat
from jamsdr.cli import main
from tests.conftest import PRIMARY, RECOVERY

ENVIRONMENT = "jams-dev"  # the dev stage's ENVIRONMENT_NAME in .chalice/config.json


def beats_in(clients: ClientFactory, region: str) -> int:
    metrics = clients.client("cloudwatch", region).list_metrics(
        Namespace="JAMS", MetricName="Heartbeat", Dimensions=[{"Name": "Environment", "Value": ENVIRONMENT}])
    return len(metrics["Metrics"])


def test_the_metadata_service_is_never_asked_in_tests() -> None:
    assert heartbeat.host_region() is None


def test_a_restored_scheduler_beats_in_its_own_region_only(
    embedded: Any, clients: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heartbeat, "host_region", lambda: RECOVERY)  # the host runs in the recovery region
    result = CliRunner().invoke(main, ["heartbeat", "--stage", "dev", "--scheduler", "primary", "--once"])
    assert result.exit_code == 0, result.output
    assert beats_in(clients, RECOVERY) == 1
    assert beats_in(clients, PRIMARY) == 0


def test_a_primary_host_beats_into_both_regions(
    embedded: Any, clients: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heartbeat, "host_region", lambda: PRIMARY)
    result = CliRunner().invoke(main, ["heartbeat", "--stage", "dev", "--scheduler", "failover", "--once"])
    assert result.exit_code == 0, result.output
    assert beats_in(clients, PRIMARY) == 1 and beats_in(clients, RECOVERY) == 1


def test_off_ec2_the_stage_decides(embedded: Any, clients: ClientFactory) -> None:
    result = CliRunner().invoke(main, ["heartbeat", "--stage", "dev", "--scheduler", "primary", "--once"])
    assert result.exit_code == 0, result.output
    assert beats_in(clients, PRIMARY) == 1 and beats_in(clients, RECOVERY) == 1
