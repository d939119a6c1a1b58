"""How long the old primary's schedulers run on after their region was recovered elsewhere (self-fencing).

    .venv/bin/python -m benchmarks.self_fence_window [--runs 3] [--outage-minutes 30] [--seed 11]

Each run builds the embedded two-region world (build_world, one recovery point pinned by the snapshot
pipeline's own tick) on a FakeClock, and simulates the old primary's two scheduler hosts with the code of
`jams-dr heartbeat` (``jamsdr.heartbeat.HostBeater``: fence read, stop command, beats), each beating every
HEARTBEAT_INTERVAL_SECONDS (60 s) at its own random phase; their stop command is an injected runner that
records the clock. The FakeClock runs the hosts' rounds whenever it passes their due time, including during
the recovery chain's own waits, so the hosts and the chain interleave as they would in time.

Then the primary region fails (``take_region_down``: every API call into it refused), and after
``MISSED_BEAT_THRESHOLD + 1`` intervals (detection, measured apart in section 3) the real recovery chain runs
in process (preflight, lease, fence_primary: the region does not answer, so the pending fence
``fence#<env>`` is recorded, create, verify, switch, report). Two cases:

- **isolated**: the hosts lose everything with their region (power, network): they run no round while it
  is down. The region returns ``--outage-minutes`` after the failure (``bring_region_up``, the hosts
  reachable again). Figure: from the return to the JAMS scheduler stopped on each host, and the beats the
  old schedulers published after the return. For comparison, the watcher's path: its next one-minute check
  after the return (random phase) enforces the pending fence through EC2 (StopInstances + quarantine);
  it is run after the hosts' figure is taken, so that one path never hides the other, and its figure is
  the time of that check (the instances' own shutdown comes on top).
- **partitioned**: the hosts keep running and still reach the recovery region while their region's APIs
  do not answer (the region is "down" only from outside). Their beats reach the recovery copy, so the
  watcher would call this a partition and never recover; the operator forces the recovery (`jams-dr
  recover --force`). Figure: from the fence recorded to each host stopped, i.e. before the region returns.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import count

from benchmarks.recovery import moto_now, pinned_world
from chalicelib.clock import FakeClock
from chalicelib.detection.heartbeats import publish_heartbeat
from chalicelib.detection.incident import Incident
from chalicelib.settings import Settings
from chalicelib.workflow.engine import Progress
from chalicelib.workflow.ledger import Ledger
from chalicelib.workflow.runners import InProcessRunner
from chalicelib.workflow.starter import no_launch, start_incident_recovery, start_recovery
from chalicelib.workflow.steps.fence import enforce_pending_fence
from jamsdr.embedded import EmbeddedAws, embedded_aws
from jamsdr.heartbeat import HostBeater, SelfFence, StopResult

CASES = ("isolated", "partitioned")
WATCHER_PERIOD = 60.0  # the heartbeat_watcher's schedule (one minute)


class SimClock(FakeClock):
    """A FakeClock that runs scheduled callbacks when time passes their due moment, in time order."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self._queue: list[tuple[datetime, int, Callable[[], None]]] = []
        self._order = count()
        self._running = False

    def at(self, when: datetime, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def advance(self, seconds: float) -> None:
        target = self.now() + timedelta(seconds=seconds)
        if self._running:  # a callback that sleeps: plain time, no nested callbacks
            super().advance(seconds)
            return
        while self._queue and self._queue[0][0] <= target:
            when, _, action = heapq.heappop(self._queue)
            super().advance(max(0.0, (when - self.now()).total_seconds()))
            self._running = True
            try:
                action()
            finally:
                self._running = False
        super().advance(max(0.0, (target - self.now()).total_seconds()))


@dataclass
class SimHost:
    """One old-primary scheduler host beating on its own phase; it stops when the stop command ran."""

    role: str
    beater: HostBeater
    interval: float
    stopped_at: datetime | None = None
    cut_off: bool = False  # isolated with its region: no round at all
    rounds_after: dict[str, int] = field(default_factory=dict)  # mark -> rounds published since then
    published: int = 0

    def round(self) -> None:
        if self.cut_off or self.beater.done:
            return
        before = self.beater.outcome.beats
        self.beater.beat()
        if self.beater.outcome.beats > before:
            self.published += 1
            for mark in self.rounds_after:
                self.rounds_after[mark] += 1


@dataclass
class Sample:
    case: str
    role: str
    window: float  # seconds from the reference moment (return / fence recorded) to the host's stop
    beats_after: int  # beats the host published after the reference moment
    watcher_window: float | None = None  # isolated: the watcher's next check after the return
    stopped_by_watcher: int = 0  # isolated: instances the watcher's enforcement stopped


def schedule(clock: SimClock, first: datetime, every: float, action: Callable[[], None], until: datetime) -> None:
    moment = first
    while moment <= until:
        clock.at(moment, action)
        moment += timedelta(seconds=every)


class Bench:
    def __init__(self, aws: EmbeddedAws, outage: timedelta, rng: random.Random) -> None:
        assert aws.clients is not None
        self.aws, self.clients, self.outage, self.rng = aws, aws.clients, outage, rng

    def world(self) -> tuple[Settings, SimClock, dict[str, str]]:
        clock = SimClock(moto_now())
        world = pinned_world(self.aws, clock)
        instances = {"primary": world.app["PrimarySchedulerInstanceId"],
                     "failover": world.app["FailoverSchedulerInstanceId"]}
        return world.settings, clock, instances

    def hosts(self, s: Settings, clock: SimClock, stops: dict[str, datetime], until: datetime) -> list[SimHost]:
        interval = float(s.heartbeat_interval_seconds)
        hosts = []
        for role in ("primary", "failover"):
            def runner(argv: Sequence[str], timeout: float, role: str = role) -> StopResult:  # noqa: ARG001
                stops.setdefault(role, clock.now())
                return StopResult(True, "exit 0 (simulated Stop-Service)")

            beater = HostBeater(self.clients, s.primary_region, s.environment, role, s.heartbeat_interval_seconds,
                                clock, recovery_region=s.recovery_region, echo=lambda _line: None,
                                self_fence=SelfFence(s, ("Stop-Service", "JAMSScheduler"), runner=runner))
            host = SimHost(role, beater, interval)
            phase = self.rng.uniform(0, interval)
            schedule(clock, clock.now() + timedelta(seconds=phase), interval, host.round, until)
            hosts.append(host)
        return hosts

    def run(self, case: str, run_id: int) -> list[Sample]:
        s, clock, instances = self.world()
        interval = float(s.heartbeat_interval_seconds)
        horizon = clock.now() + self.outage + timedelta(hours=2)
        stops: dict[str, datetime] = {}
        hosts = self.hosts(s, clock, stops, horizon)
        watcher_phase = self.rng.uniform(0, WATCHER_PERIOD)
        clock.advance(2 * interval)  # healthy beats
        failure_at = clock.now()
        self.aws.take_region_down(s.primary_region)
        for host in hosts:
            host.cut_off = case == "isolated"
        clock.advance((s.missed_beat_threshold + 1) * interval)
        execution_id = self._start(case, s, clock, failure_at, run_id)

        def on_progress(progress: Progress) -> None:  # the recovered schedulers start and beat
            if progress.kind == "state-started" and progress.state == "verify":
                for role in ("primary", "failover"):
                    publish_heartbeat(self.clients, s.recovery_region, s.environment, role, clock,
                                      interval_seconds=interval)

        execution = InProcessRunner(s, self.clients, clock, on_progress=on_progress).run(execution_id)
        if execution.status != "succeeded":
            raise RuntimeError(f"{case}: the recovery ended {execution.status}: {execution.error}")
        fence = Ledger(s, self.clients, clock).get_fence()
        if fence is None:
            raise RuntimeError(f"{case}: no pending fence recorded (the primary region answered?)")
        if case == "partitioned":
            return self._partitioned(s, clock, hosts, stops, fence.recorded_at)
        return self._isolated(s, clock, hosts, stops, instances, failure_at, watcher_phase)

    def _start(self, case: str, s: Settings, clock: SimClock, failure_at: datetime, run_id: int) -> str:
        if case == "partitioned":  # the watcher sees the hosts' beats in the recovery copy: an operator forces it
            return start_recovery(s, self.clients, clock, reason="benchmark: partitioned primary",
                                  incident_id=f"sf-{run_id}", force=True, launcher=no_launch).execution_id
        now = clock.now()
        incident = Incident(incident_id=f"sf-{run_id}", decision="region-recovery", reason="benchmark",
                            failure_at=failure_at, detected_at=now, decided_at=now)
        return start_incident_recovery(s, self.clients, clock, incident, await_approval=False,
                                       launcher=no_launch).execution_id

    def _partitioned(self, s: Settings, clock: SimClock, hosts: list[SimHost], stops: dict[str, datetime],
                     recorded_at: datetime) -> list[Sample]:
        clock.advance(3 * s.heartbeat_interval_seconds)
        self.aws.bring_region_up(s.primary_region)
        samples = []
        for host in hosts:
            if host.role not in stops:
                raise RuntimeError(f"partitioned: the {host.role} host did not fence itself within 3 intervals")
            window = (stops[host.role] - recorded_at).total_seconds()
            samples.append(Sample("partitioned", host.role, window, 0))
        return samples

    def _isolated(self, s: Settings, clock: SimClock, hosts: list[SimHost], stops: dict[str, datetime],
                  instances: dict[str, str], failure_at: datetime, watcher_phase: float) -> list[Sample]:
        returned_at = failure_at + self.outage
        if clock.now() > returned_at:
            raise RuntimeError(f"the recovery took longer than the outage ({clock.now() - failure_at}); "
                               "give a longer --outage-minutes")
        clock.advance((returned_at - clock.now()).total_seconds())
        self.aws.bring_region_up(s.primary_region)
        for host in hosts:
            host.cut_off = False
            host.rounds_after["return"] = 0
        clock.advance(3 * s.heartbeat_interval_seconds)
        # The watcher's path, measured apart: its first check at or after the return enforces the fence.
        since = (returned_at - failure_at).total_seconds() + watcher_phase
        watcher_window = (WATCHER_PERIOD - since % WATCHER_PERIOD) % WATCHER_PERIOD
        stopped = enforce_pending_fence(s, self.clients, clock)
        samples = []
        for host in hosts:
            if host.role not in stops:
                raise RuntimeError(f"isolated: the {host.role} host did not fence itself within 3 intervals")
            samples.append(Sample("isolated", host.role, (stops[host.role] - returned_at).total_seconds(),
                                  host.rounds_after["return"], watcher_window,
                                  len(set(stopped) & set(instances.values()))))
        return samples


def describe(values: list[float]) -> str:
    return (f"min {min(values):.1f} s, median {statistics.median(values):.1f} s, max {max(values):.1f} s")


def report(samples: list[Sample], interval: int, outage: timedelta) -> None:
    isolated = [x for x in samples if x.case == "isolated"]
    partitioned = [x for x in samples if x.case == "partitioned"]
    print(f"heartbeat interval {interval} s, watcher every {WATCHER_PERIOD:.0f} s, outage "
          f"{outage.total_seconds() / 60:.0f} min; {len(samples)} host samples")
    if isolated:
        windows = [x.window for x in isolated]
        print(f"isolated hosts, region's return -> JAMS scheduler stopped by the host itself: {describe(windows)} "
              f"(<= {max(windows) / interval:.2f} interval); beats published after the return: "
              f"{sum(x.beats_after for x in isolated)}")
        watcher = [x.watcher_window for x in isolated if x.watcher_window is not None]
        print(f"  for comparison, the watcher's next check after the return (EC2 StopInstances, shutdown on top): "
              f"{describe(watcher)}; instances it stopped: {max(x.stopped_by_watcher for x in isolated)} of 2")
        both = [min(x.window, x.watcher_window) for x in isolated if x.watcher_window is not None]
        print(f"  first of the two: {describe(both)}")
    if partitioned:
        windows = [x.window for x in partitioned]
        print(f"partitioned hosts (still reaching the recovery region), fence recorded -> JAMS scheduler "
              f"stopped: {describe(windows)} (<= {max(windows) / interval:.2f} interval), before the region "
              "returned; beats after the fence: 0")
    for x in samples:
        extra = "" if x.watcher_window is None else f", watcher {x.watcher_window:.1f} s"
        print(f"  {x.case:<11} {x.role:<8} {x.window:6.1f} s{extra}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="runs of each case (2 host samples per run)")
    parser.add_argument("--outage-minutes", type=float, default=30.0)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if args.runs < 1 or not cases or set(cases) - set(CASES):
        parser.error(f"--runs must be at least 1 and --cases a comma list of {', '.join(CASES)}")
    logging.getLogger("jams-dr").setLevel(logging.WARNING)  # per-step logs would bury the figures
    outage = timedelta(minutes=args.outage_minutes)
    samples: list[Sample] = []
    with embedded_aws(empty=True) as aws:
        bench = Bench(aws, outage, random.Random(args.seed))
        interval = Settings.defaults().heartbeat_interval_seconds
        for run_id in range(args.runs):
            for case in cases:
                samples.extend(bench.run(case, run_id))
    report(samples, interval, outage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
