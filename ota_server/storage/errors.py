"""The storage backends' own errors: callers handle these, never a driver's exceptions
(asyncpg, botocore), so a handler reads the same on every backend."""

from __future__ import annotations


class StoreError(Exception):
    """A storage operation failed; nothing it would have written is visible."""


class StoreConflict(StoreError):
    """The write clashes with what is stored (a taken sequence, version, device id or root
    version); the stored state is unchanged."""


class StoreNotFound(StoreError):
    """The record or blob the operation names does not exist."""


class StoreUnavailable(StoreError):
    """The database or object store could not be reached or dropped the connection (a restart,
    a network fault): worth retrying later (a server answers 503 with Retry-After). A write
    that raised this may or may not have been committed."""


class StoreBusy(StoreUnavailable):
    """Another process holds the database's write lock and the operation was asked not to wait
    for it (SqliteStore.lock_waits_off): nothing was written; try again."""
