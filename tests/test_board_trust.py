"""The board's trust core (bootloader_py/ota/trust.py) on the real MicroPython interpreter.

Envelopes are made here with `cryptography` alone (DSSE PAE, raw low-S r||s), independently of
the host's signing/ package; every case changes one thing and expects exactly one outcome.
All cases run in one MicroPython process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import signing.errors
import signing.manifest
import signing.root
import signing.verify

BOARD_DIR = Path(__file__).resolve().parent.parent / "bootloader_py"
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
ROOT_TYPE = "application/vnd.mpota.root+json"
MANIFEST_TYPE = "application/vnd.mpota.manifest+json"
NOW = 1_800_000_000
SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()


class Key:
    """A P-256 key pair for the tests' own signer."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        nums = self.private.public_key().public_numbers()
        self.point = b"\x04" + nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
        self.keyid = hashlib.sha256(SPKI_PREFIX + self.point).hexdigest()

    def sign(self, message: bytes, high_s: bool = False) -> bytes:
        r, s = decode_dss_signature(self.private.sign(message, ec.ECDSA(hashes.SHA256())))
        s = min(s, N - s)
        if high_s:
            s = N - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def envelope(payload_type: str, payload: bytes, signers: list[Key], *,
             signed_type: str | None = None, signed_payload: bytes | None = None,
             high_s: bool = False) -> dict[str, Any]:
    signed = payload if signed_payload is None else signed_payload
    message = pae(signed_type or payload_type, signed)
    return {"payloadType": payload_type, "payload": b64(payload),
            "signatures": [{"keyid": k.keyid, "sig": b64(k.sign(message, high_s))}
                           for k in signers]}


def dump(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def root_doc(version: int, root_keys: list[Key], release_keys: list[Key], *,
             root_threshold: int = 1, release_threshold: int = 1,
             expires: int = NOW + 1000) -> dict[str, Any]:
    keys = {k.keyid: {"keytype": "ecdsa-p256", "public": b64(k.point)}
            for k in root_keys + release_keys}
    return {"_type": "root", "version": version, "expires": expires, "keys": keys,
            "roles": {"root": {"keyids": [k.keyid for k in root_keys],
                               "threshold": root_threshold},
                      "release": {"keyids": [k.keyid for k in release_keys],
                                  "threshold": release_threshold}}}


def manifest_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_type": "manifest", "app": "demo", "version": "1.1.0", "sequence": 4,
        "created": NOW - 100, "expires": NOW + 100, "boards": ["unix", "esp32"],
        "min_micropython": "1.20.0", "entry": "app_main",
        "files": [
            {"path": "main_app.py", "sha256": SHA_A, "size": 1, "encoding": "plain",
             "blob": SHA_A, "transfer_size": 1},
            {"path": "lib/util.py", "sha256": SHA_B, "size": 1, "encoding": "deflate",
             "blob": SHA_A, "transfer_size": 9},
        ],
    }
    doc.update(changes)
    return doc


def with_file(**changes: Any) -> dict[str, Any]:
    entry = {"path": "lib/x.py", "sha256": SHA_A, "size": 1, "encoding": "plain",
             "blob": SHA_A, "transfer_size": 1}
    entry.update(changes)
    doc = manifest_doc()
    doc["files"] = [*doc["files"], entry]
    return doc


def file_entry(path: str) -> dict[str, Any]:
    return {"path": path, "sha256": SHA_A, "size": 1, "encoding": "plain", "blob": SHA_A,
            "transfer_size": 1}


def with_paths(*paths: str) -> dict[str, Any]:
    doc = manifest_doc()
    doc["files"] = [*doc["files"], *map(file_entry, paths)]
    return doc


# 8 files 9 directories deep (72 directories: past the board's 64 kept directory keys),
# then one whose path is a directory of the first
DEEP = tuple(f"d{i}/a/b/c/d/e/f/g/h/x.py" for i in range(8))


@dataclass
class World:
    """Root v1 (root key r1, release keys rel1/rel2), plus keys nobody trusts."""

    r1: Key = field(default_factory=Key)
    r2: Key = field(default_factory=Key)
    rel1: Key = field(default_factory=Key)
    rel2: Key = field(default_factory=Key)
    stranger: Key = field(default_factory=Key)

    def root_v1(self, **kw: Any) -> dict[str, Any]:
        return root_doc(1, [self.r1], [self.rel1, self.rel2], **kw)

    def manifest(self, doc: dict[str, Any] | None = None, signers: list[Key] | None = None,
                 **kw: Any) -> bytes:
        payload = dump(doc if doc is not None else manifest_doc())
        return dump(envelope(MANIFEST_TYPE, payload, [self.rel1] if signers is None else signers,
                             **kw))


@dataclass
class Case:
    kind: str  # ["deferred-"] + "manifest" | "rotation" | "load"
    expect: str  # "ok" or the error class name
    envelope: bytes = b""
    root: dict[str, Any] | None = None  # root payload; None: the world's v1
    root_signers: list[str] = field(default_factory=lambda: ["r1"])
    board: str | None = "unix"
    installed_sequence: int | None = 3
    now: int | None = NOW
    limits: dict[str, int] = field(default_factory=dict)


def _cases(w: World) -> dict[str, Case]:
    good = w.manifest()
    tampered = json.loads(good)
    tampered["payload"] = b64(dump(manifest_doc(sequence=99)))
    two_of_two = w.root_v1(release_threshold=2)
    v2 = root_doc(2, [w.r2], [w.rel2])
    v2_both = dump(envelope(ROOT_TYPE, dump(v2), [w.r1, w.r2]))
    bad_b64 = json.loads(good)
    bad_b64["payload"] = bad_b64["payload"][:-4] + "!!" + bad_b64["payload"][-4:]
    short_sig = json.loads(good)
    short_sig["signatures"][0]["sig"] = b64(w.rel1.sign(pae(MANIFEST_TYPE, b"x"))[:63])
    missing_payload = json.loads(good)
    del missing_payload["payload"]
    unknown_first = json.loads(good)
    unknown_first["signatures"].insert(0, {"keyid": "ab" * 32, "sig": b64(bytes(64))})
    bad_point = w.root_v1()
    off_curve = w.rel1.point[:-1] + bytes([w.rel1.point[-1] ^ 1])
    bad_point["keys"][w.rel1.keyid]["public"] = b64(off_curve)
    wrong_keyid = w.root_v1()
    wrong_keyid["keys"][w.rel1.keyid]["public"] = b64(w.rel2.point)
    return {
        "valid_manifest": Case("manifest", "ok", good),
        "valid_without_board_sequence_or_time": Case(
            "manifest", "ok", good, board=None, installed_sequence=None, now=None),
        "valid_with_second_release_key": Case("manifest", "ok", w.manifest(signers=[w.rel2])),
        "unknown_keyid_is_ignored": Case("manifest", "ok", dump(unknown_first)),
        "tampered_payload": Case("manifest", "ThresholdError", dump(tampered)),
        "signed_by_a_stranger": Case("manifest", "ThresholdError",
                                     w.manifest(signers=[w.stranger])),
        "signed_by_root_key_not_release": Case("manifest", "ThresholdError",
                                               w.manifest(signers=[w.r1])),
        "unsigned": Case("manifest", "ThresholdError", w.manifest(signers=[])),
        "signed_over_other_payload_type": Case(
            "manifest", "ThresholdError", w.manifest(signed_type=ROOT_TYPE)),
        "high_s": Case("manifest", "ThresholdError", w.manifest(high_s=True)),
        "threshold_two_one_sig": Case("manifest", "ThresholdError", good, root=two_of_two),
        "threshold_two_duplicate_sig": Case(
            "manifest", "ThresholdError", w.manifest(signers=[w.rel1, w.rel1]), root=two_of_two),
        "threshold_two_two_sigs": Case(
            "manifest", "ok", w.manifest(signers=[w.rel2, w.rel1]), root=two_of_two),
        "wrong_payload_type": Case("manifest", "PayloadTypeError", dump(envelope(
            ROOT_TYPE, dump(manifest_doc()), [w.rel1]))),
        "not_json": Case("manifest", "MalformedError", b"\x00not json"),
        # MicroPython's json closes brackets left open at the end: the board must not.
        "envelope_cut_before_last_brace": Case("manifest", "MalformedError", good[:-1]),
        "envelope_cut_inside_signatures": Case("manifest", "MalformedError", good[:-2]),
        "envelope_deeply_nested": Case("manifest", "MalformedError", b"[" * 6000),
        "envelope_brackets_inside_strings_are_fine": Case(
            "manifest", "ok", dump(unknown_first | {"note": "}]]{ not structure"})),
        "rotation_cut_short": Case("rotation", "MalformedError", v2_both[:-2]),
        "not_an_object": Case("manifest", "MalformedError", b"[1, 2]"),
        "payload_missing": Case("manifest", "MalformedError", dump(missing_payload)),
        "payload_bad_base64": Case("manifest", "MalformedError", dump(bad_b64)),
        "sig_63_bytes": Case("manifest", "MalformedError", dump(short_sig)),
        "oversize_checked_before_parsing": Case("manifest", "TooLargeError", b"x" * 12289),
        "oversize_valid_envelope": Case("manifest", "TooLargeError", good,
                                        limits={"MAX_ENVELOPE_BYTES": len(good) - 1}),
        "wrong_board": Case("manifest", "WrongBoardError", good, board="rp2"),
        "lower_sequence": Case("manifest", "RollbackError", good, installed_sequence=5),
        "same_sequence": Case("manifest", "SameSequenceError", good, installed_sequence=4),
        "expired": Case("manifest", "ExpiredError", w.manifest(manifest_doc(expires=NOW))),
        "expired_but_no_time": Case("manifest", "ok", w.manifest(manifest_doc(expires=NOW)),
                                    now=None),
        "path_parent": Case("manifest", "MalformedError", w.manifest(with_file(path="../boot.py"))),
        "path_inner_parent": Case("manifest", "MalformedError",
                                  w.manifest(with_file(path="lib/../../main.py"))),
        "path_absolute": Case("manifest", "MalformedError", w.manifest(with_file(path="/main.py"))),
        "path_dot": Case("manifest", "MalformedError", w.manifest(with_file(path="./a.py"))),
        "path_empty_segment": Case("manifest", "MalformedError",
                                   w.manifest(with_file(path="a//b"))),
        "path_trailing_slash": Case("manifest", "MalformedError", w.manifest(with_file(path="a/"))),
        "path_backslash": Case("manifest", "MalformedError", w.manifest(with_file(path="a\\b.py"))),
        "path_control_char": Case("manifest", "MalformedError", w.manifest(with_file(path="a\nb"))),
        "path_empty": Case("manifest", "MalformedError", w.manifest(with_file(path=""))),
        "path_129_bytes": Case("manifest", "MalformedError",
                               w.manifest(with_file(path="a" * 129))),
        "path_128_bytes": Case("manifest", "ok", w.manifest(with_file(path="a" * 128))),
        "path_129_bytes_astral": Case("manifest", "MalformedError", w.manifest(
            with_file(path="\U0001f600" * 32 + "a"))),
        "path_128_bytes_astral": Case("manifest", "ok", w.manifest(
            with_file(path="\U0001f600" * 32))),
        "path_duplicate": Case("manifest", "MalformedError",
                               w.manifest(with_file(path="lib/util.py"))),
        "path_case_collision": Case("manifest", "MalformedError",
                                    w.manifest(with_file(path="lib/Util.py"))),
        "path_file_and_dir": Case("manifest", "MalformedError", w.manifest(with_file(path="lib"))),
        "path_file_and_dir_case_folded": Case("manifest", "MalformedError",
                                              w.manifest(with_file(path="LIB"))),
        "path_under_a_file": Case("manifest", "MalformedError",
                                  w.manifest(with_file(path="main_app.py/x.py"))),
        "path_near_misses": Case("manifest", "ok", w.manifest(with_paths(
            "lib2/util.py", "lib/util", "li", "a", "ab/c", "LIB2/x.py", "k.py", "\u212a.py"))),
        "path_many_directories": Case("manifest", "ok", w.manifest(with_paths(*DEEP))),
        "path_clash_past_the_kept_directories": Case(
            "manifest", "MalformedError", w.manifest(with_paths(*DEEP, "d0/a/b"))),
        "path_duplicate_before_case": Case("manifest", "MalformedError", w.manifest(
            with_paths("Lib", "lib/x.py", "LIB/UTIL.py", "lib/util.py"))),
        "too_many_files": Case("manifest", "MalformedError", good, limits={"MAX_FILES": 1}),
        "files_at_cap": Case("manifest", "ok", good, limits={"MAX_FILES": 2}),
        "sha_uppercase": Case("manifest", "MalformedError",
                              w.manifest(with_file(sha256=SHA_A.upper(), blob=SHA_A.upper()))),
        "sha_short": Case("manifest", "MalformedError",
                          w.manifest(with_file(sha256=SHA_A[:-2], blob=SHA_A[:-2]))),
        "size_negative": Case("manifest", "MalformedError",
                              w.manifest(with_file(size=-1, transfer_size=-1))),
        "size_bool": Case("manifest", "MalformedError",
                          w.manifest(with_file(size=True, transfer_size=True))),
        "encoding_unknown": Case("manifest", "MalformedError",
                                 w.manifest(with_file(encoding="gzip"))),
        "plain_blob_differs": Case("manifest", "MalformedError",
                                   w.manifest(with_file(blob=SHA_B))),
        "sequence_string": Case("manifest", "MalformedError",
                                w.manifest(manifest_doc(sequence="5"))),
        "version_not_semver": Case("manifest", "MalformedError",
                                   w.manifest(manifest_doc(version="1.1"))),
        "boards_empty": Case("manifest", "MalformedError", w.manifest(manifest_doc(boards=[]))),
        "entry_not_module": Case("manifest", "MalformedError",
                                 w.manifest(manifest_doc(entry="app-main"))),
        "wrong_type_field": Case("manifest", "MalformedError",
                                 w.manifest(manifest_doc(_type="root"))),
        "payload_not_json": Case("manifest", "MalformedError", dump(envelope(
            MANIFEST_TYPE, b"{not json", [w.rel1]))),
        "rotation_ok": Case("rotation", "ok", v2_both),
        "rotation_expired_new_root": Case("rotation", "ExpiredError", dump(envelope(
            ROOT_TYPE, dump(root_doc(2, [w.r2], [w.rel2], expires=NOW)), [w.r1, w.r2]))),
        "rotation_expired_but_no_time": Case("rotation", "ok", dump(envelope(
            ROOT_TYPE, dump(root_doc(2, [w.r2], [w.rel2], expires=NOW)), [w.r1, w.r2])),
            now=None),
        "rotation_skips_a_version": Case("rotation", "RotationError", dump(envelope(
            ROOT_TYPE, dump(root_doc(3, [w.r2], [w.rel2])), [w.r1, w.r2]))),
        "rotation_same_version": Case("rotation", "RotationError", dump(envelope(
            ROOT_TYPE, dump(root_doc(1, [w.r2], [w.rel2])), [w.r1, w.r2]))),
        "rotation_missing_old_threshold": Case("rotation", "ThresholdError", dump(envelope(
            ROOT_TYPE, dump(v2), [w.r2]))),
        "rotation_missing_new_threshold": Case("rotation", "ThresholdError", dump(envelope(
            ROOT_TYPE, dump(v2), [w.r1]))),
        "rotation_wrong_payload_type": Case("rotation", "PayloadTypeError", dump(envelope(
            MANIFEST_TYPE, dump(v2), [w.r1, w.r2]))),
        "load_provisioned_root": Case("load", "ok"),
        # defer_check: the root's own signatures are checked at its first use, never skipped.
        "deferred_check_root_loads": Case("deferred-load", "ok", root_signers=["stranger"]),
        "deferred_check_refuses_manifest": Case("deferred-manifest", "ThresholdError", good,
                                                root_signers=["stranger"]),
        "deferred_check_refuses_rotation": Case("deferred-rotation", "ThresholdError", v2_both,
                                                root_signers=["stranger"]),
        "deferred_check_good_root": Case("deferred-manifest", "ok", good),
        "load_root_not_self_signed": Case("load", "ThresholdError", root_signers=["stranger"]),
        "load_root_threshold_two_one_sig": Case(
            "load", "ThresholdError", root=root_doc(1, [w.r1, w.r2], [w.rel1], root_threshold=2)),
        "load_root_bad_point": Case("load", "MalformedError", root=bad_point),
        "load_root_keyid_not_spki_hash": Case("load", "MalformedError", root=wrong_keyid),
        "load_root_threshold_zero": Case("load", "MalformedError",
                                         root=w.root_v1(release_threshold=0)),
        "load_root_threshold_over_keys": Case("load", "MalformedError",
                                              root=w.root_v1(release_threshold=3)),
        "load_root_unknown_role_keyid": Case("load", "MalformedError", root=root_doc(
            1, [w.r1], [w.rel1]) | {"roles": {"root": {"keyids": [w.r1.keyid], "threshold": 1},
                                           "release": {"keyids": ["ab" * 32], "threshold": 1}}}),
    }


BOARD_RUNNER = """
import sys, json
sys.path.insert(0, BOARD_DIR)
from ota import trust
import binascii
data = json.loads(sys.stdin.read())
defaults = {}
for name in ("MAX_ENVELOPE_BYTES", "MAX_FILES", "MAX_PATH_LENGTH"):
    defaults[name] = getattr(trust, name)
for c in data:
    for name in c["limits"]:
        setattr(trust, name, c["limits"][name])
    try:
        kind = c["kind"]
        deferred = kind.startswith("deferred-")
        if deferred:
            kind = kind[9:]
        root = trust.load_root(c["root_file"], precompute=c["precompute"], defer_check=deferred)
        if kind == "load":
            res = ["ok", root.version]
        elif kind == "manifest":
            m = trust.verify_manifest(binascii.unhexlify(c["envelope"]), root, board=c["board"],
                                      installed_sequence=c["installed_sequence"], now=c["now"])
            res = ["ok", m]
        else:
            new = trust.verify_rotation(root, memoryview(binascii.unhexlify(c["envelope"])),
                                        now=c["now"])
            res = ["ok", new.version, list(new.release_keyids)]
    except trust.TrustError as e:
        res = [type(e).__name__, str(e)]
    for name in defaults:
        setattr(trust, name, defaults[name])
    print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def outcomes(micropython: str, world: World, tmp_path_factory: pytest.TempPathFactory,
             ) -> dict[str, list[Any]]:
    tmp = tmp_path_factory.mktemp("trust")
    cases = _cases(world)
    payload = []
    for i, (name, case) in enumerate(cases.items()):
        root = case.root if case.root is not None else world.root_v1()
        signers = [getattr(world, s) for s in case.root_signers]
        root_file = tmp / f"root{i}.json"
        root_file.write_bytes(dump(envelope(ROOT_TYPE, dump(root), signers)))
        payload.append({"name": name, "kind": case.kind, "envelope": case.envelope.hex(),
                        "root_file": str(root_file), "board": case.board,
                        "installed_sequence": case.installed_sequence, "now": case.now,
                        "limits": case.limits, "precompute": i % 2 == 0})
    done = subprocess.run(
        [micropython, "-c", BOARD_RUNNER.replace("BOARD_DIR", repr(str(BOARD_DIR)))],
        input=json.dumps(payload), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(cases), done.stdout
    return {name: json.loads(line) for name, line in zip(cases, lines, strict=True)}


def _case_names() -> list[str]:
    # The names are data-independent; build them with throw-away keys.
    return list(_cases(World()))


@pytest.mark.parametrize("name", _case_names())
def test_board_gives_exactly_the_expected_outcome(outcomes: dict[str, list[Any]], world: World,
                                                  name: str) -> None:
    assert outcomes[name][0] == _cases(world)[name].expect, outcomes[name]


def test_valid_manifest_is_returned_as_signed(outcomes: dict[str, list[Any]]) -> None:
    assert outcomes["valid_manifest"] == ["ok", manifest_doc()]


def test_rotation_returns_the_new_root(outcomes: dict[str, list[Any]], world: World) -> None:
    assert outcomes["rotation_ok"] == ["ok", 2, [world.rel2.keyid]]


def test_error_messages_name_what_is_wrong(outcomes: dict[str, list[Any]]) -> None:
    assert "payloadType" in outcomes["wrong_payload_type"][1]
    assert "../boot.py" in outcomes["path_parent"][1]
    assert "12289" in outcomes["oversize_checked_before_parsing"][1]
    assert "release" in outcomes["tampered_payload"][1]
    assert ("'lib/util.py' and 'lib/Util.py' differ only in case"
            in outcomes["path_case_collision"][1])
    assert "'lib' is also a directory in 'lib/util.py'" in outcomes["path_file_and_dir"][1]
    assert ("'main_app.py' is also a directory in 'main_app.py/x.py'"
            in outcomes["path_under_a_file"][1])
    assert "'d0/a/b' is also a directory in 'd0/a/b/c" in (
        outcomes["path_clash_past_the_kept_directories"][1])
    # duplicate ('lib/util.py' is in the base manifest), then case, then file/directory
    assert "duplicate file path 'lib/util.py'" in outcomes["path_duplicate_before_case"][1]


PATHS_RUNNER = """
import sys, json
sys.path.insert(0, BOARD_DIR)
from ota import trust
for line in sys.stdin:
    doc = json.loads(line)
    out = []
    for check in (trust.check_manifest, lambda d: trust.accept_manifest(json.dumps(d).encode())):
        try:
            check(doc)
            out.append("ok")
        except trust.TrustError as e:
            out.append(str(e))
    print(json.dumps(out))
"""


def _path_sets(rng: random.Random) -> list[list[str]]:
    # few names, so that duplicates, case twins and files-that-are-directories are common;
    # the Kelvin sign and accented letters are not folded, on either side
    names = ["a", "A", "b", "B", "lib", "Lib", "x.py", "X.py", "k", "\u212a", "\u00e9", "\u00c9"]
    sets = []
    for n in [rng.randint(1, 6) for _ in range(300)] + [rng.randint(10, 24) for _ in range(60)]:
        deep = 12 if n >= 10 else 3
        sets.append(["/".join(rng.choice(names) for _ in range(rng.randint(1, deep)))[:64]
                     for _ in range(n)])
    return sets


def test_board_and_host_refuse_the_same_colliding_paths_with_the_same_message(
        micropython: str) -> None:
    sets = [[p.strip("/") or "a" for p in paths] for paths in _path_sets(random.Random(5))]
    host = []
    for paths in sets:
        try:
            signing.manifest.check_path_set(paths)
            host.append("ok")
        except signing.errors.MalformedError as err:
            host.append(str(err))
    done = subprocess.run(
        [micropython, "-c", PATHS_RUNNER.replace("BOARD_DIR", repr(str(BOARD_DIR)))],
        input="".join(json.dumps(manifest_doc(files=[file_entry(p) for p in paths])) + "\n"
                      for paths in sets),
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    board = [json.loads(line) for line in done.stdout.splitlines()]
    # the in-heap check (check_manifest) and the streamed one (accept_manifest) alike
    assert board == [[h, h] for h in host]
    # the corpus reaches every rule, also past the board's 64 kept directory keys
    kinds = {h.split("'")[0] for h in host}
    assert kinds == {"ok", "manifest: duplicate file path ", "manifest: file paths ",
                     "manifest: file path "}
    fold = signing.manifest.fold_case
    dirs = [len({fold(p)[:i] for p in paths for i, c in enumerate(p) if c == "/"})
            for paths in sets]
    assert {h.split("'")[0] for h, d in zip(host, dirs, strict=True) if d > 64} == kinds


def _hierarchy(module: Any) -> dict[str, str]:
    return {
        name: obj.__mro__[1].__name__
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, module.TrustError)
    }


def test_board_error_classes_match_the_host_hierarchy(micropython: str) -> None:
    # TrustError lives in ota.trust, its subclasses in ota.errors (loaded only to raise one)
    script = (
        f"import sys, json\nsys.path.insert(0, {str(BOARD_DIR)!r})\n"
        "from ota import trust, errors\n"
        "out = {}\n"
        "for module in (trust, errors):\n"
        "    for name in dir(module):\n"
        "        obj = getattr(module, name)\n"
        "        if isinstance(obj, type) and issubclass(obj, trust.TrustError):\n"
        "            out[name] = obj.__bases__[0].__name__\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([micropython, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert json.loads(done.stdout) == _hierarchy(signing.errors)



JSON_VALUES: list[Any] = [None, True, False, 0, -1, 2**70, 1.5, "", "x", "../a", [], {}, [1],
                          {"a": 1}, "ab" * 32]


def _mutate_doc(doc: Any, rng: random.Random) -> Any:
    """`doc` with one value somewhere replaced by a random JSON value, or one key dropped."""
    doc = json.loads(json.dumps(doc))
    parent: Any = None
    key: Any = None
    node = doc
    while isinstance(node, dict | list) and node and rng.random() < 0.7:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, rng.choice(keys)
        node = parent[key]
    if parent is None:
        return rng.choice(JSON_VALUES)
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[key]
    else:
        parent[key] = rng.choice(JSON_VALUES)
    return doc


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    pos = rng.randrange(len(data))
    choice = rng.randrange(3)
    if choice == 0:
        return data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1:]
    if choice == 1:
        return data[:pos]
    return data[:pos] + bytes([rng.randrange(256)]) + data[pos:]


FUZZ_RUNNER = """
import sys, json
sys.path.insert(0, BOARD_DIR)
from ota import trust
import binascii
data = json.loads(sys.stdin.read())
root = trust.load_root(data["root_file"])
for kind, env in data["cases"]:
    buf = binascii.unhexlify(env)
    try:
        if kind == "manifest":
            trust.verify_manifest(buf, root, board="unix", installed_sequence=3, now=1800000000)
        elif kind == "rotation":
            trust.verify_rotation(root, buf, now=1800000000)
        else:
            trust.parse_root(buf)
        res = "ok"
    except Exception as e:
        res = type(e).__name__ + (": " + str(e) if not isinstance(e, trust.TrustError) else "")
    print(json.dumps(res))
"""


def test_mutated_documents_end_in_trust_errors_only(micropython: str, world: World,
                                                   tmp_path: Path) -> None:
    rng = random.Random(4)
    good = world.manifest()
    root_file = tmp_path / "root.json"
    root_file.write_bytes(dump(envelope(ROOT_TYPE, dump(world.root_v1()), [world.r1])))
    cases: list[tuple[str, str]] = []
    for _ in range(120):  # raw bytes of a valid envelope
        cases.append(("manifest", _mutate_bytes(good, rng).hex()))
    for _ in range(60):  # the envelope's JSON
        cases.append(("manifest", dump(_mutate_doc(json.loads(good), rng)).hex()))
    for _ in range(150):  # validly signed manifests with one field broken: reach payload checks
        cases.append(("manifest", world.manifest(_mutate_doc(manifest_doc(), rng)).hex()))
    v2 = root_doc(2, [world.r2], [world.rel2])
    for _ in range(80):  # validly signed roots with one field broken
        doc = _mutate_doc(v2, rng)
        signed = dump(envelope(ROOT_TYPE, dump(doc), [world.r1, world.r2]))
        cases.append(("rotation", signed.hex()))
        cases.append(("root", dump(envelope(ROOT_TYPE, dump(_mutate_doc(world.root_v1(), rng)),
                                            [world.r1])).hex()))
    done = subprocess.run(
        [micropython, "-X", "heapsize=4M", "-c",  # the cases' JSON alone is ~0.5 MB
         FUZZ_RUNNER.replace("BOARD_DIR", repr(str(BOARD_DIR)))],
        input=json.dumps({"root_file": str(root_file), "cases": cases}), capture_output=True,
        text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    outcomes = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(outcomes) == len(cases)
    allowed = {"ok"} | set(_hierarchy(signing.errors))
    strays = [(kind, out) for (kind, _), out in zip(cases, outcomes, strict=True)
              if out not in allowed]
    assert strays == []
    # The corpus reaches deep: payload and root rules refuse most, and some still pass.
    assert outcomes.count("MalformedError") > 100
    assert "ok" in outcomes
    # Where the JSON is well formed (all but the raw byte mutations), the host's verifier
    # must reach exactly the same verdict.
    trusted = signing.root.verify_root_signatures(root_file.read_bytes())
    differ = []
    for (kind, env), board_says in list(zip(cases, outcomes, strict=True))[120:]:
        host_says = _host_verdict(kind, bytes.fromhex(env), trusted)
        if host_says != board_says:
            differ.append((kind, bytes.fromhex(env)[:300], host_says, board_says))
    assert differ == []


def _host_verdict(kind: str, data: bytes, trusted: signing.root.RootMetadata) -> str:
    try:
        if kind == "manifest":
            signing.verify.verify_manifest(data, trusted, now=NOW, board="unix",
                                           installed_sequence=3)
        elif kind == "rotation":
            signing.root.verify_rotation(trusted, data, now=NOW)
        else:
            signing.root.verify_root_signatures(data)
    except signing.errors.TrustError as err:
        return type(err).__name__
    return "ok"


def test_buffers_of_every_kind_verify_alike_and_missing_root_is_oserror(
        micropython: str, world: World, tmp_path: Path) -> None:
    root_file = tmp_path / "trust.json"
    root_file.write_bytes(dump(envelope(ROOT_TYPE, dump(world.root_v1()), [world.r1])))
    script = (
        f"import sys, json\nsys.path.insert(0, {str(BOARD_DIR)!r})\nfrom ota import trust\n"
        "env = sys.stdin.buffer.read()\n"
        f"root = trust.load_root({str(root_file)!r})\n"
        "out = [trust.verify_manifest(b, root, board='unix', installed_sequence=3)['sequence']"
        " for b in (env, bytearray(env), memoryview(env), memoryview(bytearray(env)))]\n"
        "try:\n"
        f"    trust.load_root({str(tmp_path / 'missing.json')!r})\n"
        "    out.append('loaded')\n"
        "except OSError:\n"
        "    out.append('OSError')\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([micropython, "-c", script], input=world.manifest(),
                          capture_output=True, timeout=60, check=True)
    assert json.loads(done.stdout) == [4, 4, 4, 4, "OSError"]


def test_failed_rotation_changes_nothing_and_small_table_modes_verify(
        micropython: str, world: World, tmp_path: Path) -> None:
    root_file = tmp_path / "trust.json"
    root_file.write_bytes(dump(envelope(ROOT_TYPE, dump(world.root_v1()), [world.r1])))
    v2 = dump(root_doc(2, [world.r2], [world.rel2]))
    bad_rotation = dump(envelope(ROOT_TYPE, v2, [world.r2]))  # old root did not sign
    good_rotation = dump(envelope(ROOT_TYPE, v2, [world.r1, world.r2]))
    script = (
        f"import sys, json\nsys.path.insert(0, {str(BOARD_DIR)!r})\nfrom ota import trust, p256\n"
        "bad, good, m1, m2 = [bytes.fromhex(x) for x in json.loads(sys.stdin.read())]\n"
        "out = []\n"
        "def verdict(f):\n"
        "    try:\n"
        "        f()\n"
        "        return 'ok'\n"
        "    except trust.TrustError as e:\n"
        "        return type(e).__name__\n"
        "for g, k in ((6, 6), (4, 0), (2, 3)):\n"
        "    p256.G_TEETH, p256.KEY_TEETH = g, k\n"
        f"    root = trust.load_root({str(root_file)!r})\n"
        "    row = [verdict(lambda: trust.verify_rotation(root, bad))]\n"
        "    row.append(verdict(lambda: trust.verify_manifest(m1, root)))\n"
        "    new = trust.verify_rotation(root, good)\n"
        "    row += [root.version, new.version, verdict(lambda: trust.verify_manifest(m1, root)),\n"
        "            verdict(lambda: trust.verify_manifest(m1, new)),\n"
        "            verdict(lambda: trust.verify_manifest(m2, new))]\n"
        "    tables = [root.keys[kid].comb is not None for kid in root.release_keyids]\n"
        "    out.append([row, tables])\n"
        "print(json.dumps(out))\n"
    )
    data = [bad_rotation.hex(), good_rotation.hex(), world.manifest().hex(),
            world.manifest(signers=[world.rel2]).hex()]
    done = subprocess.run([micropython, "-c", script], input=json.dumps(data),
                          capture_output=True, text=True, timeout=120, check=True)
    row = ["ThresholdError", "ok", 1, 2, "ok", "ThresholdError", "ok"]
    assert json.loads(done.stdout) == [[row, [True, True]], [row, [False, False]],
                                       [row, [True, True]]]


STREAM_RUNNER = """
import sys, json, binascii
sys.path.insert(0, BOARD_DIR)
from ota import trust
data = json.loads(sys.stdin.read())
root = trust.load_root(data["root_file"])
def verdict(src, streamed):
    try:
        if not streamed:
            m = trust.verify_manifest(src, root, board="unix", installed_sequence=3,
                                      now=1800000000)
            return ["ok", m["sequence"], [f["path"] for f in m["files"]]]
        got = []
        m = trust.verify_manifest(src, root, board="unix", installed_sequence=3,
                                  now=1800000000, files=got.append, scratch=data["scratch"])
        return ["ok", m["sequence"], [f["path"] for f in got]]
    except trust.TrustError as e:
        return [type(e).__name__, str(e)]
for env in data["cases"]:
    raw = binascii.unhexlify(env)
    with open(data["envelope"], "wb") as f:
        f.write(raw)
    print(json.dumps([verdict(raw, False), verdict(memoryview(raw), False),
                      verdict(data["envelope"], True)]))
"""


def _raw(*members: str) -> bytes:
    return ("{" + ",".join(members) + "}").encode()


def _unusual_envelopes(w: World) -> dict[str, tuple[bytes, str]]:
    """Envelopes whose raw text and parsed document are easy to confuse, with the host's verdict.

    The board never parses an envelope whole: it walks the members through a 512-byte window
    and decodes the payload's base64 from the raw bytes. Each case puts an escape, a duplicate,
    a nested look-alike or a string across a window boundary where that could go wrong.
    """
    good = w.manifest()
    doc = json.loads(good)
    payload = doc["payload"]
    sigs = json.dumps(doc["signatures"])
    other = b64(dump(manifest_doc(sequence=99)))
    pt = json.dumps(MANIFEST_TYPE)
    cases = {
        "plain": good,
        "spaces_around_colon": good.replace(b'"payload":', b'"payload" \n:\t '),
        "escaped_key": _raw(f'"payloadType":{pt}', f'"p\\u0061yload":"{payload}"',
                            f'"signatures":{sigs}'),
        "escaped_slash_in_payload": _raw(f'"payloadType":{pt}',
                                         '"payload":"' + payload.replace("/", "\\/") + '"',
                                         f'"signatures":{sigs}'),
        "payload_twice_last_wins": _raw(f'"payloadType":{pt}', f'"payload":"{other}"',
                                        f'"payload":"{payload}"', f'"signatures":{sigs}'),
        "payload_twice_other_last": _raw(f'"payloadType":{pt}', f'"payload":"{payload}"',
                                         f'"payload":"{other}"', f'"signatures":{sigs}'),
        "nested_payload_and_escaped_top": _raw(
            f'"payloadType":{pt}', '"x":{"payload":"' + other + '"}',
            f'"p\\u0061yload":"{payload}"', f'"signatures":{sigs}'),
        "quote_escaped_key_then_empty_payload": _raw(
            f'"payloadType":{pt}', f'"x\\"payload":"{payload}"', '"p\\u0061yload":""',
            f'"signatures":{sigs}'),
        "padding_in_the_middle": _raw(f'"payloadType":{pt}', f'"payload":"QQ=={payload}"',
                                      f'"signatures":{sigs}'),
        "empty_payload": _raw(f'"payloadType":{pt}', '"payload":""', f'"signatures":{sigs}'),
        "cut_short": good[:-2],
        "unicode_escape_in_payload": _raw(f'"payloadType":{pt}',
                                          '"payload":"\\u00' + f"{ord(payload[0]):02x}"
                                          + payload[1:] + '"', f'"signatures":{sigs}'),
        "newline_escape_in_payload": _raw(f'"payloadType":{pt}',
                                          '"payload":"' + payload[:8] + "\\n" + payload[8:]
                                          + '"', f'"signatures":{sigs}'),
        "unknown_member_nested": _raw(f'"payloadType":{pt}', '"x":{"a":[1,{"b":"]}"}],"c":{}}',
                                      f'"payload":"{payload}"', f'"signatures":{sigs}'),
        "escaped_quotes_across_windows": _raw(
            f'"payloadType":{pt}', '"note":"' + 'a\\"' * 400 + '"', f'"payload":"{payload}"',
            f'"signatures":{sigs}'),
        "data_after_the_object": good + b" x",
        "whitespace_around_the_object": b" \n" + good + b"\n ",
    }
    trusted = signing.root.verify_root_signatures(
        dump(envelope(ROOT_TYPE, dump(w.root_v1()), [w.r1])))
    out = {name: (env, _host_verdict("manifest", env, trusted)) for name, env in cases.items()}
    # documented difference (docs/board-trust.md): the host refuses duplicate keys in the
    # envelope, the board's JSON takes the last one (the signatures still decide)
    for name, board_says in (("payload_twice_last_wins", "ok"),
                             ("payload_twice_other_last", "ThresholdError")):
        assert out[name][1] == "MalformedError"
        out[name] = (out[name][0], board_says)
    return out


def test_streaming_envelope_reader_agrees_with_the_host_on_unusual_envelopes(
        micropython: str, world: World, tmp_path: Path) -> None:
    root_file = tmp_path / "root.json"
    root_file.write_bytes(dump(envelope(ROOT_TYPE, dump(world.root_v1()), [world.r1])))
    cases = _unusual_envelopes(world)
    done = subprocess.run(
        [micropython, "-c", STREAM_RUNNER.replace("BOARD_DIR", repr(str(BOARD_DIR)))],
        input=json.dumps({"root_file": str(root_file), "envelope": str(tmp_path / "env"),
                          "scratch": str(tmp_path / "payload"),
                          "cases": [env.hex() for env, _ in cases.values()]}),
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == len(cases)
    for (name, (_, host)), (plain, view, streamed) in zip(cases.items(), rows, strict=True):
        # bytes, a memoryview, and a file read through the window with the payload decoded
        # to a scratch file and the entries handed over one by one: one and the same verdict,
        # and it is the host's
        assert plain == view == streamed, name
        assert plain[0] == host, f"{name}: board {plain}, expected {host}"
    # the cases reach both sides: valid envelopes verify, tricked ones are refused
    assert rows[0][0] == ["ok", 4, ["main_app.py", "lib/util.py"]]
    assert cases["escaped_key"][1] == "ok"
    assert cases["escaped_slash_in_payload"][1] == "ok"
    assert cases["nested_payload_and_escaped_top"][1] == "ok"
    assert cases["quote_escaped_key_then_empty_payload"][1] != "ok"
    assert cases["unicode_escape_in_payload"][1] == "ok"
    assert cases["escaped_quotes_across_windows"][1] == "ok"
    assert cases["newline_escape_in_payload"][1] == "MalformedError"
    assert cases["data_after_the_object"][1] == "MalformedError"


def test_client_envelope_cap_is_the_verifiers(micropython: str) -> None:
    # The client refuses an oversized check-in answer without loading the verifier, so it
    # keeps its own copy of the cap; both must say the same.
    script = (f"import sys\nsys.path.insert(0, {str(BOARD_DIR)!r})\n"
              "from ota import client, trust\n"
              "print(client.MAX_ENVELOPE, trust.MAX_ENVELOPE_BYTES)\n")
    done = subprocess.run([micropython, "-c", script], capture_output=True, text=True,
                          timeout=30, check=True)
    client_cap, trust_cap = done.stdout.split()
    assert client_cap == trust_cap == "12288"
