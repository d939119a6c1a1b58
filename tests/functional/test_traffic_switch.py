"""The traffic switch by data plane (docs/traffic.md): the failover pair, health check and alarm made at
bootstrap, switch_traffic publishing a metric in the recovery region, and what the embedded AWS adds so
that it tells the truth (jamsdr/traffic_emulation.py)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chalicelib import traffic
from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock, parse_iso
from chalicelib.notify import Notifier
from chalicelib.settings import Settings
from chalicelib.stacks import describe_stack, parameters_of
from chalicelib.workflow.starter import no_launch, start_failback
from jamsdr.embedded import EmbeddedAws, build_world
from jamsdr.stack_routes import StackRouteCleanup
from jamsdr.traffic_emulation import Resolver
from tests.functional.test_recovery_chain import Env, pin_recovery_point

TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "jams-dr-traffic.yaml"


def _env(embedded: EmbeddedAws, clients: ClientFactory, *, dns: bool = True) -> Env:
    world = build_world(clients, Settings.defaults(), dns=dns)
    created = pin_recovery_point(clients, world.settings)
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))
    return Env(embedded, world, clients, clock, Notifier(world.settings, clients, clock), created)


def _route53_calls(clients: ClientFactory) -> list[str]:
    """Every Route 53 API call made from now on, by name (an event hook on every client of the factory)."""
    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(str(model.name))

    clients.register_hook("before-call.route53", record)
    return calls


def _alarm_state(env: Env) -> str:
    alarms = env.clients.client("cloudwatch", env.s.recovery_region).describe_alarms(
        AlarmNames=[traffic.switch_alarm_name(env.s.environment)])["MetricAlarms"]
    return str(alarms[0]["StateValue"])


def test_recovery_switches_by_metric_and_makes_no_route53_call(embedded: EmbeddedAws, clients: ClientFactory) -> None:
    env = _env(embedded, clients)
    s = env.s
    assert env.cname() == env.world.traffic["PrimaryValue"] == f"jams.{s.primary_region}.{s.dns_zone_name}"
    assert _alarm_state(env) == "OK"  # bootstrap published PrimaryServes=1
    published: list[dict[str, Any]] = []

    def on_put(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        published.append(params)

    calls = _route53_calls(clients)
    clients.register_hook("before-parameter-build.cloudwatch.PutMetricData", on_put)
    try:
        execution = env.recover("inc-traffic")
    finally:
        clients.unregister_hook("before-parameter-build.cloudwatch.PutMetricData", on_put)

    assert execution.status == "succeeded", execution.error
    assert calls == []  # not one Route 53 request during the whole recovery
    switched = [p for p in published if p["Namespace"] == traffic.NAMESPACE]
    assert switched and all(p["MetricData"][0]["Value"] == traffic.RECOVERY_SERVES for p in switched)
    assert _alarm_state(env) == "ALARM"
    assert env.cname() == env.world.traffic["SecondaryValue"]
    # The recovered stack joined the recovery endpoint the SECONDARY record names (a listener on 773).
    elbv2 = clients.client("elbv2", s.recovery_region)
    listeners = elbv2.describe_listeners(LoadBalancerArn=env.world.traffic["RecoveryEndpointArn"])["Listeners"]
    assert [listener["Port"] for listener in listeners] == [773]
    stack = describe_stack(env.cfn(s.recovery_region), s.app_stack_name)
    assert stack is not None and parameters_of(stack)["HostedZoneId"] == ""  # no Route 53 records via CFN
    report = execution.item["report"]
    assert report["traffic"]["switched"] is True and report["traffic"]["to"] == "SECONDARY"
    assert report["traffic"]["alarm_state"] == "ALARM"
    switch = next(step for step in report["steps"] if step["name"] == "switch_traffic")
    assert switch["outcome"] == "succeeded" and report["recovered_at"] == switch["ended_at"]


def test_without_a_hosted_zone_the_switch_is_skipped_and_not_counted(embedded: EmbeddedAws,
                                                                       clients: ClientFactory) -> None:
    env = _env(embedded, clients, dns=False)
    execution = env.recover("inc-nodns")

    assert execution.status == "succeeded", execution.error
    report = execution.item["report"]
    switch = next(step for step in report["steps"] if step["name"] == "switch_traffic")
    verify = next(step for step in report["steps"] if step["name"] == "verify")
    assert switch["outcome"] == "skipped"
    assert report["traffic"]["switched"] is False and "HOSTED_ZONE_ID" in report["traffic"]["reason"]
    assert report["recovered_at"] == verify["ended_at"]
    assert report["rto_seconds"] == pytest.approx(
        (parse_iso(verify["ended_at"]) - parse_iso(report["failure_at"])).total_seconds(), abs=0.001)
    assert clients.client("route53", env.s.recovery_region).list_hosted_zones()["HostedZones"] == []


def test_failback_switches_back_to_the_primary(embedded: EmbeddedAws, clients: ClientFactory) -> None:
    env = _env(embedded, clients)
    s = env.s
    recovery = env.recover("inc-back")
    assert recovery.status == "succeeded", recovery.error
    assert env.cname() == env.world.traffic["SecondaryValue"]

    calls = _route53_calls(clients)
    routes = StackRouteCleanup(clients).install()  # moto keeps a deleted stack's NAT routes otherwise
    try:
        started = start_failback(s, clients, env.clock, reason="primary healthy again", launcher=no_launch)
        execution = env.run(started.execution_id)
    finally:
        routes.uninstall()

    assert execution.status == "succeeded", execution.error
    assert execution.data["traffic"]["to"] == "PRIMARY"
    assert _alarm_state(env) == "OK"
    assert env.cname() == env.world.traffic["PrimaryValue"]
    # The rebuilt primary stack owns its regional records again (CloudFormation in the healthy primary),
    # and jams-dr itself made no Route 53 call.
    assert "ChangeResourceRecordSets" not in calls
    # The retired recovery stack's listener went with it (jamsdr.traffic_emulation): the next recovery
    # can join the endpoint again.
    listeners = clients.client("elbv2", s.recovery_region).describe_listeners(
        LoadBalancerArn=env.world.traffic["RecoveryEndpointArn"])["Listeners"]
    assert listeners == []


def test_drill_touches_no_traffic(embedded: EmbeddedAws, clients: ClientFactory) -> None:
    from chalicelib.workflow.starter import start_drill

    env = _env(embedded, clients)
    started = start_drill(env.s, clients, env.clock, launcher=no_launch)
    execution = env.run(started.execution_id)
    assert execution.status == "succeeded", execution.error
    assert _alarm_state(env) == "OK" and env.cname() == env.world.traffic["PrimaryValue"]
    assert execution.item["report"]["traffic"] is None


# ------------------------------------------------------------------------------- embedded AWS facts


def test_alarm_follows_the_metric_and_starts_insufficient(embedded: EmbeddedAws, clients: ClientFactory) -> None:
    """AWS: a new alarm starts INSUFFICIENT_DATA and is evaluated against its threshold from the metric's
    data (CloudWatch User Guide, "Using Amazon CloudWatch alarms"). moto starts it OK and never evaluates."""
    region = "us-west-2"
    cloudwatch = clients.client("cloudwatch", region)
    cloudwatch.put_metric_alarm(
        AlarmName="t", Namespace=traffic.NAMESPACE, MetricName=traffic.METRIC, Statistic="Minimum",
        Dimensions=[{"Name": "Environment", "Value": "e"}], Period=10, EvaluationPeriods=1, Threshold=1,
        ComparisonOperator="LessThanThreshold", TreatMissingData="ignore")

    def state() -> str:
        return str(cloudwatch.describe_alarms(AlarmNames=["t"])["MetricAlarms"][0]["StateValue"])

    assert state() == "INSUFFICIENT_DATA"
    cloudwatch.put_metric_data(Namespace=traffic.NAMESPACE, MetricData=[traffic.metric_datum("e", 0.0)])
    assert state() == "ALARM"
    cloudwatch.put_metric_data(Namespace=traffic.NAMESPACE, MetricData=[traffic.metric_datum("other", 1.0)])
    assert state() == "ALARM"  # another environment's datum is another metric
    cloudwatch.put_metric_data(Namespace=traffic.NAMESPACE, MetricData=[traffic.metric_datum("e", 1.0)])
    assert state() == "OK"


def _zone_with_failover(clients: ClientFactory, insufficient: str) -> tuple[Resolver, str, Any]:
    region = "us-west-2"
    route53 = clients.client("route53", region)
    zone_id = route53.create_hosted_zone(Name="z.example", CallerReference="z")["HostedZone"]["Id"].split("/")[-1]
    cloudwatch = clients.client("cloudwatch", region)
    cloudwatch.put_metric_alarm(
        AlarmName="a", Namespace=traffic.NAMESPACE, MetricName=traffic.METRIC, Statistic="Minimum",
        Dimensions=[{"Name": "Environment", "Value": "e"}], Period=10, EvaluationPeriods=1, Threshold=1,
        ComparisonOperator="LessThanThreshold", TreatMissingData="ignore")
    config: Any = {"Type": "CLOUDWATCH_METRIC", "AlarmIdentifier": {"Region": region, "Name": "a"},
                   "InsufficientDataHealthStatus": insufficient}
    check = route53.create_health_check(CallerReference="c", HealthCheckConfig=config)["HealthCheck"]
    records = [("PRIMARY", "p.example", check["Id"]), ("SECONDARY", "s.example", None)]
    changes: list[Any] = [
        {"Action": "CREATE", "ResourceRecordSet": {
            "Name": "jams.z.example.", "Type": "CNAME", "TTL": 60, "SetIdentifier": role, "Failover": role,
            "ResourceRecords": [{"Value": value}], **({"HealthCheckId": hc} if hc else {})}}
        for role, value, hc in records]
    route53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": changes})
    return Resolver(clients, zone_id, region=region), check["Id"], cloudwatch


def test_health_check_keeps_its_alarm_and_resolver_follows_failover(embedded: EmbeddedAws,
                                                                     clients: ClientFactory) -> None:
    """AWS: a CLOUDWATCH_METRIC health check keeps AlarmIdentifier and InsufficientDataHealthStatus (API
    reference, HealthCheckConfig); failover routing answers PRIMARY while its health check is healthy,
    else SECONDARY (Route 53 Developer Guide, "Failover routing"). moto drops both fields and answers
    nothing."""
    resolver, check_id, cloudwatch = _zone_with_failover(clients, "LastKnownStatus")
    config = clients.client("route53", "us-west-2").get_health_check(HealthCheckId=check_id)["HealthCheck"][
        "HealthCheckConfig"]
    assert config["AlarmIdentifier"] == {"Region": "us-west-2", "Name": "a"}
    assert config["InsufficientDataHealthStatus"] == "LastKnownStatus"
    # INSUFFICIENT_DATA with no last known status: healthy, so the primary answers.
    assert resolver.answer("jams.z.example") == "p.example"
    cloudwatch.put_metric_data(Namespace=traffic.NAMESPACE, MetricData=[traffic.metric_datum("e", 0.0)])
    assert resolver.answer("jams.z.example") == "s.example"
    cloudwatch.set_alarm_state(AlarmName="a", StateValue="INSUFFICIENT_DATA", StateReason="gap")
    assert resolver.answer("jams.z.example") == "s.example"  # LastKnownStatus: still unhealthy
    cloudwatch.put_metric_data(Namespace=traffic.NAMESPACE, MetricData=[traffic.metric_datum("e", 1.0)])
    assert resolver.answer("jams.z.example") == "p.example"


def test_insufficient_data_unhealthy_fails_over(embedded: EmbeddedAws, clients: ClientFactory) -> None:
    """InsufficientDataHealthStatus Unhealthy: an alarm without data makes the health check unhealthy
    (Route 53 API reference, HealthCheckConfig), hence the template's LastKnownStatus."""
    resolver, _, _ = _zone_with_failover(clients, "Unhealthy")
    assert resolver.answer("jams.z.example") == "s.example"


def test_template_creates_under_moto_and_is_lint_clean(embedded: EmbeddedAws, clients: ClientFactory) -> None:
    env = _env(embedded, clients)
    outputs = env.world.traffic
    assert set(outputs) == {"StableName", "PrimaryValue", "SecondaryValue", "RecoveryEndpointArn",
                            "SwitchAlarmName", "PrimaryHealthCheckId"}
    records = clients.client("route53", env.s.recovery_region).list_resource_record_sets(
        HostedZoneId=env.world.hosted_zone_id)["ResourceRecordSets"]
    pair = {r["Failover"]: r for r in records if r["Name"] == outputs["StableName"]}
    assert pair["PRIMARY"]["HealthCheckId"] == outputs["PrimaryHealthCheckId"]
    assert "HealthCheckId" not in pair["SECONDARY"]
    lint = subprocess.run([str(Path(sys.executable).with_name("cfn-lint")), str(TEMPLATE)],
                          capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_bootstrap_creates_the_traffic_stack_only_with_a_zone(embedded: EmbeddedAws, clients: ClientFactory) -> None:
    from jamsdr.operate import bootstrap_stage

    zone_id = clients.client("route53", "us-west-2").create_hosted_zone(
        Name="jams.example.internal", CallerReference="boot")["HostedZone"]["Id"].split("/")[-1]
    lines: list[str] = []
    without = Settings.defaults()
    bootstrap_stage(without, clients, lines.append, function_prefix="jams-dr-dev-")
    cfn = clients.client("cloudformation", without.recovery_region)
    assert describe_stack(cfn, traffic.traffic_stack_name(without.environment)) is None
    assert any("no traffic stack" in line for line in lines)

    with_zone = Settings.defaults(hosted_zone_id=zone_id, dns_zone_name="jams.example.internal")
    bootstrap_stage(with_zone, clients, lines.append, function_prefix="jams-dr-dev-")
    stack = describe_stack(cfn, traffic.traffic_stack_name(with_zone.environment))
    assert stack is not None and stack["StackStatus"] == "CREATE_COMPLETE"
    alarms = clients.client("cloudwatch", with_zone.recovery_region).describe_alarms(
        AlarmNames=[traffic.switch_alarm_name(with_zone.environment)])["MetricAlarms"]
    assert alarms[0]["StateValue"] == "OK"  # bootstrap published PrimaryServes=1
