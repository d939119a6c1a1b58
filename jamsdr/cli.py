"""The jams-dr operator CLI (CONTRACT: see design.md)."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from chalicelib.settings import Settings, SettingsError

console = Console(stderr=False)
err_console = Console(stderr=True)


@click.group()
@click.version_option(package_name="jams-dr")
def main() -> None:
    """Cross-region disaster recovery for JAMS on AWS."""


@main.command()
@click.option("--primary-region", default="us-east-1", show_default=True)
@click.option("--recovery-region", default="us-west-2", show_default=True)
def world(primary_region: str, recovery_region: str) -> None:
    """Build both regions in the embedded AWS and print what exists."""
    from jamsdr.embedded import build_world, embedded_aws  # noqa: PLC0415 - moto is heavy

    try:
        base = Settings.defaults(primary_region=primary_region, recovery_region=recovery_region)
    except SettingsError as exc:
        err_console.print(f"[red]{exc}[/red]")
        sys.exit(2)
    with embedded_aws() as aws:
        assert aws.clients is not None
        built = build_world(aws.clients, base)
        table = Table(title=f"Embedded AWS at {aws.endpoint}")
        for column in ("region", "stack", "what it holds"):
            table.add_column(column)
        for row in built.summary():
            table.add_row(*row)
        console.print(table)
