"""Least-privilege IAM policies of the Chalice functions: the single source of truth.

Each function gets its own role (Chalice: ``autogen_policy`` false and a per-function
``iam_policy_file``) whose policy lists exactly the actions its code calls, on the ARNs the stage's
settings name: the environment's stacks, snapshots and databases, the ledger table, the topic, the
artifact bucket, the chain's own function, the function's own log group. Account ids are ``*``
(Chalice policy files are static JSON), regions are the stage's two.

Two tables document what is not a plain "this call, this resource":

- ``STAR_ONLY``: actions AWS authorizes only on ``"Resource": "*"`` (they have no resource type);
  each such statement carries a ``StarOnly...`` Sid and the reason is in docs/iam.md.
- ``IMPLICIT``: permissions AWS checks although botocore never calls them by name (the Lambda's
  logs, iam:PassRole of RoleARN, the KMS grants of an encrypted copy, tag-on-create, ...), each with
  the recorded call that triggers it. tests/security/test_iam_policies.py records every call each
  function makes against the embedded AWS and fails when a call is not allowed or a policy action
  is never needed.

Features a stage leaves unconfigured are not granted: no TOPIC_ARN, no sns:Publish; no
HOSTED_ZONE_ID, no Route 53; no CFN_ROLE_ARN, no iam:PassRole (and then the chain cannot build
stacks under these policies: ``--check`` says so).

    python -m jamsdr.iam --write    # .chalice/policies/<stage>/<function>.json for every stage
    python -m jamsdr.iam --check    # exit 1 when a file or the config's wiring is not up to date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib import traffic
from chalicelib.settings import Settings
from chalicelib.snapshots.publish import pinned_snapshot_parameter
from chalicelib.tags import TAG_ENVIRONMENT
from jamsdr.stage import StageError, stage_environment

APP_NAME = "jams-dr"
CONFIG = Path(".chalice") / "config.json"
POLICY_DIR = "policies"  # relative to .chalice, as Chalice resolves iam_policy_file
ADVANCE_HANDLER = "advance_execution"

# Botocore names a few services and operations differently from IAM.
_IAM_PREFIX = {"elbv2": "elasticloadbalancing", "monitoring": "cloudwatch"}
_IAM_RENAMED = {("lambda", "Invoke"): "lambda:InvokeFunction"}


def iam_action(service: str, operation: str) -> str:
    """IAM action of a botocore operation (``lambda.Invoke`` is ``lambda:InvokeFunction``)."""
    renamed = _IAM_RENAMED.get((service, operation))
    return renamed or f"{_IAM_PREFIX.get(service, service)}:{operation}"


# ---------------------------------------------------------------------------------------- tables

# Actions with no resource type in the Service Authorization Reference: "*" is the only valid
# Resource. Every "Resource": "*" statement holds only these (the test enforces it).
STAR_ONLY: dict[str, str] = {
    "cloudwatch:GetMetricData": "CloudWatch GetMetricData has no resource types; only \"*\" is valid.",
    "cloudwatch:PutMetricData": (
        "CloudWatch PutMetricData has no resource types; only \"*\" is valid (narrowed by cloudwatch:namespace)."),
    "ec2:DescribeInstances": "EC2 Describe* actions support no resource-level permissions.",
    "ec2:DescribeSecurityGroups": "EC2 Describe* actions support no resource-level permissions.",
    "ec2:DescribeImages": "EC2 Describe* actions support no resource-level permissions.",
    "ec2:DescribeRouteTables": "EC2 Describe* actions support no resource-level permissions.",
    "ec2:DescribeVpcEndpoints": "EC2 Describe* actions support no resource-level permissions.",
    "ec2:DescribeVpcs": "EC2 Describe* actions support no resource-level permissions.",
    "autoscaling:DescribeAutoScalingGroups": "Auto Scaling Describe* actions support no resource-level permissions.",
    "elasticloadbalancing:DescribeLoadBalancers": (
        "Elastic Load Balancing Describe* actions support no resource-level permissions."),
    "elasticloadbalancing:DescribeTargetHealth": (
        "Elastic Load Balancing Describe* actions support no resource-level permissions."),
    "cloudformation:ValidateTemplate": "ValidateTemplate has no resource types (it validates a template body).",
    "rds:DescribeAccountAttributes": (
        "RDS DescribeAccountAttributes has no resource types (it reads the account's quotas)."),
    "rds:DescribeEvents": "RDS DescribeEvents has no resource types; only \"*\" is valid.",
    "cloudformation:GetTemplateSummary": (
        "Called with TemplateBody/TemplateURL, not a stack: its optional stack/stackset resource types "
        "apply only to a StackName, so the request names no resource and only \"*\" matches."),
}


@dataclass(frozen=True)
class Trigger:
    """A recorded call (IAM action) that makes AWS check an implicit permission."""

    action: str
    with_param: str | None = None  # only when the request carries this parameter
    without_param: str | None = None  # only when it does not

    def matches(self, action: str, params: Mapping[str, Any]) -> bool:
        if action != self.action:
            return False
        if self.with_param and not params.get(self.with_param):
            return False
        return not (self.without_param and params.get(self.without_param))


@dataclass(frozen=True)
class Implicit:
    action: str
    trigger: Trigger | None  # None: every invocation
    reason: str
    resource_param: str | None = None  # request parameter holding the ARN AWS checks, when it does


_COPY_KMS = "RDS creates a grant on the destination key of an encrypted copy, as the caller (USER_CopySnapshot)"
IMPLICIT: tuple[Implicit, ...] = (
    Implicit("logs:CreateLogGroup", None, "Lambda writes the function's logs with its execution role"),
    Implicit("logs:CreateLogStream", None, "Lambda writes the function's logs with its execution role"),
    Implicit("logs:PutLogEvents", None, "Lambda writes the function's logs with its execution role"),
    Implicit("iam:PassRole", Trigger("cloudformation:CreateStack", with_param="RoleARN"),
             "handing CloudFormation its service role (RoleARN) is iam:PassRole", "RoleARN"),
    Implicit("iam:PassRole", Trigger("cloudformation:DeleteStack", with_param="RoleARN"),
             "handing CloudFormation its service role (RoleARN) is iam:PassRole", "RoleARN"),
    Implicit("iam:PassRole", Trigger("cloudformation:UpdateStack", with_param="RoleARN"),
             "handing CloudFormation its service role (RoleARN) is iam:PassRole", "RoleARN"),
    Implicit("cloudformation:TagResource", Trigger("cloudformation:CreateStack", with_param="Tags"),
             "tag-on-create of the stack (condition key cloudformation:CreateAction)"),
    Implicit("kms:CreateGrant", Trigger("rds:CopyDBSnapshot", with_param="KmsKeyId"), _COPY_KMS, "KmsKeyId"),
    Implicit("kms:DescribeKey", Trigger("rds:CopyDBSnapshot", with_param="KmsKeyId"), _COPY_KMS, "KmsKeyId"),
    Implicit("kms:CreateGrant", Trigger("rds:StartDBInstanceAutomatedBackupsReplication", with_param="KmsKeyId"),
             "RDS creates a grant on the destination key of replicated encrypted backups", "KmsKeyId"),
    Implicit("kms:DescribeKey", Trigger("rds:StartDBInstanceAutomatedBackupsReplication", with_param="KmsKeyId"),
             "RDS reads the destination key of replicated encrypted backups", "KmsKeyId"),
    Implicit("rds:AddTagsToResource", Trigger("rds:CreateDBSnapshot", with_param="Tags"),
             "tags in the request: dependent action of CreateDBSnapshot"),
    Implicit("rds:AddTagsToResource", Trigger("rds:CopyDBSnapshot", with_param="Tags"),
             "tags in the request: dependent action of CopyDBSnapshot"),
    Implicit("ec2:CreateTags", Trigger("ec2:CreateSecurityGroup", with_param="TagSpecifications"),
             "tag-on-create: EC2 authorizes TagSpecifications as ec2:CreateTags (condition ec2:CreateAction)"),
    # Copying an encrypted snapshot across regions, RDS also uses the SOURCE snapshot's key (in the
    # primary region) as the caller; a customer managed source key is not the aws/rds key.
    Implicit("kms:CreateGrant", Trigger("rds:CopyDBSnapshot", with_param="SourceRegion"),
             "RDS uses the source snapshot's key in the source region as the caller (encrypted source)"),
    Implicit("kms:DescribeKey", Trigger("rds:CopyDBSnapshot", with_param="SourceRegion"),
             "RDS reads the source snapshot's key in the source region as the caller (encrypted source)"),
    Implicit("s3:ListBucket", Trigger("s3:GetObject"),
             "without it a missing object answers 403 AccessDenied, not 404 NoSuchKey, and the optional "
             "parameters file (templates/jams-app.parameters.json) could not be told absent"),
)


# ---------------------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class Grant:
    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: Mapping[str, Any] | None = None

    def statement(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Sid": self.sid, "Effect": "Allow", "Action": sorted(set(self.actions))}
        out["Resource"] = "*" if self.resources == ("*",) else sorted(set(self.resources))
        if self.condition:
            out["Condition"] = self.condition
        return out


@dataclass(frozen=True)
class Scope:
    """The ARNs one stage's functions work on, derived from its settings (account ids are ``*``)."""

    settings: Settings
    stage: str
    advance_function: str
    app_name: str = APP_NAME

    @property
    def env(self) -> str:
        return self.settings.environment

    @property
    def primary(self) -> str:
        return self.settings.primary_region

    @property
    def recovery(self) -> str:
        return self.settings.recovery_region

    @property
    def regions(self) -> tuple[str, str]:
        return (self.primary, self.recovery)

    @property
    def partition(self) -> str:
        """ARN partition of the stage's regions (a DR pair never spans partitions)."""
        if self.primary.startswith("cn-"):
            return "aws-cn"
        return "aws-us-gov" if "-gov-" in self.primary else "aws"

    def via_rds(self, region: str) -> dict[str, Any]:
        """Only when RDS uses the key on the caller's behalf (kms:ViaService)."""
        suffix = "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com"
        return {"StringEquals": {"kms:ViaService": f"rds.{region}.{suffix}"}}

    def function_name(self, handler: str) -> str:
        return f"{self.app_name}-{self.stage}-{handler}"

    def in_regions(self) -> dict[str, Any]:
        return {"StringEquals": {"aws:RequestedRegion": list(self.regions)}}

    def env_tagged(self) -> dict[str, Any]:
        return {"StringEquals": {f"aws:ResourceTag/{TAG_ENVIRONMENT}": self.env}}

    # -- names --

    def arn(self, service: str, region: str, rest: str) -> str:
        return f"arn:{self.partition}:{service}:{region}:*:{rest}"

    def ec2(self, region: str, kind: str) -> str:
        return self.arn("ec2", region, f"{kind}/*")

    def stack(self, region: str, name: str) -> str:
        return f"arn:{self.partition}:cloudformation:{region}:*:stack/{name}/*"

    def app_stacks(self) -> tuple[str, ...]:
        return tuple(self.stack(r, self.settings.app_stack_name) for r in self.regions)

    def drill_stacks(self) -> str:
        return self.stack(self.recovery, f"{self.env}-drill-*")

    def rds(self, region: str, kind: str, name: str) -> str:
        return f"arn:{self.partition}:rds:{region}:*:{kind}:{name}"

    def app_databases(self, regions: Sequence[str]) -> tuple[str, ...]:
        """CloudFormation names the stack's instance <stack>-database-<random> (lowercase);
        DB_INSTANCE_ID, when set, is exact."""
        found = [self.rds(r, "db", f"{self.settings.app_stack_name.lower()}-*") for r in regions]
        if self.settings.db_instance_id:
            found.append(self.rds(self.primary, "db", self.settings.db_instance_id.lower()))
        return tuple(found)

    def drill_databases(self) -> str:
        return self.rds(self.recovery, "db", f"{self.env}-drill-*")

    def pipeline_snapshots(self, region: str) -> str:
        return self.rds(region, "snapshot", f"{self.env}-dr-*")

    def failback_snapshots(self, region: str) -> str:
        return self.rds(region, "snapshot", f"{self.env}-failback-*")

    def table(self) -> str:
        return f"arn:{self.partition}:dynamodb:{self.recovery}:*:table/{self.settings.ledger_table_name}"

    def bucket(self) -> str | None:
        return f"arn:{self.partition}:s3:::{self.settings.artifact_bucket}" if self.settings.artifact_bucket else None

    def advance_arn(self) -> str:
        return f"arn:{self.partition}:lambda:{self.recovery}:*:function:{self.advance_function}"

    def log_group(self, handler: str) -> str:
        return f"arn:{self.partition}:logs:{self.recovery}:*:log-group:/aws/lambda/{self.function_name(handler)}:*"

    def pin_parameter(self) -> str:
        return self.arn("ssm", self.recovery, "parameter" + pinned_snapshot_parameter(self.env, self.recovery))

    def image_parameters(self) -> tuple[str, ...]:
        """The SSM parameters the application template's images may come from: AWS's public AMI
        parameters (their ARNs carry no account) and the environment's own, in both regions."""
        return tuple(arn for region in self.regions for arn in (
            f"arn:{self.partition}:ssm:{region}::parameter/aws/service/*",
            self.arn("ssm", region, f"parameter/jams-dr/{self.env}/*")))

    def copy_key(self) -> str:
        """The copy key's ARN (from an ARN or a key id); an alias names no key: any key of the
        recovery region, still only through RDS (the statement's kms:ViaService condition)."""
        key = self.settings.copy_kms_key or ""
        if key.startswith("arn:") and ":key/" in key:
            return key
        if key.startswith(("alias/", "arn:")):
            return f"arn:{self.partition}:kms:{self.recovery}:*:key/*"
        return f"arn:{self.partition}:kms:{self.recovery}:*:key/{key}"


# ---------------------------------------------------------------------------------------- capabilities


def _star(sid: str, actions: Sequence[str], scope: Scope) -> Grant:
    unknown = sorted(set(actions) - set(STAR_ONLY))
    if unknown:
        raise ValueError(f"{unknown} are not in STAR_ONLY: give them resource ARNs")
    return Grant(f"StarOnly{sid}", tuple(actions), ("*",), scope.in_regions())


def logs(scope: Scope, handler: str) -> list[Grant]:
    return [Grant("OwnLogGroup", ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"),
                  (scope.log_group(handler),))]


def ledger(scope: Scope, *actions: str) -> list[Grant]:
    return [Grant("Ledger", tuple(f"dynamodb:{a}" for a in actions), (scope.table(),))]


def notify(scope: Scope) -> list[Grant]:
    topic = scope.settings.topic_arn
    return [Grant("Notify", ("sns:Publish",), (topic,))] if topic else []


def outbox(scope: Scope, *, enqueue: bool) -> list[Grant]:
    """The notification outbox (chalicelib/outbox.py) in the ledger, and SNS: only with a topic (without
    one notifications are only logged). Enqueueing is a transaction (PutItem + UpdateItem of the index);
    flushing reads the index and the messages (GetItem) and claims and marks them (UpdateItem)."""
    if not scope.settings.topic_arn:
        return []
    actions = ("GetItem", "UpdateItem", *(("PutItem",) if enqueue else ()))
    return [*ledger(scope, *actions), *notify(scope)]


def launch_chain(scope: Scope) -> list[Grant]:
    return [Grant("LaunchTheChain", ("lambda:InvokeFunction",), (scope.advance_arn(),))]


def fence(scope: Scope) -> list[Grant]:
    """Fencing the old primary's schedulers: tag, quarantine (an empty security group), stop."""
    region = scope.primary
    instances, groups = scope.ec2(region, "instance"), scope.ec2(region, "security-group")
    return [
        _star("DescribeSchedulersAndGroups", ("ec2:DescribeInstances", "ec2:DescribeSecurityGroups"), scope),
        Grant("FenceSchedulersOfThisEnvironment", ("ec2:CreateTags", "ec2:StopInstances"), (instances,),
              scope.env_tagged()),
        # The instance and the quarantine group it moves into both carry the environment tag.
        Grant("MoveSchedulersToQuarantine", ("ec2:ModifyInstanceAttribute",), (instances, groups),
              scope.env_tagged()),
        Grant("EmptyQuarantineGroup", ("ec2:RevokeSecurityGroupEgress",), (groups,), scope.env_tagged()),
        # The group is created tagged with the environment (aws:RequestTag is request-wide: it also
        # holds when the VPC resource of the request is evaluated).
        Grant("CreateQuarantineGroupTagged", ("ec2:CreateSecurityGroup",), (groups, scope.ec2(region, "vpc")),
              {"StringEquals": {f"aws:RequestTag/{TAG_ENVIRONMENT}": scope.env}}),
        Grant("TagQuarantineGroupOnCreate", ("ec2:CreateTags",), (groups,),
              {"StringEquals": {"ec2:CreateAction": "CreateSecurityGroup"}}),
    ]


def detection(scope: Scope, handler: str) -> list[Grant]:
    """The watcher's check (any trigger): heartbeats, database probe, watch state, start, fence."""
    return [
        *logs(scope, handler),
        _star("ReadHeartbeats", ("cloudwatch:GetMetricData",), scope),
        Grant("ProbePrimaryDatabase", ("rds:DescribeDBInstances",), scope.app_databases([scope.primary])),
        Grant("PrimaryAppStackOutputs", ("cloudformation:DescribeStacks",),
              (scope.stack(scope.primary, scope.settings.app_stack_name),)),
        # The recovery start is created with the active slot in one transaction (PutItem + UpdateItem).
        *ledger(scope, "GetItem", "PutItem", "DeleteItem", "UpdateItem"),
        *launch_chain(scope),
        *outbox(scope, enqueue=True),
        *fence(scope),
    ]


def snapshot_pipeline(scope: Scope, handler: str) -> list[Grant]:
    s = scope.settings
    p, r = scope.primary, scope.recovery
    grants = [
        *logs(scope, handler),
        Grant("ListSnapshots", ("rds:DescribeDBSnapshots",),
              (scope.rds(p, "snapshot", "*"), scope.rds(r, "snapshot", "*"), *scope.app_databases([p]))),
        Grant("DescribePrimaryDatabase", ("rds:DescribeDBInstances",), scope.app_databases([p])),
        # The manual-snapshot quota and its usage in both regions (docs/retention.md).
        _star("ReadSnapshotQuota", ("rds:DescribeAccountAttributes",), scope),
        Grant("SnapshotPrimaryDatabase", ("rds:CreateDBSnapshot",),
              (*scope.app_databases([p]), scope.pipeline_snapshots(p))),
        Grant("CopyToRecoveryRegion", ("rds:CopyDBSnapshot",),
              (scope.pipeline_snapshots(p), scope.pipeline_snapshots(r))),
        Grant("TagAndPruneOwnSnapshots", ("rds:AddTagsToResource", "rds:DeleteDBSnapshot"),
              (scope.pipeline_snapshots(p), scope.pipeline_snapshots(r))),
        # The app stack: its DatabaseInstanceId (primary, DB_INSTANCE_ID empty); in the recovery
        # region its existence freezes the pin (a recovery serves from the pinned snapshot).
        Grant("ReadStandbyAndAppStacks", ("cloudformation:DescribeStacks",),
              (scope.stack(r, s.standby_stack_name), *scope.app_stacks())),
        Grant("PinOnStandbyStack", ("cloudformation:UpdateStack",), (scope.stack(r, s.standby_stack_name),)),
        Grant("PublishPinnedSnapshot", ("ssm:GetParameter", "ssm:PutParameter"), (scope.pin_parameter(),)),
        *ledger(scope, "GetItem", "PutItem", "DeleteItem"),
        *outbox(scope, enqueue=True),
    ]
    # The source database's key: its id is in no setting (aws/rds or a customer managed key), so any key
    # of the primary region, only through RDS there.
    grants.append(Grant("SourceKeyGrantsThroughRds", ("kms:CreateGrant", "kms:DescribeKey"),
                        (scope.arn("kms", p, "key/*"),), scope.via_rds(p)))
    if s.copy_kms_key:
        grants.append(Grant("CopyKeyGrantsThroughRds", ("kms:CreateGrant", "kms:DescribeKey"), (scope.copy_key(),),
                            scope.via_rds(r)))
    if s.backup_replication:
        grants.append(Grant("ReplicateAutomatedBackups", ("rds:StartDBInstanceAutomatedBackupsReplication",),
                            (*scope.app_databases([p]), scope.rds(r, "auto-backup", "*"))))
    if s.recovery_source == "pitr":
        # RecoveryPointAgeSeconds is the replicated backups' lag (docs/pitr.md); RDS names them ab-<random>.
        grants.append(_replicated_backups(scope))
    return grants


def _replicated_backups(scope: Scope) -> Grant:
    """RECOVERY_SOURCE=pitr: read the primary database's automated backups replicated to the recovery region."""
    return Grant("ReadReplicatedBackups", ("rds:DescribeDBInstanceAutomatedBackups",),
                 (scope.rds(scope.recovery, "auto-backup", "*"),))


def starter(scope: Scope, handler: str, *ledger_actions: str) -> list[Grant]:
    return [*logs(scope, handler), *ledger(scope, *ledger_actions), *launch_chain(scope)]


def sweeper(scope: Scope, handler: str) -> list[Grant]:
    return [*logs(scope, handler), *ledger(scope, "GetItem", "Scan", "DeleteItem"), *launch_chain(scope),
            *fence(scope), *outbox(scope, enqueue=False)]


def chain(scope: Scope, handler: str) -> list[Grant]:
    """advance_execution: every step of recovery, drill, failback and rollback."""
    s = scope.settings
    p, r = scope.primary, scope.recovery
    stacks = (*scope.app_stacks(), scope.drill_stacks())
    databases = (*scope.app_databases([p, r]), scope.drill_databases())
    grants = [
        *logs(scope, handler),
        *ledger(scope, "GetItem", "PutItem", "UpdateItem", "DeleteItem"),
        *launch_chain(scope),
        *outbox(scope, enqueue=True),
        *fence(scope),
        _star("ValidateTemplates", ("cloudformation:ValidateTemplate", "cloudformation:GetTemplateSummary"), scope),
        _star("TargetHealth", ("elasticloadbalancing:DescribeTargetHealth",), scope),
        # verify: the restored database's restore event proves which recovery point it came from.
        _star("RestoreEvents", ("rds:DescribeEvents",), scope),
        # Preflight: the stack's images exist in the target region before anything changes.
        _star("CheckImages", ("ec2:DescribeImages",), scope),
        # A drill's isolation, read back (chalicelib/workflow/steps/isolation.py); the instances, groups,
        # database and stack resources come from the statements above and below.
        _star("ReadDrillIsolation", ("ec2:DescribeRouteTables", "ec2:DescribeVpcEndpoints", "ec2:DescribeVpcs",
                                     "autoscaling:DescribeAutoScalingGroups",
                                     "elasticloadbalancing:DescribeLoadBalancers"), scope),
        Grant("ResolveImageParameters", ("ssm:GetParameter",), scope.image_parameters()),
        _star("ReadHeartbeats", ("cloudwatch:GetMetricData",), scope),
        Grant("ReadJamsStacks", ("cloudformation:DescribeStacks", "cloudformation:DescribeStackEvents",
                                 "cloudformation:ListStackResources"),
              (*stacks, scope.stack(r, s.standby_stack_name), scope.stack(p, s.network_stack_name))),
        Grant("BuildAndRemoveApplicationStacks", ("cloudformation:CreateStack", "cloudformation:DeleteStack"),
              stacks),
        Grant("TagApplicationStacksOnCreate", ("cloudformation:TagResource",), stacks,
              {"StringEquals": {"cloudformation:CreateAction": "CreateStack"}}),
        Grant("ReadSnapshots", ("rds:DescribeDBSnapshots",),
              (scope.rds(p, "snapshot", "*"), scope.rds(r, "snapshot", "*"), *databases)),
        Grant("JamsDatabases", ("rds:DescribeDBInstances", "rds:ModifyDBInstance"), databases),
        Grant("FailbackSnapshot", ("rds:CreateDBSnapshot",),
              (*scope.app_databases([r]), scope.failback_snapshots(r))),
        Grant("FailbackCopyToPrimary", ("rds:CopyDBSnapshot", "rds:AddTagsToResource"),
              (scope.failback_snapshots(r), scope.failback_snapshots(p))),
        # CreateDBSnapshot with Tags checks AddTagsToResource on the new snapshot too.
        Grant("TagFailbackSnapshot", ("rds:AddTagsToResource",), (scope.failback_snapshots(r),)),
        # A drill's final snapshot: CloudFormation names it after the drill stack (<env>-drill-...).
        Grant("DeleteDrillFinalSnapshots", ("rds:DeleteDBSnapshot",),
              (scope.rds(r, "snapshot", f"{s.environment}-drill-*"),)),
        # Failback copies under the primary region's AWS managed key aws/rds, whose id no setting
        # holds: keys of the primary region, only through RDS.
        Grant("FailbackCopyKeyThroughRds", ("kms:CreateGrant", "kms:DescribeKey"), (scope.arn("kms", p, "key/*"),),
              scope.via_rds(p)),
        Grant("QuiesceAndResumeRecoverySchedulers",
              ("ec2:CreateTags", "ec2:StartInstances", "ec2:StopInstances"),
              (scope.ec2(r, "instance"),), scope.env_tagged()),
        Grant("RemoveQuarantineGroups", ("ec2:DeleteSecurityGroup",), (scope.ec2(p, "security-group"),),
              scope.env_tagged()),
    ]
    bucket = scope.bucket()
    if bucket:
        grants += [
            Grant("ReadApplicationTemplate", ("s3:GetObject",), (f"{bucket}/templates/*",)),
            Grant("TellMissingParametersFile", ("s3:ListBucket",), (bucket,)),
            Grant("WriteReports", ("s3:PutObject",), (f"{bucket}/reports/*",)),
        ]
    if s.recovery_source == "pitr":
        # preflight and create_app_stack read the backups a point-in-time restore uses (CloudFormation's
        # role restores them: templates/dr-support.yaml).
        grants.append(_replicated_backups(scope))
    if s.cfn_role_arn:
        grants.append(Grant("HandCloudFormationItsRole", ("iam:PassRole",), (s.cfn_role_arn,),
                            {"StringEquals": {"iam:PassedToService": "cloudformation.amazonaws.com"}}))
    if s.hosted_zone_id and s.dns_zone_name:
        # The switch is data plane only (docs/traffic.md): no Route 53 permission at all. PutMetricData has
        # no resource type, so the namespace condition is what narrows it.
        grants += [
            Grant("StarOnlySwitchTrafficMetric", ("cloudwatch:PutMetricData",), ("*",),
                  {"StringEquals": {"aws:RequestedRegion": [r], "cloudwatch:namespace": traffic.NAMESPACE}}),
            Grant("WatchTrafficAlarm", ("cloudwatch:DescribeAlarms",),
                  (scope.arn("cloudwatch", r, f"alarm:{traffic.switch_alarm_name(s.environment)}"),)),
        ]
    return grants


Builder = Callable[[Scope, str], list[Grant]]

FUNCTIONS: dict[str, Builder] = {
    "snapshot_tick": snapshot_pipeline,
    "heartbeat_watcher": detection,
    "health_event": detection,
    "alarm_event": detection,
    "rds_event": detection,
    "advance_execution": chain,
    "execution_sweeper": sweeper,
    "start_drill": lambda scope, h: starter(scope, h, "PutItem"),
    # Recovery and failback starts are created with the active slot in one transaction (PutItem + UpdateItem).
    "start_recovery": lambda scope, h: starter(scope, h, "GetItem", "PutItem", "UpdateItem"),
    "start_failback": lambda scope, h: starter(scope, h, "GetItem", "PutItem", "UpdateItem"),
    "approve_recovery": lambda scope, h: starter(scope, h, "UpdateItem"),
    "retry_execution": lambda scope, h: starter(scope, h, "GetItem", "UpdateItem"),
    "rollback_execution": lambda scope, h: starter(scope, h, "GetItem", "PutItem", "UpdateItem"),
}


# ---------------------------------------------------------------------------------------- documents


def merge(grants: Sequence[Grant]) -> list[Grant]:
    """One statement per Sid (capabilities repeat, e.g. the ledger): actions and resources united."""
    by_sid: dict[str, Grant] = {}
    for grant in grants:
        known = by_sid.get(grant.sid)
        if known is None:
            by_sid[grant.sid] = grant
            continue
        if known.condition != grant.condition or ("*" in known.resources) != ("*" in grant.resources):
            raise ValueError(f"two statements {grant.sid!r} with different conditions: rename one")
        by_sid[grant.sid] = Grant(grant.sid, (*known.actions, *grant.actions),
                                  (*known.resources, *grant.resources), grant.condition)
    return list(by_sid.values())


def policy_document(scope: Scope, handler: str) -> dict[str, Any]:
    builder = FUNCTIONS.get(handler)
    if builder is None:
        raise KeyError(f"function {handler!r} has no policy in jamsdr/iam.py FUNCTIONS: add one")
    return {"Version": "2012-10-17", "Statement": [g.statement() for g in merge(builder(scope, handler))]}


def policies(scope: Scope) -> dict[str, dict[str, Any]]:
    return {handler: policy_document(scope, handler) for handler in FUNCTIONS}


def render(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def policy_path(stage: str, handler: str) -> str:
    """``iam_policy_file`` as config.json gives it (relative to .chalice)."""
    return f"{POLICY_DIR}/{stage}/{handler}.json"


# ---------------------------------------------------------------------------------------- stages


@dataclass
class Stage:
    name: str
    scope: Scope
    warnings: list[str] = field(default_factory=list)


def load_stages(config_path: Path = CONFIG) -> list[Stage]:
    config = json.loads(config_path.read_text())
    found = []
    for name in sorted(config.get("stages", {})):
        env = stage_environment(name, config_path)
        settings = Settings.from_env(env)
        default_advance = f"{APP_NAME}-{name}-{ADVANCE_HANDLER}"
        stage = Stage(name, Scope(settings, name, env.get("ADVANCE_FUNCTION_NAME", "") or default_advance))
        if not settings.cfn_role_arn:
            stage.warnings.append(
                f"stage {name}: CFN_ROLE_ARN is empty: CloudFormation would build the JAMS stacks with "
                "advance_execution's own role, which these policies do not allow; set it to the dr-support "
                "stack's CloudFormationRoleArn output, then run `python -m jamsdr.iam --write`")
        if not settings.artifact_bucket:
            stage.warnings.append(f"stage {name}: ARTIFACT_BUCKET is empty: the chain cannot read the "
                                  "application template; set the dr-support stack's ArtifactBucketName")
        found.append(stage)
    return found


def app_functions() -> set[str]:
    """The Lambda functions the Chalice app defines (so a new one cannot go without a policy)."""
    from app import app  # noqa: PLC0415 - the app module only when asked

    names = {f.name for f in app.pure_lambda_functions} | {s.name for s in app.event_sources}
    return {str(n) for n in names}


def wiring_problems(config: Mapping[str, Any], stages: Sequence[Stage]) -> list[str]:
    problems = []
    for stage in stages:
        settings = config["stages"][stage.name]
        if settings.get("autogen_policy") is not False:
            problems.append(f"stage {stage.name}: set \"autogen_policy\": false")
        if "iam_policy_file" in settings:
            problems.append(f"stage {stage.name}: remove the stage-wide iam_policy_file (one file per function)")
        functions = settings.get("lambda_functions", {})
        for handler in FUNCTIONS:
            wanted = policy_path(stage.name, handler)
            got = functions.get(handler, {}).get("iam_policy_file")
            if got != wanted:
                problems.append(f"stage {stage.name}: lambda_functions.{handler}.iam_policy_file is {got!r}, "
                                f"expected {wanted!r}")
    return problems


def expected_files(stages: Sequence[Stage], chalice_dir: Path) -> dict[Path, str]:
    return {chalice_dir / policy_path(stage.name, handler): render(document)
            for stage in stages for handler, document in policies(stage.scope).items()}


def file_problems(expected: Mapping[Path, str], chalice_dir: Path) -> list[str]:
    problems = []
    for path, text in expected.items():
        if not path.exists():
            problems.append(f"{path} is missing")
        elif path.read_text() != text:
            problems.append(f"{path} differs from what jamsdr/iam.py generates")
    stale = set((chalice_dir / POLICY_DIR).rglob("*.json")) - set(expected)
    return problems + [f"{p} is not generated by jamsdr/iam.py: delete it" for p in sorted(stale)]


def run(mode: str, config_path: Path = CONFIG, out: Callable[[str], None] = print) -> int:
    """``write`` or ``check`` every stage's files; 0 when all is well, 1 on problems, 2 on bad config."""
    chalice_dir = config_path.parent
    try:
        stages = load_stages(config_path)
    except (OSError, ValueError, StageError) as exc:
        out(f"cannot read the stages of {config_path}: {exc}")
        return 2
    for stage in stages:
        for warning in stage.warnings:
            out(f"warning: {warning}")
    expected = expected_files(stages, chalice_dir)
    problems: list[str] = []
    defined = app_functions()
    if defined != set(FUNCTIONS):
        problems.append(f"jamsdr/iam.py FUNCTIONS and app.py disagree: no policy for "
                        f"{sorted(defined - set(FUNCTIONS))}, no function for {sorted(set(FUNCTIONS) - defined)}")
    if mode == "write":
        for path, text in expected.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        out(f"wrote {len(expected)} policy files under {chalice_dir / POLICY_DIR}")
    else:
        problems += file_problems(expected, chalice_dir)
    problems += wiring_problems(json.loads(config_path.read_text()), stages)
    for problem in problems:
        out(f"error: {problem}")
    if problems:
        out("fix: python -m jamsdr.iam --write (and the lambda_functions wiring in .chalice/config.json)")
        return 1
    if mode == "check":
        out(f"{len(expected)} policy files up to date")
    return 0


def sid_ok(sid: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9]+", sid))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jamsdr.iam", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="write .chalice/policies/<stage>/<function>.json")
    group.add_argument("--check", action="store_true", help="exit 1 when a policy file is not up to date")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the Chalice config (default %(default)s)")
    args = parser.parse_args(argv)
    return run("write" if args.write else "check", args.config)


if __name__ == "__main__":
    sys.exit(main())
