"""Session fixtures for the scale-out components: a real PostgreSQL server and a real SeaweedFS
S3 gateway on 127.0.0.1 (tools/cluster). Each starts at most once per test session, and only
when a test asks for it; each test gets its own empty database or bucket on them."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from typing import Any

import pytest

from tools.cluster.postgres import PostgresServer
from tools.cluster.seaweed import SeaweedS3


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server (a private cluster in a temp dir) for the whole session."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    if not postgres_server.running:  # a test that stopped it failed before starting it again
        postgres_server.start()
    return postgres_server.create_database(f"t_{secrets.token_hex(6)}")


class Databases:
    """New databases on the session's PostgreSQL server, each a copy of a template migrated
    once to this code's schema (CREATE DATABASE ... TEMPLATE copies the files: much faster
    than migrating each). The statements go over connections kept open on an event loop in a
    thread of this object's own (a fixture may be set up while a test's loop is running);
    a database is dropped in the background after its test is done."""

    def __init__(self, server: PostgresServer):
        self.server = server
        self.template = f"mpota_template_{secrets.token_hex(4)}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="pg-databases")
        self._thread.start()
        self._connections: dict[str, Any] = {}  # purpose -> asyncpg connection
        self._finished: list[str] = []  # databases of finished tests, dropped later
        self._next: Future[str] | None = None  # the next test's database, being made
        self._dropping: list[Future[None]] = []
        self._call(self._execute("create", f'CREATE DATABASE "{self.template}"'))
        self._call(_migrate(server.dsn(self.template)))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(120)

    async def _execute(self, purpose: str, sql: str) -> None:
        """`sql` on the `postgres` database over this purpose's connection, connecting again
        once if the server was restarted under it (a test stops and starts it)."""
        import asyncpg

        for attempt in (1, 2):
            conn = self._connections.get(purpose)
            try:
                if conn is None or conn.is_closed():
                    conn = self._connections[purpose] = await asyncpg.connect(
                        self.server.dsn("postgres"))
                await conn.execute(sql)
                return
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
                self._connections.pop(purpose, None)
                if attempt == 2:
                    raise

    def create(self) -> str:
        """The URL of a new database at this code's schema. The next test's is made in the
        background meanwhile (a copy costs about 0.1 s, while the test runs)."""
        if not self.server.running:  # a test that stopped it failed before starting it again
            self.server.start()
        self._drop_finished()
        made, self._next = self._next, None
        name = None
        if made is not None:
            with suppress(Exception):  # made before a restart of the server, or cut by one
                name = made.result(120)
        if name is None:
            name = self._call(self._copy())
        self._next = asyncio.run_coroutine_threadsafe(self._copy(), self._loop)
        return self.server.dsn(name)

    async def _copy(self) -> str:
        name = f"t_{secrets.token_hex(6)}"
        await self._execute("create", f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    def drop_later(self, url: str) -> None:
        """Drop the database of `url` once the next test asks for one, in the background:
        not now, since the test's server may still write to it while it shuts down (its
        fixtures are torn down in any order)."""
        self._finished.append(url.rsplit("/", 1)[-1])

    def _drop_finished(self) -> None:
        self._dropping = [f for f in self._dropping if not f.done()]
        for name in self._finished:
            self._dropping.append(asyncio.run_coroutine_threadsafe(
                self._execute("drop", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'),
                self._loop))
        self._finished = []

    def close(self) -> None:
        if self._next is not None:
            self._dropping.append(self._next)  # type: ignore[arg-type]
        for pending in self._dropping:
            with suppress(Exception):  # the server's directory goes away with the session
                pending.result(30)
        for conn in self._connections.values():
            with suppress(Exception):
                self._call(conn.close(timeout=5))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _migrate(dsn: str) -> None:
    from ota_server.storage.postgres import PostgresStore

    store = await PostgresStore.open(dsn)
    try:
        await store.migrate()
    finally:
        await store.close()  # a template may have no connection left open


@pytest.fixture(scope="session")
def pg_databases(postgres_server: PostgresServer) -> Iterator[Databases]:
    """The factory of migrated databases (one template per session)."""
    databases = Databases(postgres_server)
    yield databases
    databases.close()


@pytest.fixture
def pg_migrated(pg_databases: Databases) -> Iterator[str]:
    """The URL of a new database already at this code's schema, as `ota db migrate` would
    leave it; dropped after the test."""
    url = pg_databases.create()
    yield url
    pg_databases.drop_later(url)


@contextmanager
def backend_of(kind: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A server_support.Backend of `kind` for a fixture of any scope (the `backend` fixture
    is per test): "postgres" gets a new migrated database and an empty bucket, whose keys are
    in the environment until the block ends."""
    from server_support import SQLITE, Backend

    if kind == "sqlite":
        yield SQLITE
        return
    databases: Databases = request.getfixturevalue("pg_databases")
    buckets: Buckets = request.getfixturevalue("s3_buckets")
    db_url = databases.create()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in buckets.server.credentials_env().items():
            patch.setenv(name, value)
        bucket = buckets.take()
        try:
            yield Backend("postgres", db_url=db_url, blobs_url=buckets.server.url(bucket))
        finally:
            buckets.give_back(bucket)
            databases.drop_later(db_url)


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedS3]:
    """One SeaweedFS server with its S3 gateway for the whole session."""
    with SeaweedS3() as server:
        yield server


class Buckets:
    """Empty buckets on the session's SeaweedFS, used again once emptied: SeaweedFS gives each
    bucket volumes of its own (at most -volume.max in all, and growing the first one costs
    a fifth of a second), so a session running every server test on S3 must not make a new
    bucket for each. One S3 client serves them all."""

    def __init__(self, server: SeaweedS3):
        self.server = server
        self._client = server.client()
        self._free: list[str] = []

    def take(self) -> str:
        """The name of an empty bucket."""
        if self._free:
            return self._free.pop()
        bucket = f"t-{secrets.token_hex(6)}"
        self._client.create_bucket(Bucket=bucket)
        return bucket

    def give_back(self, bucket: str) -> None:
        """Empty `bucket` (objects and unfinished uploads) and keep it for another test;
        delete it instead if it cannot be emptied."""
        client = self._client
        try:
            for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                              UploadId=upload["UploadId"])
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            left = client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0)
        except Exception:
            left = 1
        if left:
            with suppress(Exception):
                client.delete_bucket(Bucket=bucket)
            return
        self._free.append(bucket)

    def close(self) -> None:
        self._client.close()


@pytest.fixture(scope="session")
def s3_buckets(seaweed: SeaweedS3) -> Iterator[Buckets]:
    buckets = Buckets(seaweed)
    yield buckets
    buckets.close()


@pytest.fixture
def s3_url(s3_buckets: Buckets, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The `s3://` URL of an empty bucket; the gateway's keys are in the environment."""
    for name, value in s3_buckets.server.credentials_env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_buckets.take()
    yield s3_buckets.server.url(bucket)
    s3_buckets.give_back(bucket)


async def open_store(kind: str, location: str) -> Any:
    """A metadata store of `kind` ("sqlite": a file path; "postgres": a database URL, migrated
    here as `ota db migrate` would) opened in the running event loop."""
    if kind == "sqlite":
        from pathlib import Path

        from ota_server.storage.sqlite import SqliteStore

        return SqliteStore(Path(location))
    from ota_server.storage.postgres import PostgresStore

    store = await PostgresStore.open(location)
    await store.migrate()
    return store
