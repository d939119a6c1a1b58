"""A drill cannot touch production: its isolation, read back from AWS once its hosts are up.

A drill restores the production database into the recovery region; a restored JAMS that could reach
real systems (or be reached) might run production jobs. templates/jams-app.yaml builds Mode=drill
isolated; this step does not take that on trust. It reads back what AWS actually made, for every
host verify counted (the two schedulers and the agent pool's instances), the internal load balancer
and the restored database:

- every security group of those resources (DescribeSecurityGroups): no rule to or from 0.0.0.0/0 or
  ::/0, no CIDR or prefix list outside the VPC, and for the hosts' and the database's groups no
  reference to a group that is not the drill's own;
- the route table of every subnet they use (DescribeRouteTables; the VPC's main table when a subnet
  has no association of its own, as AWS routes it): the VPC's local route only, so no internet, NAT,
  transit or peering gateway;
- no public IPv4 address on any host (DescribeInstances) and a database that is not publicly
  accessible (DescribeDBInstances);
- a CloudWatch interface endpoint (``com.amazonaws.<region>.monitoring``) with private DNS in the VPC
  (DescribeVpcEndpoints) that the hosts' groups may reach on 443, so heartbeats still arrive;
- no DNS record in the drill stack (ListStackResources: no AWS::Route53 resource). The drill never
  writes the stable production name either (switch_traffic is not a drill state).

Any violation fails the drill naming the resource; its teardown still runs (the drill catches every
failure to ``teardown``, chalicelib/workflow/definitions.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chalicelib.rds import describe_instance
from chalicelib.stacks import describe_stack, outputs_of
from chalicelib.workflow.model import Done, StepContext, StepError, StepResult
from chalicelib.workflow.steps.common import now_iso, stack_resources, target_of

OPEN_CIDRS = frozenset({"0.0.0.0/0", "::/0"})
# The template's "allow nothing" egress rule (ICMP type 252 code 86 to the broadcast address, the
# placeholder the AWS CDK writes): it only keeps AWS from adding its allow-all egress default.
NO_TRAFFIC_CIDR = "255.255.255.255/32"
HTTPS = 443
ISOLATION_CODE = "IsolationViolated"


def monitoring_service(region: str) -> str:
    """CloudWatch's interface endpoint service (AWS PrivateLink, "AWS services that integrate")."""
    return f"com.amazonaws.{region}.monitoring"


@dataclass
class _Drill:
    """What the drill's resources are, as AWS describes them."""

    hosts: set[str] = field(default_factory=set)
    host_groups: set[str] = field(default_factory=set)
    db_groups: set[str] = field(default_factory=set)
    subnets: set[str] = field(default_factory=set)
    vpc_ids: set[str] = field(default_factory=set)
    db_public: bool = False
    problems: list[str] = field(default_factory=list)


def verify_isolation(ctx: StepContext) -> StepResult:
    """Read the drill's network back from AWS; fail naming every resource that breaks isolation."""
    target = target_of(ctx)
    if target.mode != "drill":
        return Done(note="not a drill: nothing to isolate")
    region = target.region
    cfn = ctx.clients.client("cloudformation", region)
    stack = describe_stack(cfn, target.stack_name)
    if stack is None:
        raise StepError(f"stack {target.stack_name} disappeared from {region}", code=ISOLATION_CODE)
    outputs = outputs_of(stack)
    ec2: Any = ctx.clients.client("ec2", region)
    drill = _Drill()
    _read_hosts(ctx, region, target.stack_name, outputs, ec2, drill)
    _read_database(ctx, region, outputs, drill)
    if len(drill.vpc_ids) != 1:
        raise StepError(f"drill resources span VPCs {sorted(drill.vpc_ids) or 'none'}: expected one",
                        code=ISOLATION_CODE)
    vpc_id = next(iter(drill.vpc_ids))
    vpc_cidrs = _vpc_cidrs(ec2, vpc_id)
    problems = drill.problems

    endpoints, endpoint_groups, endpoint_subnets, endpoint_problems = _monitoring_endpoints(ec2, region, vpc_id)
    problems += endpoint_problems
    own = drill.host_groups | drill.db_groups
    groups = _security_groups(ec2, own | endpoint_groups)
    for group in groups:
        problems += _group_problems(group, vpc_cidrs, own | endpoint_groups if group["GroupId"] in own else None)
    problems += _heartbeat_path(groups, drill.host_groups, endpoint_groups, bool(endpoints))
    routes, route_problems = _routes(ec2, vpc_id, drill.subnets | endpoint_subnets)
    problems += route_problems
    dns = [r for r in _resource_types(cfn, target.stack_name) if r.startswith("AWS::Route53::")]
    problems += [f"drill stack {target.stack_name} holds a DNS resource ({kind})" for kind in dns]

    if problems:
        raise StepError(f"drill {target.stack_name} is not isolated: " + "; ".join(problems), code=ISOLATION_CODE)
    isolation = {
        "verified": True,
        "verified_at": now_iso(ctx.clock),
        "vpc": {"id": vpc_id, "cidrs": vpc_cidrs},
        "hosts": sorted(drill.hosts),
        "security_groups": [_group_summary(g, drill.host_groups, drill.db_groups) for g in groups],
        "routes": routes,
        "endpoints": endpoints,
        "public_ips": 0,
        "db_publicly_accessible": drill.db_public,
        "dns_records": 0,
    }
    return Done({"isolation": isolation},
                note=f"isolated: {len(drill.hosts)} host(s) without public IP, {len(groups)} security group(s) "
                     f"closed to the internet, {len(routes)} route table(s) with the local route only, "
                     f"CloudWatch through {', '.join(e['id'] for e in endpoints)}")


def _read_hosts(ctx: StepContext, region: str, stack_name: str, outputs: Mapping[str, str], ec2: Any,
                drill: _Drill) -> None:
    """The schedulers, the agent pool's instances and subnets, and the internal load balancer."""
    drill.hosts, drill.subnets = _hosts(ctx, region, outputs)
    for instance in _instances(ec2, drill.hosts):
        drill.problems += [f"host {instance['InstanceId']} has public IP {ip}" for ip in _public_ips(instance)]
        drill.host_groups |= {str(g["GroupId"]) for g in instance.get("SecurityGroups", [])}
        if instance.get("SubnetId"):
            drill.subnets.add(str(instance["SubnetId"]))
        if instance.get("VpcId"):
            drill.vpc_ids.add(str(instance["VpcId"]))
    for balancer in _load_balancers(ctx, region, stack_name):
        if balancer.get("Scheme") != "internal":
            drill.problems.append(f"load balancer {balancer.get('LoadBalancerName')} is {balancer.get('Scheme')}, "
                                  "not internal")
        drill.host_groups |= {str(g) for g in balancer.get("SecurityGroups") or []}
        drill.subnets |= {str(z["SubnetId"]) for z in balancer.get("AvailabilityZones", []) if z.get("SubnetId")}
    if not drill.host_groups:
        drill.problems.append("no security group found on the drill hosts")


def _read_database(ctx: StepContext, region: str, outputs: Mapping[str, str], drill: _Drill) -> None:
    db_id = outputs.get("DatabaseInstanceId", "")
    database = describe_instance(ctx.clients.client("rds", region), db_id) if db_id else None
    if database is None:
        raise StepError(f"drill database {db_id or '(no DatabaseInstanceId output)'} not found in {region}",
                        code=ISOLATION_CODE)
    drill.db_public = bool(database.get("PubliclyAccessible"))
    if drill.db_public:
        drill.problems.append(f"database {db_id} is publicly accessible")
    drill.db_groups = {str(g["VpcSecurityGroupId"]) for g in database.get("VpcSecurityGroups", [])}
    if not drill.db_groups:
        drill.problems.append(f"database {db_id} has no VPC security group")
    subnet_group = database.get("DBSubnetGroup") or {}
    drill.subnets |= {str(s["SubnetIdentifier"]) for s in subnet_group.get("Subnets", [])}
    if subnet_group.get("VpcId"):
        drill.vpc_ids.add(str(subnet_group["VpcId"]))


# ------------------------------------------------------------------------------- reads


def _hosts(ctx: StepContext, region: str, outputs: Mapping[str, str]) -> tuple[set[str], set[str]]:
    """Scheduler and agent instance ids, and the subnets the agent pool may launch into."""
    hosts = {outputs[k] for k in ("PrimarySchedulerInstanceId", "FailoverSchedulerInstanceId") if outputs.get(k)}
    subnets: set[str] = set()
    group_name = outputs.get("AgentAutoScalingGroupName")
    if group_name:
        autoscaling: Any = ctx.clients.client("autoscaling", region)
        for group in autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name]).get(
                "AutoScalingGroups", []):
            hosts |= {str(i["InstanceId"]) for i in group.get("Instances", [])}
            subnets |= {s for s in str(group.get("VPCZoneIdentifier") or "").split(",") if s}
    return hosts, subnets


def _instances(ec2: Any, ids: Iterable[str]) -> list[dict[str, Any]]:
    wanted = sorted(ids)
    if not wanted:
        return []
    found: list[dict[str, Any]] = []
    for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=wanted):
        for reservation in page.get("Reservations", []):
            found += [dict(i) for i in reservation.get("Instances", [])]
    return found


def _public_ips(instance: Mapping[str, Any]) -> list[str]:
    addresses = {str(instance["PublicIpAddress"])} if instance.get("PublicIpAddress") else set()
    for interface in instance.get("NetworkInterfaces", []):
        public = (interface.get("Association") or {}).get("PublicIp")
        if public:
            addresses.add(str(public))
    return sorted(addresses)


def _load_balancers(ctx: StepContext, region: str, stack_name: str) -> list[dict[str, Any]]:
    cfn = ctx.clients.client("cloudformation", region)
    arns = stack_resources(cfn, stack_name, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    if not arns:
        return []
    elbv2: Any = ctx.clients.client("elbv2", region)
    return [dict(b) for b in elbv2.describe_load_balancers(LoadBalancerArns=arns).get("LoadBalancers", [])]


def _vpc_cidrs(ec2: Any, vpc_id: str) -> list[str]:
    vpc = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]
    cidrs = [str(a["CidrBlock"]) for a in vpc.get("CidrBlockAssociationSet", [])
             if (a.get("CidrBlockState") or {}).get("State", "associated") == "associated"]
    return cidrs or [str(vpc["CidrBlock"])]


def _security_groups(ec2: Any, ids: Iterable[str]) -> list[dict[str, Any]]:
    wanted = sorted(ids)
    if not wanted:
        return []
    return sorted((dict(g) for g in ec2.describe_security_groups(GroupIds=wanted)["SecurityGroups"]),
                  key=lambda g: str(g["GroupId"]))


def _resource_types(cfn: Any, stack_name: str) -> list[str]:
    types: list[str] = []
    for page in cfn.get_paginator("list_stack_resources").paginate(StackName=stack_name):
        types += [str(s.get("ResourceType")) for s in page.get("StackResourceSummaries", [])]
    return types


# ------------------------------------------------------------------------------- rules


def _cidrs(permission: Mapping[str, Any]) -> list[str]:
    return ([str(r["CidrIp"]) for r in permission.get("IpRanges", [])]
            + [str(r["CidrIpv6"]) for r in permission.get("Ipv6Ranges", [])])


def _inside(cidr: str, vpc_cidrs: Sequence[str]) -> bool:
    network = ipaddress.ip_network(cidr, strict=False)
    return any(network.version == ipaddress.ip_network(v).version
               and network.subnet_of(ipaddress.ip_network(v))  # type: ignore[arg-type]
               for v in vpc_cidrs)


def _describe_rule(permission: Mapping[str, Any]) -> str:
    protocol = str(permission.get("IpProtocol"))
    if protocol == "-1":
        return "all traffic"
    low, high = permission.get("FromPort"), permission.get("ToPort")
    return f"{protocol} {low}" if low == high else f"{protocol} {low}-{high}"


def _group_problems(group: Mapping[str, Any], vpc_cidrs: Sequence[str], allowed_peers: set[str] | None) -> list[str]:
    """What opens ``group`` beyond the drill. ``allowed_peers`` None: any group reference is fine (the
    CloudWatch endpoint's group, which production hosts sharing the VPC may reach too)."""
    name = f"security group {group['GroupId']} ({group.get('GroupName')})"
    problems: list[str] = []
    for direction, key in (("ingress", "IpPermissions"), ("egress", "IpPermissionsEgress")):
        peer_word = "from" if direction == "ingress" else "to"
        for permission in group.get(key, []):
            rule = _describe_rule(permission)
            for cidr in _cidrs(permission):
                if cidr in OPEN_CIDRS:
                    problems.append(f"{name} allows {direction} {rule} {peer_word} {cidr}")
                elif cidr != NO_TRAFFIC_CIDR and not _inside(cidr, vpc_cidrs):
                    problems.append(f"{name} allows {direction} {rule} {peer_word} {cidr}, outside the VPC")
            for prefix in permission.get("PrefixListIds", []):
                problems.append(f"{name} allows {direction} {rule} {peer_word} prefix list "
                                f"{prefix.get('PrefixListId')}")
            if allowed_peers is None:
                continue
            for pair in permission.get("UserIdGroupPairs", []):
                peer = str(pair.get("GroupId"))
                if peer not in allowed_peers:
                    problems.append(f"{name} allows {direction} {rule} {peer_word} {peer}, not a drill group")
    return problems


def _admits(permission: Mapping[str, Any], port: int) -> bool:
    if str(permission.get("IpProtocol")) == "-1":
        return True
    if str(permission.get("IpProtocol")) not in ("tcp", "6"):
        return False
    return int(permission.get("FromPort", -1)) <= port <= int(permission.get("ToPort", -1))


def _peers(group: Mapping[str, Any], key: str, port: int) -> set[str]:
    return {str(pair.get("GroupId")) for p in group.get(key, []) if _admits(p, port)
            for pair in p.get("UserIdGroupPairs", [])}


def _heartbeat_path(groups: Sequence[Mapping[str, Any]], hosts: set[str], endpoint: set[str],
                    has_endpoint: bool) -> list[str]:
    """The hosts may send 443 to the endpoint's group and that group admits them: heartbeats arrive."""
    if not has_endpoint:
        return []
    by_id = {str(g["GroupId"]): g for g in groups}
    out = set().union(*(_peers(by_id[h], "IpPermissionsEgress", HTTPS) for h in hosts if h in by_id))
    into = set().union(*(_peers(by_id[e], "IpPermissions", HTTPS) for e in endpoint if e in by_id))
    problems = []
    if not out & endpoint:
        problems.append(f"drill hosts' groups {sorted(hosts)} allow no egress on {HTTPS} to the CloudWatch "
                        f"endpoint's groups {sorted(endpoint)}: heartbeats cannot arrive")
    if not into & hosts:
        problems.append(f"the CloudWatch endpoint's groups {sorted(endpoint)} admit nothing on {HTTPS} from the "
                        f"drill hosts' groups {sorted(hosts)}: heartbeats cannot arrive")
    return problems


def _monitoring_endpoints(
    ec2: Any, region: str, vpc_id: str
) -> tuple[list[dict[str, Any]], set[str], set[str], list[str]]:
    service = monitoring_service(region)
    found = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc_id]},
                                                {"Name": "service-name", "Values": [service]}]).get("VpcEndpoints", [])
    usable = [e for e in found if e.get("VpcEndpointType") == "Interface" and e.get("PrivateDnsEnabled")
              and str(e.get("State", "")).lower() == "available"]
    if not usable:
        seen = [f"{e.get('VpcEndpointId')} ({e.get('VpcEndpointType')}, private DNS "
                f"{e.get('PrivateDnsEnabled')}, {e.get('State')})" for e in found]
        return [], set(), set(), [f"VPC {vpc_id} has no available interface endpoint for {service} with private "
                                  f"DNS ({', '.join(seen) or 'none'}): the drill's heartbeats cannot reach CloudWatch"]
    groups = {str(g["GroupId"]) for e in usable for g in e.get("Groups", [])}
    subnets = {str(s) for e in usable for s in e.get("SubnetIds", [])}
    summary = [{"id": str(e["VpcEndpointId"]), "service": service, "type": "Interface", "private_dns": True,
                "security_groups": sorted(str(g["GroupId"]) for g in e.get("Groups", [])),
                "subnets": sorted(str(s) for s in e.get("SubnetIds", []))} for e in usable]
    return summary, groups, subnets, []


def _routes(ec2: Any, vpc_id: str, subnets: Iterable[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every route table the subnets use, with anything but the VPC's local route as a problem."""
    tables: dict[str, dict[str, Any]] = {}
    users: dict[str, set[str]] = {}
    for subnet in sorted(subnets):
        found = ec2.describe_route_tables(
            Filters=[{"Name": "association.subnet-id", "Values": [subnet]}]).get("RouteTables", [])
        if not found:  # no association of its own: AWS routes the subnet by the VPC's main table
            found = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]},
                                                       {"Name": "association.main", "Values": ["true"]}])["RouteTables"]
        for table in found:
            tables[str(table["RouteTableId"])] = dict(table)
            users.setdefault(str(table["RouteTableId"]), set()).add(subnet)
    summary: list[dict[str, Any]] = []
    problems: list[str] = []
    for table_id, table in sorted(tables.items()):
        rows = []
        for route in table.get("Routes", []):
            destination = str(route.get("DestinationCidrBlock") or route.get("DestinationIpv6CidrBlock")
                              or route.get("DestinationPrefixListId"))
            via = _route_target(route)
            rows.append(f"{destination} -> {via}")
            if via != "local":
                problems.append(f"route table {table_id} (subnets {', '.join(sorted(users[table_id]))}) routes "
                                f"{destination} to {via}")
        summary.append({"route_table": table_id, "subnets": sorted(users[table_id]), "routes": rows})
    return summary, problems


_ROUTE_TARGETS = ("GatewayId", "NatGatewayId", "TransitGatewayId", "VpcPeeringConnectionId",
                  "EgressOnlyInternetGatewayId", "InstanceId", "NetworkInterfaceId", "CarrierGatewayId",
                  "LocalGatewayId", "CoreNetworkArn")


def _route_target(route: Mapping[str, Any]) -> str:
    for key in _ROUTE_TARGETS:
        if route.get(key):
            return str(route[key])
    return "unknown target"


def _group_summary(group: Mapping[str, Any], hosts: set[str], database: set[str]) -> dict[str, Any]:
    group_id = str(group["GroupId"])
    role = "hosts" if group_id in hosts else "database" if group_id in database else "endpoint"

    def rules(key: str, word: str) -> list[str]:
        out = []
        for permission in group.get(key, []):
            peers = [*_cidrs(permission), *(str(p.get("GroupId")) for p in permission.get("UserIdGroupPairs", []))]
            out += [f"{_describe_rule(permission)} {word} {peer}" for peer in peers
                    if peer != NO_TRAFFIC_CIDR]
        return out

    return {"id": group_id, "name": str(group.get("GroupName", "")), "role": role,
            "ingress": rules("IpPermissions", "from"), "egress": rules("IpPermissionsEgress", "to")}
