"""One thing scoped to the code running now: a context variable set for a block, then restored.

In Lambda nothing is scoped (one function per process reads its settings, clients and clock from the
process); the embedded drill's Lambda runtime runs several functions in one process and scopes each
invocation's own (chalicelib/settings.py ``use_settings``, chalicelib/aws.py ``use_factory``,
chalicelib/clock.py ``use_clock``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def scoped(variable: ContextVar[T | None], value: T | None) -> Iterator[None]:
    """``variable`` is ``value`` within the block (this thread or context only), as before after it."""
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)
