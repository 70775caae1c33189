"""The mpremote write method: copy a board's files over its raw REPL with mpremote's own
transport, then have the board hash every file (SHA-256) and compare with what was sent.

Works on any serial port mpremote can open, including `socket://127.0.0.1:PORT` (the virtual
board). The file contents (one of them is the board's private key) travel only over that link.

Why not `fs_writefile`: it sends `repr()` of 256-byte chunks, one exec each, which is about 3.5
bytes on the wire per byte of file, and every exec costs a round trip (10 ms per 256 bytes
without raw-paste). Here a file goes as base64 in 2 KiB chunks, the first chunk in the same exec
that opens the file, and one exec hashes every file at the end: a board's 20 files take about
25 execs instead of about 200. The board decodes each chunk into one small allocation.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable

from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

Progress = Callable[[int, int], None]
_CHUNK = 2048  # file bytes per raw-REPL exec: ~2.7 KB of base64 plus 2 KB decoded on the board
_HASH_BUFFER = 512  # the board hashes through one buffer of this size

# Runs on the board: SHA-256 of each listed file through one preallocated buffer, one JSON
# object per line ({"p": path, "h": hex} or {"p": path, "e": error}).
_HASH_ALL = """
import hashlib, binascii, json
def _h(p, b=memoryview(bytearray(%d))):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        while True:
            n = f.readinto(b)
            if not n:
                break
            h.update(b[:n])
    return binascii.hexlify(h.digest()).decode()
for _p in %s:
    try:
        print(json.dumps({'p': _p, 'h': _h(_p)}))
    except OSError as e:
        print(json.dumps({'p': _p, 'e': str(e)}))
"""


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

    def implementation_version(self) -> object:
        """`sys.implementation.version` as the board reports it (the caller checks its shape)."""
        expression = "__import__('sys').implementation.version"
        try:
            return self._transport.eval(expression)
        except (TransportError, OSError, ValueError, SyntaxError) as err:
            raise WriteError(f"board did not answer {expression!r}: {_short(err)}") from err

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
        files = {"/" + path.strip("/"): data for path, data in files.items()}
        directories = sorted({path.rsplit("/", 1)[0] for path in files} - {""},
                             key=lambda d: d.count("/"))
        made = _with_parents(directories)
        if made:
            self.exec(f"import os\nfor d in {made!r}:\n try:\n  os.mkdir(d)\n"
                      f" except OSError:\n  pass")
        total = sum(len(d) for d in files.values())
        batch = _Batch()
        for path, data in sorted(files.items()):
            batch.add(f"f=open({path!r},'wb')", 0, path)
            for offset in range(0, len(data), _CHUNK):
                chunk = data[offset: offset + _CHUNK]
                if batch.size + len(chunk) > _CHUNK:
                    self._run_batch(batch, total, progress)
                batch.add(f"f.write(a({base64.b64encode(chunk).decode()!r}))", len(chunk), path)
            batch.add("f.close()", 0, path)
        self._run_batch(batch, total, progress)
        self.verify_all(files)

    def _run_batch(self, batch: _Batch, total: int, progress: Progress | None) -> None:
        """Send the batched statements as one exec (small files share one round trip)."""
        if not batch.lines:
            return
        try:
            self._transport.exec("from binascii import a2b_base64 as a\n" + "\n".join(batch.lines))
        except (TransportError, OSError) as err:
            raise WriteError(f"copying {batch.paths[-1]} to the board failed: "
                             f"{_short(err)}") from err
        batch.sent += batch.size
        batch.lines, batch.paths, batch.size = [], [], 0
        if progress:
            progress(batch.sent, total)

    def verify_all(self, files: dict[str, bytes]) -> None:
        """Raise WriteError unless every board file hashes to SHA-256 of what was sent."""
        paths = sorted(files)
        output = self.exec(_HASH_ALL % (_HASH_BUFFER, repr(paths)))
        seen: dict[str, str] = {}
        for line in output.decode("utf-8", "replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                seen[entry["p"]] = entry.get("h") or "error: " + entry.get("e", "?")
        for path in paths:
            expected = hashlib.sha256(files[path]).hexdigest()
            if seen.get(path) != expected:
                found = seen.get(path, "no answer")
                raise WriteError(f"{path} on the board does not match what was written "
                                 f"(board: {found[:24]})")

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



class _Batch:
    """Statements waiting to go to the board in one exec, and how many file bytes they carry."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.paths: list[str] = []
        self.size = 0
        self.sent = 0

    def add(self, line: str, size: int, path: str) -> None:
        self.lines.append(line)
        self.paths.append(path)
        self.size += size


def _with_parents(directories: list[str]) -> list[str]:
    """Every directory and its parents, parents first: `/a/b` -> `/a`, `/a/b`."""
    out: list[str] = []
    for directory in directories:
        parts = directory.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            path = "/" + "/".join(parts[:depth])
            if path not in out:
                out.append(path)
    return out


def _short(err: BaseException) -> str:
    """The last line of a board traceback is the useful one."""
    if isinstance(err, TransportExecError):
        lines = [ln for ln in err.error_output.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else str(err)
    return str(err) or type(err).__name__
