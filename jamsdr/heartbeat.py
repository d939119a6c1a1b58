"""`jams-dr heartbeat`: publish the heartbeat CONTRACT metric from a JAMS scheduler host, and fence the
host itself once its region has been recovered elsewhere.

Run it on each scheduler host, in the host's own region: as a service (`jams-dr heartbeat
--environment jams --scheduler primary --region us-east-1 --recovery-region us-west-2`, or `--stage S`),
or every interval from a Windows scheduled task with `--once`. Every beat goes into the host's region
and into the recovery region (heartbeat CONTRACT), so that the watcher still sees the beats, or their
silence, when the primary region's monitoring is down. The host's role needs `cloudwatch:PutMetricData`
(namespace JAMS) in both regions.

Self-fencing (split brain closed from the hosts' side). Before every beat the host reads the
environment's pending fence: the ledger item ``fence#<env>`` in the recovery region's ledger table, one
strongly consistent GetItem (the host's role may read that one key and nothing else). The recovery
chain's ``fence_primary`` writes that item when it could not stop the old primary's schedulers because
their region did not answer; it stays until the fence is enforced (the watcher, the sweeper or the
failback stopped these very instances through EC2 and moved them into the quarantine group, which has
no egress) or withdrawn (the rollback of a failed recovery). So the item naming this host's region
exists exactly while this host may still run beside a recovered JAMS: on that positive answer the host
runs ``--stop-command`` (the JAMS scheduler service) and stops beating. The other records were
weighed and refused: the lease ``lease#<env>`` is taken before the recovery checks whether the old
primary still beats (it then stands down, and a host that had stopped on the lease would have stopped
a healthy primary), and the failback holds it while the new primary starts in this same region.

A read that fails (an error, a throttle, the recovery region unreachable, the table missing, an item
that cannot be parsed) proves nothing: the host logs it and beats on, and never runs the stop command.
"""

from __future__ import annotations

import os
import shlex
import subprocess  # nosec B404
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import click

from chalicelib.aws import ClientFactory, error_code, get_factory
from chalicelib.clock import Clock, SystemClock, isoformat
from chalicelib.detection.heartbeats import SCHEDULERS, publish_heartbeat
from chalicelib.regions import is_region
from chalicelib.settings import SETTINGS, Settings, SettingsError
from chalicelib.workflow.ledger import Ledger
from jamsdr.cliutil import err_console, fail_input
from jamsdr.stage import StageError, stage_environment

# Exit codes of `jams-dr heartbeat` (0 beats sent, 1 a beat was not published, 2 bad input, as before).
# Both below mean: this region was recovered elsewhere and this host beats no more.
EXIT_FENCED = 4  # the stop command succeeded
EXIT_FENCED_STOP_FAILED = 5  # the stop command failed (--once / --max-beats ended before it succeeded)

# The JAMS scheduler's Windows service stopped through PowerShell. JAMS installs it as the "JAMS
# Scheduler" service (JAMS docs, "Working with JAMS Services",
# https://hstechdocs.helpsystems.com/manuals/jams/current/help/content/workingwithjamsservices.htm);
# its service name JAMSScheduler is the usual one: check yours with `Get-Service -DisplayName "JAMS*"`.
# Stop-Service is chosen over `sc.exe stop` because it waits until the service has stopped and succeeds
# on a service already stopped (Microsoft docs, "Stop-Service",
# https://learn.microsoft.com/powershell/module/microsoft.powershell.management/stop-service), while
# `sc stop` returns as soon as the request is sent and fails with 1062 on a stopped service.
DEFAULT_STOP_COMMAND = ('powershell.exe -NoProfile -NonInteractive -Command '
                        '"Stop-Service -Name JAMSScheduler -Force -ErrorAction Stop"')
DEFAULT_STOP_TIMEOUT = 120
_OUTPUT_TAIL = 400  # characters of the stop command's output kept in the log line

Verdict = Literal["fenced", "clear", "unknown"]


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


def host_clock() -> Clock:
    """The CLI's clock (the tests put a FakeClock here: the loop never really waits in a test)."""
    return SystemClock()


# ------------------------------------------------------------------------------------ self-fencing


@dataclass(frozen=True)
class FenceReading:
    """One read of the environment's pending fence: ``fenced`` only on a positive answer."""

    verdict: Verdict
    detail: str


def read_fence(clients: ClientFactory, settings: Settings, region: str, clock: Clock) -> FenceReading:
    """Has ``region`` been recovered elsewhere? One consistent GetItem of ``fence#<env>``."""
    try:
        fence = Ledger(settings, clients, clock).get_fence()
    except Exception as exc:  # any failure, a malformed item included, proves nothing
        return FenceReading("unknown", f"{error_code(exc)}: {exc}")
    if fence is None:
        return FenceReading("clear", "no pending fence")
    if fence.region != region:
        return FenceReading("clear", f"the pending fence is of {fence.region}, not of {region}")
    return FenceReading("fenced", (
        f"{region} was recovered in {settings.recovery_region} by {fence.execution_id} "
        f"(fence epoch {fence.epoch}, recorded {isoformat(fence.recorded_at)})"))


@dataclass(frozen=True)
class StopResult:
    ok: bool
    detail: str


StopRunner = Callable[[Sequence[str], float], StopResult]


def run_stop_command(argv: Sequence[str], timeout: float) -> StopResult:
    """Run the stop command without a shell, within ``timeout`` seconds; its outcome, never an exception."""
    command = list(argv)
    try:
        # The operator's own command line (--stop-command), split with shlex and run without a shell; output
        # in an unexpected code page is replaced, never an error that would end the loop.
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout,  # noqa: S603  # nosec B603
                              check=False)
    except subprocess.TimeoutExpired:
        return StopResult(False, f"did not finish within {timeout:g} s (killed)")
    except OSError as exc:  # not found, not executable
        return StopResult(False, f"could not be started: {exc.strerror or exc}")
    output = " ".join(f"{done.stdout or ''} {done.stderr or ''}".split())
    tail = f": {output[-_OUTPUT_TAIL:]}" if output else ""
    return StopResult(done.returncode == 0, f"exit {done.returncode}{tail}")


@dataclass(frozen=True)
class SelfFence:
    """How a host fences itself: where to read the fence, and what stops the local JAMS scheduler."""

    settings: Settings  # environment, recovery region and ledger table
    stop_command: tuple[str, ...]
    timeout: float = DEFAULT_STOP_TIMEOUT
    runner: StopRunner = run_stop_command


def parse_stop_command(command: str) -> tuple[str, ...]:
    """shlex-split ``command`` (POSIX rules: quote Windows paths with single quotes); ValueError if empty."""
    argv = tuple(shlex.split(command))
    if not argv:
        raise ValueError("the stop command is empty")
    return argv


# ------------------------------------------------------------------------------------ the beats


@dataclass
class BeatOutcome:
    """What a run of the publisher did, and the exit status it means."""

    beats: int = 0  # rounds that published
    failures: int = 0  # publishes that failed
    check_failures: int = 0  # fence reads that proved nothing
    fenced: str | None = None  # the positive answer, once seen
    stop_attempts: int = 0
    stopped: bool = False

    @property
    def exit_code(self) -> int:
        if self.fenced is not None:
            return EXIT_FENCED if self.stopped else EXIT_FENCED_STOP_FAILED
        # A fence read that failed proves nothing and is logged; like before self-fencing, only a beat
        # that was not published makes the run fail.
        return 1 if self.failures else 0


class HostBeater:
    """One scheduler host's publisher, one round at a time (the CLI loops it; a benchmark interleaves hosts)."""

    def __init__(
        self,
        clients: ClientFactory,
        region: str,
        environment: str,
        scheduler: str,
        interval: int,
        clock: Clock,
        *,
        recovery_region: str | None = None,
        echo: Callable[[str], None] = click.echo,
        self_fence: SelfFence | None = None,
    ) -> None:
        self.clients, self.region, self.environment, self.scheduler = clients, region, environment, scheduler
        self.interval, self.clock, self.echo, self.self_fence = interval, clock, echo, self_fence
        self.targets = list(dict.fromkeys(r for r in (region, recovery_region) if r))
        self.outcome = BeatOutcome()

    @property
    def done(self) -> bool:
        """The host fenced itself and its scheduler is stopped: nothing more to do."""
        return self.outcome.stopped

    def beat(self) -> None:
        """One round: read the fence (when self-fencing), then stop JAMS or publish the beat."""
        if self.done:
            return
        if self.self_fence is not None and self.outcome.fenced is None:
            self._check(self.self_fence)
        if self.self_fence is not None and self.outcome.fenced is not None:
            # Latched: once this region is known recovered elsewhere, this host never beats again, even
            # if the fence item later goes (enforced or withdrawn): only an operator restarts JAMS here.
            self._stop(self.self_fence)
            return
        self._publish()

    def _check(self, fence: SelfFence) -> None:
        reading = read_fence(self.clients, fence.settings, self.region, self.clock)
        where = f"{fence.settings.ledger_table_name} in {fence.settings.recovery_region}"
        if reading.verdict == "unknown":
            self.outcome.check_failures += 1
            self.echo(f"fence check {self.environment}/{self.scheduler} ({where}) FAILED, beating on: "
                      f"{reading.detail}")
        elif reading.verdict == "fenced":
            self.outcome.fenced = reading.detail
            self.echo(f"FENCED {self.environment}/{self.scheduler}: {reading.detail}; stopping the JAMS "
                      "scheduler, no more beats from this host")

    def _stop(self, fence: SelfFence) -> None:
        self.outcome.stop_attempts += 1
        command = shlex.join(fence.stop_command)
        result = fence.runner(fence.stop_command, fence.timeout)
        if result.ok:
            self.outcome.stopped = True
            self.echo(f"JAMS scheduler stopped ({command}: {result.detail}); this host no longer beats. Start "
                      "JAMS here again only after the failback (`jams-dr failback`) or the rollback of the "
                      "recovery")
        else:
            self.echo(f"stop command FAILED (attempt {self.outcome.stop_attempts}: {command}: {result.detail}); "
                      "still not beating, retried at the next beat")

    def _publish(self) -> None:
        for target in self.targets:
            try:
                at = publish_heartbeat(self.clients, target, self.environment, self.scheduler, self.clock,
                                       interval_seconds=self.interval)
                self.echo(f"heartbeat {self.environment}/{self.scheduler} -> {target} at {isoformat(at)}")
            except Exception as exc:
                self.outcome.failures += 1
                self.echo(f"heartbeat {self.environment}/{self.scheduler} -> {target} FAILED: {error_code(exc)}: {exc}")
        self.outcome.beats += 1


def run_host(
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
    self_fence: SelfFence | None = None,
) -> BeatOutcome:
    """Beat every ``interval`` until ``once``/``max_beats`` rounds are done or the host has fenced itself.

    A host publisher outlives transient errors (it logs each one and keeps the interval), because a
    publisher that died on one throttle would itself look like a dead scheduler; a failure in one region
    never skips the other. A failing stop command does the same: reported, retried at the next round.
    """
    host = HostBeater(clients, region, environment, scheduler, interval, clock, recovery_region=recovery_region,
                      echo=echo, self_fence=self_fence)
    rounds = 0
    while True:
        host.beat()
        rounds += 1
        if host.done or once or (max_beats is not None and rounds >= max_beats):
            return host.outcome
        clock.sleep(interval)


# ------------------------------------------------------------------------------------ the command


HELP = f"""Publish the JAMS/Heartbeat metric for one scheduler into its region and the recovery region.

Run it on each scheduler host (a service, or a scheduled task every interval), not as a JAMS job: JAMS
runs jobs only on the active scheduler, so the standby would never beat.

Before every beat the host reads its environment's pending fence (ledger item fence#<env> in the
recovery region). When that record says this host's region was recovered elsewhere, the host runs
--stop-command (the local JAMS scheduler service) and beats no more. A fence read that fails is
logged (the exit status ignores it) and never stops anything: the host beats on.

\b
Exit status:
  0  every beat published
  1  a beat was not published (logged)
  2  bad input
  {EXIT_FENCED}  this region was recovered elsewhere: JAMS scheduler stopped, no more beats
  {EXIT_FENCED_STOP_FAILED}  recovered elsewhere, but the stop command failed (the next run retries it)
  130  interrupted (Ctrl-C)
"""


@click.command(help=HELP)
@click.option("--environment", help="ENVIRONMENT_NAME of the stage (the metric's Environment dimension).")
@click.option("--scheduler", required=True, type=click.Choice(list(SCHEDULERS)),
              help="Role of this host in JAMS (the Scheduler dimension).")
@click.option("--region", help="Region of this host (default: the instance metadata's, else the stage's "
              "PRIMARY_REGION, else AWS_REGION).")
@click.option("--recovery-region",
              help="Recovery region, which receives a copy of every beat and holds the ledger the fence is "
              "read from (default: the stage's RECOVERY_REGION).")
@click.option("--interval", type=click.IntRange(1, 3600), default=60, show_default=True,
              help="Seconds between beats; must match the stage's HEARTBEAT_INTERVAL_SECONDS.")
@click.option("--once", is_flag=True, help="Publish one beat and exit (for a scheduled task on the host).")
@click.option("--max-beats", type=click.IntRange(1), help="Exit after this many beats (default: beat until stopped).")
@click.option("--stage", help="Read ENVIRONMENT_NAME, PRIMARY_REGION, RECOVERY_REGION and LEDGER_TABLE from "
              ".chalice/config.json.")
@click.option("--ledger-table", help="Ledger table in the recovery region (default: the stage's LEDGER_TABLE, "
              "else <environment>-dr-ledger).")
@click.option("--stop-command", default=DEFAULT_STOP_COMMAND, show_default=True,
              help="Command that stops the local JAMS scheduler once this region was recovered elsewhere; "
              "split like a POSIX shell would (quote Windows paths with single quotes), run without a shell.")
@click.option("--stop-timeout", type=click.IntRange(1, 3600), default=DEFAULT_STOP_TIMEOUT, show_default=True,
              help="Seconds the stop command may take; then it is killed, reported, and retried at the next beat.")
def heartbeat(
    environment: str | None, scheduler: str, region: str | None, recovery_region: str | None, interval: int,
    once: bool, max_beats: int | None, stage: str | None, ledger_table: str | None, stop_command: str,
    stop_timeout: int,
) -> None:
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
        ledger_table = ledger_table or stage_env.get("LEDGER_TABLE") or None
    region = region or host_region() or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not environment:
        fail_input("--environment is required (or --stage with ENVIRONMENT_NAME set), e.g. --environment jams")
    try:
        settings = Settings.defaults(environment=environment)
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
    if ledger_table:
        try:
            SETTINGS["ledger_table"].parse(ledger_table)
        except ValueError:
            fail_input(f"--ledger-table {ledger_table!r} is not a DynamoDB table name: give the dr-support stack's "
                       "LedgerTableName output, e.g. --ledger-table jams-dr-ledger")
    try:
        argv = parse_stop_command(stop_command)
    except ValueError as exc:
        fail_input(f"--stop-command {stop_command!r}: {exc}; give the command that stops the JAMS scheduler, "
                   f"e.g. --stop-command {shlex.quote(DEFAULT_STOP_COMMAND)}")
    # Only what the fence read needs (environment, recovery region, ledger table): the rest of the stage
    # is the app's business, and a host must not stop beating over a setting it does not use.
    fence = SelfFence(replace(settings, recovery_region=recovery_region, ledger_table=ledger_table or None),
                      argv, float(stop_timeout))
    outcome = run_host(get_factory(), region, environment, scheduler, interval, host_clock(), once=once,
                       recovery_region=recovery_region, max_beats=max_beats, self_fence=fence,
                       echo=lambda line: err_console.print(line, markup=False, highlight=False, soft_wrap=True))
    if outcome.exit_code:
        raise SystemExit(outcome.exit_code)
