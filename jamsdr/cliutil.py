"""What every jams-dr command shares: consoles, exit codes, bad-input handling, stage settings."""

from __future__ import annotations

import sys
from typing import NoReturn

from rich.console import Console

from chalicelib.settings import Settings, SettingsError
from jamsdr.stage import StageError, stage_settings

console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2
EXIT_AWS = 3  # AWS unreachable or refused: the command could read nothing


def fail_input(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    sys.exit(EXIT_BAD_INPUT)


def settings_for(stage: str | None) -> Settings:
    """The stage's settings from .chalice/config.json, or the environment's when no stage is given."""
    try:
        return stage_settings(stage) if stage else Settings.from_env()
    except (StageError, SettingsError) as exc:
        fail_input(str(exc))
