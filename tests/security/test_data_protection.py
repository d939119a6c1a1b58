"""Data protection over a full embedded drill: copies encrypted, nothing shared, nothing public.

moto is lenient (docs/aws-facts.md, "moto 5.2.5: what it skips or accepts"): it copies an encrypted
snapshot without a key and would share a snapshot with everyone without a word. So the drill's own requests are recorded with botocore hooks on
its client factory (installed through the drill's public listener as soon as its embedded AWS is up)
and judged here; the state that matters (database encryption, snapshot attributes, bucket ACLs and
policies) is probed through the same factory while the drill runs. The templates are checked for the
controls moto's CloudFormation does not apply (public access blocks, bucket encryption).

Covered elsewhere, not repeated here (docs/checks.md): the pipeline's request for an encrypted source
(KmsKeyId, SourceRegion, option group: tests/functional/test_snapshots.py), the failback copy
(KmsKeyId alias/aws/rds: tests/functional/test_recovery_chain.py::test_failback_after_recovery), and
PubliclyAccessible false plus StorageEncrypted on both database paths (tests/functional/test_templates.py).
"""

from __future__ import annotations

import ast
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib.aws import ClientFactory, get_factory
from jamsdr.drill import DrillEvent, DrillResult, run_embedded_drill
from jamsdr.embedded import EmbeddedAws
from jamsdr.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
TEMPLATE_NAMES = ("jams-network.yaml", "jams-app.yaml", "dr-support.yaml", "event-forwarding.yaml")
ENVIRONMENT_TAG = "jams-dr:environment"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning"),
    pytest.mark.filterwarnings("ignore:Unable to delete .*:UserWarning"),
]


# ----------------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class Call:
    service: str
    operation: str
    region: str
    params: dict[str, Any]


@dataclass
class Recorder:
    """Every API request of the drill (as the code passed it) and the probes' view of the state."""

    calls: list[Call] = field(default_factory=list)
    answers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (operation, DBSnapshot)
    primary: dict[str, Any] = field(default_factory=dict)
    recovery: dict[str, Any] = field(default_factory=dict)
    hooked: bool = False
    _probing: threading.local = field(default_factory=threading.local)

    def before(self, params: dict[str, Any], model: Any, context: Mapping[str, Any], **_: Any) -> None:
        if not getattr(self._probing, "on", False):
            self.calls.append(Call(model.service_model.service_name, model.name,
                                   str(context.get("client_region")), dict(params)))

    def after(self, parsed: Mapping[str, Any], model: Any, **_: Any) -> None:
        if model.name in ("CreateDBSnapshot", "CopyDBSnapshot") and "DBSnapshot" in parsed:
            self.answers.append((model.name, dict(parsed["DBSnapshot"])))

    def listen(self, event: DrillEvent) -> None:
        if event.phase == "embedded AWS" and event.state == "done" and not self.hooked:
            factory = get_factory()  # the drill's own factory: EmbeddedAws.start installs it
            factory.register_hook("before-parameter-build", self.before)
            factory.register_hook("after-call.rds", self.after)
            self.hooked = True
        elif event.phase == "recovery points" and event.state == "done":
            self.primary = self.probe(get_factory(), "us-east-1")
        elif event.phase == "recovery chain" and event.state == "done":
            self.recovery = self.probe(get_factory(), "us-west-2")

    def probe(self, factory: ClientFactory, region: str) -> dict[str, Any]:
        """Databases, manual snapshots with their sharing attribute, buckets with ACL and policy."""
        self._probing.on = True
        try:
            rds = factory.client("rds", region)
            instances = {
                db["DBInstanceIdentifier"]: {"StorageEncrypted": db.get("StorageEncrypted"),
                                             "PubliclyAccessible": db.get("PubliclyAccessible")}
                for page in rds.get_paginator("describe_db_instances").paginate()
                for db in page["DBInstances"]
            }
            snapshots = {}
            for page in rds.get_paginator("describe_db_snapshots").paginate(SnapshotType="manual"):
                for snap in page["DBSnapshots"]:
                    result = rds.describe_db_snapshot_attributes(DBSnapshotIdentifier=snap["DBSnapshotIdentifier"])
                    attributes = result["DBSnapshotAttributesResult"]["DBSnapshotAttributes"]
                    snapshots[snap["DBSnapshotIdentifier"]] = {a["AttributeName"]: a["AttributeValues"] for a in attributes}
            s3 = factory.client("s3", region)
            buckets = {}
            for bucket in s3.list_buckets()["Buckets"]:
                name = bucket["Name"]
                policy = None
                try:
                    policy = json.loads(s3.get_bucket_policy(Bucket=name)["Policy"])
                except s3.exceptions.ClientError as exc:
                    if exc.response["Error"]["Code"] != "NoSuchBucketPolicy":
                        raise
                buckets[name] = {"grants": s3.get_bucket_acl(Bucket=name)["Grants"], "policy": policy}
            return {"instances": instances, "snapshots": snapshots, "buckets": buckets}
        finally:
            self._probing.on = False

    def of(self, operation: str) -> list[Call]:
        return [c for c in self.calls if c.operation == operation]


@dataclass
class Drill:
    result: DrillResult
    recorder: Recorder


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory, moto_server: EmbeddedAws) -> Drill:
    """The default scenario: recovery points, the primary region lost, automatic recovery."""
    # moto's state is per process and the drill's server does not clear it: start from nothing.
    moto_server.reset()
    recorder = Recorder()
    result = run_embedded_drill(load_scenario(None), tmp_path_factory.mktemp("drill"), listener=recorder.listen)
    return Drill(result, recorder)


# ----------------------------------------------------------------------------------- exposure rules

PUBLIC_ACLS = {"public-read", "public-read-write", "authenticated-read"}
PUBLIC_GROUPS = ("http://acs.amazonaws.com/groups/global/AllUsers",
                 "http://acs.amazonaws.com/groups/global/AuthenticatedUsers")
SHARING_OPERATIONS = {
    ("rds", "ModifyDBSnapshotAttribute"), ("rds", "ModifyDBClusterSnapshotAttribute"),
    ("ec2", "ModifySnapshotAttribute"), ("ec2", "ModifyImageAttribute"),
    ("s3", "DeletePublicAccessBlock"), ("s3", "DeleteBucketPolicy"),
}


def _public_principal(principal: Any) -> bool:
    if principal == "*":
        return True
    if isinstance(principal, Mapping):
        values = principal.get("AWS", [])
        return "*" in (values if isinstance(values, list) else [values])
    return False


def public_statements(policy: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Allow statements for everyone without a condition narrowing them (a Deny for "*" is fine)."""
    statements = (policy or {}).get("Statement", [])
    return [s for s in (statements if isinstance(statements, list) else [statements])
            if s.get("Effect") == "Allow" and _public_principal(s.get("Principal")) and not s.get("Condition")]


def exposures(calls: Iterable[Call]) -> list[str]:
    """Requests that share data outside the account or make it public."""
    found = []
    for call in calls:
        key, p = (call.service, call.operation), call.params
        if key in SHARING_OPERATIONS:
            found.append(f"{call.operation} {json.dumps(p, default=str)[:200]}")
        if call.service == "s3":
            if str(p.get("ACL", "")).lower() in PUBLIC_ACLS:
                found.append(f"{call.operation} with ACL {p['ACL']}")
            grants = " ".join(str(p.get(k, "")) for k in ("GrantRead", "GrantReadACP", "GrantWrite", "GrantFullControl"))
            if any(group in grants for group in PUBLIC_GROUPS):
                found.append(f"{call.operation} grants to a public group")
            if call.operation == "PutBucketPolicy" and public_statements(json.loads(p.get("Policy", "{}"))):
                found.append(f"PutBucketPolicy allows everyone on {p.get('Bucket')}")
            if call.operation == "PutPublicAccessBlock" and not all(
                p.get("PublicAccessBlockConfiguration", {}).get(k) for k in
                ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
            ):
                found.append(f"PutPublicAccessBlock loosens {p.get('Bucket')}")
        if p.get("PubliclyAccessible") is True:
            found.append(f"{call.operation} makes {p.get('DBInstanceIdentifier')} publicly accessible")
        if call.operation == "AddPermission" and p.get("Principal") == "*":
            found.append(f"{call.service} AddPermission for everyone")
    return found


# ----------------------------------------------------------------------------------- the drill


def test_the_drill_made_the_requests_and_probes_the_checks_need(drill: Drill) -> None:
    """Without this, an empty recording would pass every check below."""
    result, recorder = drill.result, drill.recorder
    # The recovery chain must have run: the recovery region's checks below read what it built.
    assert result.report["decision"] == "region-recovery" and result.report["steps"], (
        result.report["decision"], result.report["outcome"], [e.detail for e in result.events if e.state == "failed"])
    assert recorder.hooked
    cycles = result.scenario.snapshot_cycles
    assert len(recorder.of("CreateDBSnapshot")) >= cycles
    assert len(recorder.of("CopyDBSnapshot")) >= cycles
    # The world's stacks (made through change sets, as bootstrap makes them) and the recovery's application stack.
    assert len(recorder.of("CreateChangeSet")) >= 4 and len(recorder.of("CreateStack")) >= 1
    assert recorder.primary["instances"] and recorder.primary["snapshots"] and recorder.primary["buckets"]
    assert recorder.recovery["instances"] and recorder.recovery["snapshots"]


def test_every_copy_goes_to_the_recovery_region_with_its_tags(drill: Drill) -> None:
    settings_regions = (drill.result.report["primary_region"], drill.result.report["recovery_region"])
    primary, recovery = settings_regions
    for call in drill.recorder.of("CopyDBSnapshot"):
        p = call.params
        # a client of the DESTINATION region (docs/aws-facts.md, "Cross-region snapshot copy: the request")
        assert call.region == recovery
        assert p["SourceRegion"] == primary  # boto3 presigns the encrypted cross-region copy from it
        assert p["SourceDBSnapshotIdentifier"].startswith(f"arn:aws:rds:{primary}:")
        assert p["CopyTags"] is True
        assert ENVIRONMENT_TAG in {t["Key"] for t in p["Tags"]}


def test_every_copy_names_a_kms_key(drill: Drill) -> None:
    copies = drill.recorder.of("CopyDBSnapshot")
    assert copies
    assert [c.params["TargetDBSnapshotIdentifier"] for c in copies if not c.params.get("KmsKeyId")] == []
    # and what came back is an encrypted copy (moto encrypts a copy made with a key)
    answers = [answer for operation, answer in drill.recorder.answers if operation == "CopyDBSnapshot"]
    assert len(answers) == len(copies)
    assert all(answer.get("Encrypted") is True for answer in answers)


def test_every_snapshot_is_of_an_encrypted_database_or_its_copy_is_encrypted(drill: Drill) -> None:
    recorder = drill.recorder
    encrypted = {db for db, facts in recorder.primary["instances"].items() if facts["StorageEncrypted"]}
    keyed_sources = {c.params["SourceDBSnapshotIdentifier"].rsplit(":", 1)[-1]
                     for c in recorder.of("CopyDBSnapshot") if c.params.get("KmsKeyId")}
    created = recorder.of("CreateDBSnapshot")
    assert created
    unprotected = [c.params["DBSnapshotIdentifier"] for c in created
                   if c.params["DBInstanceIdentifier"] not in encrypted
                   and c.params["DBSnapshotIdentifier"] not in keyed_sources]
    assert unprotected == []


def test_the_recovered_database_is_encrypted_and_private(drill: Drill) -> None:
    instances = drill.recorder.recovery["instances"]
    assert instances
    assert {db: facts for db, facts in instances.items()
            if facts != {"StorageEncrypted": True, "PubliclyAccessible": False}} == {}


def test_no_request_shares_or_publishes_anything(drill: Drill) -> None:
    assert exposures(drill.recorder.calls) == []
    # DescribeAccountAttributes reads the account's quotas (docs/retention.md); it names no snapshot
    assert not [c for c in drill.recorder.calls if "Attribute" in c.operation and c.service == "rds"
                and c.operation != "DescribeAccountAttributes"]


@pytest.mark.parametrize("region", ["primary", "recovery"])
def test_no_snapshot_or_bucket_is_public_in_either_region(drill: Drill, region: str) -> None:
    state = getattr(drill.recorder, region)
    shared = {snap: attrs.get("restore") for snap, attrs in state["snapshots"].items() if attrs.get("restore")}
    assert shared == {}  # not even with another account, let alone "all"
    for name, bucket in state["buckets"].items():
        grantees = [g["Grantee"].get("URI") for g in bucket["grants"]]
        assert not set(grantees) & set(PUBLIC_GROUPS), name
        assert public_statements(bucket["policy"]) == [], name


# ----------------------------------------------------------------------------------- the rules can fail


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (Call("rds", "ModifyDBSnapshotAttribute", "us-west-2",
              {"DBSnapshotIdentifier": "jams-dr-1-copy", "AttributeName": "restore", "ValuesToAdd": ["all"]}),
         "ModifyDBSnapshotAttribute"),
        (Call("rds", "ModifyDBClusterSnapshotAttribute", "us-west-2", {"AttributeName": "restore"}),
         "ModifyDBClusterSnapshotAttribute"),
        (Call("s3", "PutObject", "us-west-2", {"Bucket": "b", "Key": "report.json", "ACL": "public-read"}),
         "ACL public-read"),
        (Call("s3", "PutBucketAcl", "us-west-2",
              {"Bucket": "b", "GrantRead": "uri=http://acs.amazonaws.com/groups/global/AllUsers"}),
         "public group"),
        (Call("s3", "PutBucketPolicy", "us-west-2", {"Bucket": "b", "Policy": json.dumps(
            {"Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "s3:GetObject",
                            "Resource": "arn:aws:s3:::b/*"}]})}),
         "allows everyone"),
        (Call("s3", "PutPublicAccessBlock", "us-west-2",
              {"Bucket": "b", "PublicAccessBlockConfiguration": {"BlockPublicAcls": True}}),
         "loosens"),
        (Call("s3", "DeletePublicAccessBlock", "us-west-2", {"Bucket": "b"}), "DeletePublicAccessBlock"),
        (Call("rds", "ModifyDBInstance", "us-west-2", {"DBInstanceIdentifier": "db", "PubliclyAccessible": True}),
         "publicly accessible"),
        (Call("lambda", "AddPermission", "us-west-2", {"FunctionName": "f", "Principal": "*"}), "for everyone"),
    ],
)
def test_the_exposure_rules_catch_each_planted_request(call: Call, expected: str) -> None:
    found = exposures([call])
    assert any(expected in f for f in found), found


def test_the_exposure_rules_accept_what_jams_dr_does() -> None:
    deny_insecure = {"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*",
                                    "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}
    calls = [
        Call("s3", "PutObject", "us-west-2", {"Bucket": "b", "Key": "k", "ServerSideEncryption": "AES256"}),
        Call("s3", "PutBucketPolicy", "us-west-2", {"Bucket": "b", "Policy": json.dumps(deny_insecure)}),
        Call("rds", "CopyDBSnapshot", "us-west-2", {"KmsKeyId": "k", "CopyTags": True}),
    ]
    assert exposures(calls) == []


# ----------------------------------------------------------------------------------- the code


SHARING_METHODS = {
    "modify_db_snapshot_attribute", "modify_db_cluster_snapshot_attribute", "modify_snapshot_attribute",
    "modify_image_attribute", "put_bucket_acl", "put_object_acl", "delete_public_access_block", "add_permission",
}


def sharing_calls_in(source: str, name: str) -> list[str]:
    """Method calls of a sharing API (any receiver) in Python source."""
    return [f"{name}:{node.lineno} {node.func.attr}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SHARING_METHODS]


def test_no_code_path_calls_a_sharing_api() -> None:
    """Beyond the drill's paths (failback, operator commands): nothing in the code can share a snapshot."""
    files = [*sorted((ROOT / "chalicelib").rglob("*.py")), *sorted((ROOT / "jamsdr").rglob("*.py")), ROOT / "app.py"]
    assert len(files) > 20
    found = [hit for path in files for hit in sharing_calls_in(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []
    planted = "rds.modify_db_snapshot_attribute(DBSnapshotIdentifier=s, AttributeName='restore', ValuesToAdd=['all'])"
    assert sharing_calls_in(planted, "planted.py") == ["planted.py:1 modify_db_snapshot_attribute"]


# ----------------------------------------------------------------------------------- the templates


def _bucket_problems(props: Mapping[str, Any]) -> list[str]:
    problems = []
    block = props.get("PublicAccessBlockConfiguration") or {}
    flags = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
    if not all(block.get(flag) is True for flag in flags):
        problems.append("PublicAccessBlockConfiguration must set all four flags to true")
    if not props.get("BucketEncryption"):
        problems.append("no BucketEncryption")
    if props.get("AccessControl", "Private") != "Private":
        problems.append(f"AccessControl {props['AccessControl']}")
    return problems


def _key_problems(props: Mapping[str, Any]) -> list[str]:
    policy = props.get("KeyPolicy")
    text = policy.get("Fn::Sub") if isinstance(policy, Mapping) else policy
    document = json.loads(re.sub(r"\$\{[^}]+\}", "X", text)) if isinstance(text, str) else text
    problems = []
    for statement in (document or {}).get("Statement", []):
        if statement.get("Effect") == "Allow" and _public_principal(statement.get("Principal")):
            condition = json.dumps(statement.get("Condition") or {})
            if "kms:CallerAccount" not in condition and "aws:PrincipalAccount" not in condition:
                problems.append(f"key usable by any account ({statement.get('Sid')})")
    return problems


_RESOURCE_RULES: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "AWS::S3::Bucket": _bucket_problems,
    "AWS::S3::BucketPolicy": lambda props: (
        ["allows everyone without a condition"] if public_statements(props.get("PolicyDocument")) else []),
    "AWS::KMS::Key": _key_problems,
    "AWS::SNS::Topic": lambda props: [] if props.get("KmsMasterKeyId") else ["topic not encrypted"],
    "AWS::DynamoDB::Table": lambda props: (
        ["SSE disabled"] if (props.get("SSESpecification") or {}).get("SSEEnabled") is False else []),
    "AWS::RDS::DBSnapshot": lambda _: ["a template never owns a snapshot (sharing, deletion)"],
    "AWS::RDS::DBClusterSnapshot": lambda _: ["a template never owns a snapshot (sharing, deletion)"],
}


def template_exposures(name: str, template: Mapping[str, Any]) -> list[str]:
    """What moto's CloudFormation does not apply, checked in the template: buckets, policies, keys."""
    return [
        f"{name}:{logical_id}: {problem}"
        for logical_id, resource in (template.get("Resources") or {}).items()
        for problem in _RESOURCE_RULES.get(resource.get("Type"), lambda _: [])(resource.get("Properties") or {})
    ]


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_templates_keep_data_private_and_encrypted(name: str) -> None:
    template = yaml.safe_load((TEMPLATES / name).read_text())
    assert template_exposures(name, template) == []


def test_every_bucket_in_the_templates_is_checked() -> None:
    """The bucket rules above are not vacuous: the support stack has the artifact bucket."""
    buckets = [r for n in TEMPLATE_NAMES for r in yaml.safe_load((TEMPLATES / n).read_text())["Resources"].values()
               if r["Type"] == "AWS::S3::Bucket"]
    assert buckets


def test_the_template_rules_catch_planted_exposures() -> None:
    planted: dict[str, Any] = {"Resources": {
        "Open": {"Type": "AWS::S3::Bucket", "Properties": {"AccessControl": "PublicRead"}},
        "Half": {"Type": "AWS::S3::Bucket", "Properties": {
            "BucketEncryption": {"ServerSideEncryptionConfiguration": []},
            "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                                               "BlockPublicPolicy": False, "RestrictPublicBuckets": True}}},
        "OpenPolicy": {"Type": "AWS::S3::BucketPolicy", "Properties": {"PolicyDocument": {"Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}]}}},
        "AnyAccountKey": {"Type": "AWS::KMS::Key", "Properties": {"KeyPolicy": {"Fn::Sub": json.dumps({"Statement": [
            {"Sid": "Everyone", "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt",
             "Resource": "*", "Condition": {"StringEquals": {"kms:ViaService": "rds.${AWS::Region}.amazonaws.com"}}}]})}}},
        "Plain": {"Type": "AWS::SNS::Topic", "Properties": {}},
        "Shared": {"Type": "AWS::RDS::DBSnapshot", "Properties": {}},
    }}
    problems = template_exposures("planted.yaml", planted)
    expected: dict[str, Callable[[str], bool]] = {
        "Open": lambda p: "PublicAccessBlockConfiguration" in p or "AccessControl" in p,
        "Half": lambda p: "four flags" in p,
        "OpenPolicy": lambda p: "allows everyone" in p,
        "AnyAccountKey": lambda p: "any account" in p,
        "Plain": lambda p: "not encrypted" in p,
        "Shared": lambda p: "never owns a snapshot" in p,
    }
    for logical_id, matches in expected.items():
        assert any(f"planted.yaml:{logical_id}:" in p and matches(p) for p in problems), (logical_id, problems)
