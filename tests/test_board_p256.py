"""The board's pure-MicroPython P-256 (bootloader_py/ota/p256.py), run on the real interpreter and
cross-checked against the `cryptography` package on the host."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

BOARD_DIR = Path(__file__).resolve().parent.parent / "bootloader_py"
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
PREHASHED = ec.ECDSA(Prehashed(hashes.SHA256()))


def run_board(micropython: str, script: str, data: object = None, tmp_path: Path | None = None,
              ) -> list[Any]:
    """Run `script` on MicroPython with `data` as JSON on stdin; return its printed JSON lines."""
    prelude = f"import sys, json\nsys.path.insert(0, {str(BOARD_DIR)!r})\n"
    done = subprocess.run(
        [micropython, "-X", "heapsize=4M", "-c", prelude + script],
        input=json.dumps(data), capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


READ_STDIN = "data = json.loads(sys.stdin.read())\n"


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    nums = key.public_key().public_numbers()
    return b"\x04" + nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")


def _raw_low_s(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    if s > N // 2:
        s = N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _host_verifies(point: bytes, digest: bytes, sig: bytes) -> bool:
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, digest, PREHASHED)
    except InvalidSignature:
        return False
    return True


def test_board_reproduces_rfc6979_a25_sample_vector_with_low_s(micropython: str) -> None:
    # RFC 6979 A.2.5, P-256, SHA-256, message "sample".
    script = (
        "from ota import p256\nimport hashlib, binascii\n"
        "d = binascii.unhexlify("
        "'C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721')\n"
        "h = hashlib.sha256(b'sample').digest()\n"
        "print(json.dumps([hex(p256.rfc6979_k(d, h)), binascii.hexlify(p256.sign(d, h)).decode(),"
        " binascii.hexlify(p256.public_point(d)).decode()]))\n"
    )
    [[k, sig, point]] = run_board(micropython, script)
    assert k == "0xa6e3c57dd01abe90086538398355dd4c3b17aa873382b0f24d6129493d8aad60"
    assert point == (
        "04" "60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6"
        "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299"
    )
    r_rfc = 0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716
    s_rfc = 0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8
    assert s_rfc > N // 2  # so the board must hand out its low-S twin
    assert sig == r_rfc.to_bytes(32, "big").hex() + (N - s_rfc).to_bytes(32, "big").hex()


def test_many_host_signatures_verify_on_board_and_tampered_ones_do_not(micropython: str) -> None:
    rng = random.Random(6979)
    cases = []
    for i in range(40):
        key = ec.generate_private_key(ec.SECP256R1())
        digest = hashlib.sha256(rng.randbytes(rng.randrange(0, 200))).digest()
        sig = _raw_low_s(key.sign(digest, PREHASHED))
        bad_digest = bytearray(digest)
        bad_digest[rng.randrange(32)] ^= 1 << rng.randrange(8)
        bad_sig = bytearray(sig)
        bad_sig[rng.randrange(64)] ^= 1 << rng.randrange(8)
        cases.append([_point(key).hex(), digest.hex(), sig.hex(), bytes(bad_digest).hex(),
                      bytes(bad_sig).hex(), i % 3])
    script = READ_STDIN + (
        "from ota import p256\nfrom binascii import unhexlify as u\n"
        "for pt, h, sig, bad_h, bad_sig, mode in data:\n"
        "    pt, h, sig, bad_h, bad_sig = u(pt), u(h), u(sig), u(bad_h), u(bad_sig)\n"
        # three ways to pass the key: point bytes, (x, y), Key with a table
        "    if mode == 1:\n"
        "        pt = (int.from_bytes(pt[1:33], 'big'), int.from_bytes(pt[33:], 'big'))\n"
        "    elif mode == 2:\n"
        "        pt = p256.Key(pt)\n"
        "    print(json.dumps([p256.verify(pt, h, sig), p256.verify(pt, bad_h, sig),"
        " p256.verify(pt, h, bad_sig)]))\n"
    )
    results = run_board(micropython, script, cases)
    assert len(results) == len(cases)
    for case, result in zip(cases, results, strict=True):
        good, bad_digest, bad_sig = result
        assert good is True, case
        assert bad_digest is False, case
        # A flipped bit can make s high or r/s out of range: False as well, never an error.
        assert bad_sig is False, case


def test_board_signatures_verify_on_host_and_equal_host_rfc6979(micropython: str) -> None:
    rng = random.Random(256)
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(12)]
    cases = []
    for key in keys:
        d = key.private_numbers().private_value.to_bytes(32, "big")
        cases.append([d.hex(), hashlib.sha256(rng.randbytes(50)).hexdigest()])
    script = READ_STDIN + (
        "from ota import p256\nfrom binascii import unhexlify as u, hexlify as x\n"
        "for d, h in data:\n"
        "    print(json.dumps([x(p256.public_point(u(d))).decode(),"
        " x(p256.sign(u(d), u(h))).decode()]))\n"
    )
    results = run_board(micropython, script, cases)
    deterministic = ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True)
    for key, (_, h), result in zip(keys, cases, results, strict=True):
        point, sig = result
        digest = bytes.fromhex(h)
        assert bytes.fromhex(point) == _point(key)
        assert int(sig[64:], 16) <= N // 2
        assert _host_verifies(_point(key), digest, bytes.fromhex(sig))
        # RFC 6979 on the host (OpenSSL) gives the same nonce, so the same r and |s|.
        assert bytes.fromhex(sig) == _raw_low_s(key.sign(digest, deterministic))


def test_board_refuses_high_s_and_out_of_range_r_s(micropython: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(b"manifest").digest()
    good = _raw_low_s(key.sign(digest, PREHASHED))
    r, s = int.from_bytes(good[:32], "big"), int.from_bytes(good[32:], "big")
    high = r.to_bytes(32, "big") + (N - s).to_bytes(32, "big")
    # The high-S twin is mathematically valid (the host library takes it); the rule refuses it.
    assert _host_verifies(_point(key), digest, high)
    variants = {
        "good": good,
        "high_s": high,
        "r_zero": bytes(32) + good[32:],
        "s_zero": good[:32] + bytes(32),
        "r_n": N.to_bytes(32, "big") + good[32:],
        "s_n": good[:32] + N.to_bytes(32, "big"),
        "r_plus_n": (r + N).to_bytes(32, "big") + good[32:] if r + N < 2**256 else bytes(64),
        "r_max": b"\xff" * 32 + good[32:],
        "short": good[:63],
        "long": good + b"\x00",
    }
    script = READ_STDIN + (
        "from ota import p256\nfrom binascii import unhexlify as u\n"
        "pt, h, sigs = u(data[0]), u(data[1]), data[2]\n"
        "print(json.dumps({k: p256.verify(pt, h, u(v)) for k, v in sigs.items()}))\n"
    )
    hex_variants = {k: v.hex() for k, v in variants.items()}
    [result] = run_board(micropython, script, [_point(key).hex(), digest.hex(), hex_variants])
    assert isinstance(result, dict)
    assert result.pop("good") is True
    assert result == {name: False for name in variants if name != "good"}


def test_board_refuses_public_keys_not_on_the_curve(micropython: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    point = bytearray(_point(key))
    point[64] ^= 1
    script = READ_STDIN + (
        "from ota import p256\nfrom binascii import unhexlify as u\n"
        "out = []\n"
        "for pt in data:\n"
        "    try:\n"
        "        p256.Key(u(pt), 0)\n"
        "        out.append('accepted')\n"
        "    except ValueError as e:\n"
        "        out.append('ValueError')\n"
        "print(json.dumps(out))\n"
    )
    p = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
    [result] = run_board(micropython, script, [
        bytes(point).hex(), _point(key)[:64].hex(), ("02" + _point(key)[1:].hex()),
        (b"\x04" + p.to_bytes(32, "big") + bytes(32)).hex(), _point(key).hex(),
    ])
    assert result == ["ValueError"] * 4 + ["accepted"]


@pytest.mark.parametrize("g_teeth,key_teeth", [(1, 8), (3, 5), (8, 2), (4, 4)])
def test_every_comb_width_gives_the_same_answers(micropython: str, g_teeth: int,
                                                 key_teeth: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    rng = random.Random(g_teeth * 10 + key_teeth)
    digests = [hashlib.sha256(rng.randbytes(8)).digest() for _ in range(4)]
    sigs = [_raw_low_s(key.sign(dg, PREHASHED)) for dg in digests]
    d = key.private_numbers().private_value.to_bytes(32, "big")
    script = READ_STDIN + (
        "from ota import p256\nfrom binascii import unhexlify as u, hexlify as x\n"
        "gt, kt, pt, d, pairs = data\n"
        "p256.G_TEETH = gt\n"
        "k = p256.Key(u(pt), kt)\n"
        "print(json.dumps([[p256.verify(k, u(h), u(s)), p256.verify(k, u(h), u(pairs[0][1]))]"
        " for h, s in pairs]))\n"
        "print(json.dumps(x(p256.public_point(u(d))).decode()))\n"
    )
    data = [g_teeth, key_teeth, _point(key).hex(), d.hex(),
            [[dg.hex(), s.hex()] for dg, s in zip(digests, sigs, strict=True)]]
    verdicts, point = run_board(micropython, script, data)
    assert verdicts == [[True, True], [True, False], [True, False], [True, False]]
    assert point == _point(key).hex()


def test_joint_comb_handles_equal_and_opposite_points(micropython: str) -> None:
    # u*G + u*G needs the doubling branch of the mixed addition, u*G + (n-u)*G the infinity one.
    script = (
        "from ota import p256\n"
        "g_as_key = p256.Key((p256.GX, p256.GY), p256.G_TEETH)\n"
        "out = []\n"
        "for u in (1, 2, 12345, p256.N - 1, 2**255 + 7):\n"
        "    X, Y, Z = p256._comb_mul((p256.g_comb(), g_as_key.comb), (u, u))\n"
        "    two_u = p256._to_affine(*p256._comb_mul((p256.g_comb(),), (2 * u % p256.N,)))\n"
        "    X2, Y2, Z2 = p256._comb_mul((p256.g_comb(), g_as_key.comb), (u, p256.N - u))\n"
        "    out.append([p256._to_affine(X, Y, Z) == two_u, Z2 == 0])\n"
        "print(json.dumps(out))\n"
    )
    [result] = run_board(micropython, script)
    assert result == [[True, True]] * 5


def test_sign_refuses_out_of_range_private_keys(micropython: str) -> None:
    script = (
        "from ota import p256\n"
        "out = []\n"
        "for d in (bytes(32), p256.N.to_bytes(32, 'big'), b'\\xff' * 32, b'\\x01' * 31):\n"
        "    try:\n"
        "        p256.sign(d, bytes(32))\n"
        "        out.append('signed')\n"
        "    except ValueError:\n"
        "        out.append('ValueError')\n"
        "print(json.dumps(out))\n"
    )
    assert run_board(micropython, script) == [["ValueError"] * 4]


def test_embedded_generator_table_is_what_the_board_computes(micropython: str) -> None:
    script = (
        "from ota import p256\n"
        "built = p256.Comb(p256.GX, p256.GY, p256._G_TABLE_TEETH).table\n"
        "print(json.dumps([p256._G_TABLE_TEETH == p256.G_TEETH, bytes(built) == p256._G_TABLE,"
        " len(p256._G_TABLE)]))\n"
    )
    assert run_board(micropython, script) == [[True, True, 64 << 5]]
