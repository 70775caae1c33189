"""The mpremote write method: copy a board's files over its raw REPL with mpremote's own
transport, then have the board hash every file (SHA-256) and compare with what was sent.

Works on any serial port mpremote can open, including `socket://127.0.0.1:PORT` (the virtual
board). The file contents (one of them is the board's private key) travel only over that link.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

Progress = Callable[[int, int], None]
_CHUNK = 1024  # bytes per raw-REPL exec when writing; bounded by the board's RAM, not ours


class WriteError(RuntimeError):
    """A copy failed or a file on the board does not hash to what was sent; names the file."""


class MpremoteBoard:
    """A board reached through mpremote's serial transport, in raw-REPL mode."""

    def __init__(self, port: str, timeout_s: float = 10.0) -> None:
        try:
            self._transport = SerialTransport(port, baudrate=115200)
            self._transport.enter_raw_repl(soft_reset=False, timeout_overall=timeout_s)
        except (TransportError, OSError) as err:
            raise WriteError(f"cannot reach a MicroPython REPL on {port}: {err}") from err
        self.port = port

    def close(self) -> None:
        try:
            self._transport.exit_raw_repl()
        except (TransportError, OSError):
            pass  # the board may already be gone (power cut, reset)
        finally:
            self._transport.close()

    def __enter__(self) -> MpremoteBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def eval(self, expression: str) -> object:
        """Evaluate on the board; `import x;` prefixes are allowed via `exec` first."""
        try:
            return self._transport.eval(expression)
        except (TransportError, OSError) as err:
            raise WriteError(f"board did not answer {expression!r}: {err}") from err

    def exec(self, code: str) -> bytes:
        try:
            return bytes(self._transport.exec(code))
        except (TransportError, OSError) as err:
            raise WriteError(f"board failed running set-up code: {_short(err)}") from err

    def unique_id(self) -> bytes:
        """`machine.unique_id()`: the chip's own serial number (the MAC on ESP32)."""
        self.exec("import machine")
        value = self.eval("machine.unique_id()")
        if not isinstance(value, bytes) or not value:
            raise WriteError(f"machine.unique_id() gave {value!r}, not bytes")
        return value

    def exists(self, path: str) -> bool:
        try:
            return bool(self._transport.fs_exists(path))
        except (TransportError, OSError) as err:
            raise WriteError(f"cannot stat {path} on the board: {_short(err)}") from err

    def write_files(self, files: dict[str, bytes], progress: Progress | None = None) -> None:
        """Copy `files` (board path -> contents), creating directories, then verify each one.

        Raises WriteError naming the first file that failed to copy or to verify.
        """
        total = sum(len(d) for d in files.values())
        done = 0
        made: set[str] = {""}
        for path, data in sorted(files.items()):
            parts = path.strip("/").split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    self._mkdir("/" + directory)
                    made.add(directory)
            try:
                self._transport.fs_writefile("/" + "/".join(parts), data, chunk_size=_CHUNK)
            except (TransportError, OSError) as err:
                raise WriteError(f"copying {path} to the board failed: {_short(err)}") from err
            done += len(data)
            if progress:
                progress(done, total)
        for path, data in sorted(files.items()):
            self.verify(path, data)

    def verify(self, path: str, data: bytes) -> None:
        """Raise WriteError unless the board's file at `path` hashes to SHA-256(`data`)."""
        try:
            seen = self._transport.fs_hashfile("/" + path.strip("/"), "sha256")
        except (TransportError, OSError) as err:
            raise WriteError(f"hashing {path} on the board failed: {_short(err)}") from err
        if seen != hashlib.sha256(data).digest():
            raise WriteError(f"{path} on the board does not match what was written "
                             f"(sha256 {bytes(seen).hex()[:16]}…)")

    def soft_reset(self) -> None:
        """Ctrl-D in the friendly REPL: the board reboots into its new boot.py."""
        try:
            self._transport.exit_raw_repl()
            self._transport.serial.write(b"\x04")
        except (TransportError, OSError) as err:
            raise WriteError(f"soft reset failed: {err}") from err

    def _mkdir(self, path: str) -> None:
        if self._transport.fs_isdir(path):
            return
        try:
            self._transport.fs_mkdir(path)
        except (TransportError, OSError) as err:
            raise WriteError(f"creating {path} on the board failed: {_short(err)}") from err


def _short(err: BaseException) -> str:
    """The last line of a board traceback is the useful one."""
    if isinstance(err, TransportExecError):
        lines = [ln for ln in err.error_output.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else str(err)
    return str(err) or type(err).__name__
