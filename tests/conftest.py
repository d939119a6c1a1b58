"""Shared fixtures: fake credentials everywhere, one embedded moto server per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib import settings as settings_module
from chalicelib.aws import ClientFactory, set_factory

# No test may reach a real account: dummy credentials before anything imports boto3 clients.
for _key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ[_key] = "testing"
os.environ.pop("AWS_PROFILE", None)
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
# No test may reach the EC2 instance metadata service either (botocore and `jams-dr heartbeat` honour this).
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "JamsDR")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "jams-dr")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

PRIMARY = "us-east-1"
RECOVERY = "us-west-2"


@pytest.fixture(autouse=True, scope="session")
def _public_parameters() -> None:
    """AWS's public Windows AMI parameters, and change sets that behave as CloudFormation's, in every moto
    of the session (server or mock_aws): bootstrap deploys through change sets."""
    from jamsdr import changeset_fidelity, public_parameters

    public_parameters.install()
    changeset_fidelity.install()


@pytest.fixture(autouse=True)
def _fresh_settings_and_factory() -> Iterator[None]:
    settings_module.reset_settings()
    yield
    settings_module.reset_settings()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[object]:
    from jamsdr.embedded import EmbeddedAws

    server = EmbeddedAws()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def embedded(moto_server: object) -> Iterator[object]:
    """The session's moto server, emptied, with both regions up and its factory installed."""
    from jamsdr.embedded import EmbeddedAws

    assert isinstance(moto_server, EmbeddedAws)
    moto_server.reset()
    for region in (PRIMARY, RECOVERY):
        moto_server.bring_region_up(region)
    set_factory(moto_server.clients)
    yield moto_server
    set_factory(moto_server.clients)


@pytest.fixture
def clients(embedded: object) -> ClientFactory:
    from jamsdr.embedded import EmbeddedAws

    assert isinstance(embedded, EmbeddedAws) and embedded.clients is not None
    return embedded.clients


# The fault-injection summary (tests/faults): hooks here, in the conftest pytest loads first, because
# under pytest-xdist the controller that prints the summary never imports tests/faults/conftest.py.
_fault_cases: list[dict[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    import json

    from tests.faults.harness import CASES_PROPERTY

    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name == CASES_PROPERTY:
            _fault_cases.extend(json.loads(str(value)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.faults.harness import Outcome, summary_line

    if not _fault_cases:
        return
    terminalreporter.write_sep("=", "fault injection summary")
    terminalreporter.write_line(summary_line(_fault_cases))
    for case in _fault_cases:
        if case["outcome"] not in (Outcome.COMPLETED.value, Outcome.RESUMED.value):
            terminalreporter.write_line(f"  {case['outcome']}: {case['kind']} {case['mode']} {case['site']}: "
                                        f"{case['detail']}")
