"""The embedded metadata store: one SQLite file in WAL mode with versioned migrations.

Its operations are the async MetadataStore protocol (ota_server.storage), as PostgresStore's
are, but each one runs its SQLite calls at once on the event loop and never yields: the calls
are short (indexed lookups, one small transaction each), and on one machine that is cheaper
than a thread hop per request (figures S1-S3, docs/benchmarks.md). Every write is one
transaction (a single statement in autocommit mode is one), so a crash leaves either all of a
change or none of it. SQLite's exceptions never leave the store: they become the store's own
(ota_server.storage.errors).

Several worker processes of one `ota serve` share the file, each with its own connection
(and the CLI's local commands open it briefly), so nothing mutable is kept unchecked, as on
PostgreSQL (docs/operations.md, "Process-local state"):

- releases are kept by id; their one field that changes, `yanked` (once), is read along with
  every query that names a release, and `release_by_id` reads it again until it is set;
- a channel's rollout and base release are kept with the fleet epoch they were read at
  (migrations/0009_fleet_epoch.sql: triggers move it in the transaction of every change to
  rollouts, base releases and yanks); every counter statement returns the epoch it saw, and a
  board request is answered from the copy only when that copy is at least as new; a call
  without an epoch (publishers, dashboard) reads the epoch first. Writes through this object
  drop its copies as well;
- read-then-write is one `BEGIN IMMEDIATE` transaction (SQLite's write lock, taken at BEGIN,
  so another process's writes wait for it; `busy_timeout`) or one conditional statement;
- a root stored by another process is noticed by polling the newest root version
  (`watch_roots`, ROOT_POLL_SECONDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ota_server.storage.errors import (
    StoreBusy,
    StoreConflict,
    StoreError,
    StoreNotFound,
    StoreUnavailable,
)
from ota_server.storage.fleet_view import (
    BOARD_STATUSES,
    MAX_PAGE,
    STATUS_SQL,
    BoardDeployment,
    BoardFilter,
    FleetCounts,
)
from ota_server.storage.records import (
    HISTORY_PER_DEVICE,
    INVENTORY_FIELDS,
    Advances,
    AuditEntry,
    BoardIdentity,
    Deployment,
    DeploymentCounts,
    Device,
    HistoryEntry,
    Release,
    Rollout,
    Token,
    UiSession,
    inventory_fields,
)
from ota_server.storage.wal_checkpoint import WalCheckpointer

# The replay check and the write are one statement: it matches only a smaller stored counter
# of a board that is not revoked, and returns the fleet epoch the statement saw (no row:
# refused). A write statement reads the newest commit (WAL), so the epoch is at least that of
# every change committed before it (migrations/0009_fleet_epoch.sql).
_ADVANCE_COUNTER = ("UPDATE devices SET counter = ?, last_seen = ? "
                    "WHERE device_id = ? AND counter < ? AND revoked IS NULL "
                    "RETURNING (SELECT epoch FROM fleet_epoch)")
_EPOCH = "SELECT epoch FROM fleet_epoch"
# A rollout with its release's `yanked`, the one field of a kept release that can change.
_ROLLOUT_SELECT = ("SELECT ro.*, r.yanked AS release_yanked FROM rollouts ro "
                   "JOIN releases r ON r.id = ro.release_id")
# A channel as a check-in needs it, in one statement (one read snapshot): the fleet epoch, the
# current rollout with its release's `yanked`, the base release id with its `yanked`. One row
# whatever the channel holds.
_CHANNEL_VIEW = (
    "SELECT (SELECT epoch FROM fleet_epoch) AS epoch, ro.*, r.yanked AS release_yanked, "
    "c.base_release_id, b.yanked AS base_yanked FROM (SELECT ? AS name) AS ch "
    "LEFT JOIN rollouts ro ON ro.id = (SELECT id FROM rollouts WHERE channel = ch.name "
    "AND state != 'superseded' ORDER BY id DESC LIMIT 1) "
    "LEFT JOIN releases r ON r.id = ro.release_id "
    "LEFT JOIN channels c ON c.name = ch.name "
    "LEFT JOIN releases b ON b.id = c.base_release_id")
# How long a statement waits for another connection's lock (other worker processes, the CLI).
BUSY_TIMEOUT_S = 5.0
# How often watch_roots looks for a root another process stored (the check-in's hint lags by
# at most this; uploads read the newest root themselves).
ROOT_POLL_SECONDS = 1.0
log = logging.getLogger("ota_server")
_RELEASE_COLUMNS = "id, app, version, sequence, boards, created, expires, yanked, signers"
# A check-in's offer, with the channel that made it (the report rules count per channel):
# recorded unless the board already has a deployment of the release.
_OFFER = ("INSERT INTO deployments (device_id, release_id, status, updated, channel) "
          "VALUES (?, ?, 'offered', ?, ?) ON CONFLICT(device_id, release_id) DO NOTHING")
# A board's identity, in BoardIdentity's order.
_IDENTITY_BY_ID = ("SELECT device_id, public_key, board, tags, channel, bucket FROM devices "
                   "WHERE device_id = ?")
_DEVICE_COLUMNS = ("device_id, public_key, board, tags, channel, bucket, counter, created, "
                   "revoked, " + ", ".join(INVENTORY_FIELDS))


def _migrations() -> list[tuple[int, str]]:
    """The migration scripts shipped with the package, as (version, sql), in order."""
    folder = resources.files("ota_server.storage") / "migrations"
    out = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(out)


def _statements(script: str) -> list[str]:
    """The statements of a migration script, one by one (a trigger's body stays whole):
    executescript() would commit the transaction the migration runs in first."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending)
            pending = ""
    if any(line.strip() and not line.lstrip().startswith("--")
           for line in pending.splitlines()):
        raise ValueError(f"migration script ends in an unfinished statement: {pending!r}")
    return out


def _use_wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (which the file keeps: only its first opening switches it).
    Processes opening a new file together can each hold the lock the other one needs for the
    switch; SQLite answers that with "locked" at once, not after busy_timeout, and one of
    them switches: so try again for as long as busy_timeout would have waited."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
        else:
            if str(mode).lower() == "wal":
                return
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"database stays in {mode} mode, not wal")
        time.sleep(0.01)


def _now() -> int:
    return int(time.time())


def _fill_release_expiry(db: sqlite3.Connection) -> None:
    """Migration 2's data step: each release's expiry, read from its stored envelope.

    Every stored envelope verified when it was registered, so it parses; one that does not is
    a damaged database, and the migration stops (MalformedError) with nothing changed.
    """
    from signing.dsse import parse_envelope
    from signing.manifest import MANIFEST_PAYLOAD_TYPE, Manifest

    rows = db.execute("SELECT id, envelope FROM releases WHERE expires IS NULL").fetchall()
    for row in rows:
        payload = parse_envelope(bytes(row[1]), MANIFEST_PAYLOAD_TYPE).payload
        db.execute("UPDATE releases SET expires = ? WHERE id = ?",
                   (Manifest.from_payload(payload).expires, row[0]))


def _fill_release_signers(db: sqlite3.Connection) -> None:
    """Migration 3's data step: each release's signer key ids, the ones its stored envelope's
    signatures name (deduplicated, in order). A release registered from version 3 on records
    only the key ids whose signature verified against the server's root."""
    from signing.dsse import parse_envelope
    from signing.manifest import MANIFEST_PAYLOAD_TYPE

    for row in db.execute("SELECT id, envelope FROM releases").fetchall():
        envelope = parse_envelope(bytes(row[1]), MANIFEST_PAYLOAD_TYPE)
        keyids = list(dict.fromkeys(sig.keyid for sig in envelope.signatures))
        db.execute("UPDATE releases SET signers = ? WHERE id = ?", (json.dumps(keyids), row[0]))


# What SQL cannot do in a migration (decode an envelope), run in the same transaction.
_DATA_STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {
    2: _fill_release_expiry, 3: _fill_release_signers}


class SqliteStore:
    """MetadataStore on one SQLite database file."""

    def __init__(self, path: Path, *,
                 checkpoints: Literal["sqlite", "thread", "elsewhere"] = "sqlite"):
        """Open (and migrate) the database at `path`. `checkpoints`: who checkpoints the WAL;
        "thread": the server's store, checkpointed by a thread of its own instead of on the
        event loop (ota_server.storage.wal_checkpoint); "elsewhere": a worker's store, whose
        supervisor runs that thread (ota_server.workers); "sqlite": short-lived CLI stores
        keep SQLite's own."""
        # Immutable once registered but for `yanked`, which is read along with every query
        # that names a release (release_by_id, _release_yanked_at).
        self._releases: dict[int, Release] = {}
        # channel -> (fleet epoch, current rollout, base release), read in one statement.
        self._channels: dict[str, tuple[int, Rollout | None, Release | None]] = {}
        self._root_polls: list[asyncio.Task[None]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        # First: worker processes opening the file together wait for each other's locks
        # (migrating, writing) instead of failing at once.
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000:.0f}")
        _use_wal(self._db)
        # NORMAL in WAL mode: a power cut can lose the last commits but never corrupts the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._checkpointer: WalCheckpointer | None = None
        if checkpoints != "sqlite":
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        if checkpoints == "thread":
            self._checkpointer = WalCheckpointer(path)

    # -- plumbing -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        for version, sql in _migrations():
            if version <= self._schema_version():
                continue
            # One script and its data step, one transaction: a crash mid-migration leaves the
            # old schema.
            try:
                self._db.execute("BEGIN IMMEDIATE")
                # Read again under the write lock: a worker process opening the file at the
                # same time may have applied this version while this one waited for the lock.
                if version <= self._schema_version():
                    self._db.execute("COMMIT")
                    continue
                for statement in _statements(sql):
                    self._db.execute(statement)
                step = _DATA_STEPS.get(version)
                if step is not None:
                    step(self._db)
                self._db.execute(f"PRAGMA user_version={version:d}")
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def lock_waits_off(self) -> Iterator[None]:
        """Within it, an operation that finds the write lock held by another process fails at
        once (StoreBusy, nothing written) instead of waiting up to BUSY_TIMEOUT_S in SQLite's
        busy handler, which sleeps (1, 2, 5 … ms) with the whole event loop stopped. For the
        group commits of board requests (ota_server.counters), which retry on the loop
        instead, so the worker's other requests go on meanwhile. The operations never yield,
        so nothing else runs with the setting off."""
        self._db.execute("PRAGMA busy_timeout=0")
        try:
            yield
        finally:
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000:.0f}")

    def _schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    async def schema_version(self) -> int:
        return self._schema_version()

    async def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    async def close(self) -> None:
        for task in self._root_polls:
            task.cancel()
        await asyncio.gather(*self._root_polls, return_exceptions=True)
        self._root_polls.clear()
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._db.close()

    # -- tokens -------------------------------------------------------------------------------

    async def create_token(self, name: str, token_hash: str, scope: str) -> int:
        with self._tx():
            cur = self._db.execute(
                "INSERT INTO tokens (name, token_hash, created, scope) VALUES (?, ?, ?, ?)",
                (name, token_hash, _now(), scope))
        return int(cur.lastrowid or 0)

    async def revoke_token(self, name: str) -> int:
        with self._tx():
            cur = self._db.execute(
                "UPDATE tokens SET revoked = ? WHERE name = ? AND revoked IS NULL", (_now(), name))
        return cur.rowcount

    async def list_tokens(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, name, scope, created, revoked FROM tokens ORDER BY id")
        return [dict(row) for row in rows]

    async def token(self, token_hash: str) -> Token | None:
        """The valid (not revoked) token with this hash, if any."""
        row = self._db.execute(
            "SELECT name, scope FROM tokens WHERE token_hash = ? AND revoked IS NULL",
            (token_hash,)).fetchone()
        return None if row is None else Token(name=str(row[0]), scope=str(row[1]))

    # -- audit --------------------------------------------------------------------------------

    async def add_audit(self, entry: AuditEntry) -> None:
        self._db.execute(
            "INSERT INTO audit (at, actor, scope, action, target, status, outcome) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry.at, entry.actor, entry.scope, entry.action, entry.target, entry.status,
             entry.outcome))

    async def list_audit(self, limit: int, actor: str | None = None) -> list[AuditEntry]:
        """The newest `limit` entries (of `actor` when given), oldest first."""
        rows = self._db.execute(
            "SELECT * FROM (SELECT id, at, actor, scope, action, target, status, outcome "
            "FROM audit WHERE (? IS NULL OR actor = ?) ORDER BY id DESC LIMIT ?) ORDER BY id",
            (actor, actor, limit)).fetchall()
        return [AuditEntry(id=int(r["id"]), at=int(r["at"]), actor=r["actor"], scope=r["scope"],
                           action=r["action"], target=r["target"], status=int(r["status"]),
                           outcome=r["outcome"]) for r in rows]

    # -- dashboard sessions -------------------------------------------------------------------

    async def add_ui_session(self, session: UiSession) -> None:
        """Store a new session; StoreConflict when its id hash is stored already."""
        self._db.execute(
            "INSERT INTO ui_sessions (id_hash, token_hash, csrf, actor, scope, created, seen, "
            "flash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (session.id_hash, session.token_hash, session.csrf, session.actor, session.scope,
             session.created, session.seen, json.dumps(list(session.flash))))

    async def ui_session(self, id_hash: str) -> UiSession | None:
        row = self._db.execute(
            "SELECT id_hash, token_hash, csrf, actor, scope, created, seen, flash "
            "FROM ui_sessions WHERE id_hash = ?", (id_hash,)).fetchone()
        return None if row is None else UiSession(
            id_hash=row[0], token_hash=row[1], csrf=row[2], actor=row[3], scope=row[4],
            created=float(row[5]), seen=float(row[6]), flash=tuple(json.loads(row[7])))

    async def touch_ui_session(self, id_hash: str, seen: float) -> None:
        """Move the session's last request time forward (never back)."""
        self._db.execute("UPDATE ui_sessions SET seen = ? WHERE id_hash = ? AND seen < ?",
                         (seen, id_hash, seen))

    async def set_ui_session_flash(self, id_hash: str, flash: Sequence[str]) -> None:
        self._db.execute("UPDATE ui_sessions SET flash = ? WHERE id_hash = ?",
                         (json.dumps(list(flash)), id_hash))

    async def end_ui_session(self, id_hash: str) -> None:
        self._db.execute("DELETE FROM ui_sessions WHERE id_hash = ?", (id_hash,))

    async def prune_ui_sessions(self, created_before: float, seen_before: float,
                                keep: int) -> int:
        """Delete the sessions created before `created_before` or last seen before
        `seen_before`, then all but the `keep` newest; the number deleted."""
        with self._tx():
            gone = self._db.execute(
                "DELETE FROM ui_sessions WHERE created < ? OR seen < ?",
                (created_before, seen_before)).rowcount
            gone += self._db.execute(
                "DELETE FROM ui_sessions WHERE id_hash IN (SELECT id_hash FROM ui_sessions "
                "ORDER BY created DESC, id_hash LIMIT -1 OFFSET ?)", (keep,)).rowcount
        return gone

    # -- roots --------------------------------------------------------------------------------

    async def roots(self) -> list[tuple[int, bytes]]:
        rows = self._db.execute("SELECT version, envelope FROM roots ORDER BY version")
        return [(int(r["version"]), bytes(r["envelope"])) for r in rows]

    async def add_root(self, version: int, envelope: bytes) -> None:
        with self._tx():
            self._db.execute("INSERT INTO roots (version, envelope, created) VALUES (?, ?, ?)",
                             (version, envelope, _now()))

    async def watch_roots(self, changed: Callable[[], None]) -> None:
        """Call `changed()` on this event loop once (a root stored between the caller's own
        read of the roots and this watch), then whenever a root version newer than the last
        one seen appears in the file (stored by another worker process, or this one), until
        close(): a poll of the newest version every ROOT_POLL_SECONDS (SQLite has no
        notifications; the query reads one index entry). Returns at once."""
        seen = self._newest_root()
        self._root_polls.append(asyncio.get_running_loop().create_task(
            self._poll_roots(changed, seen)))

    def _newest_root(self) -> int:
        row = self._db.execute("SELECT MAX(version) FROM roots").fetchone()
        return 0 if row[0] is None else int(row[0])

    @staticmethod
    def _root_changed(changed: Callable[[], None]) -> None:
        try:
            changed()
        except Exception:  # the poll goes on: the next root calls again
            log.exception("root poll: the callback failed")

    async def _poll_roots(self, changed: Callable[[], None], seen: int) -> None:
        """The watch's task: never raises (a failed poll is logged and tried again)."""
        self._root_changed(changed)
        while True:
            await asyncio.sleep(ROOT_POLL_SECONDS)
            try:
                newest = self._newest_root()
            except sqlite3.Error as err:
                # Locked past busy_timeout, say: the hint waits for the next poll.
                log.warning("root poll: %s; polling again in %.0fs", _translate(err),
                            ROOT_POLL_SECONDS)
                continue
            if newest > seen:
                seen = newest
                self._root_changed(changed)

    # -- releases -----------------------------------------------------------------------------

    async def max_sequence(self, app: str) -> int | None:
        row = self._db.execute(
            "SELECT MAX(sequence) FROM releases WHERE app = ?", (app,)).fetchone()
        return None if row[0] is None else int(row[0])

    async def reserve_sequence(self, app: str, version: str, floor: int = 1) -> tuple[int, bool]:
        """The sequence of `version` of `app`, and whether that release is registered.

        A registered version answers its own sequence; a version reserved before, the same
        reservation (a retried publish); any other version gets a new reservation: `floor`,
        or one above every registered and reserved sequence of the app if that is more. One
        transaction: two publishers asking together get two different sequences.
        """
        with self._tx():
            row = self._db.execute(
                "SELECT sequence FROM releases WHERE app = ? AND version = ? "
                "AND duplicate_of IS NULL", (app, version)).fetchone()
            if row is not None:
                return int(row[0]), True
            row = self._db.execute(
                "SELECT sequence FROM sequence_reservations WHERE app = ? AND version = ?",
                (app, version)).fetchone()
            if row is not None:
                return int(row[0]), False
            top = self._db.execute(
                "SELECT MAX(s) FROM (SELECT MAX(sequence) AS s FROM releases WHERE app = ? "
                "UNION ALL SELECT MAX(sequence) FROM sequence_reservations WHERE app = ?)",
                (app, app)).fetchone()[0]
            sequence = floor if top is None else max(floor, int(top) + 1)
            self._db.execute(
                "INSERT INTO sequence_reservations (app, version, sequence, created) "
                "VALUES (?, ?, ?, ?)", (app, version, sequence, _now()))
        return sequence, False

    async def reserved_version(self, app: str, sequence: int) -> str | None:
        """The version holding a reservation of `sequence`, if one does."""
        row = self._db.execute(
            "SELECT version FROM sequence_reservations WHERE app = ? AND sequence = ?",
            (app, sequence)).fetchone()
        return None if row is None else str(row[0])

    async def add_release(self, app: str, version: str, sequence: int, boards: Sequence[str],
                          envelope: bytes, blobs: Sequence[tuple[str, int]], expires: int,
                          signers: Sequence[str] = ()) -> Release:
        """Register a release and spend the version's reservation; raises
        StoreConflict when the sequence or the version is taken."""
        with self._tx():
            cur = self._db.execute(
                "INSERT INTO releases (app, version, sequence, boards, envelope, created, "
                "expires, signers) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (app, version, sequence, json.dumps(list(boards)), envelope, _now(), expires,
                 json.dumps(list(signers))))
            release_id = int(cur.lastrowid or 0)
            self._db.executemany(
                "INSERT OR IGNORE INTO release_blobs (release_id, blob, size) VALUES (?, ?, ?)",
                [(release_id, blob, size) for blob, size in blobs])
            self._db.execute("DELETE FROM sequence_reservations WHERE app = ? AND version = ?",
                             (app, version))
        found = self._release_by_id(release_id)
        assert found is not None
        return found

    def _release(self, row: sqlite3.Row | None) -> Release | None:
        if row is None:
            return None
        blobs = tuple(r[0] for r in self._db.execute(
            "SELECT blob FROM release_blobs WHERE release_id = ? ORDER BY blob", (row["id"],)))
        return Release(id=int(row["id"]), app=row["app"], version=row["version"],
                       sequence=int(row["sequence"]), boards=tuple(json.loads(row["boards"])),
                       created=int(row["created"]), expires=int(row["expires"]), blobs=blobs,
                       yanked=None if row["yanked"] is None else int(row["yanked"]),
                       signers=tuple(json.loads(row["signers"])))

    async def release(self, app: str, sequence: int) -> Release | None:
        return self._release(self._db.execute(
            f"SELECT {_RELEASE_COLUMNS} FROM releases "  # noqa: S608
            "WHERE app = ? AND sequence = ?", (app, sequence)).fetchone())

    async def release_by_version(self, app: str, version: str) -> Release | None:
        """The release that `version` of `app` names (never a pre-v2 duplicate)."""
        return self._release(self._db.execute(
            f"SELECT {_RELEASE_COLUMNS} FROM releases "  # noqa: S608
            "WHERE app = ? AND version = ? AND duplicate_of IS NULL",
            (app, version)).fetchone())

    async def release_by_id(self, release_id: int) -> Release | None:
        """The release of that id as stored now. A kept release is returned as it is only
        once it is yanked: `yanked` is the one field that changes, once, and another process
        may have set it since this one kept the release (then only `yanked` is read)."""
        cached = self._releases.get(release_id)
        if cached is None or cached.yanked is not None:
            return self._release_by_id(release_id)
        row = self._db.execute("SELECT yanked FROM releases WHERE id = ?",
                               (release_id,)).fetchone()
        return None if row is None else self._release_yanked_at(release_id, row[0])

    def _release_by_id(self, release_id: int) -> Release | None:
        """The release of that id, from this process's copy when there is one (its `yanked`
        as this process last saw it: callers that need it now read it, _release_yanked_at)."""
        cached = self._releases.get(release_id)
        if cached is not None:
            return cached
        found = self._release(self._db.execute(
            f"SELECT {_RELEASE_COLUMNS} FROM releases WHERE id = ?",  # noqa: S608
            (release_id,)).fetchone())
        if found is not None:
            self._releases[release_id] = found
        return found

    def _release_yanked_at(self, release_id: int, yanked: int | None) -> Release:
        """The release of that id with the `yanked` its row showed in the query that named it
        (a join on releases): from this process's copy without a query of its own, yet never
        without a yank another process made and this one did not see."""
        found = self._release_by_id(release_id)
        if found is None:
            raise StoreNotFound(f"no release with id {release_id}")
        if found.yanked is None and yanked is not None:
            found = self._releases[release_id] = replace(found, yanked=int(yanked))
        return found

    async def envelope(self, release_id: int) -> bytes:
        row = self._db.execute("SELECT envelope FROM releases WHERE id = ?", (release_id,))
        return bytes(row.fetchone()[0])

    async def list_releases(self, app: str | None = None) -> list[Release]:
        sql = f"SELECT {_RELEASE_COLUMNS} FROM releases"  # noqa: S608
        args: tuple[Any, ...] = ()
        if app is not None:
            sql += " WHERE app = ?"
            args = (app,)
        rows = self._db.execute(sql + " ORDER BY app, sequence", args).fetchall()
        return [r for r in (self._release(row) for row in rows) if r is not None]

    async def yank_release(self, release_id: int) -> Release:
        """Mark the release yanked (offered to no board from now on); a release yanked before
        keeps its first time. Raises StoreNotFound for an unknown id."""
        with self._tx():
            self._db.execute("UPDATE releases SET yanked = ? WHERE id = ? AND yanked IS NULL",
                             (_now(), release_id))
        # The one change a release ever sees: drop it, and the rollouts and bases holding it
        # (a yank moves the fleet epoch too, for the other processes' copies).
        self._releases.pop(release_id, None)
        self._forget_channels()
        found = self._release_by_id(release_id)
        if found is None:
            raise StoreNotFound(f"no release with id {release_id}")
        return found

    async def release_blob_refs(self) -> list[str]:
        """Every blob any release refers to (the crash-consistency check uses it)."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT blob FROM release_blobs")]

    # -- devices ------------------------------------------------------------------------------

    async def add_device(self, device_id: str, public_key: bytes, board: str, tags: Iterable[str],
                         channel: str, bucket: int) -> Device:
        with self._tx():
            self._db.execute(
                "INSERT INTO devices (device_id, public_key, board, tags, channel, bucket, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device_id, public_key, board, json.dumps(sorted(set(tags))), channel, bucket,
                 _now()))
        found = self._device(self._db.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = ?",  # noqa: S608
            (device_id,)).fetchone())
        assert found is not None
        return found

    @staticmethod
    def _device(row: sqlite3.Row | None) -> Device | None:
        if row is None:
            return None
        inventory = {k: row[k] for k in INVENTORY_FIELDS}
        return Device(device_id=row["device_id"], public_key=bytes(row["public_key"]),
                      board=row["board"], tags=tuple(json.loads(row["tags"])),
                      channel=row["channel"], bucket=int(row["bucket"]),
                      counter=int(row["counter"]), created=int(row["created"]),
                      revoked=row["revoked"], inventory=inventory)

    async def device(self, device_id: str) -> Device | None:
        return self._device(self._db.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = ?",  # noqa: S608
            (device_id,)).fetchone())

    async def board_identity(self, device_id: str) -> BoardIdentity | None:
        row = self._db.execute(_IDENTITY_BY_ID, (device_id,)).fetchone()
        if row is None:
            return None
        return BoardIdentity(row[0], bytes(row[1]), row[2], tuple(json.loads(row[3])), row[4],
                             int(row[5]))

    async def list_devices(self) -> list[Device]:
        rows = self._db.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY device_id")  # noqa: S608
        return [d for d in (self._device(r) for r in rows) if d is not None]

    async def count_eligible(self, channel: str, tags: Sequence[str], bucket_limit: float) -> int:
        """Active boards of `channel` with one of `tags` or a bucket below `bucket_limit`."""
        marks = ", ".join("?" for _ in tags) or "NULL"  # placeholders only, never values
        sql = ("SELECT COUNT(*) FROM devices WHERE channel = ? AND revoked IS NULL AND "  # noqa: S608
               "(bucket < ? OR EXISTS (SELECT 1 FROM json_each(devices.tags) "
               f"WHERE value IN ({marks})))")
        row = self._db.execute(sql, (channel, bucket_limit, *tags)).fetchone()
        return int(row[0])

    async def revoke_device(self, device_id: str) -> bool:
        cur = self._db.execute(
            "UPDATE devices SET revoked = ? WHERE device_id = ? AND revoked IS NULL",
            (_now(), device_id))
        return cur.rowcount == 1

    async def advance_counter(self, device_id: str, counter: int) -> bool:
        """Accept `counter` only if it is greater than the last one and the board is not
        revoked (and mark the board seen); one statement, so two requests racing with the same
        counter cannot both pass, through one process or two."""
        return self._advance_each([(device_id, counter)], _now())[0]

    async def advance_counters(self, advances: Sequence[tuple[str, int]]) -> Advances:
        """advance_counter for each pair in order, in one transaction: one commit (the cost
        of a counter write) for the lot; either all of them are durable or none is. With the
        newest fleet epoch the statements saw (current_rollout). One pair is one statement,
        without BEGIN / COMMIT (an autocommitted statement is its own transaction)."""
        now = _now()
        if len(advances) == 1:
            return self._advance_each(advances, now)
        with self._tx():
            return self._advance_each(advances, now)

    def _advance_each(self, advances: Sequence[tuple[str, int]], now: int) -> Advances:
        """The advances one statement each, in order: the outcomes and the newest epoch seen
        (None when none was accepted). fetchall(): the statement runs to its end, so an
        autocommitted one is committed when this returns. A plain loop: it runs for
        every board request, and comprehensions plus max() cost it ~0.6 us more."""
        outcomes = Advances()
        for device_id, counter in advances:
            rows = self._db.execute(_ADVANCE_COUNTER, (counter, now, device_id, counter)).fetchall()
            outcomes.append(bool(rows))
            if rows and (outcomes.epoch is None or rows[0][0] > outcomes.epoch):
                outcomes.epoch = int(rows[0][0])
        return outcomes

    async def write_checkins(self, inventories: Sequence[tuple[str, dict[str, Any]]],
                             offers: Sequence[tuple[str, int, str]],
                             advances: Sequence[tuple[str, int]] = ()) -> Advances:
        """In one transaction: record_checkin for each (device_id, inventory) in order, mark
        each (device_id, release_id, channel) of `offers` offered unless the board already has a
        deployment of it, then advance_counter for each of `advances` in order; the outcomes
        of the advances. Either all of it is durable or none is."""
        now = _now()
        with self._tx():
            for device_id, inventory in inventories:
                self._record_checkin(device_id, inventory)
            self._db.executemany(_OFFER, [(device_id, release_id, now, channel)
                                          for device_id, release_id, channel in offers])
            return self._advance_each(advances, now)

    async def record_checkin(self, device_id: str, inventory: dict[str, Any]) -> None:
        self._record_checkin(device_id, inventory)

    def _record_checkin(self, device_id: str, inventory: dict[str, Any]) -> None:
        """Write the board's inventory fields; with a request counter (RECORDS_COUNTER), only
        over the records of an older request (records.inventory_fields)."""
        fields, counter = inventory_fields(inventory)
        if not fields:
            return
        assigns = ", ".join(f"{k} = ?" for k in fields)
        if counter is None:
            self._db.execute(f"UPDATE devices SET {assigns} WHERE device_id = ?",  # noqa: S608
                             (*fields.values(), device_id))
            return
        self._db.execute(f"UPDATE devices SET {assigns}, records_counter = ? "  # noqa: S608
                         "WHERE device_id = ? AND records_counter <= ?",
                         (*fields.values(), counter, device_id, counter))

    # -- channels and rollouts ----------------------------------------------------------------

    async def base_release(self, channel: str, *, epoch: int | None = None) -> Release | None:
        """The channel's base release; `epoch` as current_rollout's."""
        return self._channel_view(channel, epoch)[2]

    def _forget_channels(self) -> None:
        """Drop this process's copies of channels (after a write through it: its own next
        reads need not wait for a request with a newer epoch)."""
        self._channels.clear()

    async def set_base_release(self, channel: str, release_id: int) -> None:
        self._forget_channels()
        with self._tx():
            self._db.execute(
                "INSERT INTO channels (name, base_release_id) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET base_release_id = excluded.base_release_id",
                (channel, release_id))

    def _rollout(self, row: sqlite3.Row | None) -> Rollout | None:
        """The rollout of a _ROLLOUT_SELECT (or _CHANNEL_VIEW) row, its release's `yanked` as
        that row saw it."""
        if row is None:
            return None
        release = self._release_yanked_at(int(row["release_id"]), row["release_yanked"])
        return Rollout(id=int(row["id"]), channel=row["channel"], release=release,
                       policy=json.loads(row["policy"]), stage=int(row["stage"]),
                       state=row["state"], reason=row["reason"], created=int(row["created"]),
                       updated=int(row["updated"]))

    async def current_rollout(self, channel: str, *, epoch: int | None = None) -> Rollout | None:
        """The channel's newest rollout that is not superseded. With `epoch` (the fleet epoch a
        board request's counter statement saw), from this process's copy of the channel if
        that copy was read at that epoch or a later one: every change a rollout, base or yank
        makes moves the epoch in its own transaction, so such a copy holds every change
        committed before the request's counter was; else the channel is read again (one
        statement, with the base release and the epoch). Without `epoch`, as new as the
        epoch read now (one small query; the copy when nothing changed since)."""
        return self._channel_view(channel, epoch)[1]

    def _channel_view(self, channel: str,
                      epoch: int | None) -> tuple[int, Rollout | None, Release | None]:
        """The kept (epoch, rollout, base) of `channel` if read at `epoch` (the current one
        when None) or later, else the one read now (and kept)."""
        if epoch is None:
            epoch = int(self._db.execute(_EPOCH).fetchone()[0])
        view = self._channels.get(channel)
        if view is not None and view[0] >= epoch:
            return view
        row = self._db.execute(_CHANNEL_VIEW, (channel,)).fetchone()
        rollout = None if row["id"] is None else self._rollout(row)
        base = None if row["base_release_id"] is None else self._release_yanked_at(
            int(row["base_release_id"]), row["base_yanked"])
        # Nothing yields between the read and here, so no newer copy was kept meanwhile.
        view = self._channels[channel] = (int(row["epoch"]), rollout, base)
        return view

    async def start_rollout(self, channel: str, release_id: int, policy: dict[str, Any], *,
                            base_release_id: int | None = None,
                            replaces: int | None = None) -> Rollout:
        """In one transaction: check that the channel's current rollout is still `replaces`
        (None: it has none), set its base release to `base_release_id` when given, supersede
        its rollouts and start one of `release_id` at stage 0. StoreConflict, nothing
        written, when the current rollout is another one (two processes starting rollouts
        together: one wins, BEGIN IMMEDIATE runs them one after the other)."""
        self._forget_channels()
        now = _now()
        with self._tx():
            current = self._db.execute(
                "SELECT id FROM rollouts WHERE channel = ? AND state != 'superseded' "
                "ORDER BY id DESC LIMIT 1", (channel,)).fetchone()
            if (None if current is None else int(current[0])) != replaces:
                raise StoreConflict(f"channel {channel!r}: the current rollout is not "
                                    f"{replaces}")
            self._db.execute("INSERT OR IGNORE INTO channels (name) VALUES (?)", (channel,))
            if base_release_id is not None:
                self._db.execute("UPDATE channels SET base_release_id = ? WHERE name = ?",
                                 (base_release_id, channel))
            self._db.execute(
                "UPDATE rollouts SET state = 'superseded', updated = ? "
                "WHERE channel = ? AND state != 'superseded'", (now, channel))
            cur = self._db.execute(
                "INSERT INTO rollouts (channel, release_id, policy, stage, state, created, updated)"
                " VALUES (?, ?, ?, 0, 'active', ?, ?)",
                (channel, release_id, json.dumps(policy), now, now))
            # Read in the transaction: the rollout as started, not as another process may
            # have moved it a moment later.
            found = self._rollout(self._db.execute(
                f"{_ROLLOUT_SELECT} WHERE ro.id = ?", (cur.lastrowid,)).fetchone())
        assert found is not None
        return found

    async def rollout(self, rollout_id: int) -> Rollout | None:
        return self._rollout(self._db.execute(
            f"{_ROLLOUT_SELECT} WHERE ro.id = ?", (rollout_id,)).fetchone())

    async def update_rollout(self, rollout_id: int, *, stage: int | None = None,
                             state: str | None = None, reason: str | None = None,
                             expect_stage: int | None = None,
                             expect_state: str | None = None) -> bool:
        """Set the given fields of the rollout, only if it is still at `expect_stage` and in
        `expect_state` (when given): one conditional statement. True when it changed."""
        self._forget_channels()
        with self._tx():
            cur = self._db.execute(
                "UPDATE rollouts SET stage = COALESCE(?, stage), state = COALESCE(?, state), "
                "reason = COALESCE(?, reason), updated = ? WHERE id = ? "
                "AND (? IS NULL OR stage = ?) AND (? IS NULL OR state = ?)",
                (stage, state, reason, _now(), rollout_id, expect_stage, expect_stage,
                 expect_state, expect_state))
        return cur.rowcount == 1

    async def list_channels(self) -> list[str]:
        rows = self._db.execute(
            "SELECT name FROM channels UNION SELECT channel FROM devices ORDER BY 1")
        return [r[0] for r in rows]

    async def board_counts(self) -> dict[str, int]:
        """Boards not revoked, per channel (channels without one are absent)."""
        rows = self._db.execute(
            "SELECT channel, COUNT(*) FROM devices WHERE revoked IS NULL GROUP BY channel")
        return {str(r[0]): int(r[1]) for r in rows}

    async def rollouts_of(self, release_id: int) -> list[Rollout]:
        """The active or paused rollouts of the release, one per channel at most."""
        rows = self._db.execute(
            f"{_ROLLOUT_SELECT} WHERE ro.release_id = ? "
            "AND ro.state IN ('active', 'paused') ORDER BY ro.channel", (release_id,)).fetchall()
        return [r for r in (self._rollout(row) for row in rows) if r is not None]

    # -- deployments --------------------------------------------------------------------------

    async def deployment_status(self, device_id: str, release_id: int) -> str | None:
        row = self._db.execute(
            "SELECT status FROM deployments WHERE device_id = ? AND release_id = ?",
            (device_id, release_id)).fetchone()
        return None if row is None else str(row[0])

    async def deployment(self, device_id: str, release_id: int) -> Deployment | None:
        row = self._db.execute(
            "SELECT status, channel FROM deployments WHERE device_id = ? AND release_id = ?",
            (device_id, release_id)).fetchone()
        return None if row is None else Deployment(
            device_id=device_id, release_id=release_id, status=str(row[0]),
            channel=str(row[1]))

    async def open_deployment_for(self, device_id: str, release_id: int, channel: str) -> None:
        """Record that `channel` offered the release to the board (status `offered`); a
        deployment already open stays as it is."""
        self._db.execute(
            "INSERT OR IGNORE INTO deployments (device_id, release_id, status, updated, channel) "
            "VALUES (?, ?, 'offered', ?, ?)", (device_id, release_id, _now(), channel))

    async def open_deployments_for(self, offers: Sequence[tuple[str, int, str]]) -> None:
        """open_deployment_for each (device_id, release_id, channel), in one transaction."""
        now = _now()
        with self._tx():
            self._db.executemany(_OFFER, [(device_id, release_id, now, channel)
                                          for device_id, release_id, channel in offers])

    async def set_deployment(self, device_id: str, release_id: int, status: str,
                             reason: str | None = None, *,
                             inventory: dict[str, Any] | None = None) -> bool:
        """Move an open deployment to `status` and add the move to the board's history, and
        overwrite the board's `inventory` fields when given (record_checkin), in one
        transaction; False (nothing written) when the server never opened one for this board
        and release. The same status and reason again is no new event: only the inventory is
        written. The history keeps the board's newest HISTORY_PER_DEVICE rows."""
        now = _now()
        with self._tx():
            row = self._db.execute(
                "SELECT status, reason FROM deployments WHERE device_id = ? AND release_id = ?",
                (device_id, release_id)).fetchone()
            if row is None:
                return False
            if inventory:
                self._record_checkin(device_id, inventory)
            if (row[0], row[1]) == (status, reason):
                return True  # the same report again (delivery is at least once): no new event
            self._db.execute(
                "UPDATE deployments SET status = ?, reason = ?, updated = ? "
                "WHERE device_id = ? AND release_id = ?",
                (status, reason, now, device_id, release_id))
            self._db.execute(
                "INSERT INTO deployment_history (device_id, release_id, status, reason, at) "
                "VALUES (?, ?, ?, ?, ?)", (device_id, release_id, status, reason, now))
            # Bounded per board: a board reporting in a loop cannot grow the table.
            self._db.execute(
                "DELETE FROM deployment_history WHERE device_id = ? AND id <= "
                "(SELECT id FROM deployment_history WHERE device_id = ? "
                "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (device_id, device_id, HISTORY_PER_DEVICE))
        return True

    async def device_history(self, device_id: str) -> list[HistoryEntry]:
        rows = self._db.execute(
            "SELECT r.app, r.version, r.sequence, h.status, h.reason, h.at "
            "FROM deployment_history h JOIN releases r ON r.id = h.release_id "
            "WHERE h.device_id = ? ORDER BY h.id", (device_id,))
        return [HistoryEntry(app=str(r[0]), version=str(r[1]), sequence=int(r[2]),
                             status=str(r[3]), reason=r[4], at=int(r[5])) for r in rows]

    async def deployment_counts(self, release_id: int, channel: str) -> DeploymentCounts:
        """Boards by deployment status for the release, among deployments `channel` opened:
        the tallies the triggers of migrations/0008 keep, at most six rows read whatever the
        size of the rollout."""
        rows = self._db.execute(
            "SELECT status, boards FROM deployment_tallies WHERE release_id = ? AND channel = ?",
            (release_id, channel))
        return DeploymentCounts(**{str(r[0]): int(r[1]) for r in rows})

    async def open_deployment(self, device_id: str, app: str | None) -> int | None:
        """The release id of the device's newest unfinished deployment of `app` (of any app
        when None), if any."""
        row = self._db.execute(
            "SELECT d.release_id FROM deployments d JOIN releases r ON r.id = d.release_id "
            "WHERE d.device_id = ? AND (? IS NULL OR r.app = ?) "
            "AND d.status IN ('offered', 'downloading', 'installed') "
            "ORDER BY r.sequence DESC LIMIT 1",
            (device_id, app, app)).fetchone()
        return None if row is None else int(row[0])

    # -- the dashboard (ota_server/ui): read-only views, paged on the server ------------------

    async def fleet_counts(self, silent_before: int) -> FleetCounts:
        """Boards by version, by channel and by status (fleet_view.STATUS_SQL with
        `silent_before` as the silence cutoff)."""
        by_version = [(r[0], r[1], int(r[2])) for r in self._db.execute(
            "SELECT app, version, COUNT(*) FROM devices GROUP BY app, version "
            "ORDER BY 3 DESC, 1, 2")]
        by_channel = [(str(r[0]), int(r[1])) for r in self._db.execute(
            "SELECT channel, COUNT(*) FROM devices GROUP BY channel ORDER BY 2 DESC, 1")]
        by_status = dict.fromkeys(BOARD_STATUSES, 0)
        for row in self._db.execute(
                f"SELECT {STATUS_SQL}, COUNT(*) FROM devices GROUP BY 1",  # noqa: S608
                {"cutoff": silent_before}):
            by_status[str(row[0])] = int(row[1])
        return FleetCounts(total=sum(by_status.values()), by_version=by_version,
                           by_channel=by_channel, by_status=by_status)

    async def board_page(self, board_filter: BoardFilter, *, after: str | None = None,
                         before: str | None = None, limit: int = 50) -> list[tuple[Device, str]]:
        """Up to `limit` boards matching the filter, with their status, in device id order:
        the first ones after `after`, or the last ones before `before` (keyset paging on
        the primary key, so a page costs the same at board 0 and at board 99,999)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"board page: limit must be 1 to {MAX_PAGE}, not {limit}")
        where, args = board_filter.where()
        order = "ASC"
        if after is not None:
            where += " AND device_id > :key"
            args["key"] = after
        elif before is not None:
            where += " AND device_id < :key"
            args["key"] = before
            order = "DESC"
        args["limit"] = limit
        rows = self._db.execute(
            f"SELECT {_DEVICE_COLUMNS}, {STATUS_SQL} AS status FROM devices "  # noqa: S608
            f"WHERE {where} ORDER BY device_id {order} LIMIT :limit", args).fetchall()
        if order == "DESC":
            rows.reverse()
        out = []
        for row in rows:
            found = self._device(row)
            assert found is not None
            out.append((found, str(row["status"])))
        return out

    async def count_boards(self, board_filter: BoardFilter) -> int:
        """How many boards match the filter."""
        where, args = board_filter.where()
        row = self._db.execute(
            f"SELECT COUNT(*) FROM devices WHERE {where}", args).fetchone()  # noqa: S608
        return int(row[0])

    async def board_statuses(self, device_ids: Sequence[str], silent_before: int) -> dict[str, str]:
        """The status of each known board among `device_ids` (at most MAX_PAGE of them)."""
        if len(device_ids) > MAX_PAGE:
            raise ValueError(f"board statuses: at most {MAX_PAGE} ids, not {len(device_ids)}")
        if not device_ids:
            return {}
        marks = ", ".join(f":id{i}" for i in range(len(device_ids)))  # names, never values
        args: dict[str, Any] = {f"id{i}": d for i, d in enumerate(device_ids)}
        args["cutoff"] = silent_before
        rows = self._db.execute(
            f"SELECT device_id, {STATUS_SQL} FROM devices "  # noqa: S608
            f"WHERE device_id IN ({marks})", args)
        return {str(r[0]): str(r[1]) for r in rows}

    async def board_deployments(self, device_id: str, limit: int = 50) -> list[BoardDeployment]:
        """The board's deployments, newest release first: each one's latest status and
        reason."""
        rows = self._db.execute(
            "SELECT d.release_id, r.app, r.version, r.sequence, d.status, d.reason, d.channel, "
            "d.updated FROM deployments d JOIN releases r ON r.id = d.release_id "
            "WHERE d.device_id = ? ORDER BY r.sequence DESC, d.release_id DESC LIMIT ?",
            (device_id, limit))
        return [BoardDeployment(release_id=int(r[0]), app=r[1], version=r[2],
                                sequence=int(r[3]), status=r[4], reason=r[5], channel=r[6],
                                updated=int(r[7])) for r in rows]

    async def board_versions(self) -> list[str]:
        """Every app version some board reports running, sorted (the table's filter)."""
        return [str(r[0]) for r in self._db.execute(
            "SELECT DISTINCT version FROM devices WHERE version IS NOT NULL ORDER BY 1")]


class _Transaction:
    """`with store._tx():` — BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _translate(err: sqlite3.Error) -> StoreError:
    """The storage error for an SQLite error: a uniqueness clash is StoreConflict, a missing
    referenced row StoreNotFound, a locked or unreadable database StoreUnavailable."""
    text = str(err)
    if isinstance(err, sqlite3.IntegrityError):
        if "FOREIGN KEY" in text:
            return StoreNotFound(f"refers to a missing record: {text}")
        return StoreConflict(f"already stored: {text}")
    if isinstance(err, sqlite3.OperationalError):
        if err.sqlite_errorcode == sqlite3.SQLITE_BUSY:
            return StoreBusy(f"database busy: {text}")
        return StoreUnavailable(f"database unavailable: {text}")
    return StoreError(f"database error: {text}")


def _store_errors(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The method with SQLite's exceptions turned into the store's own (_translate)."""

    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except sqlite3.Error as err:
            raise _translate(err) from err

    return call


# Every public operation raises the store's errors only, as PostgresStore's do.
for _name, _method in list(vars(SqliteStore).items()):
    if not _name.startswith("_") and inspect.iscoroutinefunction(_method):
        setattr(SqliteStore, _name, _store_errors(_method))
