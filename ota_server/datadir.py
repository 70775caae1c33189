"""The data directory's lock: one `ota serve` per embedded data directory.

The embedded backend keeps caches in the process (rollouts, bases, the trust anchor's newest
root, replay counters reserved in blocks) and clears `blobs/tmp/` at start; a second process on
the same directory would act on stale caches and delete the first one's uploads in progress.
So `ota serve` takes an exclusive lock on `DIR/serve.lock` for its whole life. The kernel
releases the lock when the process ends, however it ends (kill -9 included), so a crash never
leaves a directory locked. CLI commands that open the store briefly (`ota tokens`) need no
lock: SQLite serialises their writes with the server's.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "serve.lock"


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

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).strip() or b"0") or None
    except (OSError, ValueError):
        return None
