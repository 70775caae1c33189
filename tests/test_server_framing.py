"""HTTP framing against a real server on 127.0.0.1: bodies split across TCP segments, requests
aiohttp's parser refuses (answered in JSON, never echoing the input), and Range parsed
strictly (a property test against a model of RFC 9110 as docs/protocol.md states it)."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cluster_support import backend_of
from conftest import BACKENDS
from hypothesis import given, settings
from hypothesis import strategies as st
from server_framing_support import (
    ThreadedServer,
    chunked,
    exchange,
    live_server,
    request_head,
    send_in_pieces,
    threaded_server,
)
from server_support import Backend, ServerEnv, SimBoard

from ota_server.ranges import RangeNotSatisfiable, byte_range

# -- bodies in more than one segment ----------------------------------------------------------


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


async def test_board_checkin_in_two_segments_50ms_apart_is_verified_whole(
        tmp_path: Path, backend: Backend) -> None:
    """A board on Wi-Fi, or a proxy that writes headers and body apart: the signature covers
    the whole body, so reading only the first segment answered 401 `bad_signature`."""
    async with live_server(tmp_path, backend) as server:
        board = SimBoard("split-board")
        register = request_head("POST", "/v1/devices", server.bearer,
                                body_length=len(_json(board.registration())))
        assert (await exchange(server.port, [register + _json(board.registration())])).status \
            == 201
        body = board.checkin_body()
        head = request_head("POST", "/v1/device/checkin",
                            board.auth("POST", "/v1/device/checkin", body),
                            body_length=len(body))
        answer = await exchange(server.port, [head + body[:40], body[40:]], pause=0.05)
        assert answer.status == 204, answer.body


async def test_publisher_json_in_two_segments_is_parsed_whole(
        tmp_path: Path, backend: Backend) -> None:
    async with live_server(tmp_path, backend) as server:
        body = _json(SimBoard("split-json").registration())
        head = request_head("POST", "/v1/devices", server.bearer, body_length=len(body))
        answer = await exchange(server.port, [head + body[:10], body[10:]], pause=0.05)
        assert answer.status == 201, answer.body
        assert answer.json()["device_id"] == "split-json"


# -- what aiohttp's parser refuses: JSON, the input not echoed --------------------------------

MARK = "SECRETMARK"  # in every bad request below; must never come back

BAD_REQUESTS = {
    "request line too long": (b"GET /" + b"A" * 9000 + MARK.encode() + b" HTTP/1.1\r\n"
                              b"Host: x\r\n\r\n", "too_long"),
    "header too long": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"B" * 9000
                        + MARK.encode() + b"\r\n\r\n", "too_long"),
    "too many headers": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                         + b"".join(b"X-%d: %s\r\n" % (i, MARK.encode()) for i in range(200))
                         + b"\r\n", "bad_http"),
    "header without a colon": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + MARK.encode()
                               + b" header\r\n\r\n", "bad_http"),
    "control byte in a header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01"
                                 + MARK.encode() + b"\r\n\r\n", "bad_http"),
    "not a method": (b"G<T /" + MARK.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n", "bad_method"),
    "TLS to the plain port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + MARK.encode()
                              + b"\r\n\r\n", "bad_method"),
    "target not a URL": (b"GET http://[::1" + MARK.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                         "bad_target"),
    "bad version": (b"GET /healthz HTTP/9." + MARK.encode() + b"\r\nHost: x\r\n\r\n",
                    "bad_request_line"),
    "malformed chunk size": (b"POST /v1/blobs/missing HTTP/1.1\r\nHost: x\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\nZZ" + MARK.encode() + b"\r\n",
                             "bad_http"),
    "Content-Length and chunked": (b"POST /v1/blobs/missing HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"0\r\n\r\n", "bad_http"),
    "Content-Length not a number": (b"POST /v1/blobs/missing HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Length: 5" + MARK.encode() + b"\r\n\r\nabcde",
                                    "bad_http"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_requests_the_parser_refuses_get_a_json_error_without_the_input(
        tmp_path: Path, case: str, backend: Backend) -> None:
    raw, code = BAD_REQUESTS[case]
    async with live_server(tmp_path, backend) as server:
        answer = await exchange(server.port, [raw])
    assert answer.status == 400
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["code"] == code
    assert isinstance(answer.json()["message"], str)
    assert MARK.encode() not in answer.raw and b"AAAA" not in answer.raw
    assert answer.headers.get("connection") == "close"
    assert "server" not in answer.headers


async def test_a_body_whose_chunked_framing_breaks_midway_is_refused_at_once(
        tmp_path: Path, backend: Backend) -> None:
    """The parser queues the error as if it were a next request; the handler waiting for the
    body must not wait for its deadline."""
    async with live_server(tmp_path, backend, body_timeout=30) as server:
        head = request_head("POST", "/v1/devices", server.bearer, body_length=None)
        answer = await exchange(server.port, [head, b"5\r\nab", b"cde\r\nZZ\r\n"],
                                pause=0.05, timeout=5)
    assert answer.status == 400
    assert answer.json()["code"] == "bad_body"


# -- Range: a model of RFC 9110 §14 as docs/protocol.md states it -----------------------------

_SPEC = r"(?:([0-9]+)-([0-9]*)|-([0-9]+))"
_SEP = r"[ \t]*,[ \t]*"
_ONE_RANGE = re.compile(rf"(?:{_SEP})*{_SPEC}(?:{_SEP})*")
_UNIT = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)=(.*)", re.S)


def _value(digits: str) -> float:
    """A decimal number; one too long for int() (4300 digits) is past any size anyway."""
    return int(digits) if len(digits.lstrip("0")) < 4000 else float("inf")


def model(fields: list[str], size: int) -> tuple[int, int] | str | None:
    """What docs/protocol.md says: (offset, count), None for the whole content, "416"."""
    if not fields:
        return None
    if len(fields) > 1:
        return "416"
    unit = _UNIT.fullmatch(fields[0].strip(" \t"))
    if unit is None:
        return "416"
    if unit[1].lower() != "bytes":
        return None  # RFC 9110 §14.2: an unknown unit is ignored
    spec = _ONE_RANGE.fullmatch(unit[2])
    if spec is None:
        return "416"
    first, last, suffix = spec.groups()
    if suffix is not None:
        if _value(suffix) == 0:
            return "416"
        if size == 0:
            return None
        start = int(max(0, size - _value(suffix)))
        return start, size - start
    if last and _value(last) < _value(first):
        return "416"
    if _value(first) >= size:
        return "416"
    start = int(_value(first))
    end = size - 1 if not last else int(min(_value(last), size - 1))
    return start, end - start + 1


def _implementation(fields: list[str], size: int) -> tuple[int, int] | str | None:
    try:
        return byte_range(fields, size)
    except RangeNotSatisfiable:
        return "416"


_numbers = st.one_of(st.integers(0, 40).map(str), st.just("0" * 30 + "7"),
                     st.just("9" * 25), st.sampled_from(["", "+1", "1_0", "٣", " 1", "0x1"]))
_specs = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", _numbers, _numbers),
    st.builds(lambda b: f"-{b}", _numbers),
    st.sampled_from(["-", "", "1-2-3", "5", "a-b", "- 1", "1 -2"]),
)
_seps = st.sampled_from([",", ", ", " ,", " , ", ",,", "\t,", ",\t"])
_units = st.sampled_from(["bytes", "Bytes", "BYTES", "items", "byte", "", "bytes ", " bytes",
                          "by tes", "bytes="])


@st.composite
def range_headers(draw: st.DrawFn) -> list[str]:
    specs = draw(st.lists(_specs, min_size=0, max_size=3))
    body = specs[0] if specs else ""
    for spec in specs[1:]:
        body += draw(_seps) + spec
    if draw(st.booleans()):
        body = draw(_seps) + body
    if draw(st.booleans()):
        body += draw(_seps)
    value = draw(_units) + draw(st.sampled_from(["=", "=", "=", " =", "= ", ":"])) + body
    fields = [value] * draw(st.sampled_from([0, 1, 1, 1, 2]))
    return fields


@settings(max_examples=400, deadline=None)
@given(range_headers(), st.integers(0, 40))
def test_range_parsing_matches_the_model(fields: list[str], size: int) -> None:
    assert _implementation(fields, size) == model(fields, size)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=2), st.integers(0, 40))
def test_range_parsing_of_any_text_matches_the_model(fields: list[str], size: int) -> None:
    assert _implementation(fields, size) == model(fields, size)


# The same rules on both ranged routes, through a real server: blob and pack.
SERVER_CASES = ["bytes=-0", "bytes=0-", "bytes=-3", "bytes=-99", "bytes=2-4", "bytes=4-2",
                "bytes=10-", "bytes=9-", "bytes=, 1-2 ,", "bytes= 1-2", "Bytes=1-1",
                "items=0-1", "bytes=+1-2", "bytes=1-2,3-4", "bytes=0-" + "9" * 5000]


async def _ranged(env: ServerEnv, board: SimBoard, route: str, sha: str, header: str):
    if route == "blob":
        return await env.get_blob(board, sha, Range=header)
    return await env.get_pack(board, f"blobs={sha}", Range=header)


@pytest.mark.parametrize("route", ["blob", "pack"])
async def test_blob_and_pack_answer_ranges_as_the_model_says(env: ServerEnv,
                                                             route: str) -> None:
    board = await env.add_board(SimBoard("ranged"))
    data = b"0123456789"
    (sha,) = await env.put_blobs(data)
    for header in SERVER_CASES:
        expected = model([header], len(data))
        resp = await _ranged(env, board, route, sha, header)
        if expected == "416":
            assert resp.status == 416, header
            assert resp.headers["Content-Range"] == f"bytes */{len(data)}"
            assert (await resp.json())["code"] == "range_not_satisfiable"
        elif expected is None:
            assert (resp.status, await resp.read()) == (200, data), header
        else:
            offset, count = expected
            assert resp.status == 206, header
            assert await resp.read() == data[offset:offset + count]
            assert resp.headers["Content-Range"] == \
                f"bytes {offset}-{offset + count - 1}/{len(data)}"


# -- any split of a request, found by hypothesis ----------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def threaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server in a thread with one board registered: (server, board), on each backend."""
    with backend_of(request.param, request) as backend, \
            threaded_server(tmp_path_factory.mktemp("threaded"), backend) as served:
        board = SimBoard("cut-board")
        registration = _json(board.registration())
        head = request_head("POST", "/v1/devices", served.server.bearer,
                            body_length=len(registration))
        assert send_in_pieces(served.server.port, [head + registration], 0).status == 201
        yield served, board


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.floats(0, 1), max_size=6), chunked_body=st.booleans(),
       pause=st.sampled_from([0.0, 0.001, 0.003]))
def test_a_board_request_cut_anywhere_is_answered_as_if_whole(
        threaded: tuple[ThreadedServer, SimBoard], cuts: list[float], chunked_body: bool,
        pause: float) -> None:
    """Head and body cut at any points (plain or chunked): the same 204 as in one piece."""
    served, board = threaded
    body = board.checkin_body()
    framed = chunked(body) if chunked_body else body
    wire = request_head("POST", "/v1/device/checkin",
                        board.auth("POST", "/v1/device/checkin", body),
                        body_length=None if chunked_body else len(body)) + framed
    points = sorted({int(c * len(wire)) for c in cuts} | {0, len(wire)})
    pieces = [wire[a:b] for a, b in itertools.pairwise(points)]
    answer = send_in_pieces(served.server.port, pieces, pause)
    assert answer.status == 204, answer.body
