"""One recovery against the embedded two-region AWS: AWS calls, and Lambda invocations for a slow restore.

    .venv/bin/python -m benchmarks.recovery [--restore-minutes 45] [--memory-mb N] [--timeout-s N]

1. Calls per recovery: the recovery chain run to its end by the in-process runner (the stack is
   complete at once, as moto makes it), every request counted with a ``before-call`` hook on the
   ClientFactory, by service, operation and region (the heartbeats the test harness publishes for the
   recovered schedulers are not counted). The start (ledger item, lease checks) is counted apart.
2. Invocations per recovery: the same chain driven the way Lambda drives it, one ``lambda_slice``
   (the advance_execution handler's logic) per invocation, each self-invocation being one more
   invocation, on a FakeClock, with the application stack held in CREATE_IN_PROGRESS for
   ``--restore-minutes`` of simulated time (an ``after-call.cloudformation.DescribeStacks`` hook
   rewrites its status until the clock passes). Lambda timeout and memory come from
   .chalice/config.json (advance_execution of the stage, else the app's defaults). An invocation's
   billed duration is its FakeClock time (the waits inside it) plus the real time its API calls took
   against the embedded AWS (a stand-in for AWS's latency), rounded up to the millisecond.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.snapshot_calls import CallCounter
from chalicelib.aws import ClientFactory
from chalicelib.clock import FakeClock
from chalicelib.detection.heartbeats import publish_heartbeat
from chalicelib.detection.incident import Incident
from chalicelib.notify import Notifier
from chalicelib.observability import metrics
from chalicelib.settings import Settings
from chalicelib.snapshots.tick import run_tick
from chalicelib.workflow.engine import Progress
from chalicelib.workflow.ledger import Ledger
from chalicelib.workflow.runners import InProcessRunner, lambda_slice
from chalicelib.workflow.starter import no_launch, start_incident_recovery
from jamsdr.embedded import EmbeddedAws, World, build_world, embedded_aws

ROOT = Path(__file__).resolve().parent.parent
PRICE_PER_GB_SECOND = 0.0000166667  # x86_64, first tier (AWS Lambda pricing page); informational
MARGIN_SECONDS = 60.0  # advance_execution's default ADVANCE_MARGIN_SECONDS


def lambda_limits(stage: str) -> tuple[int, int]:
    """(memory MB, timeout s) of advance_execution in ``stage``, as .chalice/config.json sets them."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    memory, timeout = int(config.get("lambda_memory_size", 128)), int(config.get("lambda_timeout", 60))
    stage_config = config.get("stages", {}).get(stage, {})
    for scope in (stage_config, stage_config.get("lambda_functions", {}).get("advance_execution", {})):
        memory = int(scope.get("lambda_memory_size", memory))
        timeout = int(scope.get("lambda_timeout", timeout))
    return memory, timeout


def moto_now() -> datetime:
    """moto stamps snapshots with the real time: a fake clock starts there, so RPOs stay meaningful."""
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)


def pinned_world(aws: EmbeddedAws, clock: FakeClock) -> World:
    """A fresh world with one recovery point pinned by the snapshot pipeline's own tick."""
    assert aws.clients is not None
    aws.reset()
    world = build_world(aws.clients, Settings.defaults(failover_mode="auto"))
    for _ in range(6):
        result = run_tick(world.settings, aws.clients, clock)
        metrics.clear_metrics()  # not a Lambda: nothing flushes them
        if result.pinned:
            return world
        clock.advance(60)
    raise RuntimeError(f"no recovery point pinned: {result}")


@dataclass
class Invocation:
    fake_seconds: float
    real_seconds: float
    steps_run: int
    relaunched: bool
    outcome: str


@dataclass
class LambdaRun:
    label: str
    invocations: list[Invocation] = field(default_factory=list)
    calls: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    status: str = ""
    restore_seconds: float = 0.0
    recovered_after: float = 0.0

    def billed_gb_seconds(self, memory_mb: int) -> float:
        # Lambda bills each invocation's duration rounded up to the millisecond.
        seconds = sum(math.ceil((i.fake_seconds + i.real_seconds) * 1000) / 1000 for i in self.invocations)
        return seconds * memory_mb / 1024


class SlowStack:
    """Holds the recovery's application stack in CREATE_IN_PROGRESS until the clock passes a moment."""

    def __init__(self, clock: FakeClock, settings: Settings, restore: timedelta, beat: Callable[[], None]) -> None:
        self.clock, self.settings, self.restore, self.beat = clock, settings, restore, beat
        self.requested_at: datetime | None = None
        self.beats_sent = False

    def on_create(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if context.get("client_region") == self.settings.recovery_region and \
                params.get("StackName") == self.settings.app_stack_name:
            self.requested_at = self.clock.now()

    def on_describe(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if context.get("client_region") != self.settings.recovery_region or self.requested_at is None:
            return
        done = self.clock.now() >= self.requested_at + self.restore
        for stack in parsed.get("Stacks", []):
            if stack.get("StackName") != self.settings.app_stack_name:
                continue
            if not done:
                stack["StackStatus"] = "CREATE_IN_PROGRESS"
                stack.pop("Outputs", None)
            elif not self.beats_sent:
                self.beats_sent = True  # JAMS starts on the restored hosts and beats
                self.beat()


class Bench:
    def __init__(self, aws: EmbeddedAws) -> None:
        assert aws.clients is not None
        self.aws = aws
        self.clients: ClientFactory = aws.clients
        self.counter = CallCounter()
        self.clients.register_hook("before-call", self.counter)
        self._counting_paused = False

    def world(self) -> tuple[World, FakeClock]:
        """A fresh world with one recovery point pinned (the snapshot pipeline's own tick)."""
        clock = FakeClock(moto_now())
        return pinned_world(self.aws, clock), clock

    def beats(self, settings: Settings, clock: FakeClock) -> Callable[[], None]:
        def beat() -> None:
            enabled, self.counter.enabled = self.counter.enabled, False  # the harness's, not the chain's
            try:
                for role in ("primary", "failover"):
                    publish_heartbeat(self.clients, settings.recovery_region, settings.environment, role, clock)
            finally:
                self.counter.enabled = enabled
        return beat

    def start(self, settings: Settings, clock: FakeClock, incident_id: str) -> str:
        now = clock.now()
        incident = Incident(incident_id=incident_id, decision="region-recovery", reason="benchmark",
                            failure_at=now - timedelta(minutes=4), detected_at=now - timedelta(minutes=1),
                            decided_at=now)
        self.aws.take_region_down(settings.primary_region)
        return start_incident_recovery(settings, self.clients, clock, incident, await_approval=False,
                                       launcher=no_launch).execution_id

    def calls_per_recovery(self) -> tuple[Counter[tuple[str, str, str]], Counter[tuple[str, str, str]], str]:
        world, clock = self.world()
        s = world.settings
        with self.counter.measure() as start_calls:
            execution_id = self.start(s, clock, "calls")
        start_counted = Counter(start_calls)
        beat = self.beats(s, clock)

        def on_progress(progress: Progress) -> None:
            if progress.kind == "state-started" and progress.state == "verify":
                beat()

        runner = InProcessRunner(s, self.clients, clock, on_progress=on_progress)
        try:
            with self.counter.measure() as chain_calls:
                execution = runner.run(execution_id)
        finally:
            self.aws.bring_region_up(s.primary_region)
        return start_counted, Counter(chain_calls), execution.status

    def lambda_chain(self, label: str, restore: timedelta, timeout_s: float) -> LambdaRun:
        world, clock = self.world()
        s = world.settings
        slow = SlowStack(clock, s, restore, self.beats(s, clock))
        self.clients.register_hook("before-parameter-build.cloudformation.CreateStack", slow.on_create)
        self.clients.register_hook("after-call.cloudformation.DescribeStacks", slow.on_describe)
        launches: list[str] = []

        def launcher(execution_id: str) -> bool:  # the asynchronous self-invocation, recorded
            launches.append(execution_id)
            return True

        run = LambdaRun(label, restore_seconds=restore.total_seconds())
        try:
            execution_id = self.start(s, clock, label.replace(" ", "-"))
            started = clock.now()
            notifier = Notifier(s, self.clients, clock)
            pending = [execution_id]  # the starter's asynchronous invoke: the first invocation
            with self.counter.measure() as calls:
                while pending:
                    pending.pop()
                    before_fake, before_real = clock.now(), time.perf_counter()
                    sliced = lambda_slice(
                        execution_id, settings=s, clients=self.clients, clock=clock, notifier=notifier,
                        owner=f"lambda:bench-{len(run.invocations)}",
                        remaining_ms=int(timeout_s * 1000), margin_seconds=MARGIN_SECONDS, launcher=launcher,
                    )
                    run.invocations.append(Invocation(
                        (clock.now() - before_fake).total_seconds(), time.perf_counter() - before_real,
                        sliced.result.steps_run, sliced.relaunched, sliced.result.outcome))
                    if sliced.relaunched:
                        pending.append(launches[-1])
                    elif sliced.result.outcome == "resume":
                        raise RuntimeError(f"{label}: left to the sweeper ({sliced.result}); not modelled here")
            run.calls = Counter(calls)
            execution = Ledger(s, self.clients, clock).load(execution_id)
            run.status = execution.status
            ended = next((h for h in execution.history if h["name"] == "switch_traffic"), None)
            run.recovered_after = (datetime.fromisoformat(ended["ended_at"].replace("Z", "+00:00")) - started
                                   ).total_seconds() if ended else float("nan")
        finally:
            self.clients.unregister_hook("before-parameter-build.cloudformation.CreateStack", slow.on_create)
            self.clients.unregister_hook("after-call.cloudformation.DescribeStacks", slow.on_describe)
            self.aws.bring_region_up(s.primary_region)
        return run


def by_operation(calls: Counter[tuple[str, str, str]]) -> list[str]:
    return [f"    {n:>4}  {service}:{operation} ({region})"
            for (service, operation, region), n in sorted(calls.items(), key=lambda kv: (-kv[1], kv[0]))]


def print_lambda_run(run: LambdaRun, memory_mb: int, timeout_s: int) -> None:
    gbs = run.billed_gb_seconds(memory_mb)
    real = sum(i.real_seconds for i in run.invocations)
    print(f"  {run.label}: {len(run.invocations)} invocations, billed {gbs:.1f} GB-s "
          f"(~${gbs * PRICE_PER_GB_SECOND:.4f}), status {run.status}, switch_traffic done "
          f"{run.recovered_after / 60:.1f} min after the start (restore {run.restore_seconds / 60:.0f} min); "
          f"{sum(run.calls.values())} AWS calls; API time in the embedded AWS {real:.1f} s")
    durations = ", ".join(f"{i.fake_seconds:.0f}" for i in run.invocations[:12])
    more = " ..." if len(run.invocations) > 12 else ""
    print(f"    invocation durations (s, FakeClock; timeout {timeout_s} s, margin {MARGIN_SECONDS:.0f} s): "
          f"{durations}{more}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--restore-minutes", type=float, default=45.0)
    parser.add_argument("--stage", default="prod", help="stage of .chalice/config.json for memory and timeout")
    args = parser.parse_args(argv)
    logging.getLogger("jams-dr").setLevel(logging.WARNING)  # per-step logs would bury the figures
    memory_mb, timeout_s = lambda_limits(args.stage)
    restore = timedelta(minutes=args.restore_minutes)
    with embedded_aws(empty=True) as aws:
        bench = Bench(aws)
        start_calls, chain_calls, status = bench.calls_per_recovery()
        print(f"AWS calls per recovery (embedded AWS, stack complete at once; chain status {status})")
        print(f"  start (ledger item, lease and duplicate checks): {sum(start_calls.values())} calls")
        print(f"  chain, preflight to report: {sum(chain_calls.values())} calls")
        print("\n".join(by_operation(chain_calls)))
        print()
        print(f"Lambda invocations per recovery, restore held {args.restore_minutes:.0f} min "
              f"(advance_execution, stage {args.stage}: {memory_mb} MB, timeout {timeout_s} s)")
        run = bench.lambda_chain("recovery", restore, timeout_s)
        print_lambda_run(run, memory_mb, timeout_s)
        print("\n".join(by_operation(run.calls)[:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
