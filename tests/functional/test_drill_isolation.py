"""A drill cannot touch production: the template (Mode=drill resolved), the stack moto builds from it,
and the drill's own verification, which reads the isolation back from AWS and fails naming what is open.

AWS facts relied on (and restored in the embedded AWS by jamsdr/network_fidelity.py where moto drops
them; each has a test below):
- AWS::EC2::SecurityGroup (CloudFormation template reference): "When you create a security group, if
  you do not add egress rules, we add egress rules that allow all outbound IPv4 and IPv6 traffic.
  Otherwise, we do not add them." Cross-group rules are AWS::EC2::SecurityGroupIngress/Egress resources.
- A subnet with MapPublicIpOnLaunch true gives its instances a public IPv4 address (VPC User Guide,
  "IP addressing for your VPCs and subnets"); an explicit AWS::EC2::SubnetRouteTableAssociation
  replaces the VPC's main route table for the subnet (VPC User Guide, "Subnet route tables").
- AWS::RDS::DBInstance VPCSecurityGroups are the instance's VPC security groups.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock
from chalicelib.keys import APP_PARAMETERS_KEY
from chalicelib.notify import Notifier
from chalicelib.report import build_report
from chalicelib.settings import Settings
from chalicelib.stacks import describe_stack
from chalicelib.workflow.engine import Progress
from chalicelib.workflow.records import Execution
from chalicelib.workflow.runners import InProcessRunner
from chalicelib.workflow.starter import no_launch, start_drill
from chalicelib.workflow.steps.isolation import NO_TRAFFIC_CIDR, monitoring_service
from jamsdr.deploy import app_parameters, deploy_stack
from jamsdr.embedded import EMULATOR_APP_PARAMETERS, EmbeddedAws, World, build_world
from jamsdr.report_render import to_html, to_markdown
from tests.functional.test_recovery_chain import pin_recovery_point

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
OPEN = ("0.0.0.0/0", "::/0")
HOST_TYPES = ("AWS::EC2::Instance", "AWS::EC2::LaunchTemplate", "AWS::ElasticLoadBalancingV2::LoadBalancer",
              "AWS::RDS::DBInstance", "AWS::EC2::VPCEndpoint")

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning")


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((TEMPLATES / name).read_text())
    return document


# ------------------------------------------------------------------------------- the template, resolved


class Resolved:
    """A template under given parameter values: conditions, Fn::If and Refs to parameters resolved."""

    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, str]) -> None:
        self.template = template
        self.parameters = {k: str(v.get("Default", "")) for k, v in template.get("Parameters", {}).items()}
        self.parameters.update(parameters)
        self.conditions = {name: self._condition(body) for name, body in template.get("Conditions", {}).items()}

    def _condition(self, body: Any) -> bool:
        if isinstance(body, dict) and "Condition" in body:
            return self._condition(self.template["Conditions"][body["Condition"]])
        [(function, args)] = body.items()
        if function == "Fn::Equals":
            return bool(self._scalar(args[0]) == self._scalar(args[1]))
        if function == "Fn::Not":
            return not self._condition(args[0])
        if function == "Fn::And":
            return all(self._condition(a) for a in args)
        if function == "Fn::Or":
            return any(self._condition(a) for a in args)
        raise AssertionError(f"unknown condition function {function}")

    def _scalar(self, node: Any) -> Any:
        return self.parameters[node["Ref"]] if isinstance(node, dict) and "Ref" in node else node

    def value(self, node: Any) -> Any:
        """Fn::If and Refs to parameters resolved; Refs to resources stay {"Ref": name}."""
        if isinstance(node, list):
            return [self.value(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "Fn::If" in node:
            name, yes, no = node["Fn::If"]
            return self.value(yes if self.conditions[name] else no)
        if set(node) == {"Ref"} and node["Ref"] in self.parameters:
            return {"Parameter": node["Ref"]}
        return {k: self.value(v) for k, v in node.items()}

    def resources(self) -> dict[str, dict[str, Any]]:
        return {name: {**body, "Properties": self.value(body.get("Properties", {}))}
                for name, body in self.template["Resources"].items()
                if self.conditions.get(body.get("Condition", ""), True)}


def _refs(node: Any) -> list[dict[str, str]]:
    """Every {"Ref": ...} / {"Parameter": ...} in a resolved property."""
    if isinstance(node, list):
        return [r for n in node for r in _refs(n)]
    if isinstance(node, dict):
        if set(node) in ({"Ref"}, {"Parameter"}):
            return [node]
        return [r for v in node.values() for r in _refs(v)]
    return []


def _network_resource(network: Mapping[str, Any], output: str) -> tuple[str, dict[str, Any]]:
    """The network stack's resource behind one of its outputs (the app stack takes outputs by name)."""
    name = network["Outputs"][output]["Value"]["Ref"]
    return name, network["Resources"][name]


Groups = dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]]


def _hosts_network(resources: Mapping[str, dict[str, Any]], network: Mapping[str, Any],
                   net_resources: dict[str, dict[str, Any]]) -> tuple[Groups, dict[str, str]]:
    """The security groups (name -> resource, the template it lives in) and subnets (parameter -> user)
    of every drill host, the load balancer, the database and the endpoint."""
    groups: Groups = {}
    subnets: dict[str, str] = {}
    for name, resource in resources.items():
        props = resource["Properties"]
        if resource["Type"] in HOST_TYPES:
            data = props.get("LaunchTemplateData", props)
            for ref in _refs([data.get(k, []) for k in ("SecurityGroupIds", "SecurityGroups", "VPCSecurityGroups")]):
                if "Ref" in ref:
                    groups[ref["Ref"]] = (resources[ref["Ref"]], dict(resources))
                else:
                    net_name, net_group = _network_resource(network, ref["Parameter"])
                    groups[f"network:{net_name}"] = (net_group, net_resources)
        keys: tuple[str, ...] = {"AWS::AutoScaling::AutoScalingGroup": ("VPCZoneIdentifier",),
                                 "AWS::RDS::DBSubnetGroup": ("SubnetIds",)}.get(resource["Type"], ())
        if resource["Type"] in HOST_TYPES:
            keys = ("SubnetId", "Subnets", "SubnetIds")
        for ref in _refs([props.get(k, []) for k in keys]):
            assert "Parameter" in ref, f"{name} must use a network stack subnet"
            subnets[ref["Parameter"]] = name
    return groups, subnets


def _rules_of(local: str, group: Mapping[str, Any], scope: Mapping[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """Inline rules plus the separate Ingress/Egress resources of one group."""
    rules = {"ingress": list(group["Properties"].get("SecurityGroupIngress") or []),
             "egress": list(group["Properties"].get("SecurityGroupEgress") or [])}
    for other in scope.values():
        direction = {"AWS::EC2::SecurityGroupIngress": "ingress",
                     "AWS::EC2::SecurityGroupEgress": "egress"}.get(other["Type"])
        if direction and other["Properties"].get("GroupId") == {"Ref": local}:
            rules[direction].append(other["Properties"])
    return rules


def _group_exposure(groups: Groups) -> list[str]:
    problems: list[str] = []
    for label, (group, scope) in sorted(groups.items()):
        if not group["Properties"].get("SecurityGroupEgress"):
            problems.append(f"{label} names no egress rule: AWS adds allow-all egress to 0.0.0.0/0 and ::/0")
        for direction, rules in _rules_of(label.removeprefix("network:"), group, scope).items():
            problems += [f"{label} allows {direction} {rule.get('IpProtocol')} {rule.get('FromPort', '')} "
                         f"with {rule[key]}" for rule in rules for key in ("CidrIp", "CidrIpv6")
                         if rule.get(key) in OPEN]
    return problems


def _subnet_exposure(subnets: Mapping[str, str], app: Mapping[str, Any], network: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    # Routes either app mode adds to a network route table it is handed (the NAT routes of Mode=active
    # land in the same tables whatever mode a later stack runs in).
    app_routes = [(n, r["Properties"]["RouteTableId"]) for mode in ("active", "drill")
                  for n, r in Resolved(app, {"Mode": mode}).resources().items() if r["Type"] == "AWS::EC2::Route"]
    for parameter, user in sorted(subnets.items()):
        net_name, subnet = _network_resource(network, parameter)
        if subnet["Properties"].get("MapPublicIpOnLaunch") is True:
            problems.append(f"subnet {net_name} (of {user}) maps public IPs on launch")
        tables = [r["Properties"]["RouteTableId"]["Ref"] for r in network["Resources"].values()
                  if r["Type"] == "AWS::EC2::SubnetRouteTableAssociation"
                  and r["Properties"]["SubnetId"] == {"Ref": net_name}]
        if not tables:
            problems.append(f"subnet {net_name} (of {user}) has no route table of its own")
        for table in tables:
            outputs = [{"Parameter": o} for o, v in network["Outputs"].items() if v["Value"] == {"Ref": table}]
            routes = [n for n, r in network["Resources"].items()
                      if r["Type"] == "AWS::EC2::Route" and r["Properties"]["RouteTableId"] == {"Ref": table}]
            routes += sorted({n for n, target in app_routes if target in outputs})
            problems += [f"subnet {net_name} (of {user}) route table {table} has route {r}" for r in routes]
    return problems


def drill_exposure(app: Mapping[str, Any], network: Mapping[str, Any], mode: str = "drill") -> list[str]:
    """What lets a drill host reach, or be reached from, the internet, per the templates."""
    resources = Resolved(app, {"Mode": mode}).resources()
    groups, subnets = _hosts_network(resources, network, Resolved(network, {}).resources())
    return _group_exposure(groups) + _subnet_exposure(subnets, app, network)


def test_drill_hosts_have_no_way_to_or_from_the_internet_in_the_templates() -> None:
    assert drill_exposure(load("jams-app.yaml"), load("jams-network.yaml")) == []


def test_the_template_check_fails_on_an_open_drill_group_and_on_production_hosts() -> None:
    app, network = load("jams-app.yaml"), load("jams-network.yaml")
    opened = copy.deepcopy(app)
    opened["Resources"]["DrillHostSecurityGroup"]["Properties"]["SecurityGroupEgress"].append(
        {"IpProtocol": "-1", "CidrIpv6": "::/0"})
    assert drill_exposure(opened, network) == [
        "DrillHostSecurityGroup allows egress -1  with ::/0"]
    no_egress = copy.deepcopy(app)
    del no_egress["Resources"]["DrillDatabaseSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert any("DrillDatabaseSecurityGroup" in p and "allow-all egress" in p for p in drill_exposure(no_egress, network))
    # Mode=active is what a drill must not look like: public subnets, internet-facing groups, NAT routes.
    active = drill_exposure(app, network, mode="active")
    assert any("network:SchedulerSecurityGroup" in p and "0.0.0.0/0" in p for p in active)
    assert any("PublicSubnet1" in p and "maps public IPs" in p for p in active)
    assert any("PrivateRouteTable1" in p and "PrivateRoute1" in p for p in active)


def test_drill_dns_never_names_production() -> None:
    """Mode=drill creates no Route 53 record (the stable name is written only by switch_traffic, which
    is no drill state), and the drill's endpoint private DNS covers only CloudWatch's service name."""
    resolved = Resolved(load("jams-app.yaml"), {"Mode": "drill", "HostedZoneId": "Z1", "DnsZoneName": "a.example"})
    kinds = {r["Type"] for r in resolved.resources().values()}
    assert not {k for k in kinds if k.startswith("AWS::Route53::")}
    endpoint = resolved.resources()["MonitoringEndpoint"]["Properties"]
    assert endpoint["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.monitoring"}
    assert endpoint["PrivateDnsEnabled"] is True and endpoint["VpcEndpointType"] == "Interface"


# ------------------------------------------------------------------------------- the stacks, under moto


@pytest.fixture
def world(embedded: EmbeddedAws, clients: ClientFactory) -> World:
    return build_world(clients, Settings.defaults())


def _drill_stack(clients: ClientFactory, world: World, name: str = "jams-drill-tmpl") -> dict[str, str]:
    s = world.settings
    return deploy_stack(clients, s.recovery_region, name, "jams-app.yaml", app_parameters(
        world.standby, EnvironmentName=s.environment, Mode="drill",
        SchedulerInstanceProfileName=world.support["SchedulerInstanceProfileName"], **EMULATOR_APP_PARAMETERS))


def _permissions(group: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(direction, cidr) for direction, key in (("in", "IpPermissions"), ("out", "IpPermissionsEgress"))
            for p in group[key] for cidr in [*(r["CidrIp"] for r in p.get("IpRanges", [])),
                                             *(r["CidrIpv6"] for r in p.get("Ipv6Ranges", []))]]


def test_a_drill_stack_under_moto_has_no_group_open_to_the_internet(world: World, clients: ClientFactory) -> None:
    s = world.settings
    out = _drill_stack(clients, world)
    ec2 = clients.client("ec2", s.recovery_region)
    ids = [out["PrimarySchedulerInstanceId"], out["FailoverSchedulerInstanceId"]]
    asg = clients.client("autoscaling", s.recovery_region).describe_auto_scaling_groups(
        AutoScalingGroupNames=[out["AgentAutoScalingGroupName"]])["AutoScalingGroups"][0]
    ids += [i["InstanceId"] for i in asg["Instances"]]
    instances = [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]]
    assert len(instances) == 4
    db = clients.client("rds", s.recovery_region).describe_db_instances(
        DBInstanceIdentifier=out["DatabaseInstanceId"])["DBInstances"][0]
    group_ids = {g["GroupId"] for i in instances for g in i["SecurityGroups"]}
    group_ids |= {g["VpcSecurityGroupId"] for g in db["VpcSecurityGroups"]}
    assert group_ids and out["DrillHostSecurityGroupId"] in group_ids
    groups = ec2.describe_security_groups(GroupIds=sorted(group_ids))["SecurityGroups"]
    assert [(g["GroupId"], d, c) for g in groups for d, c in _permissions(g) if c in OPEN] == []
    assert {c for g in groups for _, c in _permissions(g)} <= {NO_TRAFFIC_CIDR}
    assert not [i["InstanceId"] for i in instances if i.get("PublicIpAddress")]
    assert db["PubliclyAccessible"] is False
    drill_subnets = {world.standby["DrillSubnet1Id"], world.standby["DrillSubnet2Id"]}
    assert {i["SubnetId"] for i in instances} <= drill_subnets
    assert {x["SubnetIdentifier"] for x in db["DBSubnetGroup"]["Subnets"]} == drill_subnets
    subnets = ec2.describe_subnets(SubnetIds=sorted(drill_subnets))["Subnets"]
    assert [x["MapPublicIpOnLaunch"] for x in subnets] == [False, False]
    [table] = ec2.describe_route_tables(
        Filters=[{"Name": "association.subnet-id", "Values": sorted(drill_subnets)}])["RouteTables"]
    assert [r["GatewayId"] for r in table["Routes"]] == ["local"]
    [endpoint] = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [world.standby["VpcId"]]}])[
        "VpcEndpoints"]
    assert endpoint["ServiceName"] == monitoring_service(s.recovery_region) and endpoint["PrivateDnsEnabled"] is True


def test_embedded_aws_keeps_the_network_facts_moto_drops(world: World, clients: ClientFactory) -> None:
    """Each fact below is AWS's (module docstring); moto 5.2.5 loses it without jamsdr/network_fidelity.py."""
    s = world.settings
    ec2 = clients.client("ec2", s.primary_region)
    # A group that names no egress rule keeps AWS's allow-all default (the network stack's groups).
    [production] = ec2.describe_security_groups(GroupIds=[world.network["SchedulerSecurityGroupId"]])["SecurityGroups"]
    assert ("out", "0.0.0.0/0") in _permissions(production)
    # Public subnets map public IPs; their instances get one, with the template's group ids.
    [public] = ec2.describe_subnets(SubnetIds=[world.network["PublicSubnet1Id"]])["Subnets"]
    assert public["MapPublicIpOnLaunch"] is True
    [scheduler] = ec2.describe_instances(InstanceIds=[world.app["PrimarySchedulerInstanceId"]])["Reservations"][0][
        "Instances"]
    assert scheduler.get("PublicIpAddress")
    assert [g["GroupId"] for g in scheduler["SecurityGroups"]] == [world.network["SchedulerSecurityGroupId"]]
    # An explicit association is what DescribeRouteTables shows for the subnet (not the main table).
    [table] = ec2.describe_route_tables(
        Filters=[{"Name": "association.subnet-id", "Values": [world.network["PublicSubnet1Id"]]}])["RouteTables"]
    assert any(r.get("GatewayId", "").startswith("igw-") for r in table["Routes"])
    # The database has the template's VPC security group.
    db = clients.client("rds", s.primary_region).describe_db_instances(
        DBInstanceIdentifier=world.app["DatabaseInstanceId"])["DBInstances"][0]
    assert [g["VpcSecurityGroupId"] for g in db["VpcSecurityGroups"]] == [world.network["DatabaseSecurityGroupId"]]
    # SecurityGroupEgress replaces the default; AWS::EC2::SecurityGroupEgress adds a cross-group rule.
    out = _drill_stack(clients, world, "jams-drill-facts")
    [hosts] = clients.client("ec2", s.recovery_region).describe_security_groups(
        GroupIds=[out["DrillHostSecurityGroupId"]])["SecurityGroups"]
    egress = sorted((p["IpProtocol"], p.get("FromPort")) for p in hosts["IpPermissionsEgress"])
    assert egress == [("-1", None), ("icmp", 252), ("tcp", 443), ("tcp", 1433)]


# ------------------------------------------------------------------------------- the drill's verification


@pytest.fixture
def drill_env(world: World, clients: ClientFactory) -> tuple[World, FakeClock, Notifier]:
    s = world.settings
    assert s.artifact_bucket
    clients.client("s3", s.recovery_region).put_object(
        Bucket=s.artifact_bucket, Key=APP_PARAMETERS_KEY,
        Body=json.dumps({"default": EMULATOR_APP_PARAMETERS}).encode())
    pin_recovery_point(clients, s)
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))
    return world, clock, Notifier(s, clients, clock)


def _run(clients: ClientFactory, env: tuple[World, FakeClock, Notifier], drill_id: str,
         before_isolation: Any = None) -> Execution:
    world, clock, notifier = env

    def on_progress(progress: Progress) -> None:
        if progress.kind == "state-started" and progress.state == "verify_isolation" and before_isolation:
            before_isolation()

    started = start_drill(world.settings, clients, clock, drill_id, launcher=no_launch)
    return InProcessRunner(world.settings, clients, clock, notifier, on_progress=on_progress).run(started.execution_id)


def test_a_drill_reports_the_isolation_it_verified(clients: ClientFactory,
                                                   drill_env: tuple[World, FakeClock, Notifier]) -> None:
    s = drill_env[0].settings
    execution = _run(clients, drill_env, "iso00001")
    assert execution.status == "succeeded", execution.error
    isolation = execution.item["report"]["isolation"]
    assert isolation["verified"] is True and isolation["public_ips"] == 0
    assert isolation["db_publicly_accessible"] is False and isolation["dns_records"] == 0
    assert len(isolation["hosts"]) == 4
    [endpoint] = isolation["endpoints"]
    assert endpoint["service"] == monitoring_service(s.recovery_region) and endpoint["private_dns"] is True
    assert {g["role"] for g in isolation["security_groups"]} == {"hosts", "database", "endpoint"}
    rules = [r for g in isolation["security_groups"] for r in (*g["ingress"], *g["egress"])]
    assert rules and not [r for r in rules if r.endswith(OPEN)]
    assert [t["routes"] for t in isolation["routes"]] == [["10.0.0.0/16 -> local"]]
    verify = next(h for h in execution.history if h["name"] == "verify_isolation")
    assert verify["outcome"] == "succeeded"
    hosts_group = next(g["id"] for g in isolation["security_groups"] if g["role"] == "hosts")
    markdown, page = to_markdown(execution.item["report"]), to_html(execution.item["report"])
    assert "## Isolation (read back from AWS)" in markdown and hosts_group in markdown
    assert "<h2>Isolation (read back from AWS)</h2>" in page and endpoint["id"] in page
    assert describe_stack(clients.client("cloudformation", s.recovery_region), s.drill_stack_name("iso00001")) is None


def test_an_opened_group_fails_the_drill_by_name_and_it_is_still_torn_down(
        clients: ClientFactory, drill_env: tuple[World, FakeClock, Notifier]) -> None:
    world = drill_env[0]
    s = world.settings
    stack_name = s.drill_stack_name("iso00002")
    opened: list[str] = []

    def open_hosts_group() -> None:
        cfn = clients.client("cloudformation", s.recovery_region)
        stack = describe_stack(cfn, stack_name)
        assert stack is not None
        group = next(o["OutputValue"] for o in stack["Outputs"] if o["OutputKey"] == "DrillHostSecurityGroupId")
        clients.client("ec2", s.recovery_region).authorize_security_group_egress(
            GroupId=group, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
                                           "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        opened.append(group)

    execution = _run(clients, drill_env, "iso00002", before_isolation=open_hosts_group)

    assert execution.status == "failed" and execution.failed_state == "verify_isolation"
    assert opened and f"security group {opened[0]}" in (execution.error or "")
    assert "allows egress tcp 443 to 0.0.0.0/0" in (execution.error or "")
    assert "IsolationViolated" in (execution.error or "")
    outcomes = {h["name"]: h["outcome"] for h in execution.history}
    assert outcomes["verify_isolation"] == "failed" and outcomes["teardown"] == "succeeded"
    assert describe_stack(clients.client("cloudformation", s.recovery_region), stack_name) is None
    report = execution.item["report"]
    assert report["outcome"] == "failed" and report["isolation"] is None


def test_report_isolation_is_optional_and_null_by_default() -> None:
    item: dict[str, Any] = {"kind": "drill", "execution_id": "drill-x", "status": "succeeded", "data": {}}
    assert build_report(item)["isolation"] is None
    verified = {"verified": True, "public_ips": 0}
    assert build_report({**item, "data": {"isolation": verified}})["isolation"] == verified

