"""Board request authentication: `Authorization: Mpota-P256 id=..,ctr=..,sig=..`.

The board signs (ECDSA P-256, SHA-256, raw low-S r||s) the string

    mpota-req-v1\\n<METHOD>\\n<path with query>\\n<device_id>\\n<counter>\\n<hex sha256(body)>

and the counter must be strictly greater than the last one accepted from that board. Checks run
cheapest first; the counter is advanced only after the signature verified, so nobody but the
board can burn its counters.

A board's identity (its key, board type, tags, channel, bucket) never changes once registered,
so the authenticator keeps it, with the parsed key, once a request of the board passed: its
later requests cost one database statement, the counter's. A board it does not keep costs one
read more, of its identity alone. What does change is never kept or read up front: the counter
statement itself refuses a revoked board (`AND revoked IS NULL`), and only a refused request
reads the whole board to tell `unknown_device`, `revoked` and `replay` apart, so every request
gets the answer docs/protocol.md's order of checks gives.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from ota_server.bounded import keep
from ota_server.counters import CounterCommits
from ota_server.errors import Forbidden, Unauthorized
from ota_server.storage import BoardIdentity, MetadataStore
from signing.errors import MalformedError
from signing.keys import PrivateKey, PublicKey, public_key_from_point, sign_raw, verify_raw

SCHEME = "Mpota-P256"
REQUEST_CONTEXT = b"mpota-req-v1"
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_PARAM = re.compile(r"^(id|ctr|sig)=([^,\s]+)$")
_MAX_COUNTER = 2**63 - 1  # SQLite INTEGER
# Boards kept (identity and parsed public key: a board's later requests skip the registry read
# and the point check). Bounded, and trimmed one board at a time: emptying 100,000 keys at
# once stopped the event loop for a noticeable part of a second under S3's load (figure S3,
# docs/benchmarks.md).
BOARD_CACHE_SIZE = 100_000
_DECIMAL = re.compile(r"[0-9]{1,19}")
# The header as boards write it: DEVICE_ID, _DECIMAL and 64 bytes of base64 (86 characters and
# its padding), in the order id, ctr, sig; built from the same rules as the general parse.
_CANONICAL = re.compile(
    f"{re.escape(SCHEME)} id=({DEVICE_ID.pattern.removeprefix('^').removesuffix('$')}),"
    f"ctr=({_DECIMAL.pattern}),sig=([A-Za-z0-9+/]{{86}}==)")
# A kept board as one flat tuple of its identity's fields and its parsed key: strings, bytes,
# an int, a tuple of strings and a key object the cycle collector does not track, so the
# collector untracks the tuple and 100,000 kept boards add nothing to each of its full passes.
# Kept as BoardIdentity objects (tracked, like every class instance) they made those passes
# take 100-300 ms by the end of S3's 100,000 boards (docs/benchmarks.md, S3).
_KeptBoard = tuple[str, bytes, str, tuple[str, ...], str, int, PublicKey]


@dataclass(frozen=True)
class VerifiedRequest:
    """A board request that passed: who signed it, its counter (now committed), and the fleet
    epoch its counter statement saw (None on a store without one), for
    MetadataStore.current_rollout."""

    board: BoardIdentity
    fleet_epoch: int | None
    counter: int


@dataclass(frozen=True)
class DeviceCredential:
    device_id: str
    counter: int
    signature: bytes


def parse_authorization(header: str | None) -> DeviceCredential:
    """Parse the header; raises Unauthorized (`missing_credentials` / `bad_credentials`)."""
    # Boards send the parameters in this order without spaces (bootloader_py/ota/auth.py):
    # one match takes them, what it accepts the general parse below accepts too (a property
    # test holds the two to the same answers), and anything else gets that parse's message.
    canonical = _CANONICAL.fullmatch(header) if header else None
    if canonical is not None:
        device_id, counter, sig = canonical.groups()
        if int(counter) <= _MAX_COUNTER:
            return DeviceCredential(device_id, int(counter), base64.b64decode(sig))
    return _parse_any_order(header)


def _parse_any_order(header: str | None) -> DeviceCredential:
    """parse_authorization for every form the protocol allows (parameters in any order, spaces
    around them), naming what is wrong."""
    if not header:
        raise Unauthorized("this endpoint needs an `Authorization: Mpota-P256 ...` header",
                           code="missing_credentials")
    scheme, _, rest = header.partition(" ")
    if scheme != SCHEME:
        raise Unauthorized(f"authorization scheme must be {SCHEME}", code="bad_credentials")
    params: dict[str, str] = {}
    for part in rest.strip().split(","):
        match = _PARAM.fullmatch(part.strip())
        if match is None or match.group(1) in params:
            raise Unauthorized("authorization must be id=<device>,ctr=<n>,sig=<base64>",
                               code="bad_credentials")
        params[match.group(1)] = match.group(2)
    if set(params) != {"id", "ctr", "sig"}:
        raise Unauthorized("authorization needs id, ctr and sig", code="bad_credentials")
    if not DEVICE_ID.fullmatch(params["id"]):
        raise Unauthorized("authorization id is not a valid device id", code="bad_credentials")
    if not _DECIMAL.fullmatch(params["ctr"]) or int(params["ctr"]) > _MAX_COUNTER:
        raise Unauthorized("authorization ctr must be a non-negative decimal integer",
                           code="bad_credentials")
    try:
        signature = base64.b64decode(params["sig"], validate=True)
    except (binascii.Error, ValueError):
        raise Unauthorized("authorization sig is not base64", code="bad_credentials") from None
    if len(signature) != 64:
        raise Unauthorized("authorization sig must be 64 bytes r||s", code="bad_credentials")
    return DeviceCredential(params["id"], int(params["ctr"]), signature)


def signed_string(method: str, path_qs: str, device_id: str, counter: int, body: bytes) -> bytes:
    """The exact bytes a board signs for one request."""
    return b"\n".join((
        REQUEST_CONTEXT,
        method.upper().encode("ascii"),
        path_qs.encode("utf-8"),
        device_id.encode("ascii"),
        str(counter).encode("ascii"),
        hashlib.sha256(body).hexdigest().encode("ascii"),
    ))


def authorization_header(device_id: str, counter: int, signature: bytes) -> str:
    """The header value a board sends (used by test boards, the bench and the virtual board)."""
    sig = base64.b64encode(signature).decode("ascii")
    return f"{SCHEME} id={device_id},ctr={counter},sig={sig}"


def sign_request(private_key: PrivateKey, device_id: str, counter: int, method: str,
                 path_qs: str, body: bytes = b"") -> str:
    """The Authorization header for one request, signed as a board signs it (host side:
    simulated boards in tests and benchmarks)."""
    message = signed_string(method, path_qs, device_id, counter, body)
    return authorization_header(device_id, counter, sign_raw(private_key, message))


class DeviceAuthenticator:
    """Verifies board requests against the registry; keeps the identities of boards whose
    requests passed (module docstring)."""

    def __init__(self, store: MetadataStore, counters: CounterCommits | None = None):
        self._store = store
        self._boards: dict[str, _KeptBoard] = {}
        self._counters = CounterCommits(store) if counters is None else counters

    def _remember(self, board: BoardIdentity, key: PublicKey) -> None:
        # beyond the bound the oldest goes; a re-read is cheap
        keep(self._boards, board.device_id, (board.device_id, board.public_key, board.board,
                                             board.tags, board.channel, board.bucket, key),
             BOARD_CACHE_SIZE)

    async def authenticate(self, header: str | None, method: str, path_qs: str,
                           body: bytes, *, records_first: bool = True) -> VerifiedRequest:
        """Return the board that signed this request, or raise Unauthorized / Forbidden (the
        first failing check of docs/protocol.md's order).

        Returns only once the new counter is committed (ota_server.counters), with the
        board's queued check-in records unless `records_first` is False."""
        cred = parse_authorization(header)
        kept = self._boards.get(cred.device_id)
        if kept is None:
            # The identity alone (not the whole stored board): revocation is the counter
            # statement's to check, as for a kept board (module docstring).
            board = await self._store.board_identity(cred.device_id)
            if board is None:
                raise Unauthorized(f"unknown device {cred.device_id!r}", code="unknown_device")
            try:
                key = public_key_from_point(board.public_key)
            except MalformedError:
                raise Forbidden("the registered public key is unusable", code="revoked") from None
        else:
            board, key = BoardIdentity(*kept[:6]), kept[6]
        message = signed_string(method, path_qs, cred.device_id, cred.counter, body)
        if not verify_raw(key, message, cred.signature):
            # its revocation was not read: it answers before this
            await self._refuse_if_gone(cred.device_id)
            raise Unauthorized("request signature does not verify", code="bad_signature")
        accepted, epoch = await self._counters.advance_with_epoch(
            cred.device_id, cred.counter, records_first=records_first)
        if not accepted:
            await self._refuse_if_gone(cred.device_id)
            raise Unauthorized(
                f"counter {cred.counter} is not greater than the last accepted one",
                code="replay")
        self._remember(board, key)
        return VerifiedRequest(board, epoch, cred.counter)

    async def _refuse_if_gone(self, device_id: str) -> None:
        """Raise unknown_device or revoked when the board, as stored now, is either."""
        device = await self._store.device(device_id)
        if device is None:
            raise Unauthorized(f"unknown device {device_id!r}", code="unknown_device")
        if device.revoked is not None:
            raise Forbidden(f"device {device_id!r} is revoked", code="revoked")
