"""How a virtual boot ended, as the MicroPython side signals it, and choosing power-cut points.

The exit codes are shared with standins/_vb_flash.py (MicroPython cannot import this module).
"""

from __future__ import annotations

import random
from typing import Literal

Ended = Literal["reset", "watchdog", "exit", "crash", "power_cut", "timeout"]

EXIT_RESET = 86
EXIT_POWER_CUT = 87
EXIT_CRASH = 88
EXIT_WATCHDOG = 89

# Every board process runs with this umask: the flash holds the board's private key and Wi-Fi
# password, and nobody but this user can read a virtual board's flash, as on a real board.
FLASH_UMASK = 0o077

# machine.reset_cause() values (ESP32 numbering) the next boot sees.
PWRON_RESET = 1
WDT_RESET = 3
SOFT_RESET = 5

ENDED_BY_EXIT_CODE: dict[int, Ended] = {
    0: "exit",
    EXIT_RESET: "reset",
    EXIT_POWER_CUT: "power_cut",
    EXIT_CRASH: "crash",
    EXIT_WATCHDOG: "watchdog",
}

# Ends after which the harness boots the board again, with the reset cause the next boot sees.
REBOOTS: dict[Ended, int] = {"reset": SOFT_RESET, "watchdog": WDT_RESET}


def random_cut(fs_ops: int, rng: random.Random | None = None) -> int:
    """A cut point in 1..fs_ops, for `VirtualBoard.run(cut_at=...)`; `fs_ops` from a full run.

    Raises ValueError when the run made no filesystem mutation (there is nothing to cut).
    """
    if fs_ops < 1:
        raise ValueError(f"no filesystem mutation to cut at (fs_ops={fs_ops})")
    return (rng or random.Random()).randint(1, fs_ops)
