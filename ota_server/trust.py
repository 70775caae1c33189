"""The server's trust anchor: the root metadata chain, used to check uploads.

The first root comes from `--root` at the first start; later ones only by a verified rotation
(`POST /v1/roots`). The server checks uploads so it can refuse junk early; boards verify again.

Uploads are checked against the newest root in the store (`current()`, one query each).
Check-ins only read `latest` (their `X-Ota-Root` hint, no query): `follow()` has the store
tell this process when another replica stored a root (PostgreSQL LISTEN/NOTIFY), and
`latest` moves then, in the background (docs/operations.md, "Process-local state").
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from ota_server.storage import MetadataStore
from ota_server.storage.errors import StoreConflict, StoreError
from signing.errors import TrustError
from signing.root import RootMetadata, verify_root, verify_root_signatures, verify_rotation


class TrustSetupError(Exception):
    """The trust anchor cannot be set up; the server must not start."""


class RootRotationRace(Exception):
    """Two rotations to the same root version raced; the other one was stored."""


log = logging.getLogger("ota_server")


class TrustAnchor:
    """The stored root chain and the newest verified root this process knows (`latest`: it
    only ever moves to a higher version)."""

    def __init__(self, store: MetadataStore, latest: RootMetadata):
        self._store = store
        self.latest = latest
        self._refresh: asyncio.Task[None] | None = None
        self._refresh_again = False

    @classmethod
    async def load(cls, store: MetadataStore, root_path: Path | None) -> TrustAnchor:
        """Open the chain stored in `store`, seeding it from `root_path` on the first start.

        Raises TrustSetupError naming the file and the reason.
        """
        stored = await store.roots()
        given: bytes | None = None
        if root_path is not None:
            try:
                given = root_path.read_bytes()
            except OSError as err:
                raise TrustSetupError(f"cannot read root metadata {root_path}: "
                                      f"{err.strerror}") from err
        if not stored:
            if given is None:
                raise TrustSetupError("no trust anchor yet: give --root ROOT_JSON at the first "
                                      "start")
            try:
                root = verify_root(given, now=int(time.time()))
            except TrustError as err:
                raise TrustSetupError(f"{root_path}: {type(err).__name__}: {err}") from err
            try:
                await store.add_root(root.version, given)
            except StoreConflict:
                # Another replica starting at the same moment seeded it first: load what is
                # stored, which must be this same root.
                return await cls.load(store, root_path)
            return cls(store, root)
        try:
            # Each stored root was verified when it was accepted; re-check the signatures of
            # the chain so a tampered database cannot swap the anchor. Expiry is checked on use.
            root = verify_root_signatures(stored[0][1])
            for _, envelope in stored[1:]:
                root = verify_rotation(root, envelope, now=0)
        except TrustError as err:
            raise TrustSetupError(f"stored root chain does not verify: {err}") from err
        anchor = cls(store, root)
        if given is not None and all(given.strip() != env.strip() for _, env in stored):
            # `ota keys rotate` rewrites root.json: a root that is a verified rotation of the
            # newest stored one is accepted here as it would be by `ota roots upload`.
            try:
                await anchor.rotate(given)
            except (TrustError, RootRotationRace) as err:
                stored = await store.roots()
                if any(given.strip() == env.strip() for _, env in stored):
                    # Another replica starting with the same new root.json stored it first
                    # (its rotation raced this one, or was stored before this one's check):
                    # load the chain as it is now.
                    return await cls.load(store, root_path)
                raise TrustSetupError(
                    f"{root_path} is not among the stored roots (versions "
                    f"{[v for v, _ in stored]}) and not a verified rotation of version "
                    f"{stored[-1][0]} ({type(err).__name__}: {err}); later roots come only "
                    f"by verified rotation (`ota keys rotate`, then `ota roots upload`)") from err
        return anchor

    async def current(self) -> RootMetadata:
        """The newest stored root, each one newer than this process knew verified as a rotation
        of the one before it (another replica may have rotated the root: checking uploads
        against an older root here would be wrong). Raises TrustError when a stored root does
        not verify (a tampered database)."""
        root = self.latest
        for version, envelope in await self._store.roots():
            if version > root.version:
                root = verify_rotation(root, envelope, now=0)  # expiry is checked on use
        return self._newer(root)

    def _newer(self, root: RootMetadata) -> RootMetadata:
        """Make `root` the latest unless a higher version is already (two reads of the store
        finishing out of order never move `latest` back); the latest."""
        if root.version > self.latest.version:
            self.latest = root
        return self.latest

    async def follow(self) -> None:
        """Keep `latest` up with roots other processes store (the store's watch_roots:
        PostgreSQL's notifications; SQLite's poll of the newest root version). Until close()."""
        await self._store.watch_roots(self._root_stored)

    def _root_stored(self) -> None:
        """A root may have been stored elsewhere: read the chain again in the background,
        once at a time (a notice arriving meanwhile makes it read once more)."""
        if self._refresh is not None:
            self._refresh_again = True
            return
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_latest())

    async def _refresh_latest(self) -> None:
        try:
            while True:
                self._refresh_again = False
                try:
                    await self.current()
                except (StoreError, TrustError) as err:
                    # Uploads read the store themselves; only the check-in hint waits for the
                    # next notice (or the watch's reconnection, which reads again).
                    log.warning("newest root not read after a rotation notice: %s: %s",
                                type(err).__name__, err)
                if not self._refresh_again:
                    return
        finally:
            self._refresh = None

    async def close(self) -> None:
        """Stop a refresh under way (before the store closes)."""
        if self._refresh is not None:
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)

    async def rotate(self, envelope: bytes) -> RootMetadata:
        """Accept root N+1 signed by N's and its own root threshold; raises TrustError, or
        RootRotationRace when another rotation stored that version first."""
        new = verify_rotation(await self.current(), envelope, now=int(time.time()))
        try:
            await self._store.add_root(new.version, envelope)
        except StoreConflict:
            raise RootRotationRace(f"root version {new.version} was stored by another request "
                                   f"meanwhile") from None
        self._newer(new)
        return new

    async def envelope(self, version: int) -> bytes | None:
        for stored_version, envelope in await self._store.roots():
            if stored_version == version:
                return envelope
        return None
