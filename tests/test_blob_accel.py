"""Whole blobs sent by nginx (`ota serve --blob-accel`, X-Accel-Redirect): a real nginx
(tools/cluster/nginx.py's balancer with the internal location) in front of a real server on
each backend (SQLite + blobs/, PostgreSQL + SeaweedFS with the verified cache).

What a board sees through nginx must not depend on who sent the bytes: the same status,
headers and bytes as the server's own answer; ranges, packs and refusals stay the server's.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_support import (
    Backend,
    FleetKeys,
    ServerEnv,
    SimBoard,
    new_data_dir,
    served_blob_dir,
)
from yarl import URL

from ota_server import state
from ota_server.app import create_app
from ota_server.settings import SettingsError, check_blob_accel, load_settings
from tools.cluster.nginx import Nginx

PREFIX = "/_mpota/blobs"
# What a board reads of a blob answer (bootloader_py/ota/http.py, docs/protocol.md), and what
# caches read: each must be the same whoever sent the bytes.
BOARD_HEADERS = ("ETag", "Cache-Control", "Content-Type", "Content-Length", "Content-Range")


@dataclass
class Fronted:
    env: ServerEnv
    nginx: Nginx
    session: aiohttp.ClientSession

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
        """(status, headers, body) of a GET through nginx, the path sent exactly as given."""
        async with self.session.get(URL(self.nginx.url + path, encoded=True),
                                    headers=headers) as resp:
            return resp.status, resp.headers, await resp.read()

    async def blob(self, board: SimBoard, sha: str, **extra: str) -> tuple[int, Any, bytes]:
        path = f"/v1/blobs/{sha}"
        return await self.get(path, {**board.auth("GET", path), **extra})

    def metric(self, name: str, **labels: str) -> float:
        return float(self.env.app[state.METRICS].value(name, **labels))


@asynccontextmanager
async def front(aiohttp_client: Any, tmp_path: Path, backend: Backend) -> AsyncIterator[Fronted]:
    """A server with --blob-accel PREFIX behind nginx, whose internal location maps PREFIX to
    the server's blob directory (blobs/ or the S3 store's verified cache)."""
    keys = FleetKeys.create(tmp_path)
    data, token = await new_data_dir(tmp_path, backend)
    data = replace(data, root_path=keys.root_path, blob_accel=PREFIX)
    client = await aiohttp_client(create_app(data))
    env = ServerEnv(client, data, token, keys, tmp_path)
    workdir = tmp_path / "nginx"
    workdir.mkdir()
    with Nginx(None, workdir, upstreams=[str(client.make_url("/"))],
               accel={PREFIX: served_blob_dir(data)}) as nginx:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            yield Fronted(env, nginx, session)


@pytest.fixture
async def fronted(aiohttp_client: Any, tmp_path: Path,
                  backend: Backend) -> AsyncIterator[Fronted]:
    async with front(aiohttp_client, tmp_path, backend) as f:
        yield f


async def _board_and_blob(f: Fronted, size: int = 300_000) -> tuple[SimBoard, str, bytes]:
    data = os.urandom(size)
    [sha] = await f.env.put_blobs(data)
    return await f.env.add_board(SimBoard("accel-1")), sha, data


async def test_a_whole_blob_through_nginx_is_the_servers_answer_byte_for_byte(
        fronted: Fronted) -> None:
    board, sha, data = await _board_and_blob(fronted)
    # The server's own answer (sendfile): a condition it judges itself, which does not hold.
    own = await fronted.env.get_blob(board, sha, **{"If-None-Match": '"other"'})
    own_body = await own.read()
    assert own.status == 200 and "X-Accel-Redirect" not in own.headers
    # Straight from the server, a plain GET is handed over: no body, the path into the cache.
    direct = await fronted.env.get_blob(board, sha)
    assert direct.status == 200 and await direct.read() == b""
    assert direct.headers["X-Accel-Redirect"] == f"{PREFIX}/{sha[:2]}/{sha}"
    served = fronted.metric("mpota_blob_bytes_served_total")
    # Through nginx: the same answer, sent by nginx.
    status, headers, body = await fronted.blob(board, sha)
    assert (status, body) == (200, data) and own_body == data
    for name in BOARD_HEADERS:
        assert headers.get(name) == own.headers.get(name), name
    assert headers["ETag"] == f'"{sha}"' and headers["Content-Length"] == str(len(data))
    # The same header names as nginx relaying the server's own answer (nginx's Server and
    # Date on both): none of the static module's validators, no X-Accel-* header.
    relayed_status, relayed, relayed_body = await fronted.blob(
        board, sha, **{"If-None-Match": '"other"'})
    assert (relayed_status, relayed_body) == (200, data)
    assert sorted(headers) == sorted(relayed)
    assert fronted.metric("mpota_blob_accel_total", code="200") == 2
    assert fronted.metric("mpota_blob_accel_bytes_total") == 2 * len(data)
    # The server sent none of these bytes itself: only the relayed answer's.
    assert fronted.metric("mpota_blob_bytes_served_total") == served + len(data)


async def test_ranges_packs_304s_and_heads_stay_the_servers(fronted: Fronted) -> None:
    board, sha, data = await _board_and_blob(fronted)
    status, headers, body = await fronted.blob(board, sha, Range="bytes=1000-1999")
    assert (status, body) == (206, data[1000:2000])
    assert headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    status, headers, body = await fronted.blob(board, sha, **{"If-None-Match": f'"{sha}"'})
    assert (status, body) == (304, b"")
    other = os.urandom(5000)
    [sha2] = await fronted.env.put_blobs(other)
    path = f"/v1/device/pack?blobs={sha},{sha2}"
    status, headers, body = await fronted.get(path, board.auth("GET", path))
    assert (status, body) == (200, data + other)
    path = f"/v1/blobs/{sha}"
    head = await fronted.env.client.head(path, headers=board.auth("HEAD", path))
    assert head.status == 200 and "X-Accel-Redirect" not in head.headers
    assert head.headers["Content-Length"] == str(len(data))
    assert fronted.metric("mpota_blob_accel_total", code="200") == 0


async def test_unknown_and_revoked_boards_get_no_bytes_through_nginx(fronted: Fronted) -> None:
    board, sha, data = await _board_and_blob(fronted)
    stranger = SimBoard("not-registered")
    status, _headers, body = await fronted.blob(stranger, sha)
    assert status == 401 and data[:64] not in body
    resp = await fronted.env.client.post(f"/v1/devices/{board.device_id}/revoke",
                                         headers=fronted.env.bearer)
    assert resp.status == 200, await resp.text()
    status, _headers, body = await fronted.blob(board, sha)
    assert status == 403 and data[:64] not in body
    status, _headers, body = await fronted.blob(await fronted.env.add_board(
        SimBoard("accel-2")), "ab" * 32)
    assert status == 404
    assert fronted.metric("mpota_blob_accel_total", code="200") == 0
    # nginx's internal location answers nothing asked for from outside.
    status, _headers, body = await fronted.get(f"{PREFIX}/{sha[:2]}/{sha}", {})
    assert status == 404 and data[:64] not in body


@pytest.mark.parametrize("through_nginx", [True, False])
async def test_a_cached_blob_changed_on_disk_is_fetched_again_not_sent(
        aiohttp_client: Any, tmp_path: Path, pg_migrated: str, s3_url: str,
        through_nginx: bool) -> None:
    """The S3 store's cache file of a blob, damaged after the server checked it (same size,
    other bytes): the next answer is the blob's bytes, fetched again, with nginx sending the
    file (X-Accel-Redirect) or the server (sendfile)."""
    backend = Backend("postgres", db_url=pg_migrated, blobs_url=s3_url)
    async with front(aiohttp_client, tmp_path, backend) as f:
        board, sha, data = await _board_and_blob(f)
        assert (await f.blob(board, sha))[2] == data  # cached and checked
        cached = served_blob_dir(f.env.settings) / sha[:2] / sha
        with open(cached, "r+b") as out:  # in place: the same inode and size
            out.write(bytes(b ^ 0xFF for b in data[:4096]))
        if through_nginx:
            status, _headers, body = await f.blob(board, sha)
        else:
            resp = await f.env.get_blob(board, sha, **{"If-None-Match": '"other"'})
            status, body = resp.status, await resp.read()
        assert status == 200 and hashlib.sha256(body).hexdigest() == sha
        assert cached.read_bytes() == data


def test_the_cluster_stack_hands_each_replicas_blobs_to_nginx(tmp_path: Path) -> None:
    """tools/cluster's stack (make demo-cluster, the benchmark) as production lays it out:
    each replica's prefix maps to its own cache, so whichever replica answers, nginx sends
    the blob whole."""
    import urllib.request

    from tools.cluster.stack import Cluster

    keys = FleetKeys.create(tmp_path)
    data = os.urandom(200_000)
    sha = hashlib.sha256(data).hexdigest()
    board = SimBoard("stack-board")
    with Cluster(tmp_path / "cluster", keys.root_path, extra_args=["--quiet"]) as cluster:
        client = cluster.client()
        client.upload_blob(sha, data)
        client.register_device(board.device_id, board.point, board="unix")
        path = f"/v1/blobs/{sha}"

        def handed_over() -> list[int]:
            """Each replica's count of blobs handed to nginx."""
            counts = []
            for replica in cluster.replicas:
                metrics = urllib.request.urlopen(replica.url + "/metrics", timeout=10).read()
                found = re.search(rb'mpota_blob_accel_total\{code="200"\} (\d+)', metrics)
                counts.append(int(found.group(1)) if found else 0)
            return counts

        # nginx takes the replicas in turn, but not strictly (a replica that failed a moment
        # ago, e.g. still starting, is skipped for fail_timeout): ask until both answered
        sent = 0
        while sent < 4 or 0 in handed_over():
            assert sent < 20, f"a replica never answered: {handed_over()}"
            request = urllib.request.Request(cluster.url + path,
                                             headers=board.auth("GET", path))
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.read() == data and answer.headers["ETag"] == f'"{sha}"'
            sent += 1
        assert sum(handed_over()) == sent  # every one of them sent by nginx


@pytest.mark.parametrize(("prefix", "needle"), [
    ("internal/blobs", "absolute URI path"),
    ("/a//b", "absolute URI path"),
    ("/a/../b", "'..' segment"),
    ("/a/b?x=1", "absolute URI path"),
    ("/a b", "absolute URI path"),
    ("/" + "a" * 300, "at most"),
])
def test_a_bad_accel_prefix_is_refused_naming_the_setting(prefix: str, needle: str) -> None:
    with pytest.raises(SettingsError, match=needle) as err:
        load_settings({"data_dir": Path("/d"), "blob_accel": prefix}, environ={})
    assert "--blob-accel / MPOTA_BLOB_ACCEL" in str(err.value)
    with pytest.raises(SettingsError, match=needle):
        load_settings({"data_dir": Path("/d")}, environ={"MPOTA_BLOB_ACCEL": prefix})


def test_an_accel_prefix_is_taken_without_its_trailing_slash() -> None:
    settings = load_settings({"data_dir": Path("/d")}, environ={"MPOTA_BLOB_ACCEL": "/x/y-1/"})
    assert settings.blob_accel == "/x/y-1"
    assert load_settings({"data_dir": Path("/d")}, environ={}).blob_accel is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="/.a-_~%? \n\\", max_size=20))
def test_an_accel_prefix_is_a_clean_absolute_path_or_refused(prefix: str) -> None:
    """Whatever is given, the prefix taken joins with `/<aa>/<sha256>` into a path with no
    empty, `.` or `..` segment, nothing outside the unreserved characters, or SettingsError."""
    try:
        taken = check_blob_accel(prefix)
    except SettingsError:
        return
    if taken is None:
        assert prefix == ""
        return
    joined = f"{taken}/ab/{'ab' * 32}"
    segments = joined.split("/")
    assert segments[0] == "" and all(s not in ("", ".", "..") for s in segments[1:])
    assert set(joined) <= set("/abcdefghijklmnopqrstuvwxyz0123456789.-_~")
