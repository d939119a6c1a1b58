"""Typed settings read once from the environment.

Every setting is declared in ``SETTINGS`` below with its environment variable, default and meaning:
that table is the single place defaults live (the README's table is checked against it by a test).
``Settings.from_env`` validates all of them and raises one ``SettingsError`` listing every bad value
with its fix, so an operator corrects a stage's config in one pass instead of one deploy per typo.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, get_args

from chalicelib.errors import Refused
from chalicelib.regions import REGION_PATTERN
from chalicelib.retention import DEFAULT_MANUAL_SNAPSHOT_QUOTA, fit_problem
from chalicelib.scoping import scoped

FailoverMode = Literal["auto", "approve", "notify"]
RecoverySource = Literal["snapshot", "pitr"]

# re.ASCII wherever \d appears: in str patterns it matches any Unicode digit (Arabic-Indic ones too).
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$")
_DB_ID = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$")
_STACK = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,127}$")
_TOPIC = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]+$", re.ASCII)
_ZONE_ID = re.compile(r"^Z?[A-Z0-9]{1,32}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$", re.ASCII)


class SettingsError(Refused, ValueError):
    """One or more settings are invalid; the message lists each one and how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"jams-dr settings are invalid ({len(problems)} problem(s)); fix them in the stage's "
            f"environment_variables in .chalice/config.json (or the shell environment):\n{lines}"
        )


@dataclass(frozen=True)
class Spec:
    """One setting: environment variable, default (as the env string) and what it means."""

    env: str
    default: str
    help: str
    parse: Callable[[str], Any]
    fix: str


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        text = raw.strip()
        # int() alone also reads "1_0" and non-ASCII (e.g. fullwidth) digits: not what an operator means.
        match = re.fullmatch(r"([+-]?)0*([0-9]+)", text, re.ASCII)
        if match is None:
            raise ValueError("not an integer")
        # Length first: int() refuses over 4300 digits with a message about Python, not about the setting.
        sign, digits = match.groups()
        if len(digits) > 18 or not low <= int(sign + digits) <= high:
            raise ValueError(f"out of range {low}..{high}")
        return int(sign + digits)

    return parse


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if not pattern.match(value):
            raise ValueError(f"not a valid {what}")
        return value

    return parse


def _optional(inner: Callable[[str], str]) -> Callable[[str], str | None]:
    def parse(raw: str) -> str | None:
        return inner(raw) if raw.strip() else None

    return parse


# A key id (single- or multi-Region), an alias, or the ARN of either: a prefix check let "alias/" and
# any ARN (an SNS topic's) through, to fail hours later at the first encrypted copy.
_KMS_ID = r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
_KMS_ALIAS = r"alias/[A-Za-z0-9/_-]+"
_KMS_KEY = re.compile(
    rf"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{{12}}:(?:key/{_KMS_ID}|{_KMS_ALIAS})|{_KMS_ID}|{_KMS_ALIAS}", re.ASCII)


def _kms_key(raw: str) -> str:
    value = raw.strip()
    if not _KMS_KEY.fullmatch(value):
        raise ValueError("not a KMS key ARN, key id or alias/NAME")
    return value


def _option_group_map(raw: str) -> dict[str, str]:
    try:
        parsed = json.loads(raw.strip() or "{}")  # blank is the default, as for every other setting
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    except RecursionError:
        raise ValueError("not a map: JSON nested too deeply") from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in parsed.items()
    ):
        raise ValueError("must be a JSON object of non-empty strings")
    return dict(parsed)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("not a boolean")


def _recovery_source(raw: str) -> str:
    value = raw.strip().lower()
    if value not in get_args(RecoverySource):
        raise ValueError("not one of snapshot, pitr")
    return value


def _failover_mode(raw: str) -> str:
    value = raw.strip().lower()
    if value not in get_args(FailoverMode):
        raise ValueError("not one of auto, approve, notify")
    return value


# The single table of settings: (attribute) -> Spec. Order is the README's order.
SETTINGS: dict[str, Spec] = {
    "primary_region": Spec(
        "PRIMARY_REGION", "us-east-1", "Region where JAMS normally runs.",
        _matching(REGION_PATTERN, "AWS region"), "set an AWS region name such as us-east-1"),
    "recovery_region": Spec(
        "RECOVERY_REGION", "us-west-2",
        "Region that holds the standby stack, the copies and this app (must differ from the primary).",
        _matching(REGION_PATTERN, "AWS region"), "set an AWS region name different from PRIMARY_REGION"),
    "environment": Spec(
        "ENVIRONMENT_NAME", "jams",
        "Name of the JAMS environment; prefixes stacks and is the heartbeat `Environment` dimension.",
        _matching(_NAME, "name (lowercase letters, digits, dashes; 2-40 chars)"),
        "use lowercase letters, digits and dashes, e.g. jams-prod"),
    "db_instance_id": Spec(
        "DB_INSTANCE_ID", "", "RDS instance id of the JAMS database in the primary region "
        "(empty: read DatabaseInstanceId from the primary application stack).",
        _optional(_matching(_DB_ID, "RDS instance identifier")),
        "set the DBInstanceIdentifier shown by `aws rds describe-db-instances`"),
    "network_stack": Spec(
        "NETWORK_STACK_NAME", "", "Network stack in the primary region (empty: <env>-network).",
        _optional(_matching(_STACK, "stack name")), "use a CloudFormation stack name"),
    "app_stack": Spec(
        "APP_STACK_NAME", "", "Application stack name, in either region (empty: <env>-app).",
        _optional(_matching(_STACK, "stack name")), "use a CloudFormation stack name"),
    "standby_stack": Spec(
        "STANDBY_STACK_NAME", "",
        "Standby (network) stack in the recovery region that pins the recovery point "
        "(empty: <env>-standby).",
        _optional(_matching(_STACK, "stack name")), "use a CloudFormation stack name"),
    "copy_kms_key": Spec(
        "COPY_KMS_KEY_ID", "", "KMS key in the recovery region for copies of encrypted snapshots "
        "(required when the database is encrypted; the support stack's CopyKeyArn).",
        _optional(_kms_key), "set the CopyKeyArn output of the dr-support stack"),
    "option_group_map": Spec(
        "OPTION_GROUP_MAP", "{}", "JSON map of primary option group -> recovery-region option group "
        "(SQL Server TDE needs one; empty map: use the standby stack's OptionGroupName output).",
        _option_group_map, 'set a JSON object such as {"jams-tde": "jams-standby-tde"}'),
    "snapshot_interval_minutes": Spec(
        "SNAPSHOT_INTERVAL_MINUTES", "60", "Minutes between manual snapshots of the database.",
        _int_between(5, 10080), "use whole minutes between 5 and 10080"),
    "retain_count": Spec(
        "RETAIN_COUNT", "7", "Snapshots kept per region at least (newest first), whatever their age.",
        _int_between(1, 90), "use a count between 1 and 90 (the RDS quota is 100 manual snapshots)"),
    "retain_days": Spec(
        "RETAIN_DAYS", "2", "Snapshots younger than this many days are kept (what the interval, RETAIN_COUNT "
        "and RETAIN_DAYS keep must fit in 60% of MANUAL_SNAPSHOT_QUOTA: [docs/retention.md](docs/retention.md)).",
        _int_between(0, 3650), "use whole days between 0 and 3650"),
    "manual_snapshot_quota": Spec(
        "MANUAL_SNAPSHOT_QUOTA", str(DEFAULT_MANUAL_SNAPSHOT_QUOTA), "The account's RDS manual-snapshot quota "
        "per region (the smaller of the two regions'); the settings are checked against it, the tick reads the "
        "real one.",
        _int_between(1, 100000),
        "use the ManualSnapshots quota of both regions (Service Quotas), a whole number between 1 and 100000"),
    "rpo_target_minutes": Spec(
        "RPO_TARGET_MINUTES", "120", "Recovery point objective; the RPO alarm fires past it.",
        _int_between(5, 10080), "use whole minutes between 5 and 10080"),
    "heartbeat_interval_seconds": Spec(
        "HEARTBEAT_INTERVAL_SECONDS", "60", "Seconds between scheduler heartbeats (contract default 60).",
        _int_between(1, 3600), "use whole seconds between 1 and 3600"),
    "missed_beat_threshold": Spec(
        "MISSED_BEAT_THRESHOLD", "3", "Consecutive missed heartbeats that make a scheduler silent "
        "(JAMS itself fails over after 3).",
        _int_between(2, 60), "use a count between 2 and 60"),
    "failover_mode": Spec(
        "FAILOVER_MODE", "auto", "On a region-recovery decision: auto starts recovery, approve waits "
        "for `jams-dr recover --approve`, notify only notifies.",
        _failover_mode, "use auto, approve or notify"),
    "ledger_table": Spec(
        "LEDGER_TABLE", "", "DynamoDB execution ledger in the recovery region (empty: <env>-dr-ledger).",
        _optional(_matching(re.compile(r"^[A-Za-z0-9_.-]{3,255}$"), "table name")),
        "set the LedgerTableName output of the dr-support stack"),
    "topic_arn": Spec(
        "TOPIC_ARN", "", "SNS topic for notifications (empty: notifications are only logged).",
        _optional(_matching(_TOPIC, "SNS topic ARN")), "set the TopicArn output of the dr-support stack"),
    "artifact_bucket": Spec(
        "ARTIFACT_BUCKET", "", "S3 bucket in the recovery region with the application template and "
        "the reports (empty: <env>-dr-artifacts-<account>; the support stack's ArtifactBucketName).",
        _optional(_matching(re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"), "S3 bucket name")),
        "set the ArtifactBucketName output of the dr-support stack"),
    "cfn_role_arn": Spec(
        "CFN_ROLE_ARN", "", "IAM role CloudFormation uses for the application stacks the chain creates "
        "and deletes (the support stack's CloudFormationRoleArn; empty: the chain's own role, which the "
        "generated least-privilege policies do not allow to build stacks).",
        _optional(_matching(_ROLE_ARN, "IAM role ARN")),
        "set the CloudFormationRoleArn output of the dr-support stack"),
    "advance_function_name": Spec(
        "ADVANCE_FUNCTION_NAME", "", "Lambda function of the recovery chain (empty: derived from the running "
        "function's name, <app>-<stage>-advance_execution).",
        _optional(_matching(re.compile(r"^[A-Za-z0-9_-]{1,64}$", re.ASCII), "Lambda function name")),
        "set the chain's function name, e.g. jams-dr-prod-advance_execution"),
    "advance_margin_seconds": Spec(
        "ADVANCE_MARGIN_SECONDS", "60", "Seconds of its Lambda time the chain keeps free: it stops starting "
        "steps this long before its timeout and relaunches itself.",
        _int_between(5, 600), "use whole seconds between 5 and 600"),
    "scheduler_instance_profile": Spec(
        "SCHEDULER_INSTANCE_PROFILE", "", "Instance profile of the JAMS schedulers the application stacks "
        "use (empty: <env>-jams-scheduler, the dr-support stack's SchedulerInstanceProfileName).",
        _optional(_matching(re.compile(r"^[A-Za-z0-9_+=,.@-]{1,128}$"), "instance profile name")),
        "set the SchedulerInstanceProfileName output of the dr-support stack"),
    "hosted_zone_id": Spec(
        "HOSTED_ZONE_ID", "",
        "Route 53 zone of the JAMS name; bootstrap makes its failover pair (empty: traffic not switched).",
        _optional(_matching(_ZONE_ID, "hosted zone id")), "set the zone id, e.g. Z0123456789ABC"),
    "dns_zone_name": Spec(
        "DNS_ZONE_NAME", "", "Name of that zone, e.g. jams.example.internal.",
        _optional(_matching(re.compile(r"^[a-z0-9.-]+\.?$"), "DNS name")), "set the zone's DNS name"),
    "backup_replication": Spec(
        "BACKUP_REPLICATION", "false", "Also replicate automated backups cross-region (RPO minutes).",
        _bool, "use true or false"),
    "recovery_source": Spec(
        "RECOVERY_SOURCE", "snapshot", "What a recovery restores from: snapshot (the pinned copy) or pitr (the "
        "replicated automated backups, latest restorable time; needs BACKUP_REPLICATION=true; falls back to the "
        "pinned copy when they are not usable).",
        _recovery_source, "use snapshot or pitr"),
}


@dataclass(frozen=True)
class Settings:
    """Validated settings; build with ``from_env`` or ``Settings.defaults(**overrides)``."""

    primary_region: str
    recovery_region: str
    environment: str
    db_instance_id: str | None
    network_stack: str | None
    app_stack: str | None
    standby_stack: str | None
    copy_kms_key: str | None
    option_group_map: dict[str, str]
    snapshot_interval_minutes: int
    retain_count: int
    retain_days: int
    manual_snapshot_quota: int
    rpo_target_minutes: int
    heartbeat_interval_seconds: int
    missed_beat_threshold: int
    failover_mode: str
    ledger_table: str | None
    topic_arn: str | None
    artifact_bucket: str | None
    cfn_role_arn: str | None
    advance_function_name: str | None
    advance_margin_seconds: int
    scheduler_instance_profile: str | None
    hosted_zone_id: str | None
    dns_zone_name: str | None
    backup_replication: bool
    recovery_source: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        problems: list[str] = []
        for attr, spec in SETTINGS.items():
            raw = source.get(spec.env, spec.default)
            try:
                values[attr] = spec.parse(raw)
            except ValueError as exc:
                problems.append(f"{spec.env}={raw!r}: {exc}; {spec.fix}")
        if (
            not problems
            and values["primary_region"] == values["recovery_region"]
        ):
            problems.append(
                f"RECOVERY_REGION={values['recovery_region']!r}: must differ from PRIMARY_REGION; "
                "a recovery in the failed region recovers nothing"
            )
        if values.get("hosted_zone_id") and not values.get("dns_zone_name"):
            problems.append("DNS_ZONE_NAME='': required when HOSTED_ZONE_ID is set; set the zone's name")
        if values.get("recovery_source") == "pitr" and values.get("backup_replication") is False:
            problems.append("RECOVERY_SOURCE='pitr': needs BACKUP_REPLICATION=true (the replicated automated "
                            "backups are what it restores from); set both, or RECOVERY_SOURCE=snapshot")
        retention = ("snapshot_interval_minutes", "retain_count", "retain_days", "manual_snapshot_quota")
        if all(name in values for name in retention):
            overflow = fit_problem(*(values[name] for name in retention))
            if overflow is not None:
                problems.append(overflow[1])
        if problems:
            raise SettingsError(problems)
        return cls(**values)

    @classmethod
    def defaults(cls, **overrides: Any) -> Settings:
        """The documented defaults with some fields replaced (validated like the environment)."""
        env = {SETTINGS[k].env: v for k, v in cls._as_env_values(overrides).items()}
        return cls.from_env(env)

    @staticmethod
    def _as_env_values(values: Mapping[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for attr, value in values.items():
            if attr not in SETTINGS:
                raise TypeError(f"unknown setting {attr!r}")
            if value is None:
                out[attr] = ""
            elif isinstance(value, bool):
                out[attr] = "true" if value else "false"
            elif isinstance(value, dict):
                out[attr] = json.dumps(value, sort_keys=True)
            else:
                out[attr] = str(value)
        return out

    # Derived names: one place, so handlers and CLI agree on them.
    @property
    def network_stack_name(self) -> str:
        return self.network_stack or f"{self.environment}-network"

    @property
    def app_stack_name(self) -> str:
        return self.app_stack or f"{self.environment}-app"

    @property
    def standby_stack_name(self) -> str:
        return self.standby_stack or f"{self.environment}-standby"

    @property
    def ledger_table_name(self) -> str:
        return self.ledger_table or f"{self.environment}-dr-ledger"

    @property
    def scheduler_instance_profile_name(self) -> str:
        """Named as templates/dr-support.yaml names it, so a stage needs no setting for it."""
        return self.scheduler_instance_profile or f"{self.environment}-jams-scheduler"

    def drill_stack_name(self, drill_id: str) -> str:
        return f"{self.environment}-drill-{drill_id}"

    @property
    def rpo_target_seconds(self) -> int:
        return self.rpo_target_minutes * 60

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings (for the embedded drill and tests)."""
        values = self._as_env_values({attr: getattr(self, attr) for attr in SETTINGS})
        return {SETTINGS[attr].env: raw for attr, raw in values.items()}


_cached: Settings | None = None
# An in-process Lambda runtime (the embedded drill's) runs several functions in one process, each with its
# own environment: it scopes that function's settings to the invocation.
_scoped: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("jamsdr_settings", default=None)


def use_settings(value: Settings | None) -> AbstractContextManager[None]:
    """``get_settings()`` answers ``value`` within (this thread / context only)."""
    return scoped(_scoped, value)


def get_settings() -> Settings:
    """Settings of this process, parsed on first use (never at import time: tests set the env first)."""
    global _cached  # noqa: PLW0603 - one validated copy per Lambda container
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    if _cached is None:
        _cached = Settings.from_env()
    return _cached


def reset_settings() -> None:
    global _cached  # noqa: PLW0603
    _cached = None


def markdown_table() -> str:
    """The settings table for the README (a test keeps README and SETTINGS in step)."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for spec in SETTINGS.values():
        default = f"`{spec.default}`" if spec.default else "(empty)"
        rows.append(f"| `{spec.env}` | {default} | {spec.help} |")
    return "\n".join(rows)
