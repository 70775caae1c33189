"""Backup and restore of a server's data directory (docs/operations.md, "Backup and restore").

A backup is a directory holding `mpota.sqlite3` (a consistent snapshot taken with SQLite's
online backup API, safe while `ota serve` runs and writes) and `blobs/` (every blob the
snapshot's releases refer to). Copying the live database file instead is not safe: in WAL mode
the newest commits live in `-wal` beside it, and a copy taken mid-checkpoint can be torn.

The database is copied first, blobs second: blobs are immutable and a release is registered
only after its blobs exist, so every blob the snapshot names is already on disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "mpota.sqlite3"  # ota_server.settings.Settings.db_path
BLOB_DIR = "blobs"
_CHUNK = 1 << 20


class BackupError(Exception):
    """A backup or restore that cannot be made; the message says what and where. Nothing at
    the destination is left half-written."""


@dataclass(frozen=True)
class BackupSummary:
    schema_version: int
    releases: int
    devices: int
    blobs: int
    blob_bytes: int


def backup(data_dir: Path, dest: Path) -> BackupSummary:
    """Copy `data_dir` to the new directory `dest` (made here, mode 0700), consistent even
    while a server runs on it; every blob is checked against its name. Raises BackupError."""
    source_db = data_dir / DB_NAME
    if not source_db.is_file():
        raise BackupError(f"{data_dir} holds no {DB_NAME}: not an ota serve data directory")
    if dest.exists():
        raise BackupError(f"{dest} already exists; give a new directory")
    scratch = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700, parents=True)
    try:
        _snapshot(source_db, scratch / DB_NAME)
        summary = _copy_blobs(scratch / DB_NAME, data_dir / BLOB_DIR, scratch / BLOB_DIR)
        os.rename(scratch, dest)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return summary


def restore(backup_dir: Path, data_dir: Path) -> BackupSummary:
    """Check the backup (database integrity, every referenced blob present and matching its
    hash) and copy it to `data_dir`, which must not hold a database yet (a server never runs
    on a half-restored directory: the copy is renamed into place). Raises BackupError."""
    summary = verify(backup_dir)
    if (data_dir / DB_NAME).exists():
        raise BackupError(f"{data_dir} already holds a database; restore into a new directory "
                          f"(move the old one aside first)")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(f"{data_dir} is not empty; restore into a new or empty directory")
    scratch = data_dir.with_name(f".{data_dir.name}.restoring")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        scratch.mkdir(mode=0o700, parents=True)
        _snapshot(backup_dir / DB_NAME, scratch / DB_NAME)
        shutil.copytree(backup_dir / BLOB_DIR, scratch / BLOB_DIR)
        if data_dir.exists():
            data_dir.rmdir()  # empty, checked above
        os.rename(scratch, data_dir)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return summary


def verify(backup_dir: Path) -> BackupSummary:
    """The summary of a sound backup; BackupError naming the first problem otherwise."""
    db_path = backup_dir / DB_NAME
    if not db_path.is_file():
        raise BackupError(f"{backup_dir} holds no {DB_NAME}: not a backup")
    blobs = backup_dir / BLOB_DIR
    summary, wanted = _contents(db_path)
    for sha256, size in wanted:
        path = blobs / sha256[:2] / sha256
        if not path.is_file():
            raise BackupError(f"{backup_dir}: blob {sha256} (a release's file) is missing")
        if _sha256(path) != sha256 or path.stat().st_size != size:
            raise BackupError(f"{backup_dir}: blob {path} does not match its hash or size")
    return summary


def _snapshot(source: Path, dest: Path) -> None:
    """A consistent copy of the SQLite database `source` at `dest` (online backup API),
    checked with PRAGMA integrity_check."""
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            out = sqlite3.connect(dest)
            try:
                src.backup(out)
                status = out.execute("PRAGMA integrity_check").fetchone()[0]
                # A self-contained file: no -wal for the copy to depend on.
                out.execute("PRAGMA journal_mode=DELETE")
            finally:
                out.close()
        finally:
            src.close()
    except sqlite3.Error as err:
        raise BackupError(f"cannot copy {source}: {err}") from err
    if status != "ok":
        raise BackupError(f"{source}: the copy fails SQLite's integrity check: {status}")


def _contents(db_path: Path) -> tuple[BackupSummary, list[tuple[str, int]]]:
    """What the database holds and the blobs (sha256, size) its releases need."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            status = db.execute("PRAGMA integrity_check").fetchone()[0]
            if status != "ok":
                raise BackupError(f"{db_path} fails SQLite's integrity check: {status}")
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            releases = int(db.execute("SELECT COUNT(*) FROM releases").fetchone()[0])
            devices = int(db.execute("SELECT COUNT(*) FROM devices").fetchone()[0])
            wanted = [(str(r[0]), int(r[1])) for r in db.execute(
                "SELECT DISTINCT blob, size FROM release_blobs ORDER BY blob")]
        finally:
            db.close()
    except sqlite3.Error as err:
        raise BackupError(f"cannot read {db_path}: {err}") from err
    return BackupSummary(version, releases, devices, len(wanted),
                         sum(size for _, size in wanted)), wanted


def _copy_blobs(db_path: Path, source: Path, dest: Path) -> BackupSummary:
    """Copy every blob the database at `db_path` refers to, each checked against its name."""
    summary, wanted = _contents(db_path)
    for sha256, size in wanted:
        path = source / sha256[:2] / sha256
        target = dest / sha256[:2] / sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(path, target)
        except OSError as err:
            raise BackupError(f"cannot copy blob {path}: {err.strerror}") from err
        if _sha256(target) != sha256 or target.stat().st_size != size:
            raise BackupError(f"blob {path} does not match its hash or size: the data "
                              f"directory is damaged")
    return summary


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
