"""The embedded end-to-end drill behind `make drill`.

Everything here drives the real code paths: the templates build both regions in the embedded AWS, and
`chalice package`'s functions are deployed into it (jamsdr/topology.py, jamsdr/lambda_runtime.py): the
snapshot pipeline's scheduled tick makes and pins the recovery points, the simulated fleet beats, the
scheduled watcher decides and starts the recovery, the chain's Lambda runs it hop by hop (the sweeper
resumes a lost hop), and the report comes from the ledger. ``in_process`` (``--in-process``) calls the same
logic from the drill instead. Only time is compressed: heartbeats every `heartbeat_seconds` (every other
period follows), and the snapshot pipeline sees a clock moved forward by one interval per cycle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from chalicelib.aws import ClientFactory
from chalicelib.clock import Clock, SystemClock, isoformat
from chalicelib.observability import SERVICE
from chalicelib.settings import Settings
from chalicelib.stacks import describe_stack, parameters_of
from jamsdr.cliutil import Interrupted, console
from jamsdr.deploy import TEMPLATES
from jamsdr.embedded import DatabaseSpec, EmbeddedAws, World, build_world
from jamsdr.failback_drill import FAILBACK_REPORT_STEM, FailbackDrill
from jamsdr.iam_enforcement import Enforcer, acting_as
from jamsdr.report_render import write_report_files
from jamsdr.scenario import Scenario
from jamsdr.stack_routes import StackRouteCleanup
from jamsdr.topology import (
    DRILL_ADVANCE_MARGIN_SECONDS,
    DeployedTopology,
    InProcessTopology,
    Topology,
    WatchView,
)

PIPELINE_TICKS_PER_CYCLE = 6


class OffsetClock:
    """Real time shifted: the snapshot pipeline lives its cycles one interval apart, the last one now."""

    def __init__(self, base: Clock) -> None:
        self._base = base
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return self._base.now() + self.offset

    def sleep(self, seconds: float) -> None:
        self._base.sleep(seconds)


@dataclass
class DrillEvent:
    phase: str
    detail: str
    at: datetime
    state: str = "done"  # "started" | "done" | "failed" | "info"


@dataclass
class DrillResult:
    scenario: Scenario
    report: dict[str, Any]
    report_dir: Path
    files: list[Path]
    events: list[DrillEvent] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    # The failback's own report (scenario ``failback: true``), written as failback-report.json.
    failback_report: dict[str, Any] | None = None
    # Calls a function's generated IAM policy does not allow (IAM's refusal messages): any fails the drill.
    iam_denied: list[str] = field(default_factory=list)

    @property
    def matches_expectation(self) -> bool:
        return bool(
            self.report["decision"] == self.scenario.expected_decision
            and self.report["outcome"] == self.scenario.expected_outcome
            and (not self.scenario.failback or self.failback_succeeded)
            and not self.iam_denied
        )

    @property
    def failback_succeeded(self) -> bool:
        """The failback succeeded and left the recovery region as before (docs/failback-drill.md)."""
        section = self.report.get("failback") or {}
        return bool(self.failback_report is not None and section.get("outcome") == "succeeded"
                    and section.get("recovery_region_as_before"))


Listener = Callable[[DrillEvent], None]


class _Phases:
    """Records phases with their durations and tells the listener (the CLI's live view)."""

    def __init__(self, clock: Clock, listener: Listener | None) -> None:
        self._clock = clock
        self._listener = listener
        self.events: list[DrillEvent] = []
        self.seconds: dict[str, float] = {}
        self.results: dict[str, Any] = {}
        self.interrupted: str | None = None  # the phase a Ctrl-C stopped (the first one)

    def emit(self, phase: str, detail: str, state: str = "info") -> None:
        event = DrillEvent(phase, detail, self._clock.now(), state)
        self.events.append(event)
        if self._listener is not None:
            self._listener(event)

    def run(self, phase: str, detail: str, action: Callable[[], Any]) -> Any:
        started = self._clock.now()
        try:
            # Within the try: a Ctrl-C that lands while the start is being shown belongs to this phase.
            self.emit(phase, detail, "started")
            value = action()
        except KeyboardInterrupt:
            self.interrupted = self.interrupted or phase
            self.emit(phase, "interrupted (Ctrl-C)", "failed")
            raise
        except Exception as exc:
            self.emit(phase, f"{type(exc).__name__}: {exc}", "failed")
            raise
        self.seconds[phase] = self.seconds.get(phase, 0.0) + (self._clock.now() - started).total_seconds()
        self.results[phase] = value
        self.emit(phase, detail, "done")
        return value


def drill_settings(scenario: Scenario) -> Settings:
    return Settings.defaults(
        primary_region=scenario.primary_region,
        recovery_region=scenario.recovery_region,
        heartbeat_interval_seconds=scenario.heartbeat_seconds,
        failover_mode=scenario.failover_mode,
        # The pipeline's clock moves one interval per cycle; the smallest interval keeps ids readable.
        snapshot_interval_minutes=5,
        # Kept by count only: two days of 5-minute snapshots would not fit in the quota (docs/retention.md).
        retain_days=0,
        # pitr restores the replicated automated backups, which the snapshot ticks start replicating.
        recovery_source=scenario.recovery_source,
        backup_replication=scenario.recovery_source == "pitr",
        # The chain's Lambda keeps this much of its (compressed) 900 s free; ignored in process.
        advance_margin_seconds=DRILL_ADVANCE_MARGIN_SECONDS,
    )


def run_embedded_drill(
    scenario: Scenario,
    report_root: Path,
    *,
    listener: Listener | None = None,
    clock: Clock | None = None,
    progress: Callable[[Any], None] | None = None,
    in_process: bool = False,
) -> DrillResult:
    """Build the world, make recovery points, inject the failure, detect, recover, report.

    ``in_process``: the drill calls the functions' logic itself instead of deploying them."""
    clock = clock or SystemClock()
    phases = _Phases(clock, listener)
    run_id = f"{clock.now():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    report_dir = report_root / run_id
    report_dir.mkdir(parents=True, exist_ok=True)
    aws = EmbeddedAws()
    extras: dict[str, Any] = {"in_process": in_process}
    steps = _StepLog(progress)
    try:
        with _logs_to(report_dir / "drill.log"):
            report = _drill(scenario, aws, clock, phases, steps, extras)
        files = _write_reports(report, extras, report_dir, phases)
    except KeyboardInterrupt:
        raise _interrupted(scenario, aws, clock, phases, steps, extras, report_dir) from None
    phases.emit("report", str(report_dir), "done")
    return DrillResult(scenario, report, report_dir, files, phases.events, phases.seconds,
                       extras.get("failback_report"), list(extras.get("iam_denied") or []))


def _write_reports(report: dict[str, Any], extras: dict[str, Any], report_dir: Path, phases: _Phases) -> list[Path]:
    files = write_report_files(report, report_dir)
    failback_report = extras.get("failback_report")
    if failback_report is not None:
        files += write_report_files(failback_report, report_dir, stem=FAILBACK_REPORT_STEM)
    # The drill's own phase durations next to the report (report.json's contract is left unchanged):
    # benchmarks/drill_time.py reads them.
    (report_dir / "timing.json").write_text(json.dumps({"phases": phases.seconds}, indent=2) + "\n", encoding="utf-8")
    return files


class DrillInterrupted(Interrupted):
    """Ctrl-C stopped the drill; the embedded AWS is stopped and the report written (partial or complete)."""

    def __init__(self, message: str, *, phase: str, report_dir: Path, complete: bool) -> None:
        super().__init__(message)
        self.phase, self.report_dir, self.complete = phase, report_dir, complete


class _StepLog:
    """The chain's steps as they end, passed on to the live view: what a partial report lists."""

    def __init__(self, forward: Callable[[Any], None] | None) -> None:
        self._forward = forward
        self.steps: list[dict[str, Any]] = []
        self.execution_id: str | None = None
        self._open: dict[tuple[str, str], dict[str, Any]] = {}

    def __call__(self, progress: Any) -> None:
        self.execution_id = self.execution_id or progress.execution_id
        key = (progress.execution_id, progress.state)
        if progress.kind == "state-started" and key not in self._open:
            step = {"name": progress.state, "started_at": isoformat(progress.at), "ended_at": None,
                    "outcome": "interrupted", "attempts": progress.attempt}
            if progress.execution_id != self.execution_id:
                step["execution_id"] = progress.execution_id  # a later execution (the failback)
            self._open[key] = step
            self.steps.append(step)
        elif progress.kind in ("state-ended", "state-failed") and key in self._open:
            step = self._open[key]
            step.update(ended_at=isoformat(progress.at), attempts=progress.attempt,
                        outcome="succeeded" if progress.kind == "state-ended" else "failed")
            if progress.kind == "state-ended":
                del self._open[key]  # a failed attempt stays open: the retry updates the same step
        if self._forward is not None:
            self._forward(progress)


def _interrupted(
    scenario: Scenario, aws: EmbeddedAws, clock: Clock, phases: _Phases, steps: _StepLog, extras: dict[str, Any],
    report_dir: Path,
) -> DrillInterrupted:
    """After Ctrl-C: the embedded AWS stopped whatever it was doing, then the report that was complete kept,
    or a partial one (outcome ``interrupted``, the phases and steps done so far) written."""
    at = clock.now()
    before = [name for name in phases.seconds if name != "teardown"]  # the teardown ran after the Ctrl-C
    phase = phases.interrupted or f"between phases, after {before[-1] if before else 'none'}"
    where = f"during {phase}" if phases.interrupted else phase
    if "teardown" not in phases.seconds:
        # Ctrl-C within the teardown itself (or before the drill's try): finish stopping the server, so
        # that no thread or port outlives the drill. A second stop of a stopped server returns at once.
        try:
            aws.stop()
        except Exception as exc:  # a server that never started has nothing to stop
            logging.getLogger(__name__).info("embedded AWS stop after Ctrl-C: %s", exc)
    report = extras.get("report")
    complete = report is not None
    if report is None:
        report = _partial_report(scenario, phases, steps, at, phase)
        extras.pop("failback_report", None)
    files = _write_reports(report, extras, report_dir, phases)
    phases.emit("interrupted", where, "failed")
    if complete:
        message = (f"drill interrupted (Ctrl-C) {where}, after it had completed: the complete report is "
                   f"kept ({files[0]}, outcome {report.get('outcome')}); the embedded AWS is stopped, and nothing "
                   "of it survives this process")
    else:
        message = (f"drill interrupted (Ctrl-C) {where}: partial report {files[0]} (outcome interrupted, "
                   f"{len(before)} phase(s) and {len(report['steps'])} chain step(s) done so far); the "
                   "embedded AWS is stopped, nothing is left behind")
    return DrillInterrupted(message, phase=phase, report_dir=report_dir, complete=complete)


def _partial_report(scenario: Scenario, phases: _Phases, steps: _StepLog, at: datetime, phase: str) -> dict[str, Any]:
    """report.json's contract fields for a drill Ctrl-C stopped: what was known, and ``interrupted``."""
    watch = phases.results.get("detection")
    failure = next((e.at for e in phases.events if e.phase == "inject failure" and e.state == "done"), None)
    return {
        "kind": "drill" if scenario.failure == "none" else "recovery",
        "execution_id": steps.execution_id or getattr(watch, "execution_id", None) or f"interrupted-{at:%H%M%S}",
        "outcome": "interrupted",
        "decision": getattr(watch, "decision", None) or "undecided",
        "primary_region": scenario.primary_region,
        "recovery_region": scenario.recovery_region,
        "failure_at": isoformat(failure),
        "detected_at": isoformat(getattr(watch, "detected_at", None)),
        "decided_at": isoformat(getattr(watch, "decided_at", None)),
        "recovered_at": None,
        "detection_seconds": None,
        "rto_seconds": None,
        "rpo_seconds": None,
        "snapshot": {"id": phases.results.get("recovery points") or None, "arn": None, "created_at": None},
        "stack": {"name": None, "region": scenario.recovery_region, "status": None},
        "steps": steps.steps,
        "interrupted": {"at": isoformat(at), "phase": phase,
                        "phases_done": [{"name": name, "seconds": round(seconds, 3)}
                                        for name, seconds in phases.seconds.items()]},
    }


@contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """The app's structured logs and metric records go to the run's drill.log, not between the lines of
    the live view nor into `--json`'s report. Powertools prints its EMF metric records to stdout (as
    Lambda wants them), so stdout itself is redirected, and the operator's console keeps the real one."""
    handlers = [h for h in logging.getLogger(SERVICE).handlers if isinstance(h, logging.StreamHandler)]
    real_stdout = sys.stdout
    with path.open("a", encoding="utf-8") as sink, contextlib.redirect_stdout(sink), _library_noise_to(sink):
        previous = [h.setStream(sink) for h in handlers]
        console.file = real_stdout
        try:
            yield
        finally:
            console.file = None  # type: ignore[assignment]  # back to following sys.stdout (rich's default)
            for handler, stream in zip(handlers, previous, strict=True):
                if stream is not None:
                    handler.setStream(stream)


# Loggers of the emulator and its linter: moto logs "No Moto CloudFormation support for <type>" for every
# resource type it skips; none of it is the operator's business during a drill.
_LIBRARY_LOGGERS = ("moto", "cfnlint", "werkzeug", "py.warnings")


class _LibraryRecordFormatter(logging.Formatter):
    """One JSON object per line, like the app's own records, so drill.log stays machine-readable (a line of
    it is the app's log, an EMF metric record, or this: a library's record, ``"source": "library"``)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"source": "library", "time": self.formatTime(record), "level": record.levelname,
                           "logger": record.name, "message": record.getMessage()})


@contextmanager
def _library_noise_to(sink: Any) -> Iterator[None]:
    """Python warnings (moto's UserWarnings about CloudFormation types it does not parse, libraries'
    DeprecationWarnings) and the emulator's log records go to drill.log, never to the console."""
    handler = logging.StreamHandler(sink)
    handler.setFormatter(_LibraryRecordFormatter())
    loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    propagates = [lg.propagate for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # each distinct warning once, DeprecationWarnings included
        logging.captureWarnings(True)
        for lg in loggers:
            lg.addHandler(handler)
            lg.propagate = False  # nor to the root logger's handlers (a console, pytest's capture)
        try:
            yield
        finally:
            logging.captureWarnings(False)
            for lg, propagate in zip(loggers, propagates, strict=True):
                lg.removeHandler(handler)
                lg.propagate = propagate


def _drill(
    scenario: Scenario, aws: EmbeddedAws, clock: Clock, phases: _Phases, progress: Callable[[Any], None] | None,
    extras: dict[str, Any],
) -> dict[str, Any]:
    phases.run("embedded AWS", "moto server on 127.0.0.1", aws.start)
    # moto's backends live in the process, not the server: a second drill in one process (tests, a
    # benchmark loop) would find the first one's snapshots and stacks without this.
    aws.reset()
    try:
        assert aws.clients is not None
        clients = aws.clients

        def build() -> tuple[World, threading.Thread | None]:
            # The chain's preflight validates the application template, which moto (not AWS) lints for
            # seconds: lint it while the regions are built, and finish before the recovery points and
            # anything that runs in real time, so that the drill's RTO and RPO are the chain's and the
            # pipeline's, not the emulator's (EmbeddedAws.prelint_template: nothing to do once this
            # template was linted clean on this machine).
            prelint = aws.prelint_template((TEMPLATES / "jams-app.yaml").read_bytes().decode("utf-8"))
            built = build_world(
                clients, drill_settings(scenario), vpc_cidr=scenario.vpc_cidr,
                database=DatabaseSpec(scenario.database.engine, scenario.database.encrypted,
                                      scenario.database.option_group),
                dns=scenario.dns,
            )
            return built, prelint

        world, prelint = phases.run(
            "build regions",
            f"network + application stacks in {scenario.primary_region}, support + standby in "
            f"{scenario.recovery_region}",
            build,
        )
        settings = world.settings
        # Every function runs as its own role from here: the world is built, the functions' calls are checked
        # against the policies jamsdr/iam.py generates for these settings (docs/iam.md).
        enforcer = Enforcer.for_settings(settings)
        enforcer.install(clients)
        extras["iam_enforcer"] = enforcer
        if prelint is not None:
            phases.run("template lint", "moto's ValidateTemplate lint, once per template and machine", prelint.join)
        topology: Topology
        if extras["in_process"]:
            topology = InProcessTopology(settings, clients, clock, progress)
        else:
            topology = phases.run(
                "deploy functions", f"chalice package's functions, roles, schedules and rules in "
                f"{settings.recovery_region}'s embedded Lambda and EventBridge",
                lambda: DeployedTopology(settings, clients, clock, enforcer, progress, scenario.heartbeat_seconds))
        extras["topology"] = topology
        if scenario.existing_snapshots:
            phases.run("existing snapshots", f"{scenario.existing_snapshots} older recovery points",
                       lambda: _seed_existing_snapshots(clients, settings, clock, scenario.existing_snapshots))
        pinned = phases.run(
            "recovery points", f"{scenario.snapshot_cycles} snapshot cycles (take, copy, pin, prune)",
            lambda: _snapshot_cycles(clients, settings, clock, scenario.snapshot_cycles, phases, topology),
        )
        if settings.recovery_source == "pitr":
            phases.run("log shipment", "the replicated automated backups pass the pinned snapshot (docs/pitr.md)",
                       lambda: _await_log_shipment(clock))
        report = extras["report"] = _incident(scenario, clients, aws, settings, clock, phases, pinned, topology,
                                              extras)
        return report
    finally:
        _stop_topology(extras)
        _iam_refusals(extras, phases)
        phases.run("teardown", "stop the embedded AWS", aws.stop)
        _reset_log_shipping()


def _stop_topology(extras: dict[str, Any]) -> None:
    """The functions stop before the embedded AWS does; the report lists their invocations."""
    topology = extras.pop("topology", None)
    if topology is None:
        return
    topology.stop()
    invocations = topology.invocations()
    report = extras.get("report")
    if invocations is not None and report is not None:
        report["invocations"] = invocations


def _iam_refusals(extras: dict[str, Any], phases: _Phases) -> None:
    """Stop enforcing, and fail the drill naming every call IAM would have refused (even one the code
    caught and carried on from: the deployed function would lack that permission all the same)."""
    enforcer = extras.get("iam_enforcer")
    if not isinstance(enforcer, Enforcer):
        return
    enforcer.uninstall()
    refused = extras["iam_denied"] = sorted({d.message(enforcer.role(d.function)) + f" ({d.call})"
                                             for d in enforcer.denied})
    if refused:
        phases.emit("iam", f"{len(refused)} call(s) refused by the generated policies: " + "; ".join(refused),
                    "failed")


def _reset_log_shipping() -> None:
    from jamsdr import pitr_fidelity  # noqa: PLC0415

    pitr_fidelity.set_clock(None)
    pitr_fidelity.set_log_shipping(None)


# A pitr drill's log-shipping interval: RDS ships every five minutes (docs/pitr.md); the drill compresses it
# as it compresses the snapshot cycles, so that it waits seconds, not minutes, of real time.
DRILL_LOG_SHIPPING = timedelta(seconds=10)


def _await_log_shipment(clock: Clock) -> None:
    """Wait for the next log shipment after the recovery points. On AWS a cross-region copy takes longer than
    a shipment, so the replicated backups are past the pinned copy's data when a disaster comes; in the
    embedded AWS the copy is instant and the snapshot would be the newer point (the preflight's rule)."""
    from jamsdr import pitr_fidelity  # noqa: PLC0415

    pitr_fidelity.set_clock(clock.now)
    pitr_fidelity.set_log_shipping(DRILL_LOG_SHIPPING)
    wait = (pitr_fidelity.next_shipment() - clock.now()).total_seconds()
    clock.sleep(max(wait, 0.0) + 0.5)


def _seed_existing_snapshots(clients: ClientFactory, settings: Settings, clock: Clock, count: int) -> None:
    """Older manual snapshots of ours, as a stage that has run for a while has (pruning works on them)."""
    from chalicelib.snapshots.rules import source_tags  # noqa: PLC0415

    rds = clients.client("rds", settings.primary_region)
    assert settings.db_instance_id is not None
    for index in range(count):
        rds.create_db_snapshot(
            DBSnapshotIdentifier=f"{settings.environment}-dr-seed-{index:04d}",
            DBInstanceIdentifier=settings.db_instance_id,
            Tags=source_tags(settings.environment, clock.now() - timedelta(days=30, minutes=index)),
        )


def _snapshot_cycles(
    clients: ClientFactory, settings: Settings, clock: Clock, cycles: int, phases: _Phases, topology: Topology
) -> str:
    pipeline_clock = OffsetClock(clock)
    interval = timedelta(minutes=settings.snapshot_interval_minutes)
    pinned = ""
    for cycle in range(1, cycles + 1):
        # Cycle k of n runs (n - k) intervals in the past: the recovery points are spaced as in
        # production and the newest is taken just before the failure, so the RPO is measured, not set.
        pipeline_clock.offset = -interval * (cycles - cycle)
        before = pinned
        for _ in range(PIPELINE_TICKS_PER_CYCLE):
            # The tick's schedule fires on the pipeline's clock (deployed), or the drill runs the tick.
            result = topology.tick(pipeline_clock)
            pinned = _pinned_snapshot(clients, settings) or pinned
            if pinned and pinned != before:
                break
        else:
            raise RuntimeError(f"snapshot cycle {cycle}: nothing pinned after {PIPELINE_TICKS_PER_CYCLE} ticks "
                               f"(last tick: {result})")
        phases.emit("recovery points", f"cycle {cycle}: pinned {pinned}")
    return pinned


def _pinned_snapshot(clients: ClientFactory, settings: Settings) -> str:
    stack = describe_stack(clients.client("cloudformation", settings.recovery_region), settings.standby_stack_name)
    return parameters_of(stack or {}).get("DBSnapshotIdentifier", "")


def _incident(
    scenario: Scenario,
    clients: ClientFactory,
    aws: EmbeddedAws,
    settings: Settings,
    clock: Clock,
    phases: _Phases,
    pinned: str,
    topology: Topology,
    extras: dict[str, Any],
) -> dict[str, Any]:
    from jamsdr.fleet import Fleet  # noqa: PLC0415
    from jamsdr.inbox import Inbox  # noqa: PLC0415

    interval = scenario.heartbeat_seconds
    fleet = Fleet(clients, settings.environment, [settings.primary_region, settings.recovery_region], interval,
                  recovery_region=settings.recovery_region)
    # The on-call's view: every notification that reaches the topic, as a subscriber receives it.
    assert settings.topic_arn, "the embedded world always has a notification topic"
    inbox = Inbox.subscribe(clients, settings.recovery_region, settings.topic_arn)
    failback = FailbackDrill(settings, clients, clock) if scenario.failback else None
    # CloudFormation deletes a stack's routes with it; moto does not (jamsdr/stack_routes.py).
    routes = _RouteCleanupAsCloudFormation(clients).install()
    fleet.start()
    try:
        topology.begin(interval)
        if scenario.failure == "none":
            report = _plain_drill(phases, topology, lambda: _arm_faults(scenario, aws, settings, clock, phases))
        else:
            report = _failure_drill(scenario, clients, aws, fleet, settings, clock, phases, pinned, topology, inbox,
                                    failback)
    finally:
        fleet.stop()
        routes.uninstall()
        # The failure and the faults end with the incident: the report's own reads must see AWS answer.
        aws.clear_faults()
    if aws.injected_faults:
        tally = Counter(f"{f.service} {f.operation} in {f.region}: {f.error}" for f in aws.injected_faults)
        phases.emit("faults", "calls failed on purpose: " + "; ".join(f"{k} x{n}" for k, n in sorted(tally.items())))
    # The scheduled sweeper's next run re-sends what SNS refused during the chain (the outbox).
    phases.run("notifications", "sweeper run: pending notifications re-sent", topology.sweep_once)
    report["notifications"] = inbox.received()
    phases.emit("notifications", ", ".join(n["kind"] for n in report["notifications"]) or "none received")
    for line in topology.story():
        phases.emit("invocations", line)
    if failback is not None:
        # After the faults are cleared: the check reads the region as it is, not through the faults.
        extras["failback_report"] = phases.run(
            "recovery region check", f"{settings.recovery_region}'s jams-dr resources against the baseline",
            lambda: failback.finish(report, list(report["notifications"])))
        _emit_failback(phases, report.get("failback") or {})
    return report


class _RouteCleanupAsCloudFormation(StackRouteCleanup):
    """The routes are CloudFormation's to delete (with its own credentials), not the function's that called
    DeleteStack: the emulation's calls are not checked against the function's policy."""

    def _before(self, request_signer: Any, context: dict[str, Any], **kwargs: Any) -> None:
        with acting_as(None):
            super()._before(request_signer, context, **kwargs)

    def _after(self, http_response: Any, context: dict[str, Any], **kwargs: Any) -> None:
        with acting_as(None):
            super()._after(http_response, context, **kwargs)


def _emit_failback(phases: _Phases, section: dict[str, Any]) -> None:
    if section.get("report") is None:
        phases.emit("failback", f"not run: {section.get('reason')}", "failed")
        return
    phases.emit("failback", f"{section['outcome']}" + (f" at {section['failed_step']}" if section.get("failed_step")
                                                       else "")
                + f"; data-loss window {section.get('data_loss_window_seconds')} s, at risk "
                  f"{section.get('data_at_risk_seconds')} s")
    differences = section.get("differences") or []
    phases.emit("recovery region check", "as before" if section.get("recovery_region_as_before")
                else f"{len(differences)} difference(s): " + "; ".join(differences),
                "done" if section.get("recovery_region_as_before") else "failed")


def _failure_drill(
    scenario: Scenario, clients: ClientFactory, aws: EmbeddedAws, fleet: Any, settings: Settings, clock: Clock,
    phases: _Phases, pinned: str, topology: Topology, inbox: Any, failback: FailbackDrill | None = None,
) -> dict[str, Any]:
    interval = scenario.heartbeat_seconds
    phases.run("heartbeats", f"fleet beating every {interval} s into both regions; watcher sees both schedulers",
               lambda: topology.until_healthy(interval))
    if failback is not None:
        phases.run("recovery region baseline", f"{settings.recovery_region}'s jams-dr resources before the failure",
                   failback.capture_before)
    failure_at = clock.now()
    phases.run("inject failure", _inject(scenario.failure, aws, fleet, settings, clock), lambda: None)
    _arm_faults(scenario, aws, settings, clock, phases)
    watch: WatchView = phases.run(
        "detection", f"watcher every {interval} s until a decision",
        lambda: topology.until_decision(interval, scenario.expected_decision,
                                        lambda detail: phases.emit("detection", detail)),
    )
    execution_id = watch.execution_id
    if watch.decision == "region-recovery" and execution_id and settings.failover_mode == "approve":
        # The drill plays the on-call: it approves once the approval request has reached it.
        phases.run("approval request", "waiting for the request on the topic (the watcher re-sends it)",
                   lambda: topology.until_approval_request(interval, inbox))
        phases.run("approval", f"operator approves {execution_id}", lambda: topology.approve(execution_id))
    if watch.decision == "region-recovery" and execution_id and settings.failover_mode != "notify":
        execution = phases.run("recovery chain", execution_id, lambda: topology.run_chain(execution_id))
        if failback is not None:
            failback.recovery_id = execution.execution_id
            if execution.status == "succeeded":
                # The failback runs in process (docs/failback-drill.md); the schedules stop first so that no
                # scheduled function acts on the region being handed back.
                topology.pause()
                failback.run(lambda: aws.bring_region_up(settings.primary_region), topology.runner_for_failback(),
                             phases.run)
            else:
                failback.skipped = f"the recovery {execution.status}: nothing to fail back from"
        return _execution_report(execution)
    return _not_started_report(settings, clients, watch, failure_at, pinned)


def _arm_faults(scenario: Scenario, aws: EmbeddedAws, settings: Settings, clock: Clock, phases: _Phases) -> None:
    if not scenario.faults:
        return
    armed = aws.inject_faults(scenario.faults, primary_region=settings.primary_region,
                              recovery_region=settings.recovery_region, clock=clock)
    phases.emit("inject faults", "; ".join(
        f"{f.service} {f.operation} in {f.region}: {f.error} x{f.count}" for f in armed))


def _inject(failure: str, aws: EmbeddedAws, fleet: Any, settings: Settings, clock: Clock) -> str:
    if failure == "region":
        aws.take_region_down(settings.primary_region)
        return f"{settings.primary_region} unreachable, both schedulers silent"
    if failure == "monitoring":
        aws.fail_monitoring(settings.primary_region, clock=clock)
        return (f"{settings.primary_region}'s CloudWatch reads refuse connections; JAMS beats, every other API "
                "answers")
    if failure == "az":
        fleet.silence("primary")
        return "primary scheduler silent (its AZ lost), failover beating"
    fleet.silence("primary")
    fleet.silence("failover")
    return "both schedulers silent, region healthy"


def _plain_drill(phases: _Phases, topology: Topology, arm_faults: Callable[[], None]) -> dict[str, Any]:
    execution_id = phases.run("start drill", "isolated stack, Mode=drill", topology.start_drill)
    # A plain drill's moment of failure is its start, the operator's own call: the faults apply to what the
    # system does from there (the default one loses start_drill's launch of the chain).
    arm_faults()
    execution = phases.run("drill chain", str(execution_id), lambda: topology.run_chain(execution_id))
    return _execution_report(execution)


def _execution_report(execution: Any) -> dict[str, Any]:
    from chalicelib.report import build_report  # noqa: PLC0415

    return dict(execution.item.get("report") or build_report(execution.item))


def _not_started_report(
    settings: Settings, clients: ClientFactory, watch: Any, failure_at: datetime, pinned: str
) -> dict[str, Any]:
    """No chain ran (JAMS failed over itself, a restart is needed, or a person must decide)."""
    from chalicelib.snapshots.tick import recovery_point  # noqa: PLC0415

    detected_at = watch.detected_at or watch.decided_at
    decided_at = watch.decided_at
    point = recovery_point(settings, clients)
    pinned_copy = point.pinned
    created = pinned_copy.created_at if pinned_copy is not None else None
    stack = describe_stack(clients.client("cloudformation", settings.recovery_region), settings.standby_stack_name)
    return {
        "kind": "recovery",
        "execution_id": getattr(watch, "execution_id", None) or f"watch-{settings.environment}-{failure_at:%H%M%S}",
        "outcome": "not-started",
        "decision": watch.decision,
        "primary_region": settings.primary_region,
        "recovery_region": settings.recovery_region,
        "failure_at": isoformat(failure_at),
        "detected_at": isoformat(detected_at),
        "decided_at": isoformat(decided_at),
        "recovered_at": None,
        "detection_seconds": (detected_at - failure_at).total_seconds() if detected_at else None,
        "rto_seconds": None,
        "rpo_seconds": (failure_at - created).total_seconds() if created else None,
        "snapshot": {"id": pinned or None, "arn": pinned_copy.arn if pinned_copy is not None else None,
                     "created_at": isoformat(created)},
        "stack": {"name": settings.standby_stack_name, "region": settings.recovery_region,
                  "status": (stack or {}).get("StackStatus")},
        "steps": [],
    }
