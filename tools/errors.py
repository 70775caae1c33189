"""The one user-facing error type of the `ota` command line."""

from __future__ import annotations

import sys
from typing import IO, Any

import click


class UserError(click.ClickException):
    """An error the user can act on; printed once as `ota: message`, exit status 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"ota: {self.format_message()}", file=file or sys.stderr)
