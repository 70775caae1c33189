"""Session fixtures for the scale-out components: a real PostgreSQL server and a real SeaweedFS
S3 gateway on 127.0.0.1 (tools/cluster). Each starts at most once per test session, and only
when a test asks for it; each test gets its own empty database or bucket on them."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedS3]:
    """One SeaweedFS server with its S3 gateway for the whole session."""
    with SeaweedS3() as server:
        yield server


@pytest.fixture
def s3_url(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """The `s3://` URL of a new, empty bucket; the gateway's keys are in the environment."""
    for name, value in seaweed.credentials_env().items():
        monkeypatch.setenv(name, value)
    return seaweed.create_bucket(f"t-{secrets.token_hex(6)}")


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
