"""DSSE: PAE exactly as the spec defines it, envelope reading, threshold counting."""

from __future__ import annotations

import base64
import json

import pytest

from signing import dsse, keys
from signing.errors import MalformedError, PayloadTypeError, ThresholdError, TooLargeError
from signing.limits import Limits

TYPE = "application/vnd.mpota.manifest+json"


def test_pae_matches_the_dsse_spec_example() -> None:
    # From the DSSE protocol document (secure-systems-lab/dsse, protocol.md).
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world")


def test_pae_counts_bytes_not_characters() -> None:
    assert dsse.pae("t\u00e9", b"\xff\x00") == b"DSSEv1 3 t\xc3\xa9 2 \xff\x00"


def test_envelope_round_trip_with_several_signatures() -> None:
    signers = [keys.generate_private_key() for _ in range(3)]
    data = dsse.envelope_bytes(dsse.sign_envelope(TYPE, b"{}", signers))
    envelope = dsse.parse_envelope(data, TYPE)
    assert envelope.payload == b"{}"
    assert [s.keyid for s in envelope.signatures] == [keys.keyid(k) for k in signers]
    trusted = {keys.keyid(k): k.public_key() for k in signers[:2]}
    assert dsse.valid_keyids(envelope, trusted) == set(trusted)
    dsse.require_threshold(envelope, trusted, 2, "release")
    with pytest.raises(ThresholdError):
        dsse.require_threshold(envelope, trusted, 3, "release")


def test_size_cap_is_checked_before_parsing() -> None:
    with pytest.raises(TooLargeError):
        dsse.parse_envelope(b"x" * 101, TYPE, Limits(max_envelope_bytes=100))
    with pytest.raises(MalformedError):
        dsse.parse_envelope(b"x" * 100, TYPE, Limits(max_envelope_bytes=100))


def _envelope(**changes: object) -> bytes:
    doc: dict[str, object] = {"payloadType": TYPE, "payload": "e30=",
                              "signatures": [{"keyid": "ab", "sig": base64.b64encode(
                                  bytes(64)).decode()}]}
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("data", [
    b"[]", b"\xff\xfe", b'{"payloadType": NaN}', _envelope(payload=5),
    _envelope(signatures={}), _envelope(signatures=["x"]), _envelope(payload="e30"),
    _envelope(signatures=[{"keyid": 1, "sig": base64.b64encode(bytes(64)).decode()}]),
    b'{"payloadType": "a", "payloadType": "' + TYPE.encode() + b'"}',
    b"[" * 5000 + b"]" * 5000,
], ids=["array", "not-utf8", "nan", "payload-int", "sigs-object", "sig-string",
        "payload-unpadded", "keyid-int", "duplicate-key", "deep-nesting"])
def test_malformed_envelopes(data: bytes) -> None:
    with pytest.raises(MalformedError):
        dsse.parse_envelope(data, TYPE)


def test_payload_type_is_compared_exactly() -> None:
    with pytest.raises(PayloadTypeError):
        dsse.parse_envelope(_envelope(payloadType=TYPE.upper()), TYPE)
