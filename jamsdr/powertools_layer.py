"""The public Powertools layer the functions run on: what each layer version ships, what the code needs.

The functions do not bundle aws-lambda-powertools (requirements.txt lists nothing): they import it from
the public layer that .chalice/config.json sets per stage (``layers``), while the tests run the release
requirements-lock.txt pins. A layer ARN ends in a layer *version*, a number AWS assigns when the
Powertools team publishes, not a Powertools release; which release a number ships is therefore recorded
here, each with the sources that state it, and nowhere else. tests/unit/test_powertools_layer.py and
``make deploy`` (``python -m jamsdr.powertools_layer check``) fail when the configured layer, the
locked release, the code's minimum release and the runtime disagree. docs/lambda-runtime.md says how the
numbers were established and how to move to a new release.

Tooling (the deploy guard and its tests), never on the Lambda path, so it is not in the zip either.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PATH = ROOT / ".chalice" / "config.json"
LOCK_PATH = ROOT / "requirements-lock.txt"

LAYER_ACCOUNT = "017000801446"
LAYER_FAMILY = "AWSLambdaPowertoolsPythonV3"
ARCHITECTURE = "x86_64"
# Chalice has no setting for the runtime: it deploys with the version of the Python running chalice
# (chalice/config.py, Config.lambda_python_version). The layer's compiled dependencies (pydantic_core)
# are built for one Python, so `make deploy` refuses any interpreter that would give another runtime.
LAMBDA_RUNTIME = "python3.11"

# The oldest Powertools release the Lambda code is known to run on: the one the tests run (the lock
# pins it to what layer 27 ships). Metrics.add_dimensions first shipped in 3.25.0 (the PyPI wheel of
# 3.24.0 has none, that of 3.25.0 has it; https://github.com/aws-powertools/powertools-lambda-python/pull/7848),
# so the code does not call it: chalicelib/snapshots/tick.py writes the RPO alarm's {Environment} record with
# observability.emit_alone on every release. Everything else the code calls (Logger,
# Logger.set_correlation_id, Metrics(namespace=, service=), Metrics.flush_metrics(raise_on_empty_metrics=),
# MetricUnit) is in 3.0.0 already.
MIN_POWERTOOLS = "3.23.0"


@dataclass(frozen=True)
class LayerRelease:
    """One layer version of AWSLambdaPowertoolsPythonV3-<python>-<arch> and the release it ships."""

    layer_version: int
    powertools: str
    sources: tuple[str, ...]


# Only numbers a source states; a number inferred by counting releases is not recorded (not every
# release publishes exactly one layer version). The numbering is shared by every Python flavour,
# architecture and commercial region: the layer table of the docs lists the same number for all of them.
LAYER_RELEASES: tuple[LayerRelease, ...] = (
    LayerRelease(
        layer_version=27,
        powertools="3.23.0",
        sources=(
            # "Lambda layer exists: ...:layer:AWSLambdaPowertoolsPythonV3-python313-x86_64:27 (created Nov 13,
            # 17:32 UTC)" for 3.23.0, published to PyPI on Nov 13; the .../latest SSM parameter points to 27.
            "https://github.com/aws-powertools/powertools-lambda-python/issues/7689",
            # Python 3.9 support was dropped in v3.24.0 and "Python 3.9 layers intentionally stop at layer
            # version 27": 27 is the last layer before 3.24.0.
            "https://github.com/aws-powertools/powertools-lambda-python/issues/8434",
            "https://github.com/aws-powertools/powertools-lambda-python/pull/8439",
            # Same number for python39..python312 x86_64 in every region, us-west-2 python311 included.
            "aws-powertools/powertools-lambda-python docs/includes/_layer_homepage_x86.md "
            "(commit 04a614741764240f56d360a2c469536085bce0cb)",
        ),
    ),
)

_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):layer:"
    + LAYER_FAMILY
    + r"-python(?P<major>\d)(?P<minor>\d+)-(?P<arch>x86_64|arm64):(?P<version>\d+)$"
)
_LOCK_LINE = re.compile(r"^aws[-_.]lambda[-_.]powertools(?:\[[^\]]*\])?\s*==\s*(?P<version>[^\s;#]+)", re.IGNORECASE)


@dataclass(frozen=True)
class PowertoolsLayer:
    """A parsed AWSLambdaPowertoolsPythonV3 layer version ARN."""

    arn: str
    region: str
    runtime: str  # python311 -> "python3.11", the form Lambda and Chalice name runtimes in
    architecture: str
    version: int


def parse_layer_arn(arn: str) -> PowertoolsLayer | None:
    """The Powertools V3 layer ``arn`` names, or None for any other layer (or not an ARN)."""
    match = _ARN.match(arn)
    if match is None:
        return None
    return PowertoolsLayer(
        arn=arn,
        region=match["region"],
        runtime=f"python{match['major']}.{match['minor']}",
        architecture=match["arch"],
        version=int(match["version"]),
    )


def release_key(version: str) -> tuple[int, ...]:
    """``"3.25.0"`` -> (3, 25, 0), for ordering releases (a suffix such as ``rc1`` is ignored)."""
    parts = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
    if not parts:
        raise ValueError(f"not a release number: {version!r}")
    return tuple(parts)


def locked_powertools(lock_text: str) -> str:
    """The aws-lambda-powertools release a requirements lock pins with ``==``."""
    for line in lock_text.splitlines():
        match = _LOCK_LINE.match(line.strip())
        if match is not None:
            return match["version"]
    raise ValueError("the lock pins no aws-lambda-powertools release (expected aws-lambda-powertools==X.Y.Z)")


def powertools_in(layer_version: int, releases: Iterable[LayerRelease] | None = None) -> str | None:
    """The Powertools release ``layer_version`` ships, when a source recorded above states it."""
    for release in LAYER_RELEASES if releases is None else releases:
        if release.layer_version == layer_version:
            return release.powertools
    return None


def layer_for(powertools: str, releases: Iterable[LayerRelease] | None = None) -> int | None:
    """The layer version recorded for ``powertools``, if any."""
    for release in LAYER_RELEASES if releases is None else releases:
        if release.powertools == powertools:
            return release.layer_version
    return None


# ---------------------------------------------------------------------------------------- the config


def configured_layers(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """The ``layers`` of each stage ("<stage>"), and of each function that overrides it ("<stage>/<function>").

    Chalice looks ``layers`` up per function, in this order (chalice/config.py, Config._chain_lookup):
    stages.<stage>.lambda_functions.<function>, stages.<stage>, lambda_functions.<function>, the top level.
    """
    top_functions: Mapping[str, Any] = config.get("lambda_functions", {})
    found: dict[str, list[str]] = {}
    for stage, stage_config in config.get("stages", {}).items():
        stage_functions: Mapping[str, Any] = stage_config.get("lambda_functions", {})
        found[stage] = _first_set("layers", [stage_config, config])
        for function in sorted(set(stage_functions) | set(top_functions)):
            scopes = [stage_functions.get(function, {}), stage_config, top_functions.get(function, {}), config]
            layers = _first_set("layers", scopes)
            own_architecture = _architecture(config, f"{stage}/{function}") != _architecture(config, stage)
            if layers != found[stage] or own_architecture:
                found[f"{stage}/{function}"] = layers
    return found


def _first_set(key: str, scopes: Sequence[Mapping[str, Any]]) -> list[str]:
    for scope in scopes:
        if isinstance(scope, Mapping) and scope.get(key) is not None:
            return list(scope[key])
    return []


def _powertools_layers(config: Mapping[str, Any]) -> Iterable[tuple[str, PowertoolsLayer | None]]:
    """(where, layer) for every function scope; layer None when the scope has no Powertools layer."""
    for where, arns in configured_layers(config).items():
        layers = [layer for layer in map(parse_layer_arn, arns) if layer is not None]
        if len(layers) != 1:
            yield where, None
        else:
            yield where, layers[0]


def layer_problems(config: Mapping[str, Any], locked: str,
                   releases: Sequence[LayerRelease] | None = None) -> list[str]:
    """The configured layer must be one whose release a source states, and that release the locked one."""
    releases = LAYER_RELEASES if releases is None else releases
    problems = []
    for where, layer in _powertools_layers(config):
        if layer is None:
            problems.append(f"{where}: needs exactly one {LAYER_FAMILY} layer in `layers`")
            continue
        shipped = powertools_in(layer.version, releases)
        if shipped is None:
            problems.append(
                f"{where}: no source recorded in jamsdr/powertools_layer.py says which Powertools release "
                f"layer version {layer.version} ships (recorded: {_recorded(releases)})"
            )
        elif shipped != locked:
            wanted = layer_for(locked, releases)
            fix = (f"use layer version {wanted}" if wanted is not None else
                   f"no layer version is recorded for {locked} yet: docs/lambda-runtime.md says how to establish it")
            problems.append(
                f"{where}: layer version {layer.version} ships aws-lambda-powertools {shipped}, but the tests run "
                f"{locked} (requirements-lock.txt); {fix}"
            )
    return problems


def runtime_problems(config: Mapping[str, Any], runtime: str | None = None) -> list[str]:
    """The layer must be built for the runtime the functions are deployed with, and for their architecture."""
    runtime = LAMBDA_RUNTIME if runtime is None else runtime
    problems = []
    for where, layer in _powertools_layers(config):
        if layer is None:
            continue  # reported by layer_problems
        if layer.runtime != runtime:
            problems.append(f"{where}: the layer is built for {layer.runtime}, the functions run {runtime} "
                            f"(LAMBDA_RUNTIME in jamsdr/powertools_layer.py)")
        if layer.architecture != _architecture(config, where):
            problems.append(f"{where}: the layer is built for {layer.architecture}, the functions run "
                            f"{_architecture(config, where)}")
    return problems


def minimum_problems(config: Mapping[str, Any], minimum: str | None = None,
                     releases: Sequence[LayerRelease] | None = None) -> list[str]:
    """The release the configured layer ships must be at least the one the code is written for."""
    minimum = MIN_POWERTOOLS if minimum is None else minimum
    problems = []
    for where, layer in _powertools_layers(config):
        shipped = None if layer is None else powertools_in(layer.version, releases)
        if shipped is None:
            continue  # unknown: reported by layer_problems
        if release_key(shipped) < release_key(minimum):
            problems.append(f"{where}: the layer ships aws-lambda-powertools {shipped}, older than {minimum}, "
                            "the oldest the code needs (MIN_POWERTOOLS in jamsdr/powertools_layer.py)")
    return problems


def _architecture(config: Mapping[str, Any], where: str) -> str:
    stage, _, function = where.partition("/")
    stage_config = config.get("stages", {}).get(stage, {})
    scopes = [stage_config.get("lambda_functions", {}).get(function, {}), stage_config,
              config.get("lambda_functions", {}).get(function, {}), config]
    for scope in scopes:
        if isinstance(scope, Mapping) and scope.get("lambda_architecture") is not None:
            return str(scope["lambda_architecture"])
    return ARCHITECTURE  # Chalice's default, x86_64


def _recorded(releases: Sequence[LayerRelease]) -> str:
    return ", ".join(f"{r.layer_version} -> {r.powertools}" for r in releases) or "none"


# ---------------------------------------------------------------------------------------- deploy guard


def chalice_runtime() -> str:
    """The runtime ``chalice deploy`` run by this interpreter would give every function."""
    from chalice.config import Config  # noqa: PLC0415 - a dev dependency, never on the Lambda path

    return str(Config().lambda_python_version)


def published_arn(ssm: SSMClient, powertools: str, runtime: str = LAMBDA_RUNTIME,
                  architecture: str = ARCHITECTURE) -> str | None:
    """The layer ARN the Powertools team publishes for ``powertools`` in SSM Parameter Store (None: no parameter).

    /aws/service/powertools/python/<arch>/<pythonX.Y>/<release> is a public parameter of every commercial
    region, its value the layer version ARN of that region. It has been missing for a release before
    (issue 7689), so None is an answer, not an error.
    """
    name = f"/aws/service/powertools/python/{architecture}/{runtime}/{powertools}"
    try:
        answer = ssm.get_parameter(Name=name)
    except ssm.exceptions.ParameterNotFound:
        return None
    return str(answer["Parameter"]["Value"])


def published_problems(config: Mapping[str, Any], locked: str, ssm_for_region: Any) -> list[str]:
    """Each configured layer must be the one SSM says the Powertools team published for the locked release."""
    problems = []
    checked: set[str] = set()
    for where, layer in _powertools_layers(config):
        if layer is None or layer.arn in checked:
            continue
        checked.add(layer.arn)
        published = published_arn(ssm_for_region(layer.region), locked, layer.runtime, layer.architecture)
        if published is None:
            problems.append(f"{where}: SSM has no published layer for aws-lambda-powertools {locked} "
                            f"({layer.runtime}, {layer.architecture}) in {layer.region}")
        elif published != layer.arn:
            problems.append(f"{where}: {layer.arn} is configured, but {published} is the layer published for "
                            f"aws-lambda-powertools {locked}")
    return problems


def _ssm(region: str) -> Any:
    import boto3  # noqa: PLC0415 - only the AWS-facing commands need it

    return boto3.client("ssm", region_name=region)


def _load(stage: str | None) -> tuple[dict[str, Any], str]:
    config: dict[str, Any] = json.loads(CONFIG_PATH.read_text())
    if stage is not None:
        if stage not in config.get("stages", {}):
            raise SystemExit(f"no stage {stage!r} in {CONFIG_PATH}")
        config = {**config, "stages": {stage: config["stages"][stage]}}
    return config, locked_powertools(LOCK_PATH.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jamsdr.powertools_layer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="refuse a deploy whose runtime or Powertools layer disagrees")
    check.add_argument("--stage", help="one stage of .chalice/config.json (default: every stage)")
    check.add_argument("--published", action="store_true",
                       help="also ask SSM (AWS credentials needed) which layer ships the locked release")
    resolve = commands.add_parser("resolve", help="print the layer ARN published for the locked release (AWS)")
    resolve.add_argument("--region", default="us-west-2")
    args = parser.parse_args(argv)
    config, locked = _load(getattr(args, "stage", None))
    if args.command == "resolve":
        arn = published_arn(_ssm(args.region), locked)
        print(arn or f"no published layer for aws-lambda-powertools {locked} in {args.region}")
        return 0 if arn else 1

    runtime = chalice_runtime()
    problems = []
    if runtime != LAMBDA_RUNTIME:
        problems.append(f"chalice run by {sys.executable} would deploy {runtime}; the functions and their layer "
                        f"need {LAMBDA_RUNTIME}: run it from a Python {LAMBDA_RUNTIME.removeprefix('python')} "
                        "virtualenv")
    problems += layer_problems(config, locked) + runtime_problems(config) + minimum_problems(config)
    if args.published and not problems:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - as _ssm

        try:
            problems += published_problems(config, locked, _ssm)
        except (BotoCoreError, ClientError) as exc:
            problems.append(f"cannot ask SSM which layer ships aws-lambda-powertools {locked}: {exc}")
    for problem in problems:
        print(f"refused: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok: {runtime}, layer ships aws-lambda-powertools {locked}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
