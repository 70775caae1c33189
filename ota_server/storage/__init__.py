"""Storage behind two interfaces: metadata (`MetadataStore`) and content-addressed blobs
(`BlobStore`). The embedded default is SQLite + a directory; a PostgreSQL / S3-compatible pair
can implement the same protocols without touching the handlers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ota_server.storage.records import (
    DEPLOYMENT_STATUSES,
    Deployment,
    DeploymentCounts,
    Device,
    HistoryEntry,
    Release,
    Rollout,
)

__all__ = [
    "DEPLOYMENT_STATUSES",
    "BlobStore",
    "Deployment",
    "DeploymentCounts",
    "Device",
    "HistoryEntry",
    "MetadataStore",
    "Release",
    "Rollout",
]


class BlobStore(Protocol):
    """Immutable blobs named by the hex SHA-256 of their bytes."""

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int | None: ...

    def path(self, sha256: str) -> Path:
        """A local path the server can sendfile from (the S3 backend would redirect instead)."""
        ...

    async def put_stream(self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int) -> bool:
        """Store the bytes if their hash is `sha256`; True if newly written, False if present.

        Raises BlobHashMismatch or BlobTooLarge and leaves nothing visible on failure.
        """
        ...


class MetadataStore(Protocol):
    """Everything but blob bytes. Each method is one transaction."""

    # tokens
    def create_token(self, name: str, token_hash: str) -> int: ...
    def revoke_token(self, name: str) -> int: ...
    def list_tokens(self) -> list[dict[str, Any]]: ...
    def token_valid(self, token_hash: str) -> bool: ...

    # roots
    def roots(self) -> list[tuple[int, bytes]]: ...
    def add_root(self, version: int, envelope: bytes) -> None: ...

    # releases
    def max_sequence(self, app: str) -> int | None: ...
    def reserve_sequence(self, app: str, version: str, floor: int = 1) -> tuple[int, bool]:
        """(sequence, registered) for a version: its release's, its earlier reservation, or a
        new reservation at `floor` or above every sequence of the app; atomic."""
        ...

    def reserved_version(self, app: str, sequence: int) -> str | None: ...
    def add_release(self, app: str, version: str, sequence: int, boards: Sequence[str],
                    envelope: bytes, blobs: Sequence[tuple[str, int]], expires: int) -> Release:
        """Register a release and spend the version's reservation (one transaction)."""
        ...

    def release(self, app: str, sequence: int) -> Release | None: ...
    def release_by_version(self, app: str, version: str) -> Release | None: ...
    def release_by_id(self, release_id: int) -> Release | None: ...
    def envelope(self, release_id: int) -> bytes: ...
    def list_releases(self, app: str | None = None) -> list[Release]: ...

    # devices
    def add_device(self, device_id: str, public_key: bytes, board: str, tags: Iterable[str],
                   channel: str, bucket: int) -> Device: ...
    def device(self, device_id: str) -> Device | None: ...
    def list_devices(self) -> list[Device]: ...
    def revoke_device(self, device_id: str) -> bool: ...
    def count_eligible(self, channel: str, tags: Sequence[str], bucket_limit: float) -> int: ...
    def advance_counter(self, device_id: str, counter: int) -> bool:
        """Atomically accept a counter greater than the last one; also sets last_seen."""
        ...

    def advance_counters(self, advances: Sequence[tuple[str, int]]) -> list[bool]:
        """advance_counter for each (device_id, counter) in order, all in one transaction."""
        ...

    def record_checkin(self, device_id: str, inventory: dict[str, Any]) -> None:
        """Overwrite the given inventory fields."""
        ...

    def write_checkins(self, inventories: Sequence[tuple[str, dict[str, Any]]],
                       offers: Sequence[tuple[str, int, str]],
                       advances: Sequence[tuple[str, int]] = ()) -> list[bool]:
        """In one transaction: record_checkin for each, `offered` for each (device_id,
        release_id) without a deployment yet, then advance_counter for each advance in order
        (ota_server.counters writes check-in records behind with it)."""
        ...


    # channels, rollouts, deployments
    def base_release(self, channel: str) -> Release | None: ...
    def set_base_release(self, channel: str, release_id: int) -> None: ...
    def current_rollout(self, channel: str) -> Rollout | None: ...
    def start_rollout(self, channel: str, release_id: int, policy: dict[str, Any]) -> Rollout: ...
    def update_rollout(self, rollout_id: int, *, stage: int | None = None,
                       state: str | None = None, reason: str | None = None) -> None: ...
    def list_channels(self) -> list[str]: ...
    def deployment_status(self, device_id: str, release_id: int) -> str | None: ...
    def deployment(self, device_id: str, release_id: int) -> Deployment | None: ...
    def open_deployment_for(self, device_id: str, release_id: int, channel: str) -> None:
        """Record an offer: a deployment `offered`, counted in `channel`; no-op if open."""
        ...

    def set_deployment(self, device_id: str, release_id: int, status: str,
                       reason: str | None = None) -> bool:
        """Move an existing deployment and add the move to the board's history (one
        transaction); False, nothing written, when none was ever opened."""
        ...

    def device_history(self, device_id: str) -> list[HistoryEntry]:
        """The board's deployment history, oldest first (at most HISTORY_PER_DEVICE rows)."""
        ...

    def deployment_counts(self, release_id: int, channel: str) -> DeploymentCounts: ...
    def open_deployment(self, device_id: str, app: str | None) -> int | None: ...

    def close(self) -> None: ...
