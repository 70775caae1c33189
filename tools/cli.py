"""The `ota` command line: a table of command groups, each living in its own module."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import click

# Each module defines `register(cli: click.Group) -> None`; one module per responsibility.
_COMMAND_MODULES: tuple[str, ...] = (
    "tools.cmd_provision",
    "tools.cmd_keys",
    "tools.cmd_tls",
    "tools.cmd_server",
    "tools.cmd_db",
    "tools.cmd_publisher",
    "tools.cmd_board",
    "tools.cmd_backup",
    "tools.cmd_install",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpota", prog_name="ota")
def cli() -> None:
    """mpota: signed over-the-air updates and factory provisioning for MicroPython fleets."""


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(cli)


def _whole_summaries(group: click.Group) -> None:
    """Every command's one-line summary whole in its group's listing: click would cut it at the
    terminal's width with "..."; given as short_help, the listing wraps it instead."""
    for command in group.commands.values():
        if not command.short_help:
            command.short_help = command.get_short_help_str(limit=10_000)
        if isinstance(command, click.Group):
            _whole_summaries(command)


_whole_summaries(cli)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status instead of exiting, so tests can call it in-process."""
    try:
        # Without standalone mode click returns ctx.exit()'s code instead of raising Exit.
        status = cli.main(args=list(argv) if argv is not None else None, prog_name="ota",
                          standalone_mode=False)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Abort:
        click.echo("ota: aborted", err=True)
        return 1
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
