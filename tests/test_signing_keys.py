"""Keys and raw signatures: low S out, high S and out-of-range refused, 0600 files."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from signing import keys
from signing.errors import KeyFileError, MalformedError

MESSAGE = b"DSSEv1 4 test 5 hello"


@pytest.fixture(scope="module")
def key() -> keys.PrivateKey:
    return keys.generate_private_key()


def _split(sig: bytes) -> tuple[int, int]:
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


def _join(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def test_signatures_are_64_bytes_low_s_and_verify(key: keys.PrivateKey) -> None:
    for i in range(40):  # ~half of raw ECDSA signatures are high S before normalising
        message = MESSAGE + bytes([i])
        sig = keys.sign_raw(key, message)
        assert len(sig) == 64
        assert _split(sig)[1] <= keys.HALF_ORDER
        assert keys.verify_raw(key.public_key(), message, sig)


def test_verify_refuses_the_high_s_twin_of_a_valid_signature(key: keys.PrivateKey) -> None:
    r, s = _split(keys.sign_raw(key, MESSAGE))
    assert not keys.verify_raw(key.public_key(), MESSAGE, _join(r, keys.CURVE_ORDER - s))


@pytest.mark.parametrize("r_s", ["r0", "s0", "rn", "sn"])
def test_verify_refuses_out_of_range_values(key: keys.PrivateKey, r_s: str) -> None:
    r, s = _split(keys.sign_raw(key, MESSAGE))
    n = keys.CURVE_ORDER
    sig = {"r0": _join(0, s), "s0": _join(r, 0), "rn": _join(n, s), "sn": _join(r, n)}[r_s]
    assert not keys.verify_raw(key.public_key(), MESSAGE, sig)


def test_verify_refuses_other_message_other_key_and_wrong_length(key: keys.PrivateKey) -> None:
    sig = keys.sign_raw(key, MESSAGE)
    assert not keys.verify_raw(key.public_key(), MESSAGE + b"!", sig)
    assert not keys.verify_raw(keys.generate_private_key().public_key(), MESSAGE, sig)
    assert not keys.verify_raw(key.public_key(), MESSAGE, sig[:63])


def test_keyid_is_sha256_of_der_spki_and_of_prefix_plus_point(key: keys.PrivateKey) -> None:
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    point = keys.public_point(key)
    assert der == keys.SPKI_PREFIX + point
    assert keys.keyid(key) == keys.keyid(key.public_key()) == hashlib.sha256(der).hexdigest()
    assert keys.keyid_of_point(point) == keys.keyid(key)


def test_point_round_trip_and_bad_points(key: keys.PrivateKey) -> None:
    point = keys.public_point(key)
    assert len(point) == 65 and point[0] == 4
    assert keys.public_point(keys.public_key_from_point(point)) == point
    off_curve = point[:-1] + bytes([point[-1] ^ 1])
    for bad in (point[:64], b"\x02" + point[1:], off_curve):
        with pytest.raises(MalformedError):
            keys.public_key_from_point(bad)


def test_private_key_file_is_0600_and_round_trips(tmp_path: Path, key: keys.PrivateKey) -> None:
    path = tmp_path / "release.key"
    keys.save_private_key(path, key, None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.keyid(keys.load_private_key(path, None)) == keys.keyid(key)
    assert [p.name for p in tmp_path.iterdir()] == ["release.key"]  # no temp file left


def test_encrypted_key_needs_the_right_passphrase(tmp_path: Path, key: keys.PrivateKey) -> None:
    path = tmp_path / "root.key"
    keys.save_private_key(path, key, b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert keys.keyid(keys.load_private_key(path, b"correct horse")) == keys.keyid(key)
    with pytest.raises(KeyFileError, match="MPOTA_KEY_PASSPHRASE"):
        keys.load_private_key(path, None)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        keys.load_private_key(path, b"battery staple")


def test_saving_refuses_to_overwrite_a_key(tmp_path: Path, key: keys.PrivateKey) -> None:
    path = tmp_path / "root.key"
    keys.save_private_key(path, key, None)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        keys.save_private_key(path, keys.generate_private_key(), None)
    assert path.read_bytes() == before


def test_public_key_files_and_bad_key_files(tmp_path: Path, key: keys.PrivateKey) -> None:
    pub = tmp_path / "release.pub"
    keys.save_public_key(pub, key)
    assert b"PRIVATE" not in pub.read_bytes()
    assert keys.keyid(keys.load_public_key(pub)) == keys.keyid(key)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        keys.load_private_key(pub, None)
    with pytest.raises(KeyFileError, match="cannot read"):
        keys.load_private_key(tmp_path / "missing.key", None)
    garbage = tmp_path / "garbage.pub"
    garbage.write_bytes(b"not a key")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        keys.load_public_key(garbage)


def test_a_passphrase_meant_for_other_keys_does_not_block_a_plain_key(
    tmp_path: Path, key: keys.PrivateKey,
) -> None:
    path = tmp_path / "ci.key"
    keys.save_private_key(path, key, None)
    assert not keys.is_encrypted_pem(path.read_bytes())
    assert keys.keyid(keys.load_private_key(path, b"for the root key")) == keys.keyid(key)
