"""Names of the traffic switch (templates/jams-dr-traffic.yaml, docs/traffic.md), shared by the
switch_traffic step, the bootstrap and the embedded AWS.

The stable name jams.<zone> is a Route 53 failover pair created at bootstrap. Which half answers follows
a CloudWatch alarm in the recovery region on the metric ``JAMS/DR PrimaryServes`` (dimension
``Environment``): 1 = the primary serves, 0 = the recovery region serves. Publishing that metric is a
regional data-plane call; nothing in a recovery calls Route 53's control plane.
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "JAMS/DR"
METRIC = "PrimaryServes"
PRIMARY_SERVES = 1.0
RECOVERY_SERVES = 0.0
# The alarm's state for each value (Threshold 1, LessThanThreshold).
ALARM_STATE_FOR = {PRIMARY_SERVES: "OK", RECOVERY_SERVES: "ALARM"}


def traffic_stack_name(environment: str) -> str:
    return f"{environment}-jams-dr-traffic"


def switch_alarm_name(environment: str) -> str:
    """The template's SwitchAlarm name (AlarmName ``${EnvironmentName}-jamsdr-traffic-primary-serves``)."""
    return f"{environment}-jamsdr-traffic-primary-serves"


def stable_name(dns_zone_name: str) -> str:
    return f"jams.{dns_zone_name.rstrip('.')}."


def primary_value(primary_region: str, dns_zone_name: str) -> str:
    """What PRIMARY answers: the primary application stack's regional name."""
    return f"jams.{primary_region}.{dns_zone_name.rstrip('.')}"


def metric_datum(environment: str, value: float) -> Any:
    """One PutMetricData datum (boto3's MetricDatum shape); high resolution so a 10-s alarm period can
    see it."""
    return {"MetricName": METRIC, "Dimensions": [{"Name": "Environment", "Value": environment}],
            "Value": value, "Unit": "None", "StorageResolution": 1}
