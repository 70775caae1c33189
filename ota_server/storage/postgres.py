"""The scale-out metadata store: PostgreSQL through an asyncpg connection pool.

The same operations as the embedded SqliteStore, each an `async def` and each one transaction
(a single statement, or an explicit transaction for several). Correct with any number of
server replicas on one database:

- nothing mutable is cached in the process unchecked (tokens, roots, counters, dashboard
  sessions are read from the database on every call); releases are kept by id, and their one
  field that changes (`yanked`, once) is read along with every query that names a release;
  a channel's rollout and base release are kept with the fleet epoch they were read at, and
  used for a board request only when its counter statement saw no newer epoch
  (`current_rollout(channel, epoch=...)`, pg_migrations/0007_fleet_epoch.sql);
- a stored root is announced (NOTIFY, `watch_roots`) so that each replica's check-in hint
  follows a rotation made through another one;
- read-modify-write is a conditional statement: a counter advances only `WHERE counter < $1`,
  a rollout moves only from the stage and state the caller saw (`update_rollout(expect_...)`),
  a sequence reservation holds a per-app transaction lock;
- the schema changes only through `migrate()`, which holds a PostgreSQL advisory lock so that
  replicas started together apply each migration once; opening a store never migrates.

Driver exceptions never leave this module: a clash is StoreConflict, a missing row
StoreNotFound, a lost or refused connection StoreUnavailable (the pool replaces dead
connections, so the next call after a database restart works again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from ota_server.bounded import keep
from ota_server.storage.errors import StoreConflict, StoreError, StoreNotFound, StoreUnavailable
from ota_server.storage.fleet_view import (
    BOARD_STATUSES,
    MAX_PAGE,
    STATUS_SQL,
    BoardDeployment,
    BoardFilter,
    FleetCounts,
    positional,
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

# The replay check and the write are one statement: it matches only a smaller stored counter
# of a board that is not revoked, and returns the fleet epoch the statement saw (no row:
# refused). The fleet epoch moves with every change to rollouts, base releases and yanks
# (pg_migrations/0007_fleet_epoch.sql).
_ADVANCE_COUNTER = ("UPDATE devices SET counter = $1, last_seen = $2 "
                    "WHERE device_id = $3 AND counter < $1 AND revoked IS NULL "
                    "RETURNING (SELECT epoch FROM fleet_epoch)")
# Row locks in one order, the ids' (_lock_devices says why). NO KEY UPDATE: what an UPDATE of
# non-key columns takes, so a deployment's foreign key check (KEY SHARE) never waits on it.
_LOCK_IN_ORDER = ("SELECT device_id FROM devices WHERE device_id = ANY($1::text[]) "
                  "ORDER BY device_id FOR NO KEY UPDATE")
# A batch of advances of distinct boards as one statement (one round trip, autocommit): each
# board's advance is _ADVANCE_COUNTER's. The `locked` CTE (_LOCK_IN_ORDER) takes the rows'
# locks in device id order before the UPDATE touches a row (a row reaches the UPDATE only
# through the join with `locked`, which emits it locked, in that order), so two replicas'
# batches sharing boards wait for each other instead of deadlocking, as _lock_devices makes
# the sequential path do.
_ADVANCE_DISTINCT = (
    "WITH wanted AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS w(device_id, counter)), "
    "locked AS MATERIALIZED (SELECT device_id FROM devices WHERE device_id = ANY($1::text[]) "
    "ORDER BY device_id FOR NO KEY UPDATE) "
    "UPDATE devices d SET counter = w.counter, last_seen = $3 FROM wanted w, locked l "
    "WHERE d.device_id = w.device_id AND l.device_id = w.device_id "
    "AND d.counter < w.counter AND d.revoked IS NULL "
    "RETURNING d.device_id, (SELECT epoch FROM fleet_epoch)")
_OFFER = ("INSERT INTO deployments (device_id, release_id, status, updated, channel) "
          "VALUES ($1, $2, 'offered', $3, $4) ON CONFLICT (device_id, release_id) DO NOTHING")
_RELEASE_SELECT = ("SELECT r.id, r.app, r.version, r.sequence, r.boards, r.created, r.expires, "
                   "r.yanked, r.signers, "
                   "ARRAY(SELECT b.blob FROM release_blobs b WHERE b.release_id = r.id "
                   "ORDER BY b.blob) AS blobs FROM releases r")
# Several offers as one statement (PostgresStore.open_deployments_for), in key order.
_OFFERS = ("INSERT INTO deployments (device_id, release_id, status, updated, channel) "
           "SELECT o.device_id, o.release_id, 'offered', $4, o.channel "
           "FROM unnest($1::text[], $2::bigint[], $3::text[]) AS o(device_id, release_id, channel) "
           "ORDER BY o.device_id, o.release_id ON CONFLICT (device_id, release_id) DO NOTHING")
# A rollout with its release's `yanked`, the one field of a cached release that can change.
_ROLLOUT_SELECT = ("SELECT ro.*, r.yanked AS release_yanked FROM rollouts ro "
                   "JOIN releases r ON r.id = ro.release_id")
# A channel as a check-in needs it, in one statement (one snapshot): the fleet epoch, the
# current rollout (current_rollout's query; NULL columns when there is none) and the base
# release with its `yanked`.
_CHANNEL_VIEW = (
    "SELECT (SELECT epoch FROM fleet_epoch) AS epoch, cur.*, c.base_release_id, "
    "b.yanked AS base_yanked FROM (SELECT $1::text AS name) AS ch LEFT JOIN LATERAL ("
    "SELECT ro.*, r.yanked AS release_yanked FROM rollouts ro "
    "JOIN releases r ON r.id = ro.release_id WHERE ro.channel = ch.name "
    "AND ro.state != 'superseded' ORDER BY ro.id DESC LIMIT 1) AS cur ON TRUE "
    "LEFT JOIN channels c ON c.name = ch.name LEFT JOIN releases b ON b.id = c.base_release_id")
# Channels whose view a replica keeps (few in practice); the oldest goes first beyond that.
CHANNEL_CACHE_SIZE = 10_000
# In BoardIdentity's order.
_IDENTITY_COLUMNS = "device_id, public_key, board, tags, channel, bucket"
_DEVICE_COLUMNS = ("device_id, public_key, board, tags, channel, bucket, counter, created, "
                   "revoked, " + ", ".join(INVENTORY_FIELDS))
# Orders as SQLite does (bytewise), whatever locale the database was created with.
_BYTEWISE = 'COLLATE "C"'
# pg_advisory_lock keys: one for migrations, one namespace for per-app sequence reservations.
MIGRATION_LOCK_KEY = 0x6D706F74_61000001  # "mpota" + 1
_SEQUENCE_LOCK_NAMESPACE = 0x6D700002

POOL_MAX_SIZE = 10
CONNECT_TIMEOUT = 5.0
ACQUIRE_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
CLOSE_TIMEOUT = 10.0
# The channel a stored root is announced on (pg_migrations/0006: a trigger on roots).
ROOTS_CHANNEL = "mpota_roots"
# The root watch: a lost listening connection is opened again after WATCH_RETRY_S; one that
# is quiet is asked `SELECT 1` every WATCH_CHECK_S, so a link dead without a word (a network
# cut) is noticed within that time.
WATCH_RETRY_S = 2.0
WATCH_CHECK_S = 30.0
log = logging.getLogger("ota_server")


def pg_migrations() -> list[tuple[int, str]]:
    """The PostgreSQL migration scripts shipped with the package, as (version, sql), in order."""
    folder = resources.files("ota_server.storage") / "pg_migrations"
    out = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(out)


def check_dsn(dsn: str) -> str:
    """Return `dsn` if it is a postgresql:// (or postgres://) URL naming a host and a database;
    raise ValueError saying what is wrong (never echoing the password)."""
    try:
        parts = urlsplit(dsn)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError as err:
        raise ValueError(f"database URL does not parse: {err}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("database URL must start with postgresql://, got scheme "
                         f"{parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("database URL names no host (postgresql://USER:PASSWORD@HOST/DB)")
    if parts.path in ("", "/"):
        raise ValueError("database URL names no database (postgresql://USER@HOST/DATABASE)")
    if parts.fragment:
        raise ValueError("database URL must not have a #fragment")
    return dsn


def _now() -> int:
    return int(time.time())


def _rowcount(status: str) -> int:
    """The row count of a command status such as 'UPDATE 1' or 'INSERT 0 1'."""
    return int(status.rsplit(" ", 1)[1])


def _translate(err: BaseException) -> BaseException:
    """The storage error for a driver or socket exception; anything else unchanged."""
    if isinstance(err, StoreError):
        return err
    if isinstance(err, asyncpg.UniqueViolationError):
        return StoreConflict(f"already stored: {err.detail or err}")
    if isinstance(err, asyncpg.ForeignKeyViolationError):
        return StoreNotFound(f"refers to a missing record: {err.detail or err}")
    if isinstance(err, asyncpg.ClientConfigurationError):  # a bad URL parameter, not an outage
        return StoreError(f"database URL: {err}")
    # InternalClientError: asyncpg found a pooled connection in a protocol state it cannot
    # use, as when the server ended it while it was idle (a restart) and the end of the socket
    # has not been seen yet; the pool replaces that connection.
    if isinstance(err, asyncpg.PostgresConnectionError | asyncpg.CannotConnectNowError
                  | asyncpg.AdminShutdownError | asyncpg.CrashShutdownError
                  | asyncpg.TooManyConnectionsError | asyncpg.InterfaceError
                  | asyncpg.InternalClientError | ConnectionError | OSError | TimeoutError):
        return StoreUnavailable(f"database unavailable: {type(err).__name__}: {err}")
    if isinstance(err, asyncpg.PostgresError):
        return StoreError(f"database error: {type(err).__name__}: {err}")
    return err


class PostgresStore:
    """MetadataStore on a PostgreSQL database, async (one asyncpg pool per process)."""

    def __init__(self, pool: asyncpg.Pool, dsn: str | None = None):
        self._pool = pool
        self._dsn = dsn  # for the root watch's own connection (watch_roots)
        # Immutable once registered but for `yanked`, which is read along with every query
        # that names a release (release_by_id, _release_yanked_at).
        self._releases: dict[int, Release] = {}
        # channel -> (fleet epoch, current rollout, base release), read in one statement.
        self._channels: dict[str, tuple[int, Rollout | None, Release | None]] = {}
        self._watches: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, dsn: str, *, max_size: int = POOL_MAX_SIZE) -> PostgresStore:
        """Open a pool on `dsn` (ValueError when the URL is malformed; StoreUnavailable when the
        server cannot be reached; StoreError when it refuses the credentials)."""
        check_dsn(dsn)
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=max_size, timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT, init=_init_connection,
                reset=_keep_session)
        except BaseException as err:
            raise _translate(err) from None
        return cls(pool, dsn)

    async def close(self) -> None:
        """Stop the root watch; close the pool, waiting at most CLOSE_TIMEOUT for borrowed
        connections."""
        for task in self._watches:
            task.cancel()
        await asyncio.gather(*self._watches, return_exceptions=True)
        self._watches.clear()
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT)
        except TimeoutError:
            self._pool.terminate()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """Borrow a connection for one unit of work; driver errors become storage errors."""
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                yield conn
        except Exception as err:
            translated = _translate(err)
            if translated is err:
                raise
            raise translated from err

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._connection() as conn, conn.transaction():
            yield conn

    # -- schema -------------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply the pending migrations, each in its own transaction, under an advisory lock
        (replicas running this together wait for each other; each migration runs once).
        Returns the schema version reached."""
        async with self._connection() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version INTEGER PRIMARY KEY, applied BIGINT NOT NULL)")
                current = await conn.fetchval(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                for version, sql in pg_migrations():
                    if version <= current:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, applied) VALUES ($1, $2)",
                            version, _now())
                    current = version
            finally:
                await _unlock_or_drop(conn)
        return int(current)

    async def schema_version(self) -> int:
        """The version `migrate()` reached; 0 for a database it never ran on."""
        async with self._connection() as conn:
            if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                return 0
            return int(await conn.fetchval(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))

    async def require_schema(self) -> None:
        """Raise StoreError unless the database is at the schema version this code expects
        (a server refuses to start on an unmigrated or newer database)."""
        expected = pg_migrations()[-1][0]
        found = await self.schema_version()
        if found != expected:
            raise StoreError(f"database schema is at version {found}, this server needs "
                             f"{expected}: run `ota db migrate` with this version of mpota")

    # -- tokens -------------------------------------------------------------------------------

    async def create_token(self, name: str, token_hash: str, scope: str) -> int:
        async with self._connection() as conn:
            return int(await conn.fetchval(
                "INSERT INTO tokens (name, token_hash, created, scope) VALUES ($1, $2, $3, $4) "
                "RETURNING id", name, token_hash, _now(), scope))

    async def revoke_token(self, name: str) -> int:
        async with self._connection() as conn:
            return _rowcount(await conn.execute(
                "UPDATE tokens SET revoked = $1 WHERE name = $2 AND revoked IS NULL",
                _now(), name))

    async def list_tokens(self) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT id, name, scope, created, revoked FROM tokens ORDER BY id")
        return [dict(row) for row in rows]

    async def token(self, token_hash: str) -> Token | None:
        """The valid (not revoked) token with this hash, if any."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT name, scope FROM tokens WHERE token_hash = $1 AND revoked IS NULL",
                token_hash)
        return None if row is None else Token(name=str(row[0]), scope=str(row[1]))

    # -- audit --------------------------------------------------------------------------------

    async def add_audit(self, entry: AuditEntry) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO audit (at, actor, scope, action, target, status, outcome) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)", entry.at, entry.actor, entry.scope,
                entry.action, entry.target, entry.status, entry.outcome)

    async def list_audit(self, limit: int, actor: str | None = None) -> list[AuditEntry]:
        """The newest `limit` entries (of `actor` when given), oldest first."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM (SELECT id, at, actor, scope, action, target, status, outcome "
                "FROM audit WHERE ($1::text IS NULL OR actor = $1) ORDER BY id DESC LIMIT $2) "
                "AS newest ORDER BY id", actor, limit)
        return [AuditEntry(id=int(r["id"]), at=int(r["at"]), actor=r["actor"], scope=r["scope"],
                           action=r["action"], target=r["target"], status=int(r["status"]),
                           outcome=r["outcome"]) for r in rows]

    # -- roots --------------------------------------------------------------------------------

    async def roots(self) -> list[tuple[int, bytes]]:
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT version, envelope FROM roots ORDER BY version")
        return [(int(r["version"]), bytes(r["envelope"])) for r in rows]

    async def add_root(self, version: int, envelope: bytes) -> None:
        """Store a root version; StoreConflict when that version is stored already (two
        replicas seeding the same root: the second one learns it is there)."""
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO roots (version, envelope, created) VALUES ($1, $2, $3)",
                version, envelope, _now())

    async def watch_roots(self, changed: Callable[[], None]) -> None:
        """Call `changed()` on this event loop after any process stores a root in this
        database (a NOTIFY on ROOTS_CHANNEL, sent when the storing transaction commits), and
        each time the watch's own connection is opened (a root may have been stored while it
        was not listening), until close(). A lost connection is opened again every
        WATCH_RETRY_S. Returns once the first LISTEN is in place, or after CONNECT_TIMEOUT
        when the database cannot be reached (the watch goes on trying in the background)."""
        if self._dsn is None:
            raise StoreError("this store was not opened from a URL: it cannot watch")
        listening = asyncio.Event()
        self._watches.append(asyncio.get_running_loop().create_task(
            self._watch(self._dsn, ROOTS_CHANNEL, changed, listening)))
        try:
            await asyncio.wait_for(listening.wait(), CONNECT_TIMEOUT)
        except TimeoutError:
            log.warning("root watch: not listening yet; the newest root behind the check-in "
                        "hint may lag until the database answers")

    @staticmethod
    async def _watch(dsn: str, channel: str, changed: Callable[[], None],
                     listening: asyncio.Event) -> None:
        """LISTEN on `channel` over a connection of its own, opened again whenever lost."""
        while True:
            try:
                await _listen(dsn, channel, changed, listening)
            except Exception as err:
                log.warning("root watch lost (%s); listening again in %.0fs",
                            _translate(err), WATCH_RETRY_S)
            await asyncio.sleep(WATCH_RETRY_S)

    # -- dashboard sessions -------------------------------------------------------------------

    async def add_ui_session(self, session: UiSession) -> None:
        """Store a new session; StoreConflict when its id hash is stored already."""
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO ui_sessions (id_hash, token_hash, csrf, actor, scope, created, "
                "seen, flash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", session.id_hash,
                session.token_hash, session.csrf, session.actor, session.scope,
                session.created, session.seen, list(session.flash))

    async def ui_session(self, id_hash: str) -> UiSession | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT id_hash, token_hash, csrf, actor, scope, created, seen, flash "
                "FROM ui_sessions WHERE id_hash = $1", id_hash)
        return None if row is None else UiSession(
            id_hash=row[0], token_hash=row[1], csrf=row[2], actor=row[3], scope=row[4],
            created=float(row[5]), seen=float(row[6]), flash=tuple(row[7]))

    async def touch_ui_session(self, id_hash: str, seen: float) -> None:
        """Move the session's last request time forward (never back)."""
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE ui_sessions SET seen = $1 WHERE id_hash = $2 AND seen < $1",
                seen, id_hash)

    async def set_ui_session_flash(self, id_hash: str, flash: Sequence[str]) -> None:
        async with self._connection() as conn:
            await conn.execute("UPDATE ui_sessions SET flash = $1 WHERE id_hash = $2",
                               list(flash), id_hash)

    async def end_ui_session(self, id_hash: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM ui_sessions WHERE id_hash = $1", id_hash)

    async def prune_ui_sessions(self, created_before: float, seen_before: float,
                                keep: int) -> int:
        """Delete the sessions created before `created_before` or last seen before
        `seen_before`, then all but the `keep` newest; the number deleted."""
        async with self._transaction() as conn:
            gone = _rowcount(await conn.execute(
                "DELETE FROM ui_sessions WHERE created < $1 OR seen < $2",
                created_before, seen_before))
            gone += _rowcount(await conn.execute(
                "DELETE FROM ui_sessions WHERE id_hash IN (SELECT id_hash FROM ui_sessions "
                "ORDER BY created DESC, id_hash OFFSET $1)", keep))
        return gone

    # -- releases -----------------------------------------------------------------------------

    async def max_sequence(self, app: str) -> int | None:
        async with self._connection() as conn:
            found = await conn.fetchval("SELECT MAX(sequence) FROM releases WHERE app = $1", app)
        return None if found is None else int(found)

    async def reserve_sequence(self, app: str, version: str, floor: int = 1) -> tuple[int, bool]:
        """The sequence of `version` of `app`, and whether that release is registered.

        A registered version answers its own sequence; a version reserved before, the same
        reservation; any other version a new one: `floor`, or one above every registered and
        reserved sequence of the app if that is more. A transaction lock per app makes two
        publishers asking together (through any replicas) get two different sequences.
        """
        async with self._transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                               _SEQUENCE_LOCK_NAMESPACE, app)
            found = await conn.fetchval(
                "SELECT sequence FROM releases WHERE app = $1 AND version = $2 "
                "AND duplicate_of IS NULL", app, version)
            if found is not None:
                return int(found), True
            found = await conn.fetchval(
                "SELECT sequence FROM sequence_reservations WHERE app = $1 AND version = $2",
                app, version)
            if found is not None:
                return int(found), False
            top = await conn.fetchval(
                "SELECT MAX(s) FROM (SELECT MAX(sequence) AS s FROM releases WHERE app = $1 "
                "UNION ALL SELECT MAX(sequence) FROM sequence_reservations WHERE app = $1) t",
                app)
            sequence = floor if top is None else max(floor, int(top) + 1)
            await conn.execute(
                "INSERT INTO sequence_reservations (app, version, sequence, created) "
                "VALUES ($1, $2, $3, $4)", app, version, sequence, _now())
        return sequence, False

    async def reserved_version(self, app: str, sequence: int) -> str | None:
        async with self._connection() as conn:
            found = await conn.fetchval(
                "SELECT version FROM sequence_reservations WHERE app = $1 AND sequence = $2",
                app, sequence)
        return None if found is None else str(found)

    async def add_release(self, app: str, version: str, sequence: int, boards: Sequence[str],
                          envelope: bytes, blobs: Sequence[tuple[str, int]],
                          expires: int, signers: Sequence[str] = ()) -> Release:
        """Register a release and spend the version's reservation, in one transaction;
        StoreConflict when the sequence or the version is taken (nothing is written)."""
        async with self._transaction() as conn:
            release_id = int(await conn.fetchval(
                "INSERT INTO releases (app, version, sequence, boards, envelope, created, "
                "expires, signers) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                app, version, sequence, list(boards), envelope, _now(), expires,
                list(signers)))
            await conn.executemany(
                "INSERT INTO release_blobs (release_id, blob, size) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING", [(release_id, blob, size) for blob, size in blobs])
            await conn.execute(
                "DELETE FROM sequence_reservations WHERE app = $1 AND version = $2",
                app, version)
            release = _release(await conn.fetchrow(
                f"{_RELEASE_SELECT} WHERE r.id = $1", release_id))
        assert release is not None
        self._releases[release.id] = release
        return release

    async def _fetch_release(self, where: str, *args: Any) -> Release | None:
        async with self._connection() as conn:
            return _release(await conn.fetchrow(f"{_RELEASE_SELECT} WHERE {where}", *args))

    async def release(self, app: str, sequence: int) -> Release | None:
        return await self._fetch_release("r.app = $1 AND r.sequence = $2", app, sequence)

    async def release_by_version(self, app: str, version: str) -> Release | None:
        """The release that `version` of `app` names (never a pre-v2 duplicate)."""
        return await self._fetch_release(
            "r.app = $1 AND r.version = $2 AND r.duplicate_of IS NULL", app, version)

    async def release_by_id(self, release_id: int) -> Release | None:
        """The release of that id as stored now. A cached release is returned as it is only
        once it is yanked: `yanked` is the one field that changes, once, and another replica
        may have set it since this one cached the release."""
        cached = self._releases.get(release_id)
        if cached is not None and cached.yanked is not None:
            return cached
        found = await self._fetch_release("r.id = $1", release_id)
        if found is not None:
            self._releases[release_id] = found
        return found

    async def envelope(self, release_id: int) -> bytes:
        """The release's signed envelope; StoreNotFound when there is no such release."""
        async with self._connection() as conn:
            found = await conn.fetchval("SELECT envelope FROM releases WHERE id = $1",
                                        release_id)
        if found is None:
            raise StoreNotFound(f"no release with id {release_id}")
        return bytes(found)

    async def list_releases(self, app: str | None = None) -> list[Release]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"{_RELEASE_SELECT} WHERE ($1::text IS NULL OR r.app = $1) "
                f"ORDER BY r.app {_BYTEWISE}, r.sequence", app)
        return [r for r in (_release(row) for row in rows) if r is not None]

    async def yank_release(self, release_id: int) -> Release:
        """Mark the release yanked (offered to no board from now on); a release yanked before
        keeps its first time. StoreNotFound for an unknown id."""
        async with self._connection() as conn:
            await conn.execute("UPDATE releases SET yanked = $1 WHERE id = $2 AND yanked IS NULL",
                               _now(), release_id)
            found = _release(await conn.fetchrow(f"{_RELEASE_SELECT} WHERE r.id = $1",
                                                 release_id))
        if found is None:
            raise StoreNotFound(f"no release with id {release_id}")
        self._releases[release_id] = found  # the one change a release ever sees
        return found

    async def _release_yanked_at(self, release_id: int, yanked: int | None) -> Release:
        """The release of that id with the `yanked` its row showed in the query that named
        it (a join on releases): from the cache without a query of its own, yet never with
        a yank another replica made and this one did not see."""
        cached = self._releases.get(release_id)
        if cached is None:
            found = await self.release_by_id(release_id)
            if found is None:
                raise StoreNotFound(f"no release with id {release_id}")
            return found
        if cached.yanked is None and yanked is not None:
            cached = self._releases[release_id] = replace(cached, yanked=int(yanked))
        return cached

    async def release_blob_refs(self) -> list[str]:
        """Every blob any release refers to."""
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT DISTINCT blob FROM release_blobs")
        return [r[0] for r in rows]

    # -- devices ------------------------------------------------------------------------------

    async def add_device(self, device_id: str, public_key: bytes, board: str,
                         tags: Iterable[str], channel: str, bucket: int) -> Device:
        """Register a board; StoreConflict when the id is registered already."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO devices (device_id, public_key, board, tags, channel, bucket, "  # noqa: S608
                f"created) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_DEVICE_COLUMNS}",
                device_id, public_key, board, sorted(set(tags)), channel, bucket, _now())
        device = _device(row)
        assert device is not None
        return device

    async def device(self, device_id: str) -> Device | None:
        async with self._connection() as conn:
            return _device(await conn.fetchrow(
                f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = $1",  # noqa: S608
                device_id))

    async def board_identity(self, device_id: str) -> BoardIdentity | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_IDENTITY_COLUMNS} FROM devices WHERE device_id = $1",  # noqa: S608
                device_id)
        if row is None:
            return None
        return BoardIdentity(row[0], bytes(row[1]), row[2], tuple(row[3]), row[4], int(row[5]))

    async def list_devices(self) -> list[Device]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY device_id {_BYTEWISE}")  # noqa: S608
        return [d for d in (_device(r) for r in rows) if d is not None]

    async def count_eligible(self, channel: str, tags: Sequence[str],
                             bucket_limit: float) -> int:
        """Active boards of `channel` with one of `tags` or a bucket below `bucket_limit`."""
        async with self._connection() as conn:
            return int(await conn.fetchval(
                "SELECT COUNT(*) FROM devices WHERE channel = $1 AND revoked IS NULL AND "
                "(bucket < $2::float8 OR tags ?| $3::text[])",
                channel, float(bucket_limit), list(tags)))

    async def revoke_device(self, device_id: str) -> bool:
        async with self._connection() as conn:
            return _rowcount(await conn.execute(
                "UPDATE devices SET revoked = $1 WHERE device_id = $2 AND revoked IS NULL",
                _now(), device_id)) == 1

    async def advance_counter(self, device_id: str, counter: int) -> bool:
        """Accept `counter` only if it is greater than the last one and the board is not
        revoked (and mark the board seen); one conditional statement, so two requests racing
        with one counter cannot both pass, through one replica or two."""
        return (await self.advance_counters([(device_id, counter)]))[0]

    async def advance_counters(self, advances: Sequence[tuple[str, int]]) -> Advances:
        """advance_counter for each pair in order, all or none durable, with the fleet epoch
        the writing statement saw. Distinct boards: one statement (one round trip, no
        BEGIN / COMMIT); a board named twice: one transaction of one statement per pair, in
        order (the second of a board's pairs must see the first)."""
        now = _now()
        ids = [device_id for device_id, _ in advances]
        if len(advances) == 1:
            async with self._connection() as conn:
                epoch = await conn.fetchval(_ADVANCE_COUNTER, advances[0][1], now, ids[0])
            return Advances([epoch is not None], epoch)
        if len(set(ids)) == len(ids):
            async with self._connection() as conn:
                rows = await conn.fetch(_ADVANCE_DISTINCT, ids,
                                        [counter for _, counter in advances], now)
            accepted = {row[0] for row in rows}
            return Advances([device_id in accepted for device_id in ids],
                            max((int(row[1]) for row in rows), default=None))
        async with self._transaction() as conn:
            await _lock_devices(conn, ids)
            return await _advance_each(conn, advances, now)

    async def write_checkins(self, inventories: Sequence[tuple[str, dict[str, Any]]],
                             offers: Sequence[tuple[str, int, str]],
                             advances: Sequence[tuple[str, int]] = ()) -> Advances:
        """In one transaction: record_checkin for each (device_id, inventory) in order,
        advance_counter for each of `advances` in order, and mark each (device_id, release_id,
        channel) of `offers` offered unless the board already has a deployment of it (one
        statement, as open_deployments_for); the outcomes of the advances and the fleet epoch
        they saw."""
        now = _now()
        async with self._transaction() as conn:
            await _lock_devices(conn, [*(device_id for device_id, _ in inventories),
                                       *(device_id for device_id, _, _ in offers),
                                       *(device_id for device_id, _ in advances)])
            await _record_checkins(conn, inventories)
            advanced = await _advance_each(conn, advances, now)
            if offers:
                # One statement, last: its tally rows (pg_migrations/0008) are locked in key
                # order by one trigger call, never in the batch's order, and held only
                # until the commit that follows.
                await _write_offers(conn, offers, now)
            return advanced

    async def record_checkin(self, device_id: str, inventory: dict[str, Any]) -> None:
        """Overwrite the given inventory fields (others are ignored)."""
        async with self._connection() as conn:
            await _record_checkin(conn, device_id, inventory)

    # -- channels and rollouts ----------------------------------------------------------------

    async def base_release(self, channel: str, *, epoch: int | None = None) -> Release | None:
        """The channel's base release; with `epoch`, as current_rollout's."""
        if epoch is not None:
            return (await self._channel_view(channel, epoch))[2]
        async with self._connection() as conn:
            found = await conn.fetchrow(
                "SELECT c.base_release_id, r.yanked FROM channels c "
                "JOIN releases r ON r.id = c.base_release_id WHERE c.name = $1", channel)
        return None if found is None else await self._release_yanked_at(
            int(found["base_release_id"]), found["yanked"])

    async def set_base_release(self, channel: str, release_id: int) -> None:
        """StoreNotFound when there is no such release."""
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO channels (name, base_release_id) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET base_release_id = excluded.base_release_id",
                channel, release_id)

    async def _rollout(self, row: asyncpg.Record | None) -> Rollout | None:
        if row is None:
            return None
        if "release_yanked" in row.keys():  # noqa: SIM118 -- a Record, not a dict
            release = await self._release_yanked_at(int(row["release_id"]),
                                                    row["release_yanked"])
        else:
            found = await self.release_by_id(int(row["release_id"]))
            assert found is not None  # a foreign key
            release = found
        return Rollout(id=int(row["id"]), channel=row["channel"], release=release,
                       policy=row["policy"], stage=int(row["stage"]), state=row["state"],
                       reason=row["reason"], created=int(row["created"]),
                       updated=int(row["updated"]))

    async def current_rollout(self, channel: str, *, epoch: int | None = None) -> Rollout | None:
        """The channel's newest rollout that is not superseded. Without `epoch`, read now.
        With `epoch` (the fleet epoch a board request's counter statement saw), from this
        process's copy of the channel if that copy was read at that epoch or a later one:
        every change a rollout, base or yank makes moves the epoch in its own transaction, so
        such a copy holds every change committed before the request's counter was; else the
        channel is read again (one statement, with the base release and the epoch)."""
        if epoch is not None:
            return (await self._channel_view(channel, epoch))[1]
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"{_ROLLOUT_SELECT} WHERE ro.channel = $1 AND ro.state != 'superseded' "
                "ORDER BY ro.id DESC LIMIT 1", channel)
        return await self._rollout(row)

    async def _channel_view(self, channel: str,
                            epoch: int) -> tuple[int, Rollout | None, Release | None]:
        """The kept (epoch, rollout, base) of `channel` if read at `epoch` or later, else the
        one read now (and kept, unless a newer one was kept meanwhile)."""
        view = self._channels.get(channel)
        if view is not None and view[0] >= epoch:
            return view
        async with self._connection() as conn:
            row = await conn.fetchrow(_CHANNEL_VIEW, channel)
        assert row is not None  # one row whatever the channel holds
        rollout = None if row["id"] is None else await self._rollout(row)
        base = None if row["base_release_id"] is None else await self._release_yanked_at(
            int(row["base_release_id"]), row["base_yanked"])
        view = (int(row["epoch"]), rollout, base)
        kept = self._channels.get(channel)
        if kept is None or kept[0] < view[0]:
            keep(self._channels, channel, view, CHANNEL_CACHE_SIZE)
        return view

    async def rollout(self, rollout_id: int) -> Rollout | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(f"{_ROLLOUT_SELECT} WHERE ro.id = $1", rollout_id)
        return await self._rollout(row)

    async def start_rollout(self, channel: str, release_id: int, policy: dict[str, Any], *,
                            base_release_id: int | None = None,
                            replaces: int | None = None) -> Rollout:
        """In one transaction: check that the channel's current rollout is still `replaces`
        (None: it has none), set its base release to `base_release_id` when given, supersede
        its rollouts and start one of `release_id` at stage 0. StoreConflict, nothing
        written, when the current rollout is another one (two replicas starting rollouts
        together: one wins); StoreNotFound when there is no such release."""
        now = _now()
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO channels (name) VALUES ($1) ON CONFLICT DO NOTHING", channel)
            # The channel's row, locked: starts on one channel run one after the other.
            await conn.execute("SELECT 1 FROM channels WHERE name = $1 FOR UPDATE", channel)
            current = await conn.fetchval(
                "SELECT id FROM rollouts WHERE channel = $1 AND state != 'superseded' "
                "ORDER BY id DESC LIMIT 1", channel)
            if current != replaces:
                raise StoreConflict(f"channel {channel!r}: the current rollout is not "
                                    f"{replaces}")
            if base_release_id is not None:
                await conn.execute("UPDATE channels SET base_release_id = $1 WHERE name = $2",
                                   base_release_id, channel)
            await conn.execute(
                "UPDATE rollouts SET state = 'superseded', updated = $1 "
                "WHERE channel = $2 AND state != 'superseded'", now, channel)
            row = await conn.fetchrow(
                "INSERT INTO rollouts (channel, release_id, policy, stage, state, created, "
                "updated) VALUES ($1, $2, $3, 0, 'active', $4, $4) RETURNING *",
                channel, release_id, policy, now)
        found = await self._rollout(row)
        assert found is not None
        return found

    async def update_rollout(self, rollout_id: int, *, stage: int | None = None,
                             state: str | None = None, reason: str | None = None,
                             expect_stage: int | None = None,
                             expect_state: str | None = None) -> bool:
        """Set the given fields of the rollout, only if it is still at `expect_stage` and in
        `expect_state` (when given): one conditional statement, so of two replicas advancing
        one stage together exactly one does. True when the rollout was changed."""
        async with self._connection() as conn:
            return _rowcount(await conn.execute(
                "UPDATE rollouts SET stage = COALESCE($1, stage), state = COALESCE($2, state), "
                "reason = COALESCE($3, reason), updated = $4 WHERE id = $5 "
                "AND ($6::integer IS NULL OR stage = $6) AND ($7::text IS NULL OR state = $7)",
                stage, state, reason, _now(), rollout_id, expect_stage, expect_state)) == 1

    async def list_channels(self) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT name FROM (SELECT name FROM channels UNION "  # noqa: S608
                f"SELECT channel FROM devices) AS c ORDER BY name {_BYTEWISE}")
        return [r[0] for r in rows]

    # -- deployments --------------------------------------------------------------------------

    async def deployment_status(self, device_id: str, release_id: int) -> str | None:
        found = await self.deployment(device_id, release_id)
        return None if found is None else found.status

    async def deployment(self, device_id: str, release_id: int) -> Deployment | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT status, channel FROM deployments WHERE device_id = $1 AND release_id = $2",
                device_id, release_id)
        return None if row is None else Deployment(
            device_id=device_id, release_id=release_id, status=str(row["status"]),
            channel=str(row["channel"]))

    async def open_deployment_for(self, device_id: str, release_id: int, channel: str) -> None:
        """Record that `channel` offered the release to the board (status `offered`); a
        deployment already open stays as it is. StoreNotFound for an unknown board or
        release."""
        async with self._connection() as conn:
            await conn.execute(_OFFER, device_id, release_id, _now(), channel)

    async def open_deployments_for(self, offers: Sequence[tuple[str, int, str]]) -> None:
        """open_deployment_for each (device_id, release_id, channel): one statement (one round
        trip, autocommit). Its rows go in in key order: two replicas' batches that share a
        board's deployment wait for each other instead of deadlocking on the unique index."""
        if not offers:
            return
        async with self._connection() as conn:
            await _write_offers(conn, offers, _now())

    async def set_deployment(self, device_id: str, release_id: int, status: str,
                             reason: str | None = None, *,
                             inventory: dict[str, Any] | None = None) -> bool:
        """Move an open deployment to `status` and add the move to the board's history, and
        overwrite the board's `inventory` fields when given (record_checkin), in one
        transaction (one commit for a report's writes); False (nothing written) when the
        server never opened one for this board and release. The same status and reason again
        is no new event: only the inventory is written. The history keeps the board's newest
        HISTORY_PER_DEVICE rows."""
        now = _now()
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                "SELECT status, reason FROM deployments WHERE device_id = $1 AND release_id = $2"
                " FOR UPDATE", device_id, release_id)
            if row is None:
                return False
            if inventory:
                await _record_checkin(conn, device_id, inventory)
            if (row[0], row[1]) == (status, reason):
                return True  # the same report again (delivery is at least once)
            await conn.execute(
                "INSERT INTO deployment_history (device_id, release_id, status, reason, at) "
                "VALUES ($1, $2, $3, $4, $5)", device_id, release_id, status, reason, now)
            await conn.execute(
                "DELETE FROM deployment_history WHERE device_id = $1 AND id <= "
                "(SELECT id FROM deployment_history WHERE device_id = $1 "
                "ORDER BY id DESC LIMIT 1 OFFSET $2)", device_id, HISTORY_PER_DEVICE)
            # Last: its trigger locks the rollout's two tally rows (pg_migrations/0008, in
            # key order), which every report of the rollout needs; they are held only
            # until the commit.
            await conn.execute(
                "UPDATE deployments SET status = $1, reason = $2, updated = $3 "
                "WHERE device_id = $4 AND release_id = $5",
                status, reason, now, device_id, release_id)
        return True

    async def device_history(self, device_id: str) -> list[HistoryEntry]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT r.app, r.version, r.sequence, h.status, h.reason, h.at "
                "FROM deployment_history h JOIN releases r ON r.id = h.release_id "
                "WHERE h.device_id = $1 ORDER BY h.id", device_id)
        return [HistoryEntry(app=str(r[0]), version=str(r[1]), sequence=int(r[2]),
                             status=str(r[3]), reason=r[4], at=int(r[5])) for r in rows]

    async def deployment_counts(self, release_id: int, channel: str) -> DeploymentCounts:
        """Boards by deployment status for the release, among deployments `channel` opened:
        the tallies the triggers of pg_migrations/0008 keep, at most six rows read whatever
        the size of the rollout (exact: each tally moves in the transaction of its write)."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT status, boards FROM deployment_tallies WHERE release_id = $1 "
                "AND channel = $2", release_id, channel)
        return DeploymentCounts(**{str(r[0]): int(r[1]) for r in rows})

    async def open_deployment(self, device_id: str, app: str | None) -> int | None:
        """The release id of the device's newest unfinished deployment of `app` (of any app
        when None), if any."""
        async with self._connection() as conn:
            found = await conn.fetchval(
                "SELECT d.release_id FROM deployments d JOIN releases r ON r.id = d.release_id "
                "WHERE d.device_id = $1 AND ($2::text IS NULL OR r.app = $2) "
                "AND d.status IN ('offered', 'downloading', 'installed') "
                "ORDER BY r.sequence DESC LIMIT 1", device_id, app)
        return None if found is None else int(found)


    async def rollouts_of(self, release_id: int) -> list[Rollout]:
        """The active or paused rollouts of the release, one per channel at most."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"{_ROLLOUT_SELECT} WHERE ro.release_id = $1 AND ro.state IN ('active', "
                f"'paused') ORDER BY ro.channel {_BYTEWISE}", release_id)
        return [r for r in [await self._rollout(row) for row in rows] if r is not None]

    async def board_counts(self) -> dict[str, int]:
        """Boards not revoked, per channel (channels without one are absent)."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT channel, COUNT(*) FROM devices WHERE revoked IS NULL GROUP BY channel")
        return {str(r[0]): int(r[1]) for r in rows}

    # -- the dashboard (ota_server/ui): the same views as SqliteStore's, paged on the server --

    async def fleet_counts(self, silent_before: int) -> FleetCounts:
        """Boards by version, by channel and by status (fleet_view.STATUS_SQL)."""
        status_sql, args = positional(STATUS_SQL, {"cutoff": silent_before})
        async with self._connection() as conn:
            versions = await conn.fetch(
                "SELECT app, version, COUNT(*) FROM devices GROUP BY app, version "  # noqa: S608
                f"ORDER BY 3 DESC, app {_BYTEWISE} NULLS FIRST, "
                f"version {_BYTEWISE} NULLS FIRST")
            channels = await conn.fetch(
                "SELECT channel, COUNT(*) FROM devices GROUP BY channel "  # noqa: S608
                f"ORDER BY 2 DESC, channel {_BYTEWISE}")
            statuses = await conn.fetch(
                f"SELECT {status_sql}, COUNT(*) FROM devices GROUP BY 1", *args)  # noqa: S608
        by_status = dict.fromkeys(BOARD_STATUSES, 0)
        for row in statuses:
            by_status[str(row[0])] = int(row[1])
        return FleetCounts(total=sum(by_status.values()),
                           by_version=[(r[0], r[1], int(r[2])) for r in versions],
                           by_channel=[(str(r[0]), int(r[1])) for r in channels],
                           by_status=by_status)

    async def board_page(self, board_filter: BoardFilter, *, after: str | None = None,
                         before: str | None = None, limit: int = 50) -> list[tuple[Device, str]]:
        """Up to `limit` boards matching the filter, with their status, in device id order
        (bytewise, as SQLite's): the first ones after `after`, or the last ones before
        `before` (keyset paging on the primary key)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"board page: limit must be 1 to {MAX_PAGE}, not {limit}")
        where, named = board_filter.where("postgres")
        order = "ASC"
        if after is not None:
            where += f" AND device_id {_BYTEWISE} > :key"
            named["key"] = after
        elif before is not None:
            where += f" AND device_id {_BYTEWISE} < :key"
            named["key"] = before
            order = "DESC"
        named["limit"] = limit
        sql, args = positional(
            f"SELECT {_DEVICE_COLUMNS}, {STATUS_SQL} AS status FROM devices "  # noqa: S608
            f"WHERE {where} ORDER BY device_id {_BYTEWISE} {order} LIMIT :limit", named)
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *args)
        if order == "DESC":
            rows.reverse()
        out = []
        for row in rows:
            found = _device(row)
            assert found is not None
            out.append((found, str(row["status"])))
        return out

    async def count_boards(self, board_filter: BoardFilter) -> int:
        """How many boards match the filter."""
        sql, args = positional(
            "SELECT COUNT(*) FROM devices WHERE " + board_filter.where("postgres")[0],  # noqa: S608
            board_filter.where("postgres")[1])
        async with self._connection() as conn:
            return int(await conn.fetchval(sql, *args))

    async def board_statuses(self, device_ids: Sequence[str],
                             silent_before: int) -> dict[str, str]:
        """The status of each known board among `device_ids` (at most MAX_PAGE of them)."""
        if len(device_ids) > MAX_PAGE:
            raise ValueError(f"board statuses: at most {MAX_PAGE} ids, not {len(device_ids)}")
        if not device_ids:
            return {}
        sql, args = positional(
            f"SELECT device_id, {STATUS_SQL} FROM devices "  # noqa: S608
            "WHERE device_id = ANY(:ids::text[])",
            {"cutoff": silent_before, "ids": list(device_ids)})
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *args)
        return {str(r[0]): str(r[1]) for r in rows}

    async def board_deployments(self, device_id: str, limit: int = 50) -> list[BoardDeployment]:
        """The board's deployments, newest release first: each one's latest status and
        reason."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT d.release_id, r.app, r.version, r.sequence, d.status, d.reason, "
                "d.channel, d.updated FROM deployments d JOIN releases r ON r.id = d.release_id "
                "WHERE d.device_id = $1 ORDER BY r.sequence DESC, d.release_id DESC LIMIT $2",
                device_id, limit)
        return [BoardDeployment(release_id=int(r[0]), app=r[1], version=r[2],
                                sequence=int(r[3]), status=r[4], reason=r[5], channel=r[6],
                                updated=int(r[7])) for r in rows]

    async def board_versions(self) -> list[str]:
        """Every app version some board reports running, sorted (the table's filter)."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT DISTINCT version {_BYTEWISE} AS version FROM devices "  # noqa: S608
                "WHERE version IS NOT NULL ORDER BY 1")
        return [str(r[0]) for r in rows]


# -- rows to records ---------------------------------------------------------------------------

async def _unlock_or_drop(conn: asyncpg.Connection) -> None:
    """Release the migration lock; a connection that cannot release it is closed (which
    releases it): the pool never hands out a connection holding it (_keep_session)."""
    if conn.is_closed():
        return
    try:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    except BaseException:
        conn.terminate()
        raise


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset of a returned connection: nothing beyond asyncpg's own (which rolls
    back a transaction left open). asyncpg's default resets the whole session (advisory locks,
    LISTEN, settings, cursors) with one more round trip per borrowed connection, a third of a
    check-in's database trips; this store leaves no session state behind: it never SETs,
    LISTENs or keeps a cursor, and its one session lock (migrate's) is released in a
    `finally`, or its connection closed (_unlock_or_drop)."""
    del conn


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Every pooled connection reads and writes JSONB as Python lists and dicts."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")


async def _advance_each(conn: asyncpg.Connection, advances: Sequence[tuple[str, int]],
                        now: int) -> Advances:
    """_ADVANCE_COUNTER for each (device_id, counter) in order, on `conn` (in a transaction
    whose rows _lock_devices locked); the outcomes and the newest epoch the statements saw."""
    epochs = [await conn.fetchval(_ADVANCE_COUNTER, counter, now, device_id)
              for device_id, counter in advances]
    return Advances([epoch is not None for epoch in epochs],
                    max((int(e) for e in epochs if e is not None), default=None))


async def _write_offers(conn: asyncpg.Connection, offers: Sequence[tuple[str, int, str]],
                        now: int) -> None:
    """_OFFERS for each (device_id, release_id, channel): one statement."""
    await conn.execute(_OFFERS, [o[0] for o in offers], [o[1] for o in offers],
                       [o[2] for o in offers], now)


async def _lock_devices(conn: asyncpg.Connection, device_ids: Sequence[str]) -> None:
    """Lock the rows of `device_ids` in one order, the ids' (one round trip), before a
    transaction writes several of them. Two replicas' batches that share boards then wait for
    each other instead of deadlocking: each UPDATE takes its row's lock until the commit, so
    batches taking them in arrival order (A: x then y, B: y then x) deadlock, and PostgreSQL
    fails one of them. One board needs no order."""
    unique = sorted(set(device_ids))
    if len(unique) > 1:
        await conn.execute(_LOCK_IN_ORDER, unique)


def _inventory_update(fields: Sequence[str], counted: bool = False) -> str:
    """UPDATE of `fields` ($1..$n) of the device $n+1; `counted`: the request's counter is
    $n+2, and the row is written only over the records of an older request
    (records.inventory_fields)."""
    # Column names come from INVENTORY_FIELDS only, never from the caller.
    assigns = ", ".join(f"{name} = ${n}" for n, name in enumerate(fields, start=1))
    end = len(fields)
    if not counted:
        return f"UPDATE devices SET {assigns} WHERE device_id = ${end + 1}"  # noqa: S608
    return (f"UPDATE devices SET {assigns}, records_counter = ${end + 2} "  # noqa: S608
            f"WHERE device_id = ${end + 1} AND records_counter <= ${end + 2}")


async def _listen(dsn: str, channel: str, changed: Callable[[], None],
                  listening: asyncio.Event) -> None:
    """One connection of the root watch: LISTEN, call `changed()` once (a root stored while
    nobody here listened) and on every notice; return when the connection is lost, raise
    when it cannot be opened or a check of it (every WATCH_CHECK_S) fails."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(channel, lambda *_args: changed())
        listening.set()
        changed()
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), WATCH_CHECK_S)
            except TimeoutError:
                await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT)
    finally:
        conn.terminate()


async def _record_checkin(conn: asyncpg.Connection, device_id: str,
                          inventory: dict[str, Any]) -> None:
    fields, counter = inventory_fields(inventory)
    if not fields:
        return
    counted = () if counter is None else (counter,)
    await conn.execute(_inventory_update(list(fields), bool(counted)), *fields.values(),
                       device_id, *counted)


async def _record_checkins(conn: asyncpg.Connection,
                           inventories: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """record_checkin for each (device_id, inventory) in order, as one executemany (one round
    trip) per set of fields: a batch of check-ins, which all send the same fields, costs one
    trip, not one per board. A board's inventories are merged first (later fields over
    earlier ones, what updates in order leave), so each board is one row and the order
    between boards does not matter."""
    merged: dict[str, dict[str, Any]] = {}
    for device_id, inventory in inventories:
        merged.setdefault(device_id, {}).update(inventory)
    by_fields: dict[tuple[tuple[str, ...], bool], list[tuple[Any, ...]]] = {}
    for device_id, inventory in merged.items():
        fields, counter = inventory_fields(inventory)
        if fields:
            counted = () if counter is None else (counter,)
            by_fields.setdefault((tuple(fields), bool(counted)), []).append(
                (*fields.values(), device_id, *counted))
    for (names, with_counter), rows in by_fields.items():
        await conn.executemany(_inventory_update(names, with_counter), rows)


def _release(row: asyncpg.Record | None) -> Release | None:
    if row is None:
        return None
    return Release(id=int(row["id"]), app=row["app"], version=row["version"],
                   sequence=int(row["sequence"]), boards=tuple(row["boards"]),
                   created=int(row["created"]), expires=int(row["expires"]),
                   blobs=tuple(row["blobs"]),
                   yanked=None if row["yanked"] is None else int(row["yanked"]),
                   signers=tuple(row["signers"]))


def _device(row: asyncpg.Record | None) -> Device | None:
    if row is None:
        return None
    return Device(device_id=row["device_id"], public_key=bytes(row["public_key"]),
                  board=row["board"], tags=tuple(row["tags"]), channel=row["channel"],
                  bucket=int(row["bucket"]), counter=int(row["counter"]),
                  created=int(row["created"]), revoked=row["revoked"],
                  inventory={k: row[k] for k in INVENTORY_FIELDS})
