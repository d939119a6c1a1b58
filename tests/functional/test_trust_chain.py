"""Issue 12, defects 2 and 5: a recovery that is no longer needed stands down before it changes anything,
and duplicate manual starts make one execution whose notifications say only what it owns.

Against the embedded two-region AWS, through the starters and the in-process runner (the same entry points
the Lambda handlers call), on the chain tests' world (``env``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from chalicelib.clock import FakeClock
from chalicelib.detection.heartbeats import publish_heartbeat
from chalicelib.detection.incident import Incident
from chalicelib.report import build_report
from chalicelib.workflow.engine import failure_message
from chalicelib.workflow.starter import (
    StartError,
    no_launch,
    start_failback,
    start_incident_recovery,
    start_recovery,
)
from chalicelib.workflow.steps.fence import quarantine_group_name
from jamsdr.cli import main
from tests.functional.test_recovery_chain import Env
from tests.functional.test_recovery_chain import env as chain_env  # noqa: F401 - the chain tests' world


@pytest.fixture
def env(chain_env: Env) -> Env:  # noqa: F811 - the same world under the name these tests use
    return chain_env

SCHEDULERS = ("PrimarySchedulerInstanceId", "FailoverSchedulerInstanceId")


def beat_in_primary(env: Env, beats: int = 4) -> None:
    """The old primary's schedulers beat again, in both copies (the heartbeat CONTRACT), up to now."""
    s = env.s
    for back in range(beats, -1, -1):
        moment = FakeClock(env.clock.now() - timedelta(seconds=back * s.heartbeat_interval_seconds))
        for role in ("primary", "failover"):
            for region in (s.primary_region, s.recovery_region):
                publish_heartbeat(env.clients, region, s.environment, role, moment,
                                  interval_seconds=s.heartbeat_interval_seconds)


def scheduler_states(env: Env) -> set[str]:
    return {env.instance(env.s.primary_region, env.world.app[key])["State"]["Name"] for key in SCHEDULERS}


def recovery_executions(env: Env) -> list[Any]:
    return [e for e in env.ledger().list_executions() if e.kind == "recovery"]


# ------------------------------------------------------------------------------- defect 2: stand down


def test_a_recovery_whose_primary_beats_again_stands_down_and_changes_nothing(env: Env) -> None:
    s = env.s
    beat_in_primary(env)
    execution = env.recover("late-approval")
    assert execution.status == "cancelled"
    assert [h["name"] for h in execution.history] == ["preflight", "take_lease", "fence_primary", "notify",
                                                      "write_report"]
    assert "primary healthy again" in str(execution.data["stood_down"])
    # Nothing changed in AWS: schedulers running, not quarantined, no application stack in the recovery region.
    assert scheduler_states(env) == {"running"}
    for key in SCHEDULERS:
        groups = [g["GroupName"] for g in env.instance(s.primary_region, env.world.app[key])["SecurityGroups"]]
        assert quarantine_group_name(s.environment) not in groups
    assert env.app_stack(s.recovery_region) is None
    lease = env.ledger().get_lease("recovery")
    assert lease is not None and not lease.holder  # taken, then released: a real recovery can start later
    assert env.ledger().get_fence() is None
    report = build_report(execution.item)
    assert report["outcome"] == "not-started"
    subject, body = env.notifier.sent[-1]
    assert "stood down" in subject and "primary healthy again" in body and "Nothing was fenced" in body


def test_force_fences_even_a_beating_primary(env: Env) -> None:
    beat_in_primary(env)
    started = start_recovery(env.s, env.clients, env.clock, reason="planned move", force=True, launcher=no_launch)
    execution = env.run(started.execution_id)
    assert "stood_down" not in execution.data
    assert execution.history[2]["name"] == "fence_primary" and execution.history[3]["name"] == "create_app_stack"
    assert scheduler_states(env) <= {"stopping", "stopped"}


def test_a_silent_primary_is_fenced_as_before(env: Env) -> None:
    execution = env.recover("silent")
    assert execution.status == "succeeded" and "stood_down" not in execution.data
    assert scheduler_states(env) <= {"stopping", "stopped"}


# ------------------------------------------------------------------------------- defect 5: one start


def test_two_manual_recoveries_a_second_apart_make_one_execution(env: Env) -> None:
    first = start_recovery(env.s, env.clients, env.clock, reason="us-east-1 down", launcher=no_launch)
    env.clock.advance(1)
    second = start_recovery(env.s, env.clients, env.clock, reason="us-east-1 down (again)", launcher=no_launch)
    assert [e.execution_id for e in recovery_executions(env)] == [first.execution_id]
    assert second.execution_id == first.execution_id and not second.created
    assert first.created and not first.joined and second.joined


def fire(count: int, call: Callable[[], Any]) -> tuple[list[Any], list[BaseException]]:
    barrier = threading.Barrier(count)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            value = call()
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(value)

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results, errors


def test_concurrent_manual_recoveries_make_one_execution(env: Env) -> None:
    def press() -> Any:
        env.clock.advance(0.4)  # each press in its own moment: ids from the time would differ
        return start_recovery(env.s, env.clients, env.clock, reason="everyone pressed", launcher=no_launch)

    results, errors = fire(5, press)
    assert errors == []
    assert len({r.execution_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert len(recovery_executions(env)) == 1


def test_the_watchers_incident_joins_a_manual_recovery_already_running(env: Env) -> None:
    manual = start_recovery(env.s, env.clients, env.clock, reason="operator first", launcher=no_launch)
    now = env.clock.now()
    incident = Incident("inc-late", "region-recovery", "both silent", now, now, now)
    joined = start_incident_recovery(env.s, env.clients, env.clock, incident, await_approval=False,
                                     launcher=no_launch)
    assert joined.execution_id == manual.execution_id and joined.joined
    assert len(recovery_executions(env)) == 1


def test_concurrent_failbacks_make_one_execution(env: Env) -> None:
    recovered = env.recover("for-failback")
    assert recovered.status == "succeeded"

    def press() -> Any:
        env.clock.advance(0.6)
        return start_failback(env.s, env.clients, env.clock, reason="back home", launcher=no_launch)

    results, errors = fire(4, press)
    failbacks = [e for e in env.ledger().list_executions() if e.kind == "failback"]
    assert len(failbacks) == 1
    assert sum(r.created for r in results) == 1
    # The others were refused up front, naming the failback that runs; nothing else was created.
    assert all(isinstance(e, StartError) and failbacks[0].execution_id in str(e) for e in errors)
    assert len(results) + len(errors) == 4


def test_a_failure_message_says_only_what_the_execution_owns(env: Env) -> None:
    # Another execution holds the lease (taken directly): this recovery fails at take_lease, owning nothing.
    env.ledger().take_lease("rec-someone-else", "recovery")
    now = env.clock.now()
    incident = Incident("inc-blocked", "region-recovery", "both silent", now, now, now)
    started = start_incident_recovery(env.s, env.clients, env.clock, incident, await_approval=False,
                                      launcher=no_launch)
    execution = env.run(started.execution_id)
    assert execution.status == "failed" and execution.failed_state == "take_lease"
    message = failure_message(execution)
    assert "created nothing" in message and "nothing to roll back" in message
    assert "half-built" not in message and "--rollback rec-inc-blocked" not in message
    assert env.app_stack(env.s.recovery_region) is None


def test_force_is_refused_with_approve_retry_or_rollback() -> None:
    for option in ("--approve", "--retry", "--rollback"):
        result = CliRunner().invoke(main, ["recover", "--stage", "dev", option, "rec-x", "--force"])
        assert result.exit_code == 2, result.output
        assert "--force applies to a new recovery only" in result.output


def test_a_slot_left_by_an_execution_that_died_is_cleared_by_the_next_start(env: Env) -> None:
    # An execution that ended (here: never existed) without freeing the slot must not block recoveries.
    env.ledger().take_slot("rec-died-before-release", "recovery")
    started = start_recovery(env.s, env.clients, env.clock, reason="after a crash", launcher=no_launch)
    assert started.created and not started.joined
    holder = env.ledger().slot_holder()
    assert holder is not None and holder.execution_id == started.execution_id


def test_the_slot_is_freed_when_the_recovery_ends(env: Env) -> None:
    execution = env.recover("frees-slot")
    assert execution.status == "succeeded"
    assert env.ledger().slot_holder() is None
    # The next incident is a new recovery, not a join of the ended one (the lease decides what it may do).
    now = env.clock.now()
    later = start_incident_recovery(env.s, env.clients, env.clock, Incident("inc-next", "region-recovery", "x",
                                                                            now, now, now),
                                    await_approval=True, launcher=no_launch)
    assert later.created and later.execution_id == "rec-inc-next"
