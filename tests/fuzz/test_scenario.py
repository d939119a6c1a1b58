"""Fuzzed scenario files (CONTRACT in /work/shared/design.md): every bad field is named, nothing else is,
files that are not UTF-8 JSON are refused cleanly, and `jams-dr drill --scenario` exits 2 before
building anything.

The field rules are written from the contract, independently of jamsdr/scenario.py.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from click.testing import CliRunner
from hypothesis import event, given
from hypothesis import strategies as st

from jamsdr.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from tests.fuzz.junk import fuzz_settings, json_values, mutated, strings

DEFAULT: dict[str, Any] = {
    "primary_region": "us-east-1", "recovery_region": "us-west-2", "vpc_cidr": "10.0.0.0/16",
    "database": {"engine": "sqlserver-se", "encrypted": True, "option_group": "jams-tde"},
    "existing_snapshots": 0, "snapshot_cycles": 3, "heartbeat_seconds": 1, "failover_mode": "auto",
    "failure": "region",
    # The default scenario loses the first Lambda Invoke after the failure (the sweeper recovers it).
    "faults": [{"service": "lambda", "region": "recovery", "operation": "Invoke", "error": "5xx", "count": 1}],
    "failback": False, "dns": True,
    "recovery_source": "snapshot",
}
# RDS CreateOptionGroup OptionGroupName: 1-255 letters, digits, hyphens; a letter first; no "--"; no "-" last.
OPTION_GROUP = re.compile(r"[a-zA-Z][a-zA-Z0-9-]{0,254}", re.ASCII)
# The manual-snapshot quota per region (RDS User Guide, "Quotas and constraints"), shared by the seeds and the
# drill's own snapshots in the primary region: one per snapshot cycle, one more for a failback.
SNAPSHOT_QUOTA = 100
INTEGERS = {"existing_snapshots": (0, SNAPSHOT_QUOTA - 1), "snapshot_cycles": (1, 20), "heartbeat_seconds": (1, 60)}
# The services a drill calls in both regions: a region must offer them all.
DRILL_SERVICES = ("autoscaling", "cloudformation", "cloudwatch", "dynamodb", "ec2", "elbv2", "events", "kms",
                  "lambda", "rds", "s3", "sns", "sqs", "ssm")
CHOICES = {
    "failover_mode": ("auto", "approve", "notify"), "failure": ("none", "region", "az", "scheduler", "monitoring"),
    "recovery_source": ("snapshot", "pitr"),
}
ENGINES = ("sqlserver-se", "sqlserver-ee", "sqlserver-web", "sqlserver-ex")
FAULT_KEYS = ("service", "region", "operation", "error", "count")
FAULT_CHOICES = {"region": ("primary", "recovery"), "error": ("throttle", "5xx", "connection")}
MAX_FAULTS = 20
PUBLISH = {"service": "sns", "region": "primary", "operation": "Publish", "error": "throttle", "count": 1}


# The contract names services and operations as boto3 does: botocore's own data is the reference.
@functools.cache
def _services() -> frozenset[str]:
    return frozenset(boto3.session.Session().get_available_services())


@functools.cache
def _operations(service: str) -> frozenset[str]:
    return frozenset(botocore.session.get_session().get_service_model(service).operation_names)


@functools.cache
def _partition_of() -> dict[str, str]:
    """Regions (botocore's endpoint data) offering every service of a drill, and their partitions."""
    session = botocore.session.get_session()
    return {region: partition for partition in session.get_available_partitions()
            for region in session.get_available_regions("rds", partition)
            if all(region in session.get_available_regions(s, partition) for s in DRILL_SERVICES)}


def _is_option_group(value: Any) -> bool:
    return (isinstance(value, str) and OPTION_GROUP.fullmatch(value) is not None
            and "--" not in value and not value.endswith("-"))


def _is_cidr(value: Any) -> bool:
    """An IPv4 network in CIDR notation as written in a template (a.b.c.d/n), /16 to /20."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9.]+/[0-9]+", value, re.ASCII):
        return False
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError:
        return False
    return str(net) == value and 16 <= net.prefixlen <= 20


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


DOCUMENT = "(the document)"


def bad_fields(data: Any) -> set[str]:
    """The oracle: which fields of ``data`` the contract says are wrong (DOCUMENT: not an object at all)."""
    if not isinstance(data, dict):
        return {DOCUMENT}
    bad = {key for key in data if key not in DEFAULT}
    for key in ("primary_region", "recovery_region"):
        if key in data and not (isinstance(data[key], str) and data[key] in _partition_of()):
            bad.add(key)
    primary, recovery = data.get("primary_region", "us-east-1"), data.get("recovery_region", "us-west-2")
    known = _partition_of()
    apart = isinstance(primary, str) and isinstance(recovery, str) and known.get(primary, "?") != known.get(
        recovery, "?") and primary in known and recovery in known
    if primary == recovery or apart:
        bad.add("recovery_region")
    if "vpc_cidr" in data and not _is_cidr(data["vpc_cidr"]):
        bad.add("vpc_cidr")
    bad |= {key for key, (low, high) in INTEGERS.items() if key in data and not _is_int(data[key], low, high)}
    bad |= {key for key, allowed in CHOICES.items() if key in data and not any(
        isinstance(data[key], str) and data[key] == a for a in allowed)}
    if "failback" in data and not isinstance(data["failback"], bool):
        bad.add("failback")
    if "dns" in data and not isinstance(data["dns"], bool):
        bad.add("dns")
    if data.get("failback") is True and _failback_has_no_recovery(data):
        bad.add("failback")
    if _over_the_quota(data):
        bad.add("existing_snapshots")
    if "database" in data:
        bad |= _bad_database(data["database"])
    if "faults" in data:
        bad |= _bad_faults(data["faults"])
    return bad


def _over_the_quota(data: dict[str, Any]) -> bool:
    """Valid seeds plus the valid cycles (plus a failback that runs) exceed the primary region's quota."""
    seeds, cycles = data.get("existing_snapshots", 0), data.get("snapshot_cycles", 3)
    if not (_is_int(seeds, *INTEGERS["existing_snapshots"]) and _is_int(cycles, *INTEGERS["snapshot_cycles"])):
        return False
    failback = data.get("failback") is True and not _failback_has_no_recovery(data)
    return seeds + cycles + failback > SNAPSHOT_QUOTA


def _failback_has_no_recovery(data: dict[str, Any]) -> bool:
    """A failback follows a region recovery: another valid failure, or a region failure that only
    notifies, gives it none (an invalid failure or mode is that field's problem alone)."""
    failure = data.get("failure", "region")
    if isinstance(failure, str) and failure in CHOICES["failure"] and failure != "region":
        return True
    return failure == "region" and data.get("failover_mode", "auto") == "notify"


def _bad_faults(faults: Any) -> set[str]:
    """A list of at most 20 faults; each names its own bad fields. An operation is judged against its
    service's operations only when the service is a real one (an unknown service is the one thing to fix)."""
    if not isinstance(faults, list) or len(faults) > MAX_FAULTS:
        return {"faults"}
    bad: set[str] = set()
    for index, entry in enumerate(faults):
        name = f"faults[{index}]"
        if not isinstance(entry, dict):
            bad.add(name)
            continue
        bad |= {f"{name}.{key}" for key in entry if key not in FAULT_KEYS}
        bad |= {f"{name}.{key}" for key in FAULT_KEYS if key not in entry}
        bad |= {f"{name}.{key}" for key, allowed in FAULT_CHOICES.items()
                if key in entry and not (isinstance(entry[key], str) and entry[key] in allowed)}
        if "count" in entry and not _is_int(entry["count"], 1, 100):
            bad.add(f"{name}.count")
        service, operation = entry.get("service"), entry.get("operation")
        known_service = isinstance(service, str) and service in _services()
        if "service" in entry and not known_service:
            bad.add(f"{name}.service")
        elif "operation" in entry and not (isinstance(operation, str) and operation and (
                not known_service or operation in _operations(str(service)))):
            bad.add(f"{name}.operation")
    return bad


def _bad_database(database: Any) -> set[str]:
    if not isinstance(database, dict):
        return {"database"}
    bad = {f"database.{key}" for key in database if key not in DEFAULT["database"]}
    if "engine" in database and not (isinstance(database["engine"], str) and database["engine"] in ENGINES):
        bad.add("database.engine")
    if "encrypted" in database and not isinstance(database["encrypted"], bool):
        bad.add("database.encrypted")
    if not _is_option_group(database.get("option_group", "jams-tde")):
        bad.add("database.option_group")
    return bad


def assert_names_exactly(exc: ScenarioError, fields: set[str]) -> None:
    """Each problem line starts with "<field>: " for one of ``fields``, and each field has a line."""
    for problem in exc.problems:
        assert any(problem.startswith(f"{field}: ") for field in fields), (problem, fields)
    for field in fields:
        assert any(problem.startswith(f"{field}: ") for problem in exc.problems), (field, exc.problems)


# ------------------------------------------------------------------------------------------ strategies


def plausible(key: str) -> st.SearchStrategy[Any]:
    """Values near the valid ones for each field, so both answers occur often."""
    near: dict[str, st.SearchStrategy[Any]] = {
        "primary_region": st.sampled_from(["us-east-1", "eu-west-1", "us-gov-west-1", "us-east-1\n", "US-EAST-1",
                                           "us-east-\u0661", "us-east-12", " us-east-1", "zz-fake-9", "cn-north-1"]),
        "recovery_region": st.sampled_from(["us-west-2", "us-east-1", "ap-southeast-2", "us-west-2\n", "uswest2",
                                            "us-gov-east-1", "eu-fake-1"]),
        "vpc_cidr": st.one_of(
            st.builds(lambda a, b, n: f"10.{a}.{b}.0/{n}", st.integers(0, 255), st.integers(0, 255), st.integers(8, 32)),
            st.sampled_from(["10.0.0.0/16", "10.0.0.0/255.255.0.0", "10.0.0.0/16\n", "10.0.0.1/16", "::/16",
                             "10.0.0.0/016", "10.000.0.0/16", "167772160/16"])),
        "existing_snapshots": st.one_of(st.integers(-5, SNAPSHOT_QUOTA + 5),
                                        st.sampled_from([1000, True, 1.0, "3", None])),
        "snapshot_cycles": st.one_of(st.integers(-1, 22), st.sampled_from([False, 3.5, "3"])),
        "heartbeat_seconds": st.one_of(st.integers(-1, 62), st.sampled_from([1.0, float("nan"), [1]])),
        "failover_mode": st.sampled_from(["auto", "approve", "notify", "AUTO", "auto ", ["auto"], None]),
        "failure": st.sampled_from(["none", "region", "az", "scheduler", "monitoring", "Region", "", None]),
        "database": st.fixed_dictionaries({}, optional={
            "engine": st.sampled_from([*ENGINES, "postgres", "SQLSERVER-SE", 1]),
            "encrypted": st.sampled_from([True, False, "true", 1, 0, None]),
            "option_group": st.one_of(st.sampled_from(["jams-tde", "x", "9tde", "jams-tde\n", "tde_1", "a" * 256,
                                                       "a" * 255, "JAMS-TDE", "jams--tde", "jams-tde-", "a-1"]),
                                      strings()),
            "extra": json_values(max_leaves=2),
        }),
        "faults": st.one_of(
            st.lists(st.one_of(plausible_fault(), json_values(max_leaves=2)), max_size=3),
            st.builds(lambda n: [PUBLISH] * n, st.integers(MAX_FAULTS - 1, MAX_FAULTS + 2)),
        ),
        "failback": st.sampled_from([True, False, 1, 0, "true", None]),
        "dns": st.sampled_from([True, False, 1, 0, "false", None]),
        "recovery_source": st.sampled_from(["snapshot", "pitr", "PITR", "snapshot ", "backups", None, 1]),
    }
    return st.one_of(near[key], json_values(max_leaves=3))


def plausible_fault() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={
        "service": st.sampled_from(["sns", "cloudwatch", "dynamodb", "s3", "SNS", "sns ", "no-such-service", 3, None]),
        "region": st.sampled_from(["primary", "recovery", "Primary", "us-east-1", None]),
        "operation": st.sampled_from(["Publish", "GetMetricData", "PutItem", "GetObject", "publish", "", "Nope", 1]),
        "error": st.sampled_from(["throttle", "5xx", "connection", "500", "Throttle", None]),
        "count": st.one_of(st.integers(-1, 102), st.sampled_from([True, 1.0, "1", None])),
        "extra": json_values(max_leaves=2),
    })


def valid_fault() -> st.SearchStrategy[dict[str, Any]]:
    api = st.sampled_from([("sns", "Publish"), ("cloudwatch", "GetMetricData"), ("dynamodb", "PutItem"),
                           ("s3", "GetObject"), ("rds", "CreateDBSnapshot")])
    return st.builds(
        lambda pair, region, error, count: {"service": pair[0], "region": region, "operation": pair[1],
                                            "error": error, "count": count},
        api, st.sampled_from(FAULT_CHOICES["region"]), st.sampled_from(FAULT_CHOICES["error"]), st.integers(1, 100))


VALID: dict[str, st.SearchStrategy[Any]] = {
    "primary_region": st.sampled_from(["us-east-1", "eu-central-1", "ca-central-1"]),
    "recovery_region": st.sampled_from(["us-west-2", "eu-west-1", "ap-south-1"]),
    "vpc_cidr": st.builds(lambda a, n: f"10.{a}.0.0/{n}", st.integers(0, 255), st.integers(16, 20)),
    **{key: st.integers(low, high) for key, (low, high) in INTEGERS.items()},
    **{key: st.sampled_from(allowed) for key, allowed in CHOICES.items()},
    "database": st.fixed_dictionaries({}, optional={
        "engine": st.sampled_from(ENGINES), "encrypted": st.booleans(),
        "option_group": st.builds(lambda first, rest: first + "".join(rest),
                                  st.from_regex(r"[a-zA-Z]", fullmatch=True),
                                  st.lists(st.from_regex(r"-?[a-zA-Z0-9]", fullmatch=True), max_size=60))}),
    "faults": st.lists(valid_fault(), max_size=3),
    "failback": st.booleans(),
    "dns": st.booleans(),
}


@st.composite
def one_field_off(draw: st.DrawFn) -> dict[str, Any]:
    """A valid scenario with one field given a plausible, often wrong, value."""
    data: dict[str, Any] = draw(st.fixed_dictionaries({}, optional=VALID))
    key = draw(st.sampled_from(sorted(DEFAULT)))
    data[key] = draw(plausible(key))
    return data


def scenarios() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.fixed_dictionaries({}, optional=VALID),
        one_field_off(),
        st.fixed_dictionaries({}, optional={key: plausible(key) for key in DEFAULT}),
        mutated(DEFAULT).map(lambda pair: pair[0]),
        mutated({**DEFAULT, "faults": [PUBLISH]}).map(lambda pair: pair[0]),
        json_values(),
    )


# ------------------------------------------------------------------------------------------ tests


@fuzz_settings(200)
@given(data=scenarios())
def test_a_scenario_is_accepted_exactly_when_the_contract_allows_it_and_every_bad_field_is_named(data: Any) -> None:
    expected = bad_fields(data)
    scenario: Scenario | ScenarioError
    try:
        scenario = parse_scenario(data, "fuzz.json")
    except ScenarioError as exc:
        scenario = exc
    if isinstance(scenario, ScenarioError):
        event("refused")
        assert expected, f"refused a valid scenario: {scenario}"
        assert str(scenario).startswith("scenario fuzz.json is invalid")
        if expected == {DOCUMENT}:
            assert scenario.problems == ["the scenario must be a JSON object"]
        else:
            assert_names_exactly(scenario, expected)
        return
    event("accepted")
    assert expected == set(), f"accepted {data!r} although {sorted(expected)} are wrong"
    assert isinstance(scenario, Scenario)
    database = {**DEFAULT["database"], **data.get("database", {})}
    database["option_group"] = database["option_group"].lower()  # as RDS stores it
    assert scenario.to_dict() == {**DEFAULT, **{k: v for k, v in data.items() if k != "database"},
                                  "database": database}


def file_contents() -> st.SearchStrategy[bytes]:
    def encoded(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")

    return st.one_of(
        st.binary(max_size=64),
        st.builds(encoded, scenarios()),
        st.builds(lambda value, cut: encoded(value)[:cut], scenarios(), st.integers(0, 40)),  # truncated
        st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1, 200_000)),  # nested deeper than json can go
        st.builds(lambda n: b'{"snapshot_cycles": ' + b"9" * n + b"}", st.integers(1, 10_000)),  # int() limit
        st.sampled_from([b"", b"\xef\xbb\xbf{}", b"{}\x00", b"\xff\xfe{\x00}\x00", b'{"failure": "az"}'.upper()]),
    )


@fuzz_settings(100)
@given(content=file_contents())
def test_any_file_loads_or_is_refused_with_a_scenario_error(content: bytes, tmp_path_factory: Any) -> None:
    path: Path = tmp_path_factory.mktemp("scenario") / "scenario.json"
    path.write_bytes(content)
    scenario: Scenario | ScenarioError
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        scenario = exc
    if isinstance(scenario, ScenarioError):
        event("refused")
        assert str(scenario).startswith(f"scenario {path} is invalid") and scenario.problems
        return
    event("loaded")
    assert isinstance(scenario, Scenario)


# ------------------------------------------------------------------------------------------ the CLI

CLI_CASES: dict[str, tuple[bytes | None, str]] = {
    "unknown field": (b'{"failure": "region", "blast_radius": 3}', "blast_radius: unknown field"),
    "wrong type": (b'{"heartbeat_seconds": "1"}', "heartbeat_seconds: '1' must be an integer from 1 to 60"),
    "bad choice": (b'{"failover_mode": "yolo"}', "failover_mode: 'yolo' must be one of auto, approve, notify"),
    "region with a newline": (b'{"primary_region": "us-east-1\\n"}', "is not an AWS region name"),
    "not json": (b"{failure: region}", "not valid JSON"),
    "not an object": (b"[1, 2]", "the scenario must be a JSON object"),
    "not utf-8": (b'{"failure": "\xff"}', "not UTF-8 text"),
    "no such file": (None, "cannot read the file"),
    "failback not a boolean": (b'{"failback": "yes"}', "failback: 'yes' must be true or false"),
    "failback without a region recovery": (b'{"failback": true, "failure": "az"}',
                                           "failback: true needs failure 'region'"),
}


@pytest.mark.parametrize(("content", "message"), CLI_CASES.values(), ids=list(CLI_CASES))
def test_drill_with_a_bad_scenario_exits_2_with_the_problem_and_builds_nothing(
    content: bytes | None, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jamsdr import cli, drill

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the embedded drill started on a bad scenario")

    monkeypatch.setattr(drill, "run_embedded_drill", must_not_run)
    path = tmp_path / "scenario.json"
    if content is not None:
        path.write_bytes(content)

    result = CliRunner().invoke(cli.main, ["drill", "--scenario", str(path), "--report-dir", str(tmp_path / "r")])

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())  # rich wraps long lines
    assert not (tmp_path / "r").exists()


@fuzz_settings(50)
@given(data=st.fixed_dictionaries({}, optional=VALID).filter(bool), choice=st.data())
def test_a_key_written_twice_is_refused_naming_it_first(data: dict[str, Any], choice: st.DataObject,
                                                        tmp_path_factory: Any) -> None:
    """JSON lets a reader keep either value of a repeated key (RFC 8259, 4): the scenario says which it meant."""
    key = choice.draw(st.sampled_from(sorted(data)))
    again = choice.draw(st.one_of(st.just(data[key]), plausible(key)))
    text = json.dumps(data)[:-1] + f", {json.dumps(key)}: {json.dumps(again)}}}"
    path: Path = tmp_path_factory.mktemp("scenario") / "scenario.json"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ScenarioError) as refused:
        load_scenario(path)

    assert refused.value.problems[0] == f"{key}: written more than once; JSON keeps only the last value, so write it once"
    assert sum("written more than once" in line for line in refused.value.problems) == 1
