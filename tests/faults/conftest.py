"""Fixtures of the fault-injection suite and its summary line.

The world is built once per worker for the package (building it takes seconds) and every test starts
by putting it back to a baseline. Each test records its cases in ``user_properties`` (they travel from
pytest-xdist workers to the controller), and the terminal summary prints the totals.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest

from chalicelib.aws import ClientFactory, set_factory
from chalicelib.observability import logger, metrics
from chalicelib.settings import Settings
from jamsdr.embedded import EmbeddedAws, World, build_world
from tests.conftest import PRIMARY, RECOVERY
from tests.faults.harness import CASES_PROPERTY, Injector, Tally, fast_retries


@pytest.fixture(scope="package")
def fault_world(moto_server: EmbeddedAws) -> Iterator[World]:
    """One world per worker for the whole package; tests restore it (tests.faults.world.restore)."""
    moto_server.reset()
    for region in (PRIMARY, RECOVERY):
        moto_server.bring_region_up(region)
    assert moto_server.clients is not None
    set_factory(moto_server.clients)
    yield build_world(moto_server.clients, Settings.defaults())
    moto_server.reset()


@pytest.fixture(scope="package", autouse=True)
def _instant_botocore_retries() -> Iterator[list[float]]:
    with fast_retries() as slept:
        yield slept


@pytest.fixture(scope="package", autouse=True)
def _quiet_logs() -> Iterator[None]:
    """Thousands of injected faults log thousands of warnings (tracebacks too): formatting and capturing
    them doubled the suite's time. Errors are still logged; the summary names every case."""
    level = logger.log_level
    logger.setLevel("ERROR")
    yield
    logger.setLevel(level)


@pytest.fixture(autouse=True)
def _no_metric_buildup() -> Iterator[None]:
    # Ticks add metrics to the process-wide powertools buffer; nothing flushes it outside Lambda.
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


@pytest.fixture
def plain(fault_world: World, moto_server: EmbeddedAws) -> ClientFactory:
    """The embedded server's own factory (no injection): for setting up and inspecting the world."""
    assert moto_server.clients is not None
    for region in (PRIMARY, RECOVERY):
        moto_server.bring_region_up(region)
    set_factory(moto_server.clients)
    return moto_server.clients


@pytest.fixture(scope="package")
def _session() -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing"
    )


@pytest.fixture
def injector(fault_world: World, moto_server: EmbeddedAws, _session: boto3.session.Session) -> Injector:
    s = fault_world.settings
    return Injector(moto_server.endpoint, {s.primary_region: "primary", s.recovery_region: "recovery"}, _session)


def record(request: pytest.FixtureRequest, tally: Tally) -> None:
    """Hand the test's cases to the summary (call before asserting, so failed tests count too)."""
    request.node.user_properties.append((CASES_PROPERTY, json.dumps(tally.records())))
