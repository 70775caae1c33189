"""An asyncio TCP proxy on 127.0.0.1 in front of a real server that injects network faults.

Boards send one request per connection (`Connection: close`), so the proxy reads one request,
forwards it upstream, reads the whole answer, and then answers the board, either faithfully or
with one fault applied. It records every exchange, so tests can count the bytes that travelled.
It runs its own event loop in a thread because the virtual board under test is blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

FAULTS = (
    "truncate",       # half the body, then a clean close
    "reset",          # half the body, then a TCP reset
    "flip",           # one body byte flipped
    "longer",         # Content-Length and body both longer than the real answer
    "drip",           # the answer one byte at a time, slower than any sane timeout
    "slow",           # the answer at slow_bps bytes a second (a slow but steady link)
    "stall",          # half the body, one byte more after stall_lead_s, then silence (stall_s)
    "404",            # 404 with a JSON error body
    "500",            # 500 with a JSON error body
    "junk_json",      # 200 whose body is not JSON
    "junk_envelope",  # 200 whose body is JSON but no DSSE envelope
    "replace",        # 200 with a body the test supplies (a forged or oversize envelope)
)


@dataclass
class Exchange:
    """One request the proxy answered: what was asked, what the board got."""

    method: str
    path: str
    status: int
    head_bytes: int
    body_bytes: int
    fault: str | None
    request_range: str | None = None
    request: bytes = b""


@dataclass
class _Rule:
    kind: str
    match: str
    times: int
    body: bytes = b""


@dataclass
class FaultProxy:
    upstream_url: str
    drip_delay_s: float = 0.05
    slow_bps: int = 4096
    stall_lead_s: float = 1.5
    stall_s: float = 8.0
    tls: ssl.SSLContext | None = None  # serve boards over TLS (https://) with this context
    exchanges: list[Exchange] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream_url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream URL needs host and port: {self.upstream_url!r}")
        self._up_host = parts.hostname
        self._up_port = parts.port
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    # life cycle -------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    # configuration and accounting --------------------------------------------------------

    def inject(self, kind: str, match: str = "/v1/blobs/", times: int = 1,
               body: bytes = b"") -> None:
        """Apply `kind` to the next `times` requests whose path contains `match`.

        `body` is the answer for "replace".
        """
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        with self._lock:
            self._rules.append(_Rule(kind, match, times, body))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self.exchanges.clear()

    def body_bytes(self, path_part: str = "") -> int:
        """Response body bytes sent to boards for paths containing `path_part`."""
        with self._lock:
            return sum(e.body_bytes for e in self.exchanges if path_part in e.path)

    def wire_bytes(self, path_part: str = "") -> int:
        """Response bytes (head and body) sent to boards for paths containing `path_part`."""
        with self._lock:
            return sum(e.head_bytes + e.body_bytes for e in self.exchanges
                       if path_part in e.path)

    def _take_fault(self, path: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.match in path and rule.times > 0:
                    rule.times -= 1
                    return rule
        return None

    # the proxy --------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = _content_length(head)
            body = await reader.readexactly(length) if length else b""
            path = head.split(b" ", 2)[1]
            answer = await self._forward(head + body)
            rule = self._take_fault(path.decode())
            await self._answer(writer, head + body, answer, rule)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _forward(self, request: bytes) -> bytes:
        up_reader, up_writer = await asyncio.open_connection(self._up_host, self._up_port)
        try:
            up_writer.write(request)
            await up_writer.drain()
            return await asyncio.wait_for(up_reader.read(), 30)
        finally:
            up_writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, request: bytes, answer: bytes,
                      rule: _Rule | None) -> None:
        method, path = (part.decode() for part in request.split(b" ", 2)[:2])
        fault = rule.kind if rule else None
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
        if rule is not None and fault in ("404", "500", "junk_json", "junk_envelope", "replace"):
            status, head, body = _replacement(rule)
        elif fault == "flip" and body:
            body = body[: len(body) // 2] + bytes([body[len(body) // 2] ^ 0x01]) \
                + body[len(body) // 2 + 1:]
        elif fault == "longer":
            extra = b"X" * 64
            head = _with_length(head, len(body) + len(extra))
            body += extra
        head += b"\r\n\r\n"
        sent_body = body
        if fault in ("truncate", "reset", "stall"):
            sent_body = body[: len(body) // 2]
        with self._lock:
            self.exchanges.append(Exchange(method, path, status, len(head), len(sent_body),
                                           fault, _header(request, b"range"), request))
        if fault == "slow":
            whole, piece = head + body, max(1, self.slow_bps // 10)
            for at in range(0, len(whole), piece):
                writer.write(whole[at:at + piece])
                await writer.drain()
                await asyncio.sleep(0.1)
            return
        if fault == "drip":
            for i in range(len(head + body)):
                writer.write((head + body)[i:i + 1])
                await writer.drain()
                await asyncio.sleep(self.drip_delay_s)
            return
        writer.write(head + sent_body)
        await writer.drain()
        if fault == "reset":
            writer.transport.abort()
        elif fault == "stall":
            # The last byte arrives late, just before a client's deadline, then nothing: a
            # client that only times out each read on its own waits a whole timeout more.
            await asyncio.sleep(self.stall_lead_s)
            writer.write(body[len(sent_body):len(sent_body) + 1])
            await writer.drain()
            await asyncio.sleep(self.stall_s)


def _header(head: bytes, wanted: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == wanted:
            return value.strip().decode("latin-1")
    return None


def _content_length(head: bytes) -> int:
    value = _header(head, b"content-length")
    return int(value) if value else 0


def _with_length(head: bytes, length: int) -> bytes:
    lines = [line for line in head.split(b"\r\n")
             if not line.lower().startswith(b"content-length:")]
    lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines)


def _replacement(rule: _Rule) -> tuple[int, bytes, bytes]:
    fault = rule.kind
    if fault == "replace":
        status, body = 200, rule.body
    elif fault == "404":
        status, body = 404, b'{"code": "not_found", "message": "injected 404"}'
    elif fault == "500":
        status, body = 500, b'{"code": "internal", "message": "injected 500"}'
    elif fault == "junk_json":
        status, body = 200, b"{this is not json"
    else:
        status, body = 200, b'{"payloadType": 7, "signatures": "none"}'
    reason = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error"}[status]
    head = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close" % (status, reason, len(body)))
    return status, head, body
