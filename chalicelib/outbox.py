"""The notification outbox: a notification that matters is stored in the ledger before it is sent.

SNS can refuse a message (throttled, a regional hiccup, a policy being fixed). A notification that was
only logged then is lost for good: an approval request nobody receives leaves a recovery waiting forever.
So every such notification is written to the ledger table first and re-sent by the watcher (every
minute) and the sweeper (every 5 minutes) until SNS accepts it.

Items (ledger table ``settings.ledger_table_name`` in the recovery region, hash key ``pk``):

- ``outbox#<env>#<key>``: one message. key, kind, subject, body, context (plain strings),
  execution_id/incident_id when known, created_at (+ ``order``, a tie-breaker), status ``pending`` | ``sent``, attempts,
  last_error, last_attempt_at, claim_until/claim_owner while a sender holds it, sent_at, message_id,
  expires_at (DynamoDB TTL, ``SENT_RETENTION_DAYS`` after it was sent; a pending message never expires).
- ``outbox#<env>``: the index, a String Set ``pending`` of the keys not sent yet, so a flush reads one
  item instead of scanning the table.

Exactly-once where DynamoDB can decide it, at-least-once where it cannot:

- enqueue is one transaction (the message put with ``attribute_not_exists(pk)`` + ADD to the index):
  a key is enqueued once, and a message is never stored without being in the index (nor the reverse);
- send = claim (conditional update: pending and no live claim), publish, mark sent, then DELETE from
  the index. Two senders never publish the same message while a claim is live. A sender that dies
  between publish and mark-sent leaves a claim that expires after ``CLAIM_SECONDS``; the message is then
  sent again: at-least-once. Subscribers may use the ``key`` message attribute to drop the rare duplicate.
- a key left in the index after its message was marked sent (a crash in between) is removed by the
  next flush.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.aws import ClientFactory, error_code, is_throttled, region_unanswered
from chalicelib.clock import Clock, SystemClock, isoformat, parse_iso
from chalicelib.errors import AwsFailure
from chalicelib.keys import OUTBOX_PREFIX
from chalicelib.observability import logger
from chalicelib.settings import Settings
from chalicelib.table import (
    CONDITION_FAILED,
    LedgerTable,
    deserialize_item,
    opt_str,
    opt_time,
    pk,
    placeholder_values,
    serialize_item,
)

if TYPE_CHECKING:
    from chalicelib.notify import NotificationKind

# Longer than the slowest publish botocore can make (4 attempts of a 30 s read timeout, with backoff):
# a live claim must never expire under a sender that is still publishing.
CLAIM_SECONDS = 300.0
SENT_RETENTION_DAYS = 14
DEFAULT_FLUSH_LIMIT = 25
# The index item is hot (every enqueue and every send touches it): a transaction can meet another
# write of it and be cancelled (TransactionConflict); it is simply tried again.
ENQUEUE_ATTEMPTS = 5
ENQUEUE_BACKOFF_SECONDS = 0.05

Status = Literal["pending", "sent"]
SendOutcome = Literal["sent", "already-sent", "busy", "failed", "missing"]

_QUEUED = itertools.count()


def message_key(environment: str, key: str) -> str:
    return f"{OUTBOX_PREFIX}{environment}#{key}"


def index_key(environment: str) -> str:
    return f"{OUTBOX_PREFIX}{environment}"


class OutboxError(AwsFailure, RuntimeError):
    """The outbox could not be written or read; the message says what and the fix."""


# ---------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class OutboxMessage:
    key: str
    kind: NotificationKind
    subject: str
    body: str
    status: Status
    created_at: datetime
    attempts: int = 0
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    message_id: str | None = None
    claim_until: datetime | None = None
    execution_id: str | None = None
    incident_id: str | None = None
    context: Mapping[str, str] = field(default_factory=dict)
    order: int = 0

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> OutboxMessage:
        status = str(item.get("status", "pending"))
        return cls(
            key=str(item["key"]),
            kind=cast("NotificationKind", str(item.get("kind", "notice"))),
            subject=str(item.get("subject", "")),
            body=str(item.get("body", "")),
            status="sent" if status == "sent" else "pending",
            created_at=parse_iso(str(item["created_at"])),
            attempts=int(item.get("attempts", 0)),
            last_error=opt_str(item.get("last_error")),
            last_attempt_at=opt_time(item.get("last_attempt_at")),
            sent_at=opt_time(item.get("sent_at")),
            message_id=opt_str(item.get("message_id")),
            claim_until=opt_time(item.get("claim_until")),
            execution_id=opt_str(item.get("execution_id")),
            incident_id=opt_str(item.get("incident_id")),
            context={str(k): str(v) for k, v in (item.get("context") or {}).items()},
            order=int(item.get("order", 0)),
        )

    def summary(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "subject": self.subject, "attempts": self.attempts,
                "created_at": isoformat(self.created_at), "last_error": self.last_error}


@dataclass(frozen=True)
class Enqueued:
    message: OutboxMessage
    created: bool  # False: the key was enqueued before (the stored message is returned, unchanged)


@dataclass(frozen=True)
class SendResult:
    outcome: SendOutcome
    message: OutboxMessage | None  # as stored after the attempt (None: missing)
    error: str | None = None
    region_trouble: bool = False  # SNS did not answer or throttled: the next message would fare the same


@dataclass(frozen=True)
class FlushResult:
    """``sent``: keys SNS accepted in this flush; ``pending``: still pending afterwards (oldest first, with
    their last errors); ``busy``: held by another sender right now; ``error``: the outbox itself failed."""

    sent: list[str] = field(default_factory=list)
    pending: list[OutboxMessage] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"sent": list(self.sent), "pending": [m.summary() for m in self.pending],
                "busy": list(self.busy), "error": self.error}


# ---------------------------------------------------------------------------------------- outbox


class Outbox:
    """The ledger's outbox of one environment (low-level DynamoDB client, conditional writes)."""

    def __init__(
        self, settings: Settings, clients: ClientFactory, clock: Clock, *, claim_seconds: float = CLAIM_SECONDS
    ) -> None:
        self.table = settings.ledger_table_name
        self.environment = settings.environment
        self.topic_arn = settings.topic_arn
        self._region = settings.recovery_region
        self._clients = clients
        self._clock = clock
        self._claim_seconds = claim_seconds
        self._table = LedgerTable(settings, clients)

    @property
    def _ddb(self) -> Any:
        return self._table.client

    # -- enqueue ----------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        kind: NotificationKind,
        key: str,
        subject: str,
        body: str,
        context: Mapping[str, Any] | None = None,
    ) -> Enqueued:
        """Store the message once per key (pending, in the index); an existing key is returned as stored."""
        now = isoformat(self._clock.now())
        plain = {str(k): str(v) for k, v in (context or {}).items() if v is not None}
        item: dict[str, Any] = {
            "pk": message_key(self.environment, key), "environment": self.environment, "key": key,
            "kind": kind, "subject": subject, "body": body, "status": "pending", "created_at": now,
            "attempts": 0, "context": plain,
            # Messages queued within one tick of the injected clock (a fake one stands still) keep the
            # order this process queued them in. Never used as a time.
            "order": next(_QUEUED),
        }
        for name in ("execution_id", "incident_id"):
            if plain.get(name):
                item[name] = plain[name]
        last_code = ""
        for attempt in range(1, ENQUEUE_ATTEMPTS + 1):
            try:
                self._ddb.transact_write_items(TransactItems=[
                    {"Put": {"TableName": self.table, "Item": serialize_item(item),
                             "ConditionExpression": "attribute_not_exists(pk)"}},
                    {"Update": {
                        "TableName": self.table, "Key": pk(index_key(self.environment)),
                        "UpdateExpression": "ADD #pending :keys SET #env = :env, #updated = :now",
                        "ExpressionAttributeNames": {"#pending": "pending", "#env": "environment",
                                                     "#updated": "updated_at"},
                        "ExpressionAttributeValues": {":keys": {"SS": [key]}, ":env": {"S": self.environment},
                                                      ":now": {"S": str(now)}},
                    }},
                ])
            except ClientError as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise self._failed(exc, "queueing a notification") from exc
                reasons = [str(r.get("Code", "")) for r in exc.response.get("CancellationReasons", [])]
                if reasons and reasons[0] == "ConditionalCheckFailed":
                    existing = self.get(key)
                    if existing is not None:
                        return Enqueued(existing, created=False)
                last_code = ",".join(r or "None" for r in reasons) or "unknown"
                logger.info("outbox enqueue conflicted; trying again",
                            extra={"key": key, "attempt": attempt, "reasons": last_code})
                self._clock.sleep(ENQUEUE_BACKOFF_SECONDS * attempt)
                continue
            logger.info("notification queued", extra={"key": key, "kind": kind})
            return Enqueued(OutboxMessage.from_item(item), created=True)
        raise OutboxError(f"queueing notification {key!r} in ledger table {self.table} was cancelled "
                          f"{ENQUEUE_ATTEMPTS} times ({last_code}); it is retried by the caller's next run")

    # -- send -------------------------------------------------------------------------------

    def send(self, key: str) -> SendResult:
        """Claim, publish, mark sent. Never raises for SNS: a refusal is recorded on the message."""
        if not self.topic_arn:
            raise OutboxError("no TOPIC_ARN configured: notifications are only logged, nothing to send")
        now = self._clock.now()
        token = uuid.uuid4().hex
        try:
            raw = self._ddb.update_item(
                TableName=self.table, Key=pk(message_key(self.environment, key)),
                UpdateExpression=("SET #claim = :until, #owner = :token, #last_attempt = :now, "
                                  "#attempts = if_not_exists(#attempts, :zero) + :one"),
                ConditionExpression=("attribute_exists(pk) AND #status = :pending AND "
                                     "(attribute_not_exists(#claim) OR #claim <= :now)"),
                ExpressionAttributeNames={"#claim": "claim_until", "#owner": "claim_owner", "#status": "status",
                                          "#attempts": "attempts", "#last_attempt": "last_attempt_at"},
                ExpressionAttributeValues=placeholder_values(
                    until=isoformat(now + timedelta(seconds=self._claim_seconds)), token=token,
                    now=isoformat(now), zero=0, one=1, pending="pending"),
                ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise self._failed(exc, f"claiming notification {key!r}") from exc
            current = self._from_failure(exc, key)
            if current is None:
                return SendResult("missing", None)
            if current.status == "sent":
                return SendResult("already-sent", current)
            return SendResult("busy", current)
        message = OutboxMessage.from_item(deserialize_item(raw["Attributes"]))
        try:
            answer = self._clients.client("sns", self._region).publish(
                TopicArn=self.topic_arn, Subject=message.subject, Message=message.body,
                MessageAttributes={
                    "kind": {"DataType": "String", "StringValue": message.kind},
                    "key": {"DataType": "String", "StringValue": message.key},
                    "environment": {"DataType": "String", "StringValue": self.environment},
                },
            )
        except Exception as exc:  # every SNS failure leaves the message pending for the next flush
            error = f"{error_code(exc)}: {exc}"
            logger.error("notification not accepted by SNS; stays queued",
                         extra={"key": key, "kind": message.kind, "error": error_code(exc),
                                "attempts": message.attempts})
            return SendResult("failed", self._release(message, token, error), error,
                              region_trouble=region_unanswered(exc) or is_throttled(exc))
        sent = self._mark_sent(message, str(answer.get("MessageId") or ""))
        if sent.status == "sent":  # else it stays indexed, so a later flush finds it (and sends it again)
            self._unindex([key])
        logger.info("notification sent", extra={"key": key, "kind": message.kind, "attempts": message.attempts})
        return SendResult("sent", sent)

    def _release(self, message: OutboxMessage, token: str, error: str) -> OutboxMessage:
        """Give the claim back at once (the next flush retries without waiting for it to expire)."""
        try:
            raw = self._ddb.update_item(
                TableName=self.table, Key=pk(message_key(self.environment, message.key)),
                UpdateExpression="SET #error = :error REMOVE #claim, #owner",
                ConditionExpression="#owner = :token",
                ExpressionAttributeNames={"#error": "last_error", "#claim": "claim_until", "#owner": "claim_owner"},
                ExpressionAttributeValues=placeholder_values(error=error[:1000], token=token),
                ReturnValues="ALL_NEW",
            )
        except Exception as exc:  # the claim then simply expires; the message is still pending
            logger.warning("outbox claim not released", extra={"key": message.key, "error": error_code(exc)})
            return message
        return OutboxMessage.from_item(deserialize_item(raw["Attributes"]))

    def _mark_sent(self, message: OutboxMessage, message_id: str) -> OutboxMessage:
        now = self._clock.now()
        expires = int((now + timedelta(days=SENT_RETENTION_DAYS)).timestamp())
        try:
            # No claim condition: SNS took the message, so it is sent even if our claim ran out meanwhile.
            raw = self._ddb.update_item(
                TableName=self.table, Key=pk(message_key(self.environment, message.key)),
                UpdateExpression=("SET #status = :sent, #sent_at = :now, #mid = :mid, #expires = :expires "
                                  "REMOVE #claim, #owner"),
                ExpressionAttributeNames={"#status": "status", "#sent_at": "sent_at", "#mid": "message_id",
                                          "#expires": "expires_at", "#claim": "claim_until", "#owner": "claim_owner"},
                ExpressionAttributeValues=placeholder_values(sent="sent", now=isoformat(now), mid=message_id or "-",
                                                  expires=expires),
                ReturnValues="ALL_NEW",
            )
        except Exception as exc:
            # Published but not recorded: the claim expires and the message is sent once more (at-least-once).
            logger.error("notification sent but not marked sent; it will be sent again",
                         extra={"key": message.key, "error": error_code(exc)})
            return message
        return OutboxMessage.from_item(deserialize_item(raw["Attributes"]))

    def _unindex(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            self._ddb.update_item(
                TableName=self.table, Key=pk(index_key(self.environment)),
                UpdateExpression="DELETE #pending :keys", ExpressionAttributeNames={"#pending": "pending"},
                ExpressionAttributeValues={":keys": {"SS": keys}},
            )
        except Exception as exc:  # a sent key left in the index is dropped by the next flush
            logger.warning("outbox index not updated", extra={"keys": keys, "error": error_code(exc)})

    # -- flush and read ---------------------------------------------------------------------

    def flush(self, *, limit: int = DEFAULT_FLUSH_LIMIT) -> FlushResult:
        """Send the pending messages, oldest first, at most ``limit`` of them.

        When SNS does not answer or throttles, the rest wait for the next flush (each would wait
        through botocore's retries for the same answer); any other refusal is message-specific and
        the flush goes on with the next one.
        """
        if not self.topic_arn:
            return FlushResult()
        waiting = self._pending_messages()
        sent: list[str] = []
        busy: list[str] = []
        left: list[OutboxMessage] = []
        stopped = False
        for index, message in enumerate(waiting):
            if stopped or index >= limit:
                left.append(message)
                continue
            result = self.send(message.key)
            if result.outcome == "sent":
                sent.append(message.key)
            elif result.outcome == "busy":
                busy.append(message.key)
            elif result.outcome == "failed":
                left.append(result.message or message)
                stopped = result.region_trouble
        if sent or left:
            logger.info("outbox flushed", extra={"sent": len(sent), "pending": len(left), "busy": len(busy)})
        return FlushResult(sent=sent, pending=left, busy=busy)

    def pending(self) -> list[OutboxMessage]:
        """The messages SNS has not accepted yet, oldest first (reads only)."""
        return self._pending_messages(repair=False)

    def get(self, key: str) -> OutboxMessage | None:
        raw = self._ddb.get_item(TableName=self.table, Key=pk(message_key(self.environment, key)),
                                 ConsistentRead=True).get("Item")
        return None if raw is None else OutboxMessage.from_item(deserialize_item(raw))

    def _pending_messages(self, *, repair: bool = True) -> list[OutboxMessage]:
        try:
            raw = self._ddb.get_item(TableName=self.table, Key=pk(index_key(self.environment)),
                                     ConsistentRead=True).get("Item") or {}
        except ClientError as exc:
            raise self._failed(exc, "reading the outbox") from exc
        keys = sorted(str(k) for k in deserialize_item(raw).get("pending", set()))
        found: list[OutboxMessage] = []
        stale: list[str] = []
        for key in keys:
            message = self.get(key)
            if message is None or message.status == "sent":
                stale.append(key)
            else:
                found.append(message)
        if repair:
            self._unindex(stale)
        return sorted(found, key=lambda m: (m.created_at, m.order, m.key))

    # -- plumbing ---------------------------------------------------------------------------

    def _from_failure(self, exc: ClientError, key: str) -> OutboxMessage | None:
        raw = exc.response.get("Item")
        if isinstance(raw, Mapping) and raw:
            return OutboxMessage.from_item(deserialize_item(raw))
        return self.get(key)

    def _failed(self, exc: ClientError, doing: str) -> OutboxError:
        failure = self._table.failure(exc, doing)
        return OutboxError(str(failure), failure.code)


# ---------------------------------------------------------------------------------------- entry points


def flush_outbox(
    settings: Settings, clients: ClientFactory, clock: Clock, *, limit: int = DEFAULT_FLUSH_LIMIT
) -> FlushResult:
    """Re-send every pending notification (the watcher and the sweeper call this on every run).

    Never raises for AWS: a ledger that cannot be read comes back as ``FlushResult.error`` (and is
    logged), so a caller's own work (detection, relaunching stalled executions) always goes on.
    """
    if not settings.topic_arn:
        return FlushResult()
    try:
        return Outbox(settings, clients, clock).flush(limit=limit)
    except OutboxError as exc:
        logger.error("outbox not flushed", extra={"detail": str(exc)})
        return FlushResult(error=str(exc))
    except (ClientError, BotoCoreError, ConnectionError) as exc:
        logger.error("outbox not flushed", extra={"error": error_code(exc), "detail": str(exc)})
        return FlushResult(error=f"{error_code(exc)}: {exc}")


def pending_notifications(settings: Settings, clients: ClientFactory) -> list[OutboxMessage]:
    """The notifications still waiting for SNS, oldest first (for `jams-dr status`); raises on AWS errors."""
    return Outbox(settings, clients, SystemClock()).pending()


# ---------------------------------------------------------------------------------------- values
