"""Stage a signed release on a board over its REPL, for the board to verify and install at its
next boot (docs/board.md, "Offline install"; the board's side is bootloader_py/ota/offline.py).

    release = load_release(BUNDLE_DIR)
    with MpremoteBoard(port) as link:
        board = read_board(link)
        plan = plan_install(release, board)
        stage(link, plan, release, now=int(time.time()), progress=...)
        link.soft_reset()

The board's staging area, /ota/staged/: the blobs its active slot lacks, each written as
`<blob>.t` and renamed to `<blob>` once the board hashed it to its name; `now`, the host's time
for the expiry check; and `manifest.dsse`, the signed envelope, renamed into place last. The
envelope's presence is the commit: a copy cut short leaves no envelope, so the old app runs, and
the next install keeps every finished blob and appends to the part it was writing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from signing.bundle import BLOB_DIR, ENVELOPE_NAME, MANIFEST_NAME, load_bundle
from signing.dsse import parse_envelope
from signing.errors import BundleError, TrustError
from signing.manifest import MANIFEST_PAYLOAD_TYPE, Manifest
from tools.board_files import KEY_PATH, LEGACY_DIR, STATE_FILES, TRUST_PATH, parse_record

STAGED = "/ota/staged"
ENVELOPE = STAGED + "/manifest.dsse"
NOW = STAGED + "/now"
PART_SUFFIX = ".t"  # a blob being written; the board never reads one
# Where a client that installs staged releases has its offline module (either client layout:
# docs/board.md, Filesystem).
OFFLINE_MODULES = ("/ota/offline.mpy", "/ota/offline.py", "/rom/ota/offline.mpy")
_CHUNK = 2048  # file bytes per statement: the board decodes 2 KB at a time
# File bytes per exec (one round trip each): ~5.5 KB of base64 the board compiles at once, far
# below the free heap of an ESP32 or RP2 board at its REPL.
_EXEC_BYTES = 4096
_HASH_BUFFER = 512
_LIST_LINE_FIELDS = 6  # <sha256> <size> <encoding> <blob> <transfer_size> <path>

Progress = Callable[[int, int], None]

# Runs on the board: what the host needs to plan a copy, as one JSON line. The state records
# and the trust file are only read here (their sizes are capped by the board's own code); no
# secret (config.json, device.key) is read.
_SURVEY = """
import os, json
def _f(p):
    try:
        with open(p) as f:
            return f.read(1100)
    except OSError:
        return None
def _d(p):
    try:
        return [[e[0], os.stat(p + '/' + e[0])[6]] for e in os.ilistdir(p)]
    except OSError:
        return None
def _e(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False
_new = _e(%(key)r)
def _w(p):
    return p if _new else %(legacy)r + p[p.rfind('/'):]
print(json.dumps({'s0': _f(_w(%(s0)r)), 's1': _f(_w(%(s1)r)),
                  'trust': _e(_w(%(trust)r)), 'staged': _d(%(staged)r),
                  'offline': any(_e(p) for p in %(offline)r)}))
"""
# Runs on the board: a slot's file list, streamed a line at a time (never whole in its heap).
_LIST = """
try:
    with open(%r) as f:
        for _l in f:
            print(_l, end='')
except OSError:
    pass
"""
# Runs on the board: hash each finished part through one buffer; rename it to its final name
# when it matches, remove it (and clear _ok, which the envelope's rename waits on) when it does
# not; one JSON line each ({"n": final, "h": hex}).
_SEAL = """
import os, hashlib, binascii, json
_b = memoryview(bytearray(%d))
for _p, _n, _w in %r:
    _h = hashlib.sha256()
    with open(_p, 'rb') as _f:
        while True:
            _k = _f.readinto(_b)
            if not _k:
                break
            _h.update(_b[:_k])
    _x = binascii.hexlify(_h.digest()).decode()
    if _x == _w:
        try:
            os.remove(_n)
        except OSError:
            pass
        os.rename(_p, _n)
    else:
        os.remove(_p)
        _ok = False
    print(json.dumps({'n': _n, 'h': _x}))
"""


class InstallError(RuntimeError):
    """The release cannot be staged on this board; says what was wrong and where."""


class Link(Protocol):
    """A board's raw REPL (tools/station/writer_mpremote.py MpremoteBoard)."""

    def exec(self, code: str) -> bytes: ...


@dataclass(frozen=True)
class Release:
    """A signed release: its manifest (the envelope's payload), envelope and blob sources."""

    manifest: Manifest
    envelope: bytes
    blobs: Mapping[str, Path]  # blob id -> the file holding its bytes

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {"app": m.app, "version": m.version, "sequence": m.sequence,
                "expires": m.expires, "files": len(m.files)}


@dataclass(frozen=True)
class BoardView:
    """What the host read of a board: its boot state and what its staging area holds."""

    state: dict[str, Any]
    active_shas: frozenset[str]  # SHA-256 of every file the active slot's list names
    staged: dict[str, int]  # file name in /ota/staged -> size


@dataclass
class Plan:
    """What an install copies: blobs whole or from an offset; what it removes first."""

    # (blob, offset, size): bytes offset.. go to <blob>.t, which the board then seals
    copy: list[tuple[str, int, int]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # blobs already staged in full
    from_slot: list[str] = field(default_factory=list)  # files the board copies itself
    remove: list[str] = field(default_factory=list)  # staged names no longer wanted

    @property
    def bytes_to_copy(self) -> int:
        return sum(size - offset for _, offset, size in self.copy)

    def describe(self) -> dict[str, Any]:
        return {"copy": [{"blob": b, "from": o, "bytes": s - o} for b, o, s in self.copy],
                "kept": list(self.kept), "from_slot": list(self.from_slot),
                "remove": list(self.remove), "bytes": self.bytes_to_copy}


def load_release(bundle_dir: Path) -> Release:
    """A built and signed bundle directory (`ota publish --out`, signing/bundle.py) as a
    Release. Every blob is checked against its SHA-256 here, so a damaged bundle never reaches
    a board. Raises InstallError naming the missing or wrong file."""
    if not bundle_dir.is_dir():
        raise InstallError(f"{bundle_dir}: not a bundle directory")
    try:
        bundle = load_bundle(bundle_dir)
    except BundleError as err:
        raise InstallError(str(err)) from err
    try:
        envelope = bundle.envelope_path.read_bytes()
    except OSError as err:
        raise InstallError(f"{bundle.envelope_path}: cannot read ({err.strerror}); the bundle "
                           "must be signed (ota publish, or sign_bundle)") from err
    try:
        payload = parse_envelope(envelope, MANIFEST_PAYLOAD_TYPE).payload
    except TrustError as err:
        raise InstallError(f"{bundle.envelope_path}: {type(err).__name__}: {err}") from err
    if payload != bundle.manifest_path.read_bytes():
        raise InstallError(f"{bundle.envelope_path} signs another manifest than "
                           f"{bundle.manifest_path}")
    blobs = {e.blob: bundle.blob_path(e) for e in bundle.manifest.files}
    return Release(bundle.manifest, envelope, blobs)


def fetch_release(api: Any, app: str, version: str, dest: Path) -> Path:
    """Download the registered release `app` `version` from the server (tools/api_client.py,
    a publisher token) into `dest` as a bundle directory (signing/bundle.py's layout); returns
    `dest`, for load_release, which checks every blob against its hash as for any bundle.

    Raises InstallError for an envelope that is not a manifest envelope; ApiClientError for
    what the server refused.
    """
    envelope = api.release_envelope(app, version)
    try:
        payload = parse_envelope(envelope, MANIFEST_PAYLOAD_TYPE).payload
        manifest = Manifest.from_payload(payload)
    except TrustError as err:
        raise InstallError(f"the server's envelope of {app} {version}: "
                           f"{type(err).__name__}: {err}") from err
    (dest / BLOB_DIR).mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST_NAME).write_bytes(payload)
    (dest / ENVELOPE_NAME).write_bytes(envelope)
    for blob in sorted({entry.blob for entry in manifest.files}):
        (dest / BLOB_DIR / blob).write_bytes(api.release_blob(app, version, blob))
    return dest


def read_board(link: Link) -> BoardView:
    """The board's boot state, its active slot's file hashes and its staging area.

    Raises InstallError when the board holds no mpota client (no trust root, no boot state)
    or one without the offline module.
    """
    # Where the board keeps its files: the current layout, or the one of boards provisioned
    # before /ota_id (tools/board_files.py, board_path), as its client decides.
    survey = _last_json(link.exec(_SURVEY % {"s0": STATE_FILES[0], "s1": STATE_FILES[1],
                                             "trust": TRUST_PATH, "key": KEY_PATH,
                                             "legacy": LEGACY_DIR, "staged": STAGED,
                                             "offline": OFFLINE_MODULES}),
                        "the board's survey")
    if not survey.get("trust"):
        raise InstallError(f"the board has no {TRUST_PATH} (nor {LEGACY_DIR}/trust.json): "
                           "provision it first (ota provision)")
    if not survey.get("offline"):
        raise InstallError("the board's OTA client predates offline installs (it has no "
                           "ota/offline module, so it would never look at a staged release): "
                           "provision it again with this version of mpota")
    records = [parse_record(text.encode()) for text in (survey.get("s0"), survey.get("s1"))
               if isinstance(text, str)]
    found = [r for r in records if r is not None]
    if not found:
        raise InstallError(f"the board has no valid boot state ({', '.join(STATE_FILES)})")
    state = max(found, key=lambda r: r["seq"])
    active = state.get("active")
    if active not in ("a", "b"):
        raise InstallError(f"the board's boot state names slot {active!r}")
    listing = link.exec(_LIST % f"/ota/slot_{active}.lst").decode("utf-8", "replace")
    shas = frozenset(line.split(" ", 1)[0] for line in listing.splitlines()
                     if len(line.split(" ", _LIST_LINE_FIELDS - 1)) == _LIST_LINE_FIELDS)
    staged = {str(name): int(size) for name, size in survey.get("staged") or []}
    return BoardView(state, shas, staged)


def plan_install(release: Release, board: BoardView) -> Plan:
    """What to copy: the blob of every file whose content the active slot lacks, minus what
    the staging area already holds in full (a part resumes from its size)."""
    plan = Plan()
    wanted: dict[str, int] = {}
    for entry in release.manifest.files:
        if entry.sha256 in board.active_shas:
            plan.from_slot.append(entry.path)
        else:
            wanted[entry.blob] = entry.transfer_size
    for blob, size in sorted(wanted.items()):
        if board.staged.get(blob) == size:
            plan.kept.append(blob)
            continue
        # a part resumes from its size; a whole one (the copy stopped before the board sealed
        # it) only needs its seal, which removes it if it is wrong, for the next install
        part = board.staged.get(blob + PART_SUFFIX, 0)
        plan.copy.append((blob, part if 0 < part <= size else 0, size))
    keep = set(plan.kept) | {b + PART_SUFFIX for b, o, _ in plan.copy if o}
    plan.remove = sorted(name for name in board.staged if name not in keep)
    if "manifest.dsse" in plan.remove:  # uncommit first: a cut then leaves no release
        plan.remove.remove("manifest.dsse")
        plan.remove.insert(0, "manifest.dsse")
    return plan


def stage(link: Link, plan: Plan, release: Release, now: int,
          progress: Progress | None = None) -> None:
    """Carry out `plan`: remove what goes, append the missing blob bytes, have the board
    check and seal each blob, then write the time and the envelope, renamed into place last
    and only when every blob was sealed. Raises InstallError naming what failed; the board's
    old app is untouched."""
    batch = _Batch(link, plan.bytes_to_copy, progress)
    # the removals in plan order (the envelope first), then the directory if it is new
    batch.add(f"import os\nfor _n in {plan.remove!r}:\n    os.remove({STAGED!r} + '/' + _n)\n"
              f"try:\n    os.mkdir({STAGED!r})\nexcept OSError:\n    pass\n_ok = True")
    for blob, offset, size in plan.copy:
        data = release.blobs[blob].read_bytes()
        if len(data) != size:  # the bundle changed under us since it was loaded
            raise InstallError(f"{release.blobs[blob]}: {len(data)} bytes, expected {size}")
        batch.write(f"{STAGED}/{blob}{PART_SUFFIX}", data, offset, counted=True)
    blobs = [(f"{STAGED}/{b}{PART_SUFFIX}", f"{STAGED}/{b}", b) for b, _, _ in plan.copy]
    if blobs:
        batch.add(_SEAL % (_HASH_BUFFER, blobs))
    batch.write(NOW, str(int(now)).encode())
    batch.write(ENVELOPE + PART_SUFFIX, release.envelope)
    envelope = (ENVELOPE + PART_SUFFIX, ENVELOPE, hashlib.sha256(release.envelope).hexdigest())
    batch.add("if _ok:\n" + textwrap.indent(_SEAL % (_HASH_BUFFER, [envelope]), "    "))
    answers = {line.get("n"): line.get("h") for line in _json_lines(batch.flush())}
    for _, final, expected in [*blobs, envelope]:
        if answers.get(final) != expected:
            raise InstallError(f"{final} did not arrive intact on the board (it has "
                               f"{str(answers.get(final))[:16]}); run the install again")


class _Batch:
    """Statements for the board, sent as few execs as the per-exec size allows (every exec is
    a round trip), with the progress of the blob bytes they carry."""

    def __init__(self, link: Link, total: int, progress: Progress | None) -> None:
        self._link = link
        self._lines: list[str] = []
        self._size = 0  # file bytes in the statements waiting
        self._counted = 0  # of which blob bytes, for the progress
        self._done = 0
        self._total = total
        self._progress = progress
        self._output = b""

    def add(self, code: str) -> None:
        self._lines.append(code)

    def write(self, path: str, data: bytes, offset: int = 0, counted: bool = False) -> None:
        """Statements writing data[offset:] to `path` (appending when offset > 0); nothing when
        offset is past the end (a whole part: only its seal is left)."""
        for at in range(offset, max(len(data), 1), _CHUNK):  # an empty file is still written
            piece = data[at:at + _CHUNK]
            if self._size + len(piece) > _EXEC_BYTES:
                self.flush()
            mode = "ab" if at else "wb"  # a part resumes where the last copy stopped
            self._lines.append(f"with open({path!r}, {mode!r}) as _f:\n"
                               f"    _f.write(_a({base64.b64encode(piece).decode()!r}))")
            self._size += len(piece)
            if counted:
                self._counted += len(piece)

    def flush(self) -> bytes:
        """Run what is waiting as one exec; returns the output of every exec so far."""
        if self._lines:
            code = "from binascii import a2b_base64 as _a\n" + "\n".join(self._lines)
            self._output += self._link.exec(code)
            self._lines, self._size = [], 0
            if self._counted:
                self._done += self._counted
                self._counted = 0
                if self._progress is not None:
                    self._progress(self._done, self._total)
        return self._output


def _json_lines(output: bytes) -> list[dict[str, Any]]:
    out = []
    for line in output.decode("utf-8", "replace").splitlines():
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
    return out


def _last_json(output: bytes, what: str) -> dict[str, Any]:
    lines = _json_lines(output)
    if not lines:
        raise InstallError(f"{what} gave no answer: {output[-200:]!r}")
    return lines[-1]
