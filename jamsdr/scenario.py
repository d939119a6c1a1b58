"""The scenario file of embedded drills (CONTRACT in design.md).

Every field has a default; unknown fields and bad values are refused, all of them in one error.
The file is read bounded (MAX_SCENARIO_BYTES), as UTF-8 JSON, and a key written twice is refused.

The file is validated by strict pydantic models (no coercion, unknown fields forbidden). Each pydantic
error becomes one line of ``ScenarioError.problems``, named by its field with what is expected (the
field's description) and listed in a fixed order: in each object its unknown fields first, as written,
then its missing ones, then its fields in the order the model declares them.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import select
import stat
from collections import Counter
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
from chalicelib.retention import DEFAULT_MANUAL_SNAPSHOT_QUOTA
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
# RDS CreateOptionGroup, OptionGroupName (RDS API reference): 1 to 255 letters, digits or hyphens, the first a
# letter, no two consecutive hyphens, not ending with a hyphen; RDS stores it in lowercase. fullmatch, ASCII:
# "jams-tde\n" and other scripts' letters are refused.
_OPTION_GROUP = re.compile(r"[A-Za-z](?:-?[A-Za-z0-9])*", re.ASCII)
MAX_OPTION_GROUP = 255
# A scenario is a few hundred bytes: reading stops here, so /dev/zero or an endless pipe cannot exhaust memory.
MAX_SCENARIO_BYTES = 1024 * 1024
# How long a FIFO may keep the CLI waiting for its first bytes.
FIFO_WAIT_SECONDS = 10
# The services a drill calls in both regions (the embedded world builds them all; a real stage needs them
# too). Route 53 and IAM are global, without regions in botocore's endpoint data.
DRILL_SERVICES = ("autoscaling", "cloudformation", "cloudwatch", "dynamodb", "ec2", "elbv2", "events", "kms",
                  "lambda", "rds", "s3", "sns", "sqs", "ssm")
# What a drill adds to the primary region's manual snapshots besides existing_snapshots: one source per
# snapshot cycle (counted as if none were pruned yet), and a failback's copy of the recovered database. The
# seeds and the sources share the primary region's quota of DEFAULT_MANUAL_SNAPSHOT_QUOTA (a copy lives in
# the recovery region, which the seeds do not touch).
FAILBACK_PRIMARY_SNAPSHOTS = 1
MAX_EXISTING_SNAPSHOTS = DEFAULT_MANUAL_SNAPSHOT_QUOTA - 1  # a drill takes at least one snapshot itself
MAX_SNAPSHOT_CYCLES = 20


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


DEFAULT_FAULTS: tuple[ScenarioFault, ...] = (ScenarioFault("lambda", "recovery", "Invoke", "5xx", 1),)


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
    # The default loses one Lambda invocation (the first Invoke after the failure: the watcher's launch of
    # the chain), which the scheduled sweeper recovers; `"faults": []` turns it off.
    faults: tuple[ScenarioFault, ...] = DEFAULT_FAULTS
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


def _known_region(value: str) -> str:
    """A region name that botocore's endpoint data knows for every service of a drill (moto, too, builds its
    regional backends from that data, and refuses a region outside it)."""
    if not is_region(value):
        raise ValueError("refused")  # the line is the field's description
    if value not in _region_partitions():
        import botocore  # noqa: PLC0415

        hint = _did_you_mean(value, frozenset(_region_partitions()))
        raise _own(f"{value!r} is not a region botocore {botocore.__version__} knows for {', '.join(DRILL_SERVICES)}"
                   f"{hint}; use one such as us-east-1, or upgrade botocore if the region is newer than it")
    return value


def _option_group(value: str) -> str:
    if len(value) > MAX_OPTION_GROUP or not _OPTION_GROUP.fullmatch(value):
        raise ValueError("refused")  # the line is the field's description
    return value.lower()  # as RDS stores it, so the drill's option group is the one RDS would name


_Region = Annotated[str, AfterValidator(_known_region)]
_REGION_FIX = "{value!r} is not an AWS region name such as us-east-1"


class _DatabaseModel(_Model):
    engine: Engine = _one_of(DatabaseScenario.engine, ENGINES)
    encrypted: bool = Field(default=DatabaseScenario.encrypted, description="{value!r} must be true or false")
    option_group: Annotated[str, AfterValidator(_option_group)] = Field(
        default=DatabaseScenario.option_group,
        description=f"{{value!r}} must be an option group name as RDS allows: 1 to {MAX_OPTION_GROUP} letters, digits "
                    "or hyphens, the first a letter, no two hyphens in a row, not ending with a hyphen",
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
    existing_snapshots: int = _integer(Scenario.existing_snapshots, 0, MAX_EXISTING_SNAPSHOTS)
    snapshot_cycles: int = _integer(Scenario.snapshot_cycles, 1, MAX_SNAPSHOT_CYCLES)
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
    # None: the field is absent, and the default scenario's lost Invoke applies (DEFAULT_FAULTS).
    faults: list[_FaultModel] | None = Field(
        default=None, max_length=MAX_FAULTS,
        description=f"{{value!r}} must be a list of at most {MAX_FAULTS} objects with {', '.join(_FAULT_KEYS)}",
    )

    @field_validator("faults", mode="before")
    @classmethod
    def _a_list_when_given(cls, value: Any) -> Any:
        """Absent means the default scenario's faults; null is neither a list nor absence."""
        if value is None:
            raise _own(f"None must be a list of at most {MAX_FAULTS} objects with {', '.join(_FAULT_KEYS)}")
        return value

    def scenario(self) -> Scenario:
        values = dict(self)
        values["database"] = DatabaseScenario(**dict(self.database))
        values["faults"] = DEFAULT_FAULTS if self.faults is None else tuple(
            ScenarioFault(**dict(fault)) for fault in self.faults)
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


def _partitions_differ(data: dict[str, Any]) -> str | None:
    """Both regions in one partition: partitions have separate IAM, and cross-region features (the snapshot
    copy among them) work only between regions of one partition (AWS whitepaper "AWS Fault Isolation
    Boundaries", Partitions). Judged only on known regions: an unknown one has its own line."""
    partitions = _region_partitions()
    primary = data.get("primary_region", Scenario.primary_region)
    recovery = data.get("recovery_region", Scenario.recovery_region)
    if not (isinstance(primary, str) and isinstance(recovery, str)):
        return None
    here, there = partitions.get(primary), partitions.get(recovery)
    if here is None or there is None or here == there:
        return None
    return (f"recovery_region: {recovery!r} is in the partition {there}, primary_region {primary!r} in {here}; "
            f"both regions must be in one partition (credentials and snapshot copies do not cross partitions)")


def _is_int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _over_the_snapshot_quota(data: dict[str, Any]) -> str | None:
    """The seeds and the drill's own snapshots must fit in the primary region's manual-snapshot quota (RDS
    User Guide, "Quotas and constraints for Amazon RDS": 100 manual DB snapshots per region by default), or
    the drill's first snapshot fails on the quota, not on what it drills. Judged only on valid values."""
    existing = data.get("existing_snapshots", Scenario.existing_snapshots)
    cycles = data.get("snapshot_cycles", Scenario.snapshot_cycles)
    if not (_is_int_in(existing, 0, MAX_EXISTING_SNAPSHOTS) and _is_int_in(cycles, 1, MAX_SNAPSHOT_CYCLES)):
        return None
    # A failback refused for want of a recovery (its own line) makes no snapshot.
    runs_failback = data.get("failback") is True and _failback_without_recovery(data) is None
    failback = FAILBACK_PRIMARY_SNAPSHOTS if runs_failback else 0
    own = cycles + failback
    if existing + own <= DEFAULT_MANUAL_SNAPSHOT_QUOTA:
        return None
    made = f"{cycles} of snapshot_cycles" + (f" and {failback} of the failback" if failback else "")
    return (f"existing_snapshots: {existing} with the drill's own {own} ({made}) would make {existing + own} manual "
            f"snapshots in the primary region, over the RDS quota of {DEFAULT_MANUAL_SNAPSHOT_QUOTA} per region; "
            f"at most {DEFAULT_MANUAL_SNAPSHOT_QUOTA - own} here")


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
    fields = list(_ScenarioModel.model_fields)
    if clash := _regions_clash(data):
        lines.append(([(2, fields.index("recovery_region")), (3, 0)], clash))
    elif apart := _partitions_differ(data):
        lines.append(([(2, fields.index("recovery_region")), (3, 0)], apart))
    if quota := _over_the_snapshot_quota(data):
        lines.append(([(2, fields.index("existing_snapshots")), (3, 0)], quota))
    if failback := _failback_without_recovery(data):
        lines.append(([(2, fields.index("failback")), (3, 0)], failback))
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
def _region_partitions() -> dict[str, str]:
    """Each region where botocore's endpoint data offers every one of DRILL_SERVICES, with its partition."""
    import botocore.session  # noqa: PLC0415

    session = botocore.session.get_session()
    found: dict[str, str] = {}
    for partition in session.get_available_partitions():
        offered = [set(session.get_available_regions(service, partition)) for service in DRILL_SERVICES]
        found.update(dict.fromkeys(set.intersection(*offered), partition))
    return found


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
    source = str(path)
    try:
        raw = _read_bounded(path, source)
    except OSError as exc:
        raise ScenarioError(source, [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(source, [f"not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON"]) from None
    duplicates = _Duplicates()
    try:
        data = json.loads(text, object_pairs_hook=duplicates.hook)
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise ScenarioError(source, [problem]) from None
    except RecursionError:
        raise ScenarioError(source, ["not a scenario: JSON nested too deeply"]) from None
    except ValueError as exc:  # json.loads refuses integers of more than 4300 digits
        raise ScenarioError(source, [f"not a scenario: {exc}"]) from None
    if twice := duplicates.lines(data):
        # JSON leaves a repeated key to the reader (RFC 8259, 4: names SHOULD be unique) and Python keeps the
        # last one silently: which value was meant is the writer's to say.
        try:
            parse_scenario(data, source)
        except ScenarioError as exc:
            twice += exc.problems
        raise ScenarioError(source, twice)
    return parse_scenario(data, source)


def _read_bounded(path: Path, source: str) -> bytes:
    """The file's bytes, at most MAX_SCENARIO_BYTES.

    Opened without blocking: opening a FIFO for reading blocks until a writer opens it, which nobody may ever
    do. A FIFO (or pipe) is then given FIFO_WAIT_SECONDS to deliver its first bytes or be closed by its
    writer (Linux's poll() reports no hang-up on a FIFO before a writer has opened it, fs/pipe.c), and read
    blocking to its end or to the bound, whichever comes first.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, "it is a directory", str(path))
        if stat.S_ISFIFO(mode):
            waiting = select.poll()
            waiting.register(fd, select.POLLIN)
            if not waiting.poll(FIFO_WAIT_SECONDS * 1000):
                raise ScenarioError(source, [f"nothing was written to this FIFO within {FIFO_WAIT_SECONDS} s"])
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SCENARIO_BYTES:
            chunk = os.read(fd, MAX_SCENARIO_BYTES + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise ScenarioError(source, [f"the file is larger than {MAX_SCENARIO_BYTES // 2**20} MiB (a scenario is "
                                     "a small JSON object): is it the right file?"])
    finally:
        os.close(fd)


class _Duplicates:
    """Collects the JSON objects that repeat a key, to name each repeated key with its place in the file."""

    def __init__(self) -> None:
        # By id: every object the hook makes is alive in the parsed document, so no id is reused.
        self._repeated: dict[int, list[str]] = {}

    def hook(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            counts = Counter(key for key, _ in pairs)
            self._repeated[id(obj)] = [key for key in obj if counts[key] > 1]
        return obj

    def lines(self, data: Any) -> list[str]:
        """One line per repeated key, in the order of the document (walked without recursion: the document
        may be nested as deeply as json.loads allows)."""
        found: list[str] = []
        stack: list[tuple[Any, str]] = [(data, "")] if self._repeated else []
        while stack:
            node, where = stack.pop()
            if isinstance(node, dict):
                for key in self._repeated.get(id(node), []):
                    found.append(f"{_join(where, key)}: written more than once; JSON keeps only the last value, "
                                 "so write it once")
                stack.extend(reversed([(value, _join(where, key)) for key, value in node.items()]))
            elif isinstance(node, list):
                stack.extend(reversed([(value, f"{where}[{index}]") for index, value in enumerate(node)]))
        return found


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
