"""SQLite WAL checkpoints from a thread of their own, off the server's event loop.

The embedded store runs its SQLite calls on the event loop (ota_server.storage.sqlite). With
SQLite's default `wal_autocheckpoint`, the commit that takes the WAL past 1000 pages also copies
the WAL into the database file and syncs it, there on the loop: at figure S3's rate (1,700
check-ins a second) that is a stall of the whole server every fraction of a second
(docs/benchmarks.md, S3). The server's connection therefore checkpoints never
(`wal_autocheckpoint=0`) and a WalCheckpointer does it every `interval` seconds on its own
connection, in a thread: SQLite runs without Python's GIL (the sqlite3 module releases it
around every step), so the copy and the sync overlap the loop's work instead of stopping it.

PASSIVE checkpoints never wait for a lock and never make a writer wait: they copy what no
reader still needs, and the next writer starts the WAL over once everything was copied, so the
WAL stays about one interval of writes long. What a checkpoint does not copy stays in the WAL,
as durable as before: checkpoints move data, they never decide what is committed.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("ota_server")

DEFAULT_INTERVAL_S = 1.0


class WalCheckpointer:
    """A thread that checkpoints `path`'s WAL every `interval` seconds until closed."""

    def __init__(self, path: Path, interval: float = DEFAULT_INTERVAL_S):
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoint",
                                        daemon=True)
        self.checkpoints = 0  # passes run (tests read it)
        self._thread.start()

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(self._interval):
                self.checkpoint(db)
        finally:
            db.close()

    def checkpoint(self, db: sqlite3.Connection) -> None:
        """One PASSIVE checkpoint; a failure is logged and the next pass tries again (the WAL
        only grows meanwhile, nothing is lost)."""
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
        except sqlite3.Error as err:
            log.warning("WAL checkpoint of %s failed: %s", self._path.name, err)

    def close(self) -> None:
        """Stop the thread and wait for its pass in progress (the store closes after this,
        and its own close checkpoints what is left)."""
        self._stop.set()
        self._thread.join()
