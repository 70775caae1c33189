"""`ota serve` as a real process under the load of a large fleet (figure S3): a burst of new
connections waits in the listen queue instead of being dropped, and every check-in answered is
in the database after a clean stop although its records are written behind; the parsed-key
cache never stalls the server."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_support import Backend, FleetKeys, SimBoard, make_bundle, open_metadata, query_rows

from ota_server.connections import GuardedServer
from ota_server.settings import Limits
from tools.local_server import LocalServer

BURST = 1000  # new connections while the server cannot accept: ~0.6 s of S3's load


@pytest.fixture
def keys(tmp_path: Path) -> FleetKeys:
    return FleetKeys.create(tmp_path)


def _established(socks: list[socket.socket], deadline: float) -> int:
    """How many of the non-blocking connects completed (the kernel queued them for the
    listener) by `deadline`."""
    waiting = {s.fileno(): s for s in socks}
    done = 0
    poller = select.poll()
    for fd in waiting:
        poller.register(fd, select.POLLOUT)
    while waiting and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            sock = waiting.pop(fd)
            poller.unregister(fd)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                done += 1
    return done


def test_a_burst_of_new_connections_waits_for_a_stalled_server(tmp_path: Path, keys: FleetKeys,
                                                               backend: Backend) -> None:
    """Boards open a connection per request. While the server is stalled (here: stopped), the
    kernel queues new connections up to the listen backlog and drops the SYNs beyond it, which
    a board's TCP stack only retries a second later; with aiohttp's default backlog (128) a
    stall of ~75 ms at S3's rate already drops boards."""
    with LocalServer(tmp_path / "data", keys.root_path, **backend.urls) as srv:
        assert srv.pid is not None
        socks: list[socket.socket] = []
        os.kill(srv.pid, signal.SIGSTOP)
        try:
            for _ in range(BURST):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                socks.append(sock)
                sock.connect_ex((srv.host, srv.port))
            # a dropped SYN is retried after 1 s: look before that
            queued = _established(socks, time.monotonic() + 0.8)
        finally:
            os.kill(srv.pid, signal.SIGCONT)
            for sock in socks:
                sock.close()
        assert queued == BURST
        with urllib.request.urlopen(srv.url + "/healthz", timeout=10) as answer:
            assert answer.status == 200


def _post_checkin(url: str, board: SimBoard) -> int:
    body = board.checkin_body(mem_free=31000 + int(board.device_id[-1]))
    path = "/v1/device/checkin"
    request = urllib.request.Request(url + path, data=body, method="POST",
                                     headers={**board.auth("POST", path, body),
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()
        return int(answer.status)


def test_every_answered_checkin_is_in_the_database_after_a_clean_stop(
        tmp_path: Path, keys: FleetKeys, backend: Backend) -> None:
    data = tmp_path / "data"
    boards = [SimBoard(f"field-{i}") for i in range(5)]
    with LocalServer(data, keys.root_path, **backend.urls) as srv:
        client = srv.client()
        for board in boards:
            client.register_device(board.device_id, board.point, board="unix",
                                   channel="stable", tags=[])
        bundle = make_bundle(tmp_path, {"app_main.py": b"print(1)\n"}, version="1.0.0",
                             sequence=1, key=keys.release_key)
        client.publish(bundle, "stable", percent=100)
        assert [_post_checkin(srv.url, b) for b in boards] == [200] * len(boards)
        # SIGTERM right away: the last check-in's records are still queued (written behind)
    settings = backend.settings(data)
    inventory = asyncio.run(query_rows(
        settings, "SELECT device_id, mem_free, last_seen IS NOT NULL FROM devices "
                  "ORDER BY device_id"))
    offers = asyncio.run(query_rows(settings, "SELECT device_id, status FROM deployments "
                                              "ORDER BY device_id"))
    assert inventory == [(b.device_id, 31000 + i, 1) for i, b in enumerate(boards)]
    assert offers == [(b.device_id, "offered") for b in boards]


async def _registered_checkin(store: Any, board: SimBoard,
                              tags: list[str]) -> tuple[str, bytes]:
    """Register `board` in `store`; the Authorization header and body of its next check-in."""
    await store.add_device(board.device_id, board.point, "unix", tags, "stable", 1)
    body = board.checkin_body()
    return board.auth("POST", "/v1/device/checkin", body)["Authorization"], body


@pytest.mark.sqlite_only(reason="the authenticator's own memory; the store plays no part")
async def test_kept_boards_add_nothing_to_the_cycle_collectors_passes(tmp_path: Path,
                                                                       backend: Backend) -> None:
    """A kept board (identity and parsed key) is no object the cycle collector tracks: with
    100,000 kept boards as tracked objects, each of its full passes took 100-300 ms in S3
    (docs/benchmarks.md), a stall for every board in flight."""
    import gc

    from ota_server import device_auth

    store = await open_metadata(backend.settings(tmp_path / "data"))
    try:
        auth = device_auth.DeviceAuthenticator(store)
        boards = [SimBoard(f"gc{n:03d}") for n in range(200)]
        requests = [await _registered_checkin(store, board, ["t1", "t2"]) for board in boards]
        # one board first: whatever a first request sets up once is not counted
        await auth.authenticate(requests[0][0], "POST", "/v1/device/checkin", requests[0][1])
        gc.collect()
        tracked = len(gc.get_objects())
        for header, body in requests[1:]:
            await auth.authenticate(header, "POST", "/v1/device/checkin", body)
        # a pass untracks a tuple of untracked items; the tags tuple inside a kept board's
        # tuple may be untracked after its outer tuple was looked at: the next pass takes it
        gc.collect()
        gc.collect()
        assert len(auth._boards) == len(boards)
        # kept as objects they were three each (597 here); a handful of others may come and go
        assert len(gc.get_objects()) - tracked < 40
        await auth._counters.close()
    finally:
        await store.close()


async def test_the_kept_boards_stay_bounded_one_board_at_a_time(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         backend: Backend) -> None:
    """The boards the authenticator keeps (identity and parsed key) never exceed their bound
    and never empty at once (emptying the key cache that came before stalled the server for a
    part of a second at 100,000 boards)."""
    from ota_server import device_auth

    monkeypatch.setattr(device_auth, "BOARD_CACHE_SIZE", 3)
    store = await open_metadata(backend.settings(tmp_path / "data"))
    try:
        auth = device_auth.DeviceAuthenticator(store)
        boards = [SimBoard(f"b{n}") for n in range(5)]
        sizes = []
        for board in boards:
            header, body = await _registered_checkin(store, board, [])
            verified = await auth.authenticate(header, "POST", "/v1/device/checkin", body)
            assert verified.board.public_key == board.point
            sizes.append(len(auth._boards))
        assert sizes == [1, 2, 3, 3, 3]
        assert list(auth._boards) == ["b2", "b3", "b4"]  # the newest stay
        await auth._counters.close()
    finally:
        await store.close()


class _Conn:
    """What GuardedServer's bookkeeping sees of a connection: a key, and shed()."""

    def __init__(self, name: int) -> None:
        self.name = name
        self.shed_count = 0

    def shed(self) -> None:
        self.shed_count += 1


_CAP_OPS = st.lists(st.tuples(st.sampled_from(["open", "wait", "busy", "close"]),
                              st.integers(0, 4)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3), _CAP_OPS)
def test_at_the_cap_the_longest_waiting_connection_is_shed_whatever_came_before(
        cap: int, ops: list[tuple[str, int]]) -> None:
    """GuardedServer's admission against a model that looks at every open connection: the
    connection shed for a newcomer is the one waiting longest (re-waiting moves a connection
    to the back), a newcomer is refused only when none waits, and nothing else is shed. The
    server finds that connection without looking at the others (figure S3)."""
    loop = asyncio.new_event_loop()
    try:
        server = GuardedServer(lambda request: None, limits=Limits(max_connections=cap),
                               loop=loop)
        conns: dict[int, _Conn] = {}
        model_open: set[int] = set()
        model_waiting: dict[int, int] = {}  # connection -> the clock when it began to wait
        clock = 0
        for op, name in ops:
            clock += 1
            if op == "open":
                if name in conns:
                    continue
                conn = conns[name] = _Conn(name)
                if len(model_open) >= cap:
                    if not model_waiting:
                        assert not server.admit(conn)  # type: ignore[arg-type]
                        server.release(conns.pop(name))  # type: ignore[arg-type]  # its close
                        continue
                    oldest = min(model_waiting, key=model_waiting.__getitem__)
                    shed_before = conns[oldest].shed_count
                    assert server.admit(conn)  # type: ignore[arg-type]
                    assert conns[oldest].shed_count == shed_before + 1
                    model_open.discard(oldest)
                    del model_waiting[oldest]
                    server.release(conns.pop(oldest))  # type: ignore[arg-type]  # its close
                else:
                    assert server.admit(conn)  # type: ignore[arg-type]
                model_open.add(name)
            elif name in conns:
                conn = conns[name]
                if op == "wait":
                    server.waits(conn)  # type: ignore[arg-type]
                    model_waiting[name] = clock
                elif op == "busy":
                    server.busy(conn)  # type: ignore[arg-type]
                    model_waiting.pop(name, None)
                else:
                    server.release(conn)  # type: ignore[arg-type]
                    model_open.discard(name)
                    model_waiting.pop(name, None)
                    del conns[name]
        assert all(c.shed_count <= 1 for c in conns.values())
    finally:
        loop.close()
