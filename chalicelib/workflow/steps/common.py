"""What the recovery, drill and failback steps share: where the application stack goes, the pinned
snapshot, the application template, stack ownership, schedulers and the ledger.

Every step is idempotent (the engine re-runs a step whose ledger write was lost), so ownership is
recorded in AWS itself: stacks created by an execution carry the tag ``jams-dr:execution-id``, and a
step that finds "its" stack already there checks that tag before treating it as its own.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict

from botocore.exceptions import ClientError

from chalicelib.aws import ClientFactory, error_code
from chalicelib.clock import Clock, isoformat, parse_iso
from chalicelib.keys import APP_PARAMETERS_KEY, APP_TEMPLATE_KEY
from chalicelib.observability import logger
from chalicelib.settings import Settings
from chalicelib.stacks import outputs_of, parameters_of
from chalicelib.tags import TAG_ENVIRONMENT, TAG_EXECUTION, TAG_ROLE, TAG_SOURCE_CREATED
from chalicelib.workflow.ledger import Ledger
from chalicelib.workflow.model import StepContext, StepError

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_cloudformation.literals import CapabilityType
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import FilterTypeDef

# Parameters jams-dr sets itself on every application stack; the parameters file may not set them.
CHAIN_PARAMETERS = frozenset({"Mode", "DBSnapshotIdentifier", "EnvironmentName", "HostedZoneId", "DnsZoneName",
                              "SchedulerInstanceProfileName", "SourceDBInstanceAutomatedBackupsArn", "RestoreTime"})
# A parameter of this type names an SSM parameter; CloudFormation resolves it to an AMI id in the
# stack's own region when the stack is created (CloudFormation User Guide, "SSM parameter types").
SSM_IMAGE_PARAMETER_TYPE = "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
_AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")
# CloudFormation's limit for TemplateBody; larger templates go by TemplateURL.
TEMPLATE_BODY_LIMIT = 51_200
# None: the application stacks hold no IAM resources (the schedulers' role and profile are made ahead
# of time in the support stack, because IAM's control plane is in us-east-1 only). Should IAM
# resources come back into the template, CreateStack fails at once with InsufficientCapabilities.
STACK_CAPABILITIES: list[CapabilityType] = []

SCHEDULER_ROLES = ("primary", "failover")


@dataclass(frozen=True)
class Target:
    """Where an execution builds its application stack, and on which network stack."""

    region: str
    stack_name: str
    network_stack: str
    mode: str


def drill_id_of(execution_id: str) -> str:
    return execution_id.removeprefix("drill-")


def target_of(ctx: StepContext) -> Target:
    s = ctx.settings
    if ctx.kind == "drill":
        return Target(s.recovery_region, s.drill_stack_name(drill_id_of(ctx.execution_id)),
                      s.standby_stack_name, "drill")
    if ctx.kind == "failback":
        return Target(s.primary_region, s.app_stack_name, s.network_stack_name, "active")
    return Target(s.recovery_region, s.app_stack_name, s.standby_stack_name, "active")


def owner_id(ctx: StepContext) -> str:
    """The execution that owns the stack and the lease: the failed recovery, for its rollback."""
    original = ctx.data.get("rollback_of")
    return str(original) if original else ctx.execution_id


class RoleArgument(TypedDict, total=False):
    """``RoleARN`` when a CloudFormation service role is configured (spread into the stack calls)."""

    RoleARN: str


class TemplateSource(TypedDict, total=False):
    """Exactly one of the two ways CloudFormation takes a template (spread into the calls)."""

    TemplateBody: str
    TemplateURL: str


def stack_role(settings: Settings) -> RoleArgument:
    """``RoleARN`` for CreateStack/DeleteStack: CloudFormation builds the JAMS stacks with the support
    stack's service role, so the chain's own policy needs only iam:PassRole on it (docs/iam.md)."""
    if settings.cfn_role_arn:
        return {"RoleARN": settings.cfn_role_arn}
    logger.warning("CFN_ROLE_ARN is empty: CloudFormation acts with the chain's own role, which the "
                   "generated policies do not allow to build JAMS stacks; set the dr-support stack's "
                   "CloudFormationRoleArn output")
    return {}


def ledger_of(ctx: StepContext) -> Ledger:
    return Ledger(ctx.settings, ctx.clients, ctx.clock)


def now_iso(clock: Clock) -> str:
    stamp = isoformat(clock.now())
    assert stamp is not None
    return stamp


# ------------------------------------------------------------------------------- stacks


# CloudFormation's ClientRequestToken: [a-zA-Z0-9][-a-zA-Z0-9]*, at most 128 characters (CreateStack API
# reference, "ClientRequestToken"). Execution ids may hold . _ : (an operator's incident id): those become
# dashes, and a digest of the id keeps two ids that differ only there apart.
_TOKEN_FORBIDDEN = re.compile(r"[^a-zA-Z0-9-]")
TOKEN_PATTERN = re.compile(r"[a-zA-Z0-9][-a-zA-Z0-9]*")
_TOKEN_MAX = 128


def client_request_token(execution_id: str, operation: str) -> str:
    """A CloudFormation request token unique to (execution, operation) that AWS accepts."""
    raw = f"{execution_id}-{operation}"
    token = _TOKEN_FORBIDDEN.sub("-", raw).strip("-") or "jams-dr"
    if token != raw or len(token) > _TOKEN_MAX:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
        token = f"{token[:_TOKEN_MAX - len(digest) - 1].rstrip('-')}-{digest}"
    return token


def stack_tags(stack: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in stack.get("Tags", [])}


def created_by(stack: Mapping[str, Any], execution_id: str) -> bool:
    return stack_tags(stack).get(TAG_EXECUTION) == execution_id


def stack_record(name: str, region: str, status: str | None) -> dict[str, Any]:
    """The ``stack`` entry of the execution data (and of the report)."""
    return {"name": name, "region": region, "status": status}


def failure_reason(cfn: CloudFormationClient, stack_name: str) -> str:
    """The root cause of a failed stack: its oldest *_FAILED event that is not a cancellation."""
    failed: list[str] = []
    paginator = cfn.get_paginator("describe_stack_events")
    for page in paginator.paginate(StackName=stack_name):
        for event in page.get("StackEvents", []):
            status = str(event.get("ResourceStatus", ""))
            reason = str(event.get("ResourceStatusReason", ""))
            if status.endswith("_FAILED") and "cancelled" not in reason.lower():
                failed.append(f"{event.get('LogicalResourceId')} {status}: {reason}".strip())
    # Events come newest first: the last failure listed happened first.
    return failed[-1] if failed else "no failed resource event recorded"


def stack_resources(cfn: CloudFormationClient, stack_name: str, resource_type: str) -> list[str]:
    """Physical ids of a stack's resources of one type (paginated)."""
    found: list[str] = []
    paginator = cfn.get_paginator("list_stack_resources")
    for page in paginator.paginate(StackName=stack_name):
        for summary in page.get("StackResourceSummaries", []):
            if summary.get("ResourceType") == resource_type and summary.get("PhysicalResourceId"):
                found.append(str(summary["PhysicalResourceId"]))
    return found


def stack_database_id(cfn: CloudFormationClient, stack: Mapping[str, Any]) -> str | None:
    """The stack's DB instance: its DatabaseInstanceId output, else its AWS::RDS::DBInstance resource."""
    db_id = outputs_of(stack).get("DatabaseInstanceId")
    if db_id:
        return db_id
    ids = stack_resources(cfn, str(stack["StackName"]), "AWS::RDS::DBInstance")
    return ids[0] if ids else None


# ------------------------------------------------------------------------------- template


def artifact_bucket(settings: Settings) -> str:
    """The artifact bucket, which holds the application template and its parameters file."""
    if not settings.artifact_bucket:
        raise StepError(
            "ARTIFACT_BUCKET is not set: the application template lives in the artifact bucket; set the "
            "ArtifactBucketName output of the dr-support stack", code="TemplateUnavailable")
    return settings.artifact_bucket


def app_template_body(settings: Settings, clients: ClientFactory) -> str:
    """The application template from the artifact bucket (recovery region), as text."""
    bucket = artifact_bucket(settings)
    s3 = clients.client("s3", settings.recovery_region)
    try:
        body = s3.get_object(Bucket=bucket, Key=APP_TEMPLATE_KEY)["Body"].read()
    except ClientError as exc:
        raise StepError(
            f"application template s3://{bucket}/{APP_TEMPLATE_KEY} is not readable "
            f"({error_code(exc)}): upload templates/jams-app.yaml there (`jams-dr bootstrap`)",
            code="TemplateUnavailable") from exc
    return bytes(body).decode("utf-8")


def template_source(settings: Settings, body: str) -> TemplateSource:
    """TemplateBody when it fits CloudFormation's limit, else the artifact bucket's URL."""
    if len(body.encode("utf-8")) <= TEMPLATE_BODY_LIMIT:
        return {"TemplateBody": body}
    url = f"https://{settings.artifact_bucket}.s3.{settings.recovery_region}.amazonaws.com/{APP_TEMPLATE_KEY}"
    return {"TemplateURL": url}


def template_parameters(
    cfn: CloudFormationClient, settings: Settings, body: str, *, validate: bool = True
) -> dict[str, Mapping[str, Any]]:
    """Parameter declarations of the application template by name, as CloudFormation reads it.

    ``validate`` also runs ValidateTemplate (the preflight proves the template valid). The names come
    from GetTemplateSummary: ValidateTemplate lists them on AWS, but moto's answers with none.
    """
    source = template_source(settings, body)
    try:
        if validate:
            cfn.validate_template(**source)
        answer = cfn.get_template_summary(**source)
    except ClientError as exc:
        raise StepError(
            f"application template s3://{settings.artifact_bucket}/{APP_TEMPLATE_KEY} is invalid: "
            f"{exc}; upload a valid templates/jams-app.yaml", code="TemplateInvalid") from exc
    declared: dict[str, Mapping[str, Any]] = {str(p["ParameterKey"]): p for p in answer.get("Parameters", [])}
    missing = {"Mode", "DBSnapshotIdentifier"} - set(declared)
    if missing:
        raise StepError(
            f"application template lacks parameter(s) {sorted(missing)}: it is not a jams-dr application "
            "template; upload templates/jams-app.yaml", code="TemplateInvalid")
    return declared


def check_images(
    clients: ClientFactory, region: str, declared: Mapping[str, Mapping[str, Any]], values: Mapping[str, str]
) -> dict[str, str]:
    """Every image the application stack would launch exists and is available in ``region``.

    Checked before anything changes: otherwise RunInstances fails deep inside the stack, after the
    lease is taken and the old primary fenced. SSM-typed parameters are resolved in ``region`` as
    CloudFormation will resolve them. Returns {parameter: AMI id}.
    """
    images: dict[str, str] = {}
    ssm = clients.client("ssm", region)
    for name, declaration in declared.items():
        value = str(values.get(name) or declaration.get("DefaultValue") or "")
        if declaration.get("ParameterType") == SSM_IMAGE_PARAMETER_TYPE:
            if not value:
                raise StepError(f"{name} names no SSM parameter: set it in {APP_PARAMETERS_KEY}",
                                code="ImageUnavailable")
            try:
                images[name] = str(ssm.get_parameter(Name=value)["Parameter"]["Value"])
            except ClientError as exc:
                if error_code(exc) not in ("ParameterNotFound", "ValidationException"):
                    raise
                raise StepError(
                    f"{name}: SSM parameter {value} does not exist in {region}: create it there with the "
                    f"region's AMI id, or name another parameter in {APP_PARAMETERS_KEY}",
                    code="ImageUnavailable") from exc
        elif name.endswith("ImageId") and _AMI_ID.match(value):
            images[name] = value
    _check_available(clients.client("ec2", region), region, images)
    return images


def _check_available(ec2: EC2Client, region: str, images: Mapping[str, str]) -> None:
    if not images:
        return
    wanted = sorted(set(images.values()))
    malformed = [image for image in wanted if not _AMI_ID.match(image)]
    if malformed:
        raise StepError(f"{malformed} are not AMI ids (from {sorted(images)}): fix the parameter values",
                        code="ImageUnavailable")
    states: dict[str, str] = {}
    for image in wanted:  # one by one: AWS refuses the whole request when any id is unknown
        try:
            found = ec2.describe_images(ImageIds=[image])["Images"]
        except ClientError as exc:
            if not error_code(exc).startswith("InvalidAMIID"):
                raise
            found = []
        states[image] = str(found[0].get("State", "")) if found else "not found"
    problems = [f"{name}={image} ({states[image]})"
                for name, image in sorted(images.items()) if states[image] != "available"]
    if problems:
        raise StepError(
            f"image(s) not available in {region}: {', '.join(problems)}; AMIs are regional: copy the image "
            f"to {region} or point the parameter at one there", code="ImageUnavailable")


def app_parameter_overrides(
    settings: Settings, clients: ClientFactory, region: str, template_names: Iterable[str]
) -> dict[str, str]:
    """The parameters file's values for ``region`` ("default" then the region's own); {} if absent."""
    bucket = artifact_bucket(settings)
    location = f"s3://{bucket}/{APP_PARAMETERS_KEY}"
    s3 = clients.client("s3", settings.recovery_region)
    try:
        raw = s3.get_object(Bucket=bucket, Key=APP_PARAMETERS_KEY)["Body"].read()
    except ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return {}
        raise StepError(f"{location} is not readable ({error_code(exc)})", code="TemplateUnavailable") from exc
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise StepError(f"{location} is not JSON ({exc}); fix or delete it", code="TemplateInvalid") from exc
    if not isinstance(document, dict) or not all(isinstance(v, dict) for v in document.values()):
        raise StepError(f'{location} must be {{"default": {{"Name": "value"}}, "<region>": {{...}}}}',
                        code="TemplateInvalid")
    values: dict[str, str] = {}
    for section in ("default", region):
        values.update({str(k): str(v) for k, v in document.get(section, {}).items()})
    names = set(template_names)
    unknown = sorted(set(values) - names)
    reserved = sorted(set(values) & CHAIN_PARAMETERS)
    if unknown or reserved:
        problems = ([f"unknown parameter(s) {unknown}"] if unknown else []) + (
            [f"{reserved} are set by jams-dr itself"] if reserved else [])
        raise StepError(f"{location}: {'; '.join(problems)}; remove them", code="TemplateInvalid")
    return values


def app_parameters(
    template_names: Iterable[str],
    network_stack: Mapping[str, Any],
    explicit: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Application stack parameters from its network stack, without a list of names to keep in step.

    The network stack's own parameters that the template shares (EnvironmentName, DBEngine: a restore
    must keep the edition), then every network output whose key is a template parameter (the
    templates share names), then the parameters file, then the explicit values. Never
    UsePreviousValue (moto, and clarity).
    """
    names = set(template_names)
    values = {k: v for k, v in parameters_of(network_stack).items() if k in names}
    values.update({k: v for k, v in outputs_of(network_stack).items() if k in names})
    values.update({k: v for k, v in (overrides or {}).items() if k in names})
    values.update({k: v for k, v in explicit.items() if k in names})
    return values


# ------------------------------------------------------------------------------- snapshots


def original_created_at(snapshot: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> datetime | None:
    """When the data of a (copied) snapshot was captured: the RPO reference.

    A copy's SnapshotCreateTime is when the copy was made; the source's time survives as
    OriginalSnapshotCreateTime, else in our tag jams-dr:source-created.
    """
    original = snapshot.get("OriginalSnapshotCreateTime")
    if isinstance(original, datetime):
        return original
    tagged = (tags or {}).get(TAG_SOURCE_CREATED)
    if tagged:
        try:
            return parse_iso(tagged)
        except ValueError:
            pass
    created = snapshot.get("SnapshotCreateTime")
    return created if isinstance(created, datetime) else None


def snapshot_tags(snapshot: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in snapshot.get("TagList", [])}


def snapshot_record(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The ``snapshot`` entry of the execution data and the report."""
    return {
        "id": str(snapshot["DBSnapshotIdentifier"]),
        "arn": str(snapshot.get("DBSnapshotArn", "")),
        "created_at": isoformat(original_created_at(snapshot, snapshot_tags(snapshot))),
    }


# ------------------------------------------------------------------------------- schedulers


def scheduler_instances(ec2: EC2Client, environment: str, *, states: Iterable[str]) -> list[dict[str, Any]]:
    """The environment's scheduler instances in one region, by their tags (paginated)."""
    filters: list[FilterTypeDef] = [
        {"Name": f"tag:{TAG_ENVIRONMENT}", "Values": [environment]},
        {"Name": f"tag:{TAG_ROLE}", "Values": list(SCHEDULER_ROLES)},
        {"Name": "instance-state-name", "Values": list(states)},
    ]
    found: list[dict[str, Any]] = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page.get("Reservations", []):
            found.extend(dict(i) for i in reservation.get("Instances", []))
    return found


def instance_state(instance: Mapping[str, Any]) -> str:
    return str(instance.get("State", {}).get("Name", ""))


# How often a stack deletion is looked at again while CloudFormation works on it.
DELETE_POLL_SECONDS = 30.0
