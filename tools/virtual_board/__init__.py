"""The virtual board: the MicroPython unix port on a flash image (littlefs or FAT on a block
device) mirrored to a host directory, or on the host directory itself."""

from tools.virtual_board.board import (
    HARNESS_HEAP_BYTES,
    BootRecord,
    RunResult,
    VirtualBoard,
    harness_heap_bytes,
    rom_image_path,
)
from tools.virtual_board.flash import FlashImageError, Torn, flash_image_path
from tools.virtual_board.power import Ended, random_cut

__all__ = [
    "HARNESS_HEAP_BYTES",
    "BootRecord",
    "Ended",
    "FlashImageError",
    "RunResult",
    "Torn",
    "VirtualBoard",
    "flash_image_path",
    "harness_heap_bytes",
    "random_cut",
    "rom_image_path",
]
