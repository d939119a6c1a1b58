"""Which ``Workflow`` an execution runs, by the workflow name stored in its ledger item.

The definitions (``chalicelib.workflow.definitions``) import every step and so boto3-heavy modules;
they are imported on first use, never at import time. ``overridden`` swaps in other workflows under a
name for the duration of a block (synthetic workflows in tests, experiments in a drill).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from chalicelib.errors import Refused
from chalicelib.workflow.model import Workflow

# recovery, drill and failback are execution kinds; rollback runs as a recovery-kind cleanup. The names
# without importing the definitions (see above); definitions.WORKFLOWS maps the same names.
WORKFLOW_NAMES: tuple[str, ...] = ("recovery", "drill", "failback", "rollback")

_overrides: dict[str, Workflow] = {}
_lock = threading.Lock()


class UnknownWorkflow(Refused, ValueError):
    """No definition for a workflow name; the message says which names exist."""


def workflow_for(name: str) -> Workflow:
    with _lock:
        override = _overrides.get(name)
    if override is not None:
        return override
    if name not in WORKFLOW_NAMES:
        raise UnknownWorkflow(f"unknown workflow {name!r}; known workflows: {', '.join(WORKFLOW_NAMES)}")
    # Imported on first use, not for a cycle (there is none): the definitions import every step (and
    # boto3-heavy modules), which starter's importers must not pay for at import time.
    from chalicelib.workflow import definitions  # noqa: PLC0415

    return definitions.WORKFLOWS[name]()


@contextmanager
def overridden(workflows: Mapping[str, Workflow]) -> Iterator[None]:
    """Resolve the given names to these workflows inside the block (restored afterwards)."""
    with _lock:
        saved = {name: _overrides.get(name) for name in workflows}
        _overrides.update(workflows)
    try:
        yield
    finally:
        with _lock:
            for name, previous in saved.items():
                if previous is None:
                    _overrides.pop(name, None)
                else:
                    _overrides[name] = previous
