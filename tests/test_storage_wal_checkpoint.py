"""The embedded store's WAL is checkpointed by a thread, never on the event loop
(ota_server.storage.wal_checkpoint)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from ota_server.app import open_metadata_store
from ota_server.settings import Settings
from ota_server.storage.sqlite import SqliteStore
from ota_server.storage.wal_checkpoint import WalCheckpointer

pytestmark = pytest.mark.sqlite_only(reason="SQLite's WAL itself")

_PAGE_ROW = b"x" * 4000  # about one page of the WAL per commit


def _wal_after_writes(path: Path, checkpointer: WalCheckpointer | None, commits: int) -> int:
    """The WAL's size in bytes after `commits` commits of one page each, made by a connection
    that never checkpoints (as the server's), while `checkpointer` (if any) runs."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE IF NOT EXISTS rows (data BLOB)")
    try:
        for i in range(commits):
            db.execute("INSERT INTO rows (data) VALUES (?)", (_PAGE_ROW,))
            if checkpointer is not None and i % 100 == 99:
                time.sleep(0.02)  # let the thread's passes interleave with the commits
        return Path(f"{path}-wal").stat().st_size
    finally:
        if checkpointer is not None:
            checkpointer.close()
        db.close()


def test_the_checkpoint_thread_keeps_the_wal_short(tmp_path: Path) -> None:
    commits = 1500  # ~6 MB of WAL when nothing checkpoints
    unchecked = _wal_after_writes(tmp_path / "a.sqlite3", None, commits)
    checked = _wal_after_writes(tmp_path / "b.sqlite3",
                                WalCheckpointer(tmp_path / "b.sqlite3", interval=0.01), commits)
    assert unchecked > commits * 4000  # the control: without it the WAL only grows
    # The WAL starts over after each complete checkpoint: it stays a few intervals long.
    assert checked < unchecked / 4, (checked, unchecked)


async def test_the_servers_store_never_checkpoints_on_the_event_loop(tmp_path: Path) -> None:
    store = await open_metadata_store(Settings(data_dir=tmp_path))
    try:
        assert isinstance(store, SqliteStore)
        # the pragma is per connection: the store's own, the one the event loop uses
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        checkpointer = store._checkpointer
        assert checkpointer is not None
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpointer.checkpoints > 0
    finally:
        await store.close()
    assert not checkpointer._thread.is_alive()  # closing the store stops its thread


async def test_a_store_without_the_thread_keeps_sqlites_checkpoints(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cli.sqlite3")
    try:
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        assert store._checkpointer is None
    finally:
        await store.close()
