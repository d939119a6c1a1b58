"""The steps of the recovery, drill, failback and rollback workflows (one import point).

The steps live in small modules by concern; this module re-exports them for the definitions, and
exposes ``enforce_pending_fence(settings, clients, clock) -> list[str]`` for the sweeper and the
watcher, which call it before anything else.
"""

from __future__ import annotations

from chalicelib.workflow.steps_cleanup import rollback_stack, teardown, withdraw_fence
from chalicelib.workflow.steps_failback import (
    copy_to_primary,
    preflight_failback,
    quiesce_recovery,
    resume_recovery,
    retire_old_primary,
    retire_recovery_stack,
    snapshot_recovery_db,
    wait_primary_copy,
    wait_recovery_snapshot,
)
from chalicelib.workflow.steps_fence import enforce_fence, enforce_pending_fence, fence_primary
from chalicelib.workflow.steps_recovery import (
    create_app_stack,
    notify_done,
    preflight,
    release_lease,
    switch_traffic,
    take_lease,
    verify,
    wait_for_stack,
    write_report,
)

__all__ = [
    "copy_to_primary",
    "create_app_stack",
    "enforce_fence",
    "enforce_pending_fence",
    "fence_primary",
    "notify_done",
    "preflight",
    "preflight_failback",
    "quiesce_recovery",
    "release_lease",
    "resume_recovery",
    "retire_old_primary",
    "retire_recovery_stack",
    "rollback_stack",
    "snapshot_recovery_db",
    "switch_traffic",
    "take_lease",
    "teardown",
    "verify",
    "wait_for_stack",
    "wait_primary_copy",
    "wait_recovery_snapshot",
    "withdraw_fence",
    "write_report",
]
