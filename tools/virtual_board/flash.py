"""A virtual board's flash as boards have it: a filesystem (littlefs v2 or FAT) on a flash block
device, kept in an image file beside the board's host directory.

The board mounts the image (standins/_vb_blockdev.py, MicroPython's own vfs.VfsLfs2 and
vfs.VfsFat); the host directory is a mirror of the image's files for the host's side (tests,
provisioning, tools/board_files.py): before a run the host's changes to the directory go into the
image (`sync_into_image`), after it the image's files come back out (`sync_from_image`). Both go
through MicroPython's filesystem code (standins/_vb_image.py), the way mpremote reaches a board.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tools.station.image import BLOCK_SIZE, PartitionGeometry
from tools.virtual_board import power

FlashKind = Literal["dir", "lfs2", "fat"]
FLASH_KINDS: tuple[FlashKind, ...] = ("dir", "lfs2", "fat")
IMAGE_SUFFIX = ".flash"
_STATE_SUFFIX = ".flash.json"
_ERASED = b"\xff"
# The `vfs` partition of the esp32 board in fleet.yaml (ports/esp32/partitions-4MiB.csv: 2 MiB at
# 0x200000) with VfsLfs2's default prog size, 32: the geometry of the boards the fleet runs.
ESP32_VFS = PartitionGeometry(offset=0x200000, size=0x200000, prog_size=32)
_JOB_TIMEOUT_S = 120.0
# The flash a VirtualBoard gets when its caller does not choose: $MPOTA_VB_FLASH, else littlefs.
_DEFAULT_ENV = "MPOTA_VB_FLASH"


class FlashImageError(RuntimeError):
    """The host could not read or write a board's flash image; says which image and why."""


@dataclass(frozen=True)
class Torn:
    """A torn cut: the cut operation is left half done, its first `written` bytes on the flash
    and the rest of a program as erased flash ("ff") or as the bytes were before ("old")."""

    written: int
    rest: Literal["ff", "old"] = "ff"

    def __post_init__(self) -> None:
        if self.written < 1:
            raise ValueError(f"a torn write writes at least 1 byte, not {self.written}")
        if self.rest not in ("ff", "old"):
            raise ValueError(f"the rest of a torn write is 'ff' or 'old', not {self.rest!r}")


def default_flash_kind() -> FlashKind:
    """The flash of a board whose caller does not choose: $MPOTA_VB_FLASH or "lfs2"."""
    kind = os.environ.get(_DEFAULT_ENV, "lfs2")
    if kind not in FLASH_KINDS:
        raise ValueError(f"{_DEFAULT_ENV} is {kind!r}: use one of {', '.join(FLASH_KINDS)}")
    return kind  # type: ignore[return-value]


def flash_image_path(flash_dir: Path | str) -> Path:
    """Where the flash image of the board with host directory `flash_dir` lives:
    `<flash_dir>.flash`, a sibling file."""
    resolved = Path(flash_dir).resolve()
    return resolved.with_name(resolved.name + IMAGE_SUFFIX)


def _state_path(flash_dir: Path) -> Path:
    return flash_dir.with_name(flash_dir.name + _STATE_SUFFIX)


@dataclass(frozen=True)
class BlockFlash:
    """A filesystem of `kind` on a block device of `geometry`, the image beside `flash_dir`."""

    flash_dir: Path
    kind: Literal["lfs2", "fat"]
    geometry: PartitionGeometry
    micropython: str
    standins: Path

    @property
    def image(self) -> Path:
        return flash_image_path(self.flash_dir)

    def environment(self) -> dict[str, str]:
        """What the board's harness needs to mount the image."""
        return {"VB_IMAGE": str(self.image), "VB_FS": self.kind,
                "VB_BLOCK_SIZE": str(BLOCK_SIZE),
                "VB_BLOCK_COUNT": str(self.geometry.block_count),
                "VB_PROG_SIZE": str(self.geometry.prog_size)}

    def sync_into_image(self) -> None:
        """Make the image hold what the host directory holds: a new image (formatted, then
        every file copied in) when there is none; the host's changes since the last
        `sync_from_image` otherwise. An image with no record of a sync (one the station built)
        is the truth: the directory is filled from it. Raises FlashImageError."""
        image = self.image
        if not image.exists():
            with open(image, "wb") as handle:  # erased flash
                handle.truncate(self.geometry.size)
                handle.seek(0)
                handle.write(_ERASED * self.geometry.size)
            self._job("format")
            self._push(_plan({}, [], self.flash_dir))
            self._record()
            return
        size = image.stat().st_size
        if size != self.geometry.size:
            raise FlashImageError(f"flash image {image} is {size} bytes; the board's partition "
                                  f"is {self.geometry.size}")
        state = _state_path(self.flash_dir)
        if not state.exists():
            self.sync_from_image()
            return
        recorded = json.loads(state.read_text())
        plan = _plan(recorded["files"], recorded["dirs"], self.flash_dir)
        if plan:
            self._push(plan)
            self._record()

    def sync_from_image(self) -> None:
        """Make the host directory hold exactly the image's files (unchanged files are not
        rewritten and keep their modes). Raises FlashImageError."""
        self._job("pull")
        self._record()

    def _push(self, plan: list[str]) -> None:
        if not plan:
            return
        with tempfile.NamedTemporaryFile("w", prefix="vb-plan-", suffix=".txt") as handle:
            handle.write("".join(line + "\n" for line in plan))
            handle.flush()
            self._job("push", VB_IMAGE_PLAN=handle.name)

    def _record(self) -> None:
        files, dirs = _scan(self.flash_dir)
        _state_path(self.flash_dir).write_text(json.dumps({"files": files, "dirs": dirs}))

    def _job(self, job: str, **extra: str) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MICROPYPATH": str(self.standins),
               "VB_FLASH": str(self.flash_dir), "VB_IMAGE_JOB": job, **self.environment(),
               **extra}
        for inherited in ("LD_LIBRARY_PATH", "LANG", "TMPDIR"):  # as a board process gets them
            if inherited in os.environ:
                env[inherited] = os.environ[inherited]
        done = subprocess.run([self.micropython, "-c", "import _vb_image"], env=env,
                              capture_output=True, text=True, timeout=_JOB_TIMEOUT_S,
                              check=False, umask=power.FLASH_UMASK)
        if done.returncode != 0:
            raise FlashImageError(f"{job} of flash image {self.image} failed: "
                                  f"{(done.stdout + done.stderr).strip()[-2000:]}")


def _scan(root: Path) -> tuple[dict[str, str], list[str]]:
    """(file path -> sha256, directory paths) under `root`, paths relative and '/'-separated."""
    files: dict[str, str] = {}
    dirs: list[str] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            dirs.append(rel)
        elif path.is_file():
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files, dirs


def _plan(files: dict[str, str], dirs: list[str], root: Path) -> list[str]:
    """The push plan that turns the recorded (`files`, `dirs`) into what `root` holds now:
    removals first, deepest first, then new directories, shallowest first, then the files."""
    now_files, now_dirs = _scan(root)
    plan = [f"R {p}" for p in sorted(set(files) - set(now_files))]
    plan += [f"X {d}" for d in sorted(set(dirs) - set(now_dirs), key=len, reverse=True)]
    plan += [f"M {d}" for d in sorted(set(now_dirs) - set(dirs), key=len)]
    plan += [f"W {p}" for p, digest in now_files.items() if files.get(p) != digest]
    for line in plan:
        if "\n" in line:
            raise FlashImageError(f"board path {line[2:]!r} has a newline; the flash image "
                                  f"cannot hold it")
    return plan
