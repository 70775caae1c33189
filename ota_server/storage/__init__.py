"""Storage behind two interfaces: metadata (`MetadataStore`) and content-addressed blobs
(`BlobStore`). The embedded default is SQLite + a directory; a PostgreSQL / S3-compatible pair
can implement the same protocols without touching the handlers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ota_server.storage.fleet_view import BoardDeployment, BoardFilter, FleetCounts
from ota_server.storage.records import (
    DEPLOYMENT_STATUSES,
    AuditEntry,
    Deployment,
    DeploymentCounts,
    Device,
    HistoryEntry,
    Release,
    Rollout,
    Token,
)

__all__ = [
    "DEPLOYMENT_STATUSES",
    "AuditEntry",
    "BlobStore",
    "Deployment",
    "DeploymentCounts",
    "Device",
    "HistoryEntry",
    "MetadataStore",
    "Release",
    "Rollout",
    "Token",
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
    def create_token(self, name: str, token_hash: str, scope: str) -> int: ...
    def revoke_token(self, name: str) -> int: ...
    def list_tokens(self) -> list[dict[str, Any]]: ...
    def token(self, token_hash: str) -> Token | None:
        """The valid (not revoked) token with this hash, if any."""
        ...

    # audit
    def add_audit(self, entry: AuditEntry) -> None: ...
    def list_audit(self, limit: int, actor: str | None = None) -> list[AuditEntry]:
        """The newest `limit` entries (of `actor` when given), oldest first."""
        ...

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
                    envelope: bytes, blobs: Sequence[tuple[str, int]], expires: int,
                    signers: Sequence[str] = ()) -> Release:
        """Register a release and spend the version's reservation (one transaction)."""
        ...

    def release(self, app: str, sequence: int) -> Release | None: ...
    def release_by_version(self, app: str, version: str) -> Release | None: ...
    def release_by_id(self, release_id: int) -> Release | None: ...
    def envelope(self, release_id: int) -> bytes: ...
    def list_releases(self, app: str | None = None) -> list[Release]: ...
    def yank_release(self, release_id: int) -> Release:
        """Mark the release yanked (never offered from now on); idempotent."""
        ...

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
    def board_counts(self) -> dict[str, int]:
        """Boards not revoked, per channel."""
        ...

    def rollouts_of(self, release_id: int) -> list[Rollout]:
        """The active or paused rollouts of the release."""
        ...
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

    # the dashboard (ota_server/ui): read-only views; ota_server/storage/fleet_view.py
    def fleet_counts(self, silent_before: int) -> FleetCounts: ...
    def board_page(self, board_filter: BoardFilter, *, after: str | None = None,
                   before: str | None = None, limit: int = 50) -> list[tuple[Device, str]]:
        """Keyset-paged boards matching the filter, with their status, in device id order."""
        ...

    def count_boards(self, board_filter: BoardFilter) -> int: ...
    def board_statuses(self, device_ids: Sequence[str], silent_before: int) -> dict[str, str]: ...
    def board_deployments(self, device_id: str, limit: int = 50) -> list[BoardDeployment]: ...
    def board_versions(self) -> list[str]: ...
