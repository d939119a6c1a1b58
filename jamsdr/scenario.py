"""The scenario file of embedded drills (CONTRACT in design.md).

Every field has a default; unknown fields and bad values are refused, all of them in one error.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

Failure = Literal["none", "region", "az", "scheduler"]
FAILURES: tuple[str, ...] = get_args(Failure)
MODES = ("auto", "approve", "notify")
ENGINES = ("sqlserver-se", "sqlserver-ee", "sqlserver-web", "sqlserver-ex")
# fullmatch and ASCII: "$" alone lets "us-east-1\n" through, and \d matches non-ASCII digits too.
_REGION = re.compile(r"[a-z]{2}(-gov)?-[a-z]+-[0-9]", re.ASCII)
_OPTION_GROUP = re.compile(r"[a-zA-Z][a-zA-Z0-9-]{0,254}", re.ASCII)


class ScenarioError(ValueError):
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

    @property
    def expected_decision(self) -> str:
        return {
            "none": "healthy",
            "region": "region-recovery",
            "az": "jams-failover",
            "scheduler": "scheduler-outage",
        }[self.failure]

    @property
    def expected_outcome(self) -> str:
        """What a correct jams-dr does with this scenario (the drill's exit status compares to it)."""
        if self.failure == "none":
            return "succeeded"  # a plain drill in an isolated stack
        if self.failure == "region":
            # approve: the drill plays the operator and approves; notify: a person decides, nothing starts.
            return "not-started" if self.failover_mode == "notify" else "succeeded"
        return "not-started"  # JAMS handles an AZ; a scheduler outage needs a restart, not a rebuild

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    return problems


def _region_problems(data: dict[str, Any]) -> list[str]:
    problems = [
        f"{key}: {data[key]!r} is not an AWS region name such as us-east-1"
        for key in ("primary_region", "recovery_region")
        if key in data and (not isinstance(data[key], str) or not _REGION.fullmatch(data[key]))
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


def parse_scenario(data: Any, source: str = "<inline>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(source, ["the scenario must be a JSON object"])
    problems = _problems_for(data)
    if problems:
        raise ScenarioError(source, problems)
    values = dict(data)
    if "database" in values:
        values["database"] = DatabaseScenario(**values["database"])
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
