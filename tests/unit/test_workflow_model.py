"""The workflow model: retry backoff, error matching, definition checks (no AWS). The error tree: test_errors.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.workflow.model import (
    NO_RETRY,
    TRANSIENT,
    Done,
    RetryPolicy,
    State,
    Workflow,
)


def _ok(ctx: object) -> Done:
    return Done()


def test_backoff_grows_exponentially_from_the_first_retry() -> None:
    policy = RetryPolicy(interval_seconds=2.0, backoff_rate=2.0, max_delay_seconds=300.0)
    assert [policy.delay_before(n) for n in (2, 3, 4, 5)] == [2.0, 4.0, 8.0, 16.0]


def test_backoff_is_capped_by_max_delay() -> None:
    policy = RetryPolicy(interval_seconds=10.0, backoff_rate=3.0, max_delay_seconds=60.0)
    assert policy.delay_before(2) == 10.0
    assert policy.delay_before(3) == 30.0
    assert policy.delay_before(4) == 60.0
    assert policy.delay_before(30) == 60.0


def test_backoff_before_the_first_attempt_is_the_interval() -> None:
    # Attempt 1 is never delayed by the engine; the formula must still not shrink below the interval.
    assert RetryPolicy(interval_seconds=5.0).delay_before(1) == 5.0


@given(
    interval=st.floats(min_value=0.1, max_value=100),
    rate=st.floats(min_value=1.0, max_value=5.0),
    cap=st.floats(min_value=0.1, max_value=1000),
    attempt=st.integers(min_value=2, max_value=40),
)
def test_backoff_never_decreases_and_never_exceeds_the_cap(
    interval: float, rate: float, cap: float, attempt: int
) -> None:
    policy = RetryPolicy(interval_seconds=interval, backoff_rate=rate, max_delay_seconds=cap)
    assert policy.delay_before(attempt) <= cap
    assert policy.delay_before(attempt + 1) >= policy.delay_before(attempt)


def test_matching_by_name_and_states_all() -> None:
    only = RetryPolicy(errors=("Throttling",))
    assert only.matches("Throttling")
    assert not only.matches("ValidationError")
    assert RetryPolicy().matches("anything at all")
    assert not NO_RETRY.matches("Throttling")
    assert NO_RETRY.max_attempts == 1


def test_transient_retries_throttling_and_unreachable_not_validation() -> None:
    # RequestThrottled and SNS's Throttled: the classifier in aws.py knew them, the retry policy's own copy
    # of the list did not (issue 14); both now read chalicelib/codes.py.
    for name in ("Throttling", "ThrottlingException", "Unreachable", "InternalError", "RequestThrottled", "Throttled"):
        assert TRANSIENT.matches(name), name
    for name in ("ValidationError", "AccessDenied", "StepFailed", "StateTimeout"):
        assert not TRANSIENT.matches(name), name


def test_workflow_rejects_duplicate_names_and_unknown_catch_targets() -> None:
    with pytest.raises(ValueError, match="duplicate state names"):
        Workflow("drill", (State("a", _ok), State("a", _ok)))
    with pytest.raises(ValueError, match="catches to unknown state nowhere"):
        Workflow("drill", (State("a", _ok, catch="nowhere"),))


def test_workflow_navigation() -> None:
    flow = Workflow("recovery", (State("a", _ok), State("b", _ok, catch="c"), State("c", _ok)))
    assert flow.first == "a"
    assert flow.next_after("a") == "b"
    assert flow.next_after("c") is None
    assert flow.state("b").catch == "c"
    with pytest.raises(KeyError):
        flow.state("missing")


def test_the_registry_names_exactly_the_defined_workflows() -> None:
    from chalicelib.workflow.definitions import WORKFLOWS
    from chalicelib.workflow.registry import WORKFLOW_NAMES, workflow_for

    assert tuple(WORKFLOWS) == WORKFLOW_NAMES
    for name in WORKFLOW_NAMES:
        assert workflow_for(name).states
