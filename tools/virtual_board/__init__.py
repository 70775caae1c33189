"""The virtual board: the MicroPython unix port on a host directory as its flash."""

from tools.virtual_board.board import BootRecord, RunResult, VirtualBoard
from tools.virtual_board.power import Ended, random_cut

__all__ = ["BootRecord", "Ended", "RunResult", "VirtualBoard", "random_cut"]
