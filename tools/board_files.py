"""Everything that goes on a board's flash: bootloader, OTA client, config, key, trust, first app.

Two client layouts (`ClientLayout`): "files" puts the `ota` package on the filesystem
(`/ota/*.py` or `/ota/*.mpy`); "romfs" puts it, compiled to .mpy, in a ROMFS image for the
board's ROM partition (mounted at /rom, first on sys.path), from which MicroPython runs the
bytecode in place instead of copying it into the heap. The data files are on the filesystem in
both: what the board must never lose (config, key, trust root, server CA) in `/ota_id/`, which
no update writes; the boot state's two records in `/ota/` and `/ota_rec/`, one each; the first
app in `/app/a/` (docs/provisioning.md, Files on the board).

`board_files()` returns the filesystem's files as a {board path: bytes} map (the provisioning
station writes it through mpremote or into a littlefs image); `client_romfs()` returns the
ROM partition's image, which the romfs layout needs besides. `install_board()` writes both for a
virtual board: the files into its flash directory, the image to `rom_image_path(flash_dir)`.
The boot-state record format is the board's (bootloader_py/ota/records.py); it is reproduced
here so a freshly provisioned board boots its first app confirmed, with no OTA write needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec

from signing.errors import BundleError, MalformedError
from signing.manifest import check_path, check_path_set
from tools.micropython import PROJECT_ROOT
from tools.mpy_cache import cached_mpy
from tools.virtual_board.board import rom_image_path

BOOTLOADER_DIR = PROJECT_ROOT / "bootloader_py"
CLIENT_PACKAGE = "ota"
ROM_MOUNT = "/rom"  # where the "romfs" layout's partition is mounted (bootloader_py/boot.py)
# Paths on the board's flash; bootloader_py/ota/{config,auth,client,state,slots}.py agree.
# Written at provisioning only (and trust.json, ca.der at a root rotation): never by an update,
# so a FAT power cut that erases /ota's directory sector leaves them (docs/board.md).
IDENTITY_DIR = "/ota_id"
CONFIG_PATH = "/ota_id/config.json"
KEY_PATH = "/ota_id/device.key"
TRUST_PATH = "/ota_id/trust.json"
# The CA an https server's certificate must chain to (DER; bootloader_py/ota/tlsca.py).
CA_PATH = "/ota_id/ca.der"
# The boot state's two records, one per directory (bootloader_py/ota/state.py, records.py).
STATE_FILES = ("/ota/state0", "/ota_rec/state1")
# Where boards provisioned before /ota_id (2026-12-06) keep every file above: bootloader_py/
# ota/__init__.py, path(), reads them there while /ota_id/device.key is absent.
LEGACY_DIR = "/ota"
SECRET_PATHS = frozenset((CONFIG_PATH, KEY_PATH))
_MAX_RECORD = 1024  # records.py _MAX_RECORD

ClientLayout = Literal["files", "romfs"]
CLIENT_LAYOUTS: tuple[ClientLayout, ...] = ("files", "romfs")
# How much longer the trial watchdog must be than the longest thing the client does between two
# feeds, one Wi-Fi connect (wifi_timeout_s) or one request (timeout_s): room for the NTP sync,
# a signature, the verify and the file work around them on a slow board (docs/board.md).
TRIAL_WATCHDOG_MARGIN_S = 10
# The longest span a board's config may hold (poll interval, timeouts, confirm delay): 6 days.
# The board turns each into a time.ticks_add delta, which must stay below 2**29 ms on 32-bit
# ports (docs/board.md, Ticks); bootloader_py/ota/config.py and run.py hold the same bound.
MAX_SPAN_S = 518400
MAX_POLL_EVERY_MIN = MAX_SPAN_S // 60
_APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a manifest's `app` (manifest.md)


class BoardFilesError(ValueError):
    """The inputs cannot make a working board (bad key, bad app, compile failure)."""


@dataclass(frozen=True)
class BoardConfig:
    """What /ota/config.json holds (docs/board.md describes each key)."""

    device_id: str
    server: str
    board: str = "unix"
    channel: str = "stable"
    wifi_ssid: str = ""
    wifi_password: str = field(default="", repr=False)
    poll_at_boot: bool = True
    poll_every_min: int = 60
    trial_boots: int = 3
    auto_confirm: bool = True
    confirm_after_s: int = 10
    timeout_s: int = 20
    wifi_timeout_s: int = 15
    trial_watchdog_s: int = 0  # 0: off
    app: str = ""  # the app whose releases the board takes ("": the first one offered)

    def check_behaviour(self) -> None:
        """Raise BoardFilesError naming the key when the trial, confirm, timeout or poll
        settings cannot work (also what fleet.yaml's provisioning profiles are held to)."""
        for key in ("confirm_after_s", "timeout_s", "wifi_timeout_s"):
            if getattr(self, key) > MAX_SPAN_S:
                raise BoardFilesError(f"{key} must be at most {MAX_SPAN_S} s (6 days: the "
                                      f"board's tick counter, docs/board.md), not "
                                      f"{getattr(self, key)}")
        if not 0 <= self.poll_every_min <= MAX_POLL_EVERY_MIN:
            raise BoardFilesError(f"poll_every_min must be 0 (never) to {MAX_POLL_EVERY_MIN} "
                                  f"(6 days: the board's tick counter, docs/board.md), not "
                                  f"{self.poll_every_min}")
        if self.app and not _APP_NAME.fullmatch(self.app):
            raise BoardFilesError(f"app {self.app!r} is not an app name ([A-Za-z0-9._-], "
                                  f"1..64, starting with a letter or digit)")
        if self.trial_boots < 1:
            raise BoardFilesError("trial_boots must be at least 1")
        if self.confirm_after_s < 0:
            raise BoardFilesError("confirm_after_s must not be negative")
        if self.timeout_s < 1 or self.wifi_timeout_s < 1:
            raise BoardFilesError("timeout_s and wifi_timeout_s must be at least 1")
        least = max(self.timeout_s, self.wifi_timeout_s) + TRIAL_WATCHDOG_MARGIN_S
        if self.trial_watchdog_s != 0 and self.trial_watchdog_s < least:
            raise BoardFilesError(
                f"trial_watchdog_s must be 0 (off) or at least {least} s (the longer of "
                f"timeout_s and wifi_timeout_s plus {TRIAL_WATCHDOG_MARGIN_S} s), "
                f"not {self.trial_watchdog_s}")

    def to_json(self) -> bytes:
        self.check_behaviour()
        if not self.server.startswith(("http://", "https://")):
            raise BoardFilesError(f"server URL must be http:// or https://, not {self.server!r}")
        doc = {
            "device_id": self.device_id,
            "server": self.server.rstrip("/"),
            "board": self.board,
            "channel": self.channel,
            "wifi": {"ssid": self.wifi_ssid, "password": self.wifi_password},
            "poll": {"at_boot": self.poll_at_boot, "every_min": self.poll_every_min},
            "trial_boots": self.trial_boots,
            "auto_confirm": self.auto_confirm,
            "confirm_after_s": self.confirm_after_s,
            "timeout_s": self.timeout_s,
            "wifi_timeout_s": self.wifi_timeout_s,
        }
        if self.app:
            # The board takes releases of this app only (ota/client.py, bound_app); written
            # only when set: every key of config.json stays in the heap while the app runs.
            doc["app"] = self.app
        if self.trial_watchdog_s:
            # Written only when on: every key of config.json stays in the board's heap for as
            # long as its app runs, and an absent one is off there too.
            doc["trial_watchdog_s"] = self.trial_watchdog_s
        return json.dumps(doc, indent=1).encode()


@dataclass(frozen=True)
class InitialApp:
    """The app installed into slot a at provisioning: its identity and its files."""

    app: str
    version: str
    sequence: int
    entry: str
    files: Mapping[str, bytes]

    @classmethod
    def from_dir(cls, root: Path, app: str, version: str, sequence: int,
                 entry: str) -> InitialApp:
        """Every regular file under `root` (skipping __pycache__), keyed by relative path."""
        files = {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }
        if not files:
            raise BoardFilesError(f"app directory {root} holds no files")
        return cls(app, version, sequence, entry, files)


def device_key_bytes(key: ec.EllipticCurvePrivateKey | bytes) -> bytes:
    """The 32-byte big-endian private scalar the board keeps in /ota/device.key."""
    if isinstance(key, bytes):
        if len(key) != 32:
            raise BoardFilesError("a device key must be a 32-byte P-256 private scalar")
        return key
    if not isinstance(key.curve, ec.SECP256R1):
        raise BoardFilesError("a device key must be on P-256")
    return key.private_numbers().private_value.to_bytes(32, "big")


def record_bytes(rec: dict[str, Any]) -> bytes:
    """One state record as records.py writes it: json, newline, hex sha256, newline."""
    body = json.dumps(rec, separators=(",", ":")).encode()
    out = body + b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n"
    if len(out) > _MAX_RECORD:
        raise BoardFilesError("state record too large")
    return out


def _initial_state(app: InitialApp | None, trial_boots: int) -> dict[str, bytes]:
    slot_a = None
    if app is not None:
        slot_a = {"app": app.app, "version": app.version, "sequence": app.sequence,
                  "entry": app.entry}
    rec = {"seq": 1, "active": "a", "ok": 1, "trial": 0, "tries": trial_boots,
           "slots": {"a": slot_a, "b": None}, "reject": 0, "note": None}
    # Both records: a board back for re-provisioning keeps its files, and whichever record of
    # its earlier life is the newer (any sequence) would otherwise win over this one.
    record = record_bytes(rec)
    return {STATE_FILES[0]: record, STATE_FILES[1]: record}


def slot_list_line(path: str, data: bytes) -> str:
    """One line of a slot's file list as the board reads it (bootloader_py/ota/slots.py):
    `<sha256> <size> <encoding> <blob> <transfer_size> <path>`; a provisioned file is plain."""
    sha = hashlib.sha256(data).hexdigest()
    return f"{sha} {len(data)} plain {sha} {len(data)} {path}\n"


def _app_files(app: InitialApp) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    listing = []
    for path, data in sorted(app.files.items()):
        if path.startswith("/") or ".." in path.split("/") or "" in path.split("/"):
            raise BoardFilesError(f"app file path {path!r} escapes the slot")
        try:  # the manifest's path rules: the board reads this list as it reads its own
            check_path(path)
        except MalformedError as err:
            raise BoardFilesError(f"app {err}") from None
        out["/app/a/" + path] = data
        listing.append(slot_list_line(path, data))
    try:
        check_path_set(sorted(app.files), where="app")
    except MalformedError as err:
        raise BoardFilesError(str(err)) from None
    out["/ota/slot_a.lst"] = "".join(listing).encode()
    return out


def _compile_client_module(source: Path, directory: str) -> bytes:
    """`source` as .mpy whose file name (tracebacks, `__file__`) is the path the board imports
    it from, `directory` + "/<module>.mpy": MicroPython interns that path as a qstr when it
    imports the module, so the name costs no second qstr (one per module, ~18 in an update:
    docs/board.md, Memory budget)."""
    try:
        return cached_mpy(source, f"{directory}/{source.stem}.mpy")
    except BundleError as err:
        raise BoardFilesError(str(err)) from None


def _check_layout(client: str) -> None:
    if client not in CLIENT_LAYOUTS:
        raise BoardFilesError(f"client layout {client!r} is not one of "
                              f"{', '.join(CLIENT_LAYOUTS)}")


def _client_sources() -> list[Path]:
    return sorted((BOOTLOADER_DIR / CLIENT_PACKAGE).glob("*.py"))


def client_files(mpy: bool = False, client: ClientLayout = "files") -> dict[str, bytes]:
    """boot.py and main.py (always source) and, in the "files" layout, the ota package (.mpy
    when `mpy`). The "romfs" layout has no client code on the filesystem: see client_romfs().

    Raises BoardFilesError for an unknown layout or a module that does not compile.
    """
    _check_layout(client)
    out = {
        "/boot.py": (BOOTLOADER_DIR / "boot.py").read_bytes(),
        "/main.py": (BOOTLOADER_DIR / "main.py").read_bytes(),
    }
    if client == "romfs":
        return out
    for source in _client_sources():
        name = f"/{CLIENT_PACKAGE}/{source.name}"
        if mpy:
            out[name[:-3] + ".mpy"] = _compile_client_module(source, CLIENT_PACKAGE)
        else:
            out[name] = source.read_bytes()
    return out


def client_romfs() -> bytes:
    """The ROM partition image of the "romfs" layout: a ROMFS holding `ota/` with every client
    module as .mpy (source would be compiled into the heap, which is what ROMFS avoids).

    Built with mpremote's own writer (what `mpremote romfs build` uses); MicroPython mounts it
    with `vfs.VfsRom`. Holds no secret. Raises BoardFilesError when a module does not compile.
    """
    from mpremote.romfs import VfsRomWriter

    writer = VfsRomWriter()
    writer.opendir(CLIENT_PACKAGE)
    for source in _client_sources():
        writer.mkfile(source.stem + ".mpy",
                      _compile_client_module(source, f"{ROM_MOUNT}/{CLIENT_PACKAGE}"))
    writer.closedir()
    return bytes(writer.finalise())


def board_files(config: BoardConfig, device_key: ec.EllipticCurvePrivateKey | bytes,
                trust_json: bytes, mpy: bool = False,
                app: InitialApp | None = None,
                client: ClientLayout = "files",
                server_ca: bytes | None = None) -> dict[str, bytes]:
    """Every file of a freshly provisioned board's filesystem, keyed by its absolute path on
    the board. With `client="romfs"` that excludes the client code, which goes in the ROM
    partition (client_romfs()); `mpy` only matters to the "files" layout. `server_ca` is the
    DER of the CA the server's certificate chains to (tools.tls_ca.ca_der): required for an
    https server, whose certificate the board verifies against it and nothing else.

    Raises BoardFilesError for bad input (key, trust root, config, app, layout, CA).
    """
    if config.server.startswith("https://") and not server_ca:
        raise BoardFilesError(
            f"server {config.server} is https: the board needs the CA that signed the "
            "server's certificate (fleet.yaml server.ca or a profile's ca:; `ota tls init` "
            "makes a private one), and never connects without verifying it")
    try:
        json.loads(trust_json)
    except ValueError as err:
        raise BoardFilesError(f"trust root is not JSON: {err}") from None
    if app is not None:
        if config.app and config.app != app.app:
            raise BoardFilesError(f"the first app is {app.app!r} but the config binds the "
                                  f"board to app {config.app!r}")
        config = replace(config, app=app.app)  # the binding survives a lost state
    files = client_files(mpy, client)
    files[CONFIG_PATH] = config.to_json()
    files[KEY_PATH] = device_key_bytes(device_key)
    files[TRUST_PATH] = trust_json
    if server_ca:
        files[CA_PATH] = server_ca
    files.update(_initial_state(app, config.trial_boots))
    if app is not None:
        files.update(_app_files(app))
    return files


def _write_file(target: Path, data: bytes, mode: int) -> None:
    # Created with its final mode: a key-bearing file is never readable by others, not even
    # for the moment between creating and chmod-ing it; fchmod fixes a file that existed.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, mode)
        out.write(data)


def write_files(flash_dir: Path, files: Mapping[str, bytes]) -> None:
    """Write a {board path: bytes} map under a directory that stands for the board's root.

    The key and the config (Wi-Fi password) are mode 0600, everything else 0644.
    """
    root = Path(flash_dir)
    for path, data in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_file(target, data, 0o600 if path in SECRET_PATHS else 0o644)


def write_rom_image(flash_dir: Path, image: bytes) -> Path:
    """Write a virtual board's ROM partition (`rom_image_path(flash_dir)`, mode 0644: the
    client's code, no secret) through a temporary file and a rename, so a board booting
    meanwhile maps either the old image or the new one. Returns the image's path."""
    target = rom_image_path(flash_dir)
    partial = target.with_name(target.name + ".partial")
    _write_file(partial, image, 0o644)
    os.replace(partial, target)
    return target


def install_board(flash_dir: Path, config: BoardConfig,
                  device_key: ec.EllipticCurvePrivateKey | bytes, trust_json: bytes,
                  mpy: bool = False, app: InitialApp | None = None,
                  client: ClientLayout = "files",
                  server_ca: bytes | None = None) -> dict[str, bytes]:
    """Provision a virtual board: its filesystem's files into `flash_dir` and, for the "romfs"
    layout, its ROM image to `rom_image_path(flash_dir)`; returns the filesystem files written.

    With the "files" layout an existing ROM image there is removed (the partition erased): its
    /rom/ota would come first on sys.path and shadow the client just written. Raises
    BoardFilesError for bad input, before anything is written.
    """
    files = board_files(config, device_key, trust_json, mpy=mpy, app=app, client=client,
                        server_ca=server_ca)
    image = client_romfs() if client == "romfs" else None
    write_files(flash_dir, files)
    if image is not None:
        write_rom_image(flash_dir, image)
    else:
        rom_image_path(flash_dir).unlink(missing_ok=True)
    return files


def code_size(mpy: bool) -> dict[str, int]:
    """Bytes of boot.py, main.py and the client package as they go on a board's filesystem
    ("files" layout, .mpy when `mpy`), and of the "romfs" layout's ROM image ("romfs")."""
    files = client_files(mpy)
    client = sum(len(v) for k, v in files.items() if k.startswith(f"/{CLIENT_PACKAGE}/"))
    return {"boot.py": len(files["/boot.py"]), "main.py": len(files["/main.py"]),
            "ota": client, "romfs": len(client_romfs())}


# Reading a board's flash directory (tests, the demo's fleet view) --------------------------


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return parse_record(data)


def parse_record(data: bytes) -> dict[str, Any] | None:
    """One state record's dict, as records.py reads it, or None when it does not hold."""
    data = data[:_MAX_RECORD]
    body, nl, rest = data.partition(b"\n")
    if not nl or rest[:64] != hashlib.sha256(body).hexdigest().encode():
        return None
    try:
        rec = json.loads(body)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("seq"), int) else None


def read_state(flash_dir: Path) -> dict[str, Any] | None:
    """The boot state a board would use (newest valid of the two records), or None."""
    found = [r for r in (_read_record(Path(flash_dir) / board_path(flash_dir, p).lstrip("/"))
                         for p in STATE_FILES) if r]
    return max(found, key=lambda r: r["seq"]) if found else None


def legacy_path(path: str) -> str:
    """Where a board provisioned before /ota_id keeps the file the current layout puts at
    `path` (one of the paths above): the same name in /ota."""
    return LEGACY_DIR + "/" + path.rsplit("/", 1)[1]


def board_path(flash_dir: Path, path: str) -> str:
    """Where the board with the host directory `flash_dir` keeps `path` (a path above), as its
    client decides (bootloader_py/ota/__init__.py, path): the current layout when it holds
    /ota_id/device.key, else the legacy one."""
    if (Path(flash_dir) / KEY_PATH.lstrip("/")).is_file():
        return path
    return legacy_path(path)


def slot_files(flash_dir: Path, slot: str) -> dict[str, str]:
    """{relative path: sha256 hex} of every file in a slot of a board's flash directory."""
    root = Path(flash_dir) / "app" / slot
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def app_hashes(files: Mapping[str, bytes]) -> dict[str, str]:
    """{path: sha256 hex} of an app's files, to compare with slot_files()."""
    return {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
