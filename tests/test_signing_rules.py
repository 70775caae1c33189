"""One change to a valid document, exactly one error class (python-tuf's testing habit).

The shared vectors (test_signing_vectors.py) cover the board-visible rules; this file adds
the host-side ones: limits as data, root document rules, rotation chains, file checks.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from signing import dsse, errors, keys
from signing.limits import Limits
from signing.manifest import MANIFEST_PAYLOAD_TYPE, FileEntry, Manifest
from signing.root import (
    ROOT_PAYLOAD_TYPE,
    RootMetadata,
    new_root,
    sign_root,
    verify_root,
    verify_root_chain,
    verify_rotation,
)
from signing.verify import verify_blob, verify_file, verify_manifest

NOW = 1_800_000_000
LATER = NOW + 86400 * 365


@pytest.fixture(scope="module")
def k() -> dict[str, keys.PrivateKey]:
    return {name: keys.generate_private_key()
            for name in ("root1", "root2", "root3", "rel1", "rel2", "rel3")}


@pytest.fixture(scope="module")
def root(k: dict[str, keys.PrivateKey]) -> RootMetadata:
    return new_root(version=1, expires=LATER, root_keys=[k["root1"]],
                    release_keys=[k["rel1"], k["rel2"], k["rel3"]], release_threshold=2)


def _manifest_doc() -> dict[str, Any]:
    content = b"print('hi')\n"
    digest = hashlib.sha256(content).hexdigest()
    return {"_type": "manifest", "app": "demo", "version": "2.0.0-rc.1+build.7",
            "sequence": 5, "created": NOW - 10, "expires": LATER, "boards": ["esp32"],
            "min_micropython": "1.25", "entry": "pkg.app_main",
            "files": [{"path": "pkg/app_main.py", "sha256": digest, "size": len(content),
                       "encoding": "plain", "blob": digest, "transfer_size": len(content)}]}


def _sign(doc: Any, *signers: keys.PrivateKey, kind: str = MANIFEST_PAYLOAD_TYPE) -> bytes:
    payload = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
    return dsse.envelope_bytes(dsse.sign_envelope(kind, payload, signers))


def test_valid_manifest_verifies_with_every_check_on(k: dict, root: RootMetadata) -> None:
    manifest = verify_manifest(_sign(_manifest_doc(), k["rel1"], k["rel3"]), root, now=NOW,
                               board="esp32", installed_sequence=4)
    assert manifest.sequence == 5 and manifest.entry == "pkg.app_main"
    assert manifest.file("pkg/app_main.py").size == 12
    assert Manifest.from_payload(manifest.to_payload()) == manifest


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.update({field: value})


def _set_file(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["files"][0].update({field: value})


MANIFEST_RULES: list[tuple[str, Callable[[dict[str, Any]], None], type[Exception]]] = [
    ("sequence-bool", _set("sequence", True), errors.MalformedError),
    ("created-missing", lambda d: d.pop("created"), errors.MalformedError),
    ("app-with-slash", _set("app", "../demo"), errors.MalformedError),
    ("version-leading-zero", _set("version", "01.0.0"), errors.MalformedError),
    ("entry-not-module", _set("entry", "app-main"), errors.MalformedError),
    ("min-micropython-word", _set("min_micropython", "latest"), errors.MalformedError),
    ("board-not-string", _set("boards", ["esp32", 7]), errors.MalformedError),
    ("file-not-object", _set("files", ["pkg/app_main.py"]), errors.MalformedError),
    ("file-path-missing", lambda d: d["files"][0].pop("path"), errors.MalformedError),
    ("file-sha-short", _set_file("sha256", "ab"), errors.MalformedError),
    ("file-path-nul", _set_file("path", "pkg/a\x00.py"), errors.MalformedError),
    ("file-path-dotdot-only", _set_file("path", ".."), errors.MalformedError),
    ("expires-now", _set("expires", NOW), errors.ExpiredError),
    ("expires-past", _set("expires", NOW - 1), errors.ExpiredError),
    ("sequence-same", _set("sequence", 4), errors.SameSequenceError),
    ("sequence-lower", _set("sequence", 3), errors.RollbackError),
    ("board-other", _set("boards", ["rp2"]), errors.WrongBoardError),
]


@pytest.mark.parametrize("change,expected", [(c, e) for _, c, e in MANIFEST_RULES],
                         ids=[n for n, _, _ in MANIFEST_RULES])
def test_one_manifest_change_one_error_class(
    k: dict, root: RootMetadata, change: Callable[[dict[str, Any]], None],
    expected: type[Exception],
) -> None:
    doc = _manifest_doc()
    change(doc)
    with pytest.raises(errors.TrustError) as caught:
        verify_manifest(_sign(doc, k["rel1"], k["rel2"]), root, now=NOW, board="esp32",
                        installed_sequence=4)
    assert caught.type is expected


def test_too_many_files_is_malformed_when_the_envelope_cap_allows_them(
    k: dict, root: RootMetadata,
) -> None:
    limits = Limits(max_envelope_bytes=1 << 20, max_files=3)
    doc = _manifest_doc()
    doc["files"] = [dict(doc["files"][0], path=f"f{i}.py") for i in range(3)]
    verify_manifest(_sign(doc, k["rel1"], k["rel2"]), root, now=NOW, limits=limits)
    doc["files"].append(dict(doc["files"][0], path="f3.py"))
    with pytest.raises(errors.TrustError) as caught:
        verify_manifest(_sign(doc, k["rel1"], k["rel2"]), root, now=NOW, limits=limits)
    assert caught.type is errors.MalformedError


def test_path_length_limit_is_data(k: dict, root: RootMetadata) -> None:
    doc = _manifest_doc()
    doc["files"][0]["path"] = "p" * 20
    envelope = _sign(doc, k["rel1"], k["rel2"])
    verify_manifest(envelope, root, now=NOW, limits=Limits(max_path_length=20))
    with pytest.raises(errors.TrustError) as caught:
        verify_manifest(envelope, root, now=NOW, limits=Limits(max_path_length=19))
    assert caught.type is errors.MalformedError


def _with_paths(*paths: str) -> bytes:
    doc = _manifest_doc()
    doc["files"] = [dict(doc["files"][0], path=path) for path in paths]
    return json.dumps(doc).encode()


PATH_SETS: list[tuple[str, tuple[str, ...], str | None]] = [
    ("case", ("lib/Util.py", "lib/util.py"),
     "file paths 'lib/Util.py' and 'lib/util.py' differ only in case"),
    ("case-of-a-directory", ("LIB/a.py", "lib/a.py"), "differ only in case"),
    ("file-then-dir", ("lib", "lib/util.py"),
     "file path 'lib' is also a directory in 'lib/util.py'"),
    ("dir-then-file", ("a/b/c", "a/b"), "file path 'a/b' is also a directory in 'a/b/c'"),
    ("file-and-dir-folded", ("Lib", "lib/a.py"),
     "file path 'Lib' is also a directory in 'lib/a.py'"),
    # the first path that clashes is named with the earliest path it clashes with
    ("earliest", ("a/b/c", "x", "a", "a/b"), "file path 'a' is also a directory in 'a/b/c'"),
    # order of the rules: duplicates, then case, then file/dir, whatever the list order
    ("duplicate-first", ("a", "a/b", "X", "x", "y", "y"), "duplicate file path 'y'"),
    ("case-before-dir", ("a", "a/b", "X", "x"), "file paths 'X' and 'x' differ only in case"),
    ("near-misses", ("lib/a.py", "lib2/a.py", "a", "ab/c", "a.py", "lib/a", "lib/a.b/c"), None),
    ("same-directory-other-case", ("LIB/a.py", "lib/b.py"), None),
    # only ASCII letters are folded (CPython's lower() folds the Kelvin sign to 'k')
    ("non-ascii-not-folded", ("\u212a.py", "k.py", "\u00c9t\u00e9", "\u00e9t\u00e9"), None),
]


@pytest.mark.parametrize("paths,message", [(p, m) for _, p, m in PATH_SETS],
                         ids=[n for n, _, _ in PATH_SETS])
def test_paths_that_would_collide_on_a_board_filesystem_are_malformed(
    paths: tuple[str, ...], message: str | None,
) -> None:
    if message is None:
        assert [f.path for f in Manifest.from_payload(_with_paths(*paths)).files] == list(paths)
        return
    with pytest.raises(errors.MalformedError) as caught:
        Manifest.from_payload(_with_paths(*paths))
    assert caught.type is errors.MalformedError
    assert message in str(caught.value)


def test_each_entry_is_checked_before_paths_are_compared() -> None:
    with pytest.raises(errors.MalformedError, match=r"'\.\.' segment"):
        Manifest.from_payload(_with_paths("A", "a", "../x"))


def test_unknown_keyid_with_garbage_signature_is_ignored(k: dict, root: RootMetadata) -> None:
    envelope = json.loads(_sign(_manifest_doc(), k["rel1"], k["rel2"]))
    envelope["signatures"].insert(0, {"keyid": "not-a-keyid", "sig": dsse.b64encode(bytes(64))})
    verify_manifest(dsse.envelope_bytes(envelope), root, now=NOW)


def test_a_bad_signature_from_a_trusted_key_does_not_count(k: dict, root: RootMetadata) -> None:
    envelope = json.loads(_sign(_manifest_doc(), k["rel1"], k["rel2"]))
    envelope["signatures"][1]["sig"] = envelope["signatures"][0]["sig"]
    with pytest.raises(errors.TrustError) as caught:
        verify_manifest(dsse.envelope_bytes(envelope), root, now=NOW)
    assert caught.type is errors.ThresholdError


# --- root metadata --------------------------------------------------------------------------


def _root_doc(root: RootMetadata) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(root.to_payload())
    return doc


ROOT_RULES: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("type-manifest", lambda d: d.update(_type="manifest")),
    ("version-zero", lambda d: d.update(version=0)),
    ("expires-string", lambda d: d.update(expires="2030")),
    ("keytype-ed25519", lambda d: next(iter(d["keys"].values())).update(keytype="ed25519")),
    ("public-not-base64", lambda d: next(iter(d["keys"].values())).update(public="@@")),
    ("public-off-curve", lambda d: next(iter(d["keys"].values())).update(
        public=dsse.b64encode(b"\x04" + bytes(64)))),
    ("role-missing", lambda d: d["roles"].pop("release")),
    ("role-unknown-keyid", lambda d: d["roles"]["release"]["keyids"].append("ab" * 32)),
    ("role-duplicate-keyid", lambda d: d["roles"]["root"]["keyids"].append(
        d["roles"]["root"]["keyids"][0])),
    ("threshold-bool", lambda d: d["roles"]["root"].update(threshold=True)),
]


@pytest.mark.parametrize("change", [c for _, c in ROOT_RULES], ids=[n for n, _ in ROOT_RULES])
def test_one_root_change_is_malformed(k: dict, root: RootMetadata,
                                      change: Callable[[dict[str, Any]], None]) -> None:
    doc = _root_doc(root)
    doc["version"] = 2
    change(doc)
    # Signed by the old and (where it can be read) the new root key: only the rule can refuse.
    with pytest.raises(errors.TrustError) as caught:
        verify_rotation(root, _sign(doc, k["root1"], kind=ROOT_PAYLOAD_TYPE), now=NOW)
    assert caught.type is errors.MalformedError


def test_self_signed_root_rules(k: dict, root: RootMetadata) -> None:
    assert verify_root(sign_root(root, [k["root1"]]), now=NOW) == root
    for signers, expected in (([], errors.ThresholdError), ([k["rel1"]], errors.ThresholdError)):
        with pytest.raises(errors.TrustError) as caught:
            verify_root(sign_root(root, signers), now=NOW)
        assert caught.type is expected
    with pytest.raises(errors.TrustError) as caught:
        verify_root(sign_root(root, [k["root1"]]), now=LATER)
    assert caught.type is errors.ExpiredError


def _chain(k: dict) -> tuple[RootMetadata, list[bytes]]:
    v1 = new_root(version=1, expires=NOW + 10, root_keys=[k["root1"]], release_keys=[k["rel1"]])
    v2 = new_root(version=2, expires=NOW + 20, root_keys=[k["root2"]], release_keys=[k["rel2"]])
    v3 = new_root(version=3, expires=LATER, root_keys=[k["root2"], k["root3"]],
                  release_keys=[k["rel3"]], root_threshold=2)
    return v1, [sign_root(v2, [k["root1"], k["root2"]]),
                sign_root(v3, [k["root2"], k["root3"]])]


def test_chain_of_rotations_from_any_trusted_version(k: dict) -> None:
    v1, envelopes = _chain(k)
    final = verify_root_chain(v1, envelopes, now=NOW)
    assert final.version == 3 and final.root.threshold == 2
    v2 = verify_rotation(v1, envelopes[0], now=NOW)
    assert verify_root_chain(v2, envelopes[1:], now=NOW) == final
    # Intermediate roots may have expired while the board was offline; the final one may not.
    assert verify_root_chain(v1, envelopes, now=NOW + 100) == final
    with pytest.raises(errors.TrustError) as caught:
        verify_root_chain(v1, envelopes, now=LATER)
    assert caught.type is errors.ExpiredError


def test_chain_with_a_missing_link_is_a_rotation_error(k: dict) -> None:
    v1, envelopes = _chain(k)
    # v3 is signed by root2+root3, which v1 does not trust: the old threshold fails first.
    with pytest.raises(errors.TrustError) as caught:
        verify_root_chain(v1, envelopes[1:], now=NOW)
    assert caught.type is errors.ThresholdError
    skip = new_root(version=3, expires=LATER, root_keys=[k["root1"]], release_keys=[k["rel1"]])
    with pytest.raises(errors.TrustError) as caught:
        verify_root_chain(v1, [sign_root(skip, [k["root1"]])], now=NOW)
    assert caught.type is errors.RotationError


def test_a_manifest_is_checked_against_the_rotated_release_key(k: dict) -> None:
    v1, envelopes = _chain(k)
    v3 = verify_root_chain(v1, envelopes, now=NOW)
    doc = _manifest_doc()
    verify_manifest(_sign(doc, k["rel3"]), v3, now=NOW)
    with pytest.raises(errors.TrustError) as caught:
        verify_manifest(_sign(doc, k["rel1"]), v3, now=NOW)
    assert caught.type is errors.ThresholdError


# --- files ----------------------------------------------------------------------------------


def _entry(content: bytes) -> FileEntry:
    return FileEntry("a.py", hashlib.sha256(content).hexdigest(), len(content))


@pytest.mark.parametrize("as_stream", [False, True], ids=["bytes", "stream"])
def test_file_checks(as_stream: bool) -> None:
    content = b"x" * 40000

    def feed(data: bytes) -> Any:
        return io.BytesIO(data) if as_stream else data

    entry = _entry(content)
    verify_file(entry, feed(content))
    verify_blob(entry, feed(content))
    cases = [(content[:-1], errors.LengthMismatchError),
             (content + b"x", errors.LengthMismatchError),
             (content[:-1] + b"y", errors.HashMismatchError)]
    for data, expected in cases:
        with pytest.raises(errors.FileMismatchError) as caught:
            verify_file(entry, feed(data))
        assert caught.type is expected


def test_stream_check_stops_reading_after_size_plus_one() -> None:
    entry = _entry(b"abc")
    stream = io.BytesIO(b"abcdef" * 1000)
    with pytest.raises(errors.LengthMismatchError):
        verify_file(entry, stream)
    assert stream.tell() == 4


def test_deflate_entry_blob_is_checked_against_blob_fields() -> None:
    entry = FileEntry("a.txt", "a" * 64, 100, "deflate", hashlib.sha256(b"zz").hexdigest(), 2)
    verify_blob(entry, b"zz")
    with pytest.raises(errors.HashMismatchError):
        verify_blob(entry, b"zy")


def test_manifest_envelope_error_classes_do_not_depend_on_field_order(k: dict,
                                                                     root: RootMetadata) -> None:
    envelope = json.loads(_sign(_manifest_doc(), k["rel1"], k["rel2"]))
    reordered = {"signatures": envelope["signatures"], "payload": envelope["payload"],
                 "payloadType": envelope["payloadType"]}
    verify_manifest(json.dumps(reordered).encode(), root, now=NOW)
    broken = copy.deepcopy(reordered)
    broken["payloadType"] = ROOT_PAYLOAD_TYPE
    with pytest.raises(errors.TrustError) as caught:
        verify_manifest(json.dumps(broken).encode(), root, now=NOW)
    assert caught.type is errors.PayloadTypeError
