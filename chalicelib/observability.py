"""One Logger and one Metrics for the whole app (powertools), attached once as Chalice middleware."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

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


def emit_alone(dimensions: Mapping[str, str], name: str, unit: MetricUnit, value: float) -> None:
    """Print one EMF record whose only dimension set is ``dimensions``, now rather than at the flush.

    For a Powertools layer without Metrics.add_dimensions (before 3.25.0), which cannot put a metric in a
    dimension set without ``service``. CloudWatch Logs extracts this record like the ones Metrics flushes
    (the same stdout, the same format: CloudWatch's Embedded Metric Format specification).
    """
    record = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [list(dimensions)],
                "Metrics": [{"Name": name, "Unit": unit.value}],
            }],
        },
        **dimensions,
        name: value,
    }
    print(json.dumps(record, separators=(",", ":")), flush=True)
