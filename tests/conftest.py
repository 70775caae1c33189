"""Shared fixtures: the real MicroPython unix port that board code is tested on."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from browser_support import browser, screenshots  # noqa: F401 -- the dashboard's browser fixtures

from tools.micropython import (
    MicroPythonNotFound,
    find_micropython,
    find_micropython_32bit,
    micropython_version,
)


def _locate(find: Callable[[], str]) -> tuple[str | None, str]:
    try:
        path = find()
    except MicroPythonNotFound as err:
        return None, str(err)
    return path, micropython_version(path)


_FINDERS: dict[str, Callable[[], str]] = {"64-bit": find_micropython,
                                          "32-bit": find_micropython_32bit}
_FOUND: dict[str, tuple[str | None, str]] = {}


def _found(port: str) -> tuple[str | None, str]:
    if port not in _FOUND:
        _FOUND[port] = _locate(_FINDERS[port])
    return _FOUND[port]


def _port(port: str) -> str:
    """The interpreter of `port`, located (and for the 32-bit one fetched) on first use; a
    missing one fails the test, never skips it."""
    path, version = _found(port)
    if path is None:
        pytest.fail(version, pytrace=False)
    return path


def _board_port() -> str:
    """The port board code runs on (the `micropython` fixture): $MPOTA_BOARD_PORT, "64-bit"
    (the host's, the default) or "32-bit" (the i386 build, the word size of the ESP32 and RP2;
    `make test` runs the board tests a second time on it)."""
    port = os.environ.get("MPOTA_BOARD_PORT", "64-bit")
    if port not in _FINDERS:
        raise pytest.UsageError(f"MPOTA_BOARD_PORT is {port!r}: use one of {', '.join(_FINDERS)}")
    return port


def pytest_report_header(config: pytest.Config) -> str:
    port = _board_port()
    path, version = _found(port)
    return f"micropython ({port}, board code): {path} ({version})"


@pytest.fixture(scope="session")
def micropython() -> str:
    """Path of the MicroPython interpreter board code runs on ($MPOTA_BOARD_PORT)."""
    return _port(_board_port())


@pytest.fixture(scope="session")
def micropython64() -> str:
    """The 64-bit port, for tests that compare the two word sizes."""
    return _port("64-bit")


@pytest.fixture(scope="session")
def micropython32() -> str:
    """The 32-bit port (the boards' word size), for heap bounds that are the boards' own."""
    return _port("32-bit")


# Every server test runs on both storage backends, so that the embedded default and the
# scale-out path cannot drift apart: a test asking for `backend` (directly or through `env`)
# runs once on "sqlite" (the data directory) and once on "postgres" (PostgreSQL + S3), unless
# it is marked `sqlite_only(reason)` because it is about SQLite or the directory itself.
BACKENDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): the test is about the embedded SQLite file or blob "
                   "directory itself; run it on the sqlite backend only")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked sqlite_only runs on the sqlite backend alone: its postgres variant is
    deselected. The marker must say why."""
    keep, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None and not (marker.kwargs.get("reason") or marker.args):
            raise pytest.UsageError(f"{item.nodeid}: sqlite_only needs a reason")
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("backend") == "postgres"
        (dropped if marker is not None and on_postgres else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Any:
    """The storage a test's server runs on (tests/server_support.py Backend): "sqlite", or
    "postgres" with a fresh migrated database (a copy of the session's template) and a fresh
    S3 bucket (keys in the environment)."""
    from server_support import SQLITE, Backend

    if request.param == "sqlite":
        return SQLITE
    return Backend("postgres", db_url=request.getfixturevalue("pg_migrated"),
                   blobs_url=request.getfixturevalue("s3_url"))


@pytest.fixture
async def env(aiohttp_client: Any, tmp_path: Path, backend: Any) -> Any:
    """The server under pytest-aiohttp with a fresh fleet on `backend`
    (tests/server_support.py)."""
    from server_support import start_env

    return await start_env(aiohttp_client, tmp_path, backend)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every blob file the server opens from now on, from the directory or the S3 store's
    cache (to check that each one gets closed)."""
    from ota_server.storage.blobs import FileBlobStore
    from ota_server.storage.s3 import S3BlobStore

    files: list[Any] = []

    def recorder(real: Any) -> Any:
        async def recording(self: Any, sha256: str) -> Any:
            fobj = await real(self, sha256)
            files.append(fobj)
            return fobj

        return recording

    for store in (FileBlobStore, S3BlobStore):
        monkeypatch.setattr(store, "open_blob", recorder(store.open_blob))
    return files


# The scale-out components (PostgreSQL, SeaweedFS), started lazily once per session.
from cluster_support import (  # noqa: E402, F401
    pg_databases,
    pg_dsn,
    pg_migrated,
    postgres_server,
    s3_buckets,
    s3_url,
    seaweed,
)
