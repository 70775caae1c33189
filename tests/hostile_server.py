"""A hostile HTTP(S) server on 127.0.0.1 and a MicroPython process that makes requests to it.

The server answers every connection with the `Answer` the test set last: raw bytes in pieces,
each after its own pause, then a close, a reset, or silence. Over TLS it can drip its own
handshake. `BoardHttp` keeps one MicroPython process running `ota.http.request` and the
client's body reader (`ota.client._save`) for many requests, one JSON line per request.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOARD_DIR = Path(__file__).resolve().parent.parent / "bootloader_py"


@dataclass(frozen=True)
class Answer:
    """What the server sends: `pieces` as (pause before it in seconds, bytes), then `end`.

    `end`: "close" (a clean FIN), "reset" (RST), or "hold" (silence for `hold_s`, then close).
    `handshake_drip_s`: over TLS, the pause between the bytes of the server's handshake
    (0: sent as it comes)."""

    pieces: tuple[tuple[float, bytes], ...]
    end: str = "close"
    hold_s: float = 0.0
    handshake_drip_s: float = 0.0

    @property
    def data(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces)

    def __repr__(self) -> str:  # short: a flood of pieces must not flood a failure's report
        shown = ", ".join(f"({pause}, {piece[:80]!r}{'…' if len(piece) > 80 else ''})"
                          for pause, piece in self.pieces[:12])
        more = f", … {len(self.pieces) - 12} more" if len(self.pieces) > 12 else ""
        return (f"Answer(({shown}{more}), end={self.end!r}, hold_s={self.hold_s}, "
                f"handshake_drip_s={self.handshake_drip_s})")


def tls_context(tmp: Path) -> ssl.SSLContext:
    """A server context for 127.0.0.1 whose certificate a throw-away CA signed; the CA's DER is
    tmp/server-ca.der (tests/tls_support.py), which the board is given (`ca=` of request)."""
    from tls_support import server_tls

    return server_tls(tmp).context


class _Plain:
    """The connection's byte channel without TLS."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def handshake(self, drip_s: float) -> None:
        pass

    def recv(self) -> bytes:
        return self.conn.recv(4096)

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)


class _Tls:
    """TLS through memory BIOs, so the handshake's own bytes can be dripped."""

    def __init__(self, conn: socket.socket, context: ssl.SSLContext) -> None:
        self.conn = conn
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def _flush(self, drip_s: float = 0.0) -> None:
        data = self.outgoing.read()
        if not drip_s:
            self.conn.sendall(data)
            return
        for i in range(len(data)):
            self.conn.sendall(data[i:i + 1])
            time.sleep(drip_s)

    def _more(self) -> None:
        got = self.conn.recv(4096)
        if not got:
            raise ConnectionError("peer closed")
        self.incoming.write(got)

    def handshake(self, drip_s: float) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush(drip_s)
                self._more()
                continue
            self._flush(drip_s)
            return

    def recv(self) -> bytes:
        while True:
            try:
                return self.tls.read(4096)
            except ssl.SSLWantReadError:
                self._more()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()


@dataclass
class HostileServer:
    """Threaded server: every connection gets `answer` (set it before each request)."""

    tls: ssl.SSLContext | None = None
    ca_path: Path | None = None  # the DER of the CA that signed tls's certificate, for boards
    answer: Answer = field(default_factory=lambda: Answer(((0.0, b""),)))
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0

    def __enter__(self) -> HostileServer:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.answer), daemon=True).start()

    def _serve(self, conn: socket.socket, answer: Answer) -> None:
        conn.settimeout(30)
        channel: _Plain | _Tls = _Plain(conn) if self.tls is None else _Tls(conn, self.tls)
        try:
            channel.handshake(answer.handshake_drip_s)
            head = b""
            while b"\r\n\r\n" not in head:
                got = channel.recv()
                if not got:
                    return
                head += got
            self.requests.append(head)
            for pause, piece in answer.pieces:
                if pause:
                    time.sleep(pause)
                if piece:
                    channel.send(piece)
            if answer.end == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif answer.end == "hold":
                time.sleep(answer.hold_s)
        except (OSError, ssl.SSLError, ConnectionError):
            pass  # the board gave up first: what these tests expect of it
        finally:
            with contextlib.suppress(OSError):
                conn.close()


# The board side: requests the answer, then reads its body as the client reads a check-in's
# envelope or a root (client._save, at most client.MAX_ENVELOPE bytes, into the file `dest`).
DRIVER = """
import sys, json, time
from ota import client, http
from ota.fail import HttpError, UpdateFailed
buf = memoryview(bytearray(1024))
while True:
    line = sys.stdin.readline()
    if not line:
        break
    cmd = json.loads(line)
    if cmd.get("ca"):
        from ota import tlsca
        tlsca.CA_PATH = cmd["ca"]  # a board's /ota_id/ca.der, here in the test's directory
    out = {}
    t0 = time.ticks_ms()
    try:
        resp = http.request(cmd["url"], "GET", "/v1/device/root/2", "", b"", cmd["timeout"])
        try:
            out["status"] = resp.status
            out["length"] = resp.length
            client._save(resp, cmd["dest"], buf, "answer")
            out["saved"] = True
        finally:
            resp.close()
    except (HttpError, UpdateFailed) as e:
        out["error"] = e.__class__.__name__ + ": " + str(e)
    except Exception as e:
        out["crash"] = e.__class__.__name__ + ": " + str(e)
    out["ms"] = time.ticks_diff(time.ticks_ms(), t0)
    print(json.dumps(out))
"""


class BoardHttp:
    """One MicroPython process making requests with the board's own HTTP client."""

    def __init__(self, micropython: str, work: Path) -> None:
        self.work = work
        self.micropython = micropython
        self._ready = threading.Condition()
        self._start()

    def _start(self) -> None:
        env = dict(os.environ, MICROPYPATH=str(BOARD_DIR))
        self.proc = subprocess.Popen([self.micropython, "-c", DRIVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     cwd=self.work, env=env, text=True, bufsize=1)
        self._lines: list[str] = []
        threading.Thread(target=self._read, args=(self.proc, self._lines), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str], lines: list[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._ready:
                lines.append(line)
                self._ready.notify_all()
        with self._ready:
            lines.append("")  # the process ended
            self._ready.notify_all()

    def request(self, url: str, timeout_s: float, dest: str, wait_s: float,
                ca: Path | None = None) -> dict[str, Any]:
        """One request; its result, or {"hung": True} when none came within wait_s (the
        process is then killed, and the next request starts a new one)."""
        if self.proc.poll() is not None:
            self._start()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"url": url, "timeout": timeout_s, "dest": dest,
                                          "ca": str(ca) if ca else None}) + "\n")
        self.proc.stdin.flush()
        lines = self._lines
        with self._ready:
            if not self._ready.wait_for(lambda: lines, timeout=wait_s):
                self.close()
                return {"hung": True}
            line = lines.pop(0)
        if not line.startswith("{"):
            self.close()
            return {"crash": line + "".join(lines)}
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
