"""Publisher bearer tokens: random, shown once, stored only as their SHA-256, each with a scope.

Scopes are ordered, each allowing what the one before it does (docs/operations.md, "Tokens
and scopes"): `read` lists (releases, boards, channels, rollouts, roots, the audit log);
`publish` also uploads blobs, registers releases, registers boards, starts and steers
rollouts and yanks releases; `admin` also revokes boards, uploads root metadata and creates,
lists and revokes tokens.
"""

from __future__ import annotations

import hashlib
import secrets

from ota_server.storage import MetadataStore

TOKEN_PREFIX = "mpota_"  # noqa: S105 -- a recognisable prefix, not a secret
SCOPES = ("read", "publish", "admin")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def allows(held: str, needed: str) -> bool:
    """Does a token of scope `held` open a route that needs `needed`? Unknown scopes open
    nothing."""
    if held not in SCOPES or needed not in SCOPES:
        return False
    return SCOPES.index(held) >= SCOPES.index(needed)


async def create_token(store: MetadataStore, name: str, scope: str = "admin") -> str:
    """A new publisher token named `name` with `scope`; the caller shows it once, the store
    keeps its hash. Raises ValueError for a scope not in SCOPES or a name that is not a plain
    name (ota_server.validation.NAME)."""
    from ota_server.validation import NAME

    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    # The audit log names the caller by the token's name: a plain name, never `local:…`.
    if not NAME.fullmatch(name):
        raise ValueError(f"token name {name[:80]!r} must match {NAME.pattern}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await store.create_token(name, token_hash(token), scope)
    return token
