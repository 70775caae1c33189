"""DSSE envelopes (https://github.com/secure-systems-lab/dsse): sign, read and count signatures.

The verifier checks signatures over the exact payload bytes and only then parses them, so no
canonical JSON is needed anywhere.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from signing import keys as keymod
from signing.errors import MalformedError, PayloadTypeError, ThresholdError, TooLargeError
from signing.limits import DEFAULT_LIMITS, Limits


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSEv1 Pre-Authentication Encoding: what is actually signed."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def b64encode(data: bytes) -> str:
    """Standard base64 with padding, as every mpota document uses."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, what: str) -> bytes:
    """Strict, canonical standard base64; raises MalformedError naming `what`.

    Canonical: the text must be exactly what encoding its bytes gives (no stray padding bits),
    the rule the board applies too, so host and board never disagree on an envelope.
    """
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise MalformedError(f"{what}: bad base64") from err
    if base64.b64encode(data).decode("ascii") != text:
        raise MalformedError(f"{what}: base64 is not canonical (non-zero padding bits)")
    return data


def sign_envelope(
    payload_type: str, payload: bytes, keys: Iterable[keymod.PrivateKey]
) -> dict[str, Any]:
    """An envelope carrying `payload` with one signature per key, in the order given."""
    message = pae(payload_type, payload)
    return {
        "payloadType": payload_type,
        "payload": b64encode(payload),
        "signatures": [
            {"keyid": keymod.keyid(key), "sig": b64encode(keymod.sign_raw(key, message))}
            for key in keys
        ],
    }


def envelope_bytes(envelope: Mapping[str, Any]) -> bytes:
    """The envelope as compact UTF-8 JSON, the bytes that are stored and served."""
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """A read (not yet verified) envelope."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload)


def _reject_constant(name: str) -> Any:
    raise MalformedError(f"not JSON: {name} is not a JSON number")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that resolve a duplicate key differently would see different documents.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedError(f"duplicate JSON key {key!r}")
        obj[key] = value
    return obj


def loads_json(data: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity; raises MalformedError."""
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_unique_object,
            parse_constant=_reject_constant,
        )
    except MalformedError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise MalformedError(f"{what}: not JSON ({type(err).__name__})") from err


JSON_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def field(obj: dict[str, Any], name: str, kind: type, what: str) -> Any:
    """`obj[name]` if it has JSON type `kind` (a bool is not an integer); else MalformedError."""
    value = obj.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MalformedError(f"{what}: {name!r} missing or not {JSON_NAMES.get(kind, kind)}")
    return value


def parse_envelope(
    data: bytes, expected_type: str, limits: Limits = DEFAULT_LIMITS
) -> Envelope:
    """Read envelope bytes: size cap first, then JSON, shape, payloadType, base64.

    Raises TooLargeError, MalformedError or PayloadTypeError.
    """
    if len(data) > limits.max_envelope_bytes:
        raise TooLargeError(
            f"envelope is {len(data)} bytes, over the cap of {limits.max_envelope_bytes}"
        )
    doc = loads_json(data, "envelope")
    if not isinstance(doc, dict):
        raise MalformedError("envelope: not a JSON object")
    payload_type = field(doc, "payloadType", str, "envelope")
    payload_text = field(doc, "payload", str, "envelope")
    entries = field(doc, "signatures", list, "envelope")
    if payload_type != expected_type:
        raise PayloadTypeError(f"payloadType is {payload_type!r}, expected {expected_type!r}")
    payload = b64decode(payload_text, "envelope payload")
    signatures = []
    for index, entry in enumerate(entries):
        where = f"envelope signature {index}"
        if not isinstance(entry, dict):
            raise MalformedError(f"{where}: not a JSON object")
        sig = b64decode(field(entry, "sig", str, where), where)
        if len(sig) != keymod.SIGNATURE_SIZE:
            raise MalformedError(f"{where}: sig is {len(sig)} bytes, not 64")
        signatures.append(Signature(field(entry, "keyid", str, where), sig))
    return Envelope(payload_type, payload, tuple(signatures))


def valid_keyids(envelope: Envelope, trusted: Mapping[str, keymod.PublicKey]) -> set[str]:
    """Distinct trusted keyids with a valid signature; unknown keyids are ignored.

    A keyid already counted is not verified again, so duplicates cost nothing and count once.
    """
    message = envelope.pae()
    valid: set[str] = set()
    for signature in envelope.signatures:
        key = trusted.get(signature.keyid)
        if key is None or signature.keyid in valid:
            continue
        if keymod.verify_raw(key, message, signature.sig):
            valid.add(signature.keyid)
    return valid


def require_threshold(
    envelope: Envelope, trusted: Mapping[str, keymod.PublicKey], threshold: int, role: str
) -> None:
    """Raise ThresholdError unless `threshold` distinct trusted keys signed the envelope."""
    count = len(valid_keyids(envelope, trusted))
    if count < threshold:
        raise ThresholdError(
            f"{role}: {count} valid signature(s) from trusted keys, threshold is {threshold}"
        )
