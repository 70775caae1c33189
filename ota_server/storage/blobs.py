"""Content-addressed blobs in a directory: written to a temp file while hashing, checked,
fsynced and renamed, so a crash never leaves a half-written blob under its final name."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from ota_server.storage.errors import StoreNotFound

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class BlobError(Exception):
    """A blob upload was refused; nothing was stored."""


class BlobHashMismatch(BlobError):
    pass


class BlobTooLarge(BlobError):
    pass


def check_blob_id(sha256: str) -> str:
    """Return `sha256` if it is 64 lowercase hex digits; raise ValueError otherwise.

    This is the only thing standing between a URL and a file name, so it is strict.
    """
    if not SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"blob id must be 64 lowercase hex digits, got {sha256[:80]!r}")
    return sha256


class FileBlobStore:
    """BlobStore on a local directory: `<root>/<aa>/<sha256>` plus `<root>/tmp/`."""

    def __init__(self, root: Path, *, clear_tmp: bool = True):
        """`clear_tmp`: drop what `tmp/` holds. Leftovers of uploads cut short by a crash are
        never visible, and no other server writes here: the directory is in the data
        directory, which one server holds (ota_server.datadir.DataDirLock); replicas share
        blobs through S3, not a directory. The workers of one server share it, so a worker
        (False) leaves it to the server's supervisor, which clears it before any worker starts
        (ota_server.workers)."""
        self.root = root
        self._root_name = os.fspath(root)
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        if clear_tmp:
            for leftover in self._tmp.iterdir():
                leftover.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        check_blob_id(sha256)
        return self.root / sha256[:2] / sha256

    async def open_blob(self, sha256: str) -> BinaryIO:
        """The stored blob opened for reading; StoreNotFound when there is none.

        The name is joined as a string: this runs once per board download and pathlib's
        object building was a measurable part of serving a small blob.
        """
        check_blob_id(sha256)
        try:
            return open(os.path.join(self._root_name, sha256[:2], sha256), "rb")
        except FileNotFoundError:
            raise StoreNotFound(f"no blob {sha256}") from None

    async def local_path(self, sha256: str) -> Path:
        """The stored blob's file (written only after its hash matched); StoreNotFound when
        there is none."""
        path = self.path(sha256)
        if not path.is_file():
            raise StoreNotFound(f"no blob {sha256}")
        return path

    async def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def size(self, sha256: str) -> int | None:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    async def close(self) -> None:
        """Nothing to release: every file is closed by its user."""

    async def put_stream(self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int) -> bool:
        final = self.path(sha256)
        tmp = self._tmp / f"{sha256}.{secrets.token_hex(8)}"
        digest = hashlib.sha256()
        total = 0
        try:
            with open(tmp, "wb") as out:
                async for chunk in chunks:
                    total += len(chunk)
                    if total > max_bytes:
                        raise BlobTooLarge(f"blob is larger than the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if actual != sha256:
                raise BlobHashMismatch(f"body hashes to {actual}, not to the blob id {sha256}")
            if final.exists():
                return False
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            return True
        finally:
            tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the directory that holds the new name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
