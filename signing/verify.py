"""Verify a release: envelope -> signatures -> manifest -> policy, or one precise TrustError.

Order of checks (the first failing one decides the error):
size cap, envelope JSON and shape, payloadType, release threshold, manifest fields, app,
board, sequence (same or lower), expiry. Signatures come before the payload is parsed, so
unsigned JSON is never interpreted beyond the envelope.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

from signing import dsse
from signing.errors import (
    ExpiredError,
    HashMismatchError,
    LengthMismatchError,
    RollbackError,
    SameSequenceError,
    WrongAppError,
    WrongBoardError,
)
from signing.limits import DEFAULT_LIMITS, Limits
from signing.manifest import MANIFEST_PAYLOAD_TYPE, FileEntry, Manifest
from signing.root import RootMetadata

_CHUNK = 16384


def verify_manifest(
    envelope_bytes: bytes,
    root: RootMetadata,
    *,
    now: int,
    board: str | None = None,
    installed_sequence: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    app: str | None = None,
) -> Manifest:
    """The verified manifest, signed by a threshold of `root`'s release keys.

    `app` None skips the app check (a board bound to an app takes only its releases:
    docs/threat-model.md), `board` None the board check, `installed_sequence` None the
    rollback check (e.g. the server on upload). `root` is trusted as given: its expiry is
    checked when it is accepted (verify_root, verify_rotation), not here.
    Raises TooLargeError, MalformedError, PayloadTypeError, ThresholdError, WrongAppError,
    WrongBoardError, RollbackError, SameSequenceError or ExpiredError.
    """
    envelope = dsse.parse_envelope(envelope_bytes, MANIFEST_PAYLOAD_TYPE, limits)
    dsse.require_threshold(
        envelope, root.role_keys(root.release), root.release.threshold, "release"
    )
    manifest = Manifest.from_payload(envelope.payload, limits)
    # Before the sequence: another app's sequence numbers say nothing about this one's.
    if app is not None and manifest.app != app:
        raise WrongAppError(f"app {manifest.app!r} is not this board's app {app!r}")
    if board is not None and board not in manifest.boards:
        raise WrongBoardError(
            f"board {board!r} is not in the manifest's boards {list(manifest.boards)}"
        )
    if installed_sequence is not None:
        if manifest.sequence == installed_sequence:
            raise SameSequenceError(f"sequence {manifest.sequence} is already installed")
        if manifest.sequence < installed_sequence:
            raise RollbackError(
                f"sequence {manifest.sequence} is lower than installed {installed_sequence}"
            )
    if manifest.expires <= now:
        raise ExpiredError(f"manifest expired at {manifest.expires} (now {now})")
    return manifest


def _check(data: bytes | bytearray | memoryview | BinaryIO, digest: str, size: int,
           what: str) -> None:
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        if len(view) != size:
            raise LengthMismatchError(f"{what}: {len(view)} bytes, manifest says {size}")
        actual = hashlib.sha256(view).hexdigest()
    else:
        hasher = hashlib.sha256()
        seen = 0
        # Read at most size + 1 bytes: enough to notice "too long" without trusting the stream.
        while seen <= size:
            chunk = data.read(min(_CHUNK, size + 1 - seen))
            if not chunk:
                break
            seen += len(chunk)
            hasher.update(chunk)
        if seen != size:
            longer = "more than" if seen > size else "only"
            raise LengthMismatchError(f"{what}: {longer} {seen} bytes, manifest says {size}")
        actual = hasher.hexdigest()
    if actual != digest:
        raise HashMismatchError(f"{what}: sha256 {actual}, manifest says {digest}")


def verify_file(entry: FileEntry, data: bytes | bytearray | memoryview | BinaryIO) -> None:
    """Check a file's content (after decoding) against `entry.size` and `entry.sha256`.

    A stream is read in chunks and never past size + 1 bytes.
    Raises LengthMismatchError or HashMismatchError.
    """
    _check(data, entry.sha256, entry.size, f"file {entry.path!r}")


def verify_blob(entry: FileEntry, data: bytes | bytearray | memoryview | BinaryIO) -> None:
    """Check transferred bytes against `entry.transfer_size` and `entry.blob`.

    Raises LengthMismatchError or HashMismatchError.
    """
    _check(data, entry.blob, entry.transfer_size, f"blob of {entry.path!r}")
