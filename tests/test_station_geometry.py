"""Board geometries: every board in fleet.yaml is pinned to its port's own definition.

The values below are MicroPython v1.25.0's, read from the files each entry names (the same
citations are in docs/provisioning.md, Board geometries). A board whose filesystem partition
differs from the port's is not a board MicroPython mounts: littlefs refuses a superblock whose
block count differs from the block device's, and RP2's `_boot.py` then reformats the flash.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.fleet import Board, load_fleet
from tools.station.image import BLOCK_SIZE, PartitionGeometry, build_littlefs_image

ROOT = Path(__file__).resolve().parent.parent
TAG = "v1.25.0"
RP2_FLASH = 2 * 1024 * 1024  # PICO_FLASH_SIZE_BYTES of pico-sdk's boards/pico.h and pico_w.h


@dataclass(frozen=True)
class PortGeometry:
    chip: str
    flash_size: int
    firmware_offset: int
    fs_offset: int
    fs_size: int
    prog_size: int
    sources: tuple[str, ...]  # micropython/micropython files at TAG the values come from
    filesystem: str = "littlefs"
    reserved_at_end: int = 0  # flash after the filesystem that is the firmware's own


PORT_GEOMETRIES = {
    "esp32": PortGeometry(
        chip="esp32", flash_size=0x400000, firmware_offset=0x1000,
        # partitions-4MiB.csv: "vfs, data, fat, 0x200000, 0x200000"
        fs_offset=0x200000, fs_size=0x200000, prog_size=32,
        sources=("ports/esp32/boards/ESP32_GENERIC/board.json",  # "flash_offset": "0x1000"
                 "ports/esp32/boards/sdkconfig.base",  # FLASHSIZE_4MB, partitions-4MiB.csv
                 "ports/esp32/partitions-4MiB.csv",
                 "extmod/vfs_lfs.c")),  # VfsLfs2 progsize default 32
    "rp2-pico": PortGeometry(
        chip="rp2", flash_size=RP2_FLASH, firmware_offset=0,
        # rp2_flash.c: MICROPY_HW_FLASH_STORAGE_BASE = PICO_FLASH_SIZE_BYTES - ..._BYTES
        fs_offset=RP2_FLASH - 1408 * 1024, fs_size=1408 * 1024, prog_size=256,
        sources=("ports/rp2/boards/RPI_PICO/mpconfigboard.h",  # STORAGE_BYTES (1408 * 1024)
                 "ports/rp2/rp2_flash.c",
                 "ports/rp2/modules/_boot.py")),  # VfsLfs2(bdev, progsize=256)
    "rp2-pico-w": PortGeometry(
        chip="rp2", flash_size=RP2_FLASH, firmware_offset=0,
        fs_offset=RP2_FLASH - 848 * 1024, fs_size=848 * 1024, prog_size=256,
        sources=("ports/rp2/boards/RPI_PICO_W/mpconfigboard.h",  # STORAGE_BYTES (848 * 1024)
                 "ports/rp2/rp2_flash.c",
                 "ports/rp2/modules/_boot.py")),
    "esp8266": PortGeometry(
        chip="esp8266", flash_size=0x400000, firmware_offset=0,
        # flashbdev.py: start_sec = esp.flash_user_start() // 4096 (= _firmware_size of
        # esp8266_2MiB.ld: 0x40209000 + 1M - 36K - 0x40200000 = 0x100000), blocks =
        # (esp.flash_size() - 20480) // 4096 - start_sec: 763 blocks on a 4 MiB module
        fs_offset=0x100000, fs_size=763 * 4096, prog_size=32,
        reserved_at_end=20480,  # "20K at the flash end is reserved for SDK params storage"
        sources=("ports/esp8266/boards/ESP8266_GENERIC/mpconfigvariant.mk",  # esp8266_2MiB.ld
                 "ports/esp8266/boards/esp8266_2MiB.ld",
                 "ports/esp8266/boards/esp8266_common.ld",  # _firmware_size
                 "ports/esp8266/modesp.c",  # flash_user_start() returns _firmware_size
                 "ports/esp8266/modules/flashbdev.py",
                 "ports/esp8266/modules/inisetup.py")),  # vfs.VfsLfs2.mkfs(bdev): defaults
    "pybd-sf2": PortGeometry(
        chip="stm32", flash_size=0x200000, firmware_offset=0,
        # storage.c: pyb.Flash() spans the SPI flash's NUM_BLOCKS 512-byte blocks
        # (mpconfigboard_common.h: MICROPY_HW_BDEV_SPIFLASH_SIZE_BYTES / FLASH_BLOCK_SIZE)
        fs_offset=0, fs_size=0x200000, prog_size=32, filesystem="fat",
        sources=("ports/stm32/boards/PYBD_SF2/mpconfigboard.h",  # SPIFLASH_SIZE_BITS 16 Mbit
                 "ports/stm32/mpconfigboard_common.h",
                 "ports/stm32/storage.c",
                 "ports/stm32/factoryreset.c",  # f_mkfs(FM_FAT) when nothing mounts
                 "ports/stm32/main.c")),  # init_flash_fs: mounted at /flash
}


def fleet_boards() -> dict[str, Board]:
    boards = load_fleet(ROOT / "fleet.yaml").boards
    return {name: board for name, board in boards.items() if board.chip != "unix"}


def test_every_hardware_board_of_the_example_fleet_is_pinned_to_a_port_definition() -> None:
    assert set(fleet_boards()) == set(PORT_GEOMETRIES)


@pytest.mark.parametrize("name", sorted(PORT_GEOMETRIES))
def test_board_geometry_is_the_ports_own(name: str) -> None:
    board = fleet_boards().get(name)
    assert board is not None, f"fleet.yaml has no board {name!r}"
    port = PORT_GEOMETRIES[name]
    found = (board.chip, board.flash_size, board.firmware_offset, board.fs_offset,
             board.fs_size, board.prog_size, board.filesystem)
    expected = (port.chip, port.flash_size, port.firmware_offset, port.fs_offset,
                port.fs_size, port.prog_size, port.filesystem)
    assert found == expected, f"{name}: fleet.yaml differs from {TAG} {', '.join(port.sources)}"
    # MicroPython's RP2 storage is the end of the flash; ESP32's `vfs` is the last partition;
    # the ESP8266's ends where the SDK's parameters begin; the Pyboard-D's is its whole SPI flash.
    assert board.fs_offset + board.fs_size + port.reserved_at_end == board.flash_size


# The port's block device as MicroPython 1.25 builds it: its block count is the port's
# storage size / 4096, whatever the image says. littlefs compares the two at mount.
_MOUNT_AS_THE_PORT = """
import vfs, sys
class PortFlash:
    def __init__(self, path, count):
        self.f = open(path, 'rb')
        self.count = count
    def readblocks(self, n, buf, off=0):
        self.f.seek(n * %(bs)d + off)
        got = self.f.readinto(buf)
        for i in range(got or 0, len(buf)):
            buf[i] = 0xff  # past the image: erased flash
    def writeblocks(self, n, buf, off=None):
        raise OSError(30)  # read-only: this only checks the mount
    def ioctl(self, op, arg):
        if op == 4:
            return self.count
        if op == 5:
            return %(bs)d
        if op == 6:
            return 0
try:
    vfs.VfsLfs2(PortFlash(sys.argv[1], %(count)d), readsize=%(prog)d, progsize=%(prog)d)
    print('mounted')
except OSError as e:
    print('refused', e)
"""


@pytest.mark.parametrize("name", ["rp2-pico", "rp2-pico-w", "esp8266"])
def test_an_image_built_for_the_fleet_board_mounts_on_the_ports_block_device(
        micropython: str, tmp_path: Path, name: str) -> None:
    board = fleet_boards()[name]
    port = PORT_GEOMETRIES[name]
    image = build_littlefs_image({"boot.py": b"import ota.boot\n"},
                                 PartitionGeometry(board.fs_offset, board.fs_size,
                                                   board.prog_size))
    path = tmp_path / "fs.img"
    path.write_bytes(image)
    script = _MOUNT_AS_THE_PORT % {"bs": BLOCK_SIZE, "count": port.fs_size // BLOCK_SIZE,
                                   "prog": port.prog_size}
    done = subprocess.run([micropython, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "mounted"
