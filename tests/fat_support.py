"""A FAT image as the virtual board's block flash holds it (FAT12/16, 4096-byte sectors): where a
directory's sector is, and what a power cut between a sector's erase and its program leaves
there (docs/board.md, Flash and power cuts)."""

from __future__ import annotations

from pathlib import Path

SECTOR = 4096


def _le(data: bytes) -> int:
    return int.from_bytes(data, "little")


def dir_sector(image: Path, path: str) -> int:
    """The byte offset, in a FAT12/16 image, of the first sector of the directory `path`
    (short names only, as the client's directories are), found through the boot sector, the
    root directory and each directory's entries."""
    data = image.read_bytes()
    per_sector, per_cluster = _le(data[11:13]), data[13]
    root = (_le(data[14:16]) + data[16] * _le(data[22:24])) * per_sector
    root_size = _le(data[17:19]) * 32
    first_data = root + -(-root_size // per_sector) * per_sector
    at, size = root, root_size
    for name in path.strip("/").split("/"):
        wanted = name.upper().encode().ljust(11)
        for entry in range(at, at + size, 32):
            raw = data[entry:entry + 32]
            if raw[0] == 0:
                break
            if raw[11] != 0x0F and raw[11] & 0x10 and raw[:11] == wanted:
                cluster = _le(raw[26:28]) | _le(raw[20:22]) << 16
                at, size = first_data + (cluster - 2) * per_cluster * per_sector, \
                    per_cluster * per_sector
                break
        else:
            raise AssertionError(f"no directory {name!r} on the way to {path} in {image}")
    return at


def overwrite(image: Path, at: int, data: bytes) -> None:
    """Write `data` at byte `at` of the image, the rest of that sector as erased flash: what an
    erase, then a program torn after len(data) bytes, leaves."""
    with open(image, "r+b") as handle:
        handle.seek(at)
        handle.write(data + b"\xff" * (SECTOR - len(data)))
