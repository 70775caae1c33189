"""Talking to an Espressif board's ROM bootloader through esptool's library API.

esptool keeps one process-wide logger, so a station runs this in one process per port and
installs `_StationLogger` there: esptool's chatter goes into a short transcript (used in error
messages) and its progress bars become the station's progress callback, never the terminal.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from esptool.cmds import detect_chip, detect_flash_size, write_flash
from esptool.logger import TemplateLogger, log
from esptool.util import FatalError

Progress = Callable[[int, int], None]  # (bytes done, bytes total)

_EspLog: Any
try:  # esptool >= 5.x keeps its logger singleton in esp-pylib (installed with it)
    from esp_pylib.logger import EspLog as _EspLog
except ImportError:  # older esptool 5: the station logger then stays installed
    _EspLog = None


class FlashError(RuntimeError):
    """esptool could not reach, identify, write or verify the board; the message says which."""


@dataclass(frozen=True)
class EspIdentity:
    chip: str  # e.g. "ESP32"
    description: str  # e.g. "ESP32-D0WD-V3 (revision v3.1)"
    mac: str  # base MAC, "aa:bb:cc:dd:ee:ff"
    flash_size: str | None  # e.g. "4MB"; None when the JEDEC id is not recognised


class _StationLogger(TemplateLogger):
    """esptool's logger for a station worker: remember the last lines, report progress."""

    def __init__(self) -> None:
        self.transcript: collections.deque[str] = collections.deque(maxlen=20)
        self.progress: Progress | None = None

    def print(self, *args: Any, **kwargs: Any) -> None:
        line = " ".join(str(a) for a in args).strip()
        if line:
            self.transcript.append(line)

    def note(self, message: str) -> None:
        self.transcript.append(f"note: {message}")

    def warning(self, message: str) -> None:
        self.transcript.append(f"warning: {message}")

    def error(self, message: str) -> None:
        self.transcript.append(f"error: {message}")

    def stage(self, finish: bool = False) -> None:
        pass

    def progress_bar(self, cur_iter: int, total_iters: int, prefix: str = "", suffix: str = "",
                     bar_length: int = 30) -> None:
        if self.progress is not None:
            self.progress(cur_iter, total_iters)

    def set_verbosity(self, verbosity: str) -> None:
        pass


@contextmanager
def _station_logger() -> Iterator[_StationLogger]:
    """esptool's process-wide logger is ours while a board is connected, then given back (a
    worker process does not care; a test or another tool in the same process does)."""
    previous = _EspLog.instance if _EspLog is not None else None
    logger = _StationLogger()
    log.set_logger(logger)
    try:
        yield logger
    finally:
        if _EspLog is not None:
            _EspLog.instance = previous


class EspBoard:
    """An open connection to one board's ROM bootloader (use `connect_esp_board`)."""

    def __init__(self, esp: Any, logger: _StationLogger) -> None:
        self._esp = esp
        self._logger = logger

    def identify(self) -> EspIdentity:
        """Chip, MAC (from eFuses) and flash size (from the flash chip's JEDEC id)."""
        try:
            mac = ":".join(f"{b:02x}" for b in self._esp.read_mac())
            flash_size = detect_flash_size(self._esp)
            try:
                description = str(self._esp.get_chip_description())
            except (FatalError, KeyError, ValueError):
                description = str(self._esp.CHIP_NAME)
        except (FatalError, OSError) as err:
            raise FlashError(f"identify failed: {err}") from err
        return EspIdentity(chip=str(self._esp.CHIP_NAME), description=description, mac=mac,
                           flash_size=flash_size)

    def write(self, offset: int, data: bytes, progress: Progress | None = None) -> None:
        """Write `data` at `offset` (compressed) and verify it with the chip's own MD5.

        Raises FlashError when the write or the verification fails.
        """
        self._logger.progress = progress
        try:
            write_flash(self._esp, [(offset, data)], flash_size="keep", compress=True,
                        no_progress=progress is None)
        except (FatalError, OSError) as err:
            last = " | ".join(list(self._logger.transcript)[-3:])
            raise FlashError(f"writing {len(data)} bytes at {offset:#x} failed: {err}"
                             f"{' (' + last + ')' if last else ''}") from err
        finally:
            self._logger.progress = None

    def hard_reset(self) -> None:
        """Leave the bootloader and boot the freshly written flash (RTS pulse)."""
        # The write is verified already; a board without reset lines boots on power-cycle.
        with contextlib.suppress(FatalError, OSError):
            self._esp.hard_reset()


@contextmanager
def connect_esp_board(port: str, before: str = "default-reset", attempts: int = 3
                      ) -> Iterator[EspBoard]:
    """Open `port` (a device path or a pyserial URL), sync with the ROM and detect the chip.

    Raises FlashError when no Espressif bootloader answers.
    """
    with _station_logger() as logger:
        try:
            esp = detect_chip(port, connect_mode=before, connect_attempts=attempts)
        except (FatalError, OSError, ValueError) as err:
            raise FlashError(f"no Espressif bootloader answered on {port}: {err}") from err
        try:
            yield EspBoard(esp, logger)
        finally:
            esp._port.close()
