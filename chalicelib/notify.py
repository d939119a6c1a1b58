"""Notifications to the on-call person: SNS when a topic is configured, the log always."""

from __future__ import annotations

from typing import Any

from chalicelib.aws import ClientFactory, error_code
from chalicelib.observability import logger

# SNS subjects: ASCII, no newlines, at most 100 characters.
_MAX_SUBJECT = 100


class Notifier:
    def __init__(self, clients: ClientFactory, region: str, topic_arn: str | None) -> None:
        self._clients = clients
        self._region = region
        self._topic_arn = topic_arn
        self.sent: list[tuple[str, str]] = []

    def notify(self, subject: str, body: str, **context: Any) -> bool:
        """Send one message; returns False when SNS failed (the message is still in the log)."""
        subject = " ".join(subject.split())[:_MAX_SUBJECT].encode("ascii", "replace").decode()
        logger.info("notification", extra={"subject": subject, "body": body, **context})
        self.sent.append((subject, body))
        if not self._topic_arn:
            return True
        try:
            self._clients.client("sns", self._region).publish(
                TopicArn=self._topic_arn, Subject=subject, Message=body
            )
        except Exception as exc:
            logger.error("notification failed", extra={"subject": subject, "error": error_code(exc)})
            return False
        return True
