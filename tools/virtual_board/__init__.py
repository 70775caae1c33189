"""The virtual board: the MicroPython unix port on a host directory as its flash."""

from tools.virtual_board.board import (
    HARNESS_HEAP_BYTES,
    BootRecord,
    RunResult,
    VirtualBoard,
    harness_heap_bytes,
    rom_image_path,
)
from tools.virtual_board.power import Ended, random_cut

__all__ = [
    "HARNESS_HEAP_BYTES",
    "BootRecord",
    "Ended",
    "RunResult",
    "VirtualBoard",
    "harness_heap_bytes",
    "random_cut",
    "rom_image_path",
]
