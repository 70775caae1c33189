"""Time bounds and the connection cap against a real server on 127.0.0.1: slow heads, slow
bodies, idle connections, more connections than the cap; and the settings that set them."""

from __future__ import annotations

import asyncio
import collections
import gc
import hashlib
import json
import logging
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from server_framing_support import (
    HOST,
    LiveServer,
    RawAnswer,
    exchange,
    live_server,
    parse_answer,
    request_head,
)
from server_support import Backend, FleetKeys, SimBoard, served_blob_dir

from ota_server import state
from ota_server.connections import event_loop_factory
from ota_server.settings import EVENT_LOOPS, Limits, SettingsError, load_settings
from ota_server.tls import ServerTls
from tools.cli import main as cli_main
from tools.local_server import LocalServer


@pytest.fixture(scope="module", params=EVENT_LOOPS)
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Each test here on both event loops `ota serve` runs on (--event-loop): uvloop, the
    default, and asyncio's own. The server, and the test's clients with it, run on it."""
    if request.param == "asyncio":
        return asyncio.DefaultEventLoopPolicy()
    import uvloop

    return uvloop.EventLoopPolicy()


SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 2000


async def trickle(port: int, data: bytes, interval: float, give_up: float) -> tuple[float, bytes]:
    """Send `data` one byte every `interval` seconds until the server ends the connection;
    (seconds until it did, what it sent). Raises TimeoutError after `give_up` seconds."""
    reader, writer = await asyncio.open_connection(HOST, port)
    started = time.monotonic()  # connected (a burst past the listen backlog waits for it)
    received = b""
    try:
        for byte in data:
            if time.monotonic() - started > give_up:
                raise TimeoutError(f"still open after {give_up} s")
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            try:
                # read(n), not read(): a read() cancelled by the timeout loses what it had read
                # so far when the answer and the close come in two turns of the loop (uvloop)
                first = await asyncio.wait_for(reader.read(65536), interval)
            except TimeoutError:
                continue
            except ConnectionError:
                break
            received = first + await _rest(reader, give_up)  # the server answered and closes
            break
        else:
            received = await asyncio.wait_for(reader.read(), give_up)
    finally:
        writer.close()
    return time.monotonic() - started, received


async def _rest(reader: asyncio.StreamReader, give_up: float) -> bytes:
    """What the server sends until it closes (or resets) the connection."""
    try:
        return await asyncio.wait_for(reader.read(), give_up)
    except ConnectionError:
        return b""


async def _register(server: LiveServer, board: SimBoard) -> None:
    body = json.dumps(board.registration()).encode()
    head = request_head("POST", "/v1/devices", server.bearer, body_length=len(body))
    assert (await exchange(server.port, [head + body])).status == 201


async def _checkin(server: LiveServer, board: SimBoard) -> RawAnswer:
    body = board.checkin_body()
    head = request_head("POST", "/v1/device/checkin",
                        board.auth("POST", "/v1/device/checkin", body), body_length=len(body))
    return await exchange(server.port, [head + body], timeout=5)


async def test_slow_heads_are_closed_after_the_header_timeout_while_a_board_is_served(
        tmp_path: Path, backend: Backend) -> None:
    async with live_server(tmp_path, backend, header_timeout=2.0) as server:
        board = SimBoard("served-board")
        await _register(server, board)
        attack = [asyncio.create_task(trickle(server.port, SLOW_HEAD, 0.25, give_up=8))
                  for _ in range(200)]
        await _until(lambda: server.open_connections() >= 200)
        answer = await _checkin(server, board)  # a board still gets its answer meanwhile
        assert answer.status == 204, answer.body
        results = await asyncio.gather(*attack)
    closed_after = sorted(elapsed for elapsed, _ in results)
    # none before the header timeout (2 s), all soon after it
    assert closed_after[0] > 1.5, closed_after[:3]
    assert closed_after[-1] < 4.0, closed_after[-3:]
    for _, received in results:  # each had sent some of a head: it is told why
        told = parse_answer(received)
        assert (told.status, told.json()["code"]) == (408, "header_timeout")


async def test_a_slow_head_on_a_kept_alive_connection_is_timed_from_its_first_byte(
        tmp_path: Path, backend: Backend) -> None:
    async with live_server(tmp_path, backend, header_timeout=0.6, keepalive_timeout=30) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(reader.readexactly(int(
                head.split(b"Content-Length: ")[1].split(b"\r\n")[0])), 5)
            await asyncio.sleep(1.0)  # idle longer than the header timeout: still open
            started = time.monotonic()
            writer.write(b"GET /hea")
            rest = await asyncio.wait_for(reader.read(), 5)
            assert 0.4 < time.monotonic() - started < 2.0
        finally:
            writer.close()
    assert parse_answer(rest).json()["code"] == "header_timeout"


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
        tmp_path: Path, backend: Backend) -> None:
    async with live_server(tmp_path, backend, keepalive_timeout=0.5) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            started = time.monotonic()
            answered = await asyncio.wait_for(reader.read(), 5)  # to the connection's end
        finally:
            writer.close()
    assert answered.startswith(b"HTTP/1.1 200")
    assert time.monotonic() - started < 3.0


STORED_BLOB = b"already here"


@pytest.mark.parametrize("target", ["/v1/devices", "/v1/device/checkin", "/v1/blobs/missing",
                                    "/v1/blobs/" + "a" * 64,
                                    "/v1/blobs/" + hashlib.sha256(STORED_BLOB).hexdigest()])
async def test_a_body_slower_than_its_timeout_is_answered_408_and_closed(
        tmp_path: Path, target: str, backend: Backend) -> None:
    """Publisher JSON, a board request, a new blob and one already stored (drained)."""
    async with live_server(tmp_path, backend, body_timeout=0.5, upload_timeout=0.5) as server:
        method = "PUT" if target.startswith("/v1/blobs/") and target != "/v1/blobs/missing" \
            else "POST"
        if method == "PUT":
            # Stored through the blob store itself: the first write to a new S3 bucket can take
            # longer than this server's 0.5 s upload timeout, and it is set-up, not the test.
            async def body() -> AsyncIterator[bytes]:
                yield STORED_BLOB

            assert await server.runner.app[state.BLOBS].put_stream(
                hashlib.sha256(STORED_BLOB).hexdigest(), body(), len(STORED_BLOB))
        head = request_head(method, target, server.bearer, body_length=60)
        _, early = await asyncio.wait_for(_send_head_then_trickle(server.port, head), 10)
    answer = parse_answer(early)
    assert (answer.status, answer.json()["code"]) == (408, "body_timeout")
    assert answer.headers.get("connection") == "close"


async def _send_head_then_trickle(port: int, head: bytes) -> tuple[float, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(head)
    await writer.drain()
    started = time.monotonic()
    received = b""
    try:
        for _ in range(60):  # 60 body bytes at 5 a second would take 12 s
            try:
                writer.write(b"x")
                await writer.drain()
                received = await asyncio.wait_for(reader.read(), 0.2)
                break
            except TimeoutError:
                continue
            except ConnectionError:
                break
    finally:
        writer.close()
    assert time.monotonic() - started < 3.0
    return time.monotonic() - started, received


async def test_at_the_cap_the_longest_waiting_idle_connection_makes_room(
        tmp_path: Path, backend: Backend) -> None:
    async with live_server(tmp_path, backend, max_connections=20) as server:
        board = SimBoard("cap-board")
        await _register(server, board)
        idle = [await asyncio.open_connection(HOST, server.port) for _ in range(20)]
        try:
            await _until(lambda: server.open_connections() == 20)
            answer = await _checkin(server, board)
            assert answer.status == 204, answer.body
            first_reader = idle[0][0]
            assert await asyncio.wait_for(first_reader.read(), 2) == b""  # shed: the oldest
            assert server.open_connections() <= 20
        finally:
            for _, writer in idle:
                writer.close()


async def test_beyond_the_cap_with_every_connection_busy_a_new_one_gets_503_json(
        tmp_path: Path, backend: Backend) -> None:
    async with live_server(tmp_path, backend, max_connections=10, body_timeout=10) as server:
        busy = []
        try:
            for _ in range(10):  # each in a request, its body still to come
                _, writer = await asyncio.open_connection(HOST, server.port)
                writer.write(request_head("POST", "/v1/device/checkin", {}, body_length=100))
                busy.append(writer)
            await _until(lambda: server.open_connections() == 10)
            await asyncio.sleep(0.1)  # their heads parsed: busy, not waiting
            answer = await exchange(server.port, [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"],
                                    timeout=5)
        finally:
            for writer in busy:
                writer.close()
    assert (answer.status, answer.json()["code"]) == (503, "too_many_connections")


async def _until(condition, limit: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


# -- `ota serve` itself -----------------------------------------------------------------------

def test_ota_serve_bounds_header_time_and_answers_parser_errors_in_json(
        tmp_path: Path, backend: Backend) -> None:
    keys = FleetKeys.create(tmp_path)
    with LocalServer(tmp_path / "data", keys.root_path, **backend.urls,
                     extra_args=["--header-timeout", "1", "--quiet"]) as server:
        with socket.create_connection((HOST, server.port), timeout=5) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\n")
            started = time.monotonic()
            told = _read_to_end(slow)
            assert time.monotonic() - started < 4.0
        assert parse_answer(told).json()["code"] == "header_timeout"
        with socket.create_connection((HOST, server.port), timeout=5) as bad:
            bad.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"B" * 9000 + b"\r\n\r\n")
            refused = parse_answer(_read_to_end(bad))
        assert (refused.status, refused.json()["code"]) == (400, "too_long")
        assert b"BBBB" not in refused.raw


def _read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- settings ---------------------------------------------------------------------------------

def test_limits_come_from_the_environment_and_flags_win() -> None:
    env = {"MPOTA_HEADER_TIMEOUT": "2.5", "MPOTA_MAX_CONNECTIONS": "50",
           "MPOTA_BODY_TIMEOUT": "7", "MPOTA_SEND_TIMEOUT": "9", "MPOTA_SEND_RATE_FLOOR": "512"}
    settings = load_settings({"data_dir": "/tmp/x", "body_timeout": 3.0,
                              "keepalive_timeout": None, "send_rate_floor": 2048}, environ=env)
    assert (settings.limits.send_timeout, settings.limits.send_rate_floor) == (9.0, 2048.0)
    assert settings.limits.header_timeout == 2.5
    assert settings.limits.max_connections == 50
    assert settings.limits.body_timeout == 3.0
    assert settings.limits.keepalive_timeout == Limits().keepalive_timeout
    assert settings.limits.max_json_bytes == Limits().max_json_bytes


def test_the_event_loop_is_uvloop_unless_set_and_anything_else_is_refused_naming_it() -> None:
    assert load_settings({"data_dir": "/d"}, environ={}).event_loop == "uvloop"
    env = {"MPOTA_EVENT_LOOP": "asyncio"}
    assert load_settings({"data_dir": "/d"}, environ=env).event_loop == "asyncio"
    assert load_settings({"data_dir": "/d", "event_loop": "uvloop"},
                         environ=env).event_loop == "uvloop"  # the flag wins
    with pytest.raises(SettingsError, match="event loop: must be one of uvloop, asyncio, "
                                            "got 'trio'"):
        load_settings({"data_dir": "/d"}, environ={"MPOTA_EVENT_LOOP": "trio"})
    assert event_loop_factory("asyncio") is None
    loop = event_loop_factory("uvloop")()  # type: ignore[misc]
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_without_uvloop_the_server_says_so_and_runs_on_asyncio(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` finds uninstalled
    assert event_loop_factory("uvloop") is None
    assert "uvloop is not installed: serving on asyncio's event loop" in caplog.text


@pytest.mark.parametrize(("source", "value"), [("env", "0"), ("env", "-1"), ("env", "nan"),
                                               ("env", "soon"), ("flag", 0.0),
                                               ("flag", float("inf"))])
def test_a_limit_that_is_not_a_positive_number_is_refused_naming_it(source: str,
                                                                   value: object) -> None:
    flags: dict[str, object] = {"data_dir": "/tmp/x"}
    env = {}
    if source == "env":
        env["MPOTA_HEADER_TIMEOUT"] = str(value)
    else:
        flags["header_timeout"] = value
    with pytest.raises(SettingsError, match=r"HEADER_TIMEOUT|header-timeout"):
        load_settings(flags, environ=env)


# -- the send deadline ------------------------------------------------------------------------

BIG_BLOB = bytes(range(256)) * (48 * 1024)  # 12 MiB: more than the kernel buffers hold


def _request_never_read(port: int, head: bytes, tls: ssl.SSLContext | None) -> socket.socket:
    """`head` sent from a client with a tiny receive window that reads nothing (yet), over TLS
    with `tls`; a blocking socket (run in a thread)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    raw.settimeout(10)
    raw.connect((HOST, port))
    conn = tls.wrap_socket(raw, server_hostname=HOST) if tls else raw
    conn.sendall(head)
    return conn


def _drain(conn: socket.socket) -> int:
    """Read to the connection's end (EOF, reset or 10 s of silence); the bytes read."""
    total = 0
    try:
        while chunk := conn.recv(1 << 20):
            total += len(chunk)
    except (ConnectionError, ssl.SSLError, TimeoutError):
        pass
    return total


@pytest.mark.parametrize(("kind", "over_tls"), [("blob", False), ("pack", False),
                                                ("blob", True)], ids=["blob", "pack", "blob-tls"])
async def test_an_answer_the_client_does_not_take_is_cut_at_the_send_deadline(
        tmp_path: Path, kind: str, over_tls: bool, caplog: pytest.LogCaptureFixture,
        backend: Backend) -> None:
    """A board (or anyone with a board's key) that asks for a blob and stops reading holds a
    connection only until send_timeout + size / send_rate_floor (here 1 s + 0.75 s); the
    blob's file is closed with it and nothing is left waiting. Over TLS too, and on uvloop:
    there the answer is copied through the transport (no sendfile), and the connection used
    to wait for ever to flush what nobody took."""
    caplog.set_level(logging.INFO)
    rate = 16 * 1024 * 1024
    server_tls = client_tls = None
    if over_tls:
        assert cli_main(["tls", "init", str(tmp_path / "tls"), "--host", HOST]) == 0
        server_tls = ServerTls(tmp_path / "tls" / "server.pem",
                               tmp_path / "tls" / "server.key").context
        client_tls = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.pem"))
    async with live_server(tmp_path, backend, tls=server_tls, send_timeout=1.0,
                           send_rate_floor=rate) as server:
        board = SimBoard("slow-reader")
        loop = asyncio.get_running_loop()

        async def run(call: Any, *args: Any) -> Any:
            return await loop.run_in_executor(None, call, *args)

        sha = hashlib.sha256(BIG_BLOB).hexdigest()
        target = f"/v1/blobs/{sha}" if kind == "blob" else f"/v1/device/pack?blobs={sha}"
        registration = json.dumps(board.registration()).encode()
        for head, body in ((request_head("POST", "/v1/devices", server.bearer,
                                         body_length=len(registration)), registration),
                           (request_head("PUT", f"/v1/blobs/{sha}", server.bearer,
                                         body_length=len(BIG_BLOB)), BIG_BLOB)):
            answer = await run(_blocking_exchange, server.port, head + body, client_tls)
            assert answer.startswith(b"HTTP/1.1 201")

        def blob_request() -> bytes:
            return request_head("GET", target, board.auth("GET", target), body_length=0)

        # control: a client that reads gets the whole blob under the same limits
        control = await run(_request_never_read, server.port, blob_request(), client_tls)
        try:
            assert await run(_drain, control) > len(BIG_BLOB)
        finally:
            control.close()
        started = time.monotonic()
        stalled = await run(_request_never_read, server.port, blob_request(), client_tls)
        try:
            await _until(lambda: server.open_connections() == 1)
            await asyncio.sleep(0.5)  # well into the answer: it stalls at the client's window
            assert server.open_connections() == 1
            await _until(lambda: server.open_connections() == 0, limit=8)
            cut_after = time.monotonic() - started
            received = await run(_drain, stalled)
            await _until(lambda: not _open_files_under(served_blob_dir(server.settings)))
        finally:
            stalled.close()
    assert 1.5 < cut_after < 4.0
    assert received < len(BIG_BLOB)
    assert "send deadline" in caplog.text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def _open_files_under(directory: Path) -> list[str]:
    """Files under `directory` this process holds open (the live server runs in it)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith(str(directory)):
            found.append(str(target))
    return found


def _blocking_exchange(port: int, data: bytes, tls: ssl.SSLContext | None) -> bytes:
    """One request on a new connection from plain blocking sockets (run in a thread): the
    client side makes no asyncio transport of its own, whose garbage would blur the count."""
    with socket.create_connection((HOST, port), timeout=5) as raw, \
            (tls.wrap_socket(raw, server_hostname=HOST) if tls else raw) as conn:
        conn.sendall(data)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("over_tls", [False, True], ids=["tcp", "tls"])
async def test_a_closed_connection_leaves_nothing_for_the_cycle_collector(
        tmp_path: Path, backend: Backend, over_tls: bool) -> None:
    """A connection's objects (its protocol, transport, socket, request bodies) go with its
    last reference when it closes. Each used to be a reference cycle (the protocol and its
    request body; asyncio's transport and its own read callback): ~15 objects per connection
    left for the cycle collector, whose passes then grew with the connections of the last
    moments and, at S3's rate, came in storms that held every board up (docs/benchmarks.md,
    S3). Over TLS too (`ota serve --tls-cert`), where the socket transport sits under
    asyncio's TLS transport."""
    server_tls = client_tls = None
    if over_tls:
        assert cli_main(["tls", "init", str(tmp_path / "tls"), "--host", HOST]) == 0
        server_tls = ServerTls(tmp_path / "tls" / "server.pem",
                               tmp_path / "tls" / "server.key").context
        client_tls = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.pem"))
    async with live_server(tmp_path, backend, tls=server_tls) as server:
        board = SimBoard("tidy-board")
        loop = asyncio.get_running_loop()
        registration = json.dumps(board.registration()).encode()
        registered = await loop.run_in_executor(
            None, _blocking_exchange, server.port,
            request_head("POST", "/v1/devices", server.bearer, body_length=len(registration))
            + registration, client_tls)
        assert registered.startswith(b"HTTP/1.1 201")

        async def checkin() -> bytes:
            body = board.checkin_body()
            head = request_head("POST", "/v1/device/checkin",
                                board.auth("POST", "/v1/device/checkin", body),
                                body_length=len(body))
            return await loop.run_in_executor(None, _blocking_exchange, server.port,
                                              head + body, client_tls)

        assert (await checkin()).startswith(b"HTTP/1.1 204")  # caches filled
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(30):
                assert (await checkin()).startswith(b"HTTP/1.1 204")
            await _until(lambda: server.open_connections() == 0)
            gc.collect()
            left = collections.Counter(type(o).__qualname__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    per_connection = ("GuardedRequestHandler", "StreamReader", "_SelectorSocketTransport",
                      "TransportSocket", "socket")
    assert {name: left[name] for name in per_connection if left[name]} == {}
