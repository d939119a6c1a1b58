"""Shared by the detection unit tests: event fixtures and the silent-schedulers signals."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chalicelib.detection.decision import Signals

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "events"
T = 3
PRIMARY = "us-east-1"
RECOVERY = "us-west-2"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def silent(**extra: Any) -> Signals:
    return Signals(primary_missed=T, failover_missed=T, **extra)


