"""The watch state's store: conditional, versioned reads and writes of the watch item in the ledger table."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib.aws import ClientFactory, error_code
from chalicelib.detection.state import WatchState
from chalicelib.errors import AwsFailure
from chalicelib.keys import watch_key
from chalicelib.observability import logger
from chalicelib.settings import Settings
from chalicelib.table import LedgerTable, serialize_value

if TYPE_CHECKING:
    # The event models need pydantic: imported by the event handlers only, so the one-minute watcher's
    # cold start does not pay for it.
    pass


MAX_WRITE_ATTEMPTS = 30


class WatchConflict(AwsFailure, RuntimeError):
    """The state kept changing under us for every attempt (should not happen; retried next minute)."""


class WatchStore:
    """The watch state and the Health markers in the ledger table."""

    def __init__(self, settings: Settings, clients: ClientFactory) -> None:
        self._table = LedgerTable(settings, clients)

    def load(self, environment: str) -> WatchState | None:
        try:
            item = self._table.get(watch_key(environment))
        except ClientError as exc:
            raise self._table.failure(exc, "reading the watch state") from exc
        return None if item is None else WatchState.from_plain(item)

    def save(self, state: WatchState, expected_version: int | None) -> bool:
        """Write ``state`` if the stored version is still ``expected_version`` (None: no item yet)."""
        if expected_version is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            condition = {
                "ConditionExpression": "#v = :v",
                "ExpressionAttributeNames": {"#v": "version"},
                "ExpressionAttributeValues": {":v": serialize_value(expected_version)},
            }
        try:
            return self._table.put_if(state.to_plain(), condition)
        except ClientError as exc:
            raise self._table.failure(exc, "writing the watch state") from exc

    def put_marker(self, key: str, expires_at: datetime, attributes: Mapping[str, str]) -> bool:
        try:
            return self._table.put_new({"pk": key, "expires_at": int(expires_at.timestamp()), **attributes})
        except ClientError as exc:
            raise self._table.failure(exc, "recording a Health event") from exc

    def delete_marker(self, key: str) -> None:
        try:
            self._table.delete(key)
        except ClientError as exc:
            logger.error("could not release a Health event marker", extra={"key": key, "error": error_code(exc)})


def read_watch_state(settings: Settings, clients: ClientFactory) -> WatchState | None:
    """The watcher's current state (decision, incident, start) for operators; None before the first check."""
    return WatchStore(settings, clients).load(settings.environment)
