"""Dashboard sessions: a server-side table of logins, their cookie, CSRF tokens, scopes.

A session is created by logging in with a publisher token (the CLI's tokens, checked with
the store's `token`) and is kept in the metadata store (docs/dashboard.md, Sessions), so a
login through one replica of the server is known to every other and outlives a restart: the
cookie carries a random id and nothing else, the store keeps only the id's SHA-256, logout
deletes the row, and no signing secret exists to be stolen. Every request checks again that
the token is still valid, so revoking a token (`ota token revoke`) ends its sessions at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ota_server.errors import Forbidden
from ota_server.storage import MetadataStore
from ota_server.storage.records import Token, UiSession
from ota_server.tokens import SCOPES

COOKIE = "mpota_session"
LOGIN_COOKIE = "mpota_login"  # double-submit token of the login form (login CSRF)
COOKIE_PATH = "/ui/"
# A session ends 8 hours after the login, or after 1 hour without a request.
LIFETIME_S = 8 * 3600
IDLE_S = 3600
# More open sessions than this: the oldest go first (a bound on the table, whatever logs in).
MAX_SESSIONS = 10_000
# A request moves the stored idle clock only when it is this much older: a page view is not a
# database write each time (the live page polls every few seconds). A session may so end up
# to this long before a full IDLE_S after its last request, never later.
SEEN_RESOLUTION_S = 60
# Session ids are 43 characters (32 random bytes, URL-safe base64); a cookie much longer is
# not one, and is not hashed.
_MAX_ID_CHARS = 128
_MAX_FLASH = 5


class ScopeError(Forbidden):
    """The session's token does not have the scope the action needs."""


@dataclass
class Session:
    """One login: the SHA-256 of its token (never the token), the token's name (who, in the
    audit log) and scope, its CSRF token, and the scopes it holds."""

    id: str
    token_hash: str
    csrf: str
    scopes: frozenset[str]
    created: float
    seen: float
    flash: list[str] = field(default_factory=list)
    actor: str = ""
    scope: str = "read"
    # The messages as stored when the session was read: SessionTable.save writes `flash`
    # back only when it differs.
    stored_flash: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def tell(self, message: str) -> None:
        """Keep a message for the next page shown (the last few only)."""
        self.flash.append(message)
        del self.flash[:-_MAX_FLASH]

    def expired(self, now: float) -> bool:
        return now - self.created >= LIFETIME_S or now - self.seen >= IDLE_S

    def csrf_ok(self, given: str | None) -> bool:
        """Is `given` this session's CSRF token (compared in constant time)?"""
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


def scopes_of(scope: str) -> frozenset[str]:
    """The scopes a token of `scope` holds: its own and every one below it (ota_server.tokens:
    `read` < `publish` < `admin`, as for the API); none for an unknown scope."""
    if scope not in SCOPES:
        return frozenset()
    return frozenset(SCOPES[: SCOPES.index(scope) + 1])


def require_scope(session: Session, scope: str) -> None:
    """Raise ScopeError (403) unless the session's token has `scope` (one of SCOPES)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: one of {', '.join(SCOPES)}")
    if scope not in session.scopes:
        raise ScopeError(f"this token has no {scope!r} scope", code="missing_scope")


def session_id_hash(session_id: str) -> str:
    """The SHA-256 (hex) of a session id: what the store keeps instead of the id."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class SessionTable:
    """The dashboard's sessions, kept in the metadata store: every replica of the server on
    that store sees each one. `clock` gives Unix time (tests move it)."""

    def __init__(self, store: MetadataStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def create(self, token_hash: str, token: Token) -> Session:
        """A new session for a token the caller has checked (`token`: its name and scope).
        Expired sessions go first, and past MAX_SESSIONS the oldest."""
        now = self._clock()
        await self._store.prune_ui_sessions(now - LIFETIME_S, now - IDLE_S, MAX_SESSIONS - 1)
        session = Session(id=secrets.token_urlsafe(32), token_hash=token_hash,
                          csrf=secrets.token_urlsafe(32), scopes=scopes_of(token.scope),
                          created=now, seen=now, actor=token.name, scope=token.scope)
        await self._store.add_ui_session(UiSession(
            id_hash=session_id_hash(session.id), token_hash=token_hash, csrf=session.csrf,
            actor=token.name, scope=token.scope, created=now, seen=now))
        return session

    async def get(self, session_id: str | None) -> Session | None:
        """The live session of that id (its idle clock restarted), or None; an expired one
        is deleted."""
        if not session_id or len(session_id) > _MAX_ID_CHARS:
            return None
        id_hash = session_id_hash(session_id)
        stored = await self._store.ui_session(id_hash)
        if stored is None:
            return None
        found = Session(id=session_id, token_hash=stored.token_hash, csrf=stored.csrf,
                        scopes=scopes_of(stored.scope), created=stored.created,
                        seen=stored.seen, flash=list(stored.flash), actor=stored.actor,
                        scope=stored.scope, stored_flash=stored.flash)
        now = self._clock()
        if found.expired(now):
            await self._store.end_ui_session(id_hash)
            return None
        if now - stored.seen >= SEEN_RESOLUTION_S:
            await self._store.touch_ui_session(id_hash, now)
            found.seen = now
        return found

    async def save(self, session: Session) -> None:
        """Store the session's messages when they changed since it was read (a message told,
        or the messages shown and cleared)."""
        if tuple(session.flash) != session.stored_flash:
            await self._store.set_ui_session_flash(session_id_hash(session.id), session.flash)
            session.stored_flash = tuple(session.flash)

    async def end(self, session_id: str) -> None:
        if session_id and len(session_id) <= _MAX_ID_CHARS:
            await self._store.end_ui_session(session_id_hash(session_id))
