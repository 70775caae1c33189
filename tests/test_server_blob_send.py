"""Blob sending: the direct sendfile of what the socket takes at once, then the rest through
loop.sendfile. A small send buffer and a slow reader force the second half, so a wrong offset
or count in either part shows up as wrong bytes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time

import pytest
from server_support import ServerEnv, SimBoard

from ota_server import routes_device

BLOB = os.urandom(3 * 1024 * 1024 + 17)


def _slow_get(port: int, request: bytes) -> tuple[bytes, bytes]:
    """(head, body) read through a small receive buffer, pausing before reading."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.settimeout(20)
        sock.connect(("127.0.0.1", port))
        sock.sendall(request)
        time.sleep(0.3)  # the server's first sendfile meets a full window
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return head, body


@pytest.mark.parametrize("wanted", [None, (1000, 2_500_000)])
async def test_a_blob_larger_than_the_socket_takes_arrives_whole(
        env: ServerEnv, monkeypatch: pytest.MonkeyPatch, wanted: tuple[int, int] | None) -> None:
    board = await env.add_board(SimBoard("slow-1"))
    sha = hashlib.sha256(BLOB).hexdigest()
    put = await env.client.put(f"/v1/blobs/{sha}", data=BLOB, headers=env.bearer)
    assert put.status == 201
    direct: list[tuple[int, int]] = []
    real = routes_device._sendfile_now

    def recording(transport, fobj, offset, count):  # the real function, its results noted
        # a small send buffer, as on a slow link (loopback would take megabytes at once)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                      16384)
        sent = real(transport, fobj, offset, count)
        direct.append((sent, count))
        return sent

    monkeypatch.setattr(routes_device, "_sendfile_now", recording)
    path = f"/v1/blobs/{sha}"
    auth = board.auth("GET", path)["Authorization"]
    extra = b"" if wanted is None else f"Range: bytes={wanted[0]}-{wanted[1]}\r\n".encode()
    request = (f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n".encode() + extra
               + b"Connection: close\r\n\r\n")
    port = env.client.server.port
    head, body = await asyncio.get_running_loop().run_in_executor(None, _slow_get, port, request)
    expected = BLOB if wanted is None else BLOB[wanted[0]:wanted[1] + 1]
    assert head.startswith(b"HTTP/1.1 200" if wanted is None else b"HTTP/1.1 206"), head
    assert len(body) == len(expected)
    assert body == expected
    # the case under test happened: the socket took only part of it at once
    assert len(direct) == 1 and direct[0][0] < direct[0][1] == len(expected), direct
