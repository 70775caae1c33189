"""The errors that trust decisions end in.

`TrustError` and its children are a contract: the MicroPython verifier on the board raises
errors with the same class names, and tests/vectors/vectors.json names them as expected
outcomes. Two roots, as in python-tuf: `TrustError` for bad or refused signed data, and the
local-file errors (`KeyFileError`, `BundleError`) for problems on the signer's own machine.
"""

from __future__ import annotations


class TrustError(Exception):
    """Base of every verification failure: the data must not be trusted."""


class MalformedError(TrustError):
    """Not JSON, wrong types, missing fields, bad base64, bad path, too many files, bad semver,
    a signature that is not 64 bytes: the data cannot even be read as the format says."""


class PayloadTypeError(TrustError):
    """The envelope's payloadType is not the one this verification expects."""


class TooLargeError(TrustError):
    """The envelope is larger than the cap; checked before any parsing."""


class ThresholdError(TrustError):
    """Fewer valid signatures from distinct trusted keyids than the role's threshold."""


class ExpiredError(TrustError):
    """The document's `expires` is at or before the reference time."""


class RollbackError(TrustError):
    """The manifest's sequence is lower than the installed one."""


class SameSequenceError(RollbackError):
    """The manifest's sequence equals the installed one: the normal "nothing new"."""


class WrongBoardError(TrustError):
    """The board is not among the manifest's boards."""


class WrongAppError(TrustError):
    """The manifest is a release of another app than the one the board is bound to."""


class RotationError(TrustError):
    """A new root's version is not exactly the trusted version + 1."""


class FileMismatchError(TrustError):
    """A file's bytes do not match its manifest entry."""


class HashMismatchError(FileMismatchError):
    """The SHA-256 of the bytes differs from the manifest's."""


class LengthMismatchError(FileMismatchError):
    """The bytes are shorter or longer than the manifest's size."""


class KeyFileError(Exception):
    """A key file cannot be read or written: missing, wrong passphrase, wrong key type."""


class BundleError(Exception):
    """An app directory cannot be built into a bundle: bad path, symlink escape, compile error."""
