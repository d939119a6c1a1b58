"""What every jams-dr command shares: consoles, exit codes, bad-input handling, stage settings, and the one
place that turns AWS, network and interrupt errors into a message and an exit code (JamsDrGroup)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    SSOError,
    TokenRetrievalError,
)
from rich.console import Console
from rich.text import Text

from chalicelib.aws import error_code, get_factory, is_unreachable
from chalicelib.codes import UNREACHABLE
from chalicelib.errors import JamsDrError
from chalicelib.settings import Settings, SettingsError
from jamsdr.stage import StageError, stage_settings

console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2
EXIT_AWS = 3  # AWS unreachable or refused: the command could not do its work
# 128 + SIGINT: what a shell reports for a process Ctrl-C ended, so scripts can tell it from a failure.
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\b
Exit status:
  0    as expected
  1    the outcome differs from the expected one (or the operation was refused)
  2    bad input (options, stage config, scenario, report files or directory)
  3    AWS unreachable or refused (credentials, region, endpoint): one line says which and the fix
  130  interrupted (Ctrl-C)"""

# Error codes that mean "who you are" rather than "where you are" (AWS's own codes, and botocore's
# class names as chalicelib.aws.error_code gives them for errors raised before any request).
CREDENTIAL_CODES = frozenset({
    "NoCredentialsError", "PartialCredentialsError", "ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId",
    "UnrecognizedClientException", "SignatureDoesNotMatch", "AuthFailure", "InvalidSignatureException",
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "TokenRetrievalError", "SSOTokenLoadError",
    "CredentialRetrievalError", "UnauthorizedSSOTokenError", "ProfileNotFound", "RequestExpired",
})
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError, TokenRetrievalError,
                      SSOError, ProfileNotFound)
CREDENTIALS_FIX = ("credentials: set AWS_PROFILE (then `aws sso login` if it is an SSO profile), or "
                   "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for a session); an expired "
                   "session needs a new login, and the identity must be allowed the call")


def print_error(message: str, label: str = "error:") -> None:
    """One line on stderr, however wide: CI logs and pipes must not get rich's wrapping."""
    err_console.print(Text.assemble((label, "bold red"), " ", message), soft_wrap=True, highlight=False)


def fail_input(message: str) -> NoReturn:
    print_error(message)
    sys.exit(EXIT_BAD_INPUT)


def settings_for(stage: str | None) -> Settings:
    """The stage's settings from .chalice/config.json, or the environment's when no stage is given."""
    try:
        return stage_settings(stage) if stage else Settings.from_env()
    except (StageError, SettingsError) as exc:
        fail_input(str(exc))


class Interrupted(Exception):
    """A command caught Ctrl-C, cleaned up and knows what it left: the message says so, the exit is 130."""


@dataclass(frozen=True)
class AwsCall:
    service: str
    operation: str
    region: str


class _CallTracker:
    """Remembers each thread's latest AWS call (botocore's before-call event), so that an error raised
    anywhere below a command can name the service, the operation and the region it came from."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self, model: Any = None, request_signer: Any = None, **_: Any) -> None:
        if model is not None:
            self._local.last = AwsCall(model.service_model.service_name, model.name,
                                       str(getattr(request_signer, "region_name", "") or ""))

    @property
    def last(self) -> AwsCall | None:
        return getattr(self._local, "last", None)

    @contextmanager
    def watching(self) -> Iterator[None]:
        factory = get_factory()
        factory.register_hook("before-call", self)
        try:
            yield
        finally:
            factory.unregister_hook("before-call", self)


def _aws_cause(exc: BaseException) -> BaseException | None:
    """The AWS error behind ``exc``: jams-dr wraps them (``raise OurError(...) from exc``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ClientError, BotoCoreError)) or is_unreachable(current):
            return current
        current = current.__cause__ or current.__context__
    return None


def _where(call: AwsCall | None, region: str | None = None) -> str:
    if call is None:
        return f"in {region}" if region else ""
    return f"{call.service} {call.operation} in {call.region or region or 'an unknown region'}"


def _endpoint_fix(region: str | None) -> str:
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        return (f"endpoint: AWS_ENDPOINT_URL={endpoint} is set and does not answer; unset it to reach AWS itself, "
                "or start what it points at")
    where = f"{region} (the stage's PRIMARY_REGION/RECOVERY_REGION)" if region else "the stage's regions"
    return (f"region and network: check that {where} is the right region and that this machine reaches AWS "
            "(proxy: HTTPS_PROXY, VPN, firewall)")


def explain(exc: BaseException, command: str, call: AwsCall | None = None) -> tuple[str, int] | None:
    """The one line and the exit status for an error that ended ``jams-dr <command>``; None for an error
    that is a defect of jams-dr (its traceback is what a bug report needs)."""
    if isinstance(exc, KeyboardInterrupt):
        hint = _INTERRUPT_HINTS.get(command, "")
        return f"jams-dr {command} stopped by Ctrl-C before it finished{hint}", EXIT_INTERRUPTED
    if isinstance(exc, Interrupted):
        return str(exc), EXIT_INTERRUPTED
    if isinstance(exc, (StageError, SettingsError)):
        return str(exc), EXIT_BAD_INPUT
    if isinstance(exc, NoRegionError):
        return ("no AWS region to call: give the stage's PRIMARY_REGION/RECOVERY_REGION in .chalice/config.json, "
                "or set AWS_REGION"), EXIT_BAD_INPUT
    cause = _aws_cause(exc)
    if cause is None and isinstance(exc, JamsDrError) and (exc.code in CREDENTIAL_CODES or exc.code == UNREACHABLE):
        cause = exc
    return None if cause is None else (_aws_message(cause, command, call), EXIT_AWS)


def _aws_message(cause: BaseException, command: str, call: AwsCall | None) -> str:
    code = error_code(cause)
    region = call.region if call else None
    where = _where(call)
    detail = " ".join(str(cause).split())
    if isinstance(cause, _CREDENTIAL_ERRORS) or code in CREDENTIAL_CODES:
        return (f"AWS refused jams-dr {command}'s credentials{' calling ' + where if where else ''} ({code}: "
                f"{detail}). Fix: {CREDENTIALS_FIX}.")
    if is_unreachable(cause) or code == UNREACHABLE:
        url = urlsplit(getattr(cause, "kwargs", {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or "")
        endpoint = f"{url.scheme}://{url.netloc}" if url.netloc else ""
        return (f"AWS unreachable: jams-dr {command} could not reach {where or 'AWS'}"
                f"{' at ' + endpoint if endpoint else ''} ({type(cause).__name__}). Fix: {_endpoint_fix(region)}.")
    if isinstance(cause, ClientError):
        return (f"AWS refused {where or cause.operation_name} ({code}: {detail}). Fix: check that the stage's "
                "settings name resources that exist in that region (jams-dr bootstrap, chalice deploy) and that "
                "the identity may use them.")
    return (f"AWS call failed{' (' + where + ')' if where else ''}: {type(cause).__name__}: {detail}. "
            f"Fix: {_endpoint_fix(region)}.")


_INTERRUPT_HINTS = {
    "recover": ": a recovery it started goes on in the deployed chain; check `jams-dr status --stage STAGE`",
    "failback": ": a failback it started goes on in the deployed chain; check `jams-dr status --stage STAGE`",
    "bootstrap": ": a stack it was deploying goes on in CloudFormation; run bootstrap again (it is idempotent)",
    "heartbeat": ": this host publishes no more beats until it runs again",
    "status": " (it changes nothing)",
    "drill": ": its report is in its folder under --report-dir if it got that far",
    "report": "",
}


class JamsDrGroup(click.Group):
    """Every command's AWS, network and interrupt errors end as one line and a documented exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        tracker = _CallTracker()
        try:
            with tracker.watching():
                return super().invoke(ctx)
        except click.Abort as abort:
            # click turns Ctrl-C and a closed stdin at a confirmation prompt into Abort ("Aborted!", exit 1,
            # as for an operator who answered no); the first is an interrupt, the second bad input.
            if isinstance(abort.__context__, (EOFError, KeyboardInterrupt)):
                click.echo()  # the prompt left its line open
            if isinstance(abort.__context__, EOFError):
                fail_input("no answer to the confirmation: stdin is closed or not a terminal; check the command "
                           "and pass --yes")
            if not isinstance(abort.__context__, KeyboardInterrupt):
                raise
            print_error(f"jams-dr {ctx.invoked_subcommand} stopped by Ctrl-C at its confirmation: nothing was done",
                        "interrupted:")
            raise SystemExit(EXIT_INTERRUPTED) from None
        except (click.exceptions.Exit, click.ClickException):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            # Set by click's Group.invoke before it ran the subcommand.
            explained = explain(exc, ctx.invoked_subcommand or "", tracker.last)
            if explained is None:
                raise
            message, code = explained
            print_error(message, "interrupted:" if code == EXIT_INTERRUPTED else "error:")
            raise SystemExit(code) from None
