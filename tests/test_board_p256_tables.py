"""The board's P-256 verify as the OTA client runs it: comb tables kept on flash between
verifies (p256.use_tables), authenticated with the device key, on the real interpreter and
cross-checked against the `cryptography` package."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_board_p256 import (
    PREHASHED,
    READ_STDIN,
    N,
    _host_verifies,
    _point,
    _raw_low_s,
    run_board,
)

SECRET = bytes(range(1, 33))  # stands in for /ota_id/device.key

# Every way in which the client's verify may meet a key: a bare point (throw-away comb), a Key
# whose table is built and stored now, a Key whose table is read back from the file, and a
# Key whose table file was damaged (it must be rebuilt, never used).
VERIFY_ALL_WAYS = READ_STDIN + (
    "import os\n"
    "from ota import p256\nfrom binascii import unhexlify as u\n"
    "folder, secret, cases = data\n"
    "p256.use_tables(folder, u(secret))\n"
    "for pt, h, sig in cases:\n"
    "    pt, h, sig = u(pt), u(h), u(sig)\n"
    "    key = p256.Key(pt, 0)\n"
    "    path = p256.table_path(key)\n"
    "    try:\n"
    "        os.remove(path)\n"
    "    except OSError:\n"
    "        pass\n"
    "    out = [p256.verify(pt, h, sig), p256.verify(key, h, sig)]\n"
    # verify refuses an out-of-range signature before it needs a table: store it regardless
    "    p256.stored_comb(key)\n"
    "    out.append(p256.verify(key, h, sig))\n"
    "    with open(path, 'rb') as f:\n"
    "        stored = f.read()\n"
    "    with open(path, 'wb') as f:\n"
    "        f.write(stored[:100] + bytes((stored[100] ^ 1,)) + stored[101:])\n"
    "    out.append(p256.verify(key, h, sig))\n"
    "    p256.stored_comb(key)\n"
    "    with open(path, 'rb') as f:\n"
    "        out.append(f.read() == stored)\n"
    "    print(json.dumps(out))\n"
)

TAMPERS = ("none", "digest", "r", "s", "high_s", "other_key", "r_plus_n", "zero_s")


def _tampered(key: ec.EllipticCurvePrivateKey, other: ec.EllipticCurvePrivateKey,
              digest: bytes, sig: bytes, tamper: str, bit: int,
              ) -> tuple[bytes, bytes, bytes]:
    """(point, digest, signature) for one kind of tampering of a valid low-S signature."""
    point = _point(key)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if tamper == "digest":
        digest = (int.from_bytes(digest, "big") ^ (1 << bit % 256)).to_bytes(32, "big")
    elif tamper == "r":
        r ^= 1 << bit % 256
    elif tamper == "s":
        s ^= 1 << bit % 256
    elif tamper == "high_s":
        s = N - s
    elif tamper == "other_key":
        point = _point(other)
    elif tamper == "r_plus_n":
        r = (r + N) % (1 << 256)
    elif tamper == "zero_s":
        s = 0
    return point, digest, r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _expected(point: bytes, digest: bytes, sig: bytes) -> bool:
    """What the board must answer: a valid ECDSA signature (the host's verdict) with low S."""
    s = int.from_bytes(sig[32:], "big")
    return 0 < s <= N // 2 and _host_verifies(point, digest, sig)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.binary(max_size=64), st.sampled_from(TAMPERS),
                          st.integers(min_value=0, max_value=255)), min_size=3, max_size=6))
def test_verify_agrees_with_cryptography_every_way_the_key_is_held(micropython: str,
                                                                   cases: list[Any]) -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    inputs, expected = [], []
    for message, tamper, bit in cases:
        digest = hashlib.sha256(message).digest()
        sig = _raw_low_s(key.sign(digest, PREHASHED))
        point, digest, sig = _tampered(key, other, digest, sig, tamper, bit)
        inputs.append([point.hex(), digest.hex(), sig.hex()])
        expected.append(_expected(point, digest, sig))
    with tempfile.TemporaryDirectory() as folder:
        results = run_board(micropython, VERIFY_ALL_WAYS, [folder, SECRET.hex(), inputs])
    # four verdicts (bare point, table built or none needed, table read back, damaged table),
    # then whether the damaged file was rebuilt to what it was
    assert results == [[want] * 4 + [True] for want in expected], (cases, expected)


FORGED_TABLE = READ_STDIN + (
    "from ota import p256\nfrom binascii import unhexlify as u\n"
    "folder, secret, wrong, victim, forger, h, forged_sig = data\n"
    "victim, forger, h, forged_sig = u(victim), u(forger), u(h), u(forged_sig)\n"
    "p256.use_tables(folder, u(secret))\n"
    "v, f = p256.Key(victim, 0), p256.Key(forger, 0)\n"
    "table = p256.Comb(f.x, f.y, p256.TABLE_TEETH).table\n"
    "point = v.x.to_bytes(32, 'big') + v.y.to_bytes(32, 'big')\n"
    "out = []\n"
    "for mac_secret in (u(wrong), u(secret)):\n"
    # the forger's table under the victim's name, tagged for the victim's point: with the
    # board's secret it would be believed (the MAC is the only gate); without it, refused
    "    p256.use_tables(folder, mac_secret)\n"
    "    tag = p256._hmac(p256._tables[1], bytes((p256.TABLE_TEETH,)), point, table)\n"
    "    p256.use_tables(folder, u(secret))\n"
    "    with open(p256.table_path(v), 'wb') as fl:\n"
    "        fl.write(table + tag)\n"
    "    out.append(p256.verify(v, h, forged_sig))\n"
    "print(json.dumps(out))\n"
)


def test_a_table_file_is_trusted_only_with_the_boards_own_tag(micropython: str) -> None:
    victim, forger = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    digest = hashlib.sha256(b"release 6.6.6").digest()
    forged = _raw_low_s(forger.sign(digest, PREHASHED))
    with tempfile.TemporaryDirectory() as folder:
        data = [folder, SECRET.hex(), bytes(32 - i for i in range(32)).hex(),
                _point(victim).hex(), _point(forger).hex(), digest.hex(), forged.hex()]
        [result] = run_board(micropython, FORGED_TABLE, data)
        # Tagged without the board's secret: rebuilt from the victim's point, the forged
        # signature fails. Tagged with it: the file is what verify uses, so the tag is what
        # keeps a forged table out (and this test can see a table being used).
        assert result == [False, True]


def test_stored_table_is_the_keys_comb_and_a_failed_write_still_verifies(micropython: str,
                                                                          tmp_path: Path,
                                                                          ) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(b"x").digest()
    sig = _raw_low_s(key.sign(digest, PREHASHED))
    script = READ_STDIN + (
        "from ota import p256\nfrom binascii import unhexlify as u\n"
        "folder, secret, pt, h, sig = data\n"
        "pt, h, sig = u(pt), u(h), u(sig)\n"
        "p256.use_tables(folder, u(secret))\n"
        "k = p256.Key(pt, 0)\n"
        "first = p256.verify(k, h, sig)\n"
        "with open(p256.table_path(k), 'rb') as f:\n"
        "    stored = f.read()\n"
        "built = bytes(p256.Comb(k.x, k.y, p256.TABLE_TEETH).table)\n"
        "p256.use_tables(folder + '/missing-dir', u(secret))\n"
        "print(json.dumps([first, stored[:len(built)] == built, len(stored) - len(built),"
        " p256.verify(k, h, sig), p256.verify(k, h, sig[:32] + bytes(32))]))\n"
    )
    [result] = run_board(micropython, script,
                         [str(tmp_path), SECRET.hex(), _point(key).hex(), digest.hex(),
                          sig.hex()])
    assert result == [True, True, 32, True, False]


def test_verify_gives_back_the_callers_gc_threshold(micropython: str, tmp_path: Path) -> None:
    # verify lifts the threshold for its arithmetic (a check runs with ota/run.py's 4 KB one);
    # the caller's must be back afterwards whatever the outcome: valid, invalid, refused early,
    # a key that is not on the curve (ValueError), and with tables on.
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(b"y").digest()
    sig = _raw_low_s(key.sign(digest, PREHASHED))
    script = READ_STDIN + (
        "import gc\nfrom ota import p256\nfrom binascii import unhexlify as u\n"
        "folder, secret, pt, h, sig = data\n"
        "pt, h, sig = u(pt), u(h), u(sig)\n"
        "out = []\n"
        "for tables in (False, True):\n"
        "    if tables:\n"
        "        p256.use_tables(folder, u(secret))\n"
        "    k = p256.Key(pt, 0)\n"
        "    for args in ((k, h, sig), (k, bytes(32), sig), (k, h, bytes(64)),"
        " (b'\\x04' + bytes(64), h, sig)):\n"
        "        gc.threshold(4096)\n"
        "        try:\n"
        "            verdict = p256.verify(*args)\n"
        "        except ValueError:\n"
        "            verdict = 'ValueError'\n"
        "        out.append([verdict, gc.threshold()])\n"
        "print(json.dumps(out))\n"
    )
    [result] = run_board(micropython, script, [str(tmp_path), SECRET.hex(), _point(key).hex(),
                                               digest.hex(), sig.hex()])
    assert result == [[True, 4096], [False, 4096], [False, 4096], ["ValueError", 4096]] * 2
