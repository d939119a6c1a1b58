"""An embedded subscriber of the notification topic, for drills: what the on-call person would have received.

``Inbox.subscribe`` creates an SQS queue and subscribes it to the topic (SNS delivers the JSON envelope:
Type, MessageId, Subject, Message, Timestamp, MessageAttributes). ``received`` drains the queue and
returns what reached the topic, in the report's form (CONTRACT ``notifications``). The ledger's outbox
says what jams-dr meant to send; only a subscriber can say what was delivered.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from chalicelib.aws import ClientFactory, error_code
from chalicelib.clock import isoformat, parse_iso
from chalicelib.observability import logger

# SQS hands out at most 10 messages per receive; a drill's notifications fit in a few pages.
_PAGE = 10
_MAX_PAGES = 1000


@dataclass
class Inbox:
    clients: ClientFactory
    region: str
    topic_arn: str
    queue_url: str
    subscription_arn: str
    _seen: set[str] = field(default_factory=set)
    _received: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def subscribe(cls, clients: ClientFactory, region: str, topic_arn: str, *, name: str | None = None) -> Inbox:
        """A new queue subscribed to ``topic_arn`` (in the topic's region)."""
        sqs = clients.client("sqs", region)
        queue_url = str(sqs.create_queue(QueueName=name or f"jams-dr-inbox-{uuid.uuid4().hex[:12]}")["QueueUrl"])
        queue_arn = str(sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
                        ["Attributes"]["QueueArn"])
        # What AWS requires for SNS to deliver into the queue (the emulator does not check it).
        policy = {"Version": "2012-10-17", "Statement": [{
            "Sid": "TopicDelivers", "Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"},
            "Action": "sqs:SendMessage", "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}}}]}
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
        subscription = clients.client("sns", region).subscribe(
            TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, ReturnSubscriptionArn=True)
        return cls(clients, region, topic_arn, queue_url, str(subscription["SubscriptionArn"]))

    def received(self) -> list[dict[str, Any]]:
        """Everything received so far (cumulative across calls), oldest first, each message once:
        ``[{"at": ISO-8601 (the envelope's Timestamp), "kind": ..., "subject": ...}]``."""
        sqs = self.clients.client("sqs", self.region)
        for _page in range(_MAX_PAGES):
            answer = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=_PAGE, WaitTimeSeconds=0,
                                         MessageAttributeNames=["All"])
            messages = answer.get("Messages", [])
            if not messages:
                break
            for message in messages:
                self._take(str(message.get("Body", "")))
            sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(index), "ReceiptHandle": m["ReceiptHandle"]} for index, m in enumerate(messages)])
        # Stable: messages with the same timestamp keep the order they were received in.
        return [dict(entry) for entry in sorted(self._received, key=lambda e: e["at"] or "")]

    def close(self) -> None:
        """Unsubscribe and delete the queue (best effort: a drill's world is thrown away anyway)."""
        try:
            self.clients.client("sns", self.region).unsubscribe(SubscriptionArn=self.subscription_arn)
            self.clients.client("sqs", self.region).delete_queue(QueueUrl=self.queue_url)
        except Exception as exc:
            logger.info("inbox not removed", extra={"queue": self.queue_url, "error": error_code(exc)})

    def _take(self, body: str) -> None:
        try:
            envelope = json.loads(body)
        except json.JSONDecodeError:
            envelope = {}
        if not isinstance(envelope, dict):
            envelope = {}
        message_id = str(envelope.get("MessageId") or uuid.uuid4())
        if message_id in self._seen:  # SQS delivers at least once
            return
        self._seen.add(message_id)
        attributes = envelope.get("MessageAttributes") or {}
        kind = (attributes.get("kind") or {}).get("Value") if isinstance(attributes, dict) else None
        stamp = envelope.get("Timestamp")
        self._received.append({
            "at": isoformat(parse_iso(str(stamp))) if stamp else None,
            # A message without the attribute was not sent by jams-dr's Notifier: report it as a notice.
            "kind": str(kind or "notice"),
            "subject": str(envelope.get("Subject") or ""),
        })
