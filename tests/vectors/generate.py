"""Generate the shared verification vectors in tests/vectors/ (host and board must agree).

    .venv/bin/python tests/vectors/generate.py            # rewrite tests/vectors/*.json
    .venv/bin/python tests/vectors/generate.py --out DIR  # write elsewhere (the tests compare)

Deterministic: fixed test-only keys from tests/vectors/keys/, fixed times, RFC 6979 nonces,
so running it twice gives byte-identical files. Each negative case changes one thing of a
valid document and names the one error class a verifier must raise (docs/manifest.md).
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from signing import dsse, keys  # noqa: E402
from signing.manifest import MANIFEST_PAYLOAD_TYPE  # noqa: E402
from signing.root import ROOT_PAYLOAD_TYPE, new_root  # noqa: E402

NOW = 1764000000  # 2025-11-24T16:00:00Z: the reference time of every case
ROOT_EXPIRES = 2000000000
CREATED = 1763900000
EXPIRES = 1795536000
MAX_ENVELOPE = 12288
KEY_NAMES = ("root1", "root2", "root3", "release_a", "release_b", "release_c", "release_a2",
             "stranger")

# Non-ASCII paths of exactly 128 bytes of UTF-8 (the limit): 42 CJK characters of 3 bytes,
# 31 astral ones of 4 (each written by json.dumps as two \\u escapes, a surrogate pair).
CJK_AT_LIMIT = "d/" + "\u6587" * 42
ASTRAL_AT_LIMIT = "e/" + "\U0001f600" * 31 + "ab"
PATHS_AT_LIMIT = (
    ("ok-path-cjk-128-bytes", CJK_AT_LIMIT, "42 CJK characters: 128 bytes of UTF-8"),
    ("ok-path-astral-128-bytes", ASTRAL_AT_LIMIT,
     "31 astral characters (U+1F600) and 4 ASCII: 128 bytes, 35 characters, 66 UTF-16 units"),
    ("ok-path-mixed-non-ascii", "\u00e9t\u00e9/\u6587/\U0001d11e \u00c9.py",
     "Latin-1, CJK, astral and a space in one path"),
)

Keys = dict[str, keys.PrivateKey]
Case = dict[str, Any]


def load_keys(key_dir: Path) -> Keys:
    return {name: keys.load_private_key(key_dir / f"{name}.pem", None) for name in KEY_NAMES}


def _file(path: str, content: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(content).hexdigest()
    return {"path": path, "sha256": digest, "size": len(content), "encoding": "plain",
            "blob": digest, "transfer_size": len(content)}


def _deflated_file(path: str, content: bytes) -> dict[str, Any]:
    packer = zlib.compressobj(9, zlib.DEFLATED, 10)
    packed = packer.compress(content) + packer.flush()
    entry = _file(path, content)
    entry.update(encoding="deflate", blob=hashlib.sha256(packed).hexdigest(),
                 transfer_size=len(packed))
    return entry


def base_manifest() -> dict[str, Any]:
    return {
        "_type": "manifest", "app": "demo", "version": "1.1.0", "sequence": 2,
        "created": CREATED, "expires": EXPIRES, "boards": ["unix", "esp32"],
        "min_micropython": "1.20.0", "entry": "app_main",
        "files": [
            _file("app_main.py", b"import lib.util\nlib.util.run()\n"),
            _file("lib/util.py", b"def run():\n    print('demo 1.1.0')\n"),
        ],
    }


def _padded_payload(size: int) -> dict[str, Any]:
    """The base manifest with a `notes` field that makes its payload exactly `size` bytes."""
    doc = base_manifest()
    doc["notes"] = ""
    doc["notes"] = "n" * (size - len(_payload(doc)))
    assert len(_payload(doc)) == size
    return doc


def _adds_file(path: str) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["files"].append(_file(path, b"x"))


def _payload(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _envelope(payload_type: str, payload: bytes, signers: Sequence[keys.PrivateKey]) -> dict:
    return dsse.sign_envelope(payload_type, payload, signers)


def _with_sig(envelope: dict[str, Any], index: int, sig: bytes) -> dict[str, Any]:
    changed = copy.deepcopy(envelope)
    changed["signatures"][index]["sig"] = base64.b64encode(sig).decode("ascii")
    return changed


def _sig(envelope: dict[str, Any], index: int = 0) -> tuple[int, int]:
    raw = base64.b64decode(envelope["signatures"][index]["sig"])
    return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")


def _rs(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pad_to(data: bytes, size: int) -> bytes:
    """Insert JSON whitespace after the first '{' so the envelope is exactly `size` bytes."""
    assert len(data) <= size, (len(data), size)
    return data[:1] + b" " * (size - len(data)) + data[1:]


class Writer:
    """Collects files and cases; file names are relative to the vectors directory."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cases: list[Case] = []

    def put(self, name: str, data: bytes | dict[str, Any]) -> str:
        raw = data if isinstance(data, bytes) else dsse.envelope_bytes(data)
        assert name not in self.files, name
        self.files[name] = raw
        return name

    def case(self, name: str, kind: str, trusted: str, data: bytes | dict[str, Any],
             expect: str, description: str, *, board: str | None = "esp32",
             installed: int | None = 1, app: str | None = None) -> None:
        envelope = self.put(f"{'m' if kind == 'manifest' else 'r'}-{name}.json", data)
        case = {
            "name": name, "kind": kind, "trusted_root": trusted, "envelope": envelope,
            "now": NOW, "board": board if kind == "manifest" else None,
            "installed_sequence": installed if kind == "manifest" else None,
            "expect": expect, "description": description,
        }
        if app is not None:  # only where a case checks the board's app (absent: not checked)
            case["app"] = app
        self.cases.append(case)


def build_roots(k: Keys, out: Writer) -> dict[str, Any]:
    """The trusted roots: a v1 -> v2 -> v3 rotation chain and a 2-of-3 release root."""
    v1 = new_root(version=1, expires=ROOT_EXPIRES, root_keys=[k["root1"]],
                  release_keys=[k["release_a"]])
    v2 = new_root(version=2, expires=ROOT_EXPIRES, root_keys=[k["root2"]],
                  release_keys=[k["release_a2"]])
    v3 = new_root(version=3, expires=ROOT_EXPIRES, root_keys=[k["root2"], k["root3"]],
                  release_keys=[k["release_a2"]], root_threshold=2)
    two_of_three = new_root(
        version=1, expires=ROOT_EXPIRES, root_keys=[k["root1"]],
        release_keys=[k["release_a"], k["release_b"], k["release_c"]], release_threshold=2)
    out.put("root-v1.json", _envelope(ROOT_PAYLOAD_TYPE, v1.to_payload(), [k["root1"]]))
    out.put("root-v2.json", _envelope(ROOT_PAYLOAD_TYPE, v2.to_payload(),
                                      [k["root1"], k["root2"]]))
    out.put("root-v3.json", _envelope(ROOT_PAYLOAD_TYPE, v3.to_payload(),
                                      [k["root2"], k["root3"]]))
    out.put("root-2of3.json", _envelope(ROOT_PAYLOAD_TYPE, two_of_three.to_payload(),
                                        [k["root1"]]))
    return {"v1": v1, "v2": v2, "v3": v3}


def manifest_cases(k: Keys, out: Writer) -> None:
    def signed(doc: dict[str, Any], *signers: str, kind: str = MANIFEST_PAYLOAD_TYPE) -> dict:
        return _envelope(kind, _payload(doc), [k[s] for s in signers])

    def changed(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        doc = base_manifest()
        change(doc)
        return doc

    v1, v2, two = "root-v1.json", "root-v2.json", "root-2of3.json"
    good = signed(base_manifest(), "release_a")
    ok = out.case

    # Positive cases.
    ok("ok-basic", "manifest", v1, good, "ok", "release key A signs, sequence 2 over 1")
    ok("ok-no-board-no-installed", "manifest", v1, good, "ok",
       "board and installed sequence not checked (server upload)", board=None, installed=None)
    ok("ok-deflate-entry", "manifest", v1, signed(changed(lambda d: d["files"].append(
        _deflated_file("data/words.txt", b"over the air " * 40))), "release_a"), "ok",
       "a deflate file entry (zlib, 1 KB window)", board="unix")
    ok("ok-2of3", "manifest", two, signed(base_manifest(), "release_a", "release_b"), "ok",
       "2-of-3 release threshold met by A and B")
    ok("ok-3of3", "manifest", two,
       signed(base_manifest(), "release_c", "release_b", "release_a"), "ok",
       "all three release keys sign a 2-of-3 manifest")
    ok("ok-unknown-keyid-ignored", "manifest", v1,
       signed(base_manifest(), "stranger", "release_a"), "ok",
       "an untrusted signature before the trusted one is ignored, not fatal")
    ok("ok-duplicate-plus-distinct", "manifest", two,
       signed(base_manifest(), "release_a", "release_a", "release_b"), "ok",
       "A twice and B: two distinct keyids meet 2-of-3")
    ok("ok-after-rotation", "manifest", v2, signed(base_manifest(), "release_a2"), "ok",
       "the rotated-in release key A2 signs under root v2")
    ok("ok-expires-one-second-later", "manifest", v1,
       signed(changed(lambda d: d.update(expires=NOW + 1)), "release_a"), "ok",
       "expires = now + 1 is still valid")
    ok("ok-unknown-field-ignored", "manifest", v1,
       signed(changed(lambda d: d.update(notes="extra fields are ignored")), "release_a"),
       "ok", "unknown top-level manifest field")
    ok("ok-path-128-bytes", "manifest", v1, signed(changed(lambda d: d["files"].append(
        _file("lib/" + "p" * 121 + ".py", b"x = 1\n"))), "release_a"), "ok",
       "a 128-byte path is at the limit")
    # Path lengths are bytes of UTF-8 (docs/manifest.md): json.dumps writes U+1F600 as the
    # escaped surrogate pair \ud83d\ude00, which a decoder must join into one 4-byte character.
    for name, path, why in PATHS_AT_LIMIT:
        ok(name, "manifest", v1, signed(changed(_adds_file(path)), "release_a"), "ok", why)
    ok("ok-path-raw-utf8", "manifest", v1, _envelope(MANIFEST_PAYLOAD_TYPE, json.dumps(
        changed(_adds_file(ASTRAL_AT_LIMIT)), separators=(",", ":"),
        ensure_ascii=False).encode("utf-8"), [k["release_a"]]), "ok",
       "the 128-byte astral path as raw UTF-8 in the payload, not escaped")
    ok("ok-payload-base64-padded-at-a-chunk-end", "manifest", v1,
       signed(_padded_payload(1534), "release_a"), "ok",
       "a payload of 1534 bytes: 2048 base64 characters (8 of the board's 256-character "
       "chunks) ending in '=='")
    ok("ok-first-install", "manifest", v1, good, "ok", "nothing installed yet (sequence 0)",
       installed=0)
    at_cap = _pad_to(dsse.envelope_bytes(good), MAX_ENVELOPE)
    ok("ok-envelope-at-cap", "manifest", v1, at_cap, "ok",
       "envelope of exactly 12288 bytes (JSON whitespace padding)")

    # Signatures and thresholds.
    r, s = _sig(good)
    tampered = copy.deepcopy(good)
    tampered["payload"] = dsse.b64encode(_payload(changed(lambda d: d.update(sequence=3))))
    ok("tampered-payload", "manifest", v1, tampered, "ThresholdError",
       "payload changed after signing (sequence 2 -> 3)")
    ok("wrong-key", "manifest", v1, signed(base_manifest(), "stranger"), "ThresholdError",
       "signed by a key the root does not know")
    ok("root-key-signs-manifest", "manifest", v1, signed(base_manifest(), "root1"),
       "ThresholdError", "a root key is not a release key")
    ok("unsigned", "manifest", v1, signed(base_manifest()), "ThresholdError",
       "no signatures at all")
    ok("threshold-short", "manifest", two, signed(base_manifest(), "release_a"),
       "ThresholdError", "one signature under a 2-of-3 release role")
    ok("duplicate-keyid", "manifest", two, signed(base_manifest(), "release_a", "release_a"),
       "ThresholdError", "the same keyid twice counts once under 2-of-3")
    ok("revoked-release-key", "manifest", v2, good, "ThresholdError",
       "release key A was rotated out in root v2")
    ok("high-s", "manifest", v1, _with_sig(good, 0, _rs(r, keys.CURVE_ORDER - s)),
       "ThresholdError", "valid signature with s replaced by n - s (high S)")
    ok("r-zero", "manifest", v1, _with_sig(good, 0, _rs(0, s)), "ThresholdError",
       "r = 0 is out of range")
    ok("r-equals-n", "manifest", v1, _with_sig(good, 0, _rs(keys.CURVE_ORDER, s)),
       "ThresholdError", "r = n is out of range")
    ok("s-zero", "manifest", v1, _with_sig(good, 0, _rs(r, 0)), "ThresholdError",
       "s = 0 is out of range")
    ok("sig-63-bytes", "manifest", v1, _with_sig(good, 0, _rs(r, s)[:63]), "MalformedError",
       "signature is 63 bytes")
    keyid_only = copy.deepcopy(good)
    del keyid_only["signatures"][0]["sig"]
    ok("sig-missing", "manifest", v1, keyid_only, "MalformedError",
       "signature entry without 'sig'")

    # Envelope shape and payload type.
    bad_payload = copy.deepcopy(good)
    bad_payload["payload"] = "eyJfdHlwZSI6!!!"
    ok("bad-base64-payload", "manifest", v1, bad_payload, "MalformedError",
       "payload is not base64")
    bad_sig = copy.deepcopy(good)
    bad_sig["signatures"][0]["sig"] = bad_sig["signatures"][0]["sig"][:-4] + "****"
    ok("bad-base64-sig", "manifest", v1, bad_sig, "MalformedError", "sig is not base64")
    loose_sig = copy.deepcopy(good)
    text = loose_sig["signatures"][0]["sig"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    # 64 bytes end in one byte + "==": the last data character carries 4 padding bits.
    last = alphabet[alphabet.index(text[-3]) | 1]
    loose_sig["signatures"][0]["sig"] = text[:-3] + last + "=="
    ok("noncanonical-base64-sig", "manifest", v1, loose_sig, "MalformedError",
       "sig base64 with a non-zero padding bit (decodes to the same bytes)")
    ok("envelope-not-json", "manifest", v1, dsse.envelope_bytes(good)[:-1], "MalformedError",
       "envelope JSON cut short by one byte")
    no_sigs = copy.deepcopy(good)
    del no_sigs["signatures"]
    ok("envelope-no-signatures-field", "manifest", v1, no_sigs, "MalformedError",
       "envelope without 'signatures'")
    extra = copy.deepcopy(good)
    extra["note"] = "fields the envelope format does not define are ignored"
    ok("ok-envelope-extra-field", "manifest", v1, extra, "ok", "an extra envelope field")
    not_object = copy.deepcopy(good)
    not_object["signatures"].append("sig")
    ok("sig-entry-not-object", "manifest", v1, not_object, "MalformedError",
       "a signature entry that is a string")
    keyid_number = copy.deepcopy(good)
    keyid_number["signatures"][0]["keyid"] = 7
    ok("keyid-not-string", "manifest", v1, keyid_number, "MalformedError", "keyid is 7")
    ok("envelope-is-array", "manifest", v1, b"[" + dsse.envelope_bytes(good) + b"]",
       "MalformedError", "the envelope wrapped in a JSON array")
    ok("wrong-payload-type", "manifest", v1,
       signed(base_manifest(), "release_a", kind=ROOT_PAYLOAD_TYPE), "PayloadTypeError",
       "a manifest signed as root metadata")
    ok("too-large", "manifest", v1, _pad_to(dsse.envelope_bytes(good), MAX_ENVELOPE + 1),
       "TooLargeError", "envelope of 12289 bytes (one over the cap)")
    many = changed(lambda d: d["files"].extend(
        _file(f"lib/m{i}.py", b"n = %d\n" % i) for i in range(60)))
    ok("too-large-many-files", "manifest", v1, signed(many, "release_a"), "TooLargeError",
       "validly signed manifest with 62 files, over 12288 bytes")

    # Manifest fields (all validly signed: only the payload rules can refuse them).
    def malformed(name: str, change: Callable[[dict[str, Any]], None], why: str) -> None:
        ok(name, "manifest", v1, signed(changed(change), "release_a"), "MalformedError", why)

    ok("payload-not-json", "manifest", v1,
       _envelope(MANIFEST_PAYLOAD_TYPE, b"{\"_type\":\"manifest\",", [k["release_a"]]),
       "MalformedError", "signed payload is not JSON")
    malformed("type-not-manifest", lambda d: d.update(_type="root"), "_type is 'root'")
    malformed("missing-sequence", lambda d: d.pop("sequence"), "no 'sequence'")
    malformed("sequence-is-string", lambda d: d.update(sequence="2"), "sequence is \"2\"")
    malformed("sequence-negative", lambda d: d.update(sequence=-1), "sequence is -1")
    malformed("expires-is-float", lambda d: d.update(expires=1795536000.5), "expires is 1.5e9+.5")
    malformed("bad-semver", lambda d: d.update(version="1.1"), "version '1.1' is not semver")
    malformed("boards-empty", lambda d: d.update(boards=[]), "no boards")
    malformed("files-not-list", lambda d: d.update(files={}), "files is an object")
    for name, path, why in (
        ("path-traversal", "../boot.py", "'..' segment"),
        ("path-traversal-inner", "lib/../../boot.py", "'..' segment inside"),
        ("path-absolute", "/boot.py", "leading '/'"),
        ("path-empty-segment", "lib//util2.py", "empty segment"),
        ("path-dot-segment", "./util2.py", "'.' segment"),
        ("path-trailing-slash", "lib/", "empty last segment"),
        ("path-backslash", "lib\\util2.py", "backslash"),
        ("path-empty", "", "empty path"),
        ("path-too-long", "lib/" + "p" * 122 + ".py", "129 bytes"),
        ("path-too-long-cjk", CJK_AT_LIMIT + "x", "129 bytes of UTF-8 in 45 characters"),
        ("path-too-long-astral", ASTRAL_AT_LIMIT + "x", "129 bytes of UTF-8 in 36 characters "
         "(U+1F600 four bytes each, escaped as surrogate pairs)"),
        ("path-lone-surrogate", "lib/\ud800.py", "a lone surrogate (\\ud800): not Unicode"),
        ("path-control-char", "lib/a\nb.py", "newline in a path"),
    ):
        malformed(name, _adds_file(path), why)
    malformed("duplicate-path", lambda d: d["files"].append(_file("lib/util.py", b"again")),
              "lib/util.py twice")
    # Paths that are one file, or a file and a directory, on a board's filesystem.
    for name, path, why in (
        ("path-case-collision", "lib/Util.py", "lib/Util.py next to lib/util.py (one file on FAT)"),
        ("path-file-and-dir", "lib", "a file 'lib' next to lib/util.py"),
        ("path-file-and-dir-case", "LIB", "a file 'LIB' next to lib/util.py (ASCII case folded)"),
        ("path-under-a-file", "lib/util.py/x.py", "a path under the file lib/util.py"),
    ):
        malformed(name, _adds_file(path), why)
    ok("ok-path-near-misses", "manifest", v1, signed(changed(lambda d: d["files"].extend(
        _file(path, b"x") for path in ("lib2/util.py", "lib/util", "lib/util.pyc", "a",
                                       "ab/c", "k.py", "\u212a.py"))), "release_a"), "ok",
       "lib2/util.py, lib/util, lib/util.pyc, 'a' with 'ab/c', and k.py with the Kelvin sign "
       "(non-ASCII is not case-folded)")
    malformed("plain-blob-differs", lambda d: d["files"][0].update(blob="0" * 64),
              "plain entry whose blob is not its sha256")
    malformed("plain-transfer-size-differs", lambda d: d["files"][0].update(transfer_size=1),
              "plain entry whose transfer_size is not its size")
    malformed("bad-encoding", lambda d: d["files"][0].update(encoding="gzip"),
              "encoding 'gzip'")
    malformed("sha256-uppercase", lambda d: d["files"][0].update(
        sha256=d["files"][0]["sha256"].upper(), blob=d["files"][0]["sha256"].upper()),
        "sha256 in upper case")
    malformed("size-negative", lambda d: d["files"][0].update(size=-1, transfer_size=-1),
              "size -1")
    malformed("size-over-64-bits", lambda d: d["files"].append(
        _deflated_file("big.bin", b"x") | {"size": 2**64}), "size 2**64 (21 digits)")
    malformed("transfer-size-over-64-bits", lambda d: d["files"].append(
        _deflated_file("big.bin", b"x") | {"transfer_size": 2**64}),
        "transfer_size 2**64 (21 digits)")
    ok("ok-size-64-bits", "manifest", v1, signed(changed(lambda d: d["files"].append(
        _deflated_file("big.bin", b"x") | {"size": 2**64 - 1, "transfer_size": 2**64 - 1})),
        "release_a"), "ok", "size and transfer_size 2**64 - 1 (20 digits): the largest")

    # Policy.
    ok("expired", "manifest", v1, signed(changed(lambda d: d.update(expires=NOW)),
                                         "release_a"), "ExpiredError", "expires == now")
    ok("lower-sequence", "manifest", v1, good, "RollbackError",
       "sequence 2 while 3 is installed", installed=3)
    ok("same-sequence", "manifest", v1, good, "SameSequenceError",
       "sequence 2 is already installed: nothing new", installed=2)
    ok("wrong-board", "manifest", v1, good, "WrongBoardError", "rp2 is not in the boards",
       board="rp2")
    ok("wrong-app", "manifest", v1, good, "WrongAppError",
       "a release of demo offered to a board bound to weather, at its installed sequence: "
       "the app is checked before the sequence", installed=2, app="weather")
    ok("right-app", "manifest", v1, good, "ok", "a release of demo on a board bound to demo",
       app="demo")


def root_cases(k: Keys, roots: dict[str, Any], out: Writer) -> None:
    v1, v2 = "root-v1.json", "root-v2.json"
    v2_payload = roots["v2"].to_payload()

    def rot(*signers: str, payload: bytes = v2_payload, kind: str = ROOT_PAYLOAD_TYPE) -> dict:
        return _envelope(kind, payload, [k[s] for s in signers])

    def payload_with(**changes: Any) -> bytes:
        doc = json.loads(v2_payload)
        doc.update(changes)
        return _payload(doc)

    good = rot("root1", "root2")
    case = out.case
    case("rotation-v1-to-v2", "root", v1, good, "ok",
         "root v2 signed by the old root key and the new one")
    case("rotation-v2-to-v3", "root", v2, out.files["root-v3.json"], "ok",
         "root v3 (2-of-2 root keys) signed by root2 and root3: second link of the chain")
    case("rotation-missing-old-threshold", "root", v1, rot("root2"), "ThresholdError",
         "root v2 signed only by its own new key")
    case("rotation-missing-new-threshold", "root", v1, rot("root1"), "ThresholdError",
         "root v2 signed only by the old key")
    v3_payload = roots["v3"].to_payload()
    case("rotation-v3-short-new-threshold", "root", v2, rot("root2", payload=v3_payload),
         "ThresholdError", "root v3 needs root2 and root3; only root2 signed")
    skip = new_root(version=3, expires=ROOT_EXPIRES, root_keys=[k["root1"]],
                    release_keys=[k["release_a2"]])
    case("rotation-skips-version", "root", v1, rot("root1", payload=skip.to_payload()),
         "RotationError", "root v3 offered to a board that trusts v1 (signed by root1)")
    same = new_root(version=1, expires=ROOT_EXPIRES - 1, root_keys=[k["root1"]],
                    release_keys=[k["release_a2"]])
    case("rotation-same-version", "root", v1, rot("root1", payload=same.to_payload()),
         "RotationError", "another version 1")
    case("rotation-expired", "root", v1, rot("root1", "root2", payload=payload_with(expires=NOW)),
         "ExpiredError", "root v2 with expires == now")
    case("rotation-wrong-payload-type", "root", v1,
         rot("root1", "root2", kind=MANIFEST_PAYLOAD_TYPE), "PayloadTypeError",
         "root v2 signed as a manifest")
    r, s = _sig(good, 0)
    case("rotation-high-s", "root", v1, _with_sig(good, 0, _rs(r, keys.CURVE_ORDER - s)),
         "ThresholdError", "old root key's signature with high S")
    tampered = copy.deepcopy(good)
    tampered["payload"] = dsse.b64encode(payload_with(expires=ROOT_EXPIRES + 1))
    case("rotation-tampered", "root", v1, tampered, "ThresholdError",
         "root v2 payload changed after signing")
    doc = json.loads(v2_payload)
    release_kid = doc["roles"]["release"]["keyids"][0]
    doc["keys"]["0" * 64] = doc["keys"].pop(release_kid)
    doc["roles"]["release"]["keyids"] = ["0" * 64]
    case("rotation-keyid-mismatch", "root", v1, rot("root1", "root2", payload=_payload(doc)),
         "MalformedError", "a key listed under a keyid that is not its SPKI hash")
    doc = json.loads(v2_payload)
    doc["roles"]["release"]["threshold"] = 0
    case("rotation-threshold-zero", "root", v1, rot("root1", "root2", payload=_payload(doc)),
         "MalformedError", "release threshold 0")
    doc = json.loads(v2_payload)
    doc["roles"]["release"]["threshold"] = 2
    case("rotation-threshold-above-keys", "root", v1,
         rot("root1", "root2", payload=_payload(doc)), "MalformedError",
         "release threshold 2 with one key")
    case("rotation-too-large", "root", v1, _pad_to(dsse.envelope_bytes(good), MAX_ENVELOPE + 1),
         "TooLargeError", "root envelope of 12289 bytes")


def generate(out_dir: Path, key_dir: Path) -> list[str]:
    """Write every vector file and vectors.json into `out_dir`; returns the file names."""
    k = load_keys(key_dir)
    out = Writer()
    roots = build_roots(k, out)
    manifest_cases(k, out)
    root_cases(k, roots, out)
    out.put("vectors.json", json.dumps(out.cases, indent=1).encode("utf-8") + b"\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in out.files.items():
        (out_dir / name).write_bytes(data)
    return sorted(out.files)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: here)")
    parser.add_argument("--keys", type=Path, default=HERE / "keys", help="test key directory")
    args = parser.parse_args(argv)
    names = generate(args.out, args.keys)
    print(f"wrote {len(names)} files to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
