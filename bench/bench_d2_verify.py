"""D2: time for the board to verify a release manifest, on the MicroPython unix port.

The manifest is the reference update's shape: 20 files (1-12 KB, ~100 KB in all, fixed seed),
signed by one release key under a 1-of-1 root.  The board loads the root with precompute=True
(building the release key's comb table, which otherwise happens in the first verify), then times
`trust.verify_manifest` 20 times: envelope bytes in, verified manifest dict out (JSON, base64,
PAE hash, ECDSA P-256, every field and path check).  The figure is the median in ms.

Also printed (not figures): the first verify, the one-off table builds and their heap cost, and
the same run with the small-heap setting (4-teeth tables).

Last line: {"D2_verify_ms": <median>}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ROOT = Path(__file__).resolve().parent.parent
BOARD_DIR = ROOT / "bootloader_py"
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
RUNS = 20

BOARD_SCRIPT = """
import sys, json, gc, time
sys.path.insert(0, @BOARD_DIR@)
from ota import p256, trust
G_TEETH, KEY_TEETH = @TEETH@
p256.G_TEETH = G_TEETH
p256.KEY_TEETH = KEY_TEETH
def read(path):
    with open(path, "rb") as f:
        return f.read()
manifest = read(@MANIFEST@)
gc.collect()
free0 = gc.mem_free()
t = time.ticks_us()
p256.g_comb()
g_build = time.ticks_diff(time.ticks_us(), t)
gc.collect()
free1 = gc.mem_free()
t = time.ticks_us()
root = trust.load_root(@ROOT_FILE@, precompute=True)
load = time.ticks_diff(time.ticks_us(), t)
gc.collect()
free2 = gc.mem_free()
times = []
for i in range(@RUNS@):
    gc.collect()
    t = time.ticks_us()
    m = trust.verify_manifest(manifest, root, board="unix", installed_sequence=1, now=None)
    times.append(time.ticks_diff(time.ticks_us(), t))
assert len(m["files"]) == 20
first = times[0]
times.sort()
print(json.dumps({"median_us": times[len(times) // 2], "first_us": first, "min_us": times[0],
                  "g_table_build_us": g_build, "g_table_bytes": free0 - free1,
                  "load_root_us": load, "root_and_key_table_bytes": free1 - free2,
                  "envelope_bytes": len(manifest)}))
"""


def _key(seed: int) -> ec.EllipticCurvePrivateKey:
    # A fixed, test-only key so every run signs the same bytes.
    d = int.from_bytes(hashlib.sha256(b"mpota-bench-key-%d" % seed).digest(), "big") % (N - 1) + 1
    return ec.derive_private_key(d, ec.SECP256R1())


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    nums = key.public_key().public_numbers()
    return b"\x04" + nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")


def _keyid(key: ec.EllipticCurvePrivateKey) -> str:
    return hashlib.sha256(SPKI_PREFIX + _point(key)).hexdigest()


def _envelope(payload_type: str, payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    kind = payload_type.encode()
    pae = b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)
    der = key.sign(pae, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    sig = r.to_bytes(32, "big") + min(s, N - s).to_bytes(32, "big")
    doc = {"payloadType": payload_type, "payload": base64.b64encode(payload).decode(),
           "signatures": [{"keyid": _keyid(key), "sig": base64.b64encode(sig).decode()}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def _reference_manifest() -> bytes:
    rng = random.Random(20)
    files = []
    for i in range(20):
        size = rng.randrange(1024, 12 * 1024)
        digest = hashlib.sha256(rng.randbytes(32)).hexdigest()
        path = ("lib/mod%02d.py" if i % 3 else "data/table%02d.bin") % i
        plain = i % 2 == 0
        blob = digest if plain else hashlib.sha256(digest.encode()).hexdigest()
        files.append({"path": path, "sha256": digest, "size": size,
                      "encoding": "plain" if plain else "deflate", "blob": blob,
                      "transfer_size": size if plain else size // 3})
    doc = {"_type": "manifest", "app": "demo", "version": "1.1.0", "sequence": 2,
           "created": 1764000000, "expires": 1795536000, "boards": ["unix", "esp32"],
           "min_micropython": "1.20.0", "entry": "app_main", "files": files}
    return json.dumps(doc, separators=(",", ":")).encode()


def _write_inputs(folder: Path) -> tuple[Path, Path]:
    root_key, release_key = _key(1), _key(2)
    root = {"_type": "root", "version": 1, "expires": 1800000000,
            "keys": {_keyid(k): {"keytype": "ecdsa-p256",
                                 "public": base64.b64encode(_point(k)).decode()}
                     for k in (root_key, release_key)},
            "roles": {"root": {"keyids": [_keyid(root_key)], "threshold": 1},
                      "release": {"keyids": [_keyid(release_key)], "threshold": 1}}}
    root_file = folder / "trust.json"
    root_file.write_bytes(_envelope("application/vnd.mpota.root+json",
                                    json.dumps(root, separators=(",", ":")).encode(), root_key))
    manifest_file = folder / "manifest.json"
    manifest_file.write_bytes(_envelope("application/vnd.mpota.manifest+json",
                                        _reference_manifest(), release_key))
    return root_file, manifest_file


def run_board(micropython: str, g_teeth: int | None = None, key_teeth: int | None = None,
              ) -> dict[str, int]:
    """One MicroPython run; teeth None keeps p256's defaults. Returns the board's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        root_file, manifest_file = _write_inputs(Path(tmp))
        teeth = "p256.G_TEETH, p256.KEY_TEETH" if g_teeth is None else f"{g_teeth}, {key_teeth}"
        script = (BOARD_SCRIPT.replace("@BOARD_DIR@", repr(str(BOARD_DIR)))
                  .replace("@ROOT_FILE@", repr(str(root_file)))
                  .replace("@MANIFEST@", repr(str(manifest_file)))
                  .replace("@TEETH@", teeth).replace("@RUNS@", str(RUNS)))
        done = subprocess.run([micropython, "-c", script], capture_output=True, text=True,
                              timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError("board run failed: " + done.stderr.strip()[-500:])
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure_d2(micropython: str) -> float:
    """D2 in ms: median of 20 manifest verifies with the default comb tables."""
    return run_board(micropython)["median_us"] / 1000


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from tools.micropython import find_micropython

    micropython = find_micropython()
    default = run_board(micropython)
    print("default tables:", json.dumps(default))
    small = run_board(micropython, 4, 4)
    print("small-heap tables (G_TEETH=4, KEY_TEETH=4):", json.dumps(small))
    print(json.dumps({"D2_verify_ms": round(default["median_us"] / 1000, 3)}))


if __name__ == "__main__":
    main()
