"""Network facts moto's CloudFormation drops, restored in the embedded AWS.

A drill's isolation (chalicelib/workflow/steps/isolation.py) is verified by reading the drill stack's
resources back from EC2 and RDS. moto 5.2.5 builds them from the template but loses what that
verification reads, so without this the emulator would report the wrong network:

- ``AWS::EC2::SecurityGroup`` ``SecurityGroupEgress``: ignored, every group keeps the allow-all egress
  default. AWS: "When you create a security group, if you do not add egress rules, we add egress
  rules that allow all outbound IPv4 and IPv6 traffic. Otherwise, we do not add them"
  (CloudFormation template reference, AWS::EC2::SecurityGroup). Inline ingress ``CidrIpv6`` is dropped.
- ``AWS::EC2::SecurityGroupEgress``: not supported at all (skipped with a warning), so a cross-group
  egress rule never exists (template reference, AWS::EC2::SecurityGroupEgress).
- ``AWS::EC2::Subnet`` ``MapPublicIpOnLaunch``: ignored (always false); and ``AWS::EC2::Instance``
  never asks for a public address, whatever its subnet says. AWS: an instance launched in a subnet
  with the attribute true gets a public IPv4 address unless the request says otherwise (VPC User
  Guide, "IP addressing for your VPCs and subnets"; EC2 RunInstances, "AssociatePublicIpAddress").
- ``AWS::EC2::Instance`` ``SecurityGroupIds``: ignored (moto reads group names from
  ``SecurityGroups`` only), so a stack's instances have no security group at all.
- ``AWS::EC2::SubnetRouteTableAssociation``: recorded apart from the route table, so
  DescribeRouteTables shows no association and a subnet seems to use the VPC's main table. AWS: the
  association replaces the main table for that subnet (template reference,
  AWS::EC2::SubnetRouteTableAssociation; VPC User Guide, "Subnet route tables").
- ``AWS::RDS::DBInstance`` ``VPCSecurityGroups``: moto reads a property named ``VpcSecurityGroupIds``
  that CloudFormation does not have, so the instance has no VPC security group (template reference,
  AWS::RDS::DBInstance, "VPCSecurityGroups").

Installed once per process, like moto's backends (``EmbeddedAws.start``); tests state each fact in
tests/functional/test_drill_isolation.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jamsdr.moto_models import register_model

SG_EGRESS_TYPE = "AWS::EC2::SecurityGroupEgress"
_installed = False


def install() -> None:
    """Patch moto's CloudFormation models (idempotent)."""
    global _installed  # noqa: PLW0603 - one patch per process, like moto's own backends
    if _installed:
        return
    _security_group_rules()
    _security_group_egress_resource()
    _subnet_public_ip()
    _instance_groups_and_public_ip()
    _route_table_associations()
    _db_security_groups()
    _installed = True


def _ip_ranges(rule: Mapping[str, Any]) -> list[dict[str, str]]:
    description = {"Description": str(rule["Description"])} if rule.get("Description") else {}
    if rule.get("CidrIp"):
        return [{"CidrIp": str(rule["CidrIp"]), **description}]
    if rule.get("CidrIpv6"):
        return [{"CidrIpv6": str(rule["CidrIpv6"]), **description}]
    return []


def _ports(rule: Mapping[str, Any]) -> tuple[Any, Any]:
    if str(rule.get("IpProtocol")) == "-1":
        return None, None
    return rule.get("FromPort"), rule.get("ToPort")


def _authorize(
    backend: Any, group_id: str, rule: Mapping[str, Any], *, egress: bool, vpc_id: str | None
) -> list[str]:
    """Add one CloudFormation-shaped rule through moto's API; the ids of the rules it made."""
    peer = rule.get("DestinationSecurityGroupId") if egress else rule.get("SourceSecurityGroupId")
    prefix = rule.get("DestinationPrefixListId") if egress else rule.get("SourcePrefixListId")
    from_port, to_port = _ports(rule)
    kwargs: dict[str, Any] = {
        "group_name_or_id": group_id, "ip_protocol": str(rule["IpProtocol"]), "from_port": from_port,
        "to_port": to_port, "ip_ranges": _ip_ranges(rule),
        "source_groups": [{"GroupId": str(peer)}] if peer else [],
        "prefix_list_ids": [{"PrefixListId": str(prefix)}] if prefix else [],
        "vpc_id": vpc_id,
    }
    if egress:
        added, _ = backend.authorize_security_group_egress(**kwargs)
    else:
        added, _ = backend.authorize_security_group_ingress(**kwargs)
    return [str(r.id) for r in added]


def _security_group_rules() -> None:
    from moto.ec2.models import ec2_backends  # noqa: PLC0415 - the embedded AWS only
    from moto.ec2.models.security_groups import SecurityGroup  # noqa: PLC0415

    original = SecurityGroup.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create(cls: Any, /, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
               **kwargs: Any) -> Any:
        properties = dict(cloudformation_json.get("Properties") or {})
        ingress = list(properties.get("SecurityGroupIngress") or [])
        # moto's own loop handles IPv4 and group sources; the IPv6 ones it drops come back below.
        ipv6_ingress = [r for r in ingress if r.get("CidrIpv6")]
        properties["SecurityGroupIngress"] = [r for r in ingress if not r.get("CidrIpv6")]
        group = original(cls, resource_name, {**cloudformation_json, "Properties": properties}, account_id,
                         region_name, **kwargs)
        backend = ec2_backends[account_id][region_name]
        vpc_id = properties.get("VpcId")
        for rule in ipv6_ingress:
            _authorize(backend, group.id, rule, egress=False, vpc_id=vpc_id)
        egress = list(properties.get("SecurityGroupEgress") or [])
        if egress:
            group.egress_rules = []  # rules named: AWS adds no allow-all default
            for rule in egress:
                _authorize(backend, group.id, rule, egress=True, vpc_id=vpc_id)
        return group

    SecurityGroup.create_from_cloudformation_json = classmethod(create)  # type: ignore[assignment,method-assign]


def _security_group_egress_resource() -> None:
    from moto.core.common_models import CloudFormationModel  # noqa: PLC0415
    from moto.ec2.models import ec2_backends  # noqa: PLC0415

    class SecurityGroupEgress(CloudFormationModel):
        """One egress rule of an existing group (its own resource, so groups can name each other)."""

        def __init__(self, group_id: str, rule_ids: list[str]) -> None:
            self.group_id = group_id
            self.rule_ids = rule_ids

        @property
        def physical_resource_id(self) -> str:
            return "-".join(self.rule_ids) or f"{self.group_id}-egress"

        @staticmethod
        def cloudformation_name_type() -> str:
            return ""

        @staticmethod
        def cloudformation_type() -> str:
            return SG_EGRESS_TYPE

        @classmethod
        def has_cfn_attr(cls, attr: str) -> bool:
            return attr == "Id"

        @classmethod
        def create_from_cloudformation_json(
            cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,  # noqa: ARG003
            **kwargs: Any,  # noqa: ARG003 - moto's signature
        ) -> SecurityGroupEgress:
            properties = cloudformation_json["Properties"]
            group_id = str(properties["GroupId"])
            backend = ec2_backends[account_id][region_name]
            return cls(group_id, _authorize(backend, group_id, properties, egress=True, vpc_id=None))

        def delete(self, account_id: str, region_name: str) -> None:
            group = ec2_backends[account_id][region_name].get_security_group_from_id(self.group_id)
            if group is not None:
                group.egress_rules = [r for r in group.egress_rules if r.id not in self.rule_ids]

    register_model(SecurityGroupEgress, SG_EGRESS_TYPE)


def _subnet_public_ip() -> None:
    from moto.ec2.models.subnets import Subnet  # noqa: PLC0415 - the embedded AWS only

    original = Subnet.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create(cls: Any, /, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
               **kwargs: Any) -> Any:
        subnet = original(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        value = (cloudformation_json.get("Properties") or {}).get("MapPublicIpOnLaunch")
        subnet.map_public_ip_on_launch = str(value).lower() == "true"
        return subnet

    Subnet.create_from_cloudformation_json = classmethod(create)  # type: ignore[assignment,method-assign]


def _instance_groups_and_public_ip() -> None:
    """moto's own handler, with the two properties it drops (ids, and the subnet's public-IP default)."""
    from moto.ec2.models import ec2_backends  # noqa: PLC0415 - the embedded AWS only
    from moto.ec2.models.instances import Instance  # noqa: PLC0415

    def create(cls: Any, /, resource_name: str, cloudformation_json: Any, account_id: str,  # noqa: ARG001
               region_name: str, **kwargs: Any) -> Any:  # noqa: ARG001 - moto's signature
        properties = cloudformation_json["Properties"]
        backend = ec2_backends[account_id][region_name]
        names = [str(getattr(backend.get_security_group_from_id(g), "name", g))
                 for g in properties.get("SecurityGroups", [])]
        reservation = backend.run_instances(
            image_id=properties["ImageId"], user_data=properties.get("UserData"), count=1,
            security_group_names=names, security_group_ids=list(properties.get("SecurityGroupIds") or []),
            instance_type=properties.get("InstanceType", "m1.small"),
            is_instance_type_default=not properties.get("InstanceType"), subnet_id=properties.get("SubnetId"),
            key_name=properties.get("KeyName"), private_ip=properties.get("PrivateIpAddress"),
            block_device_mappings=properties.get("BlockDeviceMappings", {}),
            associate_public_ip=None,  # None: the subnet's MapPublicIpOnLaunch decides, as on AWS
        )
        instance = reservation.instances[0]
        for tag in properties.get("Tags", []):
            instance.add_tag(tag["Key"], tag["Value"])
        if properties.get("IamInstanceProfile"):
            backend.associate_iam_instance_profile(instance_id=instance.id,
                                                   iam_instance_profile_name=properties.get("IamInstanceProfile"))
        return instance

    Instance.create_from_cloudformation_json = classmethod(create)  # type: ignore[assignment,method-assign]


def _route_table_associations() -> None:
    from moto.ec2.models import ec2_backends  # noqa: PLC0415 - the embedded AWS only
    from moto.ec2.models.subnets import SubnetRouteTableAssociation  # noqa: PLC0415

    original = SubnetRouteTableAssociation.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create(cls: Any, /, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
               **kwargs: Any) -> Any:
        association = original(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        properties = cloudformation_json["Properties"]
        ec2_backends[account_id][region_name].associate_route_table(
            route_table_id=str(properties["RouteTableId"]), subnet_id=str(properties["SubnetId"]))
        return association

    SubnetRouteTableAssociation.create_from_cloudformation_json = classmethod(create)  # type: ignore[assignment,method-assign]


def _db_security_groups() -> None:
    from moto.rds.models import DBInstance  # noqa: PLC0415 - the embedded AWS only

    original = DBInstance.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create(cls: Any, /, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
               **kwargs: Any) -> Any:
        properties = dict(cloudformation_json.get("Properties") or {})
        if properties.get("VPCSecurityGroups") and not properties.get("VpcSecurityGroupIds"):
            properties["VpcSecurityGroupIds"] = [str(g) for g in properties["VPCSecurityGroups"]]
        return original(cls, resource_name, {**cloudformation_json, "Properties": properties}, account_id,
                        region_name, **kwargs)

    DBInstance.create_from_cloudformation_json = classmethod(create)  # type: ignore[assignment,method-assign]
