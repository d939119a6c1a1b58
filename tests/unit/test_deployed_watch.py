"""The deployed drill's watch reads the scheduled watcher's checks as they end (jamsdr/topology.py).

Two checks may overlap: the watcher's reserved concurrency is 2 and a check can outlast its one-second
period on a loaded machine. The one that started first may end last, and only the check that won the
transition records the recovery it started; the other reports the decision without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.clock import FakeClock
from chalicelib.settings import Settings
from jamsdr.lambda_runtime import Invocation
from jamsdr.topology import DeployedTopology

START = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


@dataclass
class _Runtime:
    invocations: list[Invocation] = field(default_factory=list)


class _Clock(FakeClock):
    """Each wait of the watch lets one more check end, in the order given (as the scheduled watcher's
    checks would meanwhile); the runtime lists them in the order they started, as it does."""

    def __init__(self, ending: list[Invocation], runtime: _Runtime) -> None:
        super().__init__(START)
        self.ending = ending
        runtime.invocations = sorted(ending, key=lambda run: run.started_at)

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if self.ending:
            self.ending.pop(0).outcome = "ok"


def _check(second: float, decision: str, execution_id: str | None, request_id: str, *, held: bool = False
           ) -> Invocation:
    run = Invocation("heartbeat_watcher", "schedule", START + timedelta(seconds=second), request_id)
    run.result = {"decision": decision, "execution_id": execution_id, "held": held,
                  "detected_at": None, "decided_at": None}
    return run


def _topology(pending: list[Invocation], mode: str = "auto") -> DeployedTopology:
    runtime = _Runtime()
    topology = object.__new__(DeployedTopology)
    topology.settings = Settings.defaults(failover_mode=mode)
    topology.clock = _Clock(pending, runtime)
    topology.runtime = runtime  # type: ignore[assignment]
    return topology


def _watch(topology: DeployedTopology, expected: str = "region-recovery") -> Any:
    emitted: list[str] = []
    return topology.until_decision(1, expected, emitted.append)


def test_a_check_that_read_the_state_before_the_recovery_was_recorded_is_not_the_decision() -> None:
    # Check b won the transition and started rec-1; check a, overlapping, reports the decision without it.
    pending = [_check(1.0, "region-recovery", None, "a"), _check(1.2, "region-recovery", "rec-1", "b")]
    watch = _watch(_topology(pending))
    assert (watch.decision, watch.execution_id) == ("region-recovery", "rec-1")


def test_a_check_that_ends_after_a_later_one_is_still_read() -> None:
    # The check started first ends after the second: it sits before it in the runtime's list.
    late = _check(1.0, "healthy", None, "first-started", held=True)
    pending = [_check(2.0, "healthy", None, "second-started"), late, _check(3.0, "jams-failover", None, "third")]
    topology = _topology(pending)
    emitted: list[str] = []
    watch = topology.until_decision(1, "healthy", emitted.append)
    # All three checks are counted, the late one included, and the watch ends on the decision.
    assert emitted == [f"check {k}, {k} interval(s) into the failure: {d}"
                       for k, d in ((1, "healthy"), (2, "healthy (held)"), (3, "jams-failover"))]
    assert watch.decision == "jams-failover"


def test_a_notify_stage_starts_no_recovery_and_is_not_waited_for() -> None:
    pending = [_check(1.0, "region-recovery", None, "a")]
    watch = _watch(_topology(pending, mode="notify"))
    assert (watch.decision, watch.execution_id) == ("region-recovery", None)
