"""Every disaster command without credentials, and against an endpoint that does not answer: one line on
stderr naming what failed, where and the fix, exit 3 (never a traceback, never a table of "unavailable").

The stage is a project directory with a .chalice/config.json, as an operator's checkout has. Without
credentials botocore fails before sending anything; the unreachable endpoint is a closed loopback port
(refused at once), so none of this waits on a network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from chalicelib.aws import ClientFactory, closed_loopback_endpoint, set_factory
from jamsdr.cli import main
from jamsdr.cliutil import EXIT_AWS, EXIT_CODES_HELP, EXIT_INTERRUPTED
from tests.conftest import PRIMARY, RECOVERY

REPO = Path(__file__).resolve().parents[2]
STAGE = "ops"
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                        "AWS_PROFILE", "AWS_ENDPOINT_URL")

# The commands an operator reaches for during a disaster, each as it would be typed.
COMMANDS = {
    "status": ["status", "--stage", STAGE],
    "recover": ["recover", "--stage", STAGE, "--yes", "--reason", "us-east-1 is down"],
    "recover --approve": ["recover", "--stage", STAGE, "--approve", "rec-jams-ops-1"],
    "recover --rollback": ["recover", "--stage", STAGE, "--rollback", "rec-jams-ops-1"],
    "recover --local-runner": ["recover", "--stage", STAGE, "--yes", "--reason", "down", "--local-runner"],
    "failback": ["failback", "--stage", STAGE, "--yes"],
    "failback --local-runner": ["failback", "--stage", STAGE, "--yes", "--local-runner"],
    "bootstrap": ["bootstrap", "--stage", STAGE],
}


@pytest.fixture
def stage_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = {"version": "2.0", "app_name": "jams-dr",
              "environment_variables": {"PRIMARY_REGION": PRIMARY, "RECOVERY_REGION": RECOVERY},
              "stages": {STAGE: {"environment_variables": {"ENVIRONMENT_NAME": "jams-ops"}}}}
    (tmp_path / ".chalice").mkdir()
    (tmp_path / ".chalice" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def without_credentials(stage_project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    _no_credentials(monkeypatch)
    set_factory(ClientFactory())  # a fresh session: it reads the (empty) credential chain
    yield
    set_factory(None)


@pytest.fixture
def unreachable_endpoint(stage_project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    endpoint = closed_loopback_endpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    # One attempt: the refusal is the same on every retry, and the test need not sit through the backoff.
    set_factory(ClientFactory(max_attempts=1, connect_timeout=1.0))
    yield endpoint
    set_factory(None)


def _run(args: list[str]) -> Result:
    return CliRunner().invoke(main, args)


def _one_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("args", COMMANDS.values(), ids=list(COMMANDS))
def test_without_credentials_each_command_says_so_in_one_line_and_exits_3(
    without_credentials: None, args: list[str]
) -> None:
    result = _run(args)

    assert result.exit_code == EXIT_AWS, (result.output, result.exception)
    line = _one_line(result)
    assert line.startswith("error: ")
    assert "NoCredentialsError" in line and "AWS_PROFILE" in line and "AWS_ACCESS_KEY_ID" in line, line
    # No table of "unavailable" rows (bootstrap's progress lines before the failing call may stay).
    assert "unavailable" not in result.stdout and "│" not in result.stdout


@pytest.mark.parametrize("args", COMMANDS.values(), ids=list(COMMANDS))
def test_against_an_unreachable_endpoint_each_command_names_it_in_one_line_and_exits_3(
    unreachable_endpoint: str, args: list[str]
) -> None:
    result = _run(args)

    assert result.exit_code == EXIT_AWS, (result.output, result.exception)
    line = _one_line(result)
    assert line.startswith("error: ")
    assert unreachable_endpoint in line and "AWS_ENDPOINT_URL" in line, line
    assert "unavailable" not in result.stdout and "│" not in result.stdout


def test_the_message_names_the_service_operation_and_region_of_the_failed_call(without_credentials: None) -> None:
    line = _one_line(_run(COMMANDS["recover"]))

    # The deployed chain is reached through the start function in the recovery region.
    assert "calling lambda Invoke in us-west-2" in line, line


def test_a_refusal_by_aws_names_the_call_and_its_code(
    stage_project: Path, embedded: object, clients: ClientFactory
) -> None:
    # The embedded AWS answers, but the stage's start function was never deployed.
    result = _run(COMMANDS["recover"])

    assert result.exit_code == EXIT_AWS, (result.output, result.exception)
    line = _one_line(result)
    assert "AWS refused lambda Invoke in us-west-2 (ResourceNotFoundException" in line, line


def test_a_real_process_prints_one_line_and_no_traceback(stage_project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    env.update(AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true",
               PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", "from jamsdr.cli import main; main()", *COMMANDS["failback"]],
        capture_output=True, text=True, env=env, cwd=stage_project, timeout=120, check=False)

    assert done.returncode == EXIT_AWS, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "NoCredentialsError" in done.stderr, done.stderr


def test_ctrl_c_in_any_command_exits_130_saying_what_was_interrupted(
    stage_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jamsdr import operate

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(operate, "_invoke", interrupted)
    result = _run(COMMANDS["recover"])

    assert result.exit_code == EXIT_INTERRUPTED == 130
    line = _one_line(result)
    assert line.startswith("interrupted: jams-dr recover stopped by Ctrl-C")
    assert "jams-dr status --stage" in line


def test_ctrl_c_at_a_confirmation_exits_130_and_a_closed_stdin_exits_2(
    stage_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = CliRunner().invoke(main, ["failback", "--stage", STAGE], input="")

    assert closed.exit_code == 2
    assert "stdin is closed or not a terminal" in _one_line(closed) and "--yes" in closed.stderr

    def ctrl_c(*_: object, **__: object) -> bool:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise click.Abort from None  # what click's prompts do with Ctrl-C

    monkeypatch.setattr(click, "confirm", ctrl_c)
    interrupted = CliRunner().invoke(main, ["failback", "--stage", STAGE])

    assert interrupted.exit_code == EXIT_INTERRUPTED
    assert _one_line(interrupted) == ("interrupted: jams-dr failback stopped by Ctrl-C at its confirmation: nothing "
                                      "was done")


@pytest.mark.parametrize("command", ["status", "recover", "failback", "bootstrap", "drill", "report"])
def test_every_command_documents_its_exit_statuses(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=120)

    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    assert " ".join(EXIT_CODES_HELP.replace("\b", "").split()) in help_text


def test_heartbeat_help_says_to_publish_from_the_host_not_a_jams_job() -> None:
    result = CliRunner().invoke(main, ["heartbeat", "--help"], terminal_width=120)

    text = " ".join(result.output.split())
    assert "not as a JAMS job" in text and "for a JAMS job" not in text
    assert "130 interrupted (Ctrl-C)" in text
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert "Do not publish from a JAMS job" in readme
