"""What the embedded AWS needs to tell the truth about the traffic switch (docs/traffic.md).

moto 5.2.5 stores what the traffic stack declares but does not act on it:

- ``AWS::CloudWatch::Alarm`` is skipped by moto's CloudFormation (a warning, no alarm). The traffic
  stack's alarm (namespace ``JAMS/DR``) is created here; other alarms stay skipped as before (their
  tests assert the template, tests/functional/test_monitoring_template.py).
- CloudWatch alarms are never evaluated from metric data (a PutMetricData changes no alarm), and a new
  alarm starts ``OK``. AWS evaluates a metric alarm against its threshold on each period, and a new alarm
  starts ``INSUFFICIENT_DATA`` (CloudWatch User Guide, "Using Amazon CloudWatch alarms": alarm states;
  "Configuring how CloudWatch alarms treat missing data"). Here, alarms on the traffic namespace
  (``JAMS/DR``, the ones the product depends on) start ``INSUFFICIENT_DATA`` and are evaluated on every
  datum as it arrives: one datum per period, compared with the threshold. Simplification: AWS evaluates
  the period's statistic, so a 0 and a 1 in the same 10-s period give Minimum 0 until the next period;
  switch_traffic republishes on each poll, which converges there within one period. ``TreatMissingData``
  ``ignore`` (the template's) keeps the state when no data comes, which is what moto does anyway.
- Route 53 ``CLOUDWATCH_METRIC`` health checks lose ``AlarmIdentifier`` and
  ``InsufficientDataHealthStatus`` (CloudFormation and CreateHealthCheck alike), and no DNS answer is
  ever computed. ``install`` keeps both in the health check (GetHealthCheck returns them), and
  ``Resolver.answer`` says what Route 53 would answer for a name from the records and their health
  checks (Route 53 Developer Guide, "Failover routing"; "Monitoring a CloudWatch alarm"; API reference,
  HealthCheckConfig "InsufficientDataHealthStatus").
- ``AWS::ElasticLoadBalancingV2::Listener`` and ``TargetGroup`` have no delete handler: a recovered
  application stack's listener on the traffic stack's load balancer outlives the stack, and the next
  application stack fails with DuplicateListener. CloudFormation deletes a stack's resources with it
  (CloudFormation User Guide, "Delete a stack").

Installed once per process, like moto's backends (``EmbeddedAws.start``); each fact has a test in
tests/functional/test_traffic_switch.py.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from typing import Any

from chalicelib import traffic
from chalicelib.aws import ClientFactory
from jamsdr.faults import data_plane_emulation
from jamsdr.moto_models import register_model

_installed = False
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanOrEqualToThreshold": operator.ge,
    "GreaterThanThreshold": operator.gt,
    "LessThanThreshold": operator.lt,
    "LessThanOrEqualToThreshold": operator.le,
}


def install() -> None:
    """Patch moto's CloudWatch, Route 53 and ELBv2 models (idempotent)."""
    global _installed  # noqa: PLW0603 - one patch per process, like moto's own backends
    if _installed:
        return
    _alarm_resource()
    _alarm_evaluation()
    _health_check_alarm_fields()
    _listener_deletion()
    _installed = True


# ------------------------------------------------------------------------------- CloudWatch


def breaching(alarm: Any, value: float) -> bool:
    compare = _COMPARE.get(str(alarm.comparison_operator))
    if compare is None:
        raise ValueError(f"the embedded AWS does not evaluate {alarm.comparison_operator} alarms")
    return compare(value, float(alarm.threshold))


def _dimensions_match(alarm: Any, dimensions: list[Mapping[str, Any]]) -> bool:
    wanted = {(d.name, d.value) for d in alarm.dimensions}
    return wanted == {(str(d.get("Name")), str(d.get("Value"))) for d in dimensions}


def _alarm_resource() -> None:
    from moto.cloudwatch.models import cloudwatch_backends  # noqa: PLC0415
    from moto.core.common_models import CloudFormationModel  # noqa: PLC0415

    class TrafficAlarm(CloudFormationModel):
        def __init__(self, name: str) -> None:
            self.name = name

        @property
        def physical_resource_id(self) -> str:
            return self.name

        @staticmethod
        def cloudformation_name_type() -> str:
            return "AlarmName"

        @staticmethod
        def cloudformation_type() -> str:
            return "AWS::CloudWatch::Alarm"

        @classmethod
        def create_from_cloudformation_json(
            cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **_: Any
        ) -> TrafficAlarm:
            p = cloudformation_json["Properties"]
            name = str(p.get("AlarmName") or resource_name)
            if p.get("Namespace") == traffic.NAMESPACE:
                cloudwatch_backends[account_id][region_name].put_metric_alarm(
                    name=name, namespace=p["Namespace"], metric_name=p["MetricName"],
                    comparison_operator=p["ComparisonOperator"], evaluation_periods=int(p["EvaluationPeriods"]),
                    period=int(p["Period"]), threshold=float(p["Threshold"]), statistic=p.get("Statistic"),
                    description=p.get("AlarmDescription"), dimensions=p.get("Dimensions") or [],
                    alarm_actions=p.get("AlarmActions") or [], datapoints_to_alarm=p.get("DatapointsToAlarm"),
                    treat_missing_data=p.get("TreatMissingData"))
            return cls(name)

        @classmethod
        def delete_from_cloudformation_json(
            cls, resource_name: str, _json: Any, account_id: str, region_name: str
        ) -> None:
            backend = cloudwatch_backends[account_id][region_name]
            if resource_name in backend.alarms:
                backend.delete_alarms([resource_name])

    register_model(TrafficAlarm, "AWS::CloudWatch::Alarm")


def _alarm_evaluation() -> None:
    from moto.cloudwatch.models import Alarm, CloudWatchBackend  # noqa: PLC0415

    original_init = Alarm.__init__
    original_put = CloudWatchBackend.put_metric_data

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if self.namespace == traffic.NAMESPACE:
            self.state_value = "INSUFFICIENT_DATA"
            self.state_reason = "Unchecked: Initial alarm creation"

    def put_metric_data(self: Any, namespace: str, metric_data: list[dict[str, Any]]) -> None:
        original_put(self, namespace, metric_data)
        if namespace != traffic.NAMESPACE:
            return
        for datum in metric_data:
            if datum.get("Value") is None:
                continue
            value = float(datum["Value"])
            for alarm in list(self.alarms.values()):
                if (alarm.namespace != namespace or alarm.metric_name != datum.get("MetricName")
                        or not _dimensions_match(alarm, datum.get("Dimensions") or [])):
                    continue
                state = "ALARM" if breaching(alarm, value) else "OK"
                if state != alarm.state_value:
                    reason = (f"Threshold Crossed: 1 datapoint [{value}] was "
                              f"{'' if state == 'ALARM' else 'not '}{alarm.comparison_operator} {alarm.threshold}")
                    alarm.update_state(reason, json.dumps({"value": value}), state)

    Alarm.__init__ = init  # type: ignore[method-assign]
    CloudWatchBackend.put_metric_data = put_metric_data  # type: ignore[method-assign]


# ------------------------------------------------------------------------------- Route 53


def _health_check_alarm_fields() -> None:
    from moto.route53.models import HealthCheck, Route53Backend  # noqa: PLC0415
    from moto.route53.responses import Route53  # noqa: PLC0415

    original_config = HealthCheck.health_check_config
    original_cfn = HealthCheck.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]
    original_create = Route53Backend.create_health_check
    original_api = Route53.create_health_check
    pending: list[Mapping[str, Any]] = []

    def config(self: Any) -> dict[str, Any]:
        out = dict(original_config.fget(self))  # type: ignore[attr-defined]
        if getattr(self, "alarm_identifier", None):
            out["AlarmIdentifier"] = dict(self.alarm_identifier)
        if getattr(self, "insufficient_data_health_status", None):
            out["InsufficientDataHealthStatus"] = self.insufficient_data_health_status
        if self.type_ == "CLOUDWATCH_METRIC":
            for key in ("IPAddress", "Port", "RequestInterval", "FailureThreshold", "MeasureLatency"):
                out.pop(key, None)
        return out

    def create(self: Any, caller_reference: str, health_check_args: dict[str, Any]) -> Any:
        check = original_create(self, caller_reference, health_check_args)
        declared = pending.pop() if pending else {}
        setattr(check, "alarm_identifier", declared.get("AlarmIdentifier"))  # noqa: B010 - moto's class lacks it
        setattr(check, "insufficient_data_health_status", declared.get("InsufficientDataHealthStatus"))  # noqa: B010
        return check

    def from_cfn(cls: Any, /, resource_name: str, cloudformation_json: Any, account_id: str,
                 region_name: str, **kwargs: Any) -> Any:
        pending.append(cloudformation_json["Properties"]["HealthCheckConfig"])
        return original_cfn(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)

    def from_api(self: Any) -> Any:
        pending.append(self._get_param("HealthCheckConfig") or {})
        return original_api(self)

    HealthCheck.health_check_config = property(config)  # type: ignore[method-assign,assignment]
    HealthCheck.create_from_cloudformation_json = classmethod(from_cfn)  # type: ignore[method-assign,assignment]
    Route53Backend.create_health_check = create  # type: ignore[method-assign]
    Route53.create_health_check = from_api  # type: ignore[method-assign]


class Resolver:
    """What Route 53 answers for a name, from the zone's records and their health checks' state.

    Failover routing (Route 53 Developer Guide, "Failover routing"; "How Amazon Route 53 chooses records
    when health checking is configured"): the PRIMARY record while its health check is healthy, else the
    SECONDARY record when it is healthy (a record without a health check always is); both unhealthy:
    PRIMARY. A CLOUDWATCH_METRIC health check is unhealthy while its alarm is ALARM, healthy while OK, and
    with INSUFFICIENT_DATA follows InsufficientDataHealthStatus: Healthy, Unhealthy or LastKnownStatus (the
    status it last had; healthy for a check that never had one).
    """

    def __init__(self, clients: ClientFactory, zone_id: str, *, region: str) -> None:
        self._clients = clients
        self._zone_id = zone_id
        self._region = region  # only the signing region: Route 53 is global
        self._last_known: dict[str, bool] = {}

    def answer(self, name: str) -> str | None:
        # Route 53 answers DNS from its data plane, which outlives us-east-1: the control-plane reads this
        # emulation makes to work the answer out must not be refused while that region is down.
        with data_plane_emulation():
            return self._answer(name)

    def healthy(self, record: Mapping[str, Any]) -> bool:
        with data_plane_emulation():
            return self._healthy(record)

    def _answer(self, name: str) -> str | None:
        wanted = name if name.endswith(".") else f"{name}."
        route53 = self._clients.client("route53", self._region)
        records = [r for page in route53.get_paginator("list_resource_record_sets").paginate(
            HostedZoneId=self._zone_id) for r in page["ResourceRecordSets"] if r["Name"] == wanted]
        if not records:
            return None
        by_role = {str(r.get("Failover")): r for r in records if r.get("Failover")}
        if not by_role:
            return _value(records[0])
        primary, secondary = by_role.get("PRIMARY"), by_role.get("SECONDARY")
        if primary is not None and self._healthy(primary):
            return _value(primary)
        if secondary is not None and self._healthy(secondary):
            return _value(secondary)
        return _value(primary or secondary or records[0])

    def _healthy(self, record: Mapping[str, Any]) -> bool:
        check_id = record.get("HealthCheckId")
        if not check_id:
            return True
        route53 = self._clients.client("route53", self._region)
        config = route53.get_health_check(HealthCheckId=str(check_id))["HealthCheck"]["HealthCheckConfig"]
        if config.get("Type") != "CLOUDWATCH_METRIC":
            raise ValueError(f"the embedded AWS does not evaluate {config.get('Type')} health checks")
        alarm: Mapping[str, Any] = config.get("AlarmIdentifier") or {}
        cloudwatch = self._clients.client("cloudwatch", str(alarm.get("Region")))
        found = cloudwatch.describe_alarms(AlarmNames=[str(alarm.get("Name"))]).get("MetricAlarms", [])
        state = str(found[0]["StateValue"]) if found else "INSUFFICIENT_DATA"
        if state == "INSUFFICIENT_DATA":
            mode = str(config.get("InsufficientDataHealthStatus") or "LastKnownStatus")
            healthy = (self._last_known.get(str(check_id), True) if mode == "LastKnownStatus"
                       else mode == "Healthy")
        else:
            healthy = state == "OK"
        if config.get("Inverted"):
            healthy = not healthy
        self._last_known[str(check_id)] = healthy
        return healthy


def _value(record: Mapping[str, Any]) -> str | None:
    values = record.get("ResourceRecords") or []
    if values:
        return str(values[0]["Value"])
    alias = record.get("AliasTarget") or {}
    return str(alias["DNSName"]) if alias.get("DNSName") else None


# ------------------------------------------------------------------------------- ELBv2


def _listener_deletion() -> None:
    from moto.elbv2.models import FakeListener, FakeTargetGroup, elbv2_backends  # noqa: PLC0415

    def delete_listener(_cls: Any, resource_name: str, _json: Any, account_id: str, region_name: str) -> None:
        backend = elbv2_backends[account_id][region_name]
        if any(listener.arn == resource_name for balancer in backend.load_balancers.values()
               for listener in balancer.listeners.values()):
            backend.delete_listener(resource_name)

    def delete_target_group(_cls: Any, resource_name: str, _json: Any, account_id: str, region_name: str) -> None:
        backend = elbv2_backends[account_id][region_name]
        if resource_name in backend.target_groups:
            backend.delete_target_group(resource_name)

    FakeListener.delete_from_cloudformation_json = classmethod(delete_listener)  # type: ignore[method-assign,assignment]
    FakeTargetGroup.delete_from_cloudformation_json = classmethod(delete_target_group)  # type: ignore[method-assign,assignment]
