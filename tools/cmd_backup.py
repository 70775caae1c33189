"""`ota backup` and `ota restore`: a server's data directory, copied safely while it runs and
put back (tools/backup.py; docs/operations.md, "Backup and restore")."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from tools.errors import UserError

if TYPE_CHECKING:
    from tools.backup import BackupSummary


def _summary(what: str, where: Path, summary: BackupSummary) -> str:
    return (f"{what} {where}: schema {summary.schema_version}, {summary.releases} release(s), "
            f"{summary.devices} board(s), {summary.blobs} blob(s) of {summary.blob_bytes} bytes")


@click.command("backup")
@click.argument("data_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
def backup_cmd(data_dir: Path, dest: Path) -> None:
    """Copy DATA_DIR (database and blobs) to the new directory DEST; safe while ota serve runs."""
    from tools.backup import BackupError, backup

    try:
        summary = backup(data_dir, dest)
    except BackupError as err:
        raise UserError(str(err)) from err
    click.echo(_summary("backed up to", dest, summary))


@click.command("restore")
@click.argument("backup_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
def restore_cmd(backup_dir: Path, data_dir: Path) -> None:
    """Check BACKUP_DIR and copy it to DATA_DIR (new or empty); then start ota serve on it."""
    from tools.backup import BackupError, restore

    try:
        summary = restore(backup_dir, data_dir)
    except BackupError as err:
        raise UserError(str(err)) from err
    click.echo(_summary("restored into", data_dir, summary))
    click.echo(f"next: ota serve --data {data_dir} (a server newer than the backup migrates it "
               f"at start)")


def register(cli: click.Group) -> None:
    cli.add_command(backup_cmd)
    cli.add_command(restore_cmd)
