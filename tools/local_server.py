"""`ota serve` as a real subprocess on 127.0.0.1, for tests, the demo and benchmarks.

    with LocalServer(data_dir, root_json) as srv:
        srv.client().publish(bundle_dir, channel="stable", percent=100)
        srv.kill(); srv.restart()          # crash tests

A publisher token is created in the data directory before the first start; the server's
output goes to `<data_dir>/server.log`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from tools.api_client import ApiClient
from tools.micropython import PROJECT_ROOT

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class LocalServerError(RuntimeError):
    """The server did not come up (the message carries the tail of its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free right now on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class LocalServer:
    """Start, stop, kill and restart one `ota serve` process bound to 127.0.0.1."""

    def __init__(self, data_dir: Path | str, root_json: Path | str, *,
                 port: int | None = None, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None, publisher: str = "local",
                 tls_dir: Path | None = None, db_url: str | None = None,
                 blobs_url: str | None = None):
        """`tls_dir`: serve https with the certificate `ota tls init` made there (server.pem,
        server.key; clients trust its ca.pem). `db_url`, `blobs_url`: PostgreSQL (already
        migrated: `ota db migrate`) and an S3 bucket (keys in `env`) instead of the data
        directory's SQLite file and blobs/ (docs/operations.md, "Scale-out")."""
        self.data_dir = Path(data_dir)
        self.root_json = Path(root_json)
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        # A port we chose may be taken by another process between free_port() and the
        # server's bind (a busy test machine): the first start then tries another one.
        self._port_chosen = port is None
        self._started = False
        self.extra_args = list(extra_args)
        self._env = env
        self._publisher = publisher
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        self.db_url = db_url
        self.blobs_url = blobs_url
        self._token: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_dir else 'http'}://{self.host}:{self.port}"

    @property
    def ca_path(self) -> Path | None:
        """The CA the server's certificate chains to (None: plain http)."""
        return None if self.tls_dir is None else self.tls_dir / "ca.pem"

    @property
    def token(self) -> str:
        if self._token is None:
            raise LocalServerError("the server has not been started yet")
        return self._token

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def client(self) -> ApiClient:
        return ApiClient(self.url, self.token, ca=self.ca_path)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> LocalServer:
        """Start the process and wait until /healthz answers; raises LocalServerError."""
        if self._process is not None and self._process.poll() is None:
            return self
        for attempt in range(3):
            try:
                self._start_once()
            except LocalServerError as err:
                if (not self._port_chosen or self._started or attempt == 2
                        or "address already in use" not in str(err)):
                    raise
                self.port = free_port(self.host)
                continue
            self._started = True
            break
        return self

    def _start_once(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._token is None:
            self._token = _create_token(self.data_dir, self._publisher, self.db_url)
        command = [sys.executable, "-m", "tools.cli", "serve", "--data", str(self.data_dir),
                   "--root", str(self.root_json), "--host", self.host, "--port", str(self.port),
                   *self.extra_args]
        if self.db_url is not None:
            command += ["--db", self.db_url]
        if self.blobs_url is not None:
            command += ["--blobs", self.blobs_url]
        if self.tls_dir is not None:
            command += ["--tls-cert", str(self.tls_dir / "server.pem"),
                        "--tls-key", str(self.tls_dir / "server.key")]
        env = dict(os.environ if self._env is None else self._env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                          env.get("PYTHONPATH")]))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- lives as long as the process
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=PROJECT_ROOT)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        assert self._process is not None
        context = None if self.ca_path is None else ssl.create_default_context(
            cafile=str(self.ca_path))
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._close_log()
                raise LocalServerError(f"ota serve exited with {self._process.returncode}:\n"
                                       f"{self._log_tail()}")
            try:
                health = self.url + "/healthz"  # always http(s)://127.0.0.1:port
                with urllib.request.urlopen(health, timeout=1,  # noqa: S310
                                            context=context) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.kill()
        raise LocalServerError(f"ota serve did not answer /healthz within {STARTUP_TIMEOUT}s:\n"
                               f"{self._log_tail()}")

    def reload_tls(self) -> None:
        """SIGHUP: the server loads its certificate and key again."""
        if self._process is not None:
            self._process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """SIGTERM and wait for a clean exit (SIGKILL if it does not come)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        self._close_log()

    def kill(self) -> None:
        """SIGKILL, as a power cut or an OOM kill would: no clean-up runs."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process = None
        self._close_log()

    def restart(self) -> LocalServer:
        self.stop()
        return self.start()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _create_token(data_dir: Path, name: str, db_url: str | None = None) -> str:
    # In-process, before the server runs: one writer, and the token never crosses a pipe.
    from ota_server.app import open_metadata_store
    from ota_server.settings import Settings
    from ota_server.tokens import create_token

    async def create() -> str:
        store = await open_metadata_store(Settings(data_dir=data_dir, db_url=db_url))
        try:
            return await create_token(store, name)
        finally:
            await store.close()

    return asyncio.run(create())
