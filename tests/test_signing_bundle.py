"""Bundles: what gets shipped, .mpy that MicroPython 1.25 loads, deflate the board inflates."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from signing import keys
from signing.bundle import (
    ENVELOPE_NAME,
    Bundle,
    build_bundle,
    default_sequence,
    load_bundle,
    sign_bundle,
)
from signing.errors import BundleError
from signing.root import new_root
from signing.verify import verify_manifest

NOW = 1_800_000_000


def _app(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def _build(app: Path, out: Path, **options: Any) -> Bundle:
    args: dict[str, Any] = dict(version="1.0.0", sequence=7, boards=["unix"], entry="app_main",
                                min_micropython="1.20.0", mpy=False, deflate=False,
                                created=NOW, expires=NOW + 1000)
    args.update(options)
    return build_bundle(app, out, **args)


def _restore(bundle: Bundle, target: Path) -> None:
    """Lay the app out as a board would, from blobs; deflated blobs stay deflated."""
    for entry in bundle.manifest.files:
        path = target / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bundle.blob_path(entry).read_bytes())


def test_ignored_files_are_not_shipped(tmp_path: Path) -> None:
    app = _app(tmp_path / "app", {
        "app_main.py": "import lib.util\n", "lib/util.py": "X = 1\n",
        ".git/config": "[core]\n", "lib/__pycache__/util.cpython-311.pyc": b"\0",
        "notes.txt": "todo\n", "docs/readme.md": "#\n", "lib/secret.env": "K=V\n",
        ".otaignore": "# comment\nnotes.txt\ndocs/\nlib/*.env\n",
    })
    bundle = _build(app, tmp_path / "out")
    assert [f.path for f in bundle.manifest.files] == ["app_main.py", "lib/util.py"]
    blobs = sorted(p.name for p in (tmp_path / "out" / "blobs").iterdir())
    assert blobs == sorted(f.blob for f in bundle.manifest.files)
    for entry in bundle.manifest.files:
        assert entry.encoding == "plain"
        content = (app / entry.path).read_bytes()
        assert bundle.blob_path(entry).read_bytes() == content
        assert entry.sha256 == hashlib.sha256(content).hexdigest()
    assert bundle.manifest_path.read_bytes() == bundle.manifest.to_payload()
    assert bundle.manifest.app == "app" and bundle.manifest.sequence == 7


def test_mpy_bundle_runs_on_micropython(tmp_path: Path, micropython: str) -> None:
    app = _app(tmp_path / "app", {
        "app_main.py": "from lib import util\nprint('answer', util.answer())\n",
        "lib/util.py": "def answer():\n    return sum(range(7)) * 2\n",
        "lib/__init__.py": "",
    })
    bundle = _build(app, tmp_path / "out", mpy=True)
    paths = [f.path for f in bundle.manifest.files]
    assert paths == ["app_main.mpy", "lib/__init__.mpy", "lib/util.mpy"]
    assert bundle.blob_path(bundle.manifest.files[0]).read_bytes()[:2] == b"M\x06"
    board = tmp_path / "board"
    _restore(bundle, board)
    run = subprocess.run([micropython, "-c", "import sys; sys.path.insert(0, '.'); "
                          "import app_main"], cwd=board, capture_output=True, text=True,
                         timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "answer 42"


def test_mpy_syntax_error_names_the_file_and_writes_nothing(tmp_path: Path) -> None:
    app = _app(tmp_path / "app", {"app_main.py": "x = 1\n", "lib/bad.py": "def f(:\n"})
    with pytest.raises(BundleError, match="lib/bad"):
        _build(app, tmp_path / "out", mpy=True)
    assert not (tmp_path / "out").exists()


def test_deflated_blobs_inflate_on_micropython_with_a_1k_window(
    tmp_path: Path, micropython: str,
) -> None:
    text = "".join(f"line {i} of a log that repeats itself\n" for i in range(300))
    app = _app(tmp_path / "app", {"app_main.py": "x = 1\n", "data/log.txt": text,
                                  "data/random.bin": os.urandom(64)})
    bundle = _build(app, tmp_path / "out", deflate=True)
    log = bundle.manifest.file("data/log.txt")
    assert log.encoding == "deflate" and log.transfer_size < log.size // 3
    # Random bytes do not shrink: they travel plain.
    assert bundle.manifest.file("data/random.bin").encoding == "plain"
    blob = bundle.blob_path(log).read_bytes()
    assert blob[0] == 0x28  # zlib CMF: deflate, CINFO 2 -> window 2**(2+8) = 1024
    script = (
        "import deflate, hashlib, binascii\n"
        "f = open('blob', 'rb')\n"
        "d = deflate.DeflateIO(f, deflate.ZLIB, 10)\n"
        "h = hashlib.sha256()\n"
        "buf = bytearray(256)\n"
        "n = 0\n"
        "while True:\n"
        "    k = d.readinto(buf)\n"
        "    if not k:\n"
        "        break\n"
        "    h.update(buf[:k])\n"
        "    n += k\n"
        "print(n, binascii.hexlify(h.digest()).decode())\n"
    )
    (tmp_path / "blob").write_bytes(blob)
    run = subprocess.run([micropython, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(log.size), log.sha256]


def test_symlink_out_of_the_app_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("password\n")
    app = _app(tmp_path / "app", {"app_main.py": "x = 1\n"})
    (app / "leak.txt").symlink_to(outside)
    with pytest.raises(BundleError, match=r"leak\.txt: symlink points outside"):
        _build(app, tmp_path / "out")


def test_bad_inputs_are_refused_with_the_reason(tmp_path: Path) -> None:
    app = _app(tmp_path / "app", {"app_main.py": "x = 1\n"})
    with pytest.raises(BundleError, match="entry module 'main'"):
        _build(app, tmp_path / "out", entry="main")
    with pytest.raises(BundleError, match="semantic version"):
        _build(app, tmp_path / "out", version="v1")
    with pytest.raises(BundleError, match="outside the app"):
        _build(app, app / "out")
    _app(app, {"bad\\name.py": "x\n"})
    with pytest.raises(BundleError, match=r"bad.*must be relative and ./.-separated"):
        _build(app, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_files_that_differ_only_in_case_are_refused_before_anything_is_built(
    tmp_path: Path,
) -> None:
    app = _app(tmp_path / "app", {"app_main.py": "x = 1\n", "lib/Util.py": "A = 1\n",
                                  "lib/util.py": "a = 1\n", "lib/bad.py": "def f(:\n"})
    if len(list((app / "lib").iterdir())) != 3:
        pytest.skip("the test directory's filesystem ignores case")
    # the names are checked first: no mpy-cross error for lib/bad.py, nothing written
    with pytest.raises(BundleError, match=r"'lib/Util\.mpy' and 'lib/util\.mpy' differ only "
                                          r"in case: a board would store them as one file"):
        _build(app, tmp_path / "out", mpy=True)
    (app / "lib/bad.py").unlink()
    with pytest.raises(BundleError, match=r"'lib/Util\.py' and 'lib/util\.py' differ only"):
        _build(app, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_py_and_its_mpy_are_one_file_with_mpy(tmp_path: Path) -> None:
    app = _app(tmp_path / "app", {"app_main.py": "x = 1\n", "app_main.mpy": b"M\x06"})
    _build(app, tmp_path / "plain")
    with pytest.raises(BundleError, match=r"duplicate file path 'app_main\.mpy'"):
        _build(app, tmp_path / "out", mpy=True)


def test_an_app_too_big_for_the_board_envelope_cap_is_refused(tmp_path: Path) -> None:
    app = _app(tmp_path / "app", {f"m{i:02}.py": f"n = {i}\n" for i in range(60)})
    _app(app, {"app_main.py": "x = 1\n"})
    with pytest.raises(BundleError, match="over the board's cap of 12288"):
        _build(app, tmp_path / "out")


def test_default_sequence_only_grows(tmp_path: Path) -> None:
    app = _app(tmp_path / "app", {"app_main.py": "x = 1\n"})
    out = tmp_path / "out"
    assert default_sequence(out, NOW) == NOW
    first = _build(app, out, sequence=None).manifest.sequence
    second = _build(app, out, sequence=None).manifest.sequence  # same second
    third = _build(app, out, sequence=None, created=NOW - 50).manifest.sequence  # clock back
    assert (first, second, third) == (NOW, NOW + 1, NOW + 2)
    assert _build(app, out, sequence=None, created=NOW + 100).manifest.sequence == NOW + 100


def test_rebuild_drops_stale_blobs_and_signature(tmp_path: Path) -> None:
    app = _app(tmp_path / "app", {"app_main.py": "x = 1\n"})
    out = tmp_path / "out"
    key = keys.generate_private_key()
    _build(app, out)
    sign_bundle(out, key)
    _app(app, {"app_main.py": "x = 2\n"})
    bundle = _build(app, out, sequence=8)
    assert not (out / ENVELOPE_NAME).exists()
    assert [p.name for p in (out / "blobs").iterdir()] == [bundle.manifest.files[0].blob]


def test_signed_bundle_verifies_and_signing_refuses_a_tampered_blob(tmp_path: Path) -> None:
    app = _app(tmp_path / "app", {"app_main.py": "x = 1\n", "lib/a.py": "a = 1\n"})
    out = tmp_path / "out"
    bundle = _build(app, out)
    release = keys.generate_private_key()
    root = new_root(version=1, expires=NOW + 10**6, root_keys=[keys.generate_private_key()],
                    release_keys=[release])
    envelope = sign_bundle(out, release)
    manifest = verify_manifest(envelope.read_bytes(), root, now=NOW, board="unix",
                               installed_sequence=6)
    assert manifest == bundle.manifest == load_bundle(out).manifest
    assert json.loads(envelope.read_bytes())["signatures"][0]["keyid"] == keys.keyid(release)
    blob = bundle.blob_path(bundle.manifest.file("lib/a.py"))
    blob.write_bytes(b"a = 2\n")
    with pytest.raises(BundleError, match="sha256"):
        sign_bundle(out, release)
