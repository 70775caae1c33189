"""The boards a station run provisions: serial ports given or discovered, and virtual boards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# USB vendor ids of the UART bridges and native USB stacks boards show up with.
BOARD_USB_VIDS = {
    0x303A: "Espressif (native USB)",
    0x10C4: "Silicon Labs CP210x",
    0x1A86: "WCH CH340/CH9102",
    0x0403: "FTDI",
    0x2E8A: "Raspberry Pi (RP2)",
    0xF055: "MicroPython",
}


class TargetError(ValueError):
    """A target given on the command line is unusable; names it."""


@dataclass(frozen=True)
class Target:
    kind: Literal["serial", "virtual"]
    address: str  # a serial device / pyserial URL, or a virtual board's flash directory

    @property
    def label(self) -> str:
        return self.address if self.kind == "serial" else f"virtual:{Path(self.address).name}"


def discover_serial_ports() -> list[str]:
    """Every serial port whose USB vendor looks like a board (`--all`)."""
    from serial.tools import list_ports

    return sorted(p.device for p in list_ports.comports() if p.vid in BOARD_USB_VIDS)


def collect_targets(ports: tuple[str, ...], all_ports: bool, virtual_dirs: tuple[str, ...]
                    ) -> list[Target]:
    """The targets of one run, each once. Raises TargetError for a virtual board's path that
    is not a directory, a duplicate, or when nothing was asked for. A virtual board's
    directory that does not exist yet is fine: `ota provision` creates it."""
    targets = [Target("serial", p) for p in ports]
    if all_ports:
        targets += [Target("serial", p) for p in discover_serial_ports() if p not in ports]
    for directory in virtual_dirs:
        path = Path(directory).resolve()
        if path.exists() and not path.is_dir():
            raise TargetError(f"--virtual {directory}: not a directory")
        targets.append(Target("virtual", str(path)))
    labels = [t.label for t in targets]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise TargetError(f"given twice: {', '.join(duplicates)}")
    if not targets:
        if all_ports:
            raise TargetError("--all: no serial port with a board's USB vendor id was found "
                              f"(known: {', '.join(BOARD_USB_VIDS.values())})")
        raise TargetError("no boards: give --port PORT, --all or --virtual DIR")
    return targets
