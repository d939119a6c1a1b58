"""The AWS calls each Chalice function makes, and what IAM checks for each of them.

``Recorder`` sees every botocore operation (paginated or not) through a ``before-parameter-build``
hook, with its parameters and the client's region, and attributes it to the function the test is
running. ``authorizations`` turns one call into the IAM checks AWS makes for it: the action (the
operation's IAM name) and, where the ARN follows from the request, the resources. ``implicit`` adds
the permissions AWS checks without botocore naming them (jamsdr.iam.IMPLICIT: logs, iam:PassRole,
kms grants, tag-on-create, ...), each only when its trigger call was recorded.

``allows`` is a small IAM evaluator for the generated policies: Allow statements only (they have no
Deny), case-insensitive action wildcards, case-sensitive resource wildcards. Condition blocks are
NOT evaluated (tag and service conditions need request context moto does not give): a statement
with a condition counts as matching, and the conditions themselves are checked statically.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from jamsdr.iam import IMPLICIT, iam_action

ACCOUNT = "123456789012"  # moto's account
_STACK_ID = "00000000-0000-4000-8000-000000000000"


@dataclass(frozen=True)
class Call:
    function: str
    service: str  # botocore's service name (elbv2, cloudwatch, ...)
    operation: str  # botocore's operation name
    region: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Auth:
    """One IAM check: ``resources`` None means "not derived" (checked at action level only)."""

    action: str
    resources: tuple[str, ...] | None
    why: str


class Recorder:
    """Attributes every botocore call to the function being run (nothing is recorded outside)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._function: str | None = None
        self._paused = 0

    @contextmanager
    def running(self, function: str) -> Iterator[None]:
        previous, self._function = self._function, function
        try:
            yield
        finally:
            self._function = previous

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Test set-up inside a hook (a final snapshot, a heartbeat) is nobody's call."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def hook(self, params: Mapping[str, Any], model: Any, context: Mapping[str, Any], **_: Any) -> None:
        if self._function is None or self._paused:
            return
        self.calls.append(Call(self._function, model.service_model.service_name, model.name,
                               str(context.get("client_region")), copy.deepcopy(dict(params))))

    def of(self, function: str) -> list[Call]:
        return [c for c in self.calls if c.function == function]


# ---------------------------------------------------------------------------------------- ARNs


def _arn(service: str, region: str, rest: str) -> str:
    return f"arn:aws:{service}:{region}:{ACCOUNT}:{rest}"


def _stack(region: str, name: str) -> str:
    return name if name.startswith("arn:") else _arn("cloudformation", region, f"stack/{name}/{_STACK_ID}")


def _rds(region: str, kind: str, identifier: str) -> str:
    return identifier if identifier.startswith("arn:") else _arn("rds", region, f"{kind}:{identifier}")


def _rds_name(identifier: str) -> str:
    return identifier.rsplit(":", 1)[-1] if identifier.startswith("arn:") else identifier


def _ec2(region: str, ids: Iterable[str]) -> tuple[str, ...]:
    kinds = {"i-": "instance", "sg-": "security-group", "vpc-": "vpc", "subnet-": "subnet"}
    found = []
    for resource_id in ids:
        kind = next((k for prefix, k in kinds.items() if resource_id.startswith(prefix)), "unknown")
        found.append(_arn("ec2", region, f"{kind}/{resource_id}"))
    return tuple(found)


def _resources(call: Call) -> tuple[str, ...] | None:  # noqa: PLR0911, PLR0912 - one branch per service
    p, r, op = call.params, call.region, call.operation
    if call.service == "cloudformation":
        if op in ("ValidateTemplate", "GetTemplateSummary"):
            return ("*",)
        return (_stack(r, str(p["StackName"])),) if "StackName" in p else None
    if call.service == "rds":
        if op == "CreateDBSnapshot":
            return (_rds(r, "db", p["DBInstanceIdentifier"]), _rds(r, "snapshot", p["DBSnapshotIdentifier"]))
        if op == "CopyDBSnapshot":
            # The presigned URL makes RDS authorize the source snapshot in its region as the caller.
            return (_rds(r, "snapshot", p["TargetDBSnapshotIdentifier"]), str(p["SourceDBSnapshotIdentifier"]))
        if op == "DeleteDBSnapshot":
            return (_rds(r, "snapshot", p["DBSnapshotIdentifier"]),)
        if op == "DescribeDBSnapshots":
            name = _rds_name(str(p["DBSnapshotIdentifier"])) if p.get("DBSnapshotIdentifier") else "*"
            return (_rds(r, "snapshot", name),)
        if op in ("DescribeDBInstances", "ModifyDBInstance"):
            return (_rds(r, "db", str(p.get("DBInstanceIdentifier") or "*")),)
        if op == "StartDBInstanceAutomatedBackupsReplication":
            return (str(p["SourceDBInstanceArn"]), _arn("rds", r, "auto-backup:*"))
        if op == "DescribeDBInstanceAutomatedBackups":
            return (str(p.get("DBInstanceAutomatedBackupsArn") or _arn("rds", r, "auto-backup:*")),)
        if op == "AddTagsToResource":
            return (str(p["ResourceName"]),)
        return None
    if call.service == "dynamodb" and "TableName" in p:
        return (_arn("dynamodb", r, f"table/{p['TableName']}"),)
    if call.service == "sns" and "TopicArn" in p:
        return (str(p["TopicArn"]),)
    if call.service == "s3":
        return (f"arn:aws:s3:::{p['Bucket']}/{p['Key']}",) if "Key" in p else (f"arn:aws:s3:::{p['Bucket']}",)
    if call.service == "lambda":
        name = str(p["FunctionName"])
        return (name if name.startswith("arn:") else _arn("lambda", r, f"function:{name}"),)
    if call.service == "route53":
        if op == "GetChange":
            return (f"arn:aws:route53:::change/{str(p['Id']).rsplit('/', 1)[-1]}",)
        return (f"arn:aws:route53:::hostedzone/{str(p['HostedZoneId']).rsplit('/', 1)[-1]}",)
    if call.service == "ec2":
        if op.startswith("Describe"):
            return ("*",)
        if op in ("StopInstances", "StartInstances"):
            return _ec2(r, p["InstanceIds"])
        if op == "CreateTags":
            return _ec2(r, p["Resources"])
        if op == "ModifyInstanceAttribute":
            return _ec2(r, [p["InstanceId"], *p.get("Groups", [])])
        if op == "CreateSecurityGroup":
            return (_arn("ec2", r, "security-group/*"), *_ec2(r, [p["VpcId"]]))
        if op in ("RevokeSecurityGroupEgress", "DeleteSecurityGroup"):
            return _ec2(r, [p["GroupId"]])
        return None
    if call.service == "cloudwatch" and op == "DescribeAlarms" and p.get("AlarmNames"):
        return tuple(_arn("cloudwatch", r, f"alarm:{name}") for name in p["AlarmNames"])
    if call.service in ("cloudwatch", "elbv2"):
        return ("*",)  # GetMetricData, PutMetricData, DescribeTargetHealth support no resource ARNs
    return None


_TRANSACT_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                     "ConditionCheck": "ConditionCheckItem"}


def authorizations(call: Call) -> list[Auth]:
    """The IAM checks of one recorded call (a transaction is checked item by item)."""
    why = f"{call.service}.{call.operation} in {call.region}"
    if (call.service, call.operation) == ("dynamodb", "TransactWriteItems"):
        checks = []
        for item in call.params["TransactItems"]:
            [(kind, request)] = item.items()
            table = _arn("dynamodb", call.region, f"table/{request['TableName']}")
            checks.append(Auth(f"dynamodb:{_TRANSACT_ACTIONS[kind]}", (table,), f"{why} ({kind})"))
        return checks
    return [Auth(iam_action(call.service, call.operation), _resources(call), why)]


def implicit(calls: Iterable[Call]) -> list[Auth]:
    """The IMPLICIT permissions whose trigger is among ``calls`` (logs: always)."""
    checks = []
    recorded = list(calls)
    for entry in IMPLICIT:
        if entry.trigger is None:
            checks.append(Auth(entry.action, None, f"implicit, always: {entry.reason}"))
            continue
        for call in recorded:
            if not entry.trigger.matches(iam_action(call.service, call.operation), call.params):
                continue
            resource = call.params.get(entry.resource_param) if entry.resource_param else None
            resources = (resource,) if isinstance(resource, str) and resource.startswith("arn:") else None
            checks.append(Auth(entry.action, resources, f"implicit ({entry.trigger.action}): {entry.reason}"))
    return checks


def required(calls: Iterable[Call]) -> list[Auth]:
    recorded = list(calls)
    return [check for call in recorded for check in authorizations(call)] + implicit(recorded)


# ---------------------------------------------------------------------------------------- evaluation


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def statements(policy: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = policy["Statement"]
    return [found] if isinstance(found, dict) else list(found)


def _action_matches(pattern: str, action: str) -> bool:
    return fnmatch.fnmatchcase(action.lower(), pattern.lower())


def allows(policy: Mapping[str, Any], action: str, resources: tuple[str, ...] | None) -> bool:
    """Allowed by some Allow statement: every resource (or, when not derived, the action alone)."""
    granting = [s for s in statements(policy) if s["Effect"] == "Allow"
                and any(_action_matches(a, action) for a in _listed(s["Action"]))]
    if resources is None:
        return bool(granting)
    return all(any(fnmatch.fnmatchcase(resource, pattern) for s in granting for pattern in _listed(s["Resource"]))
               for resource in resources)


def policy_actions(policy: Mapping[str, Any]) -> set[str]:
    return {a for s in statements(policy) if s["Effect"] == "Allow" for a in _listed(s["Action"])}
