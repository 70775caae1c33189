"""Blob and pack sending: the direct sendfile of what the socket takes at once, then the rest
through loop.sendfile. A small send buffer and a slow reader force the second half, so a wrong
offset or count in either part shows up as wrong bytes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import struct
import time
from typing import Any

import pytest
from server_support import ServerEnv, SimBoard

from ota_server import blob_answers, state

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


def _small_send_buffer(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Give the server's sockets a small send buffer, as on a slow link (loopback would take
    megabytes at once); the (sent, count) of every direct sendfile from now on."""
    direct: list[tuple[int, int]] = []
    real = blob_answers._sendfile_now

    def recording(transport, fobj, offset, count):  # the real function, its results noted
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                      16384)
        sent = real(transport, fobj, offset, count)
        direct.append((sent, count))
        return sent

    monkeypatch.setattr(blob_answers, "_sendfile_now", recording)
    return direct


def _request(board: SimBoard, path: str, wanted: tuple[int, int] | None) -> bytes:
    """A signed GET of `path` as raw bytes, with `Range: bytes=a-b` for `wanted`."""
    auth = board.auth("GET", path)["Authorization"]
    extra = b"" if wanted is None else f"Range: bytes={wanted[0]}-{wanted[1]}\r\n".encode()
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n".encode() + extra
            + b"Connection: close\r\n\r\n")


@pytest.mark.parametrize("wanted", [None, (1000, 2_500_000)])
async def test_a_blob_larger_than_the_socket_takes_arrives_whole(
        env: ServerEnv, monkeypatch: pytest.MonkeyPatch, wanted: tuple[int, int] | None) -> None:
    board = await env.add_board(SimBoard("slow-1"))
    sha = hashlib.sha256(BLOB).hexdigest()
    put = await env.client.put(f"/v1/blobs/{sha}", data=BLOB, headers=env.bearer)
    assert put.status == 201
    direct = _small_send_buffer(monkeypatch)
    request = _request(board, f"/v1/blobs/{sha}", wanted)
    port = env.client.server.port
    head, body = await asyncio.get_running_loop().run_in_executor(None, _slow_get, port, request)
    expected = BLOB if wanted is None else BLOB[wanted[0]:wanted[1] + 1]
    assert head.startswith(b"HTTP/1.1 200" if wanted is None else b"HTTP/1.1 206"), head
    assert len(body) == len(expected)
    assert body == expected
    # the case under test happened: the socket took only part of it at once
    assert len(direct) == 1 and direct[0][0] < direct[0][1] == len(expected), direct


PACK = (os.urandom(1024 * 1024 + 5), os.urandom(1024 * 1024 - 3))


@pytest.mark.parametrize("wanted", [None, (1000, 1_500_000)])
async def test_a_pack_of_two_large_blobs_arrives_whole_file_by_file(
        env: ServerEnv, monkeypatch: pytest.MonkeyPatch, wanted: tuple[int, int] | None) -> None:
    board = await env.add_board(SimBoard("slow-pack"))
    ids = await env.put_blobs(*PACK)
    direct = _small_send_buffer(monkeypatch)
    request = _request(board, f"/v1/device/pack?blobs={ids[0]},{ids[1]}", wanted)
    port = env.client.server.port
    head, body = await asyncio.get_running_loop().run_in_executor(None, _slow_get, port, request)
    whole = PACK[0] + PACK[1]
    expected = whole if wanted is None else whole[wanted[0]:wanted[1] + 1]
    assert head.startswith(b"HTTP/1.1 200" if wanted is None else b"HTTP/1.1 206"), head
    assert len(body) == len(expected)
    assert body == expected
    # one span per file, each only the part of it inside the range; the first one did not fit
    # the socket at once, so loop.sendfile carried on from where the direct call stopped
    first = len(PACK[0]) - (0 if wanted is None else wanted[0])
    assert [count for _, count in direct] == [first, len(expected) - first], direct
    assert direct[0][0] < direct[0][1], direct
    # Counted once the last byte is handed to the kernel, which the client may read before
    # the server's handler runs again: wait (bounded) for that turn of the loop.
    metrics = env.app[state.METRICS]
    for _ in range(200):
        if metrics.value("mpota_blob_bytes_served_total"):
            break
        await asyncio.sleep(0.01)
    assert metrics.value("mpota_blob_bytes_served_total") == len(expected)


def _hang_up_after_the_head(port: int, request: bytes) -> bytes:
    """Send `request`, read the answer's head and a little of its body, then hang up."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.settimeout(20)
        sock.connect(("127.0.0.1", port))
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        # unread bytes left in the receive buffer make close() send a reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return data


async def test_pack_files_are_closed_when_the_board_hangs_up_mid_body(
        env: ServerEnv, monkeypatch: pytest.MonkeyPatch, opened: list[Any],
        caplog: pytest.LogCaptureFixture) -> None:
    board = await env.add_board(SimBoard("gone"))
    ids = await env.put_blobs(*PACK)
    _small_send_buffer(monkeypatch)
    request = _request(board, f"/v1/device/pack?blobs={ids[0]},{ids[1]}", None)
    port = env.client.server.port
    head = await asyncio.get_running_loop().run_in_executor(None, _hang_up_after_the_head,
                                                            port, request)
    assert head.startswith(b"HTTP/1.1 200"), head
    for _ in range(200):  # the server notices the reset on its next write
        if len(opened) == 2 and all(f.closed for f in opened):
            break
        await asyncio.sleep(0.025)
    assert len(opened) == 2 and all(f.closed for f in opened), opened
    # a cut answer is not counted as served, and it is no server error
    assert env.app[state.METRICS].value("mpota_blob_bytes_served_total") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records
    assert (await env.client.get("/healthz")).status == 200
