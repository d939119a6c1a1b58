"""Deploy the traffic stack (templates/jams-dr-traffic.yaml) at bootstrap, and in the embedded world.

Bootstrap is the one moment jams-dr uses Route 53's control plane (docs/traffic.md): it creates the
failover pair, the health check and the alarm, starts the alarm at "the primary serves", and tells the
chain which load balancer a recovered application stack joins (the parameters file's recovery-region
section, read by create_app_stack like any other stack choice).
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from chalicelib import traffic
from chalicelib.aws import ClientFactory, error_code
from chalicelib.keys import APP_PARAMETERS_KEY
from jamsdr.deploy import Review, approve_all, deploy_stack


def deploy_traffic_stack(
    clients: ClientFactory,
    *,
    environment: str,
    primary_region: str,
    recovery_region: str,
    hosted_zone_id: str,
    dns_zone_name: str,
    standby_outputs: dict[str, str],
    artifact_bucket: str,
    review: Review = approve_all,
) -> dict[str, str]:
    """Create the stack if absent (idempotent), publish PrimaryServes=1, record the endpoint; its outputs."""
    outputs = deploy_stack(
        clients, recovery_region, traffic.traffic_stack_name(environment), "jams-dr-traffic.yaml",
        {"EnvironmentName": environment, "HostedZoneId": hosted_zone_id,
         "DnsZoneName": dns_zone_name.rstrip("."), "PrimaryRegion": primary_region,
         **{k: standby_outputs[k] for k in ("PrivateSubnet1Id", "PrivateSubnet2Id", "LoadBalancerSecurityGroupId")}},
        capabilities=(),
        review=review,
    )
    cloudwatch = clients.client("cloudwatch", recovery_region)
    alarms = cloudwatch.describe_alarms(AlarmNames=[outputs["SwitchAlarmName"]]).get("MetricAlarms", [])
    # A new stage starts on the primary; an existing one that already failed over keeps its state.
    if not alarms or alarms[0].get("StateValue") == "INSUFFICIENT_DATA":
        cloudwatch.put_metric_data(Namespace=traffic.NAMESPACE,
                                   MetricData=[traffic.metric_datum(environment, traffic.PRIMARY_SERVES)])
    if artifact_bucket:
        _record_endpoint(clients, recovery_region, artifact_bucket, outputs["RecoveryEndpointArn"])
    return outputs


def _record_endpoint(clients: ClientFactory, region: str, bucket: str, arn: str) -> None:
    s3 = clients.client("s3", region)
    document: dict[str, Any] = {}
    try:
        document = json.loads(s3.get_object(Bucket=bucket, Key=APP_PARAMETERS_KEY)["Body"].read())
    except ClientError as exc:
        if error_code(exc) not in ("NoSuchKey", "404", "NotFound"):
            raise
    section = dict(document.get(region) or {})
    section["SchedulerLoadBalancerArn"] = arn
    document[region] = section
    s3.put_object(Bucket=bucket, Key=APP_PARAMETERS_KEY, ContentType="application/json",
                  ServerSideEncryption="AES256", Body=json.dumps(document, indent=2, sort_keys=True).encode())
