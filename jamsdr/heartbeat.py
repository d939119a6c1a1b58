"""`jams-dr heartbeat`: publish the heartbeat CONTRACT metric from a JAMS scheduler host.

Run it on each scheduler host, in the host's own region: as a service (`jams-dr heartbeat
--environment jams --scheduler primary --region us-east-1 --recovery-region us-west-2`, or `--stage S`),
or every interval from a Windows scheduled task with `--once`. Every beat goes into the host's region
and into the recovery region (heartbeat CONTRACT), so that the watcher still sees the beats, or their
silence, when the primary region's monitoring is down. The host's role needs `cloudwatch:PutMetricData`
(namespace JAMS) in both regions.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import click

from chalicelib.aws import ClientFactory, error_code, get_factory
from chalicelib.clock import Clock, SystemClock, isoformat
from chalicelib.detection.heartbeats import SCHEDULERS, publish_heartbeat
from chalicelib.regions import is_region
from chalicelib.settings import SETTINGS, Settings, SettingsError
from jamsdr.cliutil import err_console, fail_input
from jamsdr.stage import StageError, stage_environment


def host_region() -> str | None:
    """This host's region from the EC2 instance metadata service (IMDSv2), None off EC2 or when disabled.

    botocore's own fetcher: one attempt, one second, and nothing at all when AWS_EC2_METADATA_DISABLED=true
    (set for the tests: they never reach the metadata address).
    """
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true":
        return None
    from botocore.utils import InstanceMetadataRegionFetcher  # noqa: PLC0415 - only the CLI needs it

    try:
        region = InstanceMetadataRegionFetcher(timeout=1, num_attempts=1).retrieve_region()
    except Exception:  # off EC2, or the service did not answer: the other sources decide
        return None
    return str(region) if region else None


def run_heartbeat(
    clients: ClientFactory,
    region: str,
    environment: str,
    scheduler: str,
    interval: int,
    clock: Clock,
    *,
    once: bool,
    recovery_region: str | None = None,
    max_beats: int | None = None,
    echo: Callable[[str], None] = click.echo,
) -> int:
    """Publish beats into ``region`` and ``recovery_region``; returns the number of failed publishes.

    A host publisher outlives transient errors (it logs each one and keeps the interval), because a
    publisher that died on one throttle would itself look like a dead scheduler; a failure in one region
    never skips the other.
    """
    targets = list(dict.fromkeys(r for r in (region, recovery_region) if r))
    failures = beats = 0
    while True:
        for target in targets:
            try:
                at = publish_heartbeat(clients, target, environment, scheduler, clock, interval_seconds=interval)
                echo(f"heartbeat {environment}/{scheduler} -> {target} at {isoformat(at)}")
            except Exception as exc:
                failures += 1
                echo(f"heartbeat {environment}/{scheduler} -> {target} FAILED: {error_code(exc)}: {exc}")
        beats += 1
        if once or (max_beats is not None and beats >= max_beats):
            return failures
        clock.sleep(interval)


@click.command()
@click.option("--environment", help="ENVIRONMENT_NAME of the stage (the metric's Environment dimension).")
@click.option("--scheduler", required=True, type=click.Choice(list(SCHEDULERS)),
              help="Role of this host in JAMS (the Scheduler dimension).")
@click.option("--region", help="Region of this host (default: the instance metadata's, else the stage's "
              "PRIMARY_REGION, else AWS_REGION).")
@click.option("--recovery-region",
              help="Recovery region, which receives a copy of every beat (default: the stage's RECOVERY_REGION).")
@click.option("--interval", type=click.IntRange(1, 3600), default=60, show_default=True,
              help="Seconds between beats; must match the stage's HEARTBEAT_INTERVAL_SECONDS.")
@click.option("--once", is_flag=True, help="Publish one beat and exit (for a JAMS job or a scheduled task).")
@click.option("--stage", help="Read ENVIRONMENT_NAME and PRIMARY_REGION from .chalice/config.json.")
def heartbeat(
    environment: str | None, scheduler: str, region: str | None, recovery_region: str | None, interval: int,
    once: bool, stage: str | None,
) -> None:
    """Publish the JAMS/Heartbeat metric for one scheduler into its region and the recovery region."""
    if stage:
        try:
            stage_env = stage_environment(stage)
        except StageError as exc:
            fail_input(str(exc))
        # Unset in the stage means the app's default, so the publisher and the watcher agree.
        environment = environment or stage_env.get("ENVIRONMENT_NAME", SETTINGS["environment"].default)
        # The host's own region first: a scheduler restored in the recovery region must beat there, not into
        # the primary region's copy, where it would pass for the old primary.
        region = region or host_region() or stage_env.get("PRIMARY_REGION", SETTINGS["primary_region"].default)
        recovery_region = recovery_region or stage_env.get("RECOVERY_REGION", SETTINGS["recovery_region"].default)
    region = region or host_region() or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not environment:
        fail_input("--environment is required (or --stage with ENVIRONMENT_NAME set), e.g. --environment jams")
    try:
        Settings.defaults(environment=environment)
    except SettingsError:
        fail_input(f"--environment {environment!r} is not a valid environment name: use lowercase letters, "
                   "digits and dashes (2-40 characters), the stage's ENVIRONMENT_NAME")
    if not region or not is_region(region):
        fail_input(f"--region {region!r} is not an AWS region name; give this host's region, e.g. --region us-east-1")
    if not recovery_region:
        fail_input("--recovery-region is required (or --stage with RECOVERY_REGION set): every beat also goes into "
                   "the recovery region, so the watcher sees it when the primary's monitoring is down")
    if not is_region(recovery_region):
        fail_input(f"--recovery-region {recovery_region!r} is not an AWS region name, e.g. --recovery-region us-west-2")
    failures = run_heartbeat(get_factory(), region, environment, scheduler, interval, SystemClock(), once=once,
                             recovery_region=recovery_region,
                             echo=lambda line: err_console.print(line, highlight=False))
    if failures:
        raise SystemExit(1)
