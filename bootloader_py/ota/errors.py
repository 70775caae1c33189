# The TrustError subclasses, the host's signing.errors tree (tests check names and parents).
# Loaded by trust.fail() when the verifier refuses something, never while a verification
# passes: each class costs a few hundred bytes of heap (docs/board.md, Memory budget).
from ota.trust import TrustError


class MalformedError(TrustError):
    """Not JSON, wrong types, missing fields, bad base64, bad path, sig not 64 bytes..."""


class PayloadTypeError(TrustError):
    """The envelope's payloadType is not the expected one."""


class TooLargeError(TrustError):
    """The envelope is over the size cap (checked before parsing)."""


class ThresholdError(TrustError):
    """Fewer valid signatures from distinct trusted keyids than the role's threshold."""


class ExpiredError(TrustError):
    """expires <= now."""


class RollbackError(TrustError):
    """The manifest's sequence is lower than the installed one."""


class SameSequenceError(RollbackError):
    """The manifest's sequence equals the installed one: the normal "nothing new"."""


class WrongBoardError(TrustError):
    """This board is not among the manifest's boards."""


class WrongAppError(TrustError):
    """The manifest is a release of another app than the board's."""


class RotationError(TrustError):
    """A new root's version is not exactly the trusted version + 1."""


class FileMismatchError(TrustError):
    """A file's bytes do not match its manifest entry."""


class HashMismatchError(FileMismatchError):
    """The SHA-256 of the bytes differs from the manifest's."""


class LengthMismatchError(FileMismatchError):
    """The bytes are shorter or longer than the manifest's size."""
