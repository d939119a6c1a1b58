"""`jams-dr heartbeat`: publish the heartbeat CONTRACT metric from a JAMS scheduler host.

Run it on each scheduler host, in the host's own region: as a service (`jams-dr heartbeat
--environment jams --scheduler primary --region us-east-1`), or every interval from a JAMS job or a
Windows scheduled task with `--once`. The host's role needs `cloudwatch:PutMetricData`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import click

from chalicelib.aws import ClientFactory, error_code, get_factory
from chalicelib.clock import Clock, SystemClock, isoformat
from chalicelib.heartbeats import SCHEDULERS, publish_heartbeat
from chalicelib.settings import SETTINGS, Settings, SettingsError
from jamsdr.cliutil import err_console, fail_input
from jamsdr.stage import StageError, stage_environment

_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")


def run_heartbeat(
    clients: ClientFactory,
    region: str,
    environment: str,
    scheduler: str,
    interval: int,
    clock: Clock,
    *,
    once: bool,
    max_beats: int | None = None,
    echo: Callable[[str], None] = click.echo,
) -> int:
    """Publish beats; returns the number of failed publishes (``once``: 0 or 1).

    A host publisher outlives transient errors (it logs each one and keeps the interval), because a
    publisher that died on one throttle would itself look like a dead scheduler.
    """
    failures = beats = 0
    while True:
        try:
            at = publish_heartbeat(clients, region, environment, scheduler, clock, interval_seconds=interval)
            echo(f"heartbeat {environment}/{scheduler} -> {region} at {isoformat(at)}")
        except Exception as exc:
            failures += 1
            echo(f"heartbeat {environment}/{scheduler} -> {region} FAILED: {error_code(exc)}: {exc}")
        beats += 1
        if once or (max_beats is not None and beats >= max_beats):
            return failures
        clock.sleep(interval)


@click.command()
@click.option("--environment", help="ENVIRONMENT_NAME of the stage (the metric's Environment dimension).")
@click.option("--scheduler", required=True, type=click.Choice(list(SCHEDULERS)),
              help="Role of this host in JAMS (the Scheduler dimension).")
@click.option("--region", help="Region of this host (default: the stage's PRIMARY_REGION, else AWS_REGION).")
@click.option("--interval", type=click.IntRange(1, 3600), default=60, show_default=True,
              help="Seconds between beats; must match the stage's HEARTBEAT_INTERVAL_SECONDS.")
@click.option("--once", is_flag=True, help="Publish one beat and exit (for a JAMS job or a scheduled task).")
@click.option("--stage", help="Read ENVIRONMENT_NAME and PRIMARY_REGION from .chalice/config.json.")
def heartbeat(
    environment: str | None, scheduler: str, region: str | None, interval: int, once: bool, stage: str | None
) -> None:
    """Publish the JAMS/Heartbeat metric for one scheduler, every INTERVAL seconds or --once."""
    if stage:
        try:
            stage_env = stage_environment(stage)
        except StageError as exc:
            fail_input(str(exc))
        # Unset in the stage means the app's default, so the publisher and the watcher agree.
        environment = environment or stage_env.get("ENVIRONMENT_NAME", SETTINGS["environment"].default)
        region = region or stage_env.get("PRIMARY_REGION", SETTINGS["primary_region"].default)
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not environment:
        fail_input("--environment is required (or --stage with ENVIRONMENT_NAME set), e.g. --environment jams")
    try:
        Settings.defaults(environment=environment)
    except SettingsError:
        fail_input(f"--environment {environment!r} is not a valid environment name: use lowercase letters, "
                   "digits and dashes (2-40 characters), the stage's ENVIRONMENT_NAME")
    if not region or not _REGION.match(region):
        fail_input(f"--region {region!r} is not an AWS region name; give this host's region, e.g. --region us-east-1")
    failures = run_heartbeat(get_factory(), region, environment, scheduler, interval, SystemClock(), once=once,
                             echo=lambda line: err_console.print(line, highlight=False))
    if failures:
        raise SystemExit(1)
