"""Placeholder: filled by the work on issue 16/17 (see docs/aws-fidelity.md)."""

from __future__ import annotations


def install() -> None:
    """Patch moto in this process (idempotent)."""
