"""The Powertools layer, the runtime and the reserved concurrency of .chalice/config.json agree with the code.

The functions import aws-lambda-powertools from a public layer, not the release the tests run
(requirements-lock.txt); jamsdr/powertools_layer.py records which layer version ships which release.
Each check runs on the real files, and on a modified copy written to tmp_path to show that it fails when
the two disagree (the copies use a made-up layer version 99 for "the layer that ships 3.37.0", so that
they test the checks, not the recorded numbers).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.shared.version import VERSION as INSTALLED_POWERTOOLS
from botocore.stub import Stubber
from chalice.config import Config

from jamsdr import powertools_layer as pl
from jamsdr.powertools_layer import (
    LAMBDA_RUNTIME,
    LAYER_RELEASES,
    MIN_POWERTOOLS,
    LayerRelease,
    configured_layers,
    layer_problems,
    locked_powertools,
    minimum_problems,
    parse_layer_arn,
    powertools_in,
    published_problems,
    release_key,
    runtime_problems,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".chalice" / "config.json"
LOCK = ROOT / "requirements-lock.txt"
WATCHER, CHAIN = "heartbeat_watcher", "advance_execution"
ARN = "arn:aws:lambda:us-west-2:017000801446:layer:AWSLambdaPowertoolsPythonV3-{python}-{arch}:{version}"
# Test data, not a claim about the real layers: 27 is the recorded one, 99 stands for "the layer of 3.37.0".
FAKE_RELEASES = (*LAYER_RELEASES, LayerRelease(99, "3.37.0", ("made up for this test",)),
                 LayerRelease(98, "3.22.0", ("made up for this test",)))


def _real_config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(CONFIG.read_text())
    return config


def reserved_concurrency_problems(config: dict[str, Any]) -> list[str]:
    """The watcher and the chain each get a reserved concurrency of at least 1 in every stage."""
    problems = []
    for stage in config["stages"]:
        for function in (WATCHER, CHAIN):
            # Chalice's own lookup, so a value set at any level it honours counts.
            value = Config(chalice_stage=stage, function_name=function, config_from_disk=config).reserved_concurrency
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{stage}: {function} needs reserved_concurrency >= 1, has {value!r}")
    return problems


# ---------------------------------------------------------------------------------------- the real files


def test_a_every_stage_layer_ships_the_powertools_the_tests_run() -> None:
    assert layer_problems(_real_config(), locked_powertools(LOCK.read_text())) == []


def test_b_every_stage_layer_is_built_for_the_pinned_runtime() -> None:
    assert runtime_problems(_real_config()) == []
    assert LAMBDA_RUNTIME == "python3.11"  # the Makefile's guard and docs/lambda-runtime.md say 3.11


def test_c_every_stage_layer_ships_at_least_what_the_code_needs() -> None:
    assert minimum_problems(_real_config()) == []


def test_d_watcher_and_chain_have_reserved_concurrency_in_every_stage() -> None:
    config = _real_config()
    assert set(config["stages"]) == {"dev", "prod"}
    assert reserved_concurrency_problems(config) == []


def test_the_lock_pins_the_powertools_the_tests_import() -> None:
    assert locked_powertools(LOCK.read_text()) == INSTALLED_POWERTOOLS


def test_the_tests_run_at_least_the_code_minimum() -> None:
    assert release_key(INSTALLED_POWERTOOLS) >= release_key(MIN_POWERTOOLS)


def test_layer_27_is_recorded_as_3_23_0_with_its_sources() -> None:
    """Issue 13: version 27 predates Metrics.add_dimensions."""
    assert powertools_in(27) == "3.23.0"
    assert all(release.sources for release in LAYER_RELEASES)
    assert len({r.layer_version for r in LAYER_RELEASES}) == len({r.powertools for r in LAYER_RELEASES}) == len(
        LAYER_RELEASES)


def test_the_layers_lookup_is_chalices() -> None:
    """configured_layers resolves ``layers`` per function as chalice deploy does, overrides included."""
    config = _real_config()
    override = ARN.format(python="python311", arch="x86_64", version=12)
    config["stages"]["prod"]["lambda_functions"]["snapshot_tick"]["layers"] = [override]
    found = configured_layers(config)
    assert found["prod/snapshot_tick"] == [override]
    for stage, settings in config["stages"].items():
        for function in settings["lambda_functions"]:
            chalice = Config(chalice_stage=stage, function_name=function, config_from_disk=config).layers
            assert found.get(f"{stage}/{function}", found[stage]) == chalice


# ---------------------------------------------------------------------------------------- each check can fail


def _set_layer(config: dict[str, Any], version: int, python: str = "python311", arch: str = "x86_64") -> None:
    for settings in config["stages"].values():
        settings["layers"] = [ARN.format(python=python, arch=arch, version=version)]


def _checks_on_a_copy(tmp_path: Path, edit: Callable[[dict[str, Any]], None],
                      locked: str | None = None) -> dict[str, list[str]]:
    """Every check, run on modified copies of .chalice/config.json and requirements-lock.txt in tmp_path."""
    config = copy.deepcopy(_real_config())
    _set_layer(config, 99)  # consistent with 3.37.0 under FAKE_RELEASES: the edit below breaks one thing
    edit(config)
    config_copy, lock_copy = tmp_path / "config.json", tmp_path / "requirements-lock.txt"
    config_copy.write_text(json.dumps(config))
    lock = re.sub(r"(?im)^aws[-_]lambda[-_]powertools==\S+$", f"aws_lambda_powertools=={locked or '3.37.0'}",
                  LOCK.read_text())
    lock_copy.write_text(lock)
    read, pinned = json.loads(config_copy.read_text()), locked_powertools(lock_copy.read_text())
    return {"a": layer_problems(read, pinned, FAKE_RELEASES), "b": runtime_problems(read),
            "c": minimum_problems(read, releases=FAKE_RELEASES), "d": reserved_concurrency_problems(read)}


def _no_edit(_config: dict[str, Any]) -> None:
    """Leave the copy as it is."""


def _prod_watcher_unreserved(config: dict[str, Any]) -> None:
    del config["stages"]["prod"]["lambda_functions"][WATCHER]["reserved_concurrency"]


def _dev_chain_zero(config: dict[str, Any]) -> None:
    config["stages"]["dev"]["lambda_functions"][CHAIN]["reserved_concurrency"] = 0


def _one_function_on_27(config: dict[str, Any]) -> None:
    config["stages"]["prod"]["lambda_functions"]["snapshot_tick"]["layers"] = [
        ARN.format(python="python311", arch="x86_64", version=27)]


def _no_powertools_layer(config: dict[str, Any]) -> None:
    config["stages"]["dev"]["layers"] = []


def test_a_consistent_copy_passes_every_check(tmp_path: Path) -> None:
    assert _checks_on_a_copy(tmp_path, _no_edit) == {"a": [], "b": [], "c": [], "d": []}


@pytest.mark.parametrize(
    ("edit", "locked", "check", "expected"),
    [
        (lambda c: _set_layer(c, 27), None, "a",
         "layer version 27 ships aws-lambda-powertools 3.23.0, but the tests run 3.37.0 (requirements-lock.txt); "
         "use layer version 99"),
        (lambda c: _set_layer(c, 97), None, "a", "says which Powertools release layer version 97 ships"),
        (_no_edit, "3.36.0", "a", "no layer version is recorded for 3.36.0"),
        (_one_function_on_27, None, "a", "prod/snapshot_tick: layer version 27 ships aws-lambda-powertools 3.23.0"),
        (_no_powertools_layer, None, "a", "dev: needs exactly one AWSLambdaPowertoolsPythonV3 layer"),
        (lambda c: _set_layer(c, 99, python="python312"), None, "b",
         "the layer is built for python3.12, the functions run python3.11"),
        (lambda c: _set_layer(c, 99, arch="arm64"), None, "b", "the layer is built for arm64, the functions run x86_64"),
        (lambda c: _set_layer(c, 98), "3.22.0", "c", "ships aws-lambda-powertools 3.22.0, older than 3.23.0"),
        (_prod_watcher_unreserved, None, "d", "prod: heartbeat_watcher needs reserved_concurrency >= 1, has None"),
        (_dev_chain_zero, None, "d", "dev: advance_execution needs reserved_concurrency >= 1, has 0"),
    ],
    ids=["a-old-layer", "a-unrecorded-layer", "a-lock-moved", "a-function-override", "a-no-layer",
         "b-python312-layer", "b-arm64-layer", "c-below-minimum", "d-watcher-unreserved", "d-chain-zero"],
)
def test_each_check_fails_on_a_copy_that_breaks_it(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], locked: str | None, check: str, expected: str,
) -> None:
    problems = _checks_on_a_copy(tmp_path, edit, locked)
    assert any(expected in problem for problem in problems[check]), problems[check]
    if check in "bd":  # these edits touch nothing the other checks read
        assert [p for name, found in problems.items() if name != check for p in found] == []


def test_parse_layer_arn_reads_runtime_architecture_and_version() -> None:
    layer = parse_layer_arn(ARN.format(python="python311", arch="x86_64", version=27))
    assert layer is not None
    assert (layer.region, layer.runtime, layer.architecture, layer.version) == ("us-west-2", "python3.11", "x86_64", 27)
    assert parse_layer_arn("arn:aws:lambda:us-west-2:017000801446:layer:SomethingElse:3") is None


# ---------------------------------------------------------------------------------------- the deploy guard


def test_chalice_follows_the_interpreter_that_runs_it() -> None:
    """Why the runtime needs a guard: chalice has no setting for it and takes the running Python's."""
    assert pl.chalice_runtime() == f"python{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture
def consistent_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The guard pointed at copies of the config and lock that agree under FAKE_RELEASES."""
    config = _real_config()
    _set_layer(config, 99)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "lock.txt").write_text("aws-lambda-powertools==3.37.0\n")
    monkeypatch.setattr(pl, "CONFIG_PATH", tmp_path / "config.json")
    monkeypatch.setattr(pl, "LOCK_PATH", tmp_path / "lock.txt")
    monkeypatch.setattr(pl, "LAYER_RELEASES", FAKE_RELEASES)
    return tmp_path


@pytest.mark.parametrize(("runtime", "code"), [("python3.11", 0), ("python3.12", 1), ("python3.10", 1)])
def test_the_guard_refuses_an_interpreter_that_would_deploy_another_runtime(
    consistent_files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    runtime: str, code: int,
) -> None:
    monkeypatch.setattr(pl, "chalice_runtime", lambda: runtime)
    assert pl.main(["check", "--stage", "prod"]) == code
    out, err = capsys.readouterr()
    if code:
        assert f"would deploy {runtime}; the functions and their layer need python3.11" in err
    else:
        assert out.strip() == "ok: python3.11, layer ships aws-lambda-powertools 3.37.0" and err == ""


def test_the_guard_answers_the_real_files_as_the_checks_do(capsys: pytest.CaptureFixture[str]) -> None:
    """`make deploy`'s offline guard on the files as they are (no AWS call without --published)."""
    config, locked = _real_config(), locked_powertools(LOCK.read_text())
    expected = layer_problems(config, locked) + runtime_problems(config) + minimum_problems(config)
    code = pl.main(["check"])
    refused = [line.removeprefix("refused: ") for line in capsys.readouterr().err.splitlines()]
    assert (code, refused) == ((1, expected) if expected else (0, []))


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("same", None),
        ("other", "is configured, but arn:aws:lambda:us-west-2:017000801446:layer:"
                  "AWSLambdaPowertoolsPythonV3-python311-x86_64:100 is the layer published for"),
        ("missing", "SSM has no published layer for aws-lambda-powertools 3.37.0 (python3.11, x86_64) in us-west-2"),
    ],
)
def test_the_published_check_compares_the_layer_with_ssm(answer: str, expected: str | None) -> None:
    config = _real_config()
    _set_layer(config, 99)
    configured = ARN.format(python="python311", arch="x86_64", version=99)
    ssm = boto3.client("ssm", region_name="us-west-2")
    name = "/aws/service/powertools/python/x86_64/python3.11/3.37.0"
    with Stubber(ssm) as stub:
        if answer == "missing":
            stub.add_client_error("get_parameter", service_error_code="ParameterNotFound",
                                  expected_params={"Name": name})
        else:
            value = configured if answer == "same" else ARN.format(python="python311", arch="x86_64", version=100)
            stub.add_response("get_parameter", {"Parameter": {"Name": name, "Value": value}},
                              expected_params={"Name": name})
        problems = published_problems(config, "3.37.0", lambda region: ssm)
        stub.assert_no_pending_responses()
    # One call although both stages use the same layer.
    assert problems == [] if expected is None else len(problems) == 1 and expected in problems[0]


def test_make_deploy_runs_the_guard_before_chalice_deploy() -> None:
    recipe = re.search(r"^deploy:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe is not None
    lines = recipe.group(1).splitlines()
    guard = next(i for i, line in enumerate(lines) if "-m jamsdr.powertools_layer check" in line)
    deploy = next(i for i, line in enumerate(lines) if "chalice deploy" in line)
    assert guard < deploy and "--published" in lines[guard]


# ---------------------------------------------------------------------------------------- the metric on any layer


@pytest.fixture
def fresh_metrics() -> Iterator[Metrics]:
    """The app's Metrics, emptied before and after (powertools shares its metric set between instances)."""
    from chalicelib.observability import metrics

    metrics.clear_metrics()
    yield metrics
    metrics.clear_metrics()


class _MetricsBefore325:
    """What _emit finds on a layer older than 3.25.0: Metrics without add_dimensions."""

    def __init__(self, inner: Metrics) -> None:
        self._inner = inner
        self.provider = inner.provider

    def add_metric(self, name: str, unit: MetricUnit, value: float) -> None:
        self._inner.add_metric(name=name, unit=unit, value=value)


def _metric_values(metrics: Metrics, name: str) -> list[float]:
    return list(metrics.provider.metric_set.get(name, {}).get("Value", []))


def _environment_records(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]


@pytest.mark.parametrize("before_325", [False, True], ids=["installed-release", "no-add_dimensions"])
def test_emit_publishes_an_environment_only_record_on_any_release(
    fresh_metrics: Metrics, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], before_325: bool,
) -> None:
    from chalicelib.snapshots import tick as snapshots

    if before_325:
        monkeypatch.setattr(snapshots, "metrics", _MetricsBefore325(fresh_metrics))
    snapshots._emit("jams", "RecoveryPointAgeSeconds", MetricUnit.Seconds, 42.0)
    (record,) = _environment_records(capsys.readouterr().out)
    directive = record["_aws"]["CloudWatchMetrics"]
    assert directive == [{"Namespace": "JamsDR", "Dimensions": [["Environment"]],
                          "Metrics": [{"Name": "RecoveryPointAgeSeconds", "Unit": "Seconds"}]}]
    assert (record["Environment"], record["RecoveryPointAgeSeconds"]) == ("jams", 42.0)
    assert isinstance(record["_aws"]["Timestamp"], int)
    assert "service" not in record  # exactly the alarm's dimensions
    # The service-set copy goes out with the flush, with the invocation's other metrics.
    assert _metric_values(fresh_metrics, "RecoveryPointAgeSeconds") == [42.0]
