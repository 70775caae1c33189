"""The data directory's lock: one `ota serve` per embedded data directory.

A server clears `blobs/tmp/` and `DIR/workers/` at start and checkpoints the SQLite WAL; a
second server on the same directory would delete the first one's uploads in progress. So
`ota serve` takes an exclusive lock on `DIR/serve.lock` for its whole life (with `--workers N`,
its supervisor takes it and every worker holds a copy of the descriptor: ota_server.workers).
The kernel releases the lock when the last process holding it ends, however it ends (kill -9
included), so a crash never leaves a directory locked. CLI commands that open the store
briefly (`ota tokens`) need no lock: SQLite serialises their writes with the server's.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "serve.lock"
# What the workers of one `ota serve --workers N` share besides the store: each one's saved
# metrics (ota_server.metrics), emptied by their supervisor at start (ota_server.workers).
WORKERS_DIR = "workers"


class DataDirInUse(Exception):
    """Another process holds the data directory; the message names it and its pid."""


class DataDirLock:
    """An exclusive, process-lifetime lock on a data directory (flock on DIR/serve.lock)."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DataDirInUse at once (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise DataDirInUse(
                f"data directory {self.path.parent} is in use by another ota serve{who}; "
                "stop it first, or give this one its own --data") from None
        except BaseException:
            os.close(fd)
            raise
        # Who holds it, for the next one's message; the lock, not this number, is the truth.
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        self._fd = fd

    def fileno(self) -> int:
        """The locked file's descriptor: a duplicate of it (a worker's, ota_server.workers)
        shares the lock, which then holds until every holder has closed it."""
        if self._fd is None:
            raise RuntimeError("the data directory lock is not held")
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).strip() or b"0") or None
    except (OSError, ValueError):
        return None
