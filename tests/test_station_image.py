"""The image method: a littlefs image the real MicroPython mounts, and the merged factory image."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from littlefs import LittleFS

from tools.station.image import (
    BLOCK_SIZE,
    DISK_VERSION,
    LOOKAHEAD,
    ImageError,
    PartitionGeometry,
    build_littlefs_image,
    merge_factory_image,
)

# The image file as a flash block device, for the scripts below: erase (ioctl 6) writes
# 0xff, as erased flash reads.
_FILE_BLOCK_DEVICE = """class FileBlockDevice:
    def __init__(self, path, count):
        self.f = open(path, 'r+b')
        self.count = count
    def readblocks(self, n, buf, off=0):
        self.f.seek(n * %(bs)d + off)
        self.f.readinto(buf)
    def writeblocks(self, n, buf, off=None):
        self.f.seek(n * %(bs)d + (off or 0))
        self.f.write(buf)
    def ioctl(self, op, arg):
        if op == 4:
            return self.count
        if op == 5:
            return %(bs)d
        if op == 6:
            if arg is not None:
                self.f.seek(arg * %(bs)d)
                self.f.write(b'\\xff' * %(bs)d)
            return 0
"""

# Runs on the MicroPython unix port: a block device backed by the image file, mounted with
# the same settings MicroPython's ports use, then every file is hashed back.
_MOUNT_AND_HASH = """
import vfs, os, hashlib, binascii, sys, json
""" + _FILE_BLOCK_DEVICE + """
fs = vfs.VfsLfs2(FileBlockDevice(sys.argv[1], %(count)d), readsize=%(prog)d, progsize=%(prog)d,
                 lookahead=32)
vfs.mount(fs, '/flash')
out = {}
def walk(d):
    for name, kind, *_ in os.ilistdir(d):
        p = d + '/' + name
        if kind == 0x4000:
            walk(p)
        else:
            h = hashlib.sha256()
            buf = bytearray(512)
            with open(p, 'rb') as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    h.update(buf[:n])
            out[p[len('/flash/'):]] = binascii.hexlify(h.digest()).decode()
walk('/flash')
print(json.dumps(out))
"""


def board_like_files() -> dict[str, bytes]:
    return {
        "boot.py": b"import ota.boot\n",
        "main.py": b"import ota.main\n",
        "ota/client.mpy": os.urandom(9000),
        "ota/config.json": json.dumps({"device_id": "esp32-0a0b0c0d0e0f"}).encode(),
        "ota/device.key": os.urandom(32),
        "ota/trust.json": b'{"payloadType": "x"}',
        "app/a/app_main.py": b"print('hi')\n" * 300,
    }


def mount_in_micropython(micropython: str, image: Path, geometry: PartitionGeometry
                         ) -> dict[str, str]:
    script = _MOUNT_AND_HASH % {"bs": BLOCK_SIZE, "count": geometry.block_count,
                                "prog": geometry.prog_size}
    done = subprocess.run([micropython, "-c", script, str(image)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("prog_size", "size"), [(32, 0x200000), (256, 0x40000)],
                         ids=["esp32-2MiB-vfs", "rp2-prog256"])
def test_micropython_mounts_the_image_and_every_file_hash_matches(
        micropython: str, tmp_path: Path, prog_size: int, size: int) -> None:
    files = board_like_files()
    geometry = PartitionGeometry(offset=0x200000, size=size, prog_size=prog_size)
    image = build_littlefs_image(files, geometry)
    assert len(image) == size  # block_count = partition size / 4096, exactly
    path = tmp_path / "vfs.img"
    path.write_bytes(image)
    seen = mount_in_micropython(micropython, path, geometry)
    assert seen == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


def test_files_that_do_not_fit_are_refused_naming_the_file() -> None:
    with pytest.raises(ImageError, match=r"big\.bin"):
        build_littlefs_image({"big.bin": os.urandom(5 * BLOCK_SIZE)},
                             PartitionGeometry(offset=0, size=4 * BLOCK_SIZE))


def test_partition_that_is_not_whole_blocks_is_refused() -> None:
    with pytest.raises(ImageError, match="multiples of 4096"):
        build_littlefs_image({"a": b"x"}, PartitionGeometry(offset=0x200000, size=0x1000 + 1))


def test_path_escaping_the_filesystem_is_refused() -> None:
    with pytest.raises(ImageError, match=r"\.\./x"):
        build_littlefs_image({"../x": b"x"}, PartitionGeometry(offset=0, size=16 * BLOCK_SIZE))


def test_merged_factory_image_has_firmware_at_its_offset_and_fs_at_the_partition() -> None:
    # Not a real firmware: merge_bin only rewrites a header at the bootloader offset when asked.
    firmware = os.urandom(70_000)
    fs = build_littlefs_image(board_like_files(), PartitionGeometry(0x200000, 0x200000))
    offset, merged = merge_factory_image("esp32", firmware, 0x1000, fs, 0x200000)
    assert offset == 0x1000
    assert merged[: len(firmware)] == firmware
    gap = merged[len(firmware): 0x200000 - offset]
    assert gap == b"\xff" * len(gap)  # erased flash between the two
    assert merged[0x200000 - offset:] == fs
    assert offset + len(merged) == 0x400000


def test_firmware_overlapping_the_partition_is_refused() -> None:
    with pytest.raises(ImageError, match="overlaps"):
        merge_factory_image("esp32", b"\0" * 0x200000, 0x1000, b"\xff" * 4096, 0x200000)


# -- the superblock, read from the image's own bytes ----------------------------------------------
# What littlefs' lfs2_mount reads (lib/littlefs/lfs2.c, lfs2_dir_fetchmatch and lfs2_mount, as
# MicroPython v1.23.0 ships it): the metadata pair {0, 1}, the block with the newer revision,
# its commits in order while each one's CRC holds, and in them the superblock entry (id 0): its
# inline struct (tag type 0x201) holds version, block size and block count, little-endian.
# Written here from the format, not with littlefs-python, so the check does not trust the
# library whose default it guards against.

_TYPE_INLINESTRUCT = 0x201
_TYPE2_CCRC = 0x500


def _lfs_crc(crc: int, data: bytes) -> int:
    """littlefs' CRC-32 (reflected 0xEDB88320, no final inversion) continued from `crc`."""
    return zlib.crc32(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def _superblock_struct(block: bytes) -> bytes | None:
    """The superblock's inline struct as of the last commit of `block` whose CRC holds."""
    crc = _lfs_crc(0xFFFFFFFF, block[:4])  # the revision count starts the first commit
    ptag, off, dsize = 0xFFFFFFFF, 0, 4
    pending = committed = None
    while True:
        off += dsize
        if off + 4 > len(block):
            return committed
        raw = block[off:off + 4]
        crc = _lfs_crc(crc, raw)
        tag = int.from_bytes(raw, "big") ^ ptag  # tags are stored XORed with the previous one
        if tag & 0x8000_0000:  # not programmed: the end of the log
            return committed
        size = tag & 0x3FF
        dsize = 4 + (0 if size == 0x3FF else size)  # 0x3FF: a deleted entry, no data
        if off + dsize > len(block):
            return committed
        ptag = tag
        if (tag & 0x7800_0000) >> 20 == _TYPE2_CCRC:  # a commit ends: does its CRC hold?
            if crc != int.from_bytes(block[off + 4:off + 8], "little"):
                return committed
            ptag ^= ((tag >> 20) & 1) << 31
            committed, crc = pending, 0xFFFFFFFF
            continue
        crc = _lfs_crc(crc, block[off + 4:off + dsize])
        if (tag >> 20) & 0x7FF == _TYPE_INLINESTRUCT and (tag >> 10) & 0x3FF == 0:
            pending = block[off + 4:off + 4 + size]


def read_superblock(image: bytes) -> tuple[int, int, int]:
    """(on-disk version, block size, block count) of a littlefs image, from its bytes."""
    found: list[tuple[int, bytes]] = []
    for number in (0, 1):
        block = image[number * BLOCK_SIZE:(number + 1) * BLOCK_SIZE]
        entry = _superblock_struct(block)
        if entry is not None:
            found.append((int.from_bytes(block[:4], "little"), entry))
    assert found, "no superblock in blocks 0 and 1"
    if len(found) == 2 and ((found[0][0] - found[1][0]) & 0xFFFFFFFF) >= 0x8000_0000:
        found.reverse()  # revisions compare as sequence numbers (lfs2_scmp)
    version, block_size, block_count = struct.unpack_from("<III", found[0][1])
    return version, block_size, block_count


@pytest.mark.parametrize(("prog_size", "size"), [(32, 0x200000), (256, 0x160000),
                                                 (256, 0x0D4000)],
                         ids=["esp32-vfs", "rp2-pico", "rp2-pico-w"])
def test_image_is_littlefs_on_disk_version_2_0_every_micropython_mounts(
        prog_size: int, size: int) -> None:
    image = build_littlefs_image(board_like_files(), PartitionGeometry(0, size, prog_size))
    assert read_superblock(image) == (0x0002_0000, BLOCK_SIZE, size // BLOCK_SIZE)


def test_the_superblock_reader_tells_the_two_formats_apart() -> None:
    """littlefs-python's own default (2.1 today) reads back as 2.1: the reader is not blind."""
    fs = LittleFS(block_size=BLOCK_SIZE, block_count=32, read_size=32, prog_size=32,
                  lookahead_size=LOOKAHEAD, cache_size=32)
    with fs.open("boot.py", "wb") as handle:
        handle.write(b"x" * 3000)
    fs.unmount()
    assert read_superblock(bytes(fs.context.buffer)) == (0x0002_0001, BLOCK_SIZE, 32)


def test_a_path_that_is_a_file_and_a_directory_is_refused_naming_both() -> None:
    """Found by the property test below: littlefs refused the directory half-way through the
    image with its own error, which was not an ImageError."""
    with pytest.raises(ImageError, match=r"'_' is a file, but '_/_/_' needs it as a directory"):
        build_littlefs_image({"_": b"", "_/_/_": b""}, PartitionGeometry(0, 64 * BLOCK_SIZE, 32))
    with pytest.raises(ImageError, match="unusable board path"):
        build_littlefs_image({"a/../b": b""}, PartitionGeometry(0, 64 * BLOCK_SIZE, 32))


_PATHS = st.lists(st.text("abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=12)
                  .filter(lambda name: name not in (".", "..")),
                  min_size=1, max_size=3).map("/".join)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.dictionaries(_PATHS, st.binary(max_size=6000), min_size=1, max_size=12),
       prog_size=st.sampled_from([32, 256]))
def test_every_image_keeps_the_pinned_version_and_the_partitions_block_count(
        files: dict[str, bytes], prog_size: int) -> None:
    size = 64 * BLOCK_SIZE
    try:
        image = build_littlefs_image(files, PartitionGeometry(0, size, prog_size))
    except ImageError:
        return  # a path that is both a file and a directory: refused, nothing to read
    assert read_superblock(image) == (DISK_VERSION, BLOCK_SIZE, size // BLOCK_SIZE)
    assert LittleFS(context=_context(image), block_size=BLOCK_SIZE, block_count=64,
                    read_size=prog_size, prog_size=prog_size).fs_stat().disk_version \
        == DISK_VERSION


def _context(image: bytes) -> object:
    from littlefs import UserContext

    context = UserContext(len(image))
    context.buffer[:] = image
    return context


_MOUNT_WRITE_REMOUNT = """
import vfs, sys
""" + _FILE_BLOCK_DEVICE + """
bdev = FileBlockDevice(sys.argv[1], %(count)d)
vfs.mount(vfs.VfsLfs2(bdev, progsize=%(prog)d), '/flash')
with open('/flash/ota/written-on-board', 'w') as f:
    f.write('kept')
vfs.umount('/flash')
vfs.mount(vfs.VfsLfs2(bdev, progsize=%(prog)d), '/flash')
print(open('/flash/ota/written-on-board').read(), open('/flash/boot.py').read().strip())
"""


def test_micropython_mounts_the_2_0_image_writes_to_it_and_moves_it_to_its_own_format(
        micropython: str, tmp_path: Path) -> None:
    geometry = PartitionGeometry(0, 0x40000, 32)
    path = tmp_path / "vfs.img"
    path.write_bytes(build_littlefs_image(board_like_files(), geometry))
    script = _MOUNT_WRITE_REMOUNT % {"bs": BLOCK_SIZE, "count": geometry.block_count,
                                     "prog": geometry.prog_size}
    done = subprocess.run([micropython, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["kept", "import", "ota.boot"]
    # MicroPython's littlefs (2.8, on-disk 2.1) upgraded the superblock at its first write.
    assert read_superblock(path.read_bytes())[0] == 0x0002_0001
