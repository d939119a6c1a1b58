"""The embedded AWS keeps DynamoDB's one guarantee jams-dr's exactly-once transitions rest on: a
conditional write is atomic, so of many concurrent writers conditioned on the same state exactly one wins."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib.aws import ClientFactory, error_code
from tests.conftest import RECOVERY

WRITERS = 16
ROUNDS = 5


@pytest.fixture
def eager_thread_switches() -> Iterator[None]:
    # The server runs in this process: switching threads every microsecond makes a check-then-write race in
    # the emulator show up in practically every run instead of once in a while under load.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


@pytest.mark.usefixtures("eager_thread_switches")
def test_concurrent_conditional_puts_have_exactly_one_winner(clients: ClientFactory) -> None:
    ddb = clients.client("dynamodb", RECOVERY)
    ddb.create_table(TableName="atomicity", BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    for round_ in range(ROUNDS):
        outcomes = contest(ddb, f"state-{round_}")
        assert sorted(outcomes) == ["ConditionalCheckFailedException"] * (WRITERS - 1) + ["won"], round_
        stored = ddb.get_item(TableName="atomicity", Key={"pk": {"S": f"state-{round_}"}})["Item"]
        assert stored["version"] == {"N": "1"}


def contest(ddb: Any, key: str) -> list[str]:
    """WRITERS threads put version 1 over version 0 at once, each conditioned on version 0."""
    ddb.put_item(TableName="atomicity", Item={"pk": {"S": key}, "version": {"N": "0"}})
    barrier = threading.Barrier(WRITERS)
    outcomes: list[str] = []
    lock = threading.Lock()

    def write(writer: int) -> None:
        barrier.wait()
        try:
            ddb.put_item(TableName="atomicity", Item={"pk": {"S": key}, "version": {"N": "1"},
                                                      "writer": {"N": str(writer)}},
                         ConditionExpression="#v = :v", ExpressionAttributeNames={"#v": "version"},
                         ExpressionAttributeValues={":v": {"N": "0"}})
            outcome = "won"
        except ClientError as exc:
            outcome = error_code(exc)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes
