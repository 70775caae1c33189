"""A real server on 127.0.0.1 (the app under ota_server.connections, as `ota serve` runs it)
and a raw-socket HTTP/1.1 client that writes a request in as many pieces as it is told.

aiohttp's client writes a request in one go and parses answers itself; these tests need the
opposite: bytes split where they choose, and the answer exactly as it came off the wire.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent import futures
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web
from server_support import Backend, FleetKeys, new_data_dir

from ota_server.app import create_app
from ota_server.connections import GuardedAppRunner
from ota_server.settings import Settings

HOST = "127.0.0.1"


@dataclass
class LiveServer:
    settings: Settings
    token: str
    keys: FleetKeys
    port: int
    runner: web.AppRunner

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def open_connections(self) -> int:
        server = self.runner.server
        assert server is not None
        return len(server._open)  # type: ignore[attr-defined]


@asynccontextmanager
async def live_server(directory: Path, backend: Backend, *, keys: FleetKeys | None = None,
                      tls: ssl.SSLContext | None = None,
                      **limits: Any) -> AsyncIterator[LiveServer]:
    """A fresh data directory under `directory` on `backend`, served on 127.0.0.1 (a free
    port, over TLS with `tls`) with the given Limits fields changed; stopped on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = keys or FleetKeys.create(directory)
    settings, token = await new_data_dir(directory, backend)
    settings = replace(settings, root_path=keys.root_path,
                       limits=replace(settings.limits, **limits))
    runner = GuardedAppRunner(create_app(settings), settings.limits, access_log=None,
                              shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0, ssl_context=tls)
        await site.start()
        port = runner.addresses[0][1]
        yield LiveServer(settings, token, keys, port, runner)
    finally:
        await runner.cleanup()


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_answer(raw: bytes) -> RawAnswer:
    """One HTTP/1.1 answer from the bytes read up to the connection's end."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete answer head in {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return RawAnswer(status, headers, rest[:length], raw)


def request_head(method: str, target: str, headers: dict[str, str], *,
                 body_length: int | None) -> bytes:
    """Request line and headers; `Content-Length: body_length`, or chunked when None."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append("Transfer-Encoding: chunked" if body_length is None
                 else f"Content-Length: {body_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunked(body: bytes, pieces: int = 3) -> bytes:
    """`body` in the chunked transfer coding, as `pieces` chunks (fewer if it is shorter)."""
    size = max(1, -(-len(body) // pieces))
    out = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n"
                   for part in (body[i:i + size] for i in range(0, len(body), size)))
    return out + b"0\r\n\r\n"


def split(data: bytes, max_pieces: int) -> list[bytes]:
    """`data` in 1-byte pieces, or in `max_pieces` equal pieces when it is longer."""
    size = max(1, -(-len(data) // max_pieces))
    return [data[i:i + size] for i in range(0, len(data), size)]


async def exchange(port: int, pieces: Sequence[bytes], *, pause: float = 0.0,
                   timeout: float = 10.0) -> RawAnswer:
    """Write `pieces` one by one (`pause` seconds apart, no Nagle: each its own segment) on a
    new connection, then read the answer to the connection's end."""
    reader, writer = await asyncio.open_connection(HOST, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for i, piece in enumerate(pieces):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(piece)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return parse_answer(raw)


@dataclass
class ThreadedServer:
    """A live_server run by an event loop in its own thread, for blocking clients (hypothesis
    examples, which cannot share one async server)."""

    server: LiveServer
    loop: asyncio.AbstractEventLoop

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run `coro` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextmanager
def threaded_server(directory: Path, backend: Backend,
                    **limits: Any) -> Iterator[ThreadedServer]:
    """live_server(directory, backend, **limits) served from a thread until the block ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ready: futures.Future[tuple[LiveServer, asyncio.Event]] = futures.Future()

    async def serve() -> None:
        async with live_server(directory, backend, **limits) as server:
            stop = asyncio.Event()
            ready.set_result((server, stop))
            await stop.wait()

    task = asyncio.run_coroutine_threadsafe(serve(), loop)
    try:
        futures.wait([ready, task], timeout=20, return_when=futures.FIRST_COMPLETED)
        if task.done():
            task.result()  # start-up failed: raise why
        server, stop = ready.result(0)
        try:
            yield ThreadedServer(server, loop)
        finally:
            loop.call_soon_threadsafe(stop.set)
            task.result(20)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(20)
        loop.close()


def send_in_pieces(port: int, pieces: Sequence[bytes], pause: float,
                   timeout: float = 10.0) -> RawAnswer:
    """exchange() for blocking callers."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, piece in enumerate(pieces):
            if i and pause:
                time.sleep(pause)
            sock.sendall(piece)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    return parse_answer(raw)
