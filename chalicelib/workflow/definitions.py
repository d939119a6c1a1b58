"""The workflows as data: recovery, drill, failback, and the rollback of a failed recovery.

Failure paths, by design:
- recovery: any state that fails for good catches to ``notify`` -> ``write_report``; the execution
  ends failed and KEEPS the lease and the half-built stack (evidence; no second automatic recovery on
  top of it). The operator retries (`jams-dr recover --retry ID`) or rolls back
  (`jams-dr recover --rollback ID`: ``rollback_workflow``).
- drill: every failure before the teardown catches to ``teardown``, so nothing of a drill is left;
  a failed teardown catches to ``notify`` and keeps the drill lease (something is left to clean up).
- failback: failures catch to ``resume_recovery``, which restarts the recovery region's schedulers
  if traffic was not switched back yet, so JAMS keeps serving where it was; the lease stays held.

Timeouts: stack creation and snapshot copies budget 36 h like the CloudFormation RDS handler
(SQL Server restores take hours: docs/aws-facts.md, "SQL Server restore durations"); deletions 6 h;
verification its own deadline + margin.
"""

from __future__ import annotations

from collections.abc import Callable

from chalicelib.workflow.model import NO_RETRY, TRANSIENT, RetryPolicy, State, Workflow
from chalicelib.workflow.steps import cleanup, failback, fence, isolation, recovery
from chalicelib.workflow.steps.recovery import VERIFY_DEADLINE_SECONDS

HOUR = 3600.0
STACK_TIMEOUT = 36 * HOUR
DELETE_TIMEOUT = 6 * HOUR
PREFLIGHT_TIMEOUT = 0.25 * HOUR
VERIFY_TIMEOUT = VERIFY_DEADLINE_SECONDS + 600.0
DNS_TIMEOUT = 0.5 * HOUR
# Reporting and notifying are worth a few more tries on any error: they are the operator's record.
BOOKKEEPING = RetryPolicy(errors=("States.ALL",), max_attempts=3, interval_seconds=5.0)


def recovery_workflow() -> Workflow:
    catch = "notify"
    return Workflow("recovery", states=(
        State("preflight", recovery.preflight, TRANSIENT, catch, PREFLIGHT_TIMEOUT),
        State("take_lease", recovery.take_lease, TRANSIENT, catch),
        State("fence_primary", fence.fence_primary, TRANSIENT, catch),
        State("create_app_stack", recovery.create_app_stack, TRANSIENT, catch),
        State("wait_for_stack", recovery.wait_for_stack, TRANSIENT, catch, STACK_TIMEOUT),
        State("verify", recovery.verify, TRANSIENT, catch, VERIFY_TIMEOUT),
        State("switch_traffic", recovery.switch_traffic, TRANSIENT, catch, DNS_TIMEOUT),
        State("notify", recovery.notify_done, BOOKKEEPING, "write_report"),
        State("write_report", recovery.write_report, BOOKKEEPING),
    ))


def drill_workflow() -> Workflow:
    catch = "teardown"
    return Workflow("drill", states=(
        State("preflight", recovery.preflight, TRANSIENT, catch, PREFLIGHT_TIMEOUT),
        State("take_lease", recovery.take_lease, TRANSIENT, catch),
        State("create_app_stack", recovery.create_app_stack, TRANSIENT, catch),
        State("wait_for_stack", recovery.wait_for_stack, TRANSIENT, catch, STACK_TIMEOUT),
        State("verify", recovery.verify, TRANSIENT, catch, VERIFY_TIMEOUT),
        # After verify, so every host it counted (the agent pool's too) is read back; a violation
        # (IsolationViolated, never retried) catches to the teardown like any other failure.
        State("verify_isolation", isolation.verify_isolation, TRANSIENT, catch, PREFLIGHT_TIMEOUT),
        State("teardown", cleanup.teardown, TRANSIENT, "notify", DELETE_TIMEOUT),
        State("release_lease", recovery.release_lease, TRANSIENT, "notify"),
        State("notify", recovery.notify_done, BOOKKEEPING, "write_report"),
        State("write_report", recovery.write_report, BOOKKEEPING),
    ))


def failback_workflow() -> Workflow:
    catch = "resume_recovery"
    return Workflow("failback", states=(
        State("preflight", failback.preflight_failback, TRANSIENT, catch, PREFLIGHT_TIMEOUT),
        State("take_lease", recovery.take_lease, TRANSIENT, catch),
        State("enforce_fence", fence.enforce_fence, TRANSIENT, catch),
        State("quiesce_recovery", failback.quiesce_recovery, TRANSIENT, catch, 0.5 * HOUR),
        State("snapshot_recovery_db", failback.snapshot_recovery_db, TRANSIENT, catch),
        State("wait_recovery_snapshot", failback.wait_recovery_snapshot, TRANSIENT, catch, STACK_TIMEOUT),
        State("copy_to_primary", failback.copy_to_primary, TRANSIENT, catch),
        State("wait_primary_copy", failback.wait_primary_copy, TRANSIENT, catch, STACK_TIMEOUT),
        State("retire_old_primary", failback.retire_old_primary, TRANSIENT, catch, DELETE_TIMEOUT),
        State("create_app_stack", recovery.create_app_stack, TRANSIENT, catch),
        State("wait_for_stack", recovery.wait_for_stack, TRANSIENT, catch, STACK_TIMEOUT),
        State("verify", recovery.verify, TRANSIENT, catch, VERIFY_TIMEOUT),
        State("switch_traffic", recovery.switch_traffic, TRANSIENT, catch, DNS_TIMEOUT),
        State("retire_recovery_stack", failback.retire_recovery_stack, TRANSIENT, catch, DELETE_TIMEOUT),
        State("release_lease", recovery.release_lease, TRANSIENT, catch),
        State("resume_recovery", failback.resume_recovery, TRANSIENT, "notify"),
        State("notify", recovery.notify_done, BOOKKEEPING, "write_report"),
        State("write_report", recovery.write_report, BOOKKEEPING),
    ))


def rollback_workflow() -> Workflow:
    """Clean up a failed recovery: delete its half-built stack, withdraw its fence, free the lease.

    Runs as its own execution whose data carries ``rollback_of`` (the failed recovery's id): the
    stack and the lease are checked against that id, never taken on trust.
    """
    catch = "notify"
    return Workflow("recovery", states=(
        State("rollback_stack", cleanup.rollback_stack, TRANSIENT, catch, DELETE_TIMEOUT),
        State("withdraw_fence", cleanup.withdraw_fence, TRANSIENT, catch),
        State("release_lease", recovery.release_lease, NO_RETRY, catch),
        State("notify", recovery.notify_done, BOOKKEEPING, "write_report"),
        State("write_report", recovery.write_report, BOOKKEEPING),
    ))


# Every workflow by the name an execution's ledger item stores (recovery, drill and failback are
# execution kinds; rollback runs as a recovery-kind cleanup). chalicelib.workflow.registry resolves names
# through this table; tests/unit/test_workflow_model.py keeps it and registry.WORKFLOW_NAMES equal.
WORKFLOWS: dict[str, Callable[[], Workflow]] = {
    "recovery": recovery_workflow,
    "drill": drill_workflow,
    "failback": failback_workflow,
    "rollback": rollback_workflow,
}
