"""What `ota serve` writes to its log: no credential, however a request is malformed, no forged
line, whatever a path decodes to (docs/operations.md, Logs); and one server per data
directory."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_support import Backend, FleetKeys, SimBoard, get_status, make_bundle, sha256_hex

from ota_server.grants import GrantKey
from ota_server.logs import JsonFormatter, PlainFormatter
from ota_server.tokens import TOKEN_PREFIX
from tools.local_server import LocalServer, free_port

# A plain record starts with its ISO 8601 UTC time; anything else at column 0 is forged.
_RECORD_START = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|"
                           r"CRITICAL) \S+ ")


@pytest.fixture
def keys(tmp_path: Path) -> FleetKeys:
    return FleetKeys.create(tmp_path)


def _send(srv: LocalServer, raw: bytes) -> bytes:
    """One raw request; the answer's first bytes (b"" when the server just closed)."""
    with socket.create_connection((srv.host, srv.port), timeout=5) as conn:
        conn.sendall(raw)
        try:
            return conn.recv(200)
        except OSError:
            return b""


def _wait_for(srv: LocalServer, needle: str) -> str:
    deadline = time.monotonic() + 5
    while True:
        text = srv.log_path.read_text(encoding="utf-8", errors="replace")
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.02)


def _malformed_authorizations(token: str, board_auth: str) -> list[bytes]:
    """Requests whose Authorization header aiohttp's parser refuses, echoing the line."""
    head = b"GET /v1/releases HTTP/1.1\r\nHost: x\r\nAuthorization: "
    out = [head + value.encode() + bad + b"\r\n\r\n"
           for value in (f"Bearer {token}", board_auth)
           for bad in (b"\x00", b"\x7f", b"\rX", b"\x01 tail")]
    out.append(b"GET /v1/releases HTTP/1.1\r\nHost: x\r\nX-Note: " + token.encode()
               + b"\x00\r\n\r\n")
    return out


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_no_credential_reaches_the_log_when_the_parser_refuses_a_header(
        tmp_path: Path, keys: FleetKeys, log_format: str, backend: Backend) -> None:
    extra = ["--json-logs"] if log_format == "json" else []
    board = SimBoard("redact-board")
    with LocalServer(tmp_path / "data", keys.root_path, extra_args=extra, **backend.urls) as srv:
        srv.client().register_device(board.device_id, board.point, board="unix")
        board_auth = board.auth("POST", "/v1/device/checkin", b"{}")["Authorization"]
        for raw in _malformed_authorizations(srv.token, board_auth):
            assert _send(srv, raw).split(b" ", 2)[1] == b"400"
        srv.client().list_releases()  # the server is still up and still logging
        text = _wait_for(srv, "/v1/releases 200")
        token = srv.token
    # each refusal was logged (ota_server/connections.py), and none with what it refused
    assert text.count("refused a malformed request") == 9, text
    assert token not in text
    assert token[len(TOKEN_PREFIX):][:12] not in text  # not even a prefix of the secret part
    assert board_auth.split()[-1][:16] not in text


def _with_grant_key(backend: Backend, directory: Path) -> list[str]:
    """The flag a server on `backend` needs to give grants (the default on SQLite)."""
    return [] if backend.kind == "sqlite" else ["--grant-key", str(directory / "grant.key")]


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_no_download_grant_reaches_the_log(tmp_path: Path, keys: FleetKeys, log_format: str,
                                           backend: Backend) -> None:
    """A grant is a bearer credential (issue #12: credentials are never logged): after valid,
    refused and malformed grant requests, neither a grant nor its MAC is in the log."""
    extra = (["--json-logs"] if log_format == "json" else []) + \
        _with_grant_key(backend, tmp_path)
    board = SimBoard("grant-log")
    blob = b"logged? no\n" * 50
    sha = sha256_hex(blob)
    with LocalServer(tmp_path / "data", keys.root_path, extra_args=extra, **backend.urls) as srv:
        client = srv.client()
        client.register_device(board.device_id, board.point, board="unix")
        client.publish(make_bundle(tmp_path, {"app_main.py": blob}, version="1.0.0",
                                   sequence=1, key=keys.release_key),
                       channel="stable", percent=100)
        body = board.checkin_body()
        request = urllib.request.Request(
            srv.url + "/v1/device/checkin", data=body, method="POST",
            headers=board.auth("POST", "/v1/device/checkin", body))
        with urllib.request.urlopen(request, timeout=10) as answer:
            grant = answer.headers["X-Ota-Grant"]
        mac = grant.rsplit("mac=", 1)[1]
        other_mac = GrantKey(bytes(32)).mint(board.device_id, time.time(), 900)
        expired = grant.replace("exp=", "exp=1")  # ten times further: refused as bad_grant
        for path in (f"/v1/blobs/{sha}", f"/v1/device/pack?blobs={sha}"):
            assert get_status(srv.url + path, grant) == 200
            assert get_status(srv.url + path, other_mac) == 401
            assert get_status(srv.url + path, expired) == 401
            assert get_status(srv.url + path, grant[:-1]) == 401
        for bad in (b"\x00", b"\r", b"\x7f"):  # the parser refuses these before any handler
            cut = len(grant) - 20
            raw = (f"GET /v1/blobs/{sha} HTTP/1.1\r\nHost: x\r\nAuthorization: ".encode()
                   + grant[:cut].encode() + bad + grant[cut:].encode() + b"\r\n\r\n")
            assert _send(srv, raw).split(b" ", 2)[1] == b"400"
        assert get_status(f"{srv.url}/v1/blobs/{sha}", grant) == 200  # still up, still logging
        text = _wait_for(srv, "refused a malformed request")
    assert text.count("refused a malformed request") == 3, text
    assert grant not in text and other_mac not in text
    for secret in (mac, other_mac.rsplit("mac=", 1)[1]):
        assert secret[:12] not in text and secret[-12:] not in text
    if log_format == "json":  # a download by grant is logged with the board it names
        docs = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        granted = [doc for doc in docs if doc.get("path") == f"/v1/blobs/{sha}"
                   and doc.get("status") == 200]
        assert granted and all(doc["device_id"] == board.device_id for doc in granted)


def test_a_path_cannot_forge_a_plain_log_line_or_hide_bytes(tmp_path: Path,
                                                            keys: FleetKeys,
                                                            backend: Backend) -> None:
    paths = ["/nope%0a2099-01-01T00:00:00.000Z%20INFO%20ota_server%20forged",
             "/nope%0d%0aforged", "/nope%00x", "/nope%1b[31mred", "/nope%e2%80%a8sep",
             "/nope%c2%85nel"]
    with LocalServer(tmp_path / "data", keys.root_path, **backend.urls) as srv:
        for path in paths:
            answer = _send(srv, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert answer.split(b" ", 2)[1] == b"404"
        text = _wait_for(srv, "sep")
    lines = text.splitlines()
    assert all(_RECORD_START.match(line) or line.startswith("    ") for line in lines), text
    assert "/nope\\n2099-01-01T00:00:00.000Z INFO ota_server forged 404" in text
    assert "/nope\\x00x 404" in text and "/nope\\x1b[31mred 404" in text
    assert "/nope\\u2028sep 404" in text and "/nope\\x85nel 404" in text
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f\u2028\u2029\x85]", text)


def test_json_logs_stay_one_object_a_line_for_hostile_paths(tmp_path: Path,
                                                            keys: FleetKeys,
                                                            backend: Backend) -> None:
    with LocalServer(tmp_path / "data", keys.root_path, extra_args=["--json-logs"],
                     **backend.urls) as srv:
        _send(srv, b"GET /nope%0a{%22level%22:%22error%22}%00 HTTP/1.1\r\nHost: x\r\n\r\n")
        text = _wait_for(srv, "nope")
    docs = [json.loads(line) for line in text.splitlines()]  # every line is one object
    assert any(doc.get("path") == '/nope\n{"level":"error"}\x00' for doc in docs)


# -- the formatters, for any message, argument, field and exception ------------------------

_token = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
                 min_size=8, max_size=43).map(lambda s: TOKEN_PREFIX + s)
_noise = st.text(max_size=40)


@st.composite
def _leaky_text(draw: st.DrawFn) -> tuple[str, str]:
    """Text that holds a credential in one of the shapes a log line may show it."""
    token = draw(_token)
    shape = draw(st.sampled_from([
        "{t}", "Authorization: Bearer {t}", "b'Authorization: Bearer {t}\\x00'",
        "{{'Authorization': 'Bearer {t}'}}", "authorization={t}", "https://h/x?token={t}&y=1",
    ]))
    return draw(_noise) + shape.format(t=token) + draw(_noise), token


@settings(max_examples=300, deadline=None)
@given(leak=_leaky_text(), field=_leaky_text(), crash=_leaky_text(), noise=_noise)
def test_formatters_redact_credentials_and_escape_controls_in_every_field(
        leak: tuple[str, str], field: tuple[str, str], crash: tuple[str, str],
        noise: str) -> None:
    try:
        raise ValueError(crash[0] + "\n" + noise)
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "%s | %s",
                               (leak[0], noise), exc_info)
    record.path = field[0]
    plain = PlainFormatter().format(record)
    as_json = JsonFormatter().format(record)
    for token in (leak[1], field[1], crash[1]):
        assert token not in plain and token not in as_json
    first, *rest = plain.split("\n")
    assert _RECORD_START.match(first)
    assert all(line.startswith("    ") for line in rest)
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]", plain)
    assert "\n" not in as_json
    json.loads(as_json)


_GRANT_SHAPES = ["{g}", "X-Ota-Grant: {g}", "{{'X-Ota-Grant': '{g}'}}",
                 "b'Authorization: {g}\\x00'", "authorization={g}", "<CIMultiDict('X-Ota-Grant': "
                 "'{g}', 'Content-Type': 'x')>", "{fields}"]


@st.composite
def _grant_text(draw: st.DrawFn) -> tuple[str, str]:
    """Text holding a download grant (or its fields without the scheme), and its MAC."""
    key = GrantKey(draw(st.binary(min_size=32, max_size=32)))
    device_id = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True))
    grant = key.mint(device_id, draw(st.integers(1, 10**10)), 900)
    shape = draw(st.sampled_from(_GRANT_SHAPES))
    text = shape.format(g=grant, fields=grant.split(" ", 1)[1])
    return draw(_noise) + text + draw(_noise), grant.rsplit("mac=", 1)[1]


@settings(max_examples=200, deadline=None)
@given(leak=_grant_text(), field=_grant_text(), crash=_grant_text())
def test_formatters_redact_download_grants_in_every_field(
        leak: tuple[str, str], field: tuple[str, str], crash: tuple[str, str]) -> None:
    try:
        raise ValueError(crash[0])
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("ota_server", logging.ERROR, __file__, 1, "%s", (leak[0],),
                               exc_info)
    record.headers = {"X-Ota-Grant": field[0]}
    for out in (PlainFormatter().format(record), JsonFormatter().format(record)):
        for mac in (leak[1], field[1], crash[1]):
            assert mac not in out


# -- one server per data directory --------------------------------------------------------

def _serve(data: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "serve", "--data", str(data), "--root", str(root),
         "--port", str(free_port())], capture_output=True, text=True, timeout=60)


def test_a_second_serve_on_a_data_directory_in_use_is_refused(tmp_path: Path,
                                                              keys: FleetKeys,
                                                              backend: Backend) -> None:
    data = tmp_path / "data"
    with LocalServer(data, keys.root_path, **backend.urls) as first:
        board = SimBoard("kept")
        first.client().register_device(board.device_id, board.point, board="unix")
        second = _serve(data, keys.root_path)
        assert second.returncode == 1
        assert second.stderr.startswith("ota: ")
        assert f"data directory {data} is in use by another ota serve (pid {first.pid})" \
            in second.stderr
        # the first one lost nothing and still serves
        assert first.client().device("kept")["device_id"] == "kept"
        first.kill()  # SIGKILL: the kernel drops the lock with the process
        with LocalServer(data, keys.root_path, **backend.urls) as after_crash:
            assert after_crash.client().device("kept")["device_id"] == "kept"
