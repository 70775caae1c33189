"""`ota db`: the storage a server runs on, set up and moved (docs/operations.md, "Scale-out").

`ota db migrate` brings a PostgreSQL database to this version's schema (under an advisory
lock: replicas never race, and a server never migrates on its own) and creates the S3 bucket
when one is named; on the embedded SQLite store it migrates the data directory's file.

`ota db export` writes everything a server's storage holds to a portable dump directory, and
`ota db import` writes a dump into empty storage: SQLite + a directory or PostgreSQL + S3, in
either direction (ota_server/storage/transfer.py, ota_server/storage/dump.py;
docs/operations.md, "Moving an embedded server to PostgreSQL + S3").
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from tools.errors import UserError


@click.group("db")
def db_group() -> None:
    """The server's storage: PostgreSQL and S3 (or the embedded SQLite and directory)."""


@db_group.command("migrate")
@click.option("--data", "data_dir", envvar="MPOTA_DATA", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="the data directory whose SQLite file to migrate (without --db) "
                   "[env MPOTA_DATA]")
@click.option("--db", "db_url", envvar="MPOTA_DB", default=None, metavar="URL",
              help="the PostgreSQL database (postgresql://USER:PASSWORD@HOST/DB) [env MPOTA_DB]")
@click.option("--blobs", "blobs_url", envvar="MPOTA_BLOBS", default=None, metavar="URL",
              help="also create this S3 bucket unless it exists (s3://BUCKET?endpoint=...; "
                   "keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) [env MPOTA_BLOBS]")
def migrate_cmd(data_dir: Path | None, db_url: str | None, blobs_url: str | None) -> None:
    """Bring the database to this version's schema (and the bucket into being).

    Safe to run from several machines at once and again and again: each migration runs once.
    """
    from ota_server.settings import SettingsError, check_blobs_url, check_db_url
    from ota_server.storage.errors import StoreError

    try:
        db = check_db_url(db_url)
        blobs = check_blobs_url(blobs_url)
    except SettingsError as err:
        raise UserError(str(err)) from err
    if db is None and data_dir is None:
        raise UserError("give --db postgresql://… (or MPOTA_DB), or --data DIR for the "
                        "embedded SQLite store")
    try:
        version = asyncio.run(_migrate(db, data_dir))
        if blobs is not None:
            asyncio.run(_ensure_bucket(blobs))
    except StoreError as err:
        raise UserError(str(err)) from err
    where = "PostgreSQL" if db is not None else f"{data_dir}/mpota.sqlite3"
    click.echo(f"{where}: schema at version {version}")
    if blobs is not None:
        from ota_server.storage.s3 import parse_s3_url

        click.echo(f"S3 bucket {parse_s3_url(blobs).bucket}: ready")


async def _migrate(db_url: str | None, data_dir: Path | None) -> int:
    if db_url is None:
        from ota_server.settings import Settings
        from ota_server.storage.sqlite import SqliteStore

        assert data_dir is not None
        store = SqliteStore(Settings(data_dir=data_dir).db_path)  # opening migrates it
        try:
            return await store.schema_version()
        finally:
            await store.close()
    from ota_server.storage.postgres import PostgresStore

    pg = await PostgresStore.open(db_url)
    try:
        return await pg.migrate()
    finally:
        await pg.close()


async def _ensure_bucket(blobs_url: str) -> None:
    import tempfile

    from ota_server.storage.s3 import S3BlobStore

    with tempfile.TemporaryDirectory() as scratch:  # no blob is cached: any directory does
        store = await S3BlobStore.open(blobs_url, Path(scratch))
        try:
            await store.ensure_bucket()
        finally:
            await store.close()


def _storage_options(verb: str) -> Any:
    """--data, --db and --blobs, as `ota serve` takes them: what is not given by --db or
    --blobs is the data directory's."""
    def wrap(command: Any) -> Any:
        command = click.option(
            "--blobs", "blobs_url", envvar="MPOTA_BLOBS", default=None, metavar="URL",
            help=f"{verb} this S3 bucket (s3://BUCKET?endpoint=...; keys from "
                 "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) instead of DIR/blobs/ "
                 "[env MPOTA_BLOBS]")(command)
        command = click.option(
            "--db", "db_url", envvar="MPOTA_DB", default=None, metavar="URL",
            help=f"{verb} this PostgreSQL database (postgresql://USER:PASSWORD@HOST/DB) "
                 "instead of DIR/mpota.sqlite3 [env MPOTA_DB]")(command)
        return click.option(
            "--data", "data_dir", envvar="MPOTA_DATA", default=None,
            type=click.Path(file_okay=False, path_type=Path),
            help="the data directory (its SQLite file and blobs/, for what --db and --blobs "
                 "do not name) [env MPOTA_DATA]")(command)
    return wrap


def _location(data_dir: Path | None, db_url: str | None, blobs_url: str | None) -> Any:
    from ota_server.settings import SettingsError, check_blobs_url, check_db_url
    from ota_server.storage.transfer import StoreLocation

    try:
        return StoreLocation(data_dir, check_db_url(db_url), check_blobs_url(blobs_url))
    except (SettingsError, ValueError) as err:
        raise UserError(str(err)) from err


def _run_transfer(work: Any) -> Any:
    """Run the export or import coroutine; its errors, for the user, once."""
    from ota_server.storage.dump import DumpError
    from ota_server.storage.errors import StoreError
    from ota_server.storage.transfer import TransferError

    try:
        return asyncio.run(work)
    except (DumpError, TransferError, StoreError) as err:
        raise UserError(str(err)) from err


@db_group.command("export")
@click.argument("dest", type=click.Path(path_type=Path))
@_storage_options("read")
def export_cmd(dest: Path, data_dir: Path | None, db_url: str | None,
               blobs_url: str | None) -> None:
    """Write everything the server's storage holds to the new dump directory DEST.

    Stop the server first: an embedded data directory is exported under its lock, and the
    command refuses while ota serve runs on it.
    """
    from ota_server.storage.transfer import export_store

    source = _location(data_dir, db_url, blobs_url)
    summary = _run_transfer(export_store(source, dest))
    click.echo(f"exported {source.describe()} to {dest}: {summary.describe()}")


@db_group.command("import")
@click.argument("dump", type=click.Path(file_okay=False, exists=True, path_type=Path))
@_storage_options("write into")
def import_cmd(dump: Path, data_dir: Path | None, db_url: str | None,
               blobs_url: str | None) -> None:
    """Write the dump directory DUMP into empty storage (a new data directory, or a
    PostgreSQL database set up with `ota db migrate`).

    The dump is checked whole first; blobs go in first, then every row in one transaction:
    on any error nothing of the rows is imported.
    """
    from ota_server.storage.transfer import import_dump

    target = _location(data_dir, db_url, blobs_url)
    summary = _run_transfer(import_dump(dump, target))
    click.echo(f"imported {dump} into {target.describe()}: {summary.describe()}")


def register(cli: click.Group) -> None:
    cli.add_command(db_group)
