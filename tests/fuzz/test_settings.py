"""Fuzzed environments for ``Settings.from_env``: every invalid value raises one SettingsError naming the
variable, its value and the fix (and names no valid variable); every valid environment round-trips.

The rules below are written from each setting's documented meaning (README table, AWS naming rules),
independently of chalicelib/settings.py; a setting added there without a rule here fails the first test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import event, given
from hypothesis import strategies as st

from chalicelib.settings import SETTINGS, Settings, SettingsError
from tests.fuzz.junk import NASTY_STRINGS, fuzz_settings, strings


def _pattern(regex: str) -> Callable[[str], bool]:
    compiled = re.compile(regex, re.ASCII)
    return lambda value: compiled.fullmatch(value) is not None


def _between(low: int, high: int) -> Callable[[str], bool]:
    def valid(value: str) -> bool:
        match = re.fullmatch(r"([+-]?)0*([0-9]+)", value, re.ASCII)
        return match is not None and len(match.group(2)) <= 6 and low <= int(match.group(1) + match.group(2)) <= high

    return valid


def _as_int(raw: str) -> int:
    """The value of an integer the rules accepted (leading zeros may run to thousands of digits)."""
    match = re.fullmatch(r"([+-]?)0*([0-9]+)", raw.strip(), re.ASCII)
    assert match is not None, raw
    return int(match.group(1) + match.group(2))


def _json_map(value: str) -> bool:
    try:
        parsed = json.loads(value or "{}")
    except (ValueError, RecursionError):
        return False
    return isinstance(parsed, dict) and all(isinstance(k, str) and isinstance(v, str) and k and v
                                            for k, v in parsed.items())


@dataclass(frozen=True)
class Rule:
    valid: Callable[[str], bool]  # on the stripped value
    optional: bool  # blank means "not set"
    near: st.SearchStrategy[str]  # plausible values, valid and not

    def accepts(self, raw: str) -> bool:
        value = raw.strip()
        return (self.optional and not value) or self.valid(value)


def _near(*examples: str) -> st.SearchStrategy[str]:
    return st.sampled_from(examples)


def _ints(low: int, high: int) -> st.SearchStrategy[str]:
    return st.one_of(st.integers(low - 3, high + 3).map(str),
                     _near(f" {low} ", f"+{low}", "1_0", "\uff13", "\u0661\u0662", "1e3", "0x10", "10.0", "- 5", "",
                           "9" * 5000, "0" * 5000 + str(low)))


REGION = r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]"
ACCOUNT = "[0-9]{12}"
KMS_ID = r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
KMS_ALIAS = r"alias/[A-Za-z0-9/_-]+"
KMS = rf"arn:aws[a-z-]*:kms:[a-z0-9-]+:{ACCOUNT}:(?:key/{KMS_ID}|{KMS_ALIAS})|{KMS_ID}|{KMS_ALIAS}"
_UUID = "1234abcd-12ab-34cd-56ef-1234567890ab"

RULES: dict[str, Rule] = {
    "PRIMARY_REGION": Rule(_pattern(REGION), False, _near(
        "us-east-1", "eu-west-3", "us-gov-west-1", "us-isob-east-1", " us-east-1\n", "US-EAST-1", "us-east-\u0661",
        "us-west-2", "useast1", "us-east-12")),
    "RECOVERY_REGION": Rule(_pattern(REGION), False, _near("us-west-2", "us-east-1", "eu-central-1", "us-west-\u0662")),
    "ENVIRONMENT_NAME": Rule(_pattern(r"[a-z][a-z0-9-]{0,38}[a-z0-9]"), False, _near(
        "jams", "jams-prod", "j", "Jams", "jams-", "9jams", "a" * 40, "a" * 41, "jams_prod")),
    "DB_INSTANCE_ID": Rule(_pattern(r"[a-zA-Z][a-zA-Z0-9-]{0,62}"), True, _near(
        "jams-db", "", "  ", "1db", "a" * 63, "a" * 64, "db_1")),
    **{name: Rule(_pattern(r"[a-zA-Z][a-zA-Z0-9-]{0,127}"), True, _near(
        "jams-network", "", "-x", "a" * 128, "a" * 129, "stack.name"))
       for name in ("NETWORK_STACK_NAME", "APP_STACK_NAME", "STANDBY_STACK_NAME")},
    "COPY_KMS_KEY_ID": Rule(_pattern(KMS), True, _near(
        "", _UUID, "mrk-1234abcd12ab34cd56ef1234567890ab", "alias/jams-dr-copies", "alias/", "arn:aws",
        f"arn:aws:kms:us-west-2:123456789012:key/{_UUID}", "arn:aws:kms:us-west-2:123456789012:alias/jams",
        "arn:aws:sns:us-west-2:123456789012:jams-dr", "arn:aws:kms:us-west-2:123456789012:key/",
        "arn:aws-cn:kms:cn-north-1:123456789012:key/" + _UUID, "alias/has space", _UUID.upper())),
    "OPTION_GROUP_MAP": Rule(_json_map, False, st.one_of(
        _near("{}", "", '{"jams-tde": "jams-standby-tde"}', '{"a": ""}', "[]", "{", '{"a": 1}', "null",
              "[" * 3000 + "]" * 3000),
        st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3).map(json.dumps))),
    "SNAPSHOT_INTERVAL_MINUTES": Rule(_between(5, 10080), False, _ints(5, 10080)),
    "RETAIN_COUNT": Rule(_between(1, 90), False, _ints(1, 90)),
    "RETAIN_DAYS": Rule(_between(0, 3650), False, st.one_of(_ints(0, 3650), _ints(0, 4))),
    "MANUAL_SNAPSHOT_QUOTA": Rule(_between(1, 100000), False, st.one_of(_ints(1, 100000), _ints(1, 400))),
    "RPO_TARGET_MINUTES": Rule(_between(5, 10080), False, _ints(5, 10080)),
    "HEARTBEAT_INTERVAL_SECONDS": Rule(_between(1, 3600), False, _ints(1, 3600)),
    "MISSED_BEAT_THRESHOLD": Rule(_between(2, 60), False, _ints(2, 60)),
    "FAILOVER_MODE": Rule(lambda v: v.lower() in {"auto", "approve", "notify"}, False, _near(
        "auto", "approve", "notify", "AUTO", " Notify ", "", "manual", "auto,notify")),
    "LEDGER_TABLE": Rule(_pattern(r"[A-Za-z0-9_.-]{3,255}"), True, _near("", "jams-dr-ledger", "ab", "a b c")),
    "TOPIC_ARN": Rule(_pattern(rf"arn:aws[a-z-]*:sns:[a-z0-9-]+:{ACCOUNT}:[A-Za-z0-9_-]+"), True, _near(
        "", "arn:aws:sns:us-west-2:123456789012:jams-dr", "arn:aws:sns:us-west-2:" + "\u0661" * 12 + ":jams-dr",
        "arn:aws:sns:us-west-2:12345678901:jams-dr", "arn:aws:sqs:us-west-2:123456789012:jams-dr")),
    "ARTIFACT_BUCKET": Rule(_pattern(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"), True, _near(
        "", "jams-dr-artifacts-123456789012", "ab", "Bucket", "a" * 63, "a" * 64)),
    "CFN_ROLE_ARN": Rule(_pattern(rf"arn:aws[a-z-]*:iam::{ACCOUNT}:role/[A-Za-z0-9+=,.@_/-]{{1,512}}"), True, _near(
        "", "arn:aws:iam::123456789012:role/jams-dr-cfn", "arn:aws:iam::" + "\u0661" * 12 + ":role/x",
        "arn:aws:iam::123456789012:user/x", "arn:aws:iam::123456789012:role/")),
    "ADVANCE_FUNCTION_NAME": Rule(_pattern(r"[A-Za-z0-9_-]{1,64}"), True, _near(
        "", "jams-dr-prod-advance_execution", "a" * 64, "a" * 65, "has space", "fn:1", "\u0661")),
    "ADVANCE_MARGIN_SECONDS": Rule(_between(5, 600), False, _ints(5, 600)),
    "SCHEDULER_INSTANCE_PROFILE": Rule(_pattern(r"[A-Za-z0-9_+=,.@-]{1,128}"), True, _near(
        "", "jams-jams-scheduler", "a" * 128, "a" * 129, "has space", "role/x", "\u0661")),
    "HOSTED_ZONE_ID": Rule(_pattern(r"Z?[A-Z0-9]{1,32}"), True, _near("", "Z0123456789ABC", "z012", "Z" * 34)),
    "DNS_ZONE_NAME": Rule(_pattern(r"[a-z0-9.-]+\.?"), True, _near("", "jams.example.internal.", "Jams.Example")),
    "BACKUP_REPLICATION": Rule(lambda v: v.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off", ""},
                               False, _near("true", "false", "", "TRUE", "maybe", "2", " yes ")),
    "RECOVERY_SOURCE": Rule(lambda v: v.strip().lower() in {"snapshot", "pitr"}, False,
                            _near("snapshot", "pitr", " PITR ", "", "snapshots", "backup")),
}
ENV_NAMES = [spec.env for spec in SETTINGS.values()]
DEFAULTS = {spec.env: spec.default for spec in SETTINGS.values()}
FIX = {spec.env: spec.fix for spec in SETTINGS.values()}


def test_every_setting_has_a_rule_here() -> None:
    assert sorted(RULES) == sorted(ENV_NAMES), "add a Rule for each new setting to this fuzz test"
    for name, spec_default in DEFAULTS.items():  # the documented defaults are valid
        assert RULES[name].accepts(spec_default), name


def expected_problems(env: dict[str, str]) -> set[str]:
    """The variables the oracle says are wrong (including the rules that tie two of them)."""
    full = {**DEFAULTS, **env}
    bad = {name for name in ENV_NAMES if not RULES[name].accepts(full[name])}
    if not bad and full["PRIMARY_REGION"].strip() == full["RECOVERY_REGION"].strip():
        bad.add("RECOVERY_REGION")
    if (not {"HOSTED_ZONE_ID", "DNS_ZONE_NAME"} & bad and full["HOSTED_ZONE_ID"].strip()
            and not full["DNS_ZONE_NAME"].strip()):
        bad.add("DNS_ZONE_NAME")
    if (not {"RECOVERY_SOURCE", "BACKUP_REPLICATION"} & bad and full["RECOVERY_SOURCE"].strip().lower() == "pitr"
            and full["BACKUP_REPLICATION"].strip().lower() in {"0", "false", "no", "off", ""}):
        bad.add("RECOVERY_SOURCE")  # restoring from replicated backups needs them replicated
    retention = ("SNAPSHOT_INTERVAL_MINUTES", "RETAIN_COUNT", "RETAIN_DAYS", "MANUAL_SNAPSHOT_QUOTA")
    if not set(retention) & bad:
        # docs/retention.md: at most one snapshot per interval younger than RETAIN_DAYS, at least RETAIN_COUNT,
        # plus 3 (in flight, just made, held) must fit in 60% of the quota; the count alone is RETAIN_COUNT's fault
        interval, count, days, quota = (_as_int(full[name]) for name in retention)
        kept = max(count, -(-days * 24 * 60 // interval)) + 3
        if kept > quota * 60 // 100:
            bad.add("RETAIN_COUNT" if count + 3 > quota * 60 // 100 else "RETAIN_DAYS")
    return bad


def values(name: str) -> st.SearchStrategy[str]:
    return st.one_of(RULES[name].near, RULES[name].near, strings())


@st.composite
def environments(draw: st.DrawFn) -> dict[str, str]:
    names = draw(st.lists(st.sampled_from(ENV_NAMES), min_size=1, max_size=5, unique=True))
    env = {name: draw(values(name), label=name) for name in names}
    # Variables jams-dr does not know are ignored, whatever they hold.
    env.update(draw(st.dictionaries(st.sampled_from(["PATH", "JAMS_DR_UNKNOWN", "primary_region"]),
                                    st.sampled_from(NASTY_STRINGS), max_size=2)))
    return env


def _no_surrogates(env: dict[str, str]) -> bool:
    # A process environment is bytes: os.environ can never hold a lone surrogate.
    return not any("\ud800" <= c <= "\udfff" for value in env.values() for c in value)


@fuzz_settings(200)
@given(env=environments().filter(_no_surrogates))
def test_invalid_values_are_named_with_the_fix_and_valid_ones_accepted(env: dict[str, str]) -> None:
    expected = expected_problems(env)
    settings: Settings | SettingsError
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        settings = exc
    if isinstance(settings, SettingsError):
        event("refused")
        problems = settings.problems
        assert expected, f"refused a valid environment: {settings}"
        assert {problem.split("=", 1)[0] for problem in problems} == expected, problems
        for name in expected & set(env):
            if not RULES[name].accepts(env[name]):  # the value itself is wrong: value, what, then the fix
                assert any(p.startswith(f"{name}={env[name]!r}: ") and p.endswith(f"; {FIX[name]}")
                           for p in problems), (name, problems)
        assert "fix them in the stage's environment_variables" in str(settings)
        return
    event("accepted")
    assert expected == set(), f"accepted {env!r} although {sorted(expected)} are wrong"
    assert Settings.from_env(settings.as_env()) == settings  # round trip


@st.composite
def valid_environments(draw: st.DrawFn) -> dict[str, str]:
    return {name: draw(RULES[name].near.filter(RULES[name].accepts), label=name)
            for name in draw(st.lists(st.sampled_from(ENV_NAMES), unique=True))}


@fuzz_settings(100)
@given(env=valid_environments())
def test_valid_environments_round_trip_through_as_env(env: dict[str, str]) -> None:
    if expected_problems(env):  # two valid values that do not go together (same regions, zone without name)
        event("incompatible pair")
        return
    settings = Settings.from_env(env)
    assert Settings.from_env(settings.as_env()) == settings
    for name, raw in env.items():
        attr = next(a for a, spec in SETTINGS.items() if spec.env == name)
        value = getattr(settings, attr)
        if isinstance(value, str):
            assert value == raw.strip() or value == raw.strip().lower(), (name, raw, value)
