"""How long moving an embedded server to PostgreSQL + S3 takes (`ota db export` / `import`,
docs/operations.md, "Moving an embedded server to PostgreSQL + S3").

    python bench/bench_db_transfer.py [BOARDS]        # `make bench-db-transfer`

A data directory is filled directly (rows written with sqlite3, blobs through the blob store):
BOARDS boards (default 10,000), each with a deployment and three history rows, 20 releases of
one 100 KB blob each, 1,000 audit entries. Then the export of it, and the import of the dump
into PostgreSQL (tools/cluster/postgres.py) + SeaweedFS (tools/cluster/seaweed.py), both on
127.0.0.1 and sharing the machine's cores with this process.

- M1_export_s: `export_store` from SQLite + directory to a dump, wall time.
- M1_import_s: `import_dump` into PostgreSQL + S3 (the dump checked whole, blobs stored, every
  row in one transaction), wall time.
Last line: one JSON object.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ota_server.storage.blobs import FileBlobStore
from ota_server.storage.postgres import PostgresStore
from ota_server.storage.s3 import S3BlobStore
from ota_server.storage.sqlite import SqliteStore
from ota_server.storage.transfer import StoreLocation, export_store, import_dump
from tools.cluster.postgres import PostgresServer
from tools.cluster.seaweed import SeaweedS3

RELEASES = 20
BLOB_BYTES = 100_000
AUDIT = 1000


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def fill(data_dir: Path, boards: int) -> None:
    store = SqliteStore(data_dir / "mpota.sqlite3")  # creates and migrates the file
    await store.close()
    blobs = FileBlobStore(data_dir / "blobs")
    now = int(time.time())
    db = sqlite3.connect(data_dir / "mpota.sqlite3")
    with db:
        for n in range(1, RELEASES + 1):
            blob = os.urandom(BLOB_BYTES)
            sha = hashlib.sha256(blob).hexdigest()
            await blobs.put_stream(sha, _one(blob), BLOB_BYTES)
            db.execute("INSERT INTO releases (id, app, version, sequence, boards, envelope, "
                       "created, expires, signers) VALUES (?, 'demo', ?, ?, '[\"esp32\"]', ?, "
                       "?, ?, '[]')", (n, f"1.{n}.0", n, os.urandom(600), now, now + 86400))
            db.execute("INSERT INTO release_blobs VALUES (?, ?, ?)", (n, sha, BLOB_BYTES))
        db.execute("INSERT INTO rollouts (id, channel, release_id, policy, stage, state, "
                   "created, updated) VALUES (1, 'stable', ?, '{}', 0, 'active', ?, ?)",
                   (RELEASES, now, now))
        db.executemany(
            "INSERT INTO devices (device_id, public_key, board, tags, channel, bucket, counter,"
            " created, app, version, sequence, last_seen) VALUES (?, ?, 'esp32', '[]', "
            "'stable', ?, ?, ?, 'demo', '1.1.0', 1, ?)",
            [(f"board-{i:06d}", os.urandom(65), i % 10000, i * 3, now, now)
             for i in range(boards)])
        db.executemany(
            "INSERT INTO deployments (device_id, release_id, status, updated, channel) "
            "VALUES (?, ?, 'confirmed', ?, 'stable')",
            [(f"board-{i:06d}", RELEASES, now) for i in range(boards)])
        db.executemany(
            "INSERT INTO deployment_history (device_id, release_id, status, at) "
            "VALUES (?, ?, ?, ?)",
            [(f"board-{i:06d}", RELEASES, status, now) for i in range(boards)
             for status in ("downloading", "installed", "confirmed")])
        db.executemany(
            "INSERT INTO audit (at, actor, scope, action, target, status, outcome) "
            "VALUES (?, 'ci', 'publish', 'POST /v1/releases', 'demo', 201, 'ok')",
            [(now,) for _ in range(AUDIT)])
    db.close()


async def main(boards: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work, PostgresServer() as pg, SeaweedS3() as s3:
        root = Path(work)
        os.environ.update(s3.credentials_env())
        dsn = pg.create_database("bench_transfer")
        bucket = s3.create_bucket("bench-transfer")
        store = await PostgresStore.open(dsn)
        await store.migrate()
        await store.close()
        blob_store = await S3BlobStore.open(bucket, root / "cache")
        await blob_store.ensure_bucket()
        await blob_store.close()
        await fill(root / "data", boards)
        started = time.perf_counter()
        summary = await export_store(StoreLocation(root / "data"), root / "dump")
        exported = time.perf_counter() - started
        print(f"export: {summary.describe()} in {exported:.2f} s", flush=True)
        started = time.perf_counter()
        await import_dump(root / "dump", StoreLocation(None, db_url=dsn, blobs_url=bucket))
        imported = time.perf_counter() - started
        print(f"import into PostgreSQL + S3 in {imported:.2f} s", flush=True)
    return {"boards": boards, "M1_export_s": round(exported, 2),
            "M1_import_s": round(imported, 2)}


if __name__ == "__main__":
    figures = asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
    print(json.dumps(figures))
