"""Dashboard sessions: a server-side table of logins, their cookie, CSRF tokens, scopes.

A session is created by logging in with a publisher token (the CLI's tokens, checked with
the store's `token_valid`) and lives in this process's memory only (docs/dashboard.md,
Sessions): the cookie carries a random id and nothing else, logout deletes the entry, a
restart of the server ends every session, and no signing secret exists to be stolen.
Every request checks again that the token is still valid, so revoking a token
(`ota token revoke`) ends its sessions at once.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ota_server.errors import Forbidden
from ota_server.storage.records import Token
from ota_server.tokens import SCOPES

COOKIE = "mpota_session"
LOGIN_COOKIE = "mpota_login"  # double-submit token of the login form (login CSRF)
COOKIE_PATH = "/ui/"
# A session ends 8 hours after the login, or after 1 hour without a request.
LIFETIME_S = 8 * 3600
IDLE_S = 3600
# More open sessions than this: the oldest go first (a bound on memory, whatever logs in).
MAX_SESSIONS = 10_000
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


class SessionTable:
    """The open sessions of this process, by id."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._sessions: dict[str, Session] = {}
        self._clock = clock

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, token_hash: str, token: Token) -> Session:
        """A new session for a token the caller has checked (`token`: its name and scope)."""
        now = self._clock()
        self._evict(now)
        session = Session(id=secrets.token_urlsafe(32), token_hash=token_hash,
                          csrf=secrets.token_urlsafe(32), scopes=scopes_of(token.scope),
                          created=now, seen=now, actor=token.name, scope=token.scope)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of that id (its idle clock restarted), or None."""
        if not session_id:
            return None
        found = self._sessions.get(session_id)
        if found is None:
            return None
        now = self._clock()
        if found.expired(now):
            del self._sessions[session_id]
            return None
        found.seen = now
        return found

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _evict(self, now: float) -> None:
        """Drop expired sessions; at the cap, the oldest too (dicts keep creation order)."""
        if len(self._sessions) < MAX_SESSIONS:
            return
        for key in [k for k, s in self._sessions.items() if s.expired(now)]:
            del self._sessions[key]
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
