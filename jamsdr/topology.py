"""How a drill runs jams-dr's functions: deployed (the default) or in process (``--in-process``).

Deployed: ``chalice package``'s functions, roles, schedules and rules run in the embedded Lambda runtime
(jamsdr/lambda_runtime.py); the drill only starts the clock, injects the failure and watches what the
functions do, through their invocations and the ledger, as an operator would. In process: the drill calls
the same logic itself (the watcher's check, the starter, the in-process runner), each call acting as its
function for the IAM check.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from chalicelib.aws import ClientFactory
from chalicelib.clock import Clock, parse_iso
from chalicelib.settings import SETTINGS, Settings
from jamsdr.iam_enforcement import DRILL_STAGE, Enforcer, acting_as, run_as

# How long the drill waits for the watcher to reach the scenario's decision, in heartbeat intervals
# beyond the threshold (the contract is threshold intervals plus one watcher period; the rest is slack).
DETECTION_SLACK_INTERVALS = 6
# A failure that must NOT change the decision (a monitoring outage) is watched this many intervals.
HEALTHY_WATCH_INTERVALS = 10
# The drill beats every `heartbeat_seconds` where production beats at the contract's default interval (the
# setting's default, 60 s), and every other period (timeouts, schedules, retries) follows.
PRODUCTION_HEARTBEAT_SECONDS = float(SETTINGS["heartbeat_interval_seconds"].default)
# The restore a deployed drill's emulated RDS takes, in production minutes (compressed like the rest): long
# enough that the chain's Lambda hands over to a next invocation, as a real SQL Server restore makes it do
# (at one beat a second the chain's 900 s are 15 s, of which it keeps the 5 s margin free: it hands over
# 10 s in, and the restore, which begins after the preflight, always ends later than that).
DRILL_RESTORE_MINUTES = 10
# The chain's margin, in real seconds: production keeps 60 s of 900; the setting's floor is 5 s.
DRILL_ADVANCE_MARGIN_SECONDS = 5
# The longest a deployed chain may take beyond its restore before the drill gives up on it (real seconds).
CHAIN_PATIENCE_SECONDS = 240.0


@dataclass(frozen=True)
class WatchView:
    """What the drill needs of one watcher check (its result, or its handler's answer)."""

    decision: str
    execution_id: str | None
    detected_at: datetime | None
    decided_at: datetime | None
    held: bool

    @classmethod
    def of(cls, answer: Any) -> WatchView:
        if isinstance(answer, dict):
            def when(key: str) -> datetime | None:
                value = answer.get(key)
                return parse_iso(value) if value else None
            return cls(str(answer.get("decision")), answer.get("execution_id"), when("detected_at"),
                       when("decided_at"), bool(answer.get("held")))
        return cls(answer.decision, answer.execution_id, answer.detected_at, answer.decided_at, bool(answer.held))


class Topology(Protocol):
    mode: str

    def tick(self, clock: Clock) -> Any: ...
    def begin(self, interval: int) -> None: ...
    def until_healthy(self, interval: int) -> WatchView: ...
    def until_decision(self, interval: int, expected: str, emit: Callable[[str], None]) -> WatchView: ...
    def until_approval_request(self, interval: int, inbox: Any) -> list[dict[str, Any]]: ...
    def approve(self, execution_id: str) -> Any: ...
    def start_drill(self) -> str: ...
    def run_chain(self, execution_id: str) -> Any: ...
    def sweep_once(self) -> Any: ...
    def pause(self) -> None: ...
    def story(self) -> list[str]: ...
    def runner_for_failback(self) -> Any: ...
    def stop(self) -> None: ...
    def invocations(self) -> list[dict[str, Any]] | None: ...


class InProcessTopology:
    """The drill calls the functions' logic itself (the runner of the drills before issue 17)."""

    mode = "in-process"

    def __init__(self, settings: Settings, clients: ClientFactory, clock: Clock,
                 progress: Callable[[Any], None] | None) -> None:
        from chalicelib.workflow.runners import InProcessRunner  # noqa: PLC0415

        self.settings, self.clients, self.clock = settings, clients, clock
        self.runner = InProcessRunner(settings, clients, clock, on_progress=progress)

    def tick(self, clock: Clock) -> Any:
        from chalicelib.snapshots.tick import run_tick  # noqa: PLC0415

        with acting_as("snapshot_tick"):
            return run_tick(self.settings, self.clients, clock)

    def begin(self, interval: int) -> None:
        """Nothing runs on its own in process: the drill calls each check."""

    def _check(self, starter: Any) -> Any:
        from chalicelib.detection.watcher import run_watcher  # noqa: PLC0415

        with acting_as("heartbeat_watcher"):  # the watcher starts the recovery itself, as its handler does
            return run_watcher(self.settings, self.clients, self.clock, starter)

    def until_healthy(self, interval: int) -> WatchView:
        deadline = self.clock.now() + timedelta(seconds=interval * (self.settings.missed_beat_threshold + 10) + 10)
        self.clock.sleep(interval * 2)
        while True:
            result = self._check(_refusing_starter)
            if result.decision == "healthy":
                return WatchView.of(result)
            if self.clock.now() > deadline:
                raise RuntimeError(f"the fleet's heartbeats never made the watcher healthy (last: {result})")
            self.clock.sleep(interval)

    def _starter(self) -> Any:
        from chalicelib.workflow.starter import no_launch, recovery_starter  # noqa: PLC0415

        return recovery_starter(self.settings, self.clients, self.clock, launcher=no_launch)

    def until_decision(self, interval: int, expected: str, emit: Callable[[str], None]) -> WatchView:
        """Watcher checks until a decision; a failure expected to stay ``healthy`` is watched for
        HEALTHY_WATCH_INTERVALS checks (any other decision ends the watch at once)."""
        starter = self._starter()
        deadline = self.clock.now() + timedelta(
            seconds=interval * (self.settings.missed_beat_threshold + DETECTION_SLACK_INTERVALS))
        checks = 0
        while True:
            self.clock.sleep(interval)
            checks += 1
            result = WatchView.of(self._check(starter))
            if _watch_over(result, expected, checks, emit) or self.clock.now() > deadline:
                return result

    def until_approval_request(self, interval: int, inbox: Any) -> list[dict[str, Any]]:
        starter = self._starter()
        deadline = self.clock.now() + timedelta(
            seconds=interval * (self.settings.missed_beat_threshold + DETECTION_SLACK_INTERVALS))
        while not any(n["kind"] == "approval-request" for n in inbox.received()):
            if self.clock.now() > deadline:
                raise RuntimeError("the approval request never reached the notification topic; see drill.log")
            self.clock.sleep(interval)
            self._check(starter)  # each check re-sends what SNS refused
        return [dict(n) for n in inbox.received()]

    def approve(self, execution_id: str) -> Any:
        from chalicelib.workflow.starter import approve  # noqa: PLC0415

        return run_as("approve_recovery", lambda: approve(self.settings, self.clients, self.clock, execution_id))

    def start_drill(self) -> str:
        from chalicelib.workflow.starter import no_launch, start_drill  # noqa: PLC0415

        started = run_as("start_drill", lambda: start_drill(self.settings, self.clients, self.clock,
                                                            launcher=no_launch))
        return str(started.execution_id)

    def run_chain(self, execution_id: str) -> Any:
        return run_as("advance_execution", lambda: self.runner.run(execution_id))

    def sweep_once(self) -> Any:
        from chalicelib.workflow.runners import sweep  # noqa: PLC0415
        from chalicelib.workflow.starter import no_launch  # noqa: PLC0415

        with acting_as("execution_sweeper"):
            return sweep(self.settings, self.clients, self.clock, no_launch)

    def pause(self) -> None:
        """Nothing runs on its own in process."""

    def story(self) -> list[str]:
        return []

    def runner_for_failback(self) -> Any:
        return self.runner

    def stop(self) -> None:
        """Nothing to stop in process."""

    def invocations(self) -> list[dict[str, Any]] | None:
        return None


def _refusing_starter(incident: Any, *, await_approval: bool) -> str:
    raise RuntimeError(f"no recovery may start before the failure is injected ({incident}, {await_approval})")


def _watch_over(result: WatchView, expected: str, checks: int, emit: Callable[[str], None]) -> bool:
    if expected == "healthy":
        emit(f"check {checks}, {checks} interval(s) into the failure: {result.decision}"
             + (" (held)" if result.held else ""))
        return result.decision != "healthy" or checks >= HEALTHY_WATCH_INTERVALS
    return result.decision == expected or result.decision != "healthy"


def time_scale(heartbeat_seconds: int) -> float:
    return heartbeat_seconds / PRODUCTION_HEARTBEAT_SECONDS


class DeployedTopology:
    """The functions run in the embedded Lambda runtime, triggered by their schedules, rules and Invokes."""

    mode = "deployed"

    def __init__(self, settings: Settings, clients: ClientFactory, clock: Clock, enforcer: Enforcer,
                 progress: Callable[[Any], None] | None, heartbeat_seconds: int) -> None:
        from jamsdr import chalice_package, lambda_runtime, rds_fidelity  # noqa: PLC0415

        self.settings, self.clients, self.clock = settings, clients, clock
        self.progress = progress
        self.scale = time_scale(heartbeat_seconds)
        self._workdir = tempfile.TemporaryDirectory(prefix="jamsdr-package-")
        pkg = chalice_package.package(settings, enforcer.policies, Path(self._workdir.name),
                                     stage=DRILL_STAGE)
        self.runtime = lambda_runtime.EmbeddedLambda(clients, settings.recovery_region, clock=clock,
                                                     time_scale=self.scale, enforcer=enforcer)
        self._active = lambda_runtime.active(self.runtime)
        self._active.__enter__()
        try:
            self.specs = self.runtime.deploy(pkg)
            self.runtime.start()
        except BaseException:
            self.stop()
            raise
        rds_fidelity.set_restore_duration(timedelta(seconds=DRILL_RESTORE_MINUTES * 60 * self.scale))

    # -- recovery points and the watch ----------------------------------------------------------------

    def tick(self, clock: Clock) -> Any:
        invocation = self.runtime.fire_schedule("snapshot_tick", clock)
        if invocation.outcome != "ok":
            raise RuntimeError(f"snapshot_tick {invocation.outcome}: {invocation.error}")
        return invocation.result

    def begin(self, interval: int) -> None:
        """The schedules start once the fleet beats (as a stage is deployed after its JAMS): the watcher's first
        run comes two beats after the fleet's first, when the in-process drill makes its first check too."""
        self.clock.sleep(interval)
        self.runtime.start_schedules()

    def _checks_since(self, since: datetime, seen: set[str] | None = None) -> list[WatchView]:
        """The watcher's checks that started at ``since`` or later and have ended, in the order they started;
        with ``seen``, only those not seen yet (their request ids are added). Two checks may overlap (the
        watcher's reserved concurrency is 2): one that started first may end last, so they are told apart by
        their ids, not by their place in the list."""
        ended = [i for i in list(self.runtime.invocations)
                 if i.function == "heartbeat_watcher" and i.outcome == "ok" and i.started_at >= since
                 and isinstance(i.result, dict) and (seen is None or i.request_id not in seen)]
        if seen is not None:
            seen.update(i.request_id for i in ended)
        return [WatchView.of(i.result) for i in ended]

    def until_healthy(self, interval: int) -> WatchView:
        since = self.clock.now()
        deadline = since + timedelta(seconds=interval * (self.settings.missed_beat_threshold + 10) + 10)
        while True:
            checks = self._checks_since(since)
            healthy = [c for c in checks if c.decision == "healthy"]
            if healthy:
                return healthy[-1]
            if self.clock.now() > deadline:
                raise RuntimeError("the fleet's heartbeats never made the scheduled watcher healthy "
                                   f"(last: {checks[-1] if checks else 'no watcher run'})")
            self.clock.sleep(min(interval / 4, 0.25))

    def until_decision(self, interval: int, expected: str, emit: Callable[[str], None]) -> WatchView:
        since = self.clock.now()
        intervals = self.settings.missed_beat_threshold + DETECTION_SLACK_INTERVALS
        if expected == "healthy":  # watched for HEALTHY_WATCH_INTERVALS scheduled checks, whatever the threshold
            intervals = max(intervals, HEALTHY_WATCH_INTERVALS + DETECTION_SLACK_INTERVALS)
        deadline = since + timedelta(seconds=interval * intervals)
        seen: set[str] = set()
        last: WatchView | None = None
        checks = 0
        while True:
            for last in self._checks_since(since, seen):
                checks += 1
                if _watch_over(last, expected, checks, emit) and not self._starting_elsewhere(last):
                    return last
            if self.clock.now() > deadline:
                if last is not None:
                    return last
                raise RuntimeError("the scheduled watcher did not run after the failure; see drill.log")
            self.clock.sleep(min(interval / 4, 0.25))

    def _starting_elsewhere(self, check: WatchView) -> bool:
        """A region-recovery decision without its execution: two checks overlapped (the watcher's reserved
        concurrency is 2), and this one read the watch state before the other, which won the transition,
        recorded the recovery it started. The next check reads it; a notify-only stage starts none."""
        return (check.decision == "region-recovery" and check.execution_id is None
                and self.settings.failover_mode != "notify")

    def until_approval_request(self, interval: int, inbox: Any) -> list[dict[str, Any]]:
        deadline = self.clock.now() + timedelta(
            seconds=interval * (self.settings.missed_beat_threshold + DETECTION_SLACK_INTERVALS))
        while not any(n["kind"] == "approval-request" for n in inbox.received()):
            if self.clock.now() > deadline:
                raise RuntimeError("the approval request never reached the notification topic; see drill.log")
            self.clock.sleep(min(interval / 4, 0.25))
        return [dict(n) for n in inbox.received()]

    # -- the operator's Invokes -----------------------------------------------------------------------

    def _invoke(self, handler: str, payload: dict[str, Any]) -> dict[str, Any]:
        """As the operator's `aws lambda invoke` (or `chalice invoke`): synchronous, with the operator's
        credentials."""
        answer = self.clients.client("lambda", self.settings.recovery_region).invoke(
            FunctionName=self.runtime.function_name(handler), Payload=json.dumps(payload).encode())
        body = json.loads(answer["Payload"].read() or b"{}")
        if answer.get("FunctionError") or not body.get("ok", True):
            raise RuntimeError(f"{handler} answered {body}")
        return dict(body)

    def approve(self, execution_id: str) -> Any:
        return self._invoke("approve_recovery", {"execution_id": execution_id})

    def start_drill(self) -> str:
        return str(self._invoke("start_drill", {})["execution_id"])

    def run_chain(self, execution_id: str) -> Any:
        """Watch the ledger while the functions run the chain (the Lambda chain, the sweeper)."""
        from chalicelib.workflow.ledger import Ledger  # noqa: PLC0415

        ledger = Ledger(self.settings, self.clients, self.clock)
        patience = CHAIN_PATIENCE_SECONDS + DRILL_RESTORE_MINUTES * 60 * self.scale
        deadline = self.clock.now() + timedelta(seconds=patience)
        relay = _ProgressRelay(execution_id, self.progress, self.clock.now())
        while True:
            execution = ledger.load(execution_id)
            relay.update(execution)
            if execution.status != "running":
                return execution
            if self.clock.now() > deadline:
                raise RuntimeError(f"{execution_id} still {execution.status} at {execution.state} after "
                                   f"{patience:.0f} s of the deployed chain; see drill.log and the invocations")
            self.clock.sleep(0.2)

    def sweep_once(self) -> Any:
        return self.runtime.fire_schedule("execution_sweeper", self.clock).result

    def pause(self) -> None:
        self.runtime.quiesce()

    def story(self) -> list[str]:
        """What the functions did, in a few lines: the hops, the sweeper's resumes, duplicates, failures."""
        runs = list(self.runtime.invocations)
        counts = Counter((i.function, i.trigger) for i in runs)
        lines = [f"{len(runs)} invocation(s): " + ", ".join(f"{fn} x{n} ({trigger})"
                                                            for (fn, trigger), n in sorted(counts.items()))]
        hops = [i for i in runs if i.function == "advance_execution" and i.invoked_by == "advance_execution"
                and not i.duplicate]
        if hops:
            lines.append(f"advance_execution invoked itself {len(hops)} time(s) (the restore outlasted an invocation)")
        for run in runs:
            launched = run.result.get("launched") if isinstance(run.result, dict) else None
            if run.function == "execution_sweeper" and launched:
                lines.append(f"execution_sweeper resumed {', '.join(launched)} (nobody was running it: a launch "
                             "was lost or an invocation ended early)")
        # A duplicate and its original start together: which one claims the execution first is a race,
        # so both deliveries of the event are told, their answers in a fixed order.
        for duplicate in (i for i in runs if i.duplicate):
            answers = sorted(_answer(i) for i in runs
                             if (i.event_id, i.attempt) == (duplicate.event_id, duplicate.attempt))
            lines.append(f"{duplicate.function} received one event twice (Lambda delivers an event more than once "
                         f"now and then): the deliveries answered {' and '.join(answers)}")
        failed = [i for i in runs if i.outcome != "ok"]
        if failed:
            lines.append(f"{len(failed)} invocation(s) failed: " + "; ".join(
                f"{i.function} {i.outcome} ({i.error})" for i in failed[:5]))
        return lines

    def runner_for_failback(self) -> Any:
        """The failback chain runs in process for now (docs/failback-drill.md): its start and runner."""
        from chalicelib.workflow.runners import InProcessRunner  # noqa: PLC0415

        return InProcessRunner(self.settings, self.clients, self.clock, on_progress=self.progress)

    def stop(self) -> None:
        from jamsdr import rds_fidelity  # noqa: PLC0415

        rds_fidelity.set_restore_duration(None)
        try:
            self.runtime.stop()
        finally:
            self._active.__exit__(None, None, None)
            self._workdir.cleanup()

    def invocations(self) -> list[dict[str, Any]] | None:
        return self.runtime.report()


def _answer(invocation: Any) -> str:
    """What an invocation answered: the chain's outcome (busy, ended, resume) or the invocation's own."""
    result = invocation.result
    return str(result.get("outcome", invocation.outcome) if isinstance(result, dict) else invocation.outcome)


class _ProgressRelay:
    """The live view's step events, read off the ledger's history (the functions run elsewhere)."""

    def __init__(self, execution_id: str, forward: Callable[[Any], None] | None, since: datetime) -> None:
        self.execution_id = execution_id
        self.forward = forward
        self.done = 0
        self.open: str | None = None
        self.last = since

    def _at(self, moment: datetime) -> datetime:
        """Events are relayed after the fact (the ledger is polled, and the chain may have started before the
        drill looked): never earlier than the watch began or than one already relayed, so that the live view
        stays in time order."""
        self.last = max(moment, self.last)
        return self.last

    def update(self, execution: Any) -> None:
        if self.forward is None:
            return
        from chalicelib.workflow.engine import Progress  # noqa: PLC0415

        for entry in execution.history[self.done:]:
            name = str(entry.get("name"))
            if self.open != name:
                self.forward(Progress(self.execution_id, "state-started", name, int(entry.get("attempts") or 1), "",
                                      self._at(parse_iso(str(entry["started_at"])))))
            kind: Any = "state-failed" if entry.get("outcome") == "failed" else "state-ended"
            self.forward(Progress(self.execution_id, kind, name, int(entry.get("attempts") or 1),
                                  str(entry.get("note") or ""), self._at(parse_iso(str(entry["ended_at"])))))
            self.open = None
        self.done = len(execution.history)
        if execution.status == "running" and execution.state != self.open:
            self.open = execution.state
            self.forward(Progress(self.execution_id, "state-started", execution.state, execution.attempt, "",
                                  self._at(execution.state_started_at or execution.updated_at)))
