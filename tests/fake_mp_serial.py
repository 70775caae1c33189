"""FAKE at the USB serial boundary: a board running an OLD MicroPython, answering on its raw REPL.

The virtual board runs Debian's MicroPython 1.25, which is above the firmware floor, and a
real board with an older firmware is not at hand; this fake stands for one. It speaks
MicroPython's raw-REPL protocol (shared/runtime/pyexec.c: Ctrl-A enters it with
"raw REPL; CTRL-B to exit\\r\\n>", a program ends with Ctrl-D and is answered "OK", its output,
Ctrl-D, its error text, Ctrl-D, ">"; raw-paste mode is declined with "R\\x00", as a firmware
without it does) and answers only the statements the station sends to identify a board and
read its firmware version, as that firmware would. Anything else (any file write) gets a
NotImplementedError traceback and is recorded, so a test can see nothing was written.

A pyserial URL protocol handler, like tests/fake_esp_serial.py: after `register()`,
`fakemp://board?version=1.22.2&platform=rp2&uid=e66038b713543a2c` opens it. `version` is
what `sys.implementation.version` reports (three numbers: firmware before 1.23 has no
pre-release field), `platform` is `sys.platform`, `uid` the hex of `machine.unique_id()`.
Every program the board was sent is appended to `<log>` when `log=PATH` is given.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import serial
from serial.serialutil import SerialBase, SerialException

PROTOCOL = "fakemp"
_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"


def register() -> None:
    """Make `fakemp://` URLs open this fake, in this process (call it in every process)."""
    sys.modules.setdefault(f"{__name__}.protocol_{PROTOCOL}", sys.modules[__name__])
    if __name__ not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(__name__)


def url_for(version: str, platform: str, uid: str, log: Path | None = None) -> str:
    url = f"{PROTOCOL}://board?version={version}&platform={platform}&uid={uid}"
    return url + (f"&log={log}" if log is not None else "")


class Serial(SerialBase):
    """The fake board on the end of the "cable"; see the module docstring."""

    def open(self) -> None:
        if self._port is None:
            raise SerialException("port must be configured before it can be used")
        query = {k: v[0] for k, v in parse_qs(urlparse(self._port).query).items()}
        version = tuple(int(part) for part in query["version"].split("."))
        self._answers = {
            "import machine": b"",
            "print(repr(machine.unique_id()))": repr(bytes.fromhex(query["uid"])).encode(),
            "print(repr(__import__('sys').platform))": repr(query["platform"]).encode(),
            "print(repr(__import__('sys').implementation.version))": repr(version).encode(),
        }
        self._log = Path(query["log"]) if "log" in query else None
        self._out = bytearray()
        self._program = bytearray()
        self._raw = False
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    @property
    def in_waiting(self) -> int:
        return len(self._out)

    def read(self, size: int = 1) -> bytes:
        data, self._out[:size] = bytes(self._out[:size]), b""
        return data

    def write(self, data: bytes) -> int:  # type: ignore[override]
        for byte in bytes(data):
            self._receive(byte)
        return len(data)

    def reset_input_buffer(self) -> None:
        self._out.clear()

    def reset_output_buffer(self) -> None:
        pass

    def _reconfigure_port(self, force_update: bool = False) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_break_state(self) -> None:
        pass

    def _receive(self, byte: int) -> None:
        if byte == 0x01:  # Ctrl-A: raw REPL
            self._raw, self._program = True, bytearray()
            self._out += b"\r\n" + _RAW_BANNER
        elif byte == 0x02:  # Ctrl-B: friendly REPL
            self._raw = False
            self._out += b"\r\n>>> "
        elif byte == 0x03:  # Ctrl-C: nothing runs, nothing to interrupt
            self._program = bytearray()
        elif not self._raw:
            return
        elif byte == 0x05:  # Ctrl-E: raw-paste request ("A\x01" follows); declined
            self._program = bytearray(b"\x05")
        elif self._program[:1] == b"\x05":
            self._program += bytes([byte])
            if self._program == b"\x05A\x01":
                self._out += b"R\x00"
                self._program = bytearray()
        elif byte == 0x04:  # Ctrl-D: run the program
            self._run(self._program.decode())
            self._program = bytearray()
        else:
            self._program.append(byte)

    def _run(self, program: str) -> None:
        if self._log is not None:
            with self._log.open("a") as log:
                log.write(program.replace("\n", "\\n") + "\n")
        answer = self._answers.get(program.strip())
        if answer is None:
            error = (b"Traceback (most recent call last):\r\n  File \"<stdin>\", line 1, in "
                     b"<module>\r\nNotImplementedError: fake board: not emulated\r\n")
            self._out += b"OK\x04" + error + b"\x04>"
            return
        self._out += b"OK" + (answer + b"\r\n" if answer else b"") + b"\x04\x04>"
