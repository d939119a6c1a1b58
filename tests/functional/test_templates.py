"""The CloudFormation templates: cfn-lint clean, long-form only, and creatable under moto in two regions.

moto (5.2.5) skips or simplifies part of CloudFormation. Where it does, the test checks the template
itself (parsed YAML, with a small condition evaluator) and asserts what moto really does, with the
reason in a comment. The quirks met while writing the templates:

- AWS::EC2::NetworkAcl*, AWS::RDS::OptionGroup, AWS::CloudWatch::Alarm, AWS::SNS::Subscription and
  AWS::S3::BucketPolicy are skipped (a warning, no resource); a Ref to a skipped resource resolves to
  nothing and drops the output, so OptionGroupName and RpoAlarmName use explicit names + Fn::Sub.
- Ref to an AWS::RDS::DBSubnetGroup renders the Python object's repr: explicit name + Fn::Sub too.
- AWS::RDS::DBInstance dereferences DBSubnetGroupName as an in-stack resource object and crashes on a
  plain string parameter, so the application stack owns its DB subnet group. DBSnapshotIdentifier,
  ManageMasterUserPassword, OptionGroupName, VPCSecurityGroups, DeletionProtection and DeletionPolicy
  are ignored (docs/aws-facts.md, "moto 5.2.5: what it skips or accepts").
- AWS::ElasticLoadBalancingV2::LoadBalancer ignores Type (always an application load balancer), and
  then a TCP listener is refused: the tests pass AgentLoadBalancerType=application.
- Fn::GetAZs "" resolves to us-east-1's zones in every region.
- AWS::EC2::Instance reads only SecurityGroups (names, EC2-Classic style) and ignores SecurityGroupIds,
  so the schedulers have no security group under moto; VPC EnableDnsHostnames and subnet
  MapPublicIpOnLaunch are ignored; subnet route table associations made by CloudFormation do not show in
  DescribeRouteTables (their physical id is the route table); inline IAM policies come back as str(dict).
- AWS::SSM::Parameter crashes on CloudFormation's map-style Tags, AWS::KMS::Key on Key/Value tags
  (both templates omit those tags), and an object KeyPolicy is stored unserialised so that DescribeKey
  crashes (the key policies are JSON strings).
- DynamoDB TimeToLiveSpecification and PointInTimeRecoverySpecification, and S3 versioning, public
  access block, ownership and lifecycle are not applied by moto's CloudFormation handlers.
- The template Rules section and parameter AllowedPattern are not enforced.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from moto import mock_aws

from chalicelib.settings import Settings
from chalicelib.snapshots.publish import pinned_snapshot_parameter

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
TEMPLATE_NAMES = ("jams-network.yaml", "jams-app.yaml", "dr-support.yaml", "event-forwarding.yaml")
PRIMARY = "us-east-1"
RECOVERY = "us-west-2"
ZONE = "jams.example.internal"

NETWORK_OUTPUTS = {
    "VpcId",
    "VpcCidr",
    "PublicSubnet1Id",
    "PublicSubnet2Id",
    "PrivateSubnet1Id",
    "PrivateSubnet2Id",
    "PrivateRouteTable1Id",
    "PrivateRouteTable2Id",
    "DrillSubnet1Id",
    "DrillSubnet2Id",
    "DrillRouteTableId",
    "SchedulerSecurityGroupId",
    "AgentSecurityGroupId",
    "LoadBalancerSecurityGroupId",
    "DatabaseSecurityGroupId",
    "DBSubnetGroupName",
    "OptionGroupName",
    "PinnedSnapshotIdentifier",
    "PinnedSnapshotParameterName",
}
# The network outputs the Python code passes to the application stack under the same names.
NETWORK_TO_APP = (
    "VpcId",
    "PublicSubnet1Id",
    "PublicSubnet2Id",
    "PrivateSubnet1Id",
    "PrivateSubnet2Id",
    "PrivateRouteTable1Id",
    "PrivateRouteTable2Id",
    "DrillSubnet1Id",
    "DrillSubnet2Id",
    "SchedulerSecurityGroupId",
    "AgentSecurityGroupId",
    "LoadBalancerSecurityGroupId",
    "DatabaseSecurityGroupId",
    "DBSubnetGroupName",
    "OptionGroupName",
)
# Outputs of Mode=drill stacks only (Condition IsDrill).
DRILL_ONLY_OUTPUTS = {"DrillHostSecurityGroupId", "MonitoringEndpointId"}
APP_OUTPUTS = {
    "Mode",
    "DrillHostSecurityGroupId",
    "MonitoringEndpointId",
    "DatabaseInstanceId",
    "DatabaseEndpointAddress",
    "DatabaseEndpointPort",
    "DatabaseDnsName",
    "PrimarySchedulerInstanceId",
    "FailoverSchedulerInstanceId",
    "AgentAutoScalingGroupName",
    "AgentTargetGroupArn",
    "AgentLoadBalancerDnsName",
    "EndpointDnsName",
    "RestoredFromSnapshot",
    "RestoredFromBackups",
}
SUPPORT_OUTPUTS = {"LedgerTableName", "TopicArn", "CopyKeyArn", "CopyKeyAlias", "ArtifactBucketName", "RpoAlarmName",
                   "CloudFormationRoleArn", "SchedulerInstanceProfileName", "SchedulerRoleArn"}
FORWARDING_OUTPUTS = {"RuleArn", "RoleArn"}

pytestmark = [
    # moto announces every resource type it skips; the tests check those resources in the template.
    pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning"),
    pytest.mark.filterwarnings("ignore:Unable to delete .*:UserWarning"),
]


# ----------------------------------------------------------------------------------- helpers


def load(name: str) -> dict[str, Any]:
    """A template as data. yaml.safe_load refuses !Ref-style tags, so this also proves long form."""
    data = yaml.safe_load((TEMPLATES / name).read_text())
    assert isinstance(data, dict)
    return data


def body(name: str) -> str:
    return (TEMPLATES / name).read_text()


def as_params(values: Mapping[str, str]) -> list[dict[str, str]]:
    # Explicit values only: moto crashes on UsePreviousValue for parameters left at their default.
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


def create_stack(region: str, name: str, template: str, params: Mapping[str, str] | None = None) -> dict[str, str]:
    cfn = boto3.client("cloudformation", region_name=region)
    cfn.create_stack(
        StackName=name,
        TemplateBody=body(template),
        Parameters=as_params(params or {}),
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def create_network(region: str, name: str = "jams-network", **params: str) -> dict[str, str]:
    return create_stack(region, name, "jams-network.yaml", {"EnvironmentName": "jams", **params})


def scheduler_profile() -> str:
    """The schedulers' instance profile, as the support stack makes it ahead of the application stacks."""
    iam = boto3.client("iam")
    name = "jams-jams-scheduler"
    try:
        iam.get_instance_profile(InstanceProfileName=name)
    except iam.exceptions.NoSuchEntityException:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                     "Action": "sts:AssumeRole"}]}))
        iam.create_instance_profile(InstanceProfileName=name)
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name


def create_app(region: str, network: Mapping[str, str], name: str = "jams-app", **params: str) -> dict[str, str]:
    values = {k: network[k] for k in NETWORK_TO_APP}
    values.update(EnvironmentName="jams", AgentLoadBalancerType="application",
                  SchedulerInstanceProfileName=scheduler_profile())
    values.update(params)
    return create_stack(region, name, "jams-app.yaml", values)


def hosted_zone(region: str) -> str:
    route53 = boto3.client("route53", region_name=region)
    zone = route53.create_hosted_zone(Name=ZONE, CallerReference=f"test-{region}")
    return str(zone["HostedZone"]["Id"].split("/")[-1])


def records(zone_id: str) -> dict[tuple[str, str], list[str]]:
    route53 = boto3.client("route53")
    sets = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    return {(s["Name"].rstrip("."), s["Type"]): [r["Value"] for r in s.get("ResourceRecords", [])] for s in sets}


def instances(region: str) -> dict[str, dict[str, Any]]:
    ec2 = boto3.client("ec2", region_name=region)
    return {i["InstanceId"]: i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}


def default_routes(region: str, route_table_id: str) -> list[dict[str, Any]]:
    ec2 = boto3.client("ec2", region_name=region)
    table = ec2.describe_route_tables(RouteTableIds=[route_table_id])["RouteTables"][0]
    return [r for r in table["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"]


def evaluate_condition(node: Any, conditions: Mapping[str, Any], params: Mapping[str, str]) -> bool:
    """CloudFormation's condition functions over literal parameter values (enough for these templates)."""
    if isinstance(node, dict) and len(node) == 1:
        ((fn, args),) = node.items()
        if fn == "Condition":
            return evaluate_condition(conditions[args], conditions, params)
        if fn == "Fn::Equals":
            left, right = (resolve(a, conditions, params) for a in args)
            return bool(left == right)
        if fn == "Fn::Not":
            return not evaluate_condition(args[0], conditions, params)
        if fn == "Fn::And":
            return all(evaluate_condition(a, conditions, params) for a in args)
        if fn == "Fn::Or":
            return any(evaluate_condition(a, conditions, params) for a in args)
    raise AssertionError(f"not a condition: {node!r}")


_NO_VALUE = object()


def resolve(node: Any, conditions: Mapping[str, Any], params: Mapping[str, str]) -> Any:
    """Resolve Ref (parameters, AWS::NoValue) and Fn::If; leave every other intrinsic as it is."""
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] == "AWS::NoValue":
            return _NO_VALUE
        if set(node) == {"Ref"} and node["Ref"] in params:
            return params[node["Ref"]]
        if set(node) == {"Fn::If"}:
            name, if_true, if_false = node["Fn::If"]
            chosen = if_true if evaluate_condition({"Condition": name}, conditions, params) else if_false
            return resolve(chosen, conditions, params)
        out = {k: resolve(v, conditions, params) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not _NO_VALUE}
    if isinstance(node, list):
        return [v for v in (resolve(x, conditions, params) for x in node) if v is not _NO_VALUE]
    return node


def with_defaults(template: Mapping[str, Any], **params: str) -> dict[str, str]:
    values = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
    values.update(params)
    return values


def created(template: Mapping[str, Any], logical_id: str, params: Mapping[str, str]) -> bool:
    condition = template["Resources"][logical_id].get("Condition")
    if condition is None:
        return True
    return evaluate_condition({"Condition": condition}, template.get("Conditions", {}), params)


def policy_statements(node: Any) -> Iterator[dict[str, Any]]:
    """Every policy statement in a template, including JSON-string key policies inside Fn::Sub."""
    if isinstance(node, dict):
        if "Effect" in node and ("Action" in node or "NotAction" in node):
            yield node
        for value in node.values():
            yield from policy_statements(value)
    elif isinstance(node, list):
        for value in node:
            yield from policy_statements(value)
    elif isinstance(node, str) and node.lstrip().startswith("{") and '"Statement"' in node:
        yield from policy_statements(json.loads(re.sub(r"\$\{[^}]+\}", "X", node)))


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto for every service and region; fake credentials; nothing can reach a real endpoint."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", PRIMARY)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # Another fixture of the session may point boto3 at an embedded moto server: not here.
    for key in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL")]:
        monkeypatch.delenv(key)
    with mock_aws():
        yield


# ----------------------------------------------------------------------------------- static checks


@pytest.fixture(scope="module")
def lint_findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[tuple[str, str]]]:
    """One cfn-lint run (both regions) over the four templates plus a deliberately broken one."""
    from cfnlint.api import ConfigMixIn, Runner

    broken = tmp_path_factory.mktemp("lint") / "broken.yaml"
    broken.write_text(
        "Parameters:\n  Unused:\n    Type: String\n"
        "Resources:\n  B:\n    Type: AWS::S3::Bucket\n    Properties:\n      NoSuchProperty: 1\n"
    )
    files = [str(TEMPLATES / name) for name in TEMPLATE_NAMES] + [str(broken)]
    findings: dict[str, set[tuple[str, str]]] = {Path(f).name: set() for f in files}
    for match in Runner(ConfigMixIn(["--template", *files], regions=[PRIMARY, RECOVERY])).run():
        findings[Path(match.filename).name].add((match.rule.id, match.rule.severity.lower()))
    return findings


def test_cfn_lint_reports_no_errors_or_warnings_in_either_region(
    lint_findings: dict[str, set[tuple[str, str]]],
) -> None:
    serious = {name: {f for f in lint_findings[name] if f[1] in {"error", "warning"}} for name in TEMPLATE_NAMES}
    assert serious == {name: set() for name in TEMPLATE_NAMES}


def test_cfn_lint_catches_a_broken_template(lint_findings: dict[str, set[tuple[str, str]]]) -> None:
    """The lint test above can fail: the same run flags a bad property and an unused parameter."""
    assert {("E3002", "error"), ("W2001", "warning")} <= lint_findings["broken.yaml"]


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_only_long_form_intrinsics(name: str) -> None:
    short = re.compile(
        r"!(Ref|GetAtt|Sub|If|Equals|Not|And|Or|Select|GetAZs|Join|Split|FindInMap|ImportValue|"
        r"Base64|Cidr|Condition|Transform|ToJsonString|Length)\b"
    )
    offending = [f"{n}: {line}" for n, line in enumerate(body(name).splitlines(), 1) if short.search(line)]
    assert offending == []
    load(name)  # safe_load raises on any YAML tag


def keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from keys(value)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_no_secrets_no_wildcard_allows_no_public_snapshots(name: str) -> None:
    template = load(name)
    assert not {"MasterUserPassword", "Password", "SecretString"} & set(keys(template))
    assert not any(p.get("NoEcho") for p in template.get("Parameters", {}).values())
    assert not any("password" in p.lower() or "secret" in p.lower() for p in template.get("Parameters", {}))
    assert not any(
        r["Type"] in {"AWS::RDS::DBSnapshot", "AWS::SecretsManager::Secret"} for r in template["Resources"].values()
    )
    assert "ModifyDBSnapshotAttribute" not in body(name)  # nothing ever shares a snapshot
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::RDS::DBInstance":
            assert resource["Properties"]["PubliclyAccessible"] is False
    allows = [s for s in policy_statements(template) if s["Effect"] == "Allow"]
    for statement in allows:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all("*" not in action for action in actions), statement
    # The only "*" action is the Deny of non-TLS requests on the artifact bucket.
    wildcard_denies = [s for s in policy_statements(template) if s["Effect"] == "Deny"]
    for statement in wildcard_denies:
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_app_parameters_take_the_network_outputs_by_name() -> None:
    network, app = load("jams-network.yaml"), load("jams-app.yaml")
    assert set(network["Outputs"]) == NETWORK_OUTPUTS
    assert set(app["Outputs"]) == APP_OUTPUTS
    assert set(NETWORK_TO_APP) <= set(network["Outputs"]) & set(app["Parameters"])
    # Without a default: what the network stack provides, and the support stack's scheduler profile
    # (which the chain passes itself), so callers cannot forget anything else.
    required = {k for k, v in app["Parameters"].items() if "Default" not in v}
    assert required == (set(NETWORK_TO_APP) - {"DBSubnetGroupName"}) | {"SchedulerInstanceProfileName"}
    for output in network["Outputs"].values():
        assert output["Export"]["Name"] == {
            "Fn::Sub": "${AWS::StackName}-" + next(k for k, v in network["Outputs"].items() if v is output)
        }


def test_public_network_acl_allows_773_80_and_return_traffic_only() -> None:
    """moto skips NetworkAcl*: the ACL is checked in the template."""
    template = load("jams-network.yaml")
    resources = template["Resources"]
    entries = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::EC2::NetworkAclEntry"]
    inbound = {
        (
            e["Protocol"],
            e["CidrBlock"] if isinstance(e["CidrBlock"], str) else "VPC",
            (e.get("PortRange") or {}).get("From"),
            (e.get("PortRange") or {}).get("To"),
        )
        for e in entries
        if not e["Egress"]
    }
    assert inbound == {
        (6, "0.0.0.0/0", 773, 773),
        (6, "0.0.0.0/0", 80, 80),
        (6, "0.0.0.0/0", 1024, 65535),
        (-1, "VPC", None, None),
    }
    from_vpc = next(e for e in entries if not e["Egress"] and e["CidrBlock"] != "0.0.0.0/0")
    assert from_vpc["CidrBlock"] == {"Ref": "VpcCidr"}
    assert [(e["Protocol"], e["CidrBlock"]) for e in entries if e["Egress"]] == [(-1, "0.0.0.0/0")]
    assert all(e["RuleAction"] == "allow" for e in entries)
    associated = sorted(
        r["Properties"]["SubnetId"]["Ref"]
        for r in resources.values()
        if r["Type"] == "AWS::EC2::SubnetNetworkAclAssociation"
    )
    assert associated == ["PublicSubnet1", "PublicSubnet2"]


def test_option_group_has_tde_where_the_edition_supports_it() -> None:
    """moto skips AWS::RDS::OptionGroup: the TDE option is checked in the template."""
    template = load("jams-network.yaml")
    conditions = template["Conditions"]
    options = template["Resources"]["OptionGroup"]["Properties"]["OptionConfigurations"]
    cases = {
        ("sqlserver-se", "15.00"): True,
        ("sqlserver-ee", "14.00"): True,
        ("sqlserver-se", "14.00"): False,
        ("sqlserver-web", "15.00"): False,
        ("sqlserver-ex", "16.00"): False,
    }
    for (engine, version), tde in cases.items():
        params = with_defaults(template, DBEngine=engine, DBEngineMajorVersion=version)
        assert resolve(options, conditions, params) == ([{"OptionName": "TDE"}] if tde else _NO_VALUE)


def test_database_properties_on_the_fresh_and_the_restore_path() -> None:
    """moto ignores DBSnapshotIdentifier and ManageMasterUserPassword: both paths are resolved here."""
    template = load("jams-app.yaml")
    conditions = template["Conditions"]
    database = template["Resources"]["Database"]
    assert database["DeletionPolicy"] == "Snapshot"
    assert database["UpdateReplacePolicy"] == "Snapshot"
    props = database["Properties"]

    network = {"DatabaseSecurityGroupId": "sg-db", "OptionGroupName": "jams-network-sqlserver"}
    fresh = resolve(props, conditions, with_defaults(template, Mode="active", **network))
    assert fresh["MasterUsername"] == "jamsadmin"
    assert fresh["ManageMasterUserPassword"] is True
    assert "DBSnapshotIdentifier" not in fresh
    assert fresh["DeletionProtection"] is True

    snapshot = "arn:aws:rds:us-west-2:123456789012:snapshot:jams-dr-copy-20260101"
    restore = resolve(
        props,
        conditions,
        with_defaults(
            template,
            Mode="active",
            DBSnapshotIdentifier=snapshot,
            DatabaseSecurityGroupId="sg-db",
            OptionGroupName="jams-standby-sqlserver",
        ),
    )
    assert restore["DBSnapshotIdentifier"] == snapshot
    assert "MasterUsername" not in restore
    assert "ManageMasterUserPassword" not in restore
    assert "MasterUserPassword" not in restore
    assert restore["OptionGroupName"] == "jams-standby-sqlserver"  # mandatory for a TDE snapshot
    # A restore keeps the snapshot's storage: for SQL Server the RDS handler would apply these in a
    # ModifyDBInstance after the restore, failing it for a larger snapshot (docs/aws-fidelity.md).
    assert "AllocatedStorage" not in restore
    assert "StorageType" not in restore
    assert (fresh["AllocatedStorage"], fresh["StorageType"]) == ("200", "gp3")

    for resolved in (fresh, restore):
        assert resolved["Engine"] == "sqlserver-se"
        assert resolved["LicenseModel"] == "license-included"
        assert resolved["MultiAZ"] is True
        assert resolved["StorageEncrypted"] is True
        assert resolved["PubliclyAccessible"] is False
        assert resolved["BackupRetentionPeriod"] == 7
        assert resolved["CopyTagsToSnapshot"] is True
        assert resolved["VPCSecurityGroups"] == ["sg-db"]
        assert resolved["DBSubnetGroupName"] == {"Ref": "DatabaseSubnetGroup"}
        assert "KmsKeyId" not in resolved  # default: the aws/rds key

    drill = resolve(props, conditions, with_defaults(template, Mode="drill"))
    assert drill["DeletionProtection"] is False  # drills must be deletable
    keyed = resolve(props, conditions, with_defaults(template, DBKmsKeyId="arn:aws:kms:us-east-1:1:key/k"))
    assert keyed["KmsKeyId"] == "arn:aws:kms:us-east-1:1:key/k"
    express = resolve(props, conditions, with_defaults(template, DBEngine="sqlserver-ex"))
    assert express["MultiAZ"] is False  # RDS has no Multi-AZ for Express and Web editions


def test_database_restores_to_a_point_in_time_from_replicated_backups() -> None:
    """RECOVERY_SOURCE=pitr (docs/pitr.md): SourceDBInstanceAutomatedBackupsArn with RestoreTime, or
    UseLatestRestorableTime when no time is given; the snapshot path's option group and no master user;
    the two restore sources exclusive (rule OneRestoreSource, which moto does not enforce)."""
    template = load("jams-app.yaml")
    conditions = template["Conditions"]
    props = template["Resources"]["Database"]["Properties"]
    backups = "arn:aws:rds:us-west-2:123456789012:auto-backup:ab-abcdefghijklmnopqrstuvwxyz"
    base = {"Mode": "active", "OptionGroupName": "jams-standby-sqlserver", "SourceDBInstanceAutomatedBackupsArn": backups}

    at_time = resolve(props, conditions, with_defaults(template, **base, RestoreTime="2026-01-01T00:05:00Z"))
    latest = resolve(props, conditions, with_defaults(template, **base))

    assert at_time["SourceDBInstanceAutomatedBackupsArn"] == backups
    assert at_time["RestoreTime"] == "2026-01-01T00:05:00Z" and "UseLatestRestorableTime" not in at_time
    assert latest["UseLatestRestorableTime"] is True and "RestoreTime" not in latest
    for restored in (at_time, latest):
        assert "DBSnapshotIdentifier" not in restored
        assert restored["OptionGroupName"] == "jams-standby-sqlserver"  # as the snapshot path
        for absent in ("MasterUsername", "ManageMasterUserPassword", "MasterUserPassword", "AllocatedStorage",
                       "StorageType"):
            assert absent not in restored
    for path in ("SourceDBInstanceAutomatedBackupsArn", "RestoreTime", "UseLatestRestorableTime"):
        assert path not in resolve(props, conditions, with_defaults(template, Mode="active"))
        assert path not in resolve(props, conditions, with_defaults(template, DBSnapshotIdentifier="jams-dr-copy"))
    assert template["Outputs"]["RestoredFromBackups"]["Value"]["Fn::If"][0] == "RestoreFromBackups"

    [assertion] = template["Rules"]["OneRestoreSource"]["Assertions"]
    both = with_defaults(template, DBSnapshotIdentifier="jams-dr-copy", SourceDBInstanceAutomatedBackupsArn=backups)
    assert not evaluate_condition(assertion["Assert"], conditions, both)
    for one in (with_defaults(template, DBSnapshotIdentifier="jams-dr-copy"), with_defaults(template, **base),
                with_defaults(template)):
        assert evaluate_condition(assertion["Assert"], conditions, one)
    for name, good, bad in (("SourceDBInstanceAutomatedBackupsArn", backups, "jams-dr-copy"),
                            ("RestoreTime", "2026-01-01T00:05:00Z", "2026-01-01 00:05")):
        pattern = re.compile(template["Parameters"][name]["AllowedPattern"])
        assert pattern.fullmatch(good) and pattern.fullmatch("") and not pattern.fullmatch(bad)


def test_mode_and_dns_conditions_select_the_right_resources() -> None:
    template = load("jams-app.yaml")
    egress = ("NatEip", "NatGateway", "PrivateRoute1", "PrivateRoute2")
    dns = ("DatabaseRecord", "SchedulerRecord")
    zone = {"HostedZoneId": "Z123", "DnsZoneName": ZONE}
    active = with_defaults(template, Mode="active", **zone)
    drill = with_defaults(template, Mode="drill", **zone)
    no_zone = with_defaults(template, Mode="active")
    assert all(created(template, r, active) for r in egress + dns)
    assert not any(created(template, r, drill) for r in egress + dns)
    assert all(created(template, r, no_zone) for r in egress)
    assert not any(created(template, r, no_zone) for r in dns)
    names = {template["Resources"][r]["Properties"]["Name"]["Fn::Sub"] for r in dns}
    # Regional names only: the stable jams.<zone> belongs to jams-dr, never to a stack.
    assert names == {"db.${AWS::Region}.${DnsZoneName}", "jams.${AWS::Region}.${DnsZoneName}"}


def test_scheduler_role_may_only_put_jams_metrics() -> None:
    """The role lives in the support stack: an application stack never writes to IAM, whose control
    plane is in us-east-1 alone (the usual primary region)."""
    app = load("jams-app.yaml")
    assert not [r for r in app["Resources"].values() if r["Type"].startswith("AWS::IAM::")]
    for scheduler in ("PrimaryScheduler", "FailoverScheduler"):
        props = app["Resources"][scheduler]["Properties"]
        assert props["IamInstanceProfile"] == {"Ref": "SchedulerInstanceProfileName"}
    template = load("dr-support.yaml")
    profile = template["Resources"]["SchedulerInstanceProfile"]["Properties"]
    assert profile["Roles"] == [{"Ref": "SchedulerRole"}]
    # The settings' default name (chalicelib/settings.py scheduler_instance_profile_name) is this one.
    assert profile["InstanceProfileName"] == {"Fn::Sub": "${EnvironmentName}-jams-scheduler"}
    role = template["Resources"]["SchedulerRole"]
    statements = list(policy_statements(role["Properties"]["Policies"]))
    assert statements == [
        {
            "Sid": "PublishJamsHeartbeats",
            "Effect": "Allow",
            "Action": "cloudwatch:PutMetricData",
            "Resource": "*",
            "Condition": {"StringEquals": {"cloudwatch:namespace": "JAMS"}},
        },
        {  # self-fencing (`jams-dr heartbeat`): the one ledger item fence#<env>, nothing else
            "Sid": "ReadOwnFenceRecord",
            "Effect": "Allow",
            "Action": "dynamodb:GetItem",
            "Resource": {"Fn::GetAtt": ["LedgerTable", "Arn"]},
            "Condition": {"ForAllValues:StringEquals": {
                "dynamodb:LeadingKeys": [{"Fn::Sub": "fence#${EnvironmentName}"}]}},
        },
    ]
    assert "PutMetricData" in role["Metadata"]["Comment"]


def test_support_resources_that_moto_does_not_apply() -> None:
    template = load("dr-support.yaml")
    resources = template["Resources"]
    table = resources["LedgerTable"]
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == ("Retain", "Retain")
    assert table["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["Properties"]["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["Properties"]["SSESpecification"] == {"SSEEnabled": True}

    bucket = resources["ArtifactBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4

    alarm = resources["RpoAlarm"]["Properties"]
    assert alarm["AlarmName"] == {"Fn::Sub": "${EnvironmentName}-rpo-breached"}
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (
        "JamsDR",
        "RecoveryPointAgeSeconds",
        "Maximum",
    )
    assert alarm["Dimensions"] == [{"Name": "Environment", "Value": {"Ref": "EnvironmentName"}}]
    # 3 of 3 periods: one late tick (an empty, breaching period) does not page (tests/functional/test_rpo_metric.py)
    assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (300, 3, 3)
    assert alarm["Threshold"] == {"Ref": "RpoTargetSeconds"}
    assert (alarm["ComparisonOperator"], alarm["TreatMissingData"]) == ("GreaterThanThreshold", "breaching")
    assert alarm["AlarmActions"] == [{"Ref": "NotificationTopic"}]

    # The topic key lets CloudWatch alarms publish (the aws/sns key would not).
    topic_key = list(policy_statements(resources["NotificationKey"]["Properties"]["KeyPolicy"]))
    assert any(s["Principal"] == {"Service": "cloudwatch.amazonaws.com"} for s in topic_key)
    assert resources["NotificationTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "NotificationKey"}

    rules = load("event-forwarding.yaml")["Rules"]
    assert rules["RecoveryRegionIsAnotherRegion"]["Assertions"][0]["Assert"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "RecoveryRegion"}, {"Ref": "AWS::Region"}]}]
    }


# ----------------------------------------------------------------------------------- under moto


@pytest.mark.usefixtures("aws")
@pytest.mark.parametrize("region", [PRIMARY, RECOVERY])
def test_network_stack_in_each_region(region: str) -> None:
    name = "jams-network" if region == PRIMARY else "jams-standby"
    out = create_network(region, name)
    assert set(out) == NETWORK_OUTPUTS
    ec2 = boto3.client("ec2", region_name=region)

    vpc = ec2.describe_vpcs(VpcIds=[out["VpcId"]])["Vpcs"][0]
    assert vpc["CidrBlock"] == out["VpcCidr"] == "10.0.0.0/16"
    dns = ec2.describe_vpc_attribute(VpcId=out["VpcId"], Attribute="enableDnsSupport")
    assert dns["EnableDnsSupport"]["Value"] is True
    # moto's VPC handler ignores EnableDnsHostnames (it reports False); the template sets it.
    vpc_props = load("jams-network.yaml")["Resources"]["VPC"]["Properties"]
    assert (vpc_props["EnableDnsSupport"], vpc_props["EnableDnsHostnames"]) == (True, True)

    ids = {k: out[f"{k}Id"] for k in ("PublicSubnet1", "PublicSubnet2", "PrivateSubnet1", "PrivateSubnet2")}
    subnets = {s["SubnetId"]: s for s in ec2.describe_subnets(SubnetIds=list(ids.values()))["Subnets"]}
    cidr = {k: subnets[v]["CidrBlock"] for k, v in ids.items()}
    assert cidr == {
        "PublicSubnet1": "10.0.1.0/24",
        "PublicSubnet2": "10.0.2.0/24",
        "PrivateSubnet1": "10.0.3.0/24",
        "PrivateSubnet2": "10.0.4.0/24",
    }
    az = {k: subnets[v]["AvailabilityZone"] for k, v in ids.items()}
    assert az["PublicSubnet1"] == az["PrivateSubnet1"] != az["PublicSubnet2"] == az["PrivateSubnet2"]
    # CloudFormation resolves Fn::GetAZs "" to the stack's region; moto always to us-east-1's zones.
    assert all(zone[:-1] in {region, "us-east-1"} for zone in az.values())
    assert all(s["VpcId"] == out["VpcId"] for s in subnets.values())

    # Public = associated with a route table whose default route is the internet gateway. moto keeps
    # CloudFormation's subnet associations out of DescribeRouteTables; the association's physical id
    # is its route table, and the template says which subnet it associates.
    igw = ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [out["VpcId"]]}])[
        "InternetGateways"
    ]
    assert len(igw) == 1
    cfn = boto3.client("cloudformation", region_name=region)
    physical = {
        r.get("LogicalResourceId"): r.get("PhysicalResourceId")
        for r in cfn.describe_stack_resources(StackName=name)["StackResources"]
    }
    template = load("jams-network.yaml")["Resources"]
    table_of = {}
    for subnet in ids:
        association = template[f"{subnet}RouteTableAssociation"]["Properties"]
        assert association["SubnetId"] == {"Ref": subnet}
        table_of[subnet] = physical[association["RouteTableId"]["Ref"]]
        assert physical[f"{subnet}RouteTableAssociation"] == table_of[subnet]
    assert table_of["PublicSubnet1"] == table_of["PublicSubnet2"]
    public_routes = default_routes(region, table_of["PublicSubnet1"])
    assert [r.get("GatewayId") for r in public_routes] == [igw[0]["InternetGatewayId"]]
    assert (table_of["PrivateSubnet1"], table_of["PrivateSubnet2"]) == (
        out["PrivateRouteTable1Id"],
        out["PrivateRouteTable2Id"],
    )
    assert out["PrivateRouteTable1Id"] != out["PrivateRouteTable2Id"]  # one per AZ
    for table_id in (out["PrivateRouteTable1Id"], out["PrivateRouteTable2Id"]):
        assert default_routes(region, table_id) == []  # no egress until an active app stack adds NAT routes
    # moto ignores MapPublicIpOnLaunch; the template sets it on the public subnets only.
    assert {k: template[k]["Properties"]["MapPublicIpOnLaunch"] for k in ids} == {
        "PublicSubnet1": True,
        "PublicSubnet2": True,
        "PrivateSubnet1": False,
        "PrivateSubnet2": False,
    }

    groups = {
        g["GroupId"]: g
        for g in ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [out["VpcId"]]}])["SecurityGroups"]
    }

    def ingress(group_id: str) -> set[tuple[int, str]]:
        rules = set()
        for p in groups[group_id]["IpPermissions"]:
            rules |= {(p["FromPort"], r["CidrIp"]) for r in p.get("IpRanges", [])}
            rules |= {(p["FromPort"], r["GroupId"]) for r in p.get("UserIdGroupPairs", [])}
        return rules

    scheduler, agent = out["SchedulerSecurityGroupId"], out["AgentSecurityGroupId"]
    balancer, database = out["LoadBalancerSecurityGroupId"], out["DatabaseSecurityGroupId"]
    assert ingress(scheduler) == {(773, "0.0.0.0/0"), (80, "0.0.0.0/0")}
    assert ingress(balancer) == {(773, "10.0.0.0/16"), (80, "10.0.0.0/16")}
    assert ingress(agent) == {(773, scheduler), (773, balancer), (80, balancer)}
    assert ingress(database) == {(1433, scheduler), (1433, agent)}

    rds = boto3.client("rds", region_name=region)
    group = rds.describe_db_subnet_groups(DBSubnetGroupName=out["DBSubnetGroupName"])["DBSubnetGroups"][0]
    assert group["VpcId"] == out["VpcId"]
    assert {s["SubnetIdentifier"] for s in group["Subnets"]} == {ids["PrivateSubnet1"], ids["PrivateSubnet2"]}
    assert len({s["SubnetAvailabilityZone"]["Name"] for s in group["Subnets"]}) == 2
    assert out["DBSubnetGroupName"] == f"{name}-db"
    assert out["OptionGroupName"] == f"{name}-sqlserver"  # the skipped option group's explicit name

    # The pipeline writes the parameter (chalicelib/snapshots/publish.py names it), not the stack.
    assert out["PinnedSnapshotParameterName"] == pinned_snapshot_parameter("jams", region)
    assert out["PinnedSnapshotIdentifier"] == "none"

    exports = {e["Name"]: e["Value"] for e in cfn.list_exports()["Exports"]}
    assert exports[f"{name}-VpcId"] == out["VpcId"]
    assert len([e for e in exports if e.startswith(f"{name}-")]) == len(NETWORK_OUTPUTS)


@pytest.mark.usefixtures("aws")
def test_network_stack_with_another_cidr() -> None:
    cidrs = {
        "VpcCidr": "10.20.0.0/16",
        "PublicSubnet1Cidr": "10.20.1.0/24",
        "PublicSubnet2Cidr": "10.20.2.0/24",
        "PrivateSubnet1Cidr": "10.20.3.0/24",
        "PrivateSubnet2Cidr": "10.20.4.0/24",
        "DrillSubnet1Cidr": "10.20.5.0/24",
        "DrillSubnet2Cidr": "10.20.6.0/24",
    }
    out = create_network(RECOVERY, "jams-standby", **cidrs)
    ec2 = boto3.client("ec2", region_name=RECOVERY)
    assert ec2.describe_vpcs(VpcIds=[out["VpcId"]])["Vpcs"][0]["CidrBlock"] == "10.20.0.0/16"
    assert out["VpcCidr"] == "10.20.0.0/16"
    got = {
        s["SubnetId"]: s["CidrBlock"]
        for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [out["VpcId"]]}])["Subnets"]
    }
    assert got == {
        out["PublicSubnet1Id"]: "10.20.1.0/24",
        out["PublicSubnet2Id"]: "10.20.2.0/24",
        out["PrivateSubnet1Id"]: "10.20.3.0/24",
        out["PrivateSubnet2Id"]: "10.20.4.0/24",
        out["DrillSubnet1Id"]: "10.20.5.0/24",
        out["DrillSubnet2Id"]: "10.20.6.0/24",
    }
    balancer = ec2.describe_security_groups(GroupIds=[out["LoadBalancerSecurityGroupId"]])["SecurityGroups"][0]
    assert {r["CidrIp"] for p in balancer["IpPermissions"] for r in p["IpRanges"]} == {"10.20.0.0/16"}


@pytest.mark.usefixtures("aws")
def test_pinning_a_snapshot_updates_parameter_and_output() -> None:
    """What the snapshot pipeline does to the standby stack after each copy (explicit parameter values)."""
    create_network(RECOVERY, "jams-standby")
    cfn = boto3.client("cloudformation", region_name=RECOVERY)
    snapshot = "arn:aws:rds:us-west-2:123456789012:snapshot:jams-dr-20260101-0000"
    cfn.update_stack(
        StackName="jams-standby",
        TemplateBody=body("jams-network.yaml"),
        Parameters=as_params({"EnvironmentName": "jams", "DBSnapshotIdentifier": snapshot}),
    )
    stack = cfn.describe_stacks(StackName="jams-standby")["Stacks"][0]
    assert stack["StackStatus"] == "UPDATE_COMPLETE"
    out = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert out["PinnedSnapshotIdentifier"] == snapshot
    params = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert params["DBSnapshotIdentifier"] == snapshot


@pytest.mark.usefixtures("aws")
def test_active_application_stack_on_the_primary_network() -> None:
    network = create_network(PRIMARY)
    zone_id = hosted_zone(PRIMARY)
    out = create_app(PRIMARY, network, Mode="active", HostedZoneId=zone_id, DnsZoneName=ZONE)
    assert set(out) == APP_OUTPUTS - DRILL_ONLY_OUTPUTS
    assert out["Mode"] == "active"
    assert out["RestoredFromSnapshot"] == "none"
    assert out["RestoredFromBackups"] == "none"

    rds = boto3.client("rds", region_name=PRIMARY)
    db = rds.describe_db_instances(DBInstanceIdentifier=out["DatabaseInstanceId"])["DBInstances"][0]
    assert db["Engine"].startswith("sqlserver-")
    assert db["MultiAZ"] is True
    assert db["StorageEncrypted"] is True
    assert db["MasterUsername"] == "jamsadmin"
    assert db["Endpoint"] == {"Address": out["DatabaseEndpointAddress"], "Port": 1433}
    assert out["DatabaseEndpointPort"] == "1433"
    assert {s["SubnetIdentifier"] for s in db["DBSubnetGroup"]["Subnets"]} == {
        network["PrivateSubnet1Id"],
        network["PrivateSubnet2Id"],
    }
    tags = {t["Key"]: t["Value"] for t in db["TagList"]}
    assert (tags["jams-dr:environment"], tags["jams-dr:mode"]) == ("jams", "active")

    fleet = instances(PRIMARY)
    primary, failover = fleet[out["PrimarySchedulerInstanceId"]], fleet[out["FailoverSchedulerInstanceId"]]
    assert primary["SubnetId"] == network["PublicSubnet1Id"]
    assert failover["SubnetId"] == network["PublicSubnet2Id"]
    # moto's Instance handler reads only the EC2-Classic style SecurityGroups property and ignores
    # SecurityGroupIds (right for a VPC), so the groups are checked in the template.
    template = load("jams-app.yaml")
    for logical_id in ("PrimaryScheduler", "FailoverScheduler"):
        props = template["Resources"][logical_id]["Properties"]
        # Mode=active: the network stack's scheduler group (drills: their own, tests/functional/test_drill_isolation.py).
        assert props["SecurityGroupIds"] == {"Fn::If": ["IsDrill", [{"Ref": "DrillHostSecurityGroup"}],
                                                        [{"Ref": "SchedulerSecurityGroupId"}]]}
        assert props["MetadataOptions"]["HttpTokens"] == "required"
    profile_arn = boto3.client("iam").list_instance_profiles()["InstanceProfiles"][0]["Arn"]
    for scheduler, role in ((primary, "primary"), (failover, "failover")):
        assert scheduler["State"]["Name"] == "running"
        assert scheduler["IamInstanceProfile"]["Arn"] == profile_arn
        tags = {t["Key"]: t["Value"] for t in scheduler["Tags"]}
        assert (tags["jams-dr:role"], tags["jams-dr:environment"]) == (role, "jams")
    assert primary["Placement"]["AvailabilityZone"] != failover["Placement"]["AvailabilityZone"]

    elb = boto3.client("elbv2", region_name=PRIMARY)
    group = elb.describe_target_groups(TargetGroupArns=[out["AgentTargetGroupArn"]])["TargetGroups"][0]
    assert (group["HealthCheckProtocol"], group["HealthCheckPort"], group["HealthCheckPath"]) == (
        "HTTP",
        "80",
        "/healthy.html",
    )
    assert (group["Port"], group["VpcId"]) == (773, network["VpcId"])
    balancer = elb.describe_load_balancers()["LoadBalancers"][0]
    assert balancer["Scheme"] == "internal"
    assert balancer["DNSName"] == out["AgentLoadBalancerDnsName"]
    listener = elb.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"][0]
    assert listener["Port"] == 773
    assert listener["DefaultActions"][0]["TargetGroupArn"] == out["AgentTargetGroupArn"]

    autoscaling = boto3.client("autoscaling", region_name=PRIMARY)
    pool = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[out["AgentAutoScalingGroupName"]])[
        "AutoScalingGroups"
    ][0]
    assert (pool["MinSize"], pool["MaxSize"], pool["DesiredCapacity"]) == (1, 4, 2)
    assert pool["TargetGroupARNs"] == [out["AgentTargetGroupArn"]]
    assert set(pool["VPCZoneIdentifier"].split(",")) == {network["PrivateSubnet1Id"], network["PrivateSubnet2Id"]}
    assert len(pool["Instances"]) == 2

    ec2 = boto3.client("ec2", region_name=PRIMARY)
    nats = ec2.describe_nat_gateways()["NatGateways"]
    assert [(n["SubnetId"], n["State"]) for n in nats] == [(network["PublicSubnet1Id"], "available")]
    for table in ("PrivateRouteTable1Id", "PrivateRouteTable2Id"):
        assert [r.get("NatGatewayId") for r in default_routes(PRIMARY, network[table])] == [nats[0]["NatGatewayId"]]

    assert records(zone_id)[(f"db.{PRIMARY}.{ZONE}", "CNAME")] == [out["DatabaseEndpointAddress"]]
    assert records(zone_id)[(f"jams.{PRIMARY}.{ZONE}", "CNAME")] == [primary["PrivateDnsName"]]
    assert (f"jams.{ZONE}", "CNAME") not in records(zone_id)  # the stable name is jams-dr's
    assert out["DatabaseDnsName"] == f"db.{PRIMARY}.{ZONE}"
    assert out["EndpointDnsName"] == f"jams.{PRIMARY}.{ZONE}"


@pytest.mark.usefixtures("aws")
def test_drill_stack_on_the_standby_network_is_isolated_and_deletable() -> None:
    network = create_network(RECOVERY, "jams-standby")
    zone_id = hosted_zone(RECOVERY)
    before = records(zone_id)
    name = "jams-drill-20260101"
    out = create_app(RECOVERY, network, name=name, Mode="drill", HostedZoneId=zone_id, DnsZoneName=ZONE)
    assert out["Mode"] == "drill"

    ec2 = boto3.client("ec2", region_name=RECOVERY)
    assert ec2.describe_nat_gateways()["NatGateways"] == []
    assert ec2.describe_addresses()["Addresses"] == []
    for table in ("PrivateRouteTable1Id", "PrivateRouteTable2Id"):
        assert default_routes(RECOVERY, network[table]) == []  # no egress
    assert records(zone_id) == before  # no DNS change, although a zone was passed
    assert out["DatabaseDnsName"] == out["DatabaseEndpointAddress"]
    rds = boto3.client("rds", region_name=RECOVERY)
    db = rds.describe_db_instances(DBInstanceIdentifier=out["DatabaseInstanceId"])["DBInstances"][0]
    assert {t["Key"]: t["Value"] for t in db["TagList"]}["jams-dr:mode"] == "drill"
    stack_instances = {out["PrimarySchedulerInstanceId"], out["FailoverSchedulerInstanceId"]}
    assert stack_instances <= set(instances(RECOVERY))

    cfn = boto3.client("cloudformation", region_name=RECOVERY)
    cfn.delete_stack(StackName=name)
    summaries = {s["StackName"]: s["StackStatus"] for s in cfn.list_stacks()["StackSummaries"]}
    assert summaries[name] == "DELETE_COMPLETE"
    assert summaries["jams-standby"] == "CREATE_COMPLETE"
    after = instances(RECOVERY)
    assert all(after[i]["State"]["Name"] == "terminated" for i in after)  # schedulers and agents
    assert len(after) == 4
    assert rds.describe_db_instances()["DBInstances"] == []
    # moto ignores DeletionPolicy: Snapshot, so no final snapshot here (AWS takes one, and the drill
    # chain deletes it); only the automated backup moto made at creation may remain, or nothing.
    assert all(s["SnapshotType"] == "automated" for s in rds.describe_db_snapshots()["DBSnapshots"])
    autoscaling = boto3.client("autoscaling", region_name=RECOVERY)
    assert autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert boto3.client("elbv2", region_name=RECOVERY).describe_load_balancers()["LoadBalancers"] == []


@pytest.mark.usefixtures("aws")
def test_restore_path_stack_creates_under_moto() -> None:
    """moto ignores DBSnapshotIdentifier (docs/aws-facts.md, "moto 5.2.5: what it skips or accepts"): it
    makes a fresh instance. The restore-path
    properties are asserted on the resolved template in test_database_properties_on_the_fresh_and_the_restore_path."""
    from jamsdr import rds_fidelity  # the embedded AWS restores for real: test_rds_fidelity.py

    network = create_network(RECOVERY, "jams-standby")
    snapshot = "jams-dr-copy-20260101-0000"
    with rds_fidelity.plain_moto():  # moto's own behaviour, even after an embedded AWS patched this process
        out = create_app(RECOVERY, network, Mode="active", DBSnapshotIdentifier=snapshot)
    assert out["RestoredFromSnapshot"] == snapshot
    rds = boto3.client("rds", region_name=RECOVERY)
    db = rds.describe_db_instances(DBInstanceIdentifier=out["DatabaseInstanceId"])["DBInstances"][0]
    assert db["Engine"] == "sqlserver-se"
    assert db.get("MasterUsername") is None  # the template passes none on the restore path
    # Without a hosted zone the stack names the endpoints directly.
    assert out["DatabaseDnsName"] == out["DatabaseEndpointAddress"]
    assert out["EndpointDnsName"] == instances(RECOVERY)[out["PrimarySchedulerInstanceId"]]["PrivateDnsName"]
    cfn = boto3.client("cloudformation", region_name=RECOVERY)
    params = {
        p["ParameterKey"]: p["ParameterValue"]
        for p in cfn.describe_stacks(StackName="jams-app")["Stacks"][0]["Parameters"]
    }
    assert params["DBSnapshotIdentifier"] == snapshot


@pytest.mark.usefixtures("aws")
def test_default_network_load_balancer_is_beyond_moto() -> None:
    """AgentLoadBalancerType defaults to network (JAMS traffic is TCP). moto creates an application load
    balancer whatever Type says and then refuses the TCP listener; if this starts passing, moto learnt
    network load balancers and the tests can drop AgentLoadBalancerType=application."""
    network = create_network(PRIMARY)
    cfn = boto3.client("cloudformation", region_name=PRIMARY)
    with pytest.raises(ClientError, match="Listener protocol 'TCP' must be one of"):
        cfn.create_stack(
            StackName="jams-app",
            TemplateBody=body("jams-app.yaml"),
            Parameters=as_params({**{k: network[k] for k in NETWORK_TO_APP},
                                  "SchedulerInstanceProfileName": scheduler_profile()}),
        )


@pytest.mark.usefixtures("aws")
def test_support_stack_in_the_recovery_region() -> None:
    out = create_stack(
        RECOVERY,
        "jams-dr-support",
        "dr-support.yaml",
        {"EnvironmentName": "jams", "RpoTargetSeconds": "7200", "NotificationEmail": "ops@example.com"},
    )
    assert set(out) == SUPPORT_OUTPUTS
    assert out["RpoAlarmName"] == "jams-rpo-breached"
    assert out["CopyKeyAlias"] == "alias/jams-dr-copies"

    dynamodb = boto3.client("dynamodb", region_name=RECOVERY)
    # The name the generated IAM policies give every function (Settings.ledger_table_name's default).
    assert out["LedgerTableName"] == Settings.defaults(environment="jams").ledger_table_name == "jams-dr-ledger"
    table = dynamodb.describe_table(TableName=out["LedgerTableName"])["Table"]
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = dynamodb.describe_time_to_live(TableName=out["LedgerTableName"])["TimeToLiveDescription"]
    # moto's Table.create_from_cloudformation_json never reads TimeToLiveSpecification (asserted in the
    # template above). If moto starts applying it, this must say ENABLED on expires_at.
    assert ttl == {"TimeToLiveStatus": "DISABLED"}

    kms = boto3.client("kms", region_name=RECOVERY)
    key = kms.describe_key(KeyId=out["CopyKeyAlias"])["KeyMetadata"]  # crashes moto with an object policy
    assert key["Arn"] == out["CopyKeyArn"]
    assert key["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert kms.get_key_rotation_status(KeyId=out["CopyKeyArn"])["KeyRotationEnabled"] is True
    policy = json.loads(kms.get_key_policy(KeyId=out["CopyKeyArn"], PolicyName="default")["Policy"])
    use = next(s for s in policy["Statement"] if s["Sid"] == "UseThroughRdsInThisAccount")
    assert use["Condition"]["StringEquals"] == {
        "kms:ViaService": f"rds.{RECOVERY}.amazonaws.com",
        "kms:CallerAccount": "123456789012",
    }
    assert set(use["Action"]) == {
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:DescribeKey",
        "kms:CreateGrant",
        "kms:ListGrants",
    }
    admin = next(s for s in policy["Statement"] if s["Sid"] == "KeyAdministrationByAccount")
    assert admin["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
    assert not {"kms:Encrypt", "kms:Decrypt"} & set(admin["Action"])

    sns = boto3.client("sns", region_name=RECOVERY)
    attributes = sns.get_topic_attributes(TopicArn=out["TopicArn"])["Attributes"]
    topic_key = attributes["KmsMasterKeyId"]
    assert kms.describe_key(KeyId=topic_key)["KeyMetadata"]["KeyId"] != key["KeyId"]
    assert kms.get_key_rotation_status(KeyId=topic_key)["KeyRotationEnabled"] is True

    s3 = boto3.client("s3", region_name=RECOVERY)
    rules = s3.get_bucket_encryption(Bucket=out["ArtifactBucketName"])["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    s3.put_object(Bucket=out["ArtifactBucketName"], Key="templates/jams-app.yaml", Body=body("jams-app.yaml"))
    stored = s3.get_object(Bucket=out["ArtifactBucketName"], Key="templates/jams-app.yaml")["Body"].read()
    assert stored.decode() == body("jams-app.yaml")


@pytest.mark.usefixtures("aws")
def test_event_forwarding_rule_delivers_to_the_recovery_bus() -> None:
    out = create_stack(
        PRIMARY,
        "jams-event-forwarding",
        "event-forwarding.yaml",
        {"EnvironmentName": "jams", "RecoveryRegion": RECOVERY},
    )
    assert set(out) == FORWARDING_OUTPUTS
    bus = f"arn:aws:events:{RECOVERY}:123456789012:event-bus/default"

    events = boto3.client("events", region_name=PRIMARY)
    rule_name = out["RuleArn"].split("/")[-1]
    rule = events.describe_rule(Name=rule_name)
    assert rule["State"] == "ENABLED"
    assert json.loads(rule["EventPattern"]) == {
        "source": ["aws.health", "aws.cloudwatch", "aws.rds"],
        "detail-type": ["AWS Health Event", "CloudWatch Alarm State Change", "RDS DB Instance Event"],
    }
    targets = events.list_targets_by_rule(Rule=rule_name)["Targets"]
    assert [(t["Arn"], t["RoleArn"]) for t in targets] == [(bus, out["RoleArn"])]

    iam = boto3.client("iam")
    role_name = out["RoleArn"].split("/")[-1]
    trust = iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "events.amazonaws.com"}]
    documents = [
        iam.get_role_policy(RoleName=role_name, PolicyName=n)["PolicyDocument"]
        for n in iam.list_role_policies(RoleName=role_name)["PolicyNames"]
    ]
    # moto returns an inline policy made by CloudFormation as the str() of a dict.
    policies = [ast.literal_eval(d) if isinstance(d, str) else d for d in documents]
    assert [s for p in policies for s in p["Statement"]] == [
        {"Effect": "Allow", "Action": "events:PutEvents", "Resource": bus}
    ]

    # moto does deliver to another region's bus: catch what arrives there in a queue.
    sqs = boto3.client("sqs", region_name=RECOVERY)
    queue = sqs.create_queue(QueueName="arrived")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    recovery_events = boto3.client("events", region_name=RECOVERY)
    recovery_events.put_rule(Name="arrived", EventPattern=json.dumps({"source": [{"prefix": "aws."}]}))
    recovery_events.put_targets(Rule="arrived", Targets=[{"Id": "queue", "Arn": queue_arn}])
    sent = [
        ("aws.health", "AWS Health Event"),
        ("aws.cloudwatch", "CloudWatch Alarm State Change"),
        ("aws.rds", "RDS DB Instance Event"),
        ("aws.ec2", "EC2 Instance State-change Notification"),
    ]
    for source, detail_type in sent:
        events.put_events(Entries=[{"Source": source, "DetailType": detail_type, "Detail": "{}"}])
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    arrived = sorted((json.loads(m["Body"])["source"], json.loads(m["Body"])["detail-type"]) for m in messages)
    assert arrived == sorted(sent[:3])
