"""A simulated JAMS fleet: every running scheduler instance of the environment beats, like `jams-dr heartbeat`.

Schedulers are found by their tags (``jams-dr:environment``, ``jams-dr:role`` = primary | failover) in
state ``running``, in every region that answers, at every beat: a scheduler that a recovery stopped
(fenced) stops beating at once, and one created by a recovery starts beating in its own region. A
scenario silences a role (a dead JAMS service) or takes a region down (``EmbeddedAws.take_region_down``:
discovery and publishes there fail, are counted and logged, and the fleet carries on).

With ``recovery_region`` set, every beat of a scheduler outside that region also goes into it, as
`jams-dr heartbeat --recovery-region` publishes (heartbeat CONTRACT): silence stays observable when the
primary region's monitoring is down. Schedulers in the recovery region (a recovered JAMS) beat there
only, as the real publisher does when both regions are the same.

``beat_once()`` is one deterministic round for tests; ``start()`` runs one thread per region, each on
its own deadline schedule, optionally with jitter of up to half an interval per beat (benchmarks).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from chalicelib.aws import ClientFactory, error_code
from chalicelib.clock import Clock, SystemClock
from chalicelib.detection.heartbeats import SCHEDULERS, publish_heartbeat
from chalicelib.observability import logger
from chalicelib.tags import TAG_ENVIRONMENT, TAG_MODE, TAG_ROLE

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import FilterTypeDef

MAX_JITTER = 0.5


@dataclass(frozen=True)
class SchedulerHost:
    region: str
    instance_id: str
    role: str


@dataclass
class FleetStats:
    rounds: int = 0
    beats: Counter[tuple[str, str]] = field(default_factory=Counter)  # (region, role) -> beats sent
    mirrored: Counter[tuple[str, str]] = field(default_factory=Counter)  # (target region, role) -> copies sent
    publish_failures: int = 0
    discovery_failures: int = 0
    last_error: str | None = None


class Fleet:
    def __init__(
        self,
        clients: ClientFactory,
        environment: str,
        regions: Sequence[str],
        interval_seconds: float,
        clock: Clock | None = None,
        *,
        jitter: float = 0.0,
        seed: int | None = None,
        recovery_region: str | None = None,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError(f"interval_seconds {interval_seconds} must be positive")
        if not 0 <= jitter <= MAX_JITTER:
            raise ValueError(f"jitter {jitter} must be between 0 and {MAX_JITTER} (a fraction of the interval)")
        if not regions:
            raise ValueError("regions is empty; give the regions where schedulers may run")
        self.clients = clients
        self.environment = environment
        self.regions = tuple(dict.fromkeys(regions))
        self.interval = float(interval_seconds)
        self.clock: Clock = clock or SystemClock()
        self.jitter = jitter
        self.recovery_region = recovery_region
        self.stats = FleetStats()
        self._rng = random.Random(seed)  # noqa: S311 - simulation jitter, not security  # nosec B311
        self._silenced: set[tuple[str, str | None]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------------------- scenario controls

    def silence(self, role: str, region: str | None = None) -> None:
        """Stop the beats of ``role`` (in ``region`` only, or everywhere): a dead JAMS service."""
        self._check_role(role)
        with self._lock:
            self._silenced.add((role, region))

    def unsilence(self, role: str, region: str | None = None) -> None:
        self._check_role(role)
        with self._lock:
            self._silenced.discard((role, region))
            if region is None:
                self._silenced = {s for s in self._silenced if s[0] != role}

    def is_silenced(self, host: SchedulerHost) -> bool:
        with self._lock:
            return (host.role, None) in self._silenced or (host.role, host.region) in self._silenced

    @staticmethod
    def _check_role(role: str) -> None:
        if role not in SCHEDULERS:
            raise ValueError(f"role {role!r} is not one of {', '.join(SCHEDULERS)}")

    # ---------------------------------------------------------------------------- beating

    def discover(self, region: str) -> list[SchedulerHost]:
        """Running schedulers of the environment in ``region`` (raises when the region does not answer)."""
        ec2 = self.clients.client("ec2", region)
        hosts: list[SchedulerHost] = []
        filters: list[FilterTypeDef] = [
            {"Name": f"tag:{TAG_ENVIRONMENT}", "Values": [self.environment]},
            {"Name": f"tag:{TAG_ROLE}", "Values": list(SCHEDULERS)},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
        for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                    role = tags.get(TAG_ROLE, "")
                    if tags.get(TAG_MODE) == "drill":
                        continue  # a drill's hosts have no egress: their beats never reach CloudWatch
                    if role in SCHEDULERS and instance.get("State", {}).get("Name") == "running":
                        hosts.append(SchedulerHost(region, instance["InstanceId"], role))
        return hosts

    def beat_region(self, region: str) -> list[SchedulerHost]:
        """One beat for every running, not silenced scheduler of ``region``; returns those that beat."""
        try:
            hosts = self.discover(region)
        except Exception as exc:
            self._failed("discovery", region, exc)
            return []
        beaten: list[SchedulerHost] = []
        for host in hosts:
            if self.is_silenced(host):
                continue
            try:
                publish_heartbeat(self.clients, region, self.environment, host.role, self.clock,
                                  interval_seconds=self.interval)
            except Exception as exc:
                self._failed("publish", region, exc)
                continue
            with self._lock:
                self.stats.beats[(region, host.role)] += 1
            beaten.append(host)
            for target in self.mirror_targets(region):
                self._mirror(target, host.role)
        return beaten

    def mirror_targets(self, region: str) -> tuple[str, ...]:
        target = self.recovery_region
        return (target,) if target and target != region else ()

    def _mirror(self, target: str, role: str) -> None:
        # A failed copy never costs the beat in the host's own region (sent first).
        try:
            publish_heartbeat(self.clients, target, self.environment, role, self.clock, interval_seconds=self.interval)
        except Exception as exc:
            self._failed("publish", target, exc)
            return
        with self._lock:
            self.stats.mirrored[(target, role)] += 1

    def beat_once(self) -> list[SchedulerHost]:
        """One round over every region, in order (deterministic: tests and the drill's own loop)."""
        beaten = [host for region in self.regions for host in self.beat_region(region)]
        with self._lock:
            self.stats.rounds += 1
        return beaten

    def _failed(self, what: str, region: str, exc: BaseException) -> None:
        with self._lock:
            if what == "discovery":
                self.stats.discovery_failures += 1
            else:
                self.stats.publish_failures += 1
            self.stats.last_error = f"{what} in {region}: {error_code(exc)}"
        logger.debug("fleet beat failed", extra={"what": what, "region": region, "error": error_code(exc)})

    def next_wait(self) -> float:
        with self._lock:
            spread = self._rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return self.interval * (1.0 + spread)

    # ---------------------------------------------------------------------------- threads

    def start(self) -> Fleet:
        """One thread per region, so a dead region's failing calls never delay another region's beats."""
        if self._threads:
            raise RuntimeError("the fleet is already running; stop() it first")
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._run, args=(region,), name=f"fleet-{region}", daemon=True)
            for region in self.regions
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _run(self, region: str) -> None:
        # Deadline scheduling: the time spent publishing does not stretch the interval.
        due = time.monotonic()
        while not self._stop.is_set():
            self.beat_region(region)
            due += self.next_wait()
            self._stop.wait(max(0.0, due - time.monotonic()))

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
