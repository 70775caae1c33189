"""Plain records the storage backends return; no behaviour, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

DEPLOYMENT_STATUSES = ("downloading", "installed", "confirmed", "failed", "rolled_back")
# A deployment in one of these has finished; the rest are in progress.
FINAL_STATUSES = ("confirmed", "failed", "rolled_back")
STARTED_STATUSES = ("downloading", "installed")
# The newest history rows kept per board (older ones are dropped as new ones come): a board
# reports a handful per release, so this spans its last dozens of releases.
HISTORY_PER_DEVICE = 100


# The inventory a board reports at check-in and the server keeps in its device row
# (Device.inventory), the same columns in every metadata store.
INVENTORY_FIELDS = ("app", "version", "sequence", "root_version", "micropython", "mem_free",
                    "slot", "last_seen", "last_status", "last_error")
# The key of an inventory dict that names the counter of the board request it comes from: the
# stores write such an inventory only over the records of an older request (the device row's
# `records_counter`, migration 10), so a check-in's inventory written behind never undoes what
# a later request of the board wrote first through another process.
RECORDS_COUNTER = "records_counter"


def inventory_fields(inventory: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """The INVENTORY_FIELDS of `inventory` to write, and the counter of the request they come
    from (None: written whatever the row holds)."""
    counter = inventory.get(RECORDS_COUNTER)
    return ({k: v for k, v in inventory.items() if k in INVENTORY_FIELDS},
            None if counter is None else int(counter))


@dataclass(frozen=True)
class BoardIdentity:
    """What a board is registered as: the fields no statement ever changes once the board is
    registered (a re-provisioned board gets a new id). A server may keep these in memory;
    what changes (counter, revocation, inventory) it reads from the store."""

    device_id: str
    public_key: bytes
    board: str
    tags: tuple[str, ...]
    channel: str
    bucket: int


@dataclass(frozen=True)
class Device(BoardIdentity):
    """A registered board as stored now: its identity and its changing fields."""

    counter: int
    created: int
    revoked: int | None = None
    inventory: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> BoardIdentity:
        """The board's immutable fields alone."""
        return BoardIdentity(self.device_id, self.public_key, self.board, self.tags,
                             self.channel, self.bucket)

    def public_view(self) -> dict[str, Any]:
        """What the publisher API shows: no counter, the key as base64."""
        import base64

        return {
            "device_id": self.device_id,
            "public_key": base64.b64encode(self.public_key).decode("ascii"),
            "board": self.board,
            "tags": list(self.tags),
            "channel": self.channel,
            "created": self.created,
            "revoked": self.revoked,
            **self.inventory,
        }


@dataclass(frozen=True)
class Release:
    id: int
    app: str
    version: str
    sequence: int
    created: int
    expires: int  # Unix time the manifest stops being valid: never offered from then on
    boards: tuple[str, ...] = ()
    blobs: tuple[str, ...] = ()
    yanked: int | None = None  # Unix time a publisher yanked it: never offered from then on
    signers: tuple[str, ...] = ()  # key ids whose signatures the server verified

    def expired(self, now: int) -> bool:
        """Past its expiry at `now`, as a board's check (`expires <= now`) decides."""
        return self.expires <= now

    def offerable(self, now: int) -> bool:
        """May a board be offered it at `now`: neither expired nor yanked."""
        return self.yanked is None and self.expires > now

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "app": self.app, "version": self.version,
                "sequence": self.sequence, "boards": list(self.boards), "created": self.created,
                "expires": self.expires, "blobs": len(self.blobs), "yanked": self.yanked,
                "signers": list(self.signers)}


@dataclass(frozen=True)
class Rollout:
    id: int
    channel: str
    release: Release
    policy: dict[str, Any]
    stage: int
    state: str
    reason: str | None
    created: int
    updated: int


@dataclass(frozen=True)
class Deployment:
    """One board's progress with one release, opened when a check-in offered it."""

    device_id: str
    release_id: int
    status: str  # offered, or one of DEPLOYMENT_STATUSES
    channel: str  # the channel whose check-in offered it: the rollout counts it there


@dataclass(frozen=True)
class HistoryEntry:
    """One report that moved a board's deployment: which release, what happened, why, when."""

    app: str
    version: str
    sequence: int
    status: str
    reason: str | None
    at: int  # Unix seconds the server took the report

    def view(self) -> dict[str, Any]:
        return {"app": self.app, "version": self.version, "sequence": self.sequence,
                "status": self.status, "reason": self.reason, "at": self.at}


@dataclass(frozen=True)
class DeploymentCounts:
    offered: int = 0
    downloading: int = 0
    installed: int = 0
    confirmed: int = 0
    failed: int = 0
    rolled_back: int = 0

    @property
    def results(self) -> int:
        return self.confirmed + self.failed + self.rolled_back

    @property
    def failures(self) -> int:
        return self.failed + self.rolled_back


@dataclass(frozen=True)
class Token:
    """A valid publisher token: its name (who, in the audit log) and its scope."""

    name: str
    scope: str  # read, publish or admin (ota_server.tokens.SCOPES)


@dataclass(frozen=True)
class AuditEntry:
    """One state-changing publisher call: who, what, when, and how it ended."""

    at: int
    actor: str
    scope: str
    action: str
    target: str
    status: int
    outcome: str  # "ok", or the error's stable code
    id: int = 0

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "actor": self.actor, "scope": self.scope,
                "action": self.action, "target": self.target, "status": self.status,
                "outcome": self.outcome}


@dataclass(frozen=True)
class UiSession:
    """One dashboard login as the store keeps it (ota_server/ui/sessions.py): the SHA-256 of
    the cookie's session id (never the id), the SHA-256 of the token that logged in (never the
    token), the token's name and scope, the session's CSRF token, its times (Unix seconds)
    and the messages waiting for the next page shown."""

    id_hash: str
    token_hash: str
    csrf: str
    actor: str
    scope: str
    created: float
    seen: float
    flash: tuple[str, ...] = ()


class Advances(list[bool]):
    """The outcomes of counter advances, in the order asked (True: accepted and written), and
    the newest fleet epoch the store's counter statements saw (the `fleet_epoch` table:
    pg_migrations/0007 on PostgreSQL, migrations/0009 on SQLite; None when no advance was
    accepted)."""

    def __init__(self, outcomes: Iterable[bool] = (), epoch: int | None = None):
        super().__init__(outcomes)
        self.epoch = epoch
