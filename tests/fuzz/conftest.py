"""Fuzz fixtures: one emptied embedded AWS per module (examples share it), the stage dev test client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

from chalicelib.aws import ClientFactory, set_factory
from tests.conftest import PRIMARY, RECOVERY

PROJECT = Path(__file__).resolve().parents[2]
DEV_ENVIRONMENT = "jams-dev"  # ENVIRONMENT_NAME of stage dev in .chalice/config.json
DEV_LEDGER = f"{DEV_ENVIRONMENT}-dr-ledger"  # its default LEDGER_TABLE


@pytest.fixture(scope="module")
def fuzz_clients(moto_server: Any) -> Iterator[ClientFactory]:
    """The session's moto server emptied once for this module, both regions up, its factory installed.

    Module scope on purpose: hypothesis runs many examples per test and rebuilding AWS for each would
    cost seconds; examples assert on the calls they make (the recorder), not on a fresh inventory.
    """
    moto_server.reset()
    for region in (PRIMARY, RECOVERY):
        moto_server.bring_region_up(region)
    clients: ClientFactory = moto_server.clients
    set_factory(clients)
    yield clients
    set_factory(clients)


@pytest.fixture(scope="module")
def dev_ledger(fuzz_clients: ClientFactory) -> str:
    """Stage dev's ledger table, so anything wrongly accepted would get far enough to show up."""
    fuzz_clients.client("dynamodb", RECOVERY).create_table(
        TableName=DEV_LEDGER,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return DEV_LEDGER


@pytest.fixture(scope="module")
def dev_client(fuzz_clients: ClientFactory) -> Iterator[Client]:
    with Client(_app(), stage_name="dev", project_dir=str(PROJECT)) as made:
        yield made


def _app() -> Any:
    from app import app  # only the modules that drive handlers pay for importing the app

    return app
