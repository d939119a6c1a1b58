"""The errors jams-dr raises itself: one coded base and three kinds.

Every error carries ``code``, a stable name that logs, reports, retry policies and tests match on
(``aws.error_code`` reads it). The kind says what the caller should do:

- ``AwsFailure``: AWS failed or answered something unusable. Retry policies decide by ``code``.
- ``Refused``: the request was refused before anything changed (bad input, settings or state). The
  message names what is wrong and the fix; handlers answer ``{"ok": false, "error": ...}``.
- ``StepFailure``: a step of a workflow failed (``workflow.model.StepError``); the engine retries or
  catches it by ``code``.

Concrete classes keep their historic builtin base as a second base (``ValueError`` for refusals of bad
values, ``RuntimeError`` for the rest), so code that catches those keeps catching them.
"""

from __future__ import annotations


class JamsDrError(Exception):
    """Base of every jams-dr error; ``code`` defaults to the class name."""

    def __init__(self, message: str = "", code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or type(self).__name__


class AwsFailure(JamsDrError):
    """AWS failed, or answered something jams-dr cannot use."""


class Refused(JamsDrError):
    """Refused before anything changed: bad input, settings or state. The message says the fix."""


class StepFailure(JamsDrError):
    """A workflow step failed."""


class AwsError(AwsFailure, RuntimeError):
    """An AWS call failed; ``code`` carries the AWS error code (or ``Unreachable``)."""

    def __init__(self, message: str, code: str = "Unknown") -> None:
        super().__init__(message, code)
