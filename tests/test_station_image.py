"""The image method: a littlefs image the real MicroPython mounts, and the merged factory image."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tools.station.image import (
    BLOCK_SIZE,
    ImageError,
    PartitionGeometry,
    build_littlefs_image,
    merge_factory_image,
)

# Runs on the MicroPython unix port: a block device backed by the image file, mounted with
# the same settings MicroPython's ports use, then every file is hashed back.
_MOUNT_AND_HASH = """
import vfs, os, hashlib, binascii, sys, json
class FileBlockDevice:
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
            return 0
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
