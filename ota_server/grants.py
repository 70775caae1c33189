"""Download grants: a short-lived right to download blobs, issued with an offer.

A board's check-in that gets an offer (`200`) also gets

    X-Ota-Grant: Mpota-Grant id=<device_id>,exp=<unix seconds>,mac=<base64url HMAC-SHA256>

and sends that value as its `Authorization` on the downloads of that update (the blob and
pack routes), instead of a request signed with a counter. The MAC is HMAC-SHA256 under the
server's grant key (32 random bytes, `grant.key`) of

    mpota-grant-v1\\n<device_id>\\n<exp>

so checking a grant is one HMAC: no signature check, no counter written, and nginx can check
it too (deploy/mpota-grant.js) and send the blob itself. A grant is a bearer credential for
blob downloads only, until `exp`: docs/protocol.md ("Download grants") and
docs/threat-model.md say what that gives away and why it is bounded.

Every rule here (the header's one form, the bounds on `exp`) is the same in
deploy/mpota-grant.js; tests hold the two to the same answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from ota_server.device_auth import DEVICE_ID
from ota_server.errors import Unauthorized
from ota_server.settings import MAX_GRANT_LIFETIME_S

SCHEME = "Mpota-Grant"
GRANT_CONTEXT = b"mpota-grant-v1"
KEY_BYTES = 32
# The longest lifetime a server may give (the setting's bound) is also the furthest `exp` any
# checker accepts: a grant claiming more was not minted by a server of this protocol.
MAX_LIFETIME_S = MAX_GRANT_LIFETIME_S
# The one form a grant has: the server writes it, the board echoes it byte for byte.
_GRANT = re.compile(
    f"{re.escape(SCHEME)} id=({DEVICE_ID.pattern.removeprefix('^').removesuffix('$')}),"
    r"exp=([1-9][0-9]{0,11}),mac=([A-Za-z0-9_-]{43})")
_KEY_TEXT = re.compile(rb"[0-9a-f]{64}\n?")


class GrantKeyError(Exception):
    """The grant key file is unusable; the message names the file and what is wrong."""


@dataclass(frozen=True)
class GrantKey:
    """The server's HMAC key for download grants (shared by every replica and nginx)."""

    secret: bytes

    def __repr__(self) -> str:  # never print the secret
        return "GrantKey(<secret>)"

    @classmethod
    def load_or_create(cls, path: Path) -> GrantKey:
        """Read the key at `path` (64 lowercase hex digits and a newline), or create it with
        32 random bytes, 0600, when it does not exist yet. Creation is exclusive and atomic:
        the key is written whole to a temporary file beside `path`, then linked to `path`,
        which fails if `path` exists; so replicas starting together on one host all end up
        with the one key that was linked first, and none ever reads a file half-written.

        Raises GrantKeyError naming the file when it is not a key or is readable by others.
        """
        if not path.exists():
            cls._create(path)
        return cls._read(path)

    @classmethod
    def _create(cls, path: Path) -> None:
        """Link a new key to `path` unless a key got there first (then leave that one)."""
        try:
            fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        except OSError as err:
            raise GrantKeyError(f"{path}: cannot create the grant key: {err.strerror}") from None
        try:
            try:  # mkstemp makes it 0600 whatever the umask
                os.write(fd, os.urandom(KEY_BYTES).hex().encode("ascii") + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process or thread linked its key first: that one is the key
        except OSError as err:
            raise GrantKeyError(f"{path}: cannot create the grant key: {err.strerror}") from None
        finally:
            os.unlink(temporary)

    @classmethod
    def _read(cls, path: Path) -> GrantKey:
        try:
            mode = path.stat().st_mode
            text = path.read_bytes()[:200]
        except OSError as err:
            raise GrantKeyError(f"{path}: cannot read the grant key: {err.strerror}") from None
        if mode & 0o077:
            raise GrantKeyError(f"{path}: the grant key must be readable by its owner only "
                                f"(mode {mode & 0o777:o}; chmod 600 {path})")
        if not _KEY_TEXT.fullmatch(text):
            raise GrantKeyError(f"{path}: not a grant key (64 lowercase hex digits expected)")
        return cls(bytes.fromhex(text[:64].decode("ascii")))

    def mac(self, device_id: str, expires: int) -> str:
        """The grant's MAC for `device_id` until `expires`, base64url without padding."""
        message = b"\n".join((GRANT_CONTEXT, device_id.encode("ascii"),
                              str(expires).encode("ascii")))
        digest = hmac.new(self.secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def mint(self, device_id: str, now: float, lifetime_s: int) -> str:
        """The grant (the `X-Ota-Grant` value, an `Authorization` value) for `device_id`,
        valid for `lifetime_s` seconds from `now`."""
        if not 0 < lifetime_s <= MAX_LIFETIME_S:
            raise ValueError(f"grant lifetime must be 1..{MAX_LIFETIME_S} s")
        expires = int(now) + lifetime_s
        return f"{SCHEME} id={device_id},exp={expires},mac={self.mac(device_id, expires)}"

    def check(self, header: str, now: float) -> str:
        """The device id a valid grant names; raises Unauthorized otherwise:
        `bad_credentials` (not the grant form), `grant_expired` (`exp` reached),
        `bad_grant` (`exp` beyond any lifetime, or the MAC is not this key's)."""
        match = _GRANT.fullmatch(header)
        if match is None:
            raise Unauthorized("a grant is `Mpota-Grant id=<device>,exp=<unix>,mac=<43 "
                               "base64url>`, as the check-in gave it", code="bad_credentials")
        device_id, exp_text, mac = match.groups()
        expires = int(exp_text)
        if expires <= now:
            raise Unauthorized("the download grant has expired; check in again",
                               code="grant_expired")
        if expires > now + MAX_LIFETIME_S:
            raise Unauthorized("the download grant is not valid", code="bad_grant")
        if not hmac.compare_digest(mac, self.mac(device_id, expires)):
            raise Unauthorized("the download grant is not valid", code="bad_grant")
        return device_id


def is_grant(header: str | None) -> TypeGuard[str]:
    """Whether an Authorization value is meant as a grant (the scheme), valid or not."""
    return header is not None and header.startswith(SCHEME + " ")

