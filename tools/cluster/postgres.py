"""A private PostgreSQL server for tests, benchmarks and the cluster demo.

The Debian `postgresql` package provides the programs (`make test` installs it when missing);
this module runs them without touching the system's clusters: `initdb` makes a new cluster in a
temporary directory, `postgres` serves it on 127.0.0.1 and a unix socket in that directory, with
password (SCRAM) authentication for one role. initdb and postgres refuse to run as root, so when
this process is root they run as the unprivileged `nobody`, which then owns the directory.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any

from tools.cluster import ComponentError, log_tail, stop_process, wait_until
from tools.local_server import free_port

START_TIMEOUT = 30.0
UNPRIVILEGED_USER = "nobody"
# Debian's own major version for bookworm; another installed major version is used if not.
PREFERRED_MAJOR = "15"
_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def postgres_bindir() -> Path:
    """The directory of initdb, postgres, pg_isready and psql; ComponentError if PostgreSQL is
    not installed (`make test` installs Debian's `postgresql` package)."""
    base = Path("/usr/lib/postgresql")
    candidates = [base / PREFERRED_MAJOR / "bin"]
    if base.is_dir():
        candidates += sorted((p / "bin" for p in base.iterdir() if p.name.isdigit()),
                             key=lambda p: int(p.parent.name), reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "postgres").exists():
            return bindir
    raise ComponentError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                         "run `make test` or `apt-get install postgresql`")


def _drop_privileges() -> dict[str, Any]:
    """Popen arguments that run a child as the unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class PostgresServer:
    """One PostgreSQL server with a private cluster, on 127.0.0.1:`port`.

    `with PostgresServer() as pg:` makes the cluster, starts the server and waits until it
    accepts connections; leaving the block stops it and deletes the directory. `stop()` and
    `start()` may be called inside the block (a restart keeps the data and the port).
    """

    def __init__(self, *, role: str = "mpota", settings: dict[str, str] | None = None):
        self.role = role
        self.password = secrets.token_urlsafe(18)
        self.port = free_port()
        self.bindir = postgres_bindir()
        # Test settings: no fsync (the cluster is thrown away), small memory, quiet log.
        self.settings = {"fsync": "off", "full_page_writes": "off", "shared_buffers": "32MB",
                         "max_connections": "100", "log_min_messages": "warning",
                         **(settings or {})}
        self.workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- addresses ----------------------------------------------------------------------------

    def dsn(self, database: str = "postgres") -> str:
        """A libpq / asyncpg URL for `database` with this server's role and password."""
        return f"postgresql://{self.role}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "postgres.log"

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> PostgresServer:
        self.workdir = Path(tempfile.mkdtemp(prefix="mpota-pg-"))
        try:
            self._initdb()
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _initdb(self) -> None:
        assert self.workdir is not None
        privileges = _drop_privileges()
        if privileges:
            os.chown(self.workdir, privileges["user"], privileges["group"])
        self.workdir.chmod(0o700)
        password_file = self.workdir / "password"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        if privileges:
            os.chown(password_file, privileges["user"], privileges["group"])
        result = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.workdir / "data"), "-U", self.role,
             "--auth=scram-sha-256", f"--pwfile={password_file}", "--encoding=UTF8",
             "--no-locale", "--no-sync"],
            capture_output=True, cwd=self.workdir, timeout=120, check=False, **privileges)
        password_file.unlink()
        if result.returncode != 0:
            raise ComponentError("initdb failed: "
                                 + (result.stderr or result.stdout).decode(errors="replace"))

    def start(self) -> None:
        """Start the server on its port and wait until it accepts connections."""
        assert self.workdir is not None
        if self._process is not None and self._process.poll() is None:
            return
        options = [f"-c{key}={value}" for key, value in self.settings.items()]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- lives as long as the process
        self._process = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.workdir / "data"),
             "-c", "listen_addresses=127.0.0.1", "-p", str(self.port),
             "-k", str(self.workdir), *options],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.workdir, **_drop_privileges())
        wait_until(self._accepting, START_TIMEOUT, "postgres", self._process, self.log_path)

    def _accepting(self) -> bool:
        result = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
             "-t", "1"], capture_output=True, timeout=10, check=False)
        return result.returncode == 0

    def stop(self) -> None:
        """PostgreSQL's fast shutdown (SIGINT: clients are disconnected, the data is kept)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                stop_process(self._process)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- databases ----------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL (each test gets its own)."""
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name must match {_DATABASE_NAME.pattern}, got {name!r}")
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def psql(self, database: str, sql: str) -> str:
        """Run `sql` with psql (the server's own client) and return what it printed."""
        env = {**os.environ, "PGPASSWORD": self.password}
        result = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", self.role, "-d", database,
             "-c", sql], capture_output=True, env=env, timeout=60, check=False)
        if result.returncode != 0:
            raise ComponentError(f"psql failed: {result.stderr.decode(errors='replace')}; "
                                 f"server log: {log_tail(self.log_path)}")
        return result.stdout.decode()
