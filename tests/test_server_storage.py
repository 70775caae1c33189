"""Storage on its own: SQLite migrations and transactions, content-addressed blob files."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from ota_server.storage.blobs import BlobHashMismatch, BlobTooLarge, FileBlobStore, check_blob_id
from ota_server.storage.errors import StoreConflict, StoreNotFound, StoreUnavailable
from ota_server.storage.sqlite import SqliteStore, _migrations

# PostgreSQL's and S3's own: tests/test_storage_postgres.py, tests/test_storage_s3.py.
pytestmark = pytest.mark.sqlite_only(reason="the SQLite store (WAL, its locks, its migrations) "
                                            "and the blob directory on their own")


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


async def test_fresh_store_is_migrated_in_wal_mode(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    try:
        assert await store.schema_version() == max(v for v, _ in _migrations())
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()
    db = sqlite3.connect(tmp_path / "db.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    # reopening does not migrate again (the tables already exist: it would fail)
    await SqliteStore(tmp_path / "db.sqlite3").close()


async def test_counter_only_moves_forward(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    try:
        await store.add_device("b1", b"\x04" + b"\x00" * 64, "unix", ["x"], "stable", 42)
        assert await store.advance_counter("b1", 5)
        assert not await store.advance_counter("b1", 5)
        assert not await store.advance_counter("b1", 4)
        assert await store.advance_counter("b1", 6)
        assert not await store.advance_counter("nobody", 100)
    finally:
        await store.close()


async def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    """A clash is the store's own StoreConflict (never sqlite3's), and nothing of the failed
    transaction is written."""
    store = SqliteStore(tmp_path / "db.sqlite3")
    try:
        await store.add_release("demo", "1.0.0", 1, ["unix"], b"{}", [("a" * 64, 3)], 2**40)
        with pytest.raises(StoreConflict):
            await store.add_release("demo", "1.0.1", 1, ["unix"], b"{}", [("b" * 64, 3)],
                                    2**40)
        assert [r.version for r in await store.list_releases()] == ["1.0.0"]
        assert await store.release_blob_refs() == ["a" * 64]
        with pytest.raises(StoreNotFound):
            await store.yank_release(999)
    finally:
        await store.close()


async def test_a_locked_database_is_store_unavailable(tmp_path: Path) -> None:
    """SQLite's `database is locked` (another writer past the busy timeout) is a
    StoreUnavailable: the server answers 503 with Retry-After, as for PostgreSQL."""
    store = SqliteStore(tmp_path / "db.sqlite3")
    other = sqlite3.connect(tmp_path / "db.sqlite3", isolation_level=None)
    try:
        store._db.execute("PRAGMA busy_timeout=0")
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.create_token("t", "h" * 64, "admin")
        other.execute("ROLLBACK")
        assert await store.create_token("t", "h" * 64, "admin") > 0
    finally:
        other.close()
        await store.close()


async def test_blob_is_stored_under_its_hash_and_idempotently(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    data = b"abc" * 1000
    sha = hashlib.sha256(data).hexdigest()
    assert await blobs.put_stream(sha, _chunks(data[:10], data[10:]), 10_000)
    assert not await blobs.put_stream(sha, _chunks(data), 10_000)
    assert blobs.path(sha).read_bytes() == data
    assert await blobs.size(sha) == len(data)
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


async def test_wrong_or_oversized_blob_leaves_no_file(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    sha = hashlib.sha256(b"right").hexdigest()
    with pytest.raises(BlobHashMismatch):
        await blobs.put_stream(sha, _chunks(b"wrong"), 100)
    with pytest.raises(BlobTooLarge):
        await blobs.put_stream(sha, _chunks(b"x" * 60, b"y" * 60), 100)
    assert not await blobs.exists(sha)
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []


def test_leftover_temp_files_are_removed_at_open(tmp_path: Path) -> None:
    (tmp_path / "blobs" / "tmp").mkdir(parents=True)
    (tmp_path / "blobs" / "tmp" / "partial.123").write_bytes(b"half")
    FileBlobStore(tmp_path / "blobs")
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


@pytest.mark.parametrize("bad", ["", "../x", "A" * 64, "0" * 63, "0" * 64 + "\n", "0" * 65])
def test_blob_ids_are_strictly_64_lowercase_hex(bad: str) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        check_blob_id(bad)
