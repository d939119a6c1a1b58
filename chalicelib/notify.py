"""Notifications to the on-call person: durable through the ledger's outbox when a topic is configured,
the log always.

``Notifier.notify`` stores the message in the outbox (chalicelib/outbox.py) FIRST, then tries SNS once:
a refusal leaves it pending, and the watcher and the sweeper re-send it until SNS accepts it. The key
makes it idempotent: notifying the same key again (a duplicated invocation, a re-run step) sends
nothing new. Without TOPIC_ARN notifications are only logged, and nothing is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from chalicelib.aws import ClientFactory, error_code
from chalicelib.clock import Clock
from chalicelib.observability import logger
from chalicelib.outbox import Outbox
from chalicelib.settings import Settings

NotificationKind = Literal["decision", "approval-request", "started", "succeeded", "failed", "notice"]
NOTIFICATION_KINDS: tuple[NotificationKind, ...] = (
    "decision", "approval-request", "started", "succeeded", "failed", "notice")

# SNS subjects: ASCII, printable, one line, at most 100 characters, not empty.
_MAX_SUBJECT = 100
_DEFAULT_SUBJECT = "jams-dr notification"


def sanitize_subject(subject: str) -> str:
    one_line = " ".join("".join(ch if ch.isprintable() else " " for ch in subject).split())
    text = one_line.encode("ascii", "replace").decode()[:_MAX_SUBJECT].strip()
    return text or _DEFAULT_SUBJECT


@dataclass(frozen=True)
class Notification:
    """What one ``notify`` call asked for (kept in ``Notifier.messages`` for the CLI and tests)."""

    kind: NotificationKind
    key: str
    subject: str
    body: str


@dataclass(frozen=True)
class Delivery:
    """``sent``: SNS accepted it (now or before), or there is no topic (logged only); ``queued``: it is in
    the outbox, so it will be sent even if SNS refused it now; ``duplicate``: the key was notified before."""

    key: str
    sent: bool
    queued: bool
    duplicate: bool = False


class Notifier:
    def __init__(self, settings: Settings, clients: ClientFactory, clock: Clock) -> None:
        self._region = settings.recovery_region
        self._environment = settings.environment
        self._topic_arn = settings.topic_arn
        self._clients = clients
        self._outbox = Outbox(settings, clients, clock) if settings.topic_arn else None
        # What this notifier was asked to send (duplicates of an already sent key excluded).
        self.sent: list[tuple[str, str]] = []
        self.messages: list[Notification] = []

    def notify(self, subject: str, body: str, *, kind: NotificationKind, key: str, **context: Any) -> bool:
        """Queue, then send once now; True when SNS accepted it (now or before) or no topic is configured."""
        return self.deliver(subject, body, kind=kind, key=key, **context).sent

    def deliver(self, subject: str, body: str, *, kind: NotificationKind, key: str, **context: Any) -> Delivery:
        """``notify`` with the whole answer (was it queued, is it a duplicate). Never raises for AWS."""
        if kind not in NOTIFICATION_KINDS:
            raise ValueError(f"notification kind {kind!r} is not one of {', '.join(NOTIFICATION_KINDS)}")
        if not key:
            raise ValueError("a notification needs a key (what makes it the same notification when repeated)")
        subject = sanitize_subject(subject)
        extra = {"subject": subject, "kind": kind, "key": key, **context}
        if self._outbox is None:
            logger.info("notification", extra={**extra, "body": body})
            self._remember(kind, key, subject, body)
            return Delivery(key, sent=True, queued=False)
        try:
            enqueued = self._outbox.enqueue(kind=kind, key=key, subject=subject, body=body, context=context)
        except Exception as exc:
            # A transaction can commit and still raise (a timeout on its answer): then the message IS queued
            # and a flush will send it; publishing it here as well would send it twice.
            if self._queued_after_all(key):
                logger.warning("notification queued despite an error", extra={**extra, "error": error_code(exc)})
                self._remember(kind, key, subject, body)
                return self._send_queued(key, extra, duplicate=False)
            logger.error("notification NOT queued (ledger failed); sending it once without a retry",
                         extra={**extra, "body": body, "error": error_code(exc), "detail": str(exc)})
            self._remember(kind, key, subject, body)
            return Delivery(key, sent=self._publish_once(subject, body, kind, key), queued=False)
        if not enqueued.created:
            logger.info("notification already queued", extra={**extra, "status": enqueued.message.status})
            if enqueued.message.status == "sent":
                return Delivery(key, sent=True, queued=True, duplicate=True)
        else:
            logger.info("notification", extra={**extra, "body": body})
            self._remember(kind, key, subject, body)
        return self._send_queued(key, extra, duplicate=not enqueued.created)

    def _send_queued(self, key: str, extra: dict[str, Any], *, duplicate: bool) -> Delivery:
        assert self._outbox is not None
        try:
            result = self._outbox.send(key)
        except Exception as exc:  # queued all the same: the watcher and the sweeper send it
            logger.error("notification queued, not sent now", extra={**extra, "error": error_code(exc)})
            return Delivery(key, sent=False, queued=True, duplicate=duplicate)
        return Delivery(key, sent=result.outcome in ("sent", "already-sent"), queued=True, duplicate=duplicate)

    def _queued_after_all(self, key: str) -> bool:
        assert self._outbox is not None
        try:
            return self._outbox.get(key) is not None
        except Exception:  # the ledger cannot be read either: it is not known to be queued
            return False

    def _remember(self, kind: NotificationKind, key: str, subject: str, body: str) -> None:
        self.sent.append((subject, body))
        self.messages.append(Notification(kind, key, subject, body))

    def _publish_once(self, subject: str, body: str, kind: NotificationKind, key: str) -> bool:
        assert self._topic_arn is not None  # only called when a topic is configured (the outbox exists)
        try:
            self._clients.client("sns", self._region).publish(
                TopicArn=self._topic_arn, Subject=subject, Message=body,
                MessageAttributes={"kind": {"DataType": "String", "StringValue": kind},
                                   "key": {"DataType": "String", "StringValue": key},
                                   "environment": {"DataType": "String", "StringValue": self._environment}},
            )
        except Exception as exc:
            logger.error("notification failed and is lost", extra={"subject": subject, "key": key,
                                                                   "error": error_code(exc)})
            return False
        return True
