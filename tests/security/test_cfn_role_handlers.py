"""CloudFormation's service role can do what AWS's own resource handlers do for the application stacks.

The recovery chain builds and deletes the JAMS application stacks (templates/jams-app.yaml) with
RoleARN = CloudFormationRole (templates/dr-support.yaml), and CloudFormation then uses that role for
every later operation on those stacks (an operator's update included). A handler action the role
lacks fails the stack in the middle of a recovery, a drill or a failback. So the role is checked
against the permissions AWS publishes for each handler: the resource provider schemas' `handlers`
(create, read, update, delete), as shipped by the installed cfn-lint (pinned in requirements-lock.txt).

Loaded from cfn-lint's bundled schema directory on purpose: cfn-lint's default schema manager prefers a
newer copy in the user's cache (~/.cache/aws/cfn-lint) and downloads one when it has none, which would
make this test depend on the machine and the network.

What is allowed to stay ungranted is explicit and self-checking:
- EXCLUDED: a handler action tied to a property the template does not set; each entry names the
  property and the test fails as soon as the template sets it (or the handler stops listing the action).
- NARROWED: handler wildcards (`ec2:Describe*`): jams-dr's policies grant no wildcard action
  (tests/functional/test_templates.py), so each wildcard is narrowed to the named actions the template's
  resources lead to, or to every action the IAM catalogue lists under it.
Actions are matched as IAM does (wildcards, case-insensitive). Resources are checked where a mistake
would matter most (iam:PassRole, the SSM parameters CloudFormation resolves); elsewhere the scoping is
reviewed in docs/iam.md, not proven here.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cfnlint
import pytest
from cfnlint.data import AdditionalSpecs
from cfnlint.decode import decode
from cfnlint.helpers import load_resource
from cfnlint.schema import ResourceNotFoundError
from cfnlint.schema.manager import ProviderSchemaManager

PROJECT = Path(__file__).resolve().parents[2]
APP_TEMPLATE = PROJECT / "templates" / "jams-app.yaml"
SUPPORT_TEMPLATE = PROJECT / "templates" / "dr-support.yaml"
# The application stacks are built in both regions of jams-dr (primary and recovery).
REGIONS = ("us-east-1", "us-west-2")
# `list` is left out: CloudFormation calls it for resource discovery (IaC generator, import), never in
# a stack operation.
HANDLERS = ("create", "read", "update", "delete")
SCHEMAS = Path(cfnlint.__file__).parent / "data" / "schemas"

# Values for the role policy's Fn::Sub when a resource ARN is checked.
SUBSTITUTIONS = {"AWS::Partition": "aws", "AWS::AccountId": "123456789012", "EnvironmentName": "jams"}
# IAM's limit for all inline policies of one role together, whitespace not counted (IAM User Guide,
# "IAM and AWS STS quotas": role policy size 10,240 characters).
INLINE_POLICY_LIMIT = 10_240


@dataclass(frozen=True)
class Unset:
    """No resource of `resource_type` in the template sets the property at `path` (dots; lists searched)."""

    resource_type: str
    path: str


@dataclass(frozen=True)
class NotAnIamService:
    """cfn-lint's IAM catalogue (the Service Authorization Reference) has no service `prefix`: a policy
    naming it fails cfn-lint (W3037), so it cannot be granted until AWS publishes it."""

    prefix: str


@dataclass(frozen=True)
class Exclusion:
    resource_type: str
    action: str
    unless: tuple[Unset | NotAnIamService, ...]
    reason: str


@dataclass(frozen=True)
class Narrowed:
    resource_type: str
    wildcard: str
    # None: every action the IAM catalogue lists under the wildcard.
    actions: tuple[str, ...] | None
    reason: str


ASG = "AWS::AutoScaling::AutoScalingGroup"
EIP = "AWS::EC2::EIP"
INSTANCE = "AWS::EC2::Instance"
LAUNCH_TEMPLATE = "AWS::EC2::LaunchTemplate"
LISTENER = "AWS::ElasticLoadBalancingV2::Listener"
LOAD_BALANCER = "AWS::ElasticLoadBalancingV2::LoadBalancer"
NAT = "AWS::EC2::NatGateway"
VPC_ENDPOINT = "AWS::EC2::VPCEndpoint"
RDS = "AWS::RDS::DBInstance"

_RDS_ROLES = (Unset(RDS, "MonitoringRoleArn"), Unset(RDS, "AssociatedRoles"), Unset(RDS, "DomainIAMRoleName"))
_RDS_CLUSTER = (
    Unset(RDS, "DBClusterIdentifier"),
    Unset(RDS, "DBClusterSnapshotIdentifier"),
    Unset(RDS, "SourceDBClusterIdentifier"),
)
_RDS_BACKUP_REPLICATION = (
    Unset(RDS, "AutomaticBackupReplicationRegion"),
    Unset(RDS, "AutomaticBackupReplicationKmsKeyId"),
    Unset(RDS, "AutomaticBackupReplicationRetentionPeriod"),
)
_MANAGED_FLEETS = (
    "CloudFormation's Auto Scaling group handler lists managed-fleets actions (read and delete too), but "
    "no such IAM service is published yet: it cannot be granted. Residual risk, watched by the drills: "
    "a real drill would fail on it before any disaster does."
)


def _excluded(resource_type: str, actions: tuple[str, ...], unless: tuple[Unset | NotAnIamService, ...],
              reason: str) -> list[Exclusion]:
    return [Exclusion(resource_type, action, unless, reason) for action in actions]


EXCLUSIONS: list[Exclusion] = [
    *_excluded(EIP, ("ec2:AcceptAddressTransfer",), (Unset(EIP, "TransferAddress"),),
               "accepts an Elastic IP transferred from another account"),
    *_excluded(NAT, ("ec2:AssignPrivateNatGatewayAddress", "ec2:UnassignPrivateNatGatewayAddress"),
               (Unset(NAT, "SecondaryPrivateIpAddresses"), Unset(NAT, "SecondaryPrivateIpAddressCount")),
               "secondary private addresses of a NAT gateway"),
    *_excluded(NAT, ("ec2:AssociateNatGatewayAddress", "ec2:DisassociateNatGatewayAddress"),
               (Unset(NAT, "SecondaryAllocationIds"), Unset(NAT, "AvailabilityZoneAddresses")),
               "secondary Elastic IPs of a NAT gateway"),
    *_excluded(INSTANCE, ("ec2:AttachVolume", "ec2:DetachVolume"), (Unset(INSTANCE, "Volumes"),),
               "extra EBS volumes attached by the handler"),
    *_excluded(INSTANCE, ("ec2:ModifyInstanceCreditSpecification",), (Unset(INSTANCE, "CreditSpecification"),),
               "CPU credits of burstable instance types"),
    *_excluded(INSTANCE, ("ec2:ModifyInstancePlacement",),
               (Unset(INSTANCE, "Affinity"), Unset(INSTANCE, "HostId"), Unset(INSTANCE, "HostResourceGroupArn"),
                Unset(INSTANCE, "Tenancy")),
               "dedicated-host placement"),
    *_excluded(INSTANCE, ("ec2:ModifyPrivateDnsNameOptions",), (Unset(INSTANCE, "PrivateDnsNameOptions"),),
               "resource-name hostnames"),
    *_excluded(INSTANCE, ("ec2:DescribeKeyPairs",),
               (Unset(INSTANCE, "KeyName"), Unset(INSTANCE, "LaunchTemplate")),
               "create/update only, to check a key pair; the schedulers have none (Session Manager/RDP by policy)"),
    *_excluded(INSTANCE, ("ssm:CreateAssociation", "ssm:DeleteAssociation"), (Unset(INSTANCE, "SsmAssociations"),),
               "State Manager associations declared on the instance"),
    *_excluded(LOAD_BALANCER, ("ec2:DescribeIpamPools", "elasticloadbalancing:ModifyIpPools"),
               (Unset(LOAD_BALANCER, "Ipv4IpamPoolId"),), "IPAM pool addressing"),
    *_excluded(LOAD_BALANCER, ("elasticloadbalancing:ModifyCapacityReservation",),
               (Unset(LOAD_BALANCER, "MinimumLoadBalancerCapacity"),), "reserved load balancer capacity units"),
    *_excluded(LOAD_BALANCER, ("elasticloadbalancing:SetIpAddressType",), (Unset(LOAD_BALANCER, "IpAddressType"),),
               "dual-stack addressing (the default ipv4 is never changed)"),
    *_excluded(LISTENER, ("cognito-idp:DescribeUserPoolClient",),
               (Unset(LISTENER, "DefaultActions.AuthenticateCognitoConfig"),),
               "authenticate-cognito actions (the listener only forwards)"),
    *_excluded(LISTENER, ("elasticloadbalancing:ModifyListenerAttributes",), (Unset(LISTENER, "ListenerAttributes"),),
               "listener attributes"),
    *_excluded(RDS, ("iam:PassRole", "iam:GetRole", "iam:ListRoles"), _RDS_ROLES,
               "RDS looks up and passes only roles given to it: enhanced monitoring, feature roles, directory "
               "domain; the database is created with none (see its CKV_AWS_118 note)"),
    *_excluded(RDS, ("rds:AddRoleToDBInstance", "rds:RemoveRoleFromDBInstance"), (Unset(RDS, "AssociatedRoles"),),
               "feature roles (S3 integration and the like)"),
    *_excluded(RDS, ("rds:CreateDBInstanceReadReplica", "rds:PromoteReadReplica"),
               (Unset(RDS, "SourceDBInstanceIdentifier"),), "read replicas (creation, and promotion on update)"),
    *_excluded(RDS, ("rds:DescribeDBClusters", "rds:DescribeDBClusterSnapshots"), _RDS_CLUSTER,
               "Aurora/Multi-AZ cluster membership and cluster snapshots"),
    *_excluded(RDS, ("rds:StartDBInstanceAutomatedBackupsReplication", "rds:StopDBInstanceAutomatedBackupsReplication"),
               _RDS_BACKUP_REPLICATION,
               "cross-region automated backup replication, which jams-dr starts itself when configured "
               "(snapshot_tick, BACKUP_REPLICATION), not through the stack"),
    *_excluded(ASG, ("autoscaling:AttachLoadBalancers", "autoscaling:DetachLoadBalancers"),
               (Unset(ASG, "LoadBalancerNames"),), "Classic Load Balancers (the pool uses TargetGroupARNs)"),
    *_excluded(ASG, ("autoscaling:AttachTrafficSources", "autoscaling:DetachTrafficSources",
                     "vpc-lattice:RegisterTargets", "vpc-lattice:DeregisterTargets", "vpc-lattice:GetTargetGroup",
                     "vpc-lattice:ListTargets"),
               (Unset(ASG, "TrafficSources"),),
               "traffic sources, VPC Lattice target groups among them (Auto Scaling User Guide, 'Amazon EC2 "
               "Auto Scaling API permissions')"),
    *_excluded(ASG, ("autoscaling:PutLifecycleHook", "autoscaling:DeleteLifecycleHook"),
               (Unset(ASG, "LifecycleHookSpecificationList"),), "lifecycle hooks"),
    *_excluded(ASG, ("autoscaling:PutNotificationConfiguration", "autoscaling:DeleteNotificationConfiguration"),
               (Unset(ASG, "NotificationConfigurations"), Unset(ASG, "NotificationConfiguration")),
               "SNS notifications of scaling events"),
    *_excluded(ASG, ("autoscaling:EnableMetricsCollection", "autoscaling:DisableMetricsCollection"),
               (Unset(ASG, "MetricsCollection"),), "group metrics collection"),
    *_excluded(ASG, ("iam:PassRole",),
               (Unset(ASG, "ServiceLinkedRoleARN"), Unset(ASG, "LifecycleHookSpecificationList"),
                Unset(LAUNCH_TEMPLATE, "LaunchTemplateData.IamInstanceProfile")),
               "Auto Scaling passes a role only for a non-default service-linked role, a lifecycle hook role or "
               "a launch template with an instance profile (Auto Scaling User Guide, 'Amazon EC2 Auto Scaling "
               "API permissions'); the agents' launch template has no instance profile"),
    *_excluded(ASG, ("ec2:Get*",), (Unset(ASG, "MixedInstancesPolicy"),),
               "attribute-based instance type selection (ec2:GetInstanceTypesFromInstanceRequirements, the "
               "preview the schema's InstanceRequirements documentation points to)"),
    *_excluded(VPC_ENDPOINT, ("vpce:AllowMultiRegion",), (Unset(VPC_ENDPOINT, "ServiceRegion"),),
               "a cross-region endpoint (ServiceRegion); the drill's CloudWatch endpoint is in its own region"),
    *_excluded(VPC_ENDPOINT, ("vpc-lattice:CreateServiceNetworkVpcEndpointAssociation",
                              "vpc-lattice:DescribeServiceNetworkVpcEndpointAssociation"),
               (Unset(VPC_ENDPOINT, "ServiceNetworkArn"),),
               "service-network endpoints (VPC Lattice); the drill's endpoint is an Interface endpoint of an "
               "AWS service (the Describe action is not even in the IAM catalogue cfn-lint ships)"),
    *_excluded(ASG, ("managed-fleets:Get*", "managed-fleets:CreateAutoScalingGroup",
                     "managed-fleets:UpdateAutoScalingGroup", "managed-fleets:DeleteAutoScalingGroup",
                     "managed-fleets:RegisterAutoScalingGroup", "managed-fleets:DeregisterAutoScalingGroup"),
               (NotAnIamService("managed-fleets"),), _MANAGED_FLEETS),
]

NARROWINGS: list[Narrowed] = [
    Narrowed(ASG, "autoscaling:Describe*", None,
             "the read handler rebuilds the whole group (hooks, notifications, traffic sources, warm pool, ...) "
             "on every operation; Describe calls accept only Resource '*' and change nothing"),
    Narrowed(ASG, "ec2:Describe*",
             ("ec2:DescribeAccountAttributes", "ec2:DescribeAvailabilityZones", "ec2:DescribeImages",
              "ec2:DescribeInstanceAttribute", "ec2:DescribeInstanceStatus", "ec2:DescribeInstanceTypeOfferings",
              "ec2:DescribeInstanceTypes", "ec2:DescribeInstances", "ec2:DescribeLaunchTemplateVersions",
              "ec2:DescribeLaunchTemplates", "ec2:DescribeSecurityGroups", "ec2:DescribeSubnets",
              "ec2:DescribeVpcs"),
             "what a group launching from a launch template into VPCZoneIdentifier subnets validates: the "
             "template and its image, instance type and security groups, the subnets, their zones and VPC, "
             "the instances it launches; no placement group, capacity reservation, mixed instances or key pair"),
    Narrowed(ASG, "elasticloadbalancing:Describe*",
             ("elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeTargetGroups",
              "elasticloadbalancing:DescribeTargetHealth"),
             "TargetGroupARNs with HealthCheckType ELB: the group checks its target groups and their targets' "
             "health; no Classic Load Balancers (LoadBalancerNames unset)"),
    Narrowed(ASG, "ssm:Get*", ("ssm:GetParameters",),
             "a launch template image given as resolve:ssm:<parameter> is resolved with ssm:GetParameters; "
             "this launch template gets the AMI id CloudFormation already resolved from SchedulerImageId, on "
             "whose parameters the role holds ssm:GetParameters anyway"),
]

# IAM writes the role needed while the application template made the schedulers' role and instance
# profile; they live in the support stack now, and a role that can write IAM can grant itself anything.
IAM_WRITES = (
    "iam:CreateRole", "iam:DeleteRole", "iam:UpdateRole", "iam:UpdateAssumeRolePolicy", "iam:PutRolePolicy",
    "iam:DeleteRolePolicy", "iam:AttachRolePolicy", "iam:DetachRolePolicy", "iam:PutRolePermissionsBoundary",
    "iam:TagRole", "iam:UntagRole", "iam:CreateInstanceProfile", "iam:DeleteInstanceProfile",
    "iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile", "iam:CreatePolicy",
    "iam:CreatePolicyVersion", "iam:CreateUser", "iam:CreateAccessKey",
)
STAR_ONLY_SID = "DescribeOnlyAcceptStar"


# ---------------------------------------------------------------------------------------------- loading
def _load(path: Path) -> dict[str, Any]:
    template, matches = decode(str(path))
    assert not matches, matches
    # Plain dicts, lists and strings instead of cfn-lint's position-carrying node classes.
    plain: dict[str, Any] = json.loads(json.dumps(template))
    return plain


@cache
def app() -> dict[str, Any]:
    return _load(APP_TEMPLATE)


@cache
def support() -> dict[str, Any]:
    return _load(SUPPORT_TEMPLATE)


@cache
def schemas() -> ProviderSchemaManager:
    return ProviderSchemaManager(providers_dir=SCHEMAS / "providers", resources_dir=SCHEMAS / "resources")


@cache
def iam_catalogue() -> dict[str, Any]:
    """cfn-lint's copy of the Service Authorization Reference: service prefix -> actions (lower case)."""
    catalogue: dict[str, Any] = load_resource(AdditionalSpecs, "Policies.json")
    return catalogue


def app_types() -> list[str]:
    return sorted({resource["Type"] for resource in app()["Resources"].values()})


@cache
def handler_permissions(resource_type: str) -> dict[str, tuple[str, ...]]:
    """Action -> the handlers listing it, over both regions (one schema per region; identical today)."""
    found: dict[str, set[str]] = {}
    for region in REGIONS:
        handlers = schemas().get_resource_schema(region, resource_type).schema.get("handlers", {})
        for handler in HANDLERS:
            for action in handlers.get(handler, {}).get("permissions", []):
                found.setdefault(action, set()).add(handler)
    return {action: tuple(h for h in HANDLERS if h in used) for action, used in sorted(found.items())}


def role() -> dict[str, Any]:
    resource: dict[str, Any] = support()["Resources"]["CloudFormationRole"]
    return resource


def statements() -> list[dict[str, Any]]:
    return [s for policy in role()["Properties"]["Policies"] for s in policy["PolicyDocument"]["Statement"]]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def sub(value: Any, substitutions: dict[str, str] = SUBSTITUTIONS) -> str:
    """A literal or an {"Fn::Sub": "..."} string; anything else fails loudly rather than matching nothing."""
    if isinstance(value, str):
        return value
    assert isinstance(value, dict) and list(value) == ["Fn::Sub"] and isinstance(value["Fn::Sub"], str), value

    def replace(match: re.Match[str]) -> str:
        return substitutions[match.group(1)]

    return re.sub(r"\$\{([^}]+)\}", replace, value["Fn::Sub"])


def action_allowed(action: str, statement: dict[str, Any]) -> bool:
    """IAM action matching: wildcards in the policy, case-insensitive."""
    return statement["Effect"] == "Allow" and any(
        fnmatch.fnmatchcase(action.lower(), pattern.lower()) for pattern in as_list(statement["Action"])
    )


def allowed(action: str) -> bool:
    return any(action_allowed(action, s) for s in statements())


def resource_allowed(action: str, arn: str) -> bool:
    """Action and resource ARN (resource wildcards are case-sensitive in IAM)."""
    return any(
        action_allowed(action, s) and any(fnmatch.fnmatchcase(arn, sub(r)) for r in as_list(s["Resource"]))
        for s in statements()
    )


def is_set(node: Any, path: list[str]) -> bool:
    """Whether the property at `path` is present; an intrinsic function on the way counts as present
    (it could produce the property), so an unsure answer fails the exclusion instead of passing it."""
    if not path:
        return True
    if isinstance(node, list):
        return any(is_set(item, path) for item in node)
    if not isinstance(node, dict):
        return False
    if len(node) == 1 and next(iter(node)).startswith("Fn::"):
        return True
    return path[0] in node and is_set(node[path[0]], path[1:])


def holds(condition: Unset | NotAnIamService) -> bool:
    if isinstance(condition, NotAnIamService):
        return condition.prefix not in iam_catalogue()
    return not any(
        is_set(resource.get("Properties", {}), condition.path.split("."))
        for resource in app()["Resources"].values()
        if resource["Type"] == condition.resource_type
    )


def catalogue_actions(wildcard: str) -> list[str]:
    prefix, name = wildcard.split(":", 1)
    actions = iam_catalogue().get(prefix, {}).get("Actions", {})
    return sorted(f"{prefix}:{a}" for a in actions if fnmatch.fnmatchcase(a, name.lower()))


def exclusions() -> dict[tuple[str, str], Exclusion]:
    table = {(e.resource_type, e.action): e for e in EXCLUSIONS}
    assert len(table) == len(EXCLUSIONS), "an exclusion is listed twice"
    return table


def narrowings() -> dict[tuple[str, str], Narrowed]:
    table = {(n.resource_type, n.wildcard): n for n in NARROWINGS}
    assert len(table) == len(NARROWINGS), "a wildcard is narrowed twice"
    return table


def required() -> Iterator[tuple[str, str, str]]:
    """(resource type, action the role must allow, where it comes from) for the whole template."""
    excluded, narrowed = exclusions(), narrowings()
    for resource_type in app_types():
        for action, handlers in handler_permissions(resource_type).items():
            origin = f"{resource_type} {'/'.join(handlers)}"
            if (resource_type, action) in excluded:
                continue
            if "*" not in action:
                yield resource_type, action, origin
                continue
            entry = narrowed.get((resource_type, action))
            if entry is None:
                # A new wildcard in a schema update: someone decides what it means for this template.
                yield resource_type, action, f"{origin} (wildcard: narrow it in NARROWINGS or exclude it)"
                continue
            for concrete in entry.actions if entry.actions is not None else catalogue_actions(action):
                yield resource_type, concrete, f"{origin} ({action})"


# ---------------------------------------------------------------------------------------------- tests
def test_schemas_are_cfn_lints_bundled_ones_for_both_regions() -> None:
    """Each region has its own type -> hash map; the schemas themselves sit in one shared directory,
    named by hash (a region whose schema differs points to another file)."""
    for region in REGIONS:
        providers = json.loads((SCHEMAS / "providers" / f"{region}.json").read_text(encoding="utf-8"))
        for resource_type in app_types():
            assert (SCHEMAS / "resources" / f"{providers[resource_type]}.json").is_file(), (region, resource_type)


def test_every_resource_type_of_the_application_template_has_a_provider_schema() -> None:
    unknown = []
    for region in REGIONS:
        for resource_type in app_types():
            try:
                schemas().get_resource_schema(region, resource_type)
            except ResourceNotFoundError:
                unknown.append((region, resource_type))
    assert unknown == []
    assert all(handler_permissions(t) for t in app_types()), "a schema without handler permissions"


def test_the_application_template_holds_no_iam_resources() -> None:
    """The schedulers' role and instance profile are the support stack's (SchedulerInstanceProfileName)."""
    assert [t for t in app_types() if t.startswith("AWS::IAM::")] == []


def test_the_role_allows_every_handler_permission_of_the_application_template() -> None:
    missing = sorted({f"{origin}: {action}" for _, action, origin in required() if not allowed(action)})
    assert missing == []


def test_each_exclusion_is_still_needed_and_its_property_unused() -> None:
    types = set(app_types())
    for entry in EXCLUSIONS:
        assert entry.resource_type in types, entry
        assert entry.action in handler_permissions(entry.resource_type), f"stale exclusion: {entry}"
        assert entry.unless and entry.reason, entry
        broken = [c for c in entry.unless if not holds(c)]
        assert broken == [], f"{entry.resource_type} {entry.action} is excluded but {broken} no longer holds"


def test_each_narrowed_wildcard_names_real_actions_it_covers() -> None:
    for entry in NARROWINGS:
        assert entry.wildcard in handler_permissions(entry.resource_type), f"stale narrowing: {entry}"
        actions = entry.actions if entry.actions is not None else tuple(catalogue_actions(entry.wildcard))
        assert actions, entry
        for action in actions:
            assert fnmatch.fnmatchcase(action.lower(), entry.wildcard.lower()), (entry.wildcard, action)
            prefix, name = action.split(":", 1)
            assert name.lower() in iam_catalogue()[prefix]["Actions"], f"{action} is not an IAM action"


def test_the_gaps_the_review_found_are_granted_not_excluded() -> None:
    """The review that started this: these were missing, and none of them may hide in the exclusions."""
    found_missing = {
        (INSTANCE, "ec2:MonitorInstances"), (INSTANCE, "ec2:DescribeInstanceAttribute"),
        (INSTANCE, "ec2:ModifyInstanceMetadataOptions"), (ASG, "autoscaling:AttachLoadBalancerTargetGroups"),
        ("AWS::Route53::RecordSet", "route53:ListHostedZones"), (RDS, "rds:DescribeEvents"),
        (RDS, "rds:RebootDBInstance"), (RDS, "secretsmanager:CreateSecret"),
    }
    assert not found_missing & set(exclusions())
    assert all(allowed(action) for _, action in found_missing)


def test_the_role_has_no_iam_writes_now_that_the_scheduler_role_lives_in_the_support_stack() -> None:
    assert "ManagedPolicyArns" not in role()["Properties"]  # nothing outside the checked inline policy
    assert all("NotAction" not in s and "NotResource" not in s for s in statements())
    assert [a for a in IAM_WRITES if allowed(a)] == []
    granted_iam = sorted({a for s in statements() if s["Effect"] == "Allow" for a in as_list(s["Action"])
                          if a.lower().startswith("iam:")})
    assert granted_iam == ["iam:CreateServiceLinkedRole", "iam:PassRole"]


def test_pass_role_only_the_scheduler_role_and_only_to_ec2() -> None:
    passing = [s for s in statements() if action_allowed("iam:PassRole", s)]
    assert len(passing) == 1
    statement = passing[0]
    assert as_list(statement["Action"]) == ["iam:PassRole"]
    scheduler_role = support()["Resources"]["SchedulerRole"]["Properties"]["RoleName"]
    expected = f"arn:aws:iam::123456789012:role/{sub(scheduler_role)}"
    assert [sub(r) for r in as_list(statement["Resource"])] == [expected]
    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    # The EC2 instance handler lists iam:PassRole: the schedulers' instance profile, the only role passed.
    assert "iam:PassRole" in handler_permissions(INSTANCE)
    for resource in app()["Resources"].values():
        if resource["Type"] == INSTANCE:
            assert resource["Properties"]["IamInstanceProfile"] == {"Ref": "SchedulerInstanceProfileName"}


def _parameter_arn(region: str, name: str) -> str:
    # AWS's public parameters (/aws/service/...) belong to no account: their ARN has an empty account
    # field, as the AccessDenied messages for them show (arn:aws:ssm:us-west-2::parameter/aws/service/...).
    account = "" if name.startswith("/aws/service/") else SUBSTITUTIONS["AWS::AccountId"]
    return f"arn:aws:ssm:{region}:{account}:parameter{name}"


def test_the_role_resolves_the_ssm_parameter_types_of_the_template() -> None:
    """CloudFormation resolves AWS::SSM::Parameter::Value<...> parameters (SchedulerImageId) with the
    stack's service role, so ssm:GetParameters on them is the role's, in both regions."""
    ssm_parameters = {name: p for name, p in app()["Parameters"].items()
                      if p["Type"].startswith("AWS::SSM::Parameter::Value<")}
    assert "SchedulerImageId" in ssm_parameters
    for region in REGIONS:
        for name, parameter in ssm_parameters.items():
            assert resource_allowed("ssm:GetParameters", _parameter_arn(region, parameter["Default"])), name
        # An operator's golden image parameter, under the environment's own path.
        assert resource_allowed("ssm:GetParameters", _parameter_arn(region, "/jams-dr/jams/images/scheduler"))
        # Not any parameter of the account (dynamic references in a template resolve with this role too).
        assert not resource_allowed("ssm:GetParameters", _parameter_arn(region, "/prod/db-password"))
        assert not resource_allowed("ssm:GetParameters", _parameter_arn(region, "/jams-dr/other-env/image"))


def test_the_star_only_statement_holds_only_actions_without_resource_types() -> None:
    """Its Sid says "*" is the only valid Resource: true of every action in it (Service Authorization
    Reference, as cfn-lint ships it)."""
    statement = next(s for s in statements() if s.get("Sid") == STAR_ONLY_SID)
    assert statement["Resource"] == "*"
    with_types = []
    for action in as_list(statement["Action"]):
        prefix, name = action.split(":", 1)
        if iam_catalogue()[prefix]["Actions"][name.lower()].get("Resources"):
            with_types.append(action)
    assert with_types == []


def test_the_role_policy_fits_iams_inline_policy_limit() -> None:
    """Worst case: the longest environment name the template allows (32) and partition (aws-us-gov)."""
    longest = {"AWS::Partition": "aws-us-gov", "AWS::AccountId": "123456789012", "EnvironmentName": "e" * 32}

    def resolve(node: Any) -> Any:
        if isinstance(node, dict) and list(node) == ["Fn::Sub"]:
            return sub(node, longest)
        if isinstance(node, dict):
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    size = sum(len(json.dumps(resolve(p["PolicyDocument"]), separators=(",", ":")))
               for p in role()["Properties"]["Policies"])
    assert size <= INLINE_POLICY_LIMIT, size


@pytest.mark.parametrize("action", ["ec2:RunInstances", "rds:RestoreDBInstanceFromDBSnapshot"])
def test_the_matcher_sees_what_iam_sees(action: str) -> None:
    """The matching itself: case-insensitive actions, wildcards in the policy, Deny never allows."""
    assert action_allowed(action.upper(), {"Effect": "Allow", "Action": action.partition(":")[0] + ":*"})
    assert not action_allowed(action, {"Effect": "Deny", "Action": action})
    assert not action_allowed(action, {"Effect": "Allow", "Action": action + "X"})
