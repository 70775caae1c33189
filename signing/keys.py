"""ECDSA P-256 keys: the one algorithm of mpota (why: DESIGN.md, "Trust model").

Signatures are raw `r||s` (32 + 32 bytes, big endian) so a board needs no DER parser.
Signers normalise to low S; `verify_raw` refuses high S and out-of-range values, so every
signature has exactly one accepted encoding (no malleability).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from signing.errors import KeyFileError, MalformedError

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey

# Order of the P-256 group; signatures must have 1 <= r, s < N and s <= N/2.
CURVE_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
HALF_ORDER = CURVE_ORDER // 2
SIGNATURE_SIZE = 64
POINT_SIZE = 65
# DER SubjectPublicKeyInfo of a P-256 key = this prefix + the 65-byte uncompressed point,
# which lets a board compute a keyid without an ASN.1 encoder.
SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")

# One curve object for every parsed key: a key keeps the curve it was made with, and a curve
# object per key is one more object the cycle collector tracks for each key a server keeps.
_P256 = ec.SECP256R1()
# RFC 6979 nonces: signing needs no good randomness and the test vectors are reproducible.
_ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


def generate_private_key() -> PrivateKey:
    """A fresh P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def _public(key: PublicKey | PrivateKey) -> PublicKey:
    return key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key


def public_point(public_key: PublicKey | PrivateKey) -> bytes:
    """The 65-byte uncompressed point (0x04 || X || Y) of a key."""
    return _public(public_key).public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def keyid_of_point(point: bytes) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo built from a 65-byte point."""
    return hashlib.sha256(SPKI_PREFIX + point).hexdigest()


def keyid(public_key: PublicKey | PrivateKey) -> str:
    """Hex SHA-256 of the key's DER SubjectPublicKeyInfo (a private key means its public half)."""
    der = _public(public_key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def public_key_from_point(point: bytes) -> PublicKey:
    """The P-256 public key of a 65-byte uncompressed point.

    Raises MalformedError when the bytes are not an uncompressed point on the curve.
    """
    if len(point) != POINT_SIZE or point[0] != 4:
        raise MalformedError(f"public key must be a {POINT_SIZE}-byte uncompressed P-256 point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_P256, point)
    except ValueError as err:
        raise MalformedError("public key is not a point on P-256") from err


def sign_raw(private_key: PrivateKey, message: bytes) -> bytes:
    """64-byte low-S `r||s` signature over SHA-256 of `message`."""
    r, s = decode_dss_signature(private_key.sign(message, _ECDSA))
    if s > HALF_ORDER:
        s = CURVE_ORDER - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# One immutable algorithm object for every verification (the server verifies one per board
# request; building it per call was measurable there).
_ECDSA_VERIFY = ec.ECDSA(hashes.SHA256())


def verify_raw(public_key: PublicKey, message: bytes, sig: bytes) -> bool:
    """True when `sig` is a valid low-S `r||s` signature of SHA-256(message) by `public_key`.

    Anything else, including high S, r or s out of [1, n-1] and a wrong length, is False.
    """
    if len(sig) != SIGNATURE_SIZE:
        return False
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (1 <= r < CURVE_ORDER and 1 <= s <= HALF_ORDER):
        return False
    try:
        public_key.verify(encode_dss_signature(r, s), message, _ECDSA_VERIFY)
    except InvalidSignature:
        return False
    return True


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file in the same directory (created with `mode`), fsync, rename:
    never a half-written file, never a moment with looser permissions."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def private_key_pem(key: PrivateKey, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM of a private key, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def save_private_key(
    path: str | os.PathLike[str], key: PrivateKey, passphrase: bytes | None,
    *, overwrite: bool = False,
) -> None:
    """Write `key` as PKCS#8 PEM, mode 0600, atomically.

    Raises KeyFileError when the file exists and `overwrite` is false.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise KeyFileError(f"{target}: already exists; refusing to overwrite a key")
    write_atomic(target, private_key_pem(key, passphrase), 0o600)


def is_encrypted_pem(data: bytes) -> bool:
    """True for an encrypted PKCS#8 or traditional PEM private key."""
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def load_private_key(path: str | os.PathLike[str], passphrase: bytes | None) -> PrivateKey:
    """Read a PEM private key; raises KeyFileError naming the file and what is wrong."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except OSError as err:
        raise KeyFileError(f"{target}: cannot read key file ({err.strerror})") from err
    if not is_encrypted_pem(data):
        passphrase = None  # a passphrase meant for other keys does not stop a plain one loading
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as err:
        raise KeyFileError(f"{target}: key is encrypted: set MPOTA_KEY_PASSPHRASE") from err
    except ValueError as err:
        raise KeyFileError(f"{target}: not a PEM private key, or wrong passphrase") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{target}: not an ECDSA P-256 private key")
    return key


def save_public_key(path: str | os.PathLike[str], key: PublicKey | PrivateKey) -> None:
    """Write the public half as SubjectPublicKeyInfo PEM (mode 0644), atomically."""
    pem = _public(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomic(Path(path), pem, 0o644)


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read a PEM public key; raises KeyFileError naming the file and what is wrong."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except OSError as err:
        raise KeyFileError(f"{target}: cannot read key file ({err.strerror})") from err
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as err:
        raise KeyFileError(f"{target}: not a PEM public key") from err
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{target}: not an ECDSA P-256 public key")
    return key
