"""Injected time: every wait in jams-dr goes through a Clock so tests never really wait."""

from __future__ import annotations

import contextvars
import threading
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Protocol

from chalicelib.scoping import scoped


class Clock(Protocol):
    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


_scoped_clock: contextvars.ContextVar[Clock | None] = contextvars.ContextVar("jamsdr_clock", default=None)


def current_clock() -> Clock:
    """The handlers' clock: real time in Lambda; the invocation's clock when a runtime provides one (the
    embedded Lambda runtime gives each invocation the drill's clock, which also enforces the timeout)."""
    return _scoped_clock.get() or SystemClock()


def use_clock(value: Clock | None) -> AbstractContextManager[None]:
    """``current_clock()`` answers ``value`` within (this thread / context only)."""
    return scoped(_scoped_clock, value)


class FakeClock:
    """A clock that moves only when told to (or when something sleeps on it)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


def isoformat(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC with a Z, the format of every timestamp in reports and the ledger."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
