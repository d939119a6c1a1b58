"""One Logger and one Metrics for the whole app (powertools), attached once as Chalice middleware."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics

SERVICE = "jams-dr"
NAMESPACE = "JamsDR"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


def powertools_middleware(event: Any, get_response: Callable[[Any], Any]) -> Any:
    """Chalice middleware for every Lambda event: request context in logs, metrics flushed at the end."""
    context = getattr(event, "context", None)
    if context is not None:
        logger.set_correlation_id(getattr(context, "aws_request_id", None))
    try:
        return get_response(event)
    finally:
        metrics.flush_metrics(raise_on_empty_metrics=False)
