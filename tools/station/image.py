"""The filesystem image method: a littlefs v2 image of a board's files, built with MicroPython's
own settings so the board mounts it as its `vfs` partition, where each image goes in the flash
(filesystem, and for the romfs client layout the ROMFS partition), and the merged factory image
(firmware + ROMFS + filesystem) a flashing jig writes in one go.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from littlefs import LittleFS

BLOCK_SIZE = 4096  # MicroPython formats flash partitions in 4 KiB erase blocks
LOOKAHEAD = 32  # MicroPython's vfs_lfs2 default lookahead size, bytes
# littlefs on-disk format 2.0, pinned: littlefs-python writes its own newest format unless told
# (2.1 today), and MicroPython 1.20 and 1.21 (littlefs 2.5) cannot mount 2.1 at all. 2.0 is
# read by every MicroPython with littlefs v2, the floor's (1.23, littlefs 2.8) included, which
# moves it to 2.1 at its first write (docs/provisioning.md, Write method image).
DISK_VERSION = 0x0002_0000


class ImageError(ValueError):
    """The files do not fit, or a path or partition is unusable; names what and where."""


@dataclass(frozen=True)
class PartitionGeometry:
    """Where the filesystem lives and how MicroPython's port formats it."""

    offset: int
    size: int
    prog_size: int = 32  # read/prog size: 32 on ESP32, 256 on RP2

    @property
    def block_count(self) -> int:
        return self.size // BLOCK_SIZE

    def check(self) -> None:
        if self.size <= 0 or self.size % BLOCK_SIZE or self.offset % BLOCK_SIZE:
            raise ImageError(
                f"filesystem partition at {self.offset:#x}, {self.size:#x} bytes: offset and size "
                f"must be positive multiples of {BLOCK_SIZE}"
            )


def build_littlefs_image(files: dict[str, bytes], geometry: PartitionGeometry) -> bytes:
    """A littlefs v2 image of exactly `geometry.size` bytes holding `files`.

    Paths are board paths ("ota_id/config.json", "/boot.py"); directories are created as needed.
    Raises ImageError when a path is unusable or the files do not fit the partition.
    """
    geometry.check()
    fs = LittleFS(
        block_size=BLOCK_SIZE,
        block_count=geometry.block_count,
        read_size=geometry.prog_size,
        prog_size=geometry.prog_size,
        lookahead_size=LOOKAHEAD,
        # MicroPython's littlefs caches one prog unit; the on-disk format does not depend on it.
        cache_size=geometry.prog_size,
        disk_version=DISK_VERSION,
    )
    _check_tree(files)
    for path, data in sorted(files.items()):
        parts = [p for p in path.split("/") if p]
        if len(parts) > 1:
            fs.makedirs("/".join(parts[:-1]), exist_ok=True)
        try:
            with fs.open("/".join(parts), "wb") as handle:
                handle.write(data)
        except Exception as err:  # littlefs raises LittleFSError(-28) when full
            raise ImageError(
                f"{path!r} ({len(data)} bytes) does not fit the {geometry.size:#x}-byte "
                f"filesystem partition: {err}"
            ) from err
    fs.unmount()
    image = bytes(fs.context.buffer)
    assert len(image) == geometry.size
    return image


def _check_tree(files: dict[str, bytes]) -> None:
    """Raise ImageError unless every path names a file under directories only: no empty, `.`
    or `..` part, and no file that another path needs as a directory (littlefs would refuse
    it half-way through the image)."""
    names = set()
    for path in files:
        parts = [p for p in path.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ImageError(f"unusable board path {path!r} for the filesystem image")
        names.add("/".join(parts))
    for name in names:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory in names:
                raise ImageError(f"board path {directory!r} is a file, but {name!r} needs it "
                                 f"as a directory")


@dataclass(frozen=True)
class FlashRegion:
    """Bytes to write at an offset of the flash, and what they are (for messages)."""

    what: str  # "firmware", "ROMFS image", "filesystem partition"
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def check_regions(regions: list[FlashRegion], flash_size: int = 0) -> list[FlashRegion]:
    """`regions` in flash order; raises ImageError naming the two that overlap, or the one
    that ends past `flash_size` (0: unknown, not checked)."""
    ordered = sorted(regions, key=lambda region: region.offset)
    for first, second in itertools.pairwise(ordered):
        if first.end > second.offset:
            raise ImageError(
                f"{first.what} ({len(first.data)} bytes at {first.offset:#x}) overlaps the "
                f"{second.what} at {second.offset:#x}"
            )
    if flash_size and ordered and ordered[-1].end > flash_size:
        last = ordered[-1]
        raise ImageError(f"{last.what} ({len(last.data)} bytes at {last.offset:#x}) ends past "
                         f"the {flash_size:#x}-byte flash")
    return ordered


def merge_factory_image(chip: str, firmware: bytes, firmware_offset: int, fs_image: bytes,
                        fs_offset: int, romfs: tuple[int, bytes] | None = None,
                        flash_size: int = 0) -> tuple[int, bytes]:
    """One image for a flashing jig: firmware at its offset, the filesystem at the partition
    offset and, when given, the ROMFS image (offset, bytes) at its partition's offset.

    Built by esptool's own `merge_bin` (which also normalises the firmware header); returns
    (offset to write it at, bytes). Raises ImageError when two parts overlap.
    """
    regions = [FlashRegion("firmware", firmware_offset, firmware),
               FlashRegion("filesystem partition", fs_offset, fs_image)]
    if romfs is not None:
        regions.append(FlashRegion("ROMFS image", *romfs))
    ordered = check_regions(regions, flash_size)
    from esptool.cmds import merge_bin  # esptool is slow to import; only this path needs it

    merged = merge_bin(
        [(region.offset, region.data) for region in ordered],
        chip=chip,
        output=None,
        target_offset=firmware_offset,
    )
    assert merged is not None
    return firmware_offset, bytes(merged)
