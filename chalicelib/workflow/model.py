"""The workflow as data: states, retry policies, catch targets and step results.

A workflow is a list of ``State``s run in order. Each state's action gets a ``StepContext`` and returns
``Done`` (go to ``next``, or to a later state ``goto``), or ``NotReady`` ("check again in N s": the
runner waits, then calls the action again without counting an attempt). An action that raises is
retried per its ``RetryPolicy`` when the error name matches; once retries are exhausted the execution
goes to the state's ``catch`` target (or fails). Runners (in-process, Lambda chain) interpret the same
definition, and the ledger records every transition, so the definition carries no runtime state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from chalicelib.aws import ClientFactory
from chalicelib.clock import Clock
from chalicelib.codes import TRANSIENT_CODES
from chalicelib.errors import StepFailure
from chalicelib.notify import Notifier
from chalicelib.settings import Settings

Kind = Literal["recovery", "drill", "failback"]
KINDS: tuple[Kind, ...] = ("recovery", "drill", "failback")


class StepError(StepFailure, RuntimeError):
    """A step failed for a reason the operator must know; ``code`` is matched by retry policies."""

    def __init__(self, message: str, code: str = "StepFailed") -> None:
        super().__init__(message, code)


@dataclass(frozen=True)
class RetryPolicy:
    """Like Step Functions' Retry: which errors, how many attempts in all, exponential backoff."""

    errors: tuple[str, ...] = ("States.ALL",)
    max_attempts: int = 3
    interval_seconds: float = 2.0
    backoff_rate: float = 2.0
    max_delay_seconds: float = 300.0

    def matches(self, name: str) -> bool:
        return "States.ALL" in self.errors or name in self.errors

    def delay_before(self, attempt: int) -> float:
        """Delay before attempt number ``attempt`` (2 = first retry)."""
        delay = self.interval_seconds * self.backoff_rate ** max(attempt - 2, 0)
        return float(min(delay, self.max_delay_seconds))


NO_RETRY = RetryPolicy(errors=(), max_attempts=1)
# Throttling, 5xx and unreachable endpoints are worth retrying; validation errors are not.
TRANSIENT = RetryPolicy(
    errors=tuple(sorted(TRANSIENT_CODES)),
    max_attempts=5,
    interval_seconds=2.0,
    backoff_rate=2.0,
)


@dataclass(frozen=True)
class Done:
    output: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""
    # Skip ahead to this state instead of the next one (a recovery that stands down goes to its notify).
    goto: str | None = None
    # The step found nothing to do (e.g. no hosted zone: traffic not switched): its history entry says
    # "skipped", not "succeeded", so a report never counts it as having happened.
    skipped: bool = False


@dataclass(frozen=True)
class NotReady:
    check_again_seconds: float
    note: str = ""
    output: Mapping[str, Any] = field(default_factory=dict)


StepResult = Done | NotReady


@dataclass
class StepContext:
    """What a step sees: the execution's identity and accumulated data, plus injected collaborators.

    ``data`` holds the outputs of earlier steps (merged in order); a step returns new keys in
    ``Done.output``/``NotReady.output`` rather than mutating ``data``. ``state_started_at`` is when the
    current state was first entered (for deadlines that survive retries and resumptions).
    """

    execution_id: str
    kind: Kind
    settings: Settings
    clients: ClientFactory
    clock: Clock
    notifier: Notifier
    data: Mapping[str, Any]
    attempt: int
    state_started_at: datetime
    started_at: datetime


Action = Callable[[StepContext], StepResult]


@dataclass(frozen=True)
class State:
    name: str
    action: Action
    retry: RetryPolicy = TRANSIENT
    catch: str | None = None
    # Longest time the state may keep answering NotReady before it fails (restores take hours).
    timeout_seconds: float | None = None


@dataclass(frozen=True)
class Workflow:
    kind: Kind
    states: tuple[State, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.states]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.kind}: duplicate state names")
        for state in self.states:
            if state.catch is not None and state.catch not in names:
                raise ValueError(f"{self.kind}: {state.name} catches to unknown state {state.catch}")

    def state(self, name: str) -> State:
        for candidate in self.states:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def next_after(self, name: str, goto: str | None = None) -> str | None:
        names = [s.name for s in self.states]
        index = names.index(name)
        if goto is not None:
            # Forward only: a jump back could loop, and the history would no longer read in order.
            if goto not in names[index + 1:]:
                raise ValueError(f"{self.kind}: {name} cannot go to {goto!r}: not a state after it")
            return goto
        return names[index + 1] if index + 1 < len(names) else None

    @property
    def first(self) -> str:
        return self.states[0].name
