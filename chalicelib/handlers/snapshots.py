"""Scheduled trigger of the recovery-point pipeline (one tick every five minutes)."""

from __future__ import annotations

from typing import Any

from chalice.app import Blueprint, CloudWatchEvent, Rate

from chalicelib.aws import get_factory
from chalicelib.clock import current_clock
from chalicelib.settings import get_settings

bp = Blueprint(__name__)


@bp.schedule(Rate(5, unit=Rate.MINUTES), name="snapshot_tick")
def snapshot_tick(_event: CloudWatchEvent) -> dict[str, Any]:
    # Lazy: every function of the app imports app.py; only this one needs the pipeline.
    from chalicelib.snapshots.tick import run_tick  # noqa: PLC0415

    result = run_tick(get_settings(), get_factory(), current_clock())
    return {
        "ok": result.ok,
        "taken": result.taken,
        "copied": result.copied,
        "pinned": result.pinned,
        "pin": result.pin,
        "pruned": result.pruned,
        "waiting": result.waiting,
        "errors": result.errors,
        "rpo_seconds": result.rpo_seconds,
        "pinned_copy": result.pinned_copy,
        "pin_behind_seconds": result.pin_behind_seconds,
        "primary_reachable": result.primary_reachable,
    }
