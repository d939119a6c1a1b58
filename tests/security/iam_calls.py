"""The AWS calls each Chalice function makes, and what IAM checks for each of them.

``Recorder`` sees every botocore operation (paginated or not) through a ``before-parameter-build``
hook, with its parameters and the client's region, and attributes it to the function the test is
running. The mapping of a call to IAM's checks (``authorizations``, ``implicit``, ``required``) and the
small evaluator of the generated policies (``allows``) live in jamsdr/iam_enforcement.py, which the
embedded drill enforces with; they are re-exported here for tests/security.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from jamsdr.iam_enforcement import (
    ACCOUNT,
    Auth,
    Call,
    allows,
    authorizations,
    implicit,
    policy_actions,
    required,
    statements,
)

__all__ = ["ACCOUNT", "Auth", "Call", "Recorder", "allows", "authorizations", "implicit", "policy_actions",
           "required", "statements"]


class Recorder:
    """Attributes every botocore call to the function being run (nothing is recorded outside)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._function: str | None = None
        self._paused = 0

    @contextmanager
    def running(self, function: str) -> Iterator[None]:
        previous, self._function = self._function, function
        try:
            yield
        finally:
            self._function = previous

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Test set-up inside a hook (a final snapshot, a heartbeat) is nobody's call."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def hook(self, params: Mapping[str, Any], model: Any, context: Mapping[str, Any], **_: Any) -> None:
        if self._function is None or self._paused:
            return
        self.calls.append(Call(self._function, model.service_model.service_name, model.name,
                               str(context.get("client_region")), copy.deepcopy(dict(params))))

    def of(self, function: str) -> list[Call]:
        return [c for c in self.calls if c.function == function]
