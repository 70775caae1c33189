"""Who is this board? Chip, MAC or unique id, flash size, and the device id derived from them.

Espressif boards are asked through their ROM bootloader (esptool: eFuse MAC, JEDEC flash id);
other boards and virtual boards through MicroPython itself (`machine.unique_id()` over
mpremote). The device id is the board type plus the hex of that hardware id, so the same
board always gets the same id, and the server can tell a re-run from a new board.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tools.fleet import Board
from tools.station.flashing import EspBoard
from tools.station.writer_mpremote import MpremoteBoard

_DEVICE_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
# sys.platform a board of each chip family reports; the virtual board is the unix port.
# The STM32 port's is "pyboard" (ports/stm32/mpconfigport.h, MICROPY_PY_SYS_PLATFORM).
_PLATFORMS = {"unix": ("linux", "darwin"), "rp2": ("rp2",), "stm32": ("pyboard",)}


class IdentifyError(RuntimeError):
    """The board could not be identified, or is not the board type the profile expects."""


@dataclass(frozen=True)
class BoardIdentity:
    chip: str
    hardware_id: bytes  # MAC (Espressif) or machine.unique_id()
    mac: str | None
    flash_size: str | None


def device_id_for(board: Board, hardware_id: bytes) -> str:
    """`<board type>-<hex of the hardware id>`, e.g. `esp32-240ac4123456`."""
    device_id = f"{board.name}-{hardware_id.hex()}"
    if not _DEVICE_ID.match(device_id):
        raise IdentifyError(f"derived device id {device_id!r} is not usable")
    return device_id


def identify_esp(esp: EspBoard, board: Board) -> BoardIdentity:
    found = esp.identify()
    expected = board.chip.replace("-", "").upper()
    if found.chip.replace("-", "").upper() != expected:
        raise IdentifyError(f"found an {found.chip} but the profile's board {board.name!r} is "
                            f"a {board.chip}")
    return BoardIdentity(chip=found.description, hardware_id=bytes.fromhex(found.mac.replace(
        ":", "")), mac=found.mac, flash_size=found.flash_size)


def identify_micropython(mp: MpremoteBoard, board: Board) -> BoardIdentity:
    unique_id = mp.unique_id()
    chip = str(mp.eval("__import__('sys').platform"))
    expected = _PLATFORMS.get(board.chip, (board.chip,))
    if chip not in expected:
        raise IdentifyError(f"found a {chip!r} MicroPython but the profile's board "
                            f"{board.name!r} is {board.chip!r}")
    # On ESP32 MicroPython the unique id is the MAC; elsewhere it is just a serial number.
    mac = ":".join(f"{b:02x}" for b in unique_id) if len(unique_id) == 6 else None
    return BoardIdentity(chip=chip, hardware_id=unique_id, mac=mac, flash_size=None)
