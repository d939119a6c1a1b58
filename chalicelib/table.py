"""The ledger table (DynamoDB, recovery region): the one gateway its users share.

The execution ledger (workflow/ledger.py), the watch state and Health markers (watcher.py), the
snapshot pipeline's notices (snapshot_aws.py) and the notification outbox (outbox.py) all live in this
one table, keyed by ``pk`` (chalicelib/keys.py names the keys). What they share is here: the item
format (``serialize_item``/``deserialize_item``, plain Python in and out), the update-expression
builder, the consistent read, the conditional writes (a failed condition is an answer, not an error),
and the error that says what to do when the table is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from chalicelib.aws import ClientFactory, error_code
from chalicelib.clock import parse_iso
from chalicelib.dynamo_values import from_dynamo, to_dynamo
from chalicelib.errors import AwsError
from chalicelib.settings import Settings

CONDITION_FAILED = "ConditionalCheckFailedException"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class LedgerTable:
    """One environment's view of the ledger table (low-level client: conditional writes need it)."""

    def __init__(self, settings: Settings, clients: ClientFactory) -> None:
        self.name = settings.ledger_table_name
        self.region = settings.recovery_region
        self._clients = clients

    @property
    def client(self) -> Any:
        return self._clients.client("dynamodb", self.region)

    def get(self, key: str) -> dict[str, Any] | None:
        """The item (plain Python), read consistently; None when there is none."""
        raw = self.client.get_item(TableName=self.name, Key=pk(key), ConsistentRead=True).get("Item")
        return None if raw is None else deserialize_item(raw)

    def put_new(self, item: Mapping[str, Any]) -> bool:
        """Write ``item`` (plain Python, with its ``pk``) only if no item has its key; False if one has."""
        return self.put_if(item, {"ConditionExpression": "attribute_not_exists(pk)"})

    def put_if(self, item: Mapping[str, Any], condition: Mapping[str, Any]) -> bool:
        """Write ``item`` under ``condition`` (ConditionExpression and its placeholders); False when the
        condition failed."""
        try:
            self.client.put_item(TableName=self.name, Item=serialize_item(item), **condition)
        except ClientError as exc:
            if error_code(exc) == CONDITION_FAILED:
                return False
            raise
        return True

    def update(self, key: str, update: Update, condition: str) -> dict[str, Any]:
        """Apply ``update`` if ``condition`` holds; the item after it. On a failed condition DynamoDB
        raises, with the item as it was (see ``item_at_failure``)."""
        response = self.client.update_item(
            TableName=self.name,
            Key=pk(key),
            ReturnValues="ALL_NEW",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
            **update.request(condition),
        )
        return deserialize_item(response["Attributes"])

    def item_at_failure(self, exc: ClientError, key: str) -> dict[str, Any] | None:
        """The item as it was when a condition failed (returned by DynamoDB, else read again)."""
        raw = exc.response.get("Item")
        if isinstance(raw, Mapping) and raw:
            return deserialize_item(raw)
        return self.get(key)

    def delete(self, key: str) -> None:
        self.client.delete_item(TableName=self.name, Key=pk(key))

    def failure(self, exc: ClientError, doing: str) -> AwsError:
        """The error to raise for an AWS failure while ``doing``, with the fix when the table is missing."""
        code = error_code(exc)
        if code == "ResourceNotFoundException":
            return AwsError(
                f"ledger table {self.name} does not exist in {self.region} ({doing}); deploy the dr-support "
                "stack (`jams-dr bootstrap`) and set LEDGER_TABLE to its LedgerTableName output", code)
        return AwsError(f"{doing} in ledger table {self.name} failed: {code}: {exc}", code)


class Update:
    """Builds an UpdateExpression with placeholders for every name and value."""

    def __init__(self) -> None:
        self._sets: list[str] = []
        self._removes: list[str] = []
        self._names: dict[str, str] = {}
        self._values: dict[str, Any] = {}

    def name(self, attr: str) -> str:
        for placeholder, existing in self._names.items():
            if existing == attr:
                return placeholder
        placeholder = f"#n{len(self._names)}"
        self._names[placeholder] = attr
        return placeholder

    def value(self, value: Any) -> str:
        placeholder = f":v{len(self._values)}"
        self._values[placeholder] = _serializer.serialize(to_dynamo(value))
        return placeholder

    def set(self, attr: str, value: Any) -> None:
        self._sets.append(f"{self.name(attr)} = {self.value(value)}")

    def set_expr(self, expression: str) -> None:
        self._sets.append(expression)

    def remove(self, attr: str) -> None:
        self._removes.append(self.name(attr))

    def request(self, condition: str) -> dict[str, Any]:
        parts = []
        if self._sets:
            parts.append("SET " + ", ".join(self._sets))
        if self._removes:
            parts.append("REMOVE " + ", ".join(self._removes))
        request: dict[str, Any] = {
            "UpdateExpression": " ".join(parts),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": dict(self._names),
        }
        if self._values:
            request["ExpressionAttributeValues"] = dict(self._values)
        return request


def pk(key: str) -> dict[str, Any]:
    return {"pk": {"S": key}}


def serialize_value(value: Any) -> dict[str, Any]:
    return dict(_serializer.serialize(to_dynamo(value)))


def placeholder_values(**values: Any) -> dict[str, Any]:
    """ExpressionAttributeValues: ``:name`` -> the typed value."""
    return {f":{name}": serialize_value(value) for name, value in values.items()}


def serialize_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python -> DynamoDB's typed form (None attributes are left out)."""
    return {k: _serializer.serialize(to_dynamo(v, k)) for k, v in item.items() if v is not None}


def deserialize_item(raw: Mapping[str, Any]) -> dict[str, Any]:
    """DynamoDB's typed form -> plain Python (numbers as int or float)."""
    return {k: from_dynamo(_deserializer.deserialize(v)) for k, v in raw.items()}


def opt_time(value: Any) -> datetime | None:
    return parse_iso(str(value)) if value else None


def opt_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
