"""The server's trust anchor: the root metadata chain, used to check uploads.

The first root comes from `--root` at the first start; later ones only by a verified rotation
(`POST /v1/roots`). The server checks uploads so it can refuse junk early; boards verify again.
"""

from __future__ import annotations

import time
from pathlib import Path

from ota_server.storage import MetadataStore
from ota_server.storage.errors import StoreConflict
from signing.errors import TrustError
from signing.root import RootMetadata, verify_root, verify_root_signatures, verify_rotation


class TrustSetupError(Exception):
    """The trust anchor cannot be set up; the server must not start."""


class RootRotationRace(Exception):
    """Two rotations to the same root version raced; the other one was stored."""


class TrustAnchor:
    """The stored root chain and the newest verified root."""

    def __init__(self, store: MetadataStore, latest: RootMetadata):
        self._store = store
        self.latest = latest

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
            except TrustError as err:
                raise TrustSetupError(
                    f"{root_path} is not among the stored roots (versions "
                    f"{[v for v, _ in stored]}) and not a verified rotation of version "
                    f"{root.version} ({type(err).__name__}: {err}); later roots come only by "
                    f"verified rotation (`ota keys rotate`, then `ota roots upload`)") from err
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
        self.latest = root
        return root

    async def rotate(self, envelope: bytes) -> RootMetadata:
        """Accept root N+1 signed by N's and its own root threshold; raises TrustError, or
        RootRotationRace when another rotation stored that version first."""
        new = verify_rotation(await self.current(), envelope, now=int(time.time()))
        try:
            await self._store.add_root(new.version, envelope)
        except StoreConflict:
            raise RootRotationRace(f"root version {new.version} was stored by another request "
                                   f"meanwhile") from None
        self.latest = new
        return new

    async def envelope(self, version: int) -> bytes | None:
        for stored_version, envelope in await self._store.roots():
            if stored_version == version:
                return envelope
        return None
