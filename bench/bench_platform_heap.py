"""Does the reference update fit an ESP8266's heap? (docs/board.md, Platforms)

    python bench/bench_platform_heap.py [--runs N]

The ESP8266's MicroPython heap is a fixed 38 KB array (ports/esp8266/main.c, `static char
heap[38 * 1024]`, v1.23.0 to v1.25.0); the vendor SDK's Wi-Fi driver and lwIP (its
`liblwip_open`) allocate from the SDK's own heap (`esp.freemem()`), not from it. Before
main.py runs, the port's `_boot.py` has mounted the filesystem from `flashbdev.py`'s block
device (4096-byte sectors): that mount stays in the heap for good, and an open file adds to
it. What is left is the client's heap.

1. The filesystem's share, measured on the 32-bit unix port (the ESP8266's word size) with
   MicroPython's own `vfs.VfsLfs2` / `vfs.VfsFat` mounted on a file-backed copy of the port's
   FlashBdev, 763 sectors (4 MiB module): the block device and the mounted filesystem, and one
   open file on it.
   The ESP8266's FatFs is built as the unix port's is (MICROPY_FATFS_MAX_SS 4096, FF_FS_TINY:
   one 4 KB sector window per mounted volume), its littlefs with VfsLfs2's defaults (32-byte
   read/prog size, 128-byte caches).
2. The client's heap: 38 KB less the share, rounded down to the KB.
3. The reference update (bench/bench_board.py's, end to end: check-in, verify, download,
   swap, trial boot, confirm) run `--runs` times at that heap on the 32-bit port for each
   client layout, `-X heapsize` as D1 sets it (the virtual board adds its own harness share on
   top), on the directory flash: the filesystem's heap is taken off the budget instead of
   being spent by the run.
4. The same update on flash as the ESP8266 has it: littlefs and FAT on the virtual board's
   flash block device with the ESP8266's geometry (763 blocks of 4096 bytes, prog size 32),
   where the mounted filesystem, its caches and its open files are in the board's heap as on
   the ESP8266 (tools/virtual_board/board.py, BLOCK_FLASH_HARNESS_EXTRA: only the block
   device's Python object is the harness's). Run `--runs` times at 37 KB (38 KB less the
   FlashBdev object, a few hundred bytes on the board), and D1 bisected on each filesystem at
   1 KB steps (one run per step).

The last line is one JSON object: the shares, the heaps and the runs that passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))
if str(PROJECT_ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))

from bench.bench_board import Bench  # noqa: E402
from tools.board_files import ClientLayout, read_state  # noqa: E402
from tools.local_server import LocalServer  # noqa: E402
from tools.micropython import find_micropython, find_micropython_32bit  # noqa: E402
from tools.station.image import PartitionGeometry  # noqa: E402
from tools.virtual_board import VirtualBoard, flash_image_path, rom_image_path  # noqa: E402
from tools.virtual_board.flash import FlashKind  # noqa: E402

ESP8266_HEAP = 38 * 1024  # ports/esp8266/main.c
ESP8266_SECTORS = 763  # flashbdev.py on a 4 MiB module: (4 MiB - 20 KiB) // 4096 - 256
# fleet.yaml's `esp8266` board (docs/provisioning.md, Board geometries)
ESP8266_FS = PartitionGeometry(offset=0x100000, size=ESP8266_SECTORS * 4096, prog_size=32)
BLOCK_FLASH_HEAP_KB = 37  # 38 KB less the FlashBdev object, rounded down

# The port's FlashBdev (ports/esp8266/modules/flashbdev.py, v1.25.0) over a file instead of
# esp.flash_read/flash_write/flash_erase; start_sec 0 since the file is the partition alone.
# Counted from the script's start: the block device's class and instance (as _boot.py's import
# of the frozen flashbdev makes them; the host file object's few bytes too), the mount.
_SHARE = """\
import gc, sys, vfs
gc.collect()
base = gc.mem_alloc()
class FlashBdev:
    SEC_SIZE = 4096
    def __init__(self, f, blocks):
        self.f = f
        self.blocks = blocks
    def readblocks(self, n, buf, off=0):
        self.f.seek(n * self.SEC_SIZE + off)
        self.f.readinto(buf)
    def writeblocks(self, n, buf, off=None):
        if off is None:
            off = 0
        self.f.seek(n * self.SEC_SIZE + off)
        self.f.write(buf)
    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return self.SEC_SIZE
        if op == 6:
            return 0
bdev = FlashBdev(open(sys.argv[1], 'r+b'), %(sectors)d)
kind = vfs.VfsFat if sys.argv[2] == 'fat' else vfs.VfsLfs2
kind.mkfs(bdev)
vfs.mount(kind(bdev), '/fs')
gc.collect()
mounted = gc.mem_alloc() - base
f = open('/fs/record', 'wb')
f.write(b'x' * 100)
gc.collect()
print(mounted, gc.mem_alloc() - base - mounted)
f.close()
"""


def filesystem_share(micropython: str, kind: str) -> tuple[int, int]:
    """(bytes the block device and the mounted filesystem of `kind` hold, bytes one open file
    adds) on the ESP8266's geometry, measured on `micropython`."""
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "fs.img"
        image.write_bytes(b"\xff" * ESP8266_SECTORS * 4096)
        done = subprocess.run([micropython, "-c", _SHARE % {"sectors": ESP8266_SECTORS},
                               str(image), kind], capture_output=True, text=True, timeout=120,
                              check=True)
    mounted, open_file = (int(n) for n in done.stdout.split())
    return mounted, open_file


def updates_on_block_flash(bench: Bench, kind: FlashKind, heap_kb: int, client: ClientLayout,
                           micropython: str) -> bool:
    """The reference update, end to end, on `kind` flash of the ESP8266's geometry."""
    flash = bench.board(bench.server.url, "update", client)
    try:
        run = VirtualBoard(flash, micropython=micropython, heapsize=f"{heap_kb}k", flash=kind,
                           geometry=ESP8266_FS).run(max_boots=3, timeout=120)
        state = read_state(flash)
        return ([b.ended for b in run.boots] == ["reset", "exit"]
                and "APP 1.1.0" in run.boots[-1].output
                and state is not None and (state["active"], state["ok"]) == ("b", 1))
    finally:
        shutil.rmtree(flash)
        for extra in (rom_image_path(flash), flash_image_path(flash),
                      flash.with_name(flash.name + ".flash.json")):
            extra.unlink(missing_ok=True)


def d1_on_block_flash(bench: Bench, kind: FlashKind, client: ClientLayout,
                      micropython: str) -> int:
    """Smallest heap (KB, 1 KB steps, bisected between 16 and 64) the update passes in."""
    low, high = 16, 64
    if not updates_on_block_flash(bench, kind, high, client, micropython):
        raise RuntimeError(f"the reference update fails on {kind} even with {high} KB")
    while high - low > 1:
        mid = (low + high) // 2
        if updates_on_block_flash(bench, kind, mid, client, micropython):
            high = mid
        else:
            low = mid
    return high


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="update runs per heap and layout")
    runs = parser.parse_args().runs
    micropython = find_micropython_32bit()
    shares = {kind: filesystem_share(micropython, kind) for kind in ("littlefs", "fat")}
    heaps: dict[str, int] = {}
    for kind, (mounted, open_file) in shares.items():
        heaps[kind] = (ESP8266_HEAP - mounted - open_file) // 1024
        print(f"{kind}: mounted {mounted} bytes, an open file {open_file} more; the client's "
              f"heap on an ESP8266: {heaps[kind]} KB", flush=True)
    passed: dict[str, int] = {}
    d1: dict[str, int] = {}
    os.environ["MPOTA_VB_FLASH"] = "dir"  # Bench.updates: the directory flash (step 3)
    with tempfile.TemporaryDirectory(prefix="bench-platform-") as tmp:
        bench = Bench(Path(tmp), find_micropython())
        with LocalServer(Path(tmp) / "data", Path(tmp) / "root.json") as server:
            bench.setup(server)
            for kind, heap_kb in heaps.items():
                for client in ("romfs", "files"):
                    layout: ClientLayout = client  # type: ignore[assignment]
                    ok = sum(bench.updates(heap_kb, layout, micropython) for _ in range(runs))
                    passed[f"{kind}_{client}"] = ok
                    print(f"reference update at {heap_kb} KB ({kind} mounted), client "
                          f"{client}: {ok} of {runs} runs passed", flush=True)
            blocks: tuple[FlashKind, ...] = ("lfs2", "fat")
            for block in blocks:
                for client in ("romfs", "files"):
                    layout = client  # type: ignore[assignment]
                    ok = sum(updates_on_block_flash(bench, block, BLOCK_FLASH_HEAP_KB, layout,
                                                    micropython) for _ in range(runs))
                    passed[f"block_{block}_{client}"] = ok
                    print(f"reference update on {block} block flash (ESP8266 geometry) at "
                          f"{BLOCK_FLASH_HEAP_KB} KB, client {client}: {ok} of {runs} runs "
                          f"passed", flush=True)
                    d1[f"{block}_{client}"] = d1_on_block_flash(bench, block, layout,
                                                                micropython)
                    print(f"D1 on {block} block flash, client {client}: "
                          f"{d1[f'{block}_{client}']} KB", flush=True)
    print(json.dumps({"fs_share_bytes": {k: list(v) for k, v in shares.items()},
                      "esp8266_client_heap_kb": heaps, "runs": runs, "passed": passed,
                      "block_flash_heap_kb": BLOCK_FLASH_HEAP_KB, "d1_block_flash_kb": d1}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
