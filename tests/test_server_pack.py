"""`GET /v1/device/pack`: several blobs back to back in one signed request (docs/protocol.md),
against create_app with real SQLite and blob files."""

from __future__ import annotations

import os
from typing import Any

import pytest
from server_support import ServerEnv, SimBoard, sha256_hex, store_fingerprint

from ota_server import state

# Three blobs of distinct sizes, so a wrong offset or order shows up as wrong bytes.
A = bytes(range(256))[:100]
B = os.urandom(50)
C = b"c" * 30
ABC = A + B + C


def _query(*ids: str) -> str:
    return "blobs=" + ",".join(ids)


def _without_counters(fingerprint: dict) -> dict:
    # An authentic request spends its counter even when its query is then refused.
    return {k: v for k, v in fingerprint.items() if k != "counters"}


@pytest.fixture
async def stored(env: ServerEnv) -> tuple[ServerEnv, SimBoard, list[str]]:
    """The server, a registered board, and the ids of A, B and C, stored."""
    board = await env.add_board(SimBoard("pack-1"))
    return env, board, await env.put_blobs(A, B, C)


async def test_pack_of_three_blobs_is_their_concatenation_with_no_cache_headers(
        stored: tuple[ServerEnv, SimBoard, list[str]]) -> None:
    env, board, ids = stored
    resp = await env.get_pack(board, _query(*ids))
    assert resp.status == 200
    assert await resp.read() == ABC
    assert resp.headers["Content-Length"] == str(len(ABC))
    assert resp.headers["Content-Type"] == "application/octet-stream"
    for absent in ("ETag", "Cache-Control", "Date", "Server", "Content-Range",
                   "Accept-Ranges", "Last-Modified"):
        assert absent not in resp.headers, absent


async def test_pack_sends_the_blobs_in_the_order_asked(
        stored: tuple[ServerEnv, SimBoard, list[str]]) -> None:
    env, board, (a, b, c) = stored
    resp = await env.get_pack(board, _query(c, a, b))
    assert resp.status == 200
    assert await resp.read() == C + A + B


async def test_pack_of_one_blob_is_that_blob(
        stored: tuple[ServerEnv, SimBoard, list[str]]) -> None:
    env, board, (_, b, _) = stored
    resp = await env.get_pack(board, _query(b))
    assert resp.status == 200
    assert await resp.read() == B
    assert resp.headers["Content-Length"] == str(len(B))


async def test_empty_blobs_in_a_pack_add_no_bytes(
        stored: tuple[ServerEnv, SimBoard, list[str]]) -> None:
    env, board, (a, b, _) = stored
    (empty,) = await env.put_blobs(b"")
    whole = await env.get_pack(board, _query(a, empty, b))
    assert (whole.status, await whole.read()) == (200, A + B)
    at_the_empty_one = await env.get_pack(board, _query(a, empty, b), Range=f"bytes={len(A)}-")
    assert (at_the_empty_one.status, await at_the_empty_one.read()) == (206, B)
    only_empty = await env.get_pack(board, _query(empty))
    assert (only_empty.status, await only_empty.read()) == (200, b"")
    assert only_empty.headers["Content-Length"] == "0"


# (Range header, the slice of A+B+C it asks for); A is 0..99, B 100..149, C 150..179.
RANGES = {
    "from inside the first blob": ("bytes=40-", slice(40, None)),
    "from inside a later blob": ("bytes=120-", slice(120, None)),
    "from the start of the second blob": ("bytes=100-", slice(100, None)),
    "from the start of the last blob": ("bytes=150-", slice(150, None)),
    "the last byte": ("bytes=179-", slice(179, None)),
    "a-b across two blobs": ("bytes=90-109", slice(90, 110)),
    "a-b across three blobs": ("bytes=99-150", slice(99, 151)),
    "a-b inside one blob": ("bytes=110-119", slice(110, 120)),
    "a-b ending on a boundary": ("bytes=0-99", slice(0, 100)),
    "a-b past the end is cut at the end": ("bytes=170-5000", slice(170, None)),
    "suffix inside the last blob": ("bytes=-20", slice(-20, None)),
    "suffix across two blobs": ("bytes=-60", slice(-60, None)),
    "suffix longer than the pack is all of it": ("bytes=-1000", slice(0, None)),
}


@pytest.mark.parametrize(("header", "wanted"), list(RANGES.values()), ids=list(RANGES))
async def test_pack_range_is_over_the_concatenation(
        stored: tuple[ServerEnv, SimBoard, list[str]], header: str, wanted: slice) -> None:
    env, board, ids = stored
    resp = await env.get_pack(board, _query(*ids), Range=header)
    assert resp.status == 206
    expected = ABC[wanted]
    assert await resp.read() == expected
    first = range(len(ABC))[wanted][0]
    assert resp.headers["Content-Range"] == \
        f"bytes {first}-{first + len(expected) - 1}/{len(ABC)}"
    assert resp.headers["Content-Length"] == str(len(expected))
    assert "ETag" not in resp.headers and "Date" not in resp.headers


@pytest.mark.parametrize("header", ["bytes=180-", "bytes=500-600", "bytes=zz", "bytes=9-2",
                                    "bytes=0-1,5-6", "bytes=-", ""])
async def test_unsatisfiable_or_malformed_pack_range_is_416_with_the_total(
        stored: tuple[ServerEnv, SimBoard, list[str]], header: str) -> None:
    env, board, ids = stored
    resp = await env.get_pack(board, _query(*ids), Range=header)
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(ABC)}"
    assert (await resp.json())["code"] == "range_not_satisfiable"


async def test_board_resumes_a_cut_pack_by_asking_for_the_blobs_it_still_lacks(
        stored: tuple[ServerEnv, SimBoard, list[str]]) -> None:
    """The protocol's resume rule: A arrived whole and 30 bytes of B, then the link broke."""
    env, board, (_, b, c) = stored
    resp = await env.get_pack(board, _query(b, c), Range="bytes=30-")
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 30-{len(B) + len(C) - 1}/{len(B) + len(C)}"
    assert B[:30] + await resp.read() == B + C


async def test_validators_never_match_a_pack_so_the_whole_pack_is_sent(
        stored: tuple[ServerEnv, SimBoard, list[str]]) -> None:
    """A pack has no validator: no If-Range can match it (RFC 9110 13.1.5), and
    If-None-Match is ignored."""
    env, board, (a, b, c) = stored
    resp = await env.get_pack(board, _query(a, b, c), Range="bytes=10-",
                              **{"If-Range": f'"{a}"'})
    assert resp.status == 200
    assert await resp.read() == ABC
    for tag in (f'"{a}"', "*"):
        resp = await env.get_pack(board, _query(a, b, c), **{"If-None-Match": tag})
        assert (resp.status, await resp.read()) == (200, ABC)


def _ids(count: int) -> list[str]:
    return [sha256_hex(str(i).encode()) for i in range(count)]


BAD_QUERIES = {
    # case: (query after `?`, None for no query at all; code; words the message must hold)
    "no query": (None, "bad_field", ["'blobs' is required"]),
    "no blobs parameter": ("other=1", "bad_field", ["unknown query parameter 'other'"]),
    "empty list": ("blobs=", "bad_field", ["'blobs' is empty"]),
    "blobs without a value": ("blobs", "bad_field", ["'blobs' is empty"]),
    "65 ids": (_query(*_ids(65)), "bad_field", ["65 ids", "at most 64"]),
    "a 63-character id": (_query(_ids(1)[0], "a" * 63), "bad_blob_id",
                          ["blobs[1]", "64 lowercase hex"]),
    "an uppercase id": (_query("A" * 64), "bad_blob_id", ["blobs[0]", "64 lowercase hex"]),
    "a path in an id": (_query(_ids(1)[0], "../../etc/passwd"), "bad_blob_id",
                        ["blobs[1]", "../../etc/passwd"]),
    "an empty id after a comma": (_query(_ids(1)[0]) + ",", "bad_blob_id", ["blobs[1]"]),
    "a percent-encoded comma": ("blobs=" + "%2C".join(_ids(2)), "bad_blob_id", ["blobs[0]"]),
    "a duplicate id": (_query(*_ids(2), _ids(1)[0]), "bad_field",
                       ["blobs[2] repeats blobs[0]"]),
    "an extra query parameter": (_query(*_ids(2)) + "&after=1", "bad_field",
                                 ["unknown query parameter 'after'"]),
    "blobs given twice": (_query(_ids(1)[0]) + "&" + _query(_ids(2)[1]), "bad_field",
                          ["more than once"]),
}


@pytest.mark.parametrize(("query", "code", "words"), list(BAD_QUERIES.values()),
                         ids=list(BAD_QUERIES))
async def test_bad_pack_query_is_400_naming_the_problem_and_changes_nothing(
        env: ServerEnv, query: str | None, code: str, words: list[str]) -> None:
    board = await env.add_board(SimBoard("bad-pack"))
    await env.put_blobs(b"0", b"1")  # the ids of _ids(2) are stored: only the query is wrong
    before = await store_fingerprint(env.settings)
    resp = await env.get_pack(board, query)
    assert resp.status == 400, await resp.text()
    doc = await resp.json()
    assert doc["code"] == code
    for word in words:
        assert word in doc["message"], doc["message"]
    assert _without_counters(await store_fingerprint(env.settings)) == _without_counters(before)
    assert env.app[state.METRICS].value("mpota_pack_requests_total", code="400") == 1


async def test_the_largest_pack_allowed_is_64_blobs(env: ServerEnv) -> None:
    board = await env.add_board(SimBoard("pack-64"))
    blobs = [f"blob {i}\n".encode() for i in range(64)]
    ids = await env.put_blobs(*blobs)
    resp = await env.get_pack(board, _query(*ids))
    assert resp.status == 200
    assert await resp.read() == b"".join(blobs)


async def test_pack_naming_missing_blobs_is_404_naming_the_first_and_sends_nothing(
        stored: tuple[ServerEnv, SimBoard, list[str]]) -> None:
    env, board, (a, b, _) = stored
    first_missing, second_missing = "e" * 64, "f" * 64
    served_before = env.app[state.METRICS].value("mpota_blob_bytes_served_total")
    resp = await env.get_pack(board, _query(a, first_missing, b, second_missing))
    assert resp.status == 404
    doc = await resp.json()
    assert doc["code"] == "unknown_blob"
    assert f"blobs[1]: no blob {first_missing}" in doc["message"]
    assert second_missing not in doc["message"]
    assert env.app[state.METRICS].value("mpota_blob_bytes_served_total") == served_before


ANSWERS = {
    "whole pack": ({}, 200, 3),
    "range of it": ({"Range": "bytes=120-"}, 206, 3),
    "unsatisfiable range": ({"Range": "bytes=999-"}, 416, 3),
    "a blob missing": ({"missing": "1"}, 404, 2),
}


@pytest.mark.parametrize(("extra", "status", "files"), list(ANSWERS.values()),
                         ids=list(ANSWERS))
async def test_pack_closes_every_file_it_opened_whatever_the_answer(
        stored: tuple[ServerEnv, SimBoard, list[str]], opened: list[Any],
        extra: dict[str, str], status: int, files: int) -> None:
    env, board, (a, b, c) = stored
    headers = dict(extra)
    ids = (a, b, "e" * 64, c) if headers.pop("missing", None) else (a, b, c)
    resp = await env.get_pack(board, _query(*ids), **headers)
    assert resp.status == status
    await resp.read()
    assert len(opened) == files
    assert all(f.closed for f in opened)


async def test_pack_bytes_count_as_blob_bytes_served_and_packs_by_status(
        stored: tuple[ServerEnv, SimBoard, list[str]]) -> None:
    env, board, (a, b, c) = stored
    metrics = env.app[state.METRICS]
    await env.get_blob(board, a)
    served = metrics.value("mpota_blob_bytes_served_total")
    assert served == len(A)
    await (await env.get_pack(board, _query(a, b, c))).read()
    await (await env.get_pack(board, _query(b, c), Range="bytes=10-59")).read()
    await env.get_pack(board, _query(a, "e" * 64))
    await env.get_pack(board, _query(a), Range="bytes=100-")
    assert metrics.value("mpota_blob_bytes_served_total") == served + len(ABC) + 50
    text = await (await env.client.get("/metrics")).text()
    for code, count in (("200", 1), ("206", 1), ("404", 1), ("416", 1)):
        assert f'mpota_pack_requests_total{{code="{code}"}} {count}' in text
    # a pack is not a blob request
    assert 'mpota_blob_requests_total{code="200"} 1' in text
    assert 'mpota_blob_requests_total{code="404"}' not in text


async def test_pack_answers_head_with_405(
        stored: tuple[ServerEnv, SimBoard, list[str]]) -> None:
    env, board, (a, _, _) = stored
    path = f"/v1/device/pack?{_query(a)}"
    resp = await env.client.head(path, headers=board.auth("HEAD", path))
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET"
