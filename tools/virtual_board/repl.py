"""A raw-REPL endpoint for a virtual board, speaking the bytes mpremote's serial transport expects.

The unix port's own REPL has no raw mode, so the host side plays the REPL protocol and runs the
code in a persistent MicroPython process (standins/_vb_repl.py) mounted on the board's flash.
Protocol, as in mpremote/transport_serial.py and MicroPython's pyexec.c:

- Ctrl-A enters raw REPL: ``raw REPL; CTRL-B to exit\\r\\n>``; Ctrl-B back to the friendly REPL.
- Raw mode: code until Ctrl-D, answered ``OK``; output, ``\\x04``, error text, ``\\x04``, ``>``.
- An empty Ctrl-D soft-reboots: ``OK\\r\\nMPY: soft reboot\\r\\n``, a fresh interpreter, the banner.
- Raw-paste mode (Ctrl-E ``A`` Ctrl-A, as MicroPython's pyexec.c ``do_reader_stdin``): answered
  ``R\\x01``, the flow-control window as 2 bytes little-endian, and ``\\x01`` (a second window is
  free); then ``\\x01`` each time a window of code has been taken in. Ctrl-D ends the code and is
  acknowledged with ``\\x04``; the output, ``\\x04``, error text, ``\\x04``, ``>`` follow as in raw
  mode. Ctrl-C during the transfer ends it with ``\\x04`` and a KeyboardInterrupt. Any other
  raw-paste command is declined with ``R\\x00``.
- Ctrl-C while code runs interrupts it (SIGINT: KeyboardInterrupt in the board code).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tools.virtual_board.power import EXIT_POWER_CUT, EXIT_RESET, FLASH_UMASK

if TYPE_CHECKING:
    from tools.virtual_board.board import VirtualBoard

_AGENT_START_TIMEOUT = 10.0
_READ_CHUNK = 65536

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = b"MicroPython virtual board (mpota); unix port\r\nType Ctrl-D to soft reboot.\r\n"
_CTRL_A, _CTRL_B, _CTRL_C, _CTRL_D, _CTRL_E = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"
# The raw-paste flow-control window: half of MICROPY_REPL_STDIN_BUFFER_MAX, whose default (256,
# py/mpconfig.h) the ESP32 and RP2 ports keep.
PASTE_WINDOW = 128
_PASTE_REQUEST = _CTRL_E + b"A" + _CTRL_A
_PASTE_ENDS = (ord(_CTRL_C), ord(_CTRL_D))


class AgentDied(RuntimeError):
    """The board's interpreter ended while running code (machine.reset() or a fault)."""


class PowerCut(AgentDied):
    """The board lost power (the requested cut point): it stays off until the server closes."""


class ReplAgent:
    """The persistent MicroPython process that REPL code runs in, on the board's flash."""

    def __init__(self, board: VirtualBoard, cut_at: int | None = None) -> None:
        self._board = board
        self._cut_at = cut_at
        self._ops_before = 0  # mutations made by earlier interpreters (before soft reboots)
        self._ops = 0  # mutations the current interpreter reported
        self._scratch = Path(tempfile.mkdtemp(prefix="vboard-repl-"))
        self.powered_off = False
        # Marks the end of code output; random, so board output cannot forge it by accident.
        self._token = "vboard-" + secrets.token_hex(8)
        self._sentinel = b"\x00" + self._token.encode() + b"\x00"
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending = b""
        self._error_left: int | None = None  # bytes of error text still to come after the sentinel
        self._error = b""

    def start(self) -> None:
        """Start a fresh interpreter and wait until it has mounted the flash."""
        if self.powered_off:
            raise PowerCut("the virtual board has no power")
        cut_in = self._cut_at - self.fs_ops if self._cut_at is not None else 0
        env = self._board.environment(
            VB_SENTINEL=self._token, VB_RESET_CAUSE="1", VB_CUT_AT=str(cut_in),
            VB_REPORT=str(self._report),
        )
        self._report.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            self._board.command("_vb_repl"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, cwd=self._board.flash_dir, umask=FLASH_UMASK,
            start_new_session=True,  # a terminal's Ctrl-C stops the server, which stops this
        )
        self._pending, self._error_left, self._error = b"", None, b""
        deadline = time.monotonic() + _AGENT_START_TIMEOUT
        said = b""
        while True:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fileno()], [], [], left)
            chunk = os.read(self.fileno(), _READ_CHUNK) if ready else b""
            if not chunk:
                self.stop()
                raise AgentDied("the virtual board's interpreter did not start: "
                                + said.decode("utf-8", "replace")[-500:])
            output, done = self.feed(chunk)
            said += output
            if done is not None:
                return

    @property
    def running(self) -> bool:
        return self._proc is not None

    @property
    def fs_ops(self) -> int:
        """Filesystem mutations made through this REPL so far (over soft reboots)."""
        return self._ops_before + self._ops

    @property
    def _report(self) -> Path:
        return self._scratch / "report"

    def stop(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        # An interpreter that ended by itself (reset, power cut) reported its final count.
        with contextlib.suppress(OSError, ValueError, IndexError):
            self._ops = int(self._report.read_text().split("\n", 1)[0].split(" ")[1])
        self._ops_before += self._ops
        self._ops = 0
        if code == EXIT_POWER_CUT:
            self.powered_off = True

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def fileno(self) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        return self._proc.stdout.fileno()

    def submit(self, code: bytes, mode: str = "exec") -> None:
        """Send code to run; its output then arrives through read()."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(b"%s %d\n" % (mode.encode(), len(code)) + code)
        self._proc.stdin.flush()

    def interrupt(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)

    def read(self) -> tuple[bytes, bytes | None]:
        """Output of the running code so far, and its error text once it has finished.

        Raises AgentDied when the interpreter ended instead of finishing the code.
        """
        chunk = os.read(self.fileno(), _READ_CHUNK)
        if not chunk:
            assert self._proc is not None
            code = self._proc.wait()
            self.stop()
            if code == EXIT_POWER_CUT:
                raise PowerCut("the virtual board lost power")
            if code == EXIT_RESET:
                raise AgentDied("the virtual board reset (machine.reset) while running this code")
            raise AgentDied(f"the virtual board's interpreter ended (exit status {code})")
        return self.feed(chunk)

    def feed(self, chunk: bytes) -> tuple[bytes, bytes | None]:
        """Split interpreter output into code output and, after the sentinel, the error text."""
        data = self._pending + chunk
        self._pending = b""
        output = b""
        if self._error_left is None:
            at = data.find(self._sentinel)
            if at < 0:
                # Hold back only a tail that may be the start of a sentinel split across reads.
                tail = data.rfind(b"\x00", max(0, len(data) - len(self._sentinel) + 1))
                if tail >= 0 and self._sentinel.startswith(data[tail:]):
                    self._pending = data[tail:]
                    return data[:tail], None
                return data, None
            output, data = data[:at], data[at + len(self._sentinel):]
            newline = data.find(b"\n")
            if newline < 0:
                self._pending = self._sentinel + data
                return output, None
            ops, size = data[:newline].split()
            self._ops, self._error_left, data = int(ops), int(size), data[newline + 1:]
        take = data[: self._error_left]
        self._error += take
        self._error_left -= len(take)
        self._pending = data[len(take):]
        if self._error_left:
            return output, None
        error, self._error, self._error_left = self._error, b"", None
        return output, error


class ReplSession:
    """One client connection's REPL state machine (friendly or raw mode, idle or running code)."""

    def __init__(self, send: Callable[[bytes], None], agent: ReplAgent) -> None:
        self._send = send
        self._agent = agent
        self.raw = False
        self.busy = False
        self._friendly_running = False
        self._line = bytearray()
        self._typeahead = bytearray()
        self._paste_request = b""
        self._paste: bytearray | None = None  # the code of a raw paste being received
        self._window_left = 0  # bytes of the current raw-paste window not yet received

    def on_client(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            if self._paste is not None and not self.busy:
                i = self._on_paste_bytes(data, i)
            else:
                self._on_byte(data[i : i + 1])
                i += 1

    def on_agent_output(self) -> None:
        try:
            output, error = self._agent.read()
        except PowerCut:
            self.busy = False
            raise
        except AgentDied as died:
            self._agent.start()
            output, error = b"", f"{died}\n".encode()
        if output:
            self._send(output.replace(b"\n", b"\r\n") if self._friendly_running else output)
        if error is not None:
            self._finish(error)

    def on_hangup(self) -> None:
        if self.busy:  # the client left mid-command: start the next client on a clean board
            self._agent.restart()
            self.busy = False

    def _on_byte(self, byte: bytes) -> None:
        if self.busy:
            if byte == _CTRL_C:
                self._agent.interrupt()
            else:  # typed ahead: handled once the running code has finished
                self._typeahead += byte
            return
        if self._paste_request or (byte == _CTRL_E and self.raw and not self._line):
            self._on_paste_request(byte)
        elif byte == _CTRL_A:
            self.raw, self._line = True, bytearray()
            self._send(RAW_BANNER + b">")
        elif byte == _CTRL_B:
            self.raw, self._line = False, bytearray()
            self._send(b"\r\n" + FRIENDLY_BANNER + b">>> ")
        elif byte == _CTRL_C:
            self._line = bytearray()
            if not self.raw:
                self._send(b"\r\nKeyboardInterrupt\r\n>>> ")
        elif byte == _CTRL_D:
            self._on_end_of_input()
        elif self.raw:
            self._line += byte
        else:
            self._on_friendly_byte(byte)

    def _on_paste_request(self, byte: bytes) -> None:
        self._paste_request += byte
        if len(self._paste_request) < 3:
            return
        request, self._paste_request = self._paste_request, b""
        if request != _PASTE_REQUEST:  # Ctrl-E, a command other than 'A', Ctrl-A
            self._send(b"R\x00")
            return
        # The window size says one window is free; the \x01 after it, a second one.
        self._send(b"R\x01" + struct.pack("<H", PASTE_WINDOW) + b"\x01")
        self._paste, self._window_left = bytearray(), PASTE_WINDOW

    def _on_paste_bytes(self, data: bytes, start: int) -> int:
        """Take raw-paste code from data[start:] up to its end (Ctrl-D) or an interrupt
        (Ctrl-C); returns the index of the first byte not taken."""
        assert self._paste is not None
        end = len(data)
        for stop in _PASTE_ENDS:
            at = data.find(stop, start, end)
            if at >= 0:
                end = at
        code = data[start:end]
        self._paste += code
        # One \x01 per window taken in, as the firmware's reader sends it byte by byte.
        taken = len(code)
        freed = 0
        while taken >= self._window_left:
            taken -= self._window_left
            self._window_left = PASTE_WINDOW
            freed += 1
        self._window_left -= taken
        if freed:
            self._send(b"\x01" * freed)
        if end == len(data):
            return end
        code, self._paste = bytes(self._paste), None
        self._send(b"\x04")  # the end of the code, acknowledged
        if data[end : end + 1] == _CTRL_C:
            self._send(b"\x04Traceback (most recent call last):\nKeyboardInterrupt: \n\x04>")
        else:
            self._run(code, "exec")
        return end + 1

    def _on_end_of_input(self) -> None:
        if self.raw and self._line:
            self._send(b"OK")
            self._run(bytes(self._line), "exec")
        elif not self._line:  # an empty Ctrl-D, in either mode, soft-reboots the board
            self._soft_reboot()

    def _soft_reboot(self) -> None:
        self._send(b"OK\r\nMPY: soft reboot\r\n" if self.raw else b"\r\nMPY: soft reboot\r\n")
        self._agent.restart()
        self._send(RAW_BANNER + b">" if self.raw else FRIENDLY_BANNER + b">>> ")

    def _on_friendly_byte(self, byte: bytes) -> None:
        if byte in (b"\r", b"\n"):
            self._send(b"\r\n")
            line, self._line = bytes(self._line), bytearray()
            if line.strip():
                self._friendly_running = True
                self._run(line, "single")
            else:
                self._send(b">>> ")
        elif byte in (b"\x7f", b"\x08"):
            if self._line:
                self._line = self._line[:-1]
                self._send(b"\x08 \x08")
        elif byte >= b" ":
            self._line += byte
            self._send(byte)

    def _run(self, code: bytes, mode: str) -> None:
        self._line = bytearray()
        self.busy = True
        self._agent.submit(code, mode)

    def _finish(self, error: bytes) -> None:
        self.busy = False
        if self._friendly_running:
            self._friendly_running = False
            self._send(error.replace(b"\n", b"\r\n") + b">>> ")
        else:
            self._send(b"\x04" + error + b"\x04>")
        typeahead, self._typeahead = bytes(self._typeahead), bytearray()
        self.on_client(typeahead)


class ReplServer:
    """Serves one board's raw REPL on 127.0.0.1, one client at a time (like a serial port)."""

    def __init__(self, board: VirtualBoard, port: int = 0, cut_at: int | None = None) -> None:
        self._board = board
        self._requested_port = port
        self._agent = ReplAgent(board, cut_at)
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> int:
        """Start the interpreter and the listener; returns the TCP port."""
        self._agent.start()
        try:
            self._listener = socket.create_server(("127.0.0.1", self._requested_port))
        except OSError:
            self._agent.stop()
            raise
        self.port = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(
            target=self._serve, name=f"vboard-repl-{self.port}", daemon=True
        )
        self._thread.start()
        return self.port

    def close(self) -> None:
        """Stop serving, drop any client and stop the interpreter."""
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r, self._wake_w = -1, -1
        self._agent.close()

    @property
    def fs_ops(self) -> int:
        """Filesystem mutations the board made through this endpoint so far."""
        return self._agent.fs_ops

    @property
    def powered_off(self) -> bool:
        """True once the requested power cut happened; connections are then dropped at once."""
        return self._agent.powered_off

    def __enter__(self) -> ReplServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        assert self._listener is not None
        while True:
            ready, _, _ = select.select([self._listener.fileno(), self._wake_r], [], [])
            if self._wake_r in ready:
                return
            conn, _ = self._listener.accept()
            with conn:
                if self._agent.powered_off:
                    continue  # no power: the "port" drops every connection
                try:
                    if not self._agent.running:
                        self._agent.start()  # after an interpreter that failed to restart
                    if self._session(conn):
                        return
                except AgentDied:  # a power cut, or no interpreter: drop this client
                    continue
                except OSError:  # the client vanished mid-reply: serve the next one
                    with contextlib.suppress(AgentDied, OSError):
                        self._agent.restart()

    def _session(self, conn: socket.socket) -> bool:
        """Serve one client until it hangs up; True when the server is closing."""
        session = ReplSession(conn.sendall, self._agent)
        # A serial link delivers each byte as it is written. TCP holds small segments back:
        # Nagle here, and on the client's side until this end ACKs, which a delayed ACK puts
        # off by up to 40 ms: two such waits per exec (the code, then its Ctrl-D). So no Nagle,
        # and an ACK at once after every read (Linux resets TCP_QUICKACK as it goes).
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            watched = [conn.fileno(), self._wake_r]
            if session.busy:
                watched.append(self._agent.fileno())
            ready, _, _ = select.select(watched, [], [])
            if self._wake_r in ready:
                return True
            if session.busy and self._agent.fileno() in ready:
                session.on_agent_output()
            if conn.fileno() in ready:
                data = conn.recv(4096)
                if not data:
                    session.on_hangup()
                    return False
                _quick_ack(conn)
                session.on_client(data)


def _quick_ack(conn: socket.socket) -> None:
    """ACK what was read now rather than after the delayed-ACK timer (Linux only)."""
    quick_ack = getattr(socket, "TCP_QUICKACK", None)
    if quick_ack is not None:
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, quick_ack, 1)
