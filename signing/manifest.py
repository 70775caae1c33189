"""The release manifest: what an app release is made of, as the release role signs it."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from signing import dsse
from signing.errors import MalformedError
from signing.limits import DEFAULT_LIMITS, Limits

MANIFEST_PAYLOAD_TYPE = "application/vnd.mpota.manifest+json"
# The oldest MicroPython the board's OTA client runs on (docs/board.md, Firmware floor): it
# imports `tls` (new in 1.23) and `deflate` (1.21). The default of a manifest's
# `min_micropython`, and the oldest firmware the provisioning station writes a board for.
MICROPYTHON_FLOOR = "1.23.0"
ENCODINGS = ("plain", "deflate")
MAX_FILE_SIZE = 2**64 - 1  # a file's size and transfer size, in bytes

# Semantic Versioning 2.0.0, without the leading-zero subtleties of pre-release identifiers.
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
)
_MICROPYTHON_VERSION = re.compile(r"\d+\.\d+(\.\d+)?")
_HEX256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def micropython_version(text: str) -> tuple[int, int, int]:
    """`"1.23"`, `"1.23.0"` or `"v1.23.0"` as (1, 23, 0); raises ValueError for anything else."""
    if not _MICROPYTHON_VERSION.fullmatch(text.removeprefix("v")):
        raise ValueError(f"{text[:40]!r} is not a MicroPython version like {MICROPYTHON_FLOOR}")
    major, minor, *patch = (int(part) for part in text.removeprefix("v").split("."))
    return major, minor, patch[0] if patch else 0


def check_path(path: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise MalformedError unless `path` is a relative `/` path that stays inside the app.

    Rules, in this order (the board's `ota.rules.check_path` applies the same): Unicode text
    (no lone surrogate, so it has a UTF-8 form), 1 to `limits.max_path_length` bytes of UTF-8
    (bytes, not characters: what a filesystem and the board's buffers hold, and the same count
    on every Python), no leading `/`, no backslash, no control character, no empty, `.` or
    `..` segment.
    """
    if any("\ud800" <= ch <= "\udfff" for ch in path):
        raise MalformedError(f"file path {path[:80]!r}: lone surrogate (not Unicode text)")
    size = len(path.encode("utf-8"))
    if not size or size > limits.max_path_length:
        raise MalformedError(
            f"file path {path[:80]!r}: {size} bytes of UTF-8, must be 1..{limits.max_path_length}"
        )
    if path.startswith("/") or "\\" in path:
        raise MalformedError(f"file path {path!r}: must be relative and '/'-separated")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise MalformedError(f"file path {path!r}: control character")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise MalformedError(f"file path {path!r}: empty, '.' or '..' segment")


def fold_case(path: str) -> str:
    """`path` with the ASCII letters A-Z lowered and every other character kept.

    Not `str.lower()`: CPython lowers non-ASCII letters too (the Kelvin sign becomes `k`, `İ`
    two characters), MicroPython's `str.lower()` only ASCII; the board and the host must fold
    alike.
    """
    return path.translate(_ASCII_LOWER)


def check_path_set(paths: Sequence[str], where: str = "manifest") -> None:
    """Raise MalformedError unless the paths can all be files of one slot on any board.

    In this order, each reported for the first path (in list order) that clashes with an
    earlier one, named with the earliest such path:
    1. a duplicate path;
    2. two paths equal but for ASCII case (`lib/Util.py`, `lib/util.py`: one file on FAT);
    3. a path that is also a directory of another, compared after ASCII folding (`lib` and
       `lib/util.py`, `Lib` and `lib/util.py`): it cannot be written at all.
    Non-ASCII characters are compared exactly (docs/manifest.md, "Rules every verifier
    applies"). Each path must already have passed `check_path`.
    """
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise MalformedError(f"{where}: duplicate file path {path!r}")
        seen.add(path)
    folded: dict[str, int] = {}  # folded path -> index of the path
    for i, path in enumerate(paths):
        first = folded.setdefault(fold_case(path), i)
        if first != i:
            raise MalformedError(
                f"{where}: file paths {paths[first]!r} and {path!r} differ only in case")
    dirs: dict[str, int] = {}  # folded directory -> index of the first path under it
    for i, path in enumerate(paths):
        low = fold_case(path)
        parents = [low[:at] for at, ch in enumerate(low) if ch == "/"]
        # (index of the earlier path, the file, the path under it)
        clashes = [(folded[d], paths[folded[d]], path) for d in parents if folded.get(d, i) < i]
        if low in dirs:
            clashes.append((dirs[low], path, paths[dirs[low]]))
        if clashes:
            _, file, under = min(clashes)
            raise MalformedError(f"{where}: file path {file!r} is also a directory in {under!r}")
        for d in parents:
            dirs.setdefault(d, i)


@dataclass(frozen=True)
class FileEntry:
    """One file of the app: its content (`sha256`, `size`) and how it travels (`blob`)."""

    path: str
    sha256: str
    size: int
    encoding: str = "plain"
    blob: str = ""
    transfer_size: int = -1

    def __post_init__(self) -> None:
        # A plain entry's blob is the file itself; let callers leave those two out.
        if self.encoding == "plain":
            if not self.blob:
                object.__setattr__(self, "blob", self.sha256)
            if self.transfer_size < 0:
                object.__setattr__(self, "transfer_size", self.size)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "sha256": self.sha256, "size": self.size,
            "encoding": self.encoding, "blob": self.blob, "transfer_size": self.transfer_size,
        }

    @classmethod
    def from_json(cls, obj: Any, index: int, limits: Limits = DEFAULT_LIMITS) -> FileEntry:
        where = f"manifest file {index}"
        if not isinstance(obj, dict):
            raise MalformedError(f"{where}: not a JSON object")
        path = dsse.field(obj, "path", str, where)
        check_path(path, limits)
        where = f"manifest file {path!r}"
        sha256 = _hex(obj, "sha256", where)
        size = _file_size(obj, "size", where)
        encoding = dsse.field(obj, "encoding", str, where)
        if encoding not in ENCODINGS:
            raise MalformedError(f"{where}: encoding must be one of {', '.join(ENCODINGS)}")
        blob = _hex(obj, "blob", where)
        transfer_size = _file_size(obj, "transfer_size", where)
        if encoding == "plain" and (blob != sha256 or transfer_size != size):
            raise MalformedError(f"{where}: plain file must have blob == sha256 and "
                                 "transfer_size == size")
        return cls(path, sha256, size, encoding, blob, transfer_size)


def _count(obj: dict[str, Any], name: str, where: str) -> int:
    value: int = dsse.field(obj, name, int, where)
    if value < 0:
        raise MalformedError(f"{where}: {name!r} must be >= 0")
    return value


def _file_size(obj: dict[str, Any], name: str, where: str) -> int:
    # At most 20 digits, as the board's file list line holds (docs/manifest.md, "Limits").
    value = _count(obj, name, where)
    if value > MAX_FILE_SIZE:
        raise MalformedError(f"{where}: {name!r} must be <= 2**64 - 1")
    return value


def _hex(obj: dict[str, Any], name: str, where: str) -> str:
    value: str = dsse.field(obj, name, str, where)
    if not _HEX256.fullmatch(value):
        raise MalformedError(f"{where}: {name!r} must be 64 lowercase hex digits")
    return value


def _matching(obj: dict[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str:
    value: str = dsse.field(obj, name, str, "manifest")
    if not pattern.fullmatch(value):
        raise MalformedError(f"manifest: {name!r} {value[:40]!r} is not {what}")
    return value


@dataclass(frozen=True)
class Manifest:
    """A release: app, version, anti-rollback sequence, validity, boards and files."""

    app: str
    version: str
    sequence: int
    created: int
    expires: int
    boards: tuple[str, ...]
    min_micropython: str
    entry: str
    files: tuple[FileEntry, ...]

    def file(self, path: str) -> FileEntry:
        """The entry for `path`; raises KeyError when there is none."""
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def to_json(self) -> dict[str, Any]:
        return {
            "_type": "manifest", "app": self.app, "version": self.version,
            "sequence": self.sequence, "created": self.created, "expires": self.expires,
            "boards": list(self.boards), "min_micropython": self.min_micropython,
            "entry": self.entry, "files": [entry.to_json() for entry in self.files],
        }

    def to_payload(self) -> bytes:
        """Compact UTF-8 JSON: the bytes a release key signs."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_payload(cls, payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Manifest:
        """Parse and strictly validate a manifest payload; raises MalformedError.

        Unknown top-level fields are ignored (room for later versions); known ones must have
        the documented type and shape.
        """
        doc = dsse.loads_json(payload, "manifest")
        if not isinstance(doc, dict) or doc.get("_type") != "manifest":
            raise MalformedError("manifest: not a manifest document (_type must be 'manifest')")
        app = _matching(doc, "app", _NAME, "an app name ([A-Za-z0-9._-], 1..64)")
        version = _matching(doc, "version", _SEMVER, "a semantic version (MAJOR.MINOR.PATCH)")
        sequence = _count(doc, "sequence", "manifest")
        created = _count(doc, "created", "manifest")
        expires = _count(doc, "expires", "manifest")
        boards = dsse.field(doc, "boards", list, "manifest")
        if not boards or not all(isinstance(b, str) and b for b in boards):
            raise MalformedError("manifest: 'boards' must be a non-empty list of names")
        min_mp = _matching(doc, "min_micropython", _MICROPYTHON_VERSION,
                          f"a version like {MICROPYTHON_FLOOR}")
        entry = _matching(doc, "entry", _MODULE, "a module name")
        raw_files = dsse.field(doc, "files", list, "manifest")
        if len(raw_files) > limits.max_files:
            raise MalformedError(
                f"manifest: {len(raw_files)} files, more than the cap of {limits.max_files}"
            )
        files = tuple(FileEntry.from_json(obj, i, limits) for i, obj in enumerate(raw_files))
        check_path_set([item.path for item in files])
        return cls(app, version, sequence, created, expires, tuple(boards), min_mp, entry, files)
