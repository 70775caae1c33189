"""Publisher bearer tokens: random, shown once, stored only as their SHA-256."""

from __future__ import annotations

import hashlib
import secrets

from ota_server.storage import MetadataStore

TOKEN_PREFIX = "mpota_"  # noqa: S105 -- a recognisable prefix, not a secret


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(store: MetadataStore, name: str) -> str:
    """A new publisher token named `name`; the caller shows it once, the store keeps its hash."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    store.create_token(name, token_hash(token))
    return token
