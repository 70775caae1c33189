"""Shared fixtures: the real MicroPython unix port that board code is tested on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tools.micropython import MicroPythonNotFound, find_micropython, micropython_version


def _locate() -> tuple[str | None, str]:
    try:
        path = find_micropython()
    except MicroPythonNotFound as err:
        return None, str(err)
    return path, micropython_version(path)


_MICROPYTHON, _MP_VERSION = _locate()


def pytest_report_header(config: pytest.Config) -> str:
    return f"micropython: {_MICROPYTHON} ({_MP_VERSION})"


@pytest.fixture(scope="session")
def micropython() -> str:
    """Path of the MicroPython interpreter; a missing one fails the test, never skips it."""
    if _MICROPYTHON is None:
        pytest.fail(_MP_VERSION, pytrace=False)
    return _MICROPYTHON


@pytest.fixture
async def env(aiohttp_client: Any, tmp_path: Path) -> Any:
    """The server under pytest-aiohttp with a fresh fleet (tests/server_support.py)."""
    from server_support import start_env

    return await start_env(aiohttp_client, tmp_path)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every blob file the server opens from now on (to check that each one gets closed)."""
    from ota_server.storage.blobs import FileBlobStore

    files: list[Any] = []
    real = FileBlobStore.open_blob

    def recording(self: FileBlobStore, sha256: str) -> Any:
        fobj = real(self, sha256)
        files.append(fobj)
        return fobj

    monkeypatch.setattr(FileBlobStore, "open_blob", recording)
    return files
