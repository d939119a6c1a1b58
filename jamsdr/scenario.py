"""The scenario file of embedded drills (CONTRACT in design.md).

Every field has a default; unknown fields and bad values are refused, all of them in one error.

The file is validated by strict pydantic models (no coercion, unknown fields forbidden). Each pydantic
error becomes one line of ``ScenarioError.problems``, named by its field with what is expected (the
field's description) and listed in a fixed order: in each object its unknown fields first, as written,
then its missing ones, then its fields in the order the model declares them.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from chalicelib.errors import Refused
from chalicelib.regions import is_region
from chalicelib.settings import RecoverySource

Failure = Literal["none", "region", "az", "scheduler", "monitoring"]
FAILURES: tuple[str, ...] = get_args(Failure)
FaultError = Literal["throttle", "5xx", "connection"]
FAULT_ERRORS: tuple[str, ...] = get_args(FaultError)
FaultRegion = Literal["primary", "recovery"]
FAULT_REGIONS: tuple[str, ...] = get_args(FaultRegion)
MAX_FAULTS = 20
MAX_FAULT_COUNT = 100
FailoverMode = Literal["auto", "approve", "notify"]
MODES: tuple[str, ...] = get_args(FailoverMode)
RECOVERY_SOURCES: tuple[str, ...] = get_args(RecoverySource)
Engine = Literal["sqlserver-se", "sqlserver-ee", "sqlserver-web", "sqlserver-ex"]
ENGINES: tuple[str, ...] = get_args(Engine)
# pydantic's regex engine (Rust): "$" is only the end of the text ("jams-tde\n" does not match), and the
# ranges are ASCII.
_OPTION_GROUP = r"^[a-zA-Z][a-zA-Z0-9-]{0,254}$"


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
    # After the region recovery, bring the primary back and run the failback (docs/failback-drill.md).
    failback: bool = False
    # A hosted zone and the traffic stack (docs/traffic.md); false: a stage without HOSTED_ZONE_ID, whose
    # switch_traffic is skipped and whose report says traffic was not switched.
    dns: bool = True
    # What the recovery restores from (RECOVERY_SOURCE): the pinned snapshot copy, or the replicated
    # automated backups at their latest restorable time.
    recovery_source: str = "snapshot"

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


# ------------------------------------------------------------------------------------------ the models
# Each field's description is its line's text after "<field>: " ({value!r}: the value as written); the
# checks that need more than a description raise _own errors, which carry their whole text.

_OWN = "scenario"


def _own(problem: str) -> PydanticCustomError:
    return PydanticCustomError(_OWN, "{problem}", {"problem": problem})


def _is_text(key: Any) -> bool:
    """A key pydantic can read: a str that is valid Unicode (json.loads makes a lone surrogate of "\\ud800")."""
    if not isinstance(key, str):
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_vpc_cidr(value: str) -> bool:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    # ip_network also reads "10.0.0.0/255.255.0.0"; the VPC template's CidrBlock needs the /n form.
    return net.version == 4 and 16 <= net.prefixlen <= 20 and str(net) == value


def _passes(test: Callable[[str], bool]) -> AfterValidator:
    def check(value: str) -> str:
        if not test(value):
            raise ValueError("refused")  # the line is the field's description
        return value

    return AfterValidator(check)


def _integer(default: int, low: int, high: int) -> Any:
    return Field(default=default, ge=low, le=high, description=f"{{value!r}} must be an integer from {low} to {high}")


def _one_of(default: str, allowed: tuple[str, ...]) -> Any:
    return Field(default=default, description=f"{{value!r}} must be one of {', '.join(allowed)}")


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _unreadable_keys_by_position(cls, data: Any) -> Any:
        """pydantic refuses a whole object over one key it cannot read, naming none of its problems: such
        a key (never a field's name) becomes its position, an ``invalid_key`` error that _locate names."""
        if isinstance(data, dict) and not all(_is_text(key) for key in data):
            return {key if _is_text(key) else at: value for at, (key, value) in enumerate(data.items())}
        return data


_Region = Annotated[str, _passes(is_region)]
_REGION_FIX = "{value!r} is not an AWS region name such as us-east-1"


class _DatabaseModel(_Model):
    engine: Engine = _one_of(DatabaseScenario.engine, ENGINES)
    encrypted: bool = Field(default=DatabaseScenario.encrypted, description="{value!r} must be true or false")
    option_group: str = Field(
        default=DatabaseScenario.option_group, pattern=_OPTION_GROUP,
        description="{value!r} must be an option group name (letters, digits, dashes)",
    )


_FAULT_KEYS = tuple(ScenarioFault.__dataclass_fields__)  # also the order of the "missing" lines
_FAULT_EXPECTED = {
    "service": "a boto3 service name such as sns",
    "region": " or ".join(FAULT_REGIONS),
    "operation": "an API operation name such as Publish",
    "error": ", ".join(FAULT_ERRORS),
    "count": f"an integer from 1 to {MAX_FAULT_COUNT}",
}


class _FaultModel(_Model):
    # The order of the lines; service before operation, which is checked against the service's operations.
    region: FaultRegion = Field(description=f"{{value!r}} must be one of {', '.join(FAULT_REGIONS)}")
    error: FaultError = Field(description=f"{{value!r}} must be one of {', '.join(FAULT_ERRORS)}")
    count: int = Field(
        ge=1, le=MAX_FAULT_COUNT, description=f"{{value!r}} must be an integer from 1 to {MAX_FAULT_COUNT}"
    )
    service: str
    operation: str

    @field_validator("service", mode="wrap")
    @classmethod
    def _a_boto3_service(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> str:
        """Checked against botocore's own list (loaded only here); a bad value's line suggests the nearest name."""
        if isinstance(value, str) and value in _boto3_services():
            return str(handler(value))
        hint = _did_you_mean(value, _boto3_services())
        raise _own(f"{value!r} is not a boto3 service name such as sns, cloudwatch, dynamodb{hint}")

    @field_validator("operation", mode="wrap")
    @classmethod
    def _an_operation_of_the_service(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> str:
        """Checked against the service's model. Without a valid service there is nothing to check it against:
        a missing service has its own line, and _problems drops this one for a bad service."""
        if not isinstance(value, str) or not value:
            raise _own(f"{value!r} must be an API operation name such as Publish")
        service = info.data.get("service")
        if service is None:
            return value
        operations = _operations_of(service)
        if value in operations:
            return str(handler(value))
        hint = _did_you_mean(value, operations)
        if not hint:
            reads = sorted(op for op in operations if op.startswith(("Describe", "Get", "List")))
            hint = f" such as {(reads or sorted(operations))[0]}"
        raise _own(f"{value!r} is not an operation of {service}; expected an API operation name of {service}{hint}")


class _ScenarioModel(_Model):
    # The order of the lines (database and faults last), not the dataclass's.
    primary_region: _Region = Field(default=Scenario.primary_region, description=_REGION_FIX)
    recovery_region: _Region = Field(default=Scenario.recovery_region, description=_REGION_FIX)
    vpc_cidr: Annotated[str, _passes(_is_vpc_cidr)] = Field(
        default=Scenario.vpc_cidr, description="{value!r} must be an IPv4 network from /16 to /20, such as 10.0.0.0/16"
    )
    existing_snapshots: int = _integer(Scenario.existing_snapshots, 0, 1000)
    snapshot_cycles: int = _integer(Scenario.snapshot_cycles, 1, 20)
    heartbeat_seconds: int = _integer(Scenario.heartbeat_seconds, 1, 60)
    failover_mode: FailoverMode = _one_of(Scenario.failover_mode, MODES)
    failure: Failure = _one_of(Scenario.failure, FAILURES)
    failback: bool = Field(default=Scenario.failback, description="{value!r} must be true or false")
    dns: bool = Field(default=Scenario.dns, description="{value!r} must be true or false")
    recovery_source: RecoverySource = _one_of(Scenario.recovery_source, RECOVERY_SOURCES)
    database: _DatabaseModel = Field(
        default=_DatabaseModel(), description="must be an object with engine, encrypted, option_group"
    )
    # Too many entries is one line, the entries unchecked: a runaway list would bury the one that matters.
    faults: list[_FaultModel] = Field(
        default_factory=list, max_length=MAX_FAULTS,
        description=f"{{value!r}} must be a list of at most {MAX_FAULTS} objects with {', '.join(_FAULT_KEYS)}",
    )

    def scenario(self) -> Scenario:
        values = dict(self)
        values["database"] = DatabaseScenario(**dict(self.database))
        values["faults"] = tuple(ScenarioFault(**dict(fault)) for fault in self.faults)
        return Scenario(**values)


# ------------------------------------------------------------------------------------------ the lines

_UNKNOWN = ("extra_forbidden", "invalid_key")
_INSIDE: dict[str, type[_Model]] = {"database": _DatabaseModel, "faults": _FaultModel}
_Place = list[tuple[int, int]]


def _regions_clash(data: dict[str, Any]) -> str | None:
    """Compared as written, even when either is not a region name (pydantic runs a model's own validators
    only once every field is valid)."""
    recovery = data.get("recovery_region", Scenario.recovery_region)
    if data.get("primary_region", Scenario.primary_region) == recovery:
        return f"recovery_region: {recovery!r} must differ from primary_region"
    return None


def _failback_without_recovery(data: dict[str, Any]) -> str | None:
    """``failback: true`` needs a region recovery to fail back from. Judged only on valid values: a bad
    ``failure`` or ``failover_mode`` has its own line, which is the thing to fix first."""
    if data.get("failback") is not True:
        return None
    failure = data.get("failure", Scenario.failure)
    if isinstance(failure, str) and failure in FAILURES and failure != "region":
        return (f"failback: true needs failure 'region' (the failback moves JAMS back after a region recovery), "
                f"not {failure!r}; set failure to region or remove failback")
    mode = data.get("failover_mode", Scenario.failover_mode)
    if failure == "region" and mode == "notify":
        return ("failback: true needs a recovery to fail back from, and failover_mode 'notify' starts none; "
                "use auto or approve, or remove failback")
    return None


def _locate(data: dict[str, Any], error: ErrorDetails) -> tuple[_Place, str]:
    """The error's line and its place in the listing (module docstring)."""
    loc, kind = error["loc"], error["type"]
    model: type[_Model] = _ScenarioModel
    node: Any = data
    where, place = "", []
    for depth, part in enumerate(loc):
        if isinstance(node, list):  # an entry of faults
            where += f"[{part}]"
            place.append((0, int(part)))
            node = node[int(part)]
            continue
        owner, key, last = model, part, depth == len(loc) - 1
        if kind in _UNKNOWN and last:
            keys = list(node)
            at = part if isinstance(part, int) else keys.index(part)  # a position: see _Model
            key = keys[at]
            place.append((0, at))
        elif kind == "missing" and last:
            place.append((1, _FAULT_KEYS.index(str(part))))
        else:
            place.append((2, list(model.model_fields).index(str(part))))
            model = _INSIDE.get(str(part), model)
        where += f".{key}" if where else f"{key}"
        node = node.get(key)
    if kind in _UNKNOWN:
        fix = f"unknown field; expected one of {', '.join(sorted(owner.model_fields))}"
    elif kind == "missing":
        fix = f"missing; expected {_FAULT_EXPECTED[str(loc[-1])]}"
    elif kind == _OWN:
        fix = error["msg"]
    elif isinstance(loc[-1], int):
        fix = f"{node!r} must be an object with {', '.join(_FAULT_KEYS)}"
    elif kind == "too_long":
        fix = f"{len(node)} entries; at most {MAX_FAULTS}"
    else:
        fix = str(owner.model_fields[str(loc[-1])].description).format(value=node)
    return place, f"{where}: {fix}"


def _problems(data: Any, errors: list[ErrorDetails]) -> list[str]:
    if not isinstance(data, dict):
        return ["the scenario must be a JSON object"]
    # A bad service's line says what to fix: its operation cannot be checked (_FaultModel).
    bad_services = {e["loc"][:2] for e in errors if e["loc"][2:] == ("service",) and e["type"] != "missing"}
    lines = [
        _locate(data, e) for e in errors
        if not (e["loc"][2:] == ("operation",) and e["type"] != "missing" and e["loc"][:2] in bad_services)
    ]
    if clash := _regions_clash(data):
        lines.append(([(2, list(_ScenarioModel.model_fields).index("recovery_region")), (3, 0)], clash))
    if failback := _failback_without_recovery(data):
        lines.append(([(2, list(_ScenarioModel.model_fields).index("failback")), (3, 0)], failback))
    return [line for _, line in sorted(lines, key=lambda placed: placed[0])]


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
    try:
        model = _ScenarioModel.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(source, _problems(data, exc.errors())) from None
    if problems := _problems(data, []):  # only the cross-field checks can refuse valid fields
        raise ScenarioError(source, problems)
    return model.scenario()


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
