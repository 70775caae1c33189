"""FAKE at the USB serial boundary: an ESP32's ROM serial bootloader, emulated in Python.

This is the one place the station's esptool path is not real hardware. Everything above the
serial port is esptool's real library code (chip detection, MAC from eFuses, SPI flash id,
FLASH_BEGIN/DATA/END, compressed FLASH_DEFL_*, SPI_FLASH_MD5 verify); below it, this class
answers the SLIP-framed commands the way the ESP32 ROM does, backed by a bytearray "flash"
that is loaded from and saved to a file (so a station worker process and the test share it).

It is a pyserial URL protocol handler: after `serial.protocol_handler_packages.append(
"fake_esp_serial")` (see `register()`), `serial_for_url("fakeesp:///path/flash.bin?mac=...")`
opens it. Query parameters:

- `mac`: the base MAC burnt into eFuse block 0, `aa:bb:cc:dd:ee:ff`;
- `flash`: flash size in MiB (1, 2, 4, 8 or 16), reported through the JEDEC id;
- `cut_after`: stop answering (the board "loses power") after this many flash bytes were written;
- `flip_at`: a flash address whose byte is stored inverted (a bad flash cell), which only a
  verify can notice.

Not emulated: the flasher stub (the station runs esptool with the ROM loader), encrypted
writes, baud changes (acknowledged only), reading flash back (the MD5 verify is used instead).
"""

from __future__ import annotations

import errno
import hashlib
import struct
import sys
import zlib
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import serial
from serial.serialutil import SerialBase, SerialException

# ESP32 ROM facts esptool relies on (esptool/targets/esp32.py).
CHIP_DETECT_MAGIC_REG = 0x40001000
ESP32_MAGIC = 0x00F01D83
EFUSE_RD_REG_BASE = 0x3FF5A000
SPI_REG_BASE = 0x3FF42000
SPI_CMD_REG = SPI_REG_BASE + 0x00
SPI_USR2_REG = SPI_REG_BASE + 0x24
SPI_W0_REG = SPI_REG_BASE + 0x80
SPI_CMD_USR = 1 << 18
SYNC_VALUE = 0x20120707  # the ROM's non-zero sync reply; a stub would answer 0
_FLASH_SIZE_IDS = {1: 0x14, 2: 0x15, 4: 0x16, 8: 0x17, 16: 0x18}
_VENDOR_GIGADEVICE = 0xC8

_OK = b"\x00\x00\x00\x00"  # ESP32 ROM status: 4 bytes, first two are status and error
_INVALID_COMMAND = b"\x01\x05\x00\x00"
_BAD_CHECKSUM = b"\x01\x07\x00\x00"

PROTOCOL = "fakeesp"


def register() -> None:
    """Make `fakeesp://` URLs open this fake, in this process (call it in every process)."""
    # pyserial looks for `<package>.protocol_<name>`; this module stands in as both.
    sys.modules.setdefault(f"{__name__}.protocol_{PROTOCOL}", sys.modules[__name__])
    if __name__ not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(__name__)


def url_for(flash_file: Path, mac: str, flash_mib: int = 4, cut_after: int | None = None,
            flip_at: int | None = None) -> str:
    url = f"{PROTOCOL}://{flash_file}?mac={mac}&flash={flash_mib}"
    url += f"&cut_after={cut_after}" if cut_after is not None else ""
    return url + (f"&flip_at={flip_at}" if flip_at is not None else "")


def new_flash_file(path: Path, flash_mib: int = 4) -> Path:
    """An erased flash chip (all 0xFF) of `flash_mib` MiB."""
    path.write_bytes(b"\xff" * (flash_mib << 20))
    return path


class Serial(SerialBase):
    """The fake ESP32 on the end of the "cable"; see the module docstring."""

    def open(self) -> None:
        if self._port is None:
            raise SerialException("port must be configured before it can be used")
        url = urlparse(self._port)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self._flash_path = Path(url.path)
        try:
            self._flash = bytearray(self._flash_path.read_bytes())
        except OSError as err:
            raise SerialException(f"fake ESP32: no flash file {self._flash_path}: {err}") from err
        mac = bytes.fromhex(params.get("mac", "24:0a:c4:00:00:01").replace(":", ""))
        size_mib = int(params.get("flash", "4"))
        self._cut_after = int(params["cut_after"]) if "cut_after" in params else None
        self._flip_at = int(params["flip_at"]) if "flip_at" in params else None
        self._written = 0
        self._powered = True
        self._regs: dict[int, int] = {
            CHIP_DETECT_MAGIC_REG: ESP32_MAGIC,
            # read_mac() packs eFuse words 2 and 1 big-endian and drops the 2-byte CRC.
            EFUSE_RD_REG_BASE + 4: int.from_bytes(mac[2:6], "big"),
            EFUSE_RD_REG_BASE + 8: int.from_bytes(mac[0:2], "big") | (0x5A << 16),
        }
        self._jedec_id = _VENDOR_GIGADEVICE | (0x40 << 8) | (_FLASH_SIZE_IDS[size_mib] << 16)
        self._frame = bytearray()
        self._in_frame = False
        self._escape = False
        self._reply = bytearray()
        self._write_state: tuple[str, int, int] | None = None  # kind, offset, block size
        self._inflate: zlib._Decompress | None = None  # type: ignore[name-defined]
        self._inflate_at = 0
        self.is_open = True

    def close(self) -> None:
        if self.is_open:
            self._flash_path.write_bytes(self._flash)
        self.is_open = False

    # -- the "wire" ---------------------------------------------------------------------------

    @property
    def in_waiting(self) -> int:
        return len(self._reply)

    def read(self, size: int = 1) -> bytes:
        out = bytes(self._reply[:size])
        del self._reply[:size]
        return out

    def write(self, data: bytes) -> int:  # type: ignore[override]
        for byte in bytes(data):
            self._receive(byte)
        return len(data)

    def reset_input_buffer(self) -> None:
        self._reply.clear()

    def reset_output_buffer(self) -> None:
        pass

    def fileno(self) -> int:
        # Not a tty: esptool's reset strategies then warn once that DTR/RTS cannot be set.
        raise OSError(errno.ENOTTY, "fake ESP32 port has no modem lines")

    def _reconfigure_port(self, force_update: bool = False) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_break_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return False

    @property
    def dsr(self) -> bool:
        return False

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return False

    def _receive(self, byte: int) -> None:
        """SLIP framing: 0xC0 delimits, 0xDB 0xDC is 0xC0, 0xDB 0xDD is 0xDB."""
        if byte == 0xC0:
            if self._in_frame and self._frame:
                self._command(bytes(self._frame))
            self._frame.clear()
            self._in_frame = True
            return
        if not self._in_frame:
            return
        if self._escape:
            self._frame.append({0xDC: 0xC0, 0xDD: 0xDB}.get(byte, byte))
            self._escape = False
        elif byte == 0xDB:
            self._escape = True
        else:
            self._frame.append(byte)

    def _send(self, op: int, value: int = 0, data: bytes = b"", status: bytes = _OK) -> None:
        body = data + status
        packet = struct.pack("<BBHI", 1, op, len(body), value) + body
        escaped = packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
        self._reply += b"\xc0" + escaped + b"\xc0"

    # -- the ROM ------------------------------------------------------------------------------

    def _command(self, packet: bytes) -> None:
        if not self._powered or len(packet) < 8:
            return
        direction, op, size, checksum = struct.unpack("<BBHI", packet[:8])
        data = packet[8: 8 + size]
        if direction != 0:
            return
        handler = _HANDLERS.get(op)
        if handler is None:
            self._send(op, status=_INVALID_COMMAND)
            return
        handler(self, op, data, checksum)

    def _sync(self, op: int, data: bytes, checksum: int) -> None:
        for _ in range(8):  # the ROM answers a SYNC eight times
            self._send(op, SYNC_VALUE)

    def _read_reg(self, op: int, data: bytes, checksum: int) -> None:
        (address,) = struct.unpack("<I", data[:4])
        self._send(op, self._regs.get(address, 0) if address != SPI_CMD_REG else 0)

    def _write_reg(self, op: int, data: bytes, checksum: int) -> None:
        address, value, mask, _delay = struct.unpack("<IIII", data[:16])
        old = self._regs.get(address, 0)
        self._regs[address] = (old & ~mask) | (value & mask)
        if address == SPI_CMD_REG and value & SPI_CMD_USR:
            self._spi_user_command(self._regs.get(SPI_USR2_REG, 0) & 0xFF)
        self._send(op)

    def _spi_user_command(self, command: int) -> None:
        if command == 0x9F:  # RDID: JEDEC manufacturer and device id
            self._regs[SPI_W0_REG] = self._jedec_id
        else:  # status registers and the like read as zero: not busy, not protected
            self._regs[SPI_W0_REG] = 0

    def _ack(self, op: int, data: bytes, checksum: int) -> None:
        self._send(op)

    def _flash_begin(self, op: int, data: bytes, checksum: int) -> None:
        erase_size, _blocks, block_size, offset = struct.unpack("<IIII", data[:16])
        if offset + erase_size > len(self._flash):
            self._send(op, status=b"\x01\x06\x00\x00")
            return
        self._flash[offset: offset + erase_size] = b"\xff" * erase_size
        self._write_state = ("plain", offset, block_size)
        self._send(op)

    def _defl_begin(self, op: int, data: bytes, checksum: int) -> None:
        write_size, _blocks, block_size, offset = struct.unpack("<IIII", data[:16])
        if offset + write_size > len(self._flash):
            self._send(op, status=b"\x01\x06\x00\x00")
            return
        self._flash[offset: offset + write_size] = b"\xff" * write_size
        self._write_state = ("deflate", offset, block_size)
        self._inflate = zlib.decompressobj()
        self._inflate_at = offset
        self._send(op)

    def _flash_data(self, op: int, data: bytes, checksum: int) -> None:
        length, seq, _, _ = struct.unpack("<IIII", data[:16])
        block = data[16: 16 + length]
        expected = 0xEF
        for byte in block:
            expected ^= byte
        if self._write_state is None or expected != checksum:
            self._send(op, status=_BAD_CHECKSUM)
            return
        kind, offset, block_size = self._write_state
        if kind == "plain":
            self._program(offset + seq * block_size, block)
        else:
            assert self._inflate is not None
            out = self._inflate.decompress(block)
            self._program(self._inflate_at, out)
            self._inflate_at += len(out)
        if self._powered:
            self._send(op)

    def _program(self, address: int, data: bytes) -> None:
        if self._cut_after is not None and self._written + len(data) > self._cut_after:
            keep = max(0, self._cut_after - self._written)
            self._flash[address: address + keep] = data[:keep]
            self._powered = False  # power cut: half a block landed, no more answers
            return
        self._flash[address: address + len(data)] = data
        self._written += len(data)
        if self._flip_at is not None and address <= self._flip_at < address + len(data):
            self._flash[self._flip_at] ^= 0xFF

    def _flash_md5(self, op: int, data: bytes, checksum: int) -> None:
        address, size, _, _ = struct.unpack("<IIII", data[:16])
        digest = hashlib.md5(self._flash[address: address + size]).hexdigest()
        self._send(op, data=digest.encode())


_HANDLERS = {
    0x08: Serial._sync,
    0x0A: Serial._read_reg,
    0x09: Serial._write_reg,
    0x0B: Serial._ack,  # SPI_SET_PARAMS
    0x0D: Serial._ack,  # SPI_ATTACH
    0x0F: Serial._ack,  # CHANGE_BAUDRATE
    0x02: Serial._flash_begin,
    0x03: Serial._flash_data,
    0x04: Serial._ack,  # FLASH_END
    0x10: Serial._defl_begin,
    0x11: Serial._flash_data,
    0x12: Serial._ack,  # FLASH_DEFL_END
    0x13: Serial._flash_md5,
}
