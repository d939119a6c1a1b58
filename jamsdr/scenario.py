"""The scenario file of embedded drills (CONTRACT in design.md).

Every field has a default; unknown fields and bad values are refused, all of them in one error.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args

from chalicelib.errors import Refused
from chalicelib.regions import is_region

Failure = Literal["none", "region", "az", "scheduler", "monitoring"]
FAILURES: tuple[str, ...] = get_args(Failure)
FaultError = Literal["throttle", "5xx", "connection"]
FAULT_ERRORS: tuple[str, ...] = get_args(FaultError)
FaultRegion = Literal["primary", "recovery"]
FAULT_REGIONS: tuple[str, ...] = get_args(FaultRegion)
MAX_FAULTS = 20
MAX_FAULT_COUNT = 100
MODES = ("auto", "approve", "notify")
ENGINES = ("sqlserver-se", "sqlserver-ee", "sqlserver-web", "sqlserver-ex")
# fullmatch and ASCII: "$" alone lets "us-east-1\n" through, and \d matches non-ASCII digits too.
_OPTION_GROUP = re.compile(r"[a-zA-Z][a-zA-Z0-9-]{0,254}", re.ASCII)


class ScenarioError(Refused, ValueError):
    """The scenario is invalid; lists every bad field with what is expected."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"scenario {source} is invalid ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class DatabaseScenario:
    engine: str = "sqlserver-se"
    encrypted: bool = True
    option_group: str = "jams-tde"


@dataclass(frozen=True)
class ScenarioFault:
    """One entry of ``faults``: the first ``count`` calls of ``service``'s ``operation`` in the ``region``
    ("primary" or "recovery") after the failure moment fail with ``error``."""

    service: str
    region: str
    operation: str
    error: str
    count: int


@dataclass(frozen=True)
class Scenario:
    primary_region: str = "us-east-1"
    recovery_region: str = "us-west-2"
    vpc_cidr: str = "10.0.0.0/16"
    database: DatabaseScenario = field(default_factory=DatabaseScenario)
    existing_snapshots: int = 0
    snapshot_cycles: int = 3
    heartbeat_seconds: int = 1
    failover_mode: str = "auto"
    failure: str = "region"
    # A tuple, not a list: the scenario stays frozen and hashable. Faults never change the expectation.
    faults: tuple[ScenarioFault, ...] = ()

    @property
    def expected_decision(self) -> str:
        return {
            "none": "healthy",
            "region": "region-recovery",
            "az": "jams-failover",
            "scheduler": "scheduler-outage",
            # Blind primary monitoring is not an outage: the recovery region's copy of the heartbeats
            # still shows JAMS beating (CONTRACT: heartbeat metric).
            "monitoring": "healthy",
        }[self.failure]

    @property
    def expected_outcome(self) -> str:
        """What a correct jams-dr does with this scenario (the drill's exit status compares to it)."""
        if self.failure == "none":
            return "succeeded"  # a plain drill in an isolated stack
        if self.failure == "region":
            # approve: the drill plays the operator and approves; notify: a person decides, nothing starts.
            return "not-started" if self.failover_mode == "notify" else "succeeded"
        # JAMS handles an AZ; a scheduler outage needs a restart, not a rebuild; with blind monitoring and
        # JAMS beating there is nothing to recover from.
        return "not-started"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["faults"] = list(data["faults"])  # as the scenario file writes it (asdict keeps the tuple)
        return data


def _problems_for(data: dict[str, Any]) -> list[str]:
    top = set(Scenario.__dataclass_fields__)
    problems = [f"{key}: unknown field; expected one of {', '.join(sorted(top))}" for key in data if key not in top]
    problems += _region_problems(data)
    if "vpc_cidr" in data and not _is_vpc_cidr(data["vpc_cidr"]):
        problems.append(f"vpc_cidr: {data['vpc_cidr']!r} must be an IPv4 network from /16 to /20, such as 10.0.0.0/16")
    for key, low, high in (("existing_snapshots", 0, 1000), ("snapshot_cycles", 1, 20), ("heartbeat_seconds", 1, 60)):
        value = data.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{key}: {value!r} must be an integer from {low} to {high}")
    for key, allowed in (("failover_mode", MODES), ("failure", FAILURES)):
        if key in data and data[key] not in allowed:
            problems.append(f"{key}: {data[key]!r} must be one of {', '.join(allowed)}")
    if "database" in data:
        problems += _database_problems(data["database"])
    if "faults" in data:
        problems += _faults_problems(data["faults"])
    return problems


def _region_problems(data: dict[str, Any]) -> list[str]:
    problems = [
        f"{key}: {data[key]!r} is not an AWS region name such as us-east-1"
        for key in ("primary_region", "recovery_region")
        if key in data and (not isinstance(data[key], str) or not is_region(data[key]))
    ]
    recovery = data.get("recovery_region", Scenario.recovery_region)
    if data.get("primary_region", Scenario.primary_region) == recovery:
        problems.append(f"recovery_region: {recovery!r} must differ from primary_region")
    return problems


def _is_vpc_cidr(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    # ip_network also reads "10.0.0.0/255.255.0.0"; the VPC template's CidrBlock needs the /n form.
    return net.version == 4 and 16 <= net.prefixlen <= 20 and str(net) == value


def _database_problems(database: Any) -> list[str]:
    if not isinstance(database, dict):
        return ["database: must be an object with engine, encrypted, option_group"]
    known = set(DatabaseScenario.__dataclass_fields__)
    expected = ", ".join(sorted(known))
    problems = [f"database.{key}: unknown field; expected one of {expected}" for key in database if key not in known]
    if "engine" in database and database["engine"] not in ENGINES:
        problems.append(f"database.engine: {database['engine']!r} must be one of {', '.join(ENGINES)}")
    if "encrypted" in database and not isinstance(database["encrypted"], bool):
        problems.append(f"database.encrypted: {database['encrypted']!r} must be true or false")
    group = database.get("option_group", DatabaseScenario.option_group)
    if not isinstance(group, str) or not _OPTION_GROUP.fullmatch(group):
        problems.append(f"database.option_group: {group!r} must be an option group name (letters, digits, dashes)")
    return problems


_FAULT_KEYS = tuple(ScenarioFault.__dataclass_fields__)
_FAULT_EXPECTED = {
    "service": "a boto3 service name such as sns",
    "region": " or ".join(FAULT_REGIONS),
    "operation": "an API operation name such as Publish",
    "error": ", ".join(FAULT_ERRORS),
    "count": f"an integer from 1 to {MAX_FAULT_COUNT}",
}


def _faults_problems(faults: Any) -> list[str]:
    if not isinstance(faults, list):
        return [f"faults: {faults!r} must be a list of at most {MAX_FAULTS} objects with {', '.join(_FAULT_KEYS)}"]
    if len(faults) > MAX_FAULTS:
        # Entries are not checked one by one: a runaway list would bury the one line that matters.
        return [f"faults: {len(faults)} entries; at most {MAX_FAULTS}"]
    problems: list[str] = []
    for index, entry in enumerate(faults):
        problems += _fault_problems(f"faults[{index}]", entry)
    return problems


def _fault_problems(name: str, entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{name}: {entry!r} must be an object with {', '.join(_FAULT_KEYS)}"]
    expected = ", ".join(sorted(_FAULT_KEYS))
    problems = [f"{name}.{key}: unknown field; expected one of {expected}" for key in entry if key not in _FAULT_KEYS]
    problems += [f"{name}.{key}: missing; expected {_FAULT_EXPECTED[key]}" for key in _FAULT_KEYS if key not in entry]
    for key, allowed in (("region", FAULT_REGIONS), ("error", FAULT_ERRORS)):
        if key in entry and not (isinstance(entry[key], str) and entry[key] in allowed):
            problems.append(f"{name}.{key}: {entry[key]!r} must be one of {', '.join(allowed)}")
    count = entry.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FAULT_COUNT:
        problems.append(f"{name}.count: {count!r} must be an integer from 1 to {MAX_FAULT_COUNT}")
    return problems + _fault_api_problems(name, entry)


def _fault_api_problems(name: str, entry: dict[str, Any]) -> list[str]:
    """The service and operation, checked against botocore's own service models (loaded only here)."""
    service, operation = entry.get("service"), entry.get("operation")
    if "service" in entry and not (isinstance(service, str) and service in _boto3_services()):
        hint = _did_you_mean(service, _boto3_services())
        # Without a known service the operation cannot be checked: the service's line says what to fix.
        return [f"{name}.service: {service!r} is not a boto3 service name such as sns, cloudwatch, dynamodb{hint}"]
    if "operation" not in entry:
        return []
    if not isinstance(operation, str) or not operation:
        return [f"{name}.operation: {operation!r} must be an API operation name such as Publish"]
    if not isinstance(service, str):  # no service given: reported as missing above
        return []
    operations = _operations_of(service)
    if operation in operations:
        return []
    hint = _did_you_mean(operation, operations)
    if not hint:
        reads = sorted(op for op in operations if op.startswith(("Describe", "Get", "List")))
        hint = f" such as {(reads or sorted(operations))[0]}"
    return [f"{name}.operation: {operation!r} is not an operation of {service}; expected an API operation name "
            f"of {service}{hint}"]


def _did_you_mean(value: Any, names: frozenset[str]) -> str:
    if not isinstance(value, str) or not value or len(value) > 100:
        return ""
    # "publish" and "get_metric_data" are near misses for Publish and GetMetricData: compare folded names.
    folded = {name.lower(): name for name in names}
    close = difflib.get_close_matches(value.lower().replace("_", ""), list(folded), n=1)
    return f" (did you mean {folded[close[0]]}?)" if close else ""


# Each lookup makes its own session (sessions are not thread-safe, their models are cached here).
@cache
def _boto3_services() -> frozenset[str]:
    import boto3  # noqa: PLC0415 - only a scenario with faults pays for botocore's data

    return frozenset(boto3.session.Session().get_available_services())


@cache
def _operations_of(service: str) -> frozenset[str]:
    import botocore.session  # noqa: PLC0415

    return frozenset(botocore.session.get_session().get_service_model(service).operation_names)


def parse_scenario(data: Any, source: str = "<inline>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(source, ["the scenario must be a JSON object"])
    problems = _problems_for(data)
    if problems:
        raise ScenarioError(source, problems)
    values = dict(data)
    if "database" in values:
        values["database"] = DatabaseScenario(**values["database"])
    if "faults" in values:
        values["faults"] = tuple(ScenarioFault(**entry) for entry in values["faults"])
    return Scenario(**values)


def load_scenario(path: Path | None) -> Scenario:
    if path is None:
        return Scenario()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(str(path), [f"not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise ScenarioError(str(path), [problem]) from None
    except RecursionError:
        raise ScenarioError(str(path), ["not a scenario: JSON nested too deeply"]) from None
    except ValueError as exc:  # json.loads refuses integers of more than 4300 digits
        raise ScenarioError(str(path), [f"not a scenario: {exc}"]) from None
    return parse_scenario(data, str(path))
