"""Storage behind two interfaces: metadata (`MetadataStore`) and content-addressed blobs
(`BlobStore`). The embedded default is SQLite + a directory; a PostgreSQL / S3-compatible pair
can implement the same protocols without touching the handlers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ota_server.storage.fleet_view import BoardDeployment, BoardFilter, FleetCounts
from ota_server.storage.records import (
    DEPLOYMENT_STATUSES,
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
)

__all__ = [
    "DEPLOYMENT_STATUSES",
    "Advances",
    "AuditEntry",
    "BlobStore",
    "BoardIdentity",
    "Deployment",
    "DeploymentCounts",
    "Device",
    "HistoryEntry",
    "MetadataStore",
    "Release",
    "Rollout",
    "Token",
    "UiSession",
]


class BlobStore(Protocol):
    """Immutable blobs named by the hex SHA-256 of their bytes. Every operation is async and
    raises the store's own errors (ota_server.storage.errors, plus BlobHashMismatch and
    BlobTooLarge for an upload), never a driver's."""

    async def exists(self, sha256: str) -> bool: ...

    async def size(self, sha256: str) -> int | None: ...

    async def open_blob(self, sha256: str) -> BinaryIO:
        """The blob's bytes as a local file opened for reading, which the server sends with
        sendfile (the S3 backend fills a verified local cache first); StoreNotFound when
        there is no such blob, StoreUnavailable when the object store cannot be reached."""
        ...

    async def local_path(self, sha256: str) -> Path:
        """The local file `<directory>/<sha256[:2]>/<sha256>` holding exactly the blob (checked
        against its hash), for nginx to send (X-Accel-Redirect); errors as open_blob."""
        ...

    async def put_stream(self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int) -> bool:
        """Store the bytes if their hash is `sha256`; True if newly written, False if present.

        Raises BlobHashMismatch or BlobTooLarge and leaves nothing visible on failure.
        """
        ...

    async def close(self) -> None: ...


class MetadataStore(Protocol):
    """Everything but blob bytes. Each method is one transaction, async, and raises the
    store's own errors only (ota_server.storage.errors: StoreConflict, StoreNotFound,
    StoreUnavailable), never a driver's."""

    # tokens
    async def create_token(self, name: str, token_hash: str, scope: str) -> int: ...
    async def revoke_token(self, name: str) -> int: ...
    async def list_tokens(self) -> list[dict[str, Any]]: ...
    async def token(self, token_hash: str) -> Token | None:
        """The valid (not revoked) token with this hash, if any."""
        ...

    # audit
    async def add_audit(self, entry: AuditEntry) -> None: ...
    async def list_audit(self, limit: int, actor: str | None = None) -> list[AuditEntry]:
        """The newest `limit` entries (of `actor` when given), oldest first."""
        ...

    # roots
    async def roots(self) -> list[tuple[int, bytes]]: ...
    async def add_root(self, version: int, envelope: bytes) -> None: ...
    async def watch_roots(self, changed: Callable[[], None]) -> None:
        """Have `changed()` called (on the event loop) whenever another process may have
        stored a root, until close(): PostgreSQL's LISTEN/NOTIFY; on SQLite, a poll of the
        newest root version once a second. Returns once the watch is in place (or gave up
        waiting for it)."""
        ...

    # dashboard sessions (ota_server/ui/sessions.py), shared by every replica
    async def add_ui_session(self, session: UiSession) -> None: ...
    async def ui_session(self, id_hash: str) -> UiSession | None: ...
    async def touch_ui_session(self, id_hash: str, seen: float) -> None:
        """Move the session's last request time forward (never back)."""
        ...

    async def set_ui_session_flash(self, id_hash: str, flash: Sequence[str]) -> None: ...
    async def end_ui_session(self, id_hash: str) -> None: ...
    async def prune_ui_sessions(self, created_before: float, seen_before: float,
                                keep: int) -> int:
        """Delete the sessions created before `created_before` or last seen before
        `seen_before`, then all but the `keep` newest; the number deleted."""
        ...

    # releases
    async def max_sequence(self, app: str) -> int | None: ...
    async def reserve_sequence(self, app: str, version: str, floor: int = 1) -> tuple[int, bool]:
        """(sequence, registered) for a version: its release's, its earlier reservation, or a
        new reservation at `floor` or above every sequence of the app; atomic."""
        ...

    async def reserved_version(self, app: str, sequence: int) -> str | None: ...
    async def add_release(self, app: str, version: str, sequence: int, boards: Sequence[str],
                          envelope: bytes, blobs: Sequence[tuple[str, int]], expires: int,
                          signers: Sequence[str] = ()) -> Release:
        """Register a release and spend the version's reservation (one transaction)."""
        ...

    async def release(self, app: str, sequence: int) -> Release | None: ...
    async def release_by_version(self, app: str, version: str) -> Release | None: ...
    async def release_by_id(self, release_id: int) -> Release | None: ...
    async def envelope(self, release_id: int) -> bytes: ...
    async def list_releases(self, app: str | None = None) -> list[Release]: ...
    async def yank_release(self, release_id: int) -> Release:
        """Mark the release yanked (never offered from now on); idempotent."""
        ...

    # devices
    async def add_device(self, device_id: str, public_key: bytes, board: str, tags: Iterable[str],
                         channel: str, bucket: int) -> Device: ...
    async def device(self, device_id: str) -> Device | None: ...
    async def board_identity(self, device_id: str) -> BoardIdentity | None:
        """The registered board's identity alone (revoked or not; None when unknown): what a
        request's authentication reads of a board it does not keep (ota_server.device_auth),
        cheaper than device()."""
        ...

    async def list_devices(self) -> list[Device]: ...
    async def revoke_device(self, device_id: str) -> bool: ...
    async def count_eligible(self, channel: str, tags: Sequence[str],
                             bucket_limit: float) -> int: ...
    async def advance_counter(self, device_id: str, counter: int) -> bool:
        """Atomically accept a counter greater than the last one of a board that is not
        revoked; also sets last_seen. False for a replay, a revoked or an unknown board."""
        ...

    async def advance_counters(self, advances: Sequence[tuple[str, int]]) -> Advances:
        """advance_counter for each (device_id, counter) in order, all in one transaction; the
        outcomes and the fleet epoch the writing statement saw (current_rollout)."""
        ...

    async def record_checkin(self, device_id: str, inventory: dict[str, Any]) -> None:
        """Overwrite the given inventory fields."""
        ...

    async def write_checkins(self, inventories: Sequence[tuple[str, dict[str, Any]]],
                             offers: Sequence[tuple[str, int, str]],
                             advances: Sequence[tuple[str, int]] = ()) -> Advances:
        """In one transaction: record_checkin for each, `offered` for each (device_id,
        release_id) without a deployment yet, then advance_counter for each advance in order
        (ota_server.counters writes check-in records behind with it); as advance_counters."""
        ...


    # channels, rollouts, deployments
    async def base_release(self, channel: str, *, epoch: int | None = None) -> Release | None:
        """The channel's base release; `epoch` as current_rollout's."""
        ...

    async def set_base_release(self, channel: str, release_id: int) -> None: ...
    async def current_rollout(self, channel: str, *, epoch: int | None = None) -> Rollout | None:
        """The channel's newest rollout that is not superseded, as stored now; with `epoch`
        (the Advances.epoch of a board request's counter), possibly from a copy the store
        keeps, but never older than what was committed before that counter statement."""
        ...
    async def start_rollout(self, channel: str, release_id: int, policy: dict[str, Any], *,
                            base_release_id: int | None = None,
                            replaces: int | None = None) -> Rollout:
        """In one transaction, only while the channel's current rollout is `replaces` (None:
        none; else StoreConflict, nothing written): set the base release when given,
        supersede the channel's rollouts, start this one at stage 0."""
        ...
    async def rollout(self, rollout_id: int) -> Rollout | None: ...
    async def update_rollout(self, rollout_id: int, *, stage: int | None = None,
                             state: str | None = None, reason: str | None = None,
                             expect_stage: int | None = None,
                             expect_state: str | None = None) -> bool:
        """Set the given fields, only if the rollout is still at `expect_stage` and in
        `expect_state` (when given): one conditional statement, so of two replicas moving a
        rollout together exactly one does. True when it changed."""
        ...
    async def list_channels(self) -> list[str]: ...
    async def board_counts(self) -> dict[str, int]:
        """Boards not revoked, per channel."""
        ...

    async def rollouts_of(self, release_id: int) -> list[Rollout]:
        """The active or paused rollouts of the release."""
        ...
    async def deployment_status(self, device_id: str, release_id: int) -> str | None: ...
    async def deployment(self, device_id: str, release_id: int) -> Deployment | None: ...
    async def open_deployment_for(self, device_id: str, release_id: int, channel: str) -> None:
        """Record an offer: a deployment `offered`, counted in `channel`; no-op if open."""
        ...

    async def open_deployments_for(self, offers: Sequence[tuple[str, int, str]]) -> None:
        """open_deployment_for each (device_id, release_id, channel), in one transaction."""
        ...

    async def set_deployment(self, device_id: str, release_id: int, status: str,
                             reason: str | None = None, *,
                             inventory: dict[str, Any] | None = None) -> bool:
        """Move an existing deployment and add the move to the board's history, and overwrite
        the board's `inventory` fields when given (one transaction); False, nothing written,
        when none was ever opened. The same status again writes the inventory alone."""
        ...

    async def device_history(self, device_id: str) -> list[HistoryEntry]:
        """The board's deployment history, oldest first (at most HISTORY_PER_DEVICE rows)."""
        ...

    async def deployment_counts(self, release_id: int, channel: str) -> DeploymentCounts: ...
    async def open_deployment(self, device_id: str, app: str | None) -> int | None: ...

    async def schema_version(self) -> int: ...
    async def release_blob_refs(self) -> list[str]:
        """Every blob any release refers to."""
        ...

    async def close(self) -> None: ...

    # the dashboard (ota_server/ui): read-only views; ota_server/storage/fleet_view.py
    async def fleet_counts(self, silent_before: int) -> FleetCounts: ...
    async def board_page(self, board_filter: BoardFilter, *, after: str | None = None,
                         before: str | None = None, limit: int = 50) -> list[tuple[Device, str]]:
        """Keyset-paged boards matching the filter, with their status, in device id order."""
        ...

    async def count_boards(self, board_filter: BoardFilter) -> int: ...
    async def board_statuses(self, device_ids: Sequence[str],
                             silent_before: int) -> dict[str, str]: ...
    async def board_deployments(self, device_id: str, limit: int = 50) -> list[BoardDeployment]: ...
    async def board_versions(self) -> list[str]: ...
