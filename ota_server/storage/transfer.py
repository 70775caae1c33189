"""Moving a server's storage between backends through a dump (ota_server/storage/dump.py):
`export_store` reads every table and every blob a release refers to out of SQLite + a
directory or PostgreSQL + S3 (any pair), `import_dump` writes a dump into an empty pair.

Rows are read and written as rows, below the MetadataStore protocol, because the protocol has
no operation that keeps ids, counters and history as they are (nor should it): SQLite through
sqlite3, PostgreSQL through asyncpg, here and nowhere else. Blobs go through the BlobStore
protocol: out through `open_blob`, checked against their hash while copied; in through
`put_stream`, which checks them again.

Consistency (docs/operations.md, "Moving an embedded server to PostgreSQL + S3"):

- Export reads one snapshot: SQLite in one read transaction, PostgreSQL in one REPEATABLE READ
  READ ONLY transaction. Blobs are copied after the rows; a release is registered only after
  its blobs exist, so every blob the snapshot names is there.
- An embedded data directory is exported and imported only under its lock
  (ota_server.datadir.DataDirLock, the one `ota serve` holds): while a server runs on it,
  export refuses ("stop it first"), and no server can start on it until the export is done.
  A stopped server has written everything it queued (its check-in records are flushed when it
  stops), and no board request can move a replay counter past the exported one.
- Import checks the whole dump first (every line, every table's row count and SHA-256, every
  blob's hash) and writes nothing of a bad one; it refuses a target that holds any row; it
  stores the blobs first (each checked by the blob store's put_stream; a blob is invisible to
  boards until a release names it), then every row in one transaction, so a failure leaves
  no row behind. Ids are kept (every reference stays right), PostgreSQL's identity sequences
  continue above the imported ids, and replay counters are the exported ones exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import asyncpg

from ota_server.datadir import DataDirInUse, DataDirLock
from ota_server.storage import BlobStore
from ota_server.storage.blobs import BlobError, FileBlobStore
from ota_server.storage.dump import (
    TABLES,
    Dump,
    DumpError,
    DumpSummary,
    DumpWriter,
    Kind,
    Table,
)
from ota_server.storage.errors import StoreNotFound
from ota_server.storage.postgres import check_dsn, pg_migrations

DB_NAME = "mpota.sqlite3"  # ota_server.settings.Settings.db_path
BLOB_DIR = "blobs"  # ota_server.settings.Settings.blob_dir
# The schema this code reads and writes; the SQLite and PostgreSQL migrations share their
# numbers (tests/test_storage_postgres.py, test_both_backends_reach_the_same_schema_version).
SCHEMA_VERSION = pg_migrations()[-1][0]
PG_CONNECT_TIMEOUT = 10.0
_PG_BATCH = 1000
_CHUNK = 1 << 20


class TransferError(Exception):
    """An export or import that cannot be made; the message says what and where. Nothing is
    left half-written: no partial dump, no imported row."""


@dataclass(frozen=True)
class StoreLocation:
    """A server's storage: the metadata store (`db_url`, or the data directory's SQLite file)
    and the blob store (`blobs_url`, or the data directory's blobs/)."""

    data_dir: Path | None
    db_url: str | None = field(default=None, repr=False)  # may hold a password
    blobs_url: str | None = None

    def __post_init__(self) -> None:
        if self.uses_data_dir and self.data_dir is None:
            raise ValueError("give the data directory (--data DIR) for the embedded SQLite "
                             "file and blobs directory, or both --db and --blobs")
        if self.db_url is not None:
            check_dsn(self.db_url)

    @property
    def uses_data_dir(self) -> bool:
        return self.db_url is None or self.blobs_url is None

    @property
    def db_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / DB_NAME

    @property
    def kind(self) -> str:
        return (("postgresql" if self.db_url else "sqlite") + "+"
                + ("s3" if self.blobs_url else "directory"))

    def describe(self) -> str:
        """Where, for messages: never the database password or the S3 keys."""
        if self.db_url is None:
            meta = f"SQLite {self.db_path}"
        else:
            parts = urlsplit(self.db_url)
            meta = f"PostgreSQL {parts.hostname}{parts.path}"
        if self.blobs_url is None:
            assert self.data_dir is not None
            return f"{meta} + {self.data_dir / BLOB_DIR}"
        from ota_server.storage.s3 import parse_s3_url

        return f"{meta} + S3 bucket {parse_s3_url(self.blobs_url).bucket}"


# -- export ------------------------------------------------------------------------------------

async def export_store(source: StoreLocation, dest: Path) -> DumpSummary:
    """Write everything `source` holds to the new dump directory `dest` (made whole, or not at
    all). Raises TransferError (a server running on the data directory, a schema other than
    this code's, a damaged row or blob), DumpError (`dest` exists) or StoreError (a store
    that cannot be reached)."""
    if source.db_url is None and not source.db_path.is_file():
        raise TransferError(f"{source.db_path}: no such database (is {source.data_dir} an "
                            "ota serve data directory?)")
    with _data_dir_held(source):
        writer = DumpWriter(dest)
        try:
            blobs: dict[str, int] = {}
            async with _reader(source) as reader:
                for table in TABLES:
                    await _export_table(reader, table, writer, blobs, source)
            async with _blob_store(source) as store:
                for sha256, size in sorted(blobs.items()):
                    await _export_blob(store, sha256, size, writer, source)
            return writer.finish(reader.schema_version, source.kind)
        except BaseException:
            writer.abort()
            raise


async def _export_table(reader: _RowReader, table: Table, writer: DumpWriter,
                        blobs: dict[str, int], source: StoreLocation) -> None:
    out = writer.table(table)
    try:
        async for row in reader.rows(table):
            try:
                out.write(row)
            except ValueError as err:
                key = ", ".join(f"{k}={row.get(k)!r}" for k in table.order_by)
                raise TransferError(f"{source.describe()}: table {table.name}, row {key}: "
                                    f"{err}") from None
            if table.name == "release_blobs":
                blobs[row["blob"]] = row["size"]
    finally:
        out.close()


async def _export_blob(store: BlobStore, sha256: str, size: int, writer: DumpWriter,
                       source: StoreLocation) -> None:
    try:
        blob = await store.open_blob(sha256)
    except StoreNotFound:
        raise TransferError(f"{source.describe()}: blob {sha256}, which a release refers to, "
                            "is missing") from None
    digest = hashlib.sha256()
    total = 0
    with blob, writer.blob_writer(sha256) as out:
        while chunk := blob.read(_CHUNK):
            digest.update(chunk)
            total += len(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if total != size or digest.hexdigest() != sha256:
        raise TransferError(f"{source.describe()}: blob {sha256} does not match its hash or "
                            f"its size ({size} bytes): the store is damaged")
    writer.added_blob(size)


# -- import ------------------------------------------------------------------------------------

async def import_dump(dump_path: Path, target: StoreLocation) -> DumpSummary:
    """Write the dump at `dump_path` into `target`, which must hold no row yet (a PostgreSQL
    database must be migrated first: `ota db migrate`). The dump is checked whole before
    anything is written; blobs are stored first, then every row in one transaction. Raises
    DumpError (a bad dump: nothing written), TransferError (a target in use, not empty, at
    another schema, or refusing a row: no row written) or StoreError."""
    dump = Dump(dump_path)
    if dump.schema_version != SCHEMA_VERSION:
        raise DumpError(f"{dump_path}: a dump of schema version {dump.schema_version}; this "
                        f"mpota imports version {SCHEMA_VERSION} (import it with the mpota "
                        "version that exported it)")
    summary, blobs = dump.check()
    with _data_dir_held(target):
        async with _writer(target) as writer:
            await writer.require_empty()
            async with _blob_store(target) as store:
                for sha256, size in blobs:
                    await _import_blob(store, dump, sha256, size)
            await writer.write_all(dump)
    return summary


async def _import_blob(store: BlobStore, dump: Dump, sha256: str, size: int) -> None:
    path = dump.blob_path(sha256)

    async def chunks() -> AsyncIterator[bytes]:
        with open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                yield chunk

    try:
        await store.put_stream(sha256, chunks(), max_bytes=size)
    except BlobError as err:
        raise DumpError(f"{path}: {err}") from None


def _not_empty(counts: dict[str, int], where: str) -> TransferError:
    held = ", ".join(f"{name}: {n}" for name, n in counts.items() if n)
    return TransferError(f"{where}: the database is not empty (rows in {held}); a dump is "
                         "imported only into a new one (a new data directory, or a new "
                         "PostgreSQL database set up with `ota db migrate`)")


# -- data directory --------------------------------------------------------------------------

@contextmanager
def _data_dir_held(location: StoreLocation) -> Iterator[None]:
    """Hold the data directory's lock (the one `ota serve` takes) when the location uses it:
    no server runs on it meanwhile, and none starts."""
    if not location.uses_data_dir:
        yield
        return
    assert location.data_dir is not None
    lock = DataDirLock(location.data_dir)
    try:
        lock.acquire()
    except DataDirInUse as err:
        raise TransferError(str(err)) from None
    try:
        yield
    finally:
        lock.release()


@asynccontextmanager
async def _blob_store(location: StoreLocation) -> AsyncIterator[BlobStore]:
    async with AsyncExitStack() as stack:
        store: BlobStore
        if location.blobs_url is None:
            assert location.data_dir is not None
            # Opening it empties blobs/tmp/ (uploads a crash cut short), as `ota serve` does at
            # start: safe, the data directory's lock is held (_data_dir_held).
            store = FileBlobStore(location.data_dir / BLOB_DIR)
        else:
            from ota_server.storage.s3 import S3BlobStore

            # A scratch cache holding one blob at a time: each is read once, through the
            # store's verified cache fill.
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="mpota-transfer-"))
            store = await S3BlobStore.open(location.blobs_url, Path(scratch), cache_max_bytes=0)
        stack.push_async_callback(store.close)
        yield store


# -- rows: reading -----------------------------------------------------------------------------

class _RowReader(Protocol):
    schema_version: int

    def rows(self, table: Table) -> AsyncIterator[dict[str, Any]]: ...


@asynccontextmanager
async def _reader(location: StoreLocation) -> AsyncIterator[_RowReader]:
    """A reader of one consistent snapshot of the location's metadata store."""
    if location.db_url is None:
        with _sqlite(location.db_path, read_only=True) as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            _require_schema(version, location, f"ota db migrate --data {location.data_dir}")
            db.execute("BEGIN")  # a read transaction: every table from one snapshot
            yield _SqliteReader(db, version)
        return
    async with _postgres(location) as conn, conn.transaction(isolation="repeatable_read",
                                                               readonly=True):
        version = await _pg_schema_version(conn)
        _require_schema(version, location, "ota db migrate --db URL")
        yield _PostgresReader(conn, version)


def _require_schema(found: int, location: StoreLocation, fix: str) -> None:
    if found != SCHEMA_VERSION:
        raise TransferError(f"{location.describe()}: schema version {found}, this mpota moves "
                            f"version {SCHEMA_VERSION}: run `{fix}` with this mpota first")


class _SqliteReader:
    def __init__(self, db: sqlite3.Connection, schema_version: int):
        self._db = db
        self.schema_version = schema_version

    async def rows(self, table: Table) -> AsyncIterator[dict[str, Any]]:
        names = table.column_names
        cursor = self._db.execute(
            f"SELECT {', '.join(names)} FROM {table.name} "  # noqa: S608 -- names from TABLES
            f"ORDER BY {', '.join(table.order_by)}")
        for values in cursor:
            yield {c.name: _from_sqlite(c.kind, v) for c, v in zip(table.columns, values,
                                                                   strict=True)}


def _from_sqlite(kind: Kind, value: Any) -> Any:
    """A column's value in its canonical form; a value of the wrong type is left as it is for
    dump.check_row to name."""
    if value is None:
        return None
    if kind in (Kind.TEXT_LIST, Kind.OBJECT) and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class _PostgresReader:
    def __init__(self, conn: asyncpg.Connection, schema_version: int):
        self._conn = conn
        self.schema_version = schema_version

    async def rows(self, table: Table) -> AsyncIterator[dict[str, Any]]:
        # Text keys ordered bytewise, as SQLite orders them: dumps of the same data are equal.
        kinds = {c.name: c.kind for c in table.columns}
        order = ", ".join(f'{k} COLLATE "C"' if kinds[k] is Kind.TEXT else k
                          for k in table.order_by)
        query = (f"SELECT {', '.join(table.column_names)} FROM {table.name} "  # noqa: S608
                 f"ORDER BY {order}")
        async for record in self._conn.cursor(query, prefetch=_PG_BATCH):
            yield {c.name: _from_postgres(c.kind, record[c.name]) for c in table.columns}


def _from_postgres(kind: Kind, value: Any) -> Any:
    if value is None:
        return None
    if kind is Kind.BYTES:
        return bytes(value)
    if kind is Kind.TEXT_LIST and isinstance(value, list | tuple):
        return list(value)
    return value


# -- rows: writing -----------------------------------------------------------------------------

class _RowWriter(Protocol):
    async def require_empty(self) -> None: ...

    async def write_all(self, dump: Dump) -> None: ...


@asynccontextmanager
async def _writer(location: StoreLocation) -> AsyncIterator[_RowWriter]:
    if location.db_url is None:
        from ota_server.storage.sqlite import SqliteStore

        # Opening the store creates the file and brings it to this code's schema, as
        # `ota serve` would; then the rows go in below the store, in one transaction.
        store = SqliteStore(location.db_path)
        await store.close()
        with _sqlite(location.db_path, read_only=False) as db:
            yield _SqliteWriter(db, location)
        return
    async with _postgres(location) as conn:
        version = await _pg_schema_version(conn)
        _require_schema(version, location, "ota db migrate --db URL")
        yield _PostgresWriter(conn, location)


class _SqliteWriter:
    def __init__(self, db: sqlite3.Connection, location: StoreLocation):
        self._db = db
        self._where = location.describe()

    def _counts(self) -> dict[str, int]:
        return {t.name: int(self._db.execute(
            f"SELECT COUNT(*) FROM {t.name}").fetchone()[0]) for t in TABLES}  # noqa: S608

    async def require_empty(self) -> None:
        counts = self._counts()
        if any(counts.values()):
            raise _not_empty(counts, self._where)

    async def write_all(self, dump: Dump) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            await self.require_empty()
            for table in TABLES:
                names = table.column_names
                self._db.executemany(
                    f"INSERT INTO {table.name} ({', '.join(names)}) "  # noqa: S608
                    f"VALUES ({', '.join('?' for _ in names)})",
                    (tuple(_to_sqlite(c.kind, row[c.name]) for c in table.columns)
                     for row in dump.rows(table)))
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            self._db.execute("ROLLBACK")
            raise TransferError(f"{self._where} refused the dump ({err}); nothing was "
                                "imported") from None
        except BaseException:
            self._db.execute("ROLLBACK")
            raise


def _to_sqlite(kind: Kind, value: Any) -> Any:
    if value is not None and kind in (Kind.TEXT_LIST, Kind.OBJECT):
        return json.dumps(value)  # as SqliteStore writes them
    return value


class _PostgresWriter:
    def __init__(self, conn: asyncpg.Connection, location: StoreLocation):
        self._conn = conn
        self._where = location.describe()

    async def _counts(self) -> dict[str, int]:
        return {t.name: int(await self._conn.fetchval(
            f"SELECT COUNT(*) FROM {t.name}")) for t in TABLES}  # noqa: S608

    async def require_empty(self) -> None:
        counts = await self._counts()
        if any(counts.values()):
            raise _not_empty(counts, self._where)

    async def write_all(self, dump: Dump) -> None:
        try:
            async with self._conn.transaction():
                # No replica writes between the check and the rows (one started by mistake
                # waits, then finds the imported rows).
                await self._conn.execute(
                    f"LOCK TABLE {', '.join(t.name for t in TABLES)} IN EXCLUSIVE MODE")
                await self.require_empty()
                for table in TABLES:
                    await self._insert(table, dump)
                    if table.identity is not None:
                        # The next generated id is one above the highest imported one.
                        await self._conn.execute(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', "  # noqa: S608
                            f"'{table.identity}'), COALESCE(MAX({table.identity}), 0) + 1, "
                            f"false) FROM {table.name}")
        except asyncpg.PostgresError as err:
            detail = f": {err.detail}" if getattr(err, "detail", None) else ""
            raise TransferError(f"{self._where} refused the dump ({type(err).__name__}: "
                                f"{err}{detail}); nothing was imported") from None

    async def _insert(self, table: Table, dump: Dump) -> None:
        names = table.column_names
        sql = (f"INSERT INTO {table.name} ({', '.join(names)}) "  # noqa: S608
               f"VALUES ({', '.join(f'${n}' for n in range(1, len(names) + 1))})")
        batch: list[tuple[Any, ...]] = []
        for row in dump.rows(table):
            batch.append(tuple(row[name] for name in names))
            if len(batch) >= _PG_BATCH:
                await self._conn.executemany(sql, batch)
                batch.clear()
        if batch:
            await self._conn.executemany(sql, batch)


# -- connections -------------------------------------------------------------------------------

@contextmanager
def _sqlite(path: Path, *, read_only: bool) -> Iterator[sqlite3.Connection]:
    try:
        if read_only:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as err:
        raise TransferError(f"cannot open {path}: {err}") from None
    try:
        yield db
    except sqlite3.Error as err:
        raise TransferError(f"{path}: {err}") from None
    finally:
        db.close()


@asynccontextmanager
async def _postgres(location: StoreLocation) -> AsyncIterator[asyncpg.Connection]:
    """One connection to the location's database, JSONB read and written as Python values;
    driver errors become TransferError (never showing the URL: it may hold the password)."""
    assert location.db_url is not None
    try:
        conn = await asyncpg.connect(location.db_url, timeout=PG_CONNECT_TIMEOUT)
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                                  schema="pg_catalog")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as err:
        raise TransferError(f"{location.describe()}: cannot connect: "
                            f"{type(err).__name__}: {err}") from None
    try:
        yield conn
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as err:
        raise TransferError(f"{location.describe()}: {type(err).__name__}: {err}") from None
    finally:
        await conn.close(timeout=PG_CONNECT_TIMEOUT)


async def _pg_schema_version(conn: asyncpg.Connection) -> int:
    """The version `ota db migrate` reached (ota_server.storage.postgres.PostgresStore.migrate);
    0 for a database it never ran on."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return 0
    return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))
