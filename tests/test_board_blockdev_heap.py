"""The virtual board's flash block device spends no board heap on a block operation.

A port's flash erase and program allocate nothing from MicroPython's heap (ports/esp8266
esp.flash_erase / flash_write, ports/esp32/esp32_partition.c, ports/rp2/rp2_flash.c). The
virtual board's device (standins/_vb_blockdev.py) runs inside the board's heap, so whatever it
allocates per operation is heap the board's own code loses, and a 4 KB object per erase needs
4 KB of contiguous free heap at every erase: the reference update on FAT, which erases at every
sector write, failed at the ESP8266's heap because of it (docs/board.md, Platforms).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tools.station.image import BLOCK_SIZE
from tools.virtual_board.compiled import compiled_standins

# Each operation, with collection off so nothing is freed in between: the bytes allocated by
# an erase (ioctl 6), a whole-block write (erase and program, FAT's way), a program at an
# offset (littlefs'), and a torn erase and a torn program (rest erased) at the cut.
_SCRIPT = """
import gc, sys, _vb_blockdev
class Cut(Exception):
    pass
def cut():
    raise Cut()
f = open(sys.argv[1], 'r+b')
dev = _vb_blockdev.FlashBlockDevice(f, 4096, 4, int(sys.argv[2]), int(sys.argv[3]), 'ff', cut)
block = bytearray(b'B' * 4096)
def cost(op):
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    try:
        op()
    except Cut:
        pass
    spent = gc.mem_alloc() - before
    gc.enable()
    return spent
print(cost(lambda: dev.ioctl(6, 1)), cost(lambda: dev.writeblocks(2, block)),
      cost(lambda: dev.writeblocks(1, block, 0)))
f.close()
"""


@pytest.mark.parametrize(("cut_at", "torn"), [(0, 0), (1, 100), (2, 3000)])
def test_block_operations_allocate_no_block_sized_buffer_in_the_boards_heap(
        tmp_path: Path, micropython: str, cut_at: int, torn: int) -> None:
    image = tmp_path / "dev.img"
    image.write_bytes(b"\x00" * 4 * BLOCK_SIZE)
    done = subprocess.run(
        [micropython, "-c", _SCRIPT, str(image), str(cut_at), str(torn)],
        capture_output=True, text=True, timeout=60, check=False,
        env={"MICROPYPATH": str(compiled_standins()), "PATH": os.environ.get("PATH", "")})
    assert done.returncode == 0, done.stdout + done.stderr
    erase, whole_block, program = (int(n) for n in done.stdout.split())
    # A few small objects (a memoryview; at a cut the exception that ends the boot) are fine,
    # a buffer of a block, or of a quarter of one, is not.
    for spent in (erase, whole_block, program):
        assert spent < BLOCK_SIZE // 4, done.stdout
