"""Every function runs as its own role in the embedded drill: IAM's check, made on each AWS call.

``acting_as(function)`` says which Lambda function the code now running stands for (a context
variable: the drill runs the functions in process, so credentials cannot tell them apart). The
``Enforcer`` hooks every client of the embedded ClientFactory; while a function is active, each call
is turned into the checks IAM makes for it (``authorizations``: the operation's IAM action and,
where the ARN follows from the request, its resources; ``implicit``: what AWS checks without botocore
naming it, e.g. iam:PassRole on CreateStack with a RoleARN) and refused, as IAM refuses it, unless that
function's generated policy (jamsdr/iam.py) allows it. Calls made with no function active (the
drill's own world building and inspection, the JAMS heartbeat fleet) are not checked.

``allows`` is a small IAM evaluator for the generated policies: Allow statements only (they have no
Deny), case-insensitive action wildcards, case-sensitive resource wildcards. Condition blocks are
NOT evaluated (tag and service conditions need request context moto does not give): a statement
with a condition counts as matching; tests/security checks the conditions themselves statically.

The refusal is the error IAM returns, with its message form ("User: <assumed-role ARN> is not
authorized to perform: <action> on resource: <ARN> because no identity-based policy allows the
<action> action"; IAM User Guide, "Troubleshoot access denied error messages",
https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_access-denied.html) and the code each
protocol uses for it (AccessDenied for query/XML services, AccessDeniedException for JSON services,
UnauthorizedOperation for EC2, AuthorizationError for SNS).
"""

from __future__ import annotations

import contextvars
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from jamsdr.iam import IMPLICIT, iam_action

if TYPE_CHECKING:
    from chalicelib.aws import ClientFactory

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


def triggered(call: Call) -> list[Auth]:
    """The IMPLICIT permissions that ``call`` triggers (what AWS checks besides the call's own action)."""
    checks = []
    action = iam_action(call.service, call.operation)
    for entry in IMPLICIT:
        if entry.trigger is None or not entry.trigger.matches(action, call.params):
            continue
        resource = call.params.get(entry.resource_param) if entry.resource_param else None
        resources = (resource,) if isinstance(resource, str) and resource.startswith("arn:") else None
        checks.append(Auth(entry.action, resources, f"implicit ({entry.trigger.action}): {entry.reason}"))
    return checks


def implicit(calls: Iterable[Call]) -> list[Auth]:
    """The IMPLICIT permissions whose trigger is among ``calls`` (logs: always)."""
    checks = [Auth(entry.action, None, f"implicit, always: {entry.reason}") for entry in IMPLICIT
              if entry.trigger is None]
    return checks + [check for call in calls for check in triggered(call)]


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


# Condition keys whose value the call itself tells (the request's region, tags and, for a permission a
# call triggers, the call's operation). Other keys (aws:ResourceTag/..., kms:ViaService) need the resource's
# state or the calling service: they are not evaluated here (a statement they guard counts as applying),
# and tests/security checks them statically.
KNOWN_CONDITION_PREFIXES = ("aws:RequestedRegion", "aws:RequestTag/", "ec2:CreateAction", "cloudformation:CreateAction")


def request_context(call: Call) -> dict[str, list[str]]:
    """The condition keys of ``call`` that the request itself carries."""
    context: dict[str, list[str]] = {"aws:RequestedRegion": [call.region]}
    tags = list(call.params.get("Tags") or [])
    for spec in call.params.get("TagSpecifications") or []:
        tags += list(spec.get("Tags") or [])
    for tag in tags:
        if isinstance(tag, Mapping) and "Key" in tag:
            context.setdefault(f"aws:RequestTag/{tag['Key']}", []).append(str(tag.get("Value", "")))
    return context


def _condition_holds(condition: Mapping[str, Any], context: Mapping[str, list[str]]) -> bool:
    """IAM's rule: every operator and every key must hold; a key the request lacks fails StringEquals and
    StringLike. Keys outside KNOWN_CONDITION_PREFIXES and other operators are not evaluated (they hold)."""
    for operator, keys in condition.items():
        if operator not in ("StringEquals", "StringLike"):
            continue
        for key, wanted in keys.items():
            if not key.startswith(KNOWN_CONDITION_PREFIXES):
                continue
            present = context.get(key)
            if not present:
                return False
            match = (lambda value, pattern: value == pattern) if operator == "StringEquals" else fnmatch.fnmatchcase
            if not any(match(value, pattern) for value in present for pattern in _listed(wanted)):
                return False
    return True


def allows(policy: Mapping[str, Any], action: str, resources: tuple[str, ...] | None,
           context: Mapping[str, list[str]] | None = None) -> bool:
    """Allowed by some Allow statement: every resource (or, when not derived, the action alone). With the
    request's ``context``, a statement applies only where its conditions hold (``_condition_holds``)."""
    granting = [s for s in statements(policy) if s["Effect"] == "Allow"
                and any(_action_matches(a, action) for a in _listed(s["Action"]))
                and (context is None or _condition_holds(s.get("Condition") or {}, context))]
    if resources is None:
        return bool(granting)
    return all(any(fnmatch.fnmatchcase(resource, pattern) for s in granting for pattern in _listed(s["Resource"]))
               for resource in resources)


def policy_actions(policy: Mapping[str, Any]) -> set[str]:
    return {a for s in statements(policy) if s["Effect"] == "Allow" for a in _listed(s["Action"])}


# ---------------------------------------------------------------------------------------- enforcement

T = TypeVar("T")

# The stage name the embedded drill's policies are generated for (its settings are no .chalice stage).
DRILL_STAGE = "drill"

_ACTING: contextvars.ContextVar[str | None] = contextvars.ContextVar("jamsdr_acting_function", default=None)


@contextmanager
def acting_as(function: str | None) -> Iterator[None]:
    """The code run inside stands for the Lambda function ``function`` (its name in app.py); None: for
    no function (the embedded AWS's own work inside a hook, which AWS does with its own credentials)."""
    token = _ACTING.set(function)
    try:
        yield
    finally:
        _ACTING.reset(token)


def run_as(function: str, action: Callable[[], T]) -> T:
    """``action()`` run as the Lambda function ``function`` (for callers that take a callable)."""
    with acting_as(function):
        return action()


def acting_function() -> str | None:
    return _ACTING.get()


def first_denied(policy: Mapping[str, Any], check: Auth,
                 context: Mapping[str, list[str]] | None = None) -> str | None:
    """The resource IAM would name in its refusal of ``check`` ("*" at action level), None if allowed."""
    if check.resources is None:
        return None if allows(policy, check.action, None, context) else "*"
    return next((r for r in check.resources if not allows(policy, check.action, (r,), context)), None)


def _denied_code(service: str, protocol: str) -> str:
    if service == "sns":
        return "AuthorizationError"
    if protocol == "ec2":
        return "UnauthorizedOperation"
    return "AccessDeniedException" if protocol in ("json", "rest-json", "smithy-rpc-v2-cbor") else "AccessDenied"


@dataclass(frozen=True)
class Denial:
    function: str
    action: str
    resource: str
    call: str  # service.Operation in region

    def message(self, role: str) -> str:
        return (f"User: arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{self.function} is not authorized to perform: "
                f"{self.action} on resource: {self.resource} because no identity-based policy allows the "
                f"{self.action} action")


class Enforcer:
    """Refuses, as IAM would, each call of an active function that its policy does not allow.

    ``policies`` maps a function's name in app.py to its policy document; a function without one
    has no permission at all. ``role_name`` gives the role each function runs as (the refusal names it).
    """

    # A botocore event carrying the operation's own parameters (before-call has the serialized request);
    # raising from it fails the call before anything is sent, with no retry, as IAM's refusal does.
    EVENT = "before-parameter-build"

    def __init__(self, policies: Mapping[str, Mapping[str, Any]],
                 role_name: Callable[[str], str] | None = None) -> None:
        self.policies = dict(policies)
        self._role_name = role_name or (lambda function: function)
        self.denied: list[Denial] = []
        self.checked = 0
        self._factory: ClientFactory | None = None
        self._bound: list[tuple[ClientFactory, Any]] = []

    @classmethod
    def for_settings(cls, settings: Any, stage: str = DRILL_STAGE) -> Enforcer:
        """The policies jamsdr/iam.py generates for ``settings``, as if they were stage ``stage``."""
        from jamsdr import iam  # noqa: PLC0415 - imports the settings machinery only when asked

        advance = settings.advance_function_name or f"{iam.APP_NAME}-{stage}-{iam.ADVANCE_HANDLER}"
        scope = iam.Scope(settings, stage, advance)
        return cls(iam.policies(scope), scope.function_name)

    def role(self, function: str) -> str:
        return str(self._role_name(function))

    def install(self, factory: ClientFactory) -> None:
        if self._factory is factory:
            return
        self.uninstall()
        factory.register_hook(self.EVENT, self.hook)
        self._factory = factory

    def install_for(self, factory: ClientFactory, function: str) -> None:
        """Check every call of ``factory``'s clients as ``function``'s: the factory holds that function's
        credentials (the embedded Lambda runtime gives each function one), so the caller is known from the
        credentials a call is signed with, not from where it runs."""
        def hook(params: Mapping[str, Any], model: Any, context: Mapping[str, Any], **_: Any) -> None:
            self._check_call(function, params, model, context)

        factory.register_hook(self.EVENT, hook)
        self._bound.append((factory, hook))

    def uninstall(self) -> None:
        for factory, hook in self._bound:
            factory.unregister_hook(self.EVENT, hook)
        self._bound.clear()
        if self._factory is not None:
            self._factory.unregister_hook(self.EVENT, self.hook)
            self._factory = None

    def check(self, call: Call) -> Denial | None:
        """The first of ``call``'s IAM checks its function's policy does not allow (None: all allowed)."""
        policy = self.policies.get(call.function, {"Statement": []})
        context = request_context(call)
        # A permission the call triggers is checked with the call's operation as its CreateAction.
        triggered_context = {**context, "ec2:CreateAction": [call.operation],
                             "cloudformation:CreateAction": [call.operation]}
        checks = [(auth, context) for auth in authorizations(call)]
        checks += [(auth, triggered_context) for auth in triggered(call)]
        for auth, known in checks:
            resource = first_denied(policy, auth, known)
            if resource is not None:
                return Denial(call.function, auth.action, resource, auth.why)
        return None

    def hook(self, params: Mapping[str, Any], model: Any, context: Mapping[str, Any], **_: Any) -> None:
        function = _ACTING.get()
        if function is None:
            return
        self._check_call(function, params, model, context)

    def _check_call(self, function: str, params: Mapping[str, Any], model: Any, context: Mapping[str, Any]) -> None:
        service = str(model.service_model.service_name)
        call = Call(function, service, str(model.name), str(context.get("client_region")), dict(params))
        self.checked += 1
        denial = self.check(call)
        if denial is None:
            return
        self.denied.append(denial)
        code = _denied_code(service, str(model.service_model.protocol))
        metadata: Any = {"HTTPStatusCode": 403, "HTTPHeaders": {}, "RequestId": "", "HostId": "", "RetryAttempts": 0}
        raise ClientError({"Error": {"Code": code, "Message": denial.message(self.role(function))},
                           "ResponseMetadata": metadata}, str(model.name))
